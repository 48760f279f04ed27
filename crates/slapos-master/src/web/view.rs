//! What the templates show, computed from rows: names, initials, statuses,
//! times, masked secrets. Pure functions, tested below.

use serde::Serialize;
use slapos_store::queries::{EventRow, InstanceRow};

/// A short name for a software release URL: the catalog's folder name for
/// `.../hello/software.toml`, the file's stem otherwise.
pub fn software_name(url: &str) -> String {
    let path = url.split(['?', '#']).next().unwrap_or(url);
    let mut segments = path.trim_end_matches('/').rsplit('/');
    let last = segments.next().unwrap_or(path);
    let generic = ["software", "instance", "index", "buildout"];
    let stem = last.split('.').next().unwrap_or(last);
    let name = if generic.contains(&stem) {
        segments.next().unwrap_or(stem)
    } else {
        stem
    };
    if name.is_empty() {
        url.to_string()
    } else {
        name.to_string()
    }
}

/// Two letters standing for the software where it has no icon.
pub fn initials(name: &str) -> String {
    let words: Vec<&str> = name
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .collect();
    let letters: String = match words.as_slice() {
        [] => "?".into(),
        [one] => one.chars().take(2).collect(),
        [first, second, ..] => first
            .chars()
            .take(1)
            .chain(second.chars().take(1))
            .collect(),
    };
    letters.to_uppercase()
}

/// One of twelve colours, stable per name (the stylesheet defines `hue-0`..`hue-11`).
pub fn hue(name: &str) -> u32 {
    let hash = name.bytes().fold(0x811c9dc5u32, |h, b| {
        (h ^ b as u32).wrapping_mul(0x01000193)
    });
    hash % 12
}

/// The instance's status in a word and the badge colour that goes with it.
pub fn status(i: &InstanceRow) -> (&'static str, &'static str) {
    let reported = i.reported_state.as_deref();
    match (i.requested_state.as_str(), reported) {
        ("destroyed", _) => ("destroying", "warn"),
        (_, Some("error")) => ("error", "bad"),
        (_, _) if !i.shared && i.partition_id.is_none() => ("waiting for a partition", "warn"),
        (_, _) if i.shared && i.host_id.is_none() => ("waiting for a host", "warn"),
        ("started", Some("started")) => ("started", "ok"),
        ("stopped", Some("stopped")) => ("stopped", "off"),
        ("started", Some(_)) => ("starting", "warn"),
        ("stopped", Some(_)) => ("stopping", "warn"),
        (_, None) if i.shared => ("published to its host", "warn"),
        _ => ("deploying", "warn"),
    }
}

/// Whether a parameter's value is a credential to mask until revealed.
pub fn is_secret(key: &str, value: &str) -> bool {
    let key = key.to_ascii_lowercase();
    let secret_key = ["pass", "secret", "token", "key", "credential", "private"]
        .iter()
        .any(|word| key.contains(word));
    // A URL with a password in it (`scheme://user:password@host`).
    let secret_url = value
        .split_once("://")
        .and_then(|(_, rest)| rest.split(['/', '?', '#']).next())
        .is_some_and(|authority| {
            authority
                .rsplit_once('@')
                .is_some_and(|(userinfo, _)| userinfo.contains(':'))
        });
    secret_key || secret_url
}

/// A time in microseconds since the epoch, as `2026-12-04 08:30:12 UTC`.
pub fn format_time(micros: i64) -> String {
    format!("{} UTC", slapos_core::format_utc_micros(micros))
}

/// How long ago, in the largest unit that fits (`12 s ago`, `3 min ago`).
pub fn ago(micros: i64, now: i64) -> String {
    let secs = (now - micros).max(0) / 1_000_000;
    match secs {
        0..=59 => format!("{secs} s ago"),
        60..=3599 => format!("{} min ago", secs / 60),
        3600..=86_399 => format!("{} h ago", secs / 3600),
        _ => format!("{} days ago", secs / 86_400),
    }
}

/// A row of the instance list.
#[derive(Serialize)]
pub struct InstanceItem {
    pub id: i64,
    pub title: String,
    pub software_release: String,
    pub software_name: String,
    pub initials: String,
    pub hue: u32,
    pub software_type: String,
    pub shared: bool,
    pub is_root: bool,
    pub requested_state: String,
    pub reported_state: Option<String>,
    pub status: &'static str,
    pub status_class: &'static str,
    pub computer: Option<String>,
    pub partition: Option<String>,
    pub updated: String,
}

impl InstanceItem {
    pub fn new(i: &InstanceRow, computer: Option<String>, partition: Option<String>) -> Self {
        let name = software_name(&i.software_release);
        let (status, status_class) = status(i);
        InstanceItem {
            id: i.id,
            title: i.title.clone(),
            software_release: i.software_release.clone(),
            initials: initials(&name),
            hue: hue(&name),
            software_name: name,
            software_type: i.software_type.clone(),
            shared: i.shared,
            is_root: i.tree_id == 0,
            requested_state: i.requested_state.clone(),
            reported_state: i.reported_state.clone(),
            status,
            status_class,
            computer,
            partition,
            updated: format_time(i.updated_at),
        }
    }
}

/// A link to another instance of the tree.
#[derive(Serialize)]
pub struct InstanceLink {
    pub id: i64,
    pub title: String,
    pub shared: bool,
    pub status: &'static str,
    pub status_class: &'static str,
}

impl InstanceLink {
    pub fn new(i: &InstanceRow) -> Self {
        let (status, status_class) = status(i);
        InstanceLink {
            id: i.id,
            title: i.title.clone(),
            shared: i.shared,
            status,
            status_class,
        }
    }
}

/// An entry of the "Last Event" feed (also what the live stream sends).
#[derive(Serialize)]
pub struct EventItem {
    pub id: i64,
    pub at: String,
    pub kind: String,
    pub kind_class: &'static str,
    pub instance_id: Option<i64>,
    pub computer: Option<String>,
    pub partition: Option<String>,
    pub message: String,
}

impl From<EventRow> for EventItem {
    fn from(e: EventRow) -> Self {
        let kind_class = if e.kind.ends_with("error") || e.kind.contains("bang") {
            "bad"
        } else if e.kind.ends_with("started") || e.kind.ends_with("available") {
            "ok"
        } else {
            "info"
        };
        EventItem {
            id: e.id,
            at: format_time(e.at),
            kind: e.kind,
            kind_class,
            instance_id: e.instance_id,
            computer: e.computer,
            partition: e.partition,
            message: e.message,
        }
    }
}

/// A parameter as shown: secrets are masked until revealed.
#[derive(Serialize)]
pub struct ParameterItem {
    pub name: String,
    pub value: Option<String>,
    pub secret: bool,
}

pub fn parameter_items<'a>(
    pairs: impl IntoIterator<Item = (&'a String, &'a Option<String>)>,
) -> Vec<ParameterItem> {
    pairs
        .into_iter()
        .map(|(name, value)| ParameterItem {
            secret: value.as_deref().is_some_and(|v| is_secret(name, v)),
            name: name.clone(),
            value: value.clone(),
        })
        .collect()
}

/// A local path to come back to after a form, or None for anything that
/// could lead off this site.
pub fn safe_return_path(path: &str) -> Option<&str> {
    (path.starts_with('/')
        && !path.starts_with("//")
        && !path.contains(['\\', '\r', '\n'])
        && path.len() < 2048)
        .then_some(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_of_software_urls() {
        assert_eq!(
            software_name("file:///srv/catalog/hello/software.toml"),
            "hello"
        );
        assert_eq!(
            software_name("https://lab.nexedi.com/nexedi/slapos/raw/1.0/software/kvm/software.cfg"),
            "kvm"
        );
        assert_eq!(software_name("http://example.com/my-app.cfg?x=1"), "my-app");
        assert_eq!(initials("my-app"), "MA");
        assert_eq!(initials("redis"), "RE");
        assert_eq!(initials("--"), "?");
        assert!(hue("redis") < 12);
    }

    #[test]
    fn secrets_are_recognised_by_name_or_url_password() {
        assert!(is_secret("password", "x"));
        assert!(is_secret("admin-Password", "x"));
        assert!(is_secret("api_token", "x"));
        assert!(is_secret("url", "mysql://root:hunter2@10.0.0.1:3306/db"));
        assert!(!is_secret("url", "http://10.0.0.1:8080/path@x:y"));
        assert!(!is_secret("url", "http://user@10.0.0.1/"));
        assert!(!is_secret("port", "8080"));
    }

    #[test]
    fn times_are_formatted_in_utc() {
        assert_eq!(format_time(0), "1970-01-01 00:00:00 UTC");
        assert_eq!(
            format_time(1_796_373_012_000_000),
            "2026-12-04 08:30:12 UTC"
        );
        assert_eq!(format_time(951_782_400_000_000), "2000-02-29 00:00:00 UTC");
        assert_eq!(ago(0, 90_000_000), "1 min ago");
    }

    #[test]
    fn return_paths_stay_on_this_site() {
        assert_eq!(safe_return_path("/instances?q=a"), Some("/instances?q=a"));
        assert_eq!(safe_return_path("//evil.example/"), None);
        assert_eq!(safe_return_path("https://evil.example/"), None);
        assert_eq!(safe_return_path("/\\evil"), None);
    }
}
