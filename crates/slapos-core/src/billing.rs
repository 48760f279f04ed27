//! Accounting vocabulary: billing months and the resources that are priced.

use std::fmt;
use std::str::FromStr;

use crate::InvalidInput;

/// A calendar month in UTC: the period of an invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Month {
    pub year: i32,
    /// 1..=12
    pub month: u32,
}

/// Days since 1970-01-01 of a civil date (proleptic Gregorian, after Howard Hinnant).
pub fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// The civil date (year, month, day) of a day count since 1970-01-01.
pub fn civil_from_days(days: i64) -> (i64, i64, i64) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(month <= 2), month, day)
}

const MICROS_PER_DAY: i64 = 86_400_000_000;

impl Month {
    /// The month a timestamp (microseconds since the epoch) falls in.
    pub fn of_micros(micros: i64) -> Month {
        let (year, month, _) = civil_from_days(micros.div_euclid(MICROS_PER_DAY));
        Month {
            year: year as i32,
            month: month as u32,
        }
    }

    /// Its first microsecond.
    pub fn start_micros(self) -> i64 {
        days_from_civil(i64::from(self.year), i64::from(self.month), 1) * MICROS_PER_DAY
    }

    /// The first microsecond of the next month.
    pub fn end_micros(self) -> i64 {
        self.next().start_micros()
    }

    pub fn next(self) -> Month {
        if self.month == 12 {
            Month {
                year: self.year + 1,
                month: 1,
            }
        } else {
            Month {
                year: self.year,
                month: self.month + 1,
            }
        }
    }
}

impl fmt::Display for Month {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:04}-{:02}", self.year, self.month)
    }
}

impl FromStr for Month {
    type Err = InvalidInput;

    /// `YYYY-MM`.
    fn from_str(s: &str) -> Result<Month, InvalidInput> {
        let bad = || InvalidInput::new("month", format!("{s:?} is not a month: expected YYYY-MM"));
        let (y, m) = s.split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) || year < 1970 {
            return Err(bad());
        }
        Ok(Month { year, month })
    }
}

/// Parses `YYYY-MM-DD` or `YYYY-MM-DDTHH:MM:SS[Z]` (UTC) into microseconds
/// since the epoch.
pub fn parse_utc_date(s: &str) -> Result<i64, InvalidInput> {
    let bad = || {
        InvalidInput::new(
            "date",
            format!("{s:?} is not a date: expected YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)"),
        )
    };
    let s = s.trim();
    let (date, time) = match s.split_once(['T', ' ']) {
        Some((d, t)) => (d, Some(t.trim_end_matches('Z'))),
        None => (s, None),
    };
    let parts: Vec<&str> = date.split('-').collect();
    let [y, m, d] = parts.as_slice() else {
        return Err(bad());
    };
    let (year, month, day): (i64, i64, i64) = (
        y.parse().map_err(|_| bad())?,
        m.parse().map_err(|_| bad())?,
        d.parse().map_err(|_| bad())?,
    );
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || year < 1970 {
        return Err(bad());
    }
    let mut seconds = 0i64;
    if let Some(time) = time {
        let t: Vec<&str> = time.split(':').collect();
        if t.len() < 2 || t.len() > 3 {
            return Err(bad());
        }
        let mut factor = 3600;
        for part in t {
            let v: i64 = part.parse().map_err(|_| bad())?;
            if !(0..60).contains(&v) || (factor == 3600 && v > 23) {
                return Err(bad());
            }
            seconds += v * factor;
            factor /= 60;
        }
    }
    let days = days_from_civil(year, month, day);
    if civil_from_days(days) != (year, month, day) {
        return Err(bad());
    }
    Ok(days * MICROS_PER_DAY + seconds * 1_000_000)
}

/// What a price is for. Each resource is measured in the ledger as an
/// integer and priced per a larger unit; `raw_per_unit` converts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Resource {
    /// An hour during which the instance had a running process.
    InstanceHour,
    /// An hour of one CPU.
    CpuHour,
    /// One gigabyte (10^9 bytes) of memory held for an hour.
    MemoryGbHour,
    /// One gigabyte of disk held for a month of 730 hours.
    DiskGbMonth,
}

impl Resource {
    pub const ALL: [Resource; 4] = [
        Resource::InstanceHour,
        Resource::CpuHour,
        Resource::MemoryGbHour,
        Resource::DiskGbMonth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Resource::InstanceHour => "instance_hour",
            Resource::CpuHour => "cpu_hour",
            Resource::MemoryGbHour => "memory_gb_hour",
            Resource::DiskGbMonth => "disk_gb_month",
        }
    }

    /// What a person reads.
    pub fn label(self) -> &'static str {
        match self {
            Resource::InstanceHour => "instance-hours",
            Resource::CpuHour => "CPU-hours",
            Resource::MemoryGbHour => "GB-hours of memory",
            Resource::DiskGbMonth => "GB-months of disk",
        }
    }

    /// How many ledger units (seconds, CPU microseconds, byte-seconds) make
    /// one priced unit.
    pub fn raw_per_unit(self) -> i64 {
        match self {
            Resource::InstanceHour => 3_600,
            Resource::CpuHour => 3_600_000_000,
            Resource::MemoryGbHour => 1_000_000_000 * 3_600,
            Resource::DiskGbMonth => 1_000_000_000 * 730 * 3_600,
        }
    }
}

impl fmt::Display for Resource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Resource {
    type Err = InvalidInput;

    fn from_str(s: &str) -> Result<Resource, InvalidInput> {
        Resource::ALL
            .into_iter()
            .find(|r| r.as_str() == s)
            .ok_or_else(|| {
                InvalidInput::new(
                    "resource",
                    format!(
                        "{s:?} is not a priced resource: expected one of instance_hour, cpu_hour, memory_gb_hour, disk_gb_month"
                    ),
                )
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_have_their_boundaries() {
        let nov: Month = "2026-11".parse().unwrap();
        assert_eq!(nov.start_micros(), parse_utc_date("2026-11-01").unwrap());
        assert_eq!(nov.end_micros(), parse_utc_date("2026-12-01").unwrap());
        assert_eq!(Month::of_micros(nov.end_micros() - 1), nov);
        assert_eq!(Month::of_micros(nov.end_micros()).to_string(), "2026-12");
        let dec: Month = "2026-12".parse().unwrap();
        assert_eq!(dec.next().to_string(), "2027-01");
        assert_eq!(
            crate::format_utc_micros(parse_utc_date("2026-12-04T18:02:47Z").unwrap()),
            "2026-12-04 18:02:47"
        );
    }

    #[test]
    fn bad_dates_and_months_are_refused() {
        for bad in ["2026-13", "2026-1", "26-01", "2026/01", ""] {
            assert!(bad.parse::<Month>().is_err(), "{bad}");
        }
        for bad in ["2026-02-30", "2026-01-01T24:00", "yesterday", "2026-01"] {
            assert!(parse_utc_date(bad).is_err(), "{bad}");
        }
        assert!("gpu_hour".parse::<Resource>().is_err());
        assert_eq!("cpu_hour".parse::<Resource>().unwrap(), Resource::CpuHour);
    }
}
