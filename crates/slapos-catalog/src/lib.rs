//! The catalog of software releases shipped with slapos-rs (the manifests
//! under `catalog/` at the repository's root), embedded in the binary so that
//! `slapos up` can offer them on any machine.

use std::path::{Path, PathBuf};

/// A release of the catalog.
#[derive(Debug, Clone, Copy)]
pub struct Release {
    /// Alias usable in place of the URL (`slapos request my-cache redis`).
    pub name: &'static str,
    pub manifest: &'static str,
}

macro_rules! releases {
    ($($name:literal),* $(,)?) => {
        &[$(Release {
            name: $name,
            manifest: include_str!(concat!("../../../catalog/", $name, "/software.toml")),
        }),*]
    };
}

/// Every release of the catalog.
pub const RELEASES: &[Release] = releases![
    "frontend",
    "haproxy",
    "hello",
    "kvm",
    "kvstore",
    "mariadb",
    "memcached",
    "nbd",
    "postgresql",
    "redis",
    "stunnel",
    "varnish",
    "wordpress",
    "zeo",
];

/// Other names of releases (the seed's `request(mysql, 'i2')`).
pub const ALIASES: &[(&str, &str)] = &[("mysql", "mariadb")];

pub fn find(name: &str) -> Option<&'static Release> {
    RELEASES.iter().find(|r| r.name == name)
}

/// Writes the catalog under `dir` (`<dir>/<name>/software.toml`, unchanged
/// files left alone) and returns each release's name and `file://` URL.
pub fn materialize(dir: &Path) -> std::io::Result<Vec<(String, String)>> {
    let dir = std::path::absolute(dir)?;
    let mut out = Vec::new();
    for r in RELEASES {
        let path: PathBuf = dir.join(r.name).join("software.toml");
        std::fs::create_dir_all(path.parent().unwrap_or(&dir))?;
        if std::fs::read_to_string(&path).ok().as_deref() != Some(r.manifest) {
            std::fs::write(&path, r.manifest)?;
        }
        out.push((r.name.to_string(), format!("file://{}", path.display())));
    }
    for (alias, name) in ALIASES {
        if let Some((_, url)) = out.iter().find(|(n, _)| n == name).cloned() {
            out.push((alias.to_string(), url));
        }
    }
    Ok(out)
}
