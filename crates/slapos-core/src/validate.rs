//! Checks on names and URLs that come from the network. Titles and references
//! end up in logs, file names on nodes and HTML pages: they are bounded in
//! length and may not contain control characters.

/// Longest accepted computer, partition or instance reference, in characters.
pub const MAX_REFERENCE_LEN: usize = 512;
/// Longest accepted software release URL, in bytes.
pub const MAX_URL_LEN: usize = 4096;

/// A name or URL refused before anything is stored.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {what}: {why}")]
pub struct InvalidInput {
    pub what: &'static str,
    pub why: String,
}

impl InvalidInput {
    pub fn new(what: &'static str, why: impl Into<String>) -> InvalidInput {
        invalid(what, why)
    }
}

fn invalid(what: &'static str, why: impl Into<String>) -> InvalidInput {
    InvalidInput {
        what,
        why: why.into(),
    }
}

/// Accepts any non-empty printable text of bounded length.
pub fn validate_reference(what: &'static str, value: &str) -> Result<(), InvalidInput> {
    if value.is_empty() {
        return Err(invalid(what, "it is empty"));
    }
    if value.chars().count() > MAX_REFERENCE_LEN {
        return Err(invalid(
            what,
            format!("longer than {MAX_REFERENCE_LEN} characters"),
        ));
    }
    if let Some(c) = value.chars().find(|c| c.is_control()) {
        return Err(invalid(
            what,
            format!("control character U+{:04X}", c as u32),
        ));
    }
    Ok(())
}

/// Accepts `http(s)://`, `file://` URLs and absolute local paths (the
/// reference accepts profiles given as paths), without control characters
/// or `..` path segments.
pub fn validate_software_url(value: &str) -> Result<(), InvalidInput> {
    const WHAT: &str = "software release URL";
    if value.is_empty() {
        return Err(invalid(WHAT, "it is empty"));
    }
    if value.len() > MAX_URL_LEN {
        return Err(invalid(WHAT, format!("longer than {MAX_URL_LEN} bytes")));
    }
    if let Some(c) = value.chars().find(|c| c.is_control() || c.is_whitespace()) {
        return Err(invalid(WHAT, format!("contains U+{:04X}", c as u32)));
    }
    let path = if let Some(rest) = value
        .strip_prefix("http://")
        .or_else(|| value.strip_prefix("https://"))
    {
        rest.split_once('/').map(|(_, p)| p).unwrap_or("")
    } else if let Some(rest) = value.strip_prefix("file://") {
        rest
    } else if value.starts_with('/') {
        value
    } else {
        return Err(invalid(
            WHAT,
            "expected http://, https://, file:// or an absolute path",
        ));
    };
    let path = path.split(['?', '#']).next().unwrap_or("");
    if path.split('/').any(|seg| seg == "..") {
        return Err(invalid(WHAT, "'..' path segments are not allowed"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert!(validate_reference("title", "my-instance Grüße ☃").is_ok());
        assert!(validate_reference("title", "").is_err());
        assert!(validate_reference("title", "a\nb").is_err());
        assert!(validate_reference("title", &"x".repeat(MAX_REFERENCE_LEN + 1)).is_err());
    }

    #[test]
    fn urls() {
        for ok in [
            "https://lab.example.invalid/software/demo/software.cfg",
            "http://h:8080/a/b.cfg?x=1",
            "file:///srv/catalog/redis/software.json",
            "/srv/sr/software.cfg",
        ] {
            assert!(validate_software_url(ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "ftp://x/y",
            "software.cfg",
            "file:///srv/../etc/passwd",
            "https://h/a/../../b",
            "https://h/a b",
            "javascript:alert(1)",
        ] {
            assert!(validate_software_url(bad).is_err(), "{bad}");
        }
    }
}
