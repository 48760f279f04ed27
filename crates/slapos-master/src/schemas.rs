//! Request parameters checked against the release's JSON Schema, so a bad
//! parameter is refused at request time with a message naming it, instead
//! of failing later on the node. Only native releases (`.toml` manifests)
//! declare schemas; their manifests are fetched once a minute at most.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use slapos_proto::marshal::{python_str, Value};
use slapos_release::{effective_parameters, validate_parameters, Manifest};

use crate::error::MasterError;

const TTL: Duration = Duration::from_secs(60);
const MAX_MANIFEST: usize = 1024 * 1024;

/// When a manifest was read, and what it was (None: not a usable manifest).
type Cached = (Instant, Option<Arc<Manifest>>);

#[derive(Default)]
pub struct Schemas {
    cache: Mutex<HashMap<String, Cached>>,
    http: reqwest::Client,
}

impl Schemas {
    pub fn new() -> Schemas {
        Schemas {
            cache: Mutex::new(HashMap::new()),
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The manifest of a native release, or None (not native, unreachable,
    /// unparsable: the node will report those).
    pub async fn manifest(&self, url: &str) -> Option<Arc<Manifest>> {
        if !url
            .split(['?', '#'])
            .next()
            .unwrap_or("")
            .ends_with(".toml")
        {
            return None;
        }
        if let Some((at, m)) = self.cache.lock().ok()?.get(url) {
            if at.elapsed() < TTL {
                return m.clone();
            }
        }
        let text = self.fetch(url).await;
        let manifest = text.and_then(|t| Manifest::parse(&t).ok()).map(Arc::new);
        if let Ok(mut cache) = self.cache.lock() {
            cache.insert(url.to_string(), (Instant::now(), manifest.clone()));
        }
        manifest
    }

    async fn fetch(&self, url: &str) -> Option<String> {
        if let Some(path) = url
            .strip_prefix("file://")
            .or_else(|| url.starts_with('/').then_some(url))
        {
            let meta = tokio::fs::metadata(path).await.ok()?;
            if meta.len() as usize > MAX_MANIFEST {
                return None;
            }
            return tokio::fs::read_to_string(path).await.ok();
        }
        let response = self.http.get(url).send().await.ok()?;
        if !response.status().is_success() {
            return None;
        }
        let bytes = response.bytes().await.ok()?;
        (bytes.len() <= MAX_MANIFEST).then(|| String::from_utf8_lossy(&bytes).into_owned())
    }

    /// Refuses parameters the release's schema does not accept.
    pub async fn check(
        &self,
        url: &str,
        software_type: &str,
        shared: bool,
        parameters: &[(String, Value)],
    ) -> Result<(), MasterError> {
        let Some(manifest) = self.manifest(url).await else {
            return Ok(());
        };
        let Some(t) = manifest.software_type(software_type) else {
            return Err(MasterError::BadRequest(format!(
                "software release {} has no software type {software_type:?} (it has: {})",
                manifest.name,
                manifest
                    .types
                    .keys()
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        };
        let schema = if shared {
            t.shared.as_ref().and_then(|s| s.parameters.as_ref())
        } else {
            t.parameters.as_ref()
        };
        let Some(schema) = schema else { return Ok(()) };
        let raw: BTreeMap<String, Option<String>> = parameters
            .iter()
            .map(|(k, v)| (k.clone(), Some(python_str(v))))
            .collect();
        let params = effective_parameters(&raw, Some(schema))
            .map_err(|e| MasterError::BadRequest(e.to_string()))?;
        validate_parameters(&params, schema).map_err(|e| {
            MasterError::BadRequest(format!(
                "invalid parameters for {} ({software_type}): {e}",
                manifest.name
            ))
        })
    }
}
