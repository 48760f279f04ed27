//! Bar charts of usage as plain numbers for an inline SVG: the template
//! draws rectangles from these coordinates, so no script or inline style is
//! needed (the CSP allows neither) and colours come from the stylesheet.

use serde::Serialize;

use crate::billing::UsageBucket;

/// The SVG's coordinate system (it scales to its box).
const WIDTH: f64 = 600.0;
const HEIGHT: f64 = 160.0;
/// Room for the value labels on the left and the dates below.
const LEFT: f64 = 48.0;
const BOTTOM: f64 = 22.0;
const TOP: f64 = 8.0;

#[derive(Debug, Serialize)]
pub struct Bar {
    pub x: String,
    pub y: String,
    pub width: String,
    pub height: String,
    /// The tooltip: bucket start and value.
    pub label: String,
}

#[derive(Debug, Serialize)]
pub struct Chart {
    pub id: &'static str,
    pub title: &'static str,
    pub unit: &'static str,
    pub total: String,
    pub max: String,
    pub first: String,
    pub last: String,
    pub bars: Vec<Bar>,
    pub width: f64,
    pub height: f64,
    pub left: f64,
    pub base: f64,
    pub top: f64,
}

/// A value for people: up to three decimals, no trailing zeros.
pub fn number(value: f64) -> String {
    let text = format!("{value:.3}");
    let text = text.trim_end_matches('0').trim_end_matches('.');
    if text.is_empty() || text == "-0" {
        "0".into()
    } else {
        text.to_string()
    }
}

/// A bucket's start as `2026-11-03` (day buckets) or `2026-11-03 14:00`.
pub fn bucket_label(start: i64, daily: bool) -> String {
    let text = slapos_core::format_utc_micros(start);
    if daily {
        text.chars().take(10).collect()
    } else {
        text.chars().take(16).collect()
    }
}

fn chart(
    id: &'static str,
    title: &'static str,
    unit: &'static str,
    buckets: &[UsageBucket],
    daily: bool,
    value: fn(&UsageBucket) -> f64,
) -> Chart {
    let max = buckets.iter().map(value).fold(0.0f64, f64::max);
    let plot_width = WIDTH - LEFT - 4.0;
    let plot_height = HEIGHT - BOTTOM - TOP;
    let slot = plot_width / buckets.len().max(1) as f64;
    let bars = buckets
        .iter()
        .enumerate()
        .map(|(i, b)| {
            let v = value(b);
            let height = if max > 0.0 {
                v / max * plot_height
            } else {
                0.0
            };
            Bar {
                x: format!("{:.2}", LEFT + i as f64 * slot + slot * 0.1),
                y: format!("{:.2}", TOP + plot_height - height),
                width: format!("{:.2}", (slot * 0.8).max(0.5)),
                height: format!("{height:.2}"),
                label: format!("{}: {} {unit}", bucket_label(b.start, daily), number(v)),
            }
        })
        .collect();
    Chart {
        id,
        title,
        unit,
        total: number(buckets.iter().map(value).sum()),
        max: number(max),
        first: buckets
            .first()
            .map(|b| bucket_label(b.start, daily))
            .unwrap_or_default(),
        last: buckets
            .last()
            .map(|b| bucket_label(b.start, daily))
            .unwrap_or_default(),
        bars,
        width: WIDTH,
        height: HEIGHT,
        left: LEFT,
        base: HEIGHT - BOTTOM,
        top: TOP,
    }
}

/// Most buckets a chart fills in: beyond, empty buckets are left out.
const MAX_FILLED_BUCKETS: i64 = 2_000;

/// The buckets from the first to the last, with zeros where nothing was
/// recorded, so that the bars' spacing is time (when that stays small).
pub fn fill_gaps(buckets: Vec<UsageBucket>, bucket_seconds: i64) -> Vec<UsageBucket> {
    let width = bucket_seconds.max(1) * 1_000_000;
    let (Some(first), Some(last)) = (buckets.first(), buckets.last()) else {
        return buckets;
    };
    let (first, last) = (first.start, last.start);
    if (last - first) / width >= MAX_FILLED_BUCKETS {
        return buckets;
    }
    let mut present = buckets.into_iter().peekable();
    let mut out = Vec::new();
    let mut start = first;
    while start <= last {
        match present.next_if(|b| b.start == start) {
            Some(b) => out.push(b),
            None => out.push(UsageBucket {
                start,
                cpu_hours: 0.0,
                memory_gb_hours: 0.0,
                disk_gb_months: 0.0,
                instance_hours: 0.0,
                records: 0,
            }),
        }
        start += width;
    }
    out
}

/// The four charts of the usage page, in the order of the price lists'
/// resources.
pub fn usage_charts(buckets: &[UsageBucket], daily: bool) -> Vec<Chart> {
    vec![
        chart("cpu", "CPU", "CPU-hours", buckets, daily, |b| b.cpu_hours),
        chart("memory", "Memory", "GB-hours", buckets, daily, |b| {
            b.memory_gb_hours
        }),
        chart("disk", "Disk", "GB-months", buckets, daily, |b| {
            b.disk_gb_months
        }),
        chart(
            "instances",
            "Instances",
            "instance-hours",
            buckets,
            daily,
            |b| b.instance_hours,
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_drop_trailing_zeros() {
        assert_eq!(number(1.5), "1.5");
        assert_eq!(number(2.0), "2");
        assert_eq!(number(0.0004), "0");
        assert_eq!(number(0.1234), "0.123");
    }

    #[test]
    fn the_tallest_bar_fills_the_plot() {
        let bucket = |start, cpu| UsageBucket {
            start,
            cpu_hours: cpu,
            memory_gb_hours: 0.0,
            disk_gb_months: 0.0,
            instance_hours: 0.0,
            records: 1,
        };
        let buckets = fill_gaps(vec![bucket(0, 1.0), bucket(7_200_000_000, 2.0)], 3600);
        assert_eq!(buckets.len(), 3, "the empty hour between is a zero bar");
        assert_eq!(buckets[1].records, 0);
        let charts = usage_charts(&buckets, false);
        let cpu = &charts[0];
        assert_eq!(cpu.bars.len(), 3);
        assert_eq!(cpu.bars[1].height, "0.00");
        assert_eq!(cpu.bars[2].height, format!("{:.2}", HEIGHT - BOTTOM - TOP));
        assert_eq!(cpu.total, "3");
        assert_eq!(cpu.max, "2");
    }
}
