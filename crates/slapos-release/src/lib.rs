//! The native software release format (shared by the node, which installs
//! and instantiates releases, and the master, which checks request
//! parameters against their schema): a TOML manifest named by the
//! release URL (`file://`, `http(s)://` or an absolute path). It says how to
//! install the software once per computer and, per software type, how to
//! instantiate it in a partition. docs/software-release.md is the reference.

use std::collections::BTreeMap;

use serde::Deserialize;

/// A parsed manifest.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Short name (`redis`): catalog alias and display name.
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub install: Install,
    /// Software types by name; `default` is used when a request names none.
    #[serde(default, rename = "type")]
    pub types: BTreeMap<String, SoftwareType>,
}

/// How to install the release into its directory (`<software_root>/<md5(url)>`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Install {
    /// Debian packages unpacked (with the dependencies the host lacks) under
    /// `<release>/root`, without touching the system.
    #[serde(default)]
    pub debian: Vec<String>,
    /// Files fetched into the release directory, checked against their sha256.
    #[serde(default)]
    pub fetch: Vec<Fetch>,
    /// Python distributions from PyPI, each pinned (`name==version`),
    /// installed with their dependencies into `<release>/lib` for the host's
    /// `/usr/bin/python3`, from wheels kept in the node's download cache.
    #[serde(default)]
    pub pypi: Vec<String>,
    /// Shell commands run in the release directory after unpacking and fetching
    /// (`sh -c`), with `SOFTWARE` and a `PATH` that includes `root/usr/bin`.
    #[serde(default)]
    pub build: Vec<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Fetch {
    /// `http(s)://` or `file://` URL; relative URLs are resolved against the manifest's.
    pub url: String,
    /// Lower-case hex sha256 of the file.
    pub sha256: String,
    /// Destination, relative to the release directory.
    pub path: String,
    /// Unpack a `.tar.gz`/`.tgz`/`.tar`/`.tar.xz` archive into `path` instead of storing it.
    #[serde(default)]
    pub extract: bool,
}

/// How one software type is instantiated in a partition. Every string below
/// is a minijinja template (see docs/software-release.md for the context).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SoftwareType {
    #[serde(default)]
    pub description: Option<String>,
    /// JSON Schema of the instance parameters (as SlapOS's `software.cfg.json`
    /// request schema); the master refuses requests that do not satisfy it.
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
    /// Named TCP ports allocated in the partition's port range.
    #[serde(default)]
    pub ports: Vec<String>,
    /// Directories created in the partition (relative paths).
    #[serde(default)]
    pub directories: Vec<String>,
    #[serde(default)]
    pub files: Vec<FileTemplate>,
    #[serde(default)]
    pub services: Vec<Service>,
    #[serde(default)]
    pub promises: Vec<Promise>,
    /// Connection parameters published to the requester.
    #[serde(default)]
    pub connection: BTreeMap<String, String>,
    /// Instances this one requests; their connection parameters are in the
    /// template context as `children.<title>.<key>`.
    #[serde(default)]
    pub children: Vec<Child>,
    /// How shared instances hosted here are served.
    #[serde(default)]
    pub shared: Option<SharedTemplate>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct FileTemplate {
    /// Relative to the partition.
    pub path: String,
    pub template: String,
    /// Octal mode, `0640` by default.
    #[serde(default)]
    pub mode: Option<String>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub name: String,
    /// Program and arguments, each a template.
    pub command: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    /// `always` (default), `on-failure` or `never`.
    #[serde(default)]
    pub restart: Option<String>,
    /// A run-once command (exits when done) rather than a daemon.
    #[serde(default)]
    pub oneshot: bool,
}

/// A health check; exactly one of `tcp`, `http`, `command`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Promise {
    pub name: String,
    /// `host:port` that must accept a connection.
    #[serde(default)]
    pub tcp: Option<String>,
    /// URL that must answer `status` (200 by default).
    #[serde(default)]
    pub http: Option<String>,
    #[serde(default)]
    pub status: Option<u16>,
    /// Program and arguments that must exit 0.
    #[serde(default)]
    pub command: Option<Vec<String>>,
    /// Seconds (default 10).
    #[serde(default)]
    pub timeout: Option<u64>,
}

#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Child {
    pub title: String,
    /// Release URL of the child; relative URLs resolve against this manifest's.
    pub software: String,
    #[serde(default, rename = "type")]
    pub software_type: Option<String>,
    #[serde(default)]
    pub parameters: BTreeMap<String, String>,
    #[serde(default)]
    pub shared: bool,
    #[serde(default)]
    pub sla: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct SharedTemplate {
    /// JSON Schema of a shared instance's parameters.
    #[serde(default)]
    pub parameters: Option<serde_json::Value>,
    /// Files rendered once per shared instance (`shared` in the context).
    #[serde(default)]
    pub files: Vec<FileTemplate>,
    /// Connection parameters published for each shared instance.
    #[serde(default)]
    pub connection: BTreeMap<String, String>,
}

/// Why a manifest was refused.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest is not valid TOML for a software release: {0}")]
    Syntax(String),
    #[error("invalid manifest: {0}")]
    Invalid(String),
}

/// `name==version`: a PyPI distribution name (letters, digits, `.`, `_`,
/// `-`) and an exact version (letters, digits, `.`, `+`, `!`, `-`, `_`).
fn pinned_requirement(r: &str) -> bool {
    let Some((name, version)) = r.split_once("==") else {
        return false;
    };
    let ok = |s: &str, extra: &str| {
        !s.is_empty()
            && s.starts_with(|c: char| c.is_ascii_alphanumeric())
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || extra.contains(c))
    };
    ok(name, "._-") && ok(version, ".+!-_")
}

impl Manifest {
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let manifest: Manifest =
            toml::from_str(text).map_err(|e| ManifestError::Syntax(e.to_string()))?;
        manifest.check()?;
        Ok(manifest)
    }

    /// Structural checks serde cannot express.
    fn check(&self) -> Result<(), ManifestError> {
        let invalid = |m: String| Err(ManifestError::Invalid(m));
        if self.name.trim().is_empty() {
            return invalid("name is empty".into());
        }
        for f in &self.install.fetch {
            if f.sha256.len() != 64 || !f.sha256.chars().all(|c| c.is_ascii_hexdigit()) {
                return invalid(format!("fetch {}: sha256 must be 64 hex digits", f.url));
            }
            check_relative(&f.path)?;
        }
        for r in &self.install.pypi {
            if !pinned_requirement(r) {
                return invalid(format!(
                    "pypi {r:?}: give a pinned requirement, name==version (such as ZEO==6.2)"
                ));
            }
        }
        for (name, t) in &self.types {
            for f in t
                .files
                .iter()
                .chain(t.shared.iter().flat_map(|s| s.files.iter()))
            {
                check_relative(&f.path)?;
            }
            for d in &t.directories {
                check_relative(d)?;
            }
            for p in &t.promises {
                let kinds = [p.tcp.is_some(), p.http.is_some(), p.command.is_some()];
                if kinds.iter().filter(|k| **k).count() != 1 {
                    return invalid(format!(
                        "type {name}, promise {}: give exactly one of tcp, http, command",
                        p.name
                    ));
                }
            }
            for s in &t.services {
                if s.command.is_empty() {
                    return invalid(format!("type {name}, service {}: empty command", s.name));
                }
                if let Some(r) = &s.restart {
                    if !["always", "on-failure", "never"].contains(&r.as_str()) {
                        return invalid(format!(
                            "type {name}, service {}: restart must be always, on-failure or never",
                            s.name
                        ));
                    }
                }
            }
        }
        Ok(())
    }

    /// The software type a request names (`default` when it names none).
    pub fn software_type(&self, name: &str) -> Option<&SoftwareType> {
        self.types.get(name).or_else(|| {
            if name == "RootSoftwareInstance" {
                self.types.get("default")
            } else {
                None
            }
        })
    }
}

/// Parameters as the templates see them: the request's values, the keys of a
/// JSON `_` parameter (json-in-xml serialisation), and the schema's defaults.
pub fn effective_parameters(
    raw: &std::collections::BTreeMap<String, Option<String>>,
    schema: Option<&serde_json::Value>,
) -> Result<serde_json::Map<String, serde_json::Value>, ManifestError> {
    let mut params = serde_json::Map::new();
    for (k, v) in raw {
        if k == "_" {
            if let Some(text) = v {
                match serde_json::from_str::<serde_json::Value>(text) {
                    Ok(serde_json::Value::Object(map)) => params.extend(map),
                    _ => {
                        return Err(ManifestError::Invalid(
                            "parameter '_' is not a JSON object".into(),
                        ))
                    }
                }
            }
            continue;
        }
        params.insert(
            k.clone(),
            v.clone()
                .map_or(serde_json::Value::Null, serde_json::Value::String),
        );
    }
    if let Some(schema) = schema {
        if let Some(props) = schema.get("properties").and_then(|p| p.as_object()) {
            for (name, prop) in props {
                if let (false, Some(default)) = (params.contains_key(name), prop.get("default")) {
                    params.insert(name.clone(), default.clone());
                }
            }
        }
    }
    Ok(params)
}

/// Checks parameters against a schema; values that arrived as strings are
/// also accepted where the schema wants a number or a boolean (the legacy
/// protocol stringifies every value).
pub fn validate_parameters(
    params: &serde_json::Map<String, serde_json::Value>,
    schema: &serde_json::Value,
) -> Result<(), String> {
    let validator = jsonschema::validator_for(schema)
        .map_err(|e| format!("the release's parameter schema is invalid: {e}"))?;
    let typed: serde_json::Map<String, serde_json::Value> = params
        .iter()
        .map(|(k, v)| {
            let wanted = schema
                .pointer(&format!("/properties/{k}/type"))
                .and_then(|t| t.as_str());
            let v = match (v, wanted) {
                (serde_json::Value::String(s), Some("integer")) => {
                    s.parse::<i64>().map(Into::into).unwrap_or(v.clone())
                }
                (serde_json::Value::String(s), Some("number")) => s
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                    .map(Into::into)
                    .unwrap_or(v.clone()),
                (serde_json::Value::String(s), Some("boolean")) => match s.as_str() {
                    "true" | "True" => true.into(),
                    "false" | "False" => false.into(),
                    _ => v.clone(),
                },
                _ => v.clone(),
            };
            (k.clone(), v)
        })
        .collect();
    let instance = serde_json::Value::Object(typed);
    let errors: Vec<String> = validator
        .iter_errors(&instance)
        .map(|e| {
            let at = e.instance_path().to_string();
            if at.is_empty() {
                e.to_string()
            } else {
                format!("{}: {e}", at.trim_start_matches('/'))
            }
        })
        .collect();
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors.join("; "))
    }
}

/// A path inside the partition or release: relative, no `..`.
fn check_relative(path: &str) -> Result<(), ManifestError> {
    if path.is_empty() || path.starts_with('/') || path.split('/').any(|s| s == "..") {
        return Err(ManifestError::Invalid(format!(
            "path {path:?} must be relative and stay inside"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_get_defaults_and_are_validated() {
        let schema = serde_json::json!({"type": "object", "properties": {
            "maxmemory": {"type": "string", "default": "64mb"},
            "port": {"type": "integer", "minimum": 1}}, "additionalProperties": false});
        let raw = std::collections::BTreeMap::from([("port".to_string(), Some("0".to_string()))]);
        let params = effective_parameters(&raw, Some(&schema)).unwrap();
        assert_eq!(params["maxmemory"], "64mb");
        let err = validate_parameters(&params, &schema).unwrap_err();
        assert!(err.contains("port"), "{err}");
        let raw =
            std::collections::BTreeMap::from([("port".to_string(), Some("6379".to_string()))]);
        validate_parameters(&effective_parameters(&raw, Some(&schema)).unwrap(), &schema).unwrap();
        let raw = std::collections::BTreeMap::from([(
            "_".to_string(),
            Some("{\"port\": 7}".to_string()),
        )]);
        assert_eq!(effective_parameters(&raw, None).unwrap()["port"], 7);
    }

    const REDIS: &str = r#"
name = "redis"
version = "7"
[install]
debian = ["redis-server"]
[type.default]
ports = ["redis"]
directories = ["srv/redis"]
parameters = { type = "object", properties = { maxmemory = { type = "string", default = "64mb" } } }
[[type.default.files]]
path = "etc/redis.conf"
template = "port {{ ports.redis }}"
[[type.default.services]]
name = "redis"
command = ["{{ software }}/root/usr/bin/redis-server", "{{ partition }}/etc/redis.conf"]
[[type.default.promises]]
name = "port"
tcp = "{{ ipv4 }}:{{ ports.redis }}"
[type.default.connection]
url = "redis://{{ ipv4 }}:{{ ports.redis }}"
"#;

    #[test]
    fn parses_a_release() {
        let m = Manifest::parse(REDIS).unwrap();
        assert_eq!(m.name, "redis");
        assert_eq!(m.install.debian, ["redis-server"]);
        let t = m.software_type("default").unwrap();
        assert_eq!(t.services[0].name, "redis");
        assert_eq!(t.connection["url"], "redis://{{ ipv4 }}:{{ ports.redis }}");
        assert!(m.software_type("RootSoftwareInstance").is_some());
    }

    #[test]
    fn refuses_escaping_paths_and_bad_promises() {
        let bad = REDIS.replace("etc/redis.conf", "../../etc/passwd");
        assert!(Manifest::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("relative"));
        let bad = REDIS.replace("tcp = ", "http = \"http://x\"\ntcp = ");
        assert!(Manifest::parse(&bad)
            .unwrap_err()
            .to_string()
            .contains("exactly one"));
        assert!(Manifest::parse("name = ").is_err());
        let pypi = |r: &str| Manifest::parse(&format!("name = \"x\"\n[install]\npypi = [{r:?}]"));
        assert!(pypi("ZEO==6.2").is_ok() && pypi("zope.interface==8.7").is_ok());
        for bad in [
            "ZEO",
            "ZEO>=6",
            "ZEO==",
            "--index-url==x",
            "ZEO==6.2; os_name",
            "a==1 b",
        ] {
            let e = pypi(bad).unwrap_err().to_string();
            assert!(e.contains("pinned"), "{bad}: {e}");
        }
        assert!(Manifest::parse("name = \"x\"\nunknown = 1").is_err());
    }
}
