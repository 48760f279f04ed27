//! `slapos.cfg`, read as the reference reads it (Python configparser):
//! `[slapos]` master_url, computer_id, software_root, instance_root;
//! `[slapproxy]` host, port, database_uri, software_product_list;
//! `[slapconsole]` alias lines `name URL`.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use configparser::ini::Ini;

pub struct SlaposConfig {
    pub path: PathBuf,
    ini: Ini,
}

impl SlaposConfig {
    pub fn load(path: &Path) -> Result<SlaposConfig> {
        let mut ini = Ini::new_cs();
        ini.set_multiline(true);
        ini.load(path)
            .map_err(|e| anyhow::anyhow!(e))
            .with_context(|| format!("cannot read the configuration {}", path.display()))?;
        Ok(SlaposConfig {
            path: path.to_path_buf(),
            ini,
        })
    }

    /// A value, with `~` expanded; empty values count as absent.
    pub fn get(&self, section: &str, key: &str) -> Option<String> {
        let value = self.ini.get(section, key)?;
        let value = value.trim().to_string();
        if value.is_empty() {
            return None;
        }
        if let Some(rest) = value.strip_prefix("~/") {
            if let Some(home) = std::env::var_os("HOME") {
                return Some(Path::new(&home).join(rest).to_string_lossy().into_owned());
            }
        }
        Some(value)
    }

    /// The first of several places a key may be set.
    pub fn first(&self, places: &[(&str, &str)]) -> Option<String> {
        places.iter().find_map(|(s, k)| self.get(s, k))
    }

    /// `name URL` lines of a multi-line value.
    pub fn pairs(&self, section: &str, key: &str) -> Vec<(String, String)> {
        self.get(section, key)
            .unwrap_or_default()
            .lines()
            .filter_map(|line| {
                let mut words = line.split_whitespace();
                match (words.next(), words.next()) {
                    (Some(name), Some(url)) => Some((name.to_string(), url.to_string())),
                    _ => None,
                }
            })
            .collect()
    }

    /// The client side of HTTPS: `[slapos] cert_file`, `key_file` (or
    /// `[slapconsole]`'s, as the reference client reads them) and
    /// `master_ca_file`.
    pub fn client_tls(&self) -> slapos_client::TlsSettings {
        let get = |key: &str| {
            self.first(&[("slapos", key), ("slapconsole", key)])
                .map(PathBuf::from)
        };
        slapos_client::TlsSettings {
            cert_file: get("cert_file"),
            key_file: get("key_file"),
            ca_file: get("master_ca_file"),
        }
    }

    /// `[slapmaster]` TLS files: `ssl_cert_file`, `ssl_key_file` (the
    /// server's certificate), `ca_cert_file`, `ca_key_file` (the authority
    /// that issues client certificates). None when none is set (plain HTTP);
    /// an error when only some are.
    pub fn master_tls(&self) -> Result<Option<slapos_master::pki::TlsFiles>> {
        const KEYS: [&str; 4] = [
            "ssl_cert_file",
            "ssl_key_file",
            "ca_cert_file",
            "ca_key_file",
        ];
        let values: Vec<Option<String>> = KEYS.iter().map(|k| self.get("slapmaster", k)).collect();
        if values.iter().all(Option::is_none) {
            return Ok(None);
        }
        let missing: Vec<&str> = KEYS
            .iter()
            .zip(&values)
            .filter(|(_, v)| v.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !missing.is_empty() {
            bail!(
                "{}: [slapmaster] enables HTTPS but lacks {} (set all of {}; missing files are created)",
                self.path.display(),
                missing.join(", "),
                KEYS.join(", ")
            );
        }
        let path = |i: usize| PathBuf::from(values[i].clone().unwrap_or_default());
        Ok(Some(slapos_master::pki::TlsFiles {
            cert: path(0),
            key: path(1),
            ca_cert: path(2),
            ca_key: path(3),
        }))
    }

    /// `[multimaster/URL]` sections: releases served by another master.
    pub fn forwards(&self) -> Vec<slapos_master::Forward> {
        self.ini
            .sections()
            .into_iter()
            .filter_map(|section| {
                let url = section.strip_prefix("multimaster/")?.to_string();
                let software_releases = self
                    .get(&section, "software_release_list")
                    .unwrap_or_default()
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                Some(slapos_master::Forward {
                    master_url: url,
                    software_releases,
                })
            })
            .collect()
    }

    pub fn master_url(&self) -> Result<String> {
        match self.get("slapos", "master_url") {
            Some(url) => Ok(url),
            None => bail!("{}: [slapos] master_url is not set", self.path.display()),
        }
    }

    /// Software aliases usable in place of a URL: `[slapconsole] alias`
    /// lines and `[slapproxy] software_product_list`.
    pub fn aliases(&self) -> Vec<(String, String)> {
        let mut all = self.pairs("slapconsole", "alias");
        all.extend(self.pairs("slapproxy", "software_product_list"));
        all
    }
}

/// `--cfg`, else `$SLAPOS_CLIENT_CONFIGURATION` / `$SLAPOS_CONFIGURATION`,
/// else the reference's default locations.
pub fn locate(explicit: Option<&Path>, client: bool) -> Result<PathBuf> {
    if let Some(p) = explicit {
        return Ok(p.to_path_buf());
    }
    let env = if client {
        "SLAPOS_CLIENT_CONFIGURATION"
    } else {
        "SLAPOS_CONFIGURATION"
    };
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let candidates: Vec<PathBuf> = if client {
        let mut c = vec![];
        if let Some(home) = std::env::var_os("HOME") {
            c.push(Path::new(&home).join(".slapos/slapos-client.cfg"));
        }
        c.push(PathBuf::from("/etc/opt/slapos/slapos.cfg"));
        c
    } else {
        vec![PathBuf::from("/etc/opt/slapos/slapos.cfg")]
    };
    candidates
        .into_iter()
        .find(|p| p.exists())
        .with_context(|| format!("no configuration: pass --cfg FILE or set {env}"))
}
