//! A Rust client of a SlapOS master. Requests and supplies go over the
//! legacy SLAP protocol, so this client works against the reference Python
//! proxy and master too; listings use the JSON API of slapos-rs masters.

use std::collections::BTreeMap;
use std::time::Duration;

use slapos_proto::marshal::{self, Value};

pub mod node;

/// Why a call failed, in terms a user can act on.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot reach the master at {url}: {source}")]
    Unreachable { url: String, source: reqwest::Error },
    /// 404: unknown computer, no free partition, no host for a shared instance...
    #[error("not found: {0}")]
    NotFound(String),
    /// 408: the master accepted the request but has not allocated it yet.
    #[error("the master is provisioning the instance; ask again later")]
    NotReady,
    #[error("the master refused the call ({status}): {message}")]
    Refused { status: u16, message: String },
    #[error("unexpected answer from the master: {0}")]
    BadAnswer(String),
    /// A client certificate, key or authority file that cannot be used.
    #[error("TLS setup: {0}")]
    Tls(String),
}

/// HTTPS settings (`[slapos] cert_file`, `key_file`, `master_ca_file`): the
/// client certificate a `slapos master` issued (a computer's for a node, a
/// user's for the CLI), and the master's authority to verify it with.
#[derive(Debug, Clone, Default)]
pub struct TlsSettings {
    pub cert_file: Option<std::path::PathBuf>,
    pub key_file: Option<std::path::PathBuf>,
    /// Without it the master's certificate is verified against the system's
    /// roots (the reference client does not verify at all).
    pub ca_file: Option<std::path::PathBuf>,
}

impl TlsSettings {
    fn apply(&self, mut builder: reqwest::ClientBuilder) -> Result<reqwest::ClientBuilder> {
        let read = |path: &std::path::Path, what: &str| {
            std::fs::read(path).map_err(|e| {
                ClientError::Tls(format!("cannot read the {what} {}: {e}", path.display()))
            })
        };
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => {
                let mut pem = read(cert, "certificate")?;
                pem.push(b'\n');
                pem.extend(read(key, "key")?);
                let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
                    ClientError::Tls(format!(
                        "{} and {} are not a PEM certificate and its key: {e}",
                        cert.display(),
                        key.display()
                    ))
                })?;
                builder = builder.identity(identity);
            }
            (None, None) => {}
            (Some(_), None) | (None, Some(_)) => {
                return Err(ClientError::Tls(
                    "cert_file and key_file go together: set both or neither".into(),
                ))
            }
        }
        if let Some(ca) = &self.ca_file {
            let certs =
                reqwest::Certificate::from_pem_bundle(&read(ca, "authority")?).map_err(|e| {
                    ClientError::Tls(format!("{}: not PEM certificates: {e}", ca.display()))
                })?;
            if certs.is_empty() {
                return Err(ClientError::Tls(format!(
                    "{}: no certificate",
                    ca.display()
                )));
            }
            builder = builder.tls_certs_only(certs);
        }
        Ok(builder)
    }
}

pub type Result<T> = std::result::Result<T, ClientError>;

/// What to request (the arguments of `OpenOrder.request`).
#[derive(Debug, Clone, Default)]
pub struct RequestSpec {
    pub software_release: String,
    pub title: String,
    pub software_type: Option<String>,
    pub parameters: BTreeMap<String, String>,
    pub sla: BTreeMap<String, String>,
    pub state: Option<String>,
    pub shared: bool,
}

/// The answer to a request.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RequestedInstance {
    /// Requested state as the master answered it (absent for shared instances).
    pub state: Option<String>,
    pub connection_parameters: BTreeMap<String, Option<String>>,
    pub parameters: BTreeMap<String, Option<String>>,
    pub computer: Option<String>,
    pub partition: Option<String>,
    pub instance_guid: Option<String>,
}

#[derive(Clone)]
pub struct SlapClient {
    base: String,
    http: reqwest::Client,
    /// A `slapos master` API token: JSON calls carry it, and user requests
    /// and supplies go through the JSON API, so they belong to its user.
    api_token: Option<String>,
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, Option<String>> {
    match v {
        Some(Value::Dict(items)) => items
            .iter()
            .map(|(k, v)| {
                let value = match v {
                    Value::None => None,
                    other => Some(marshal::python_str(other)),
                };
                (marshal::python_str(k), value)
            })
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn string_of(v: Option<&Value>) -> Option<String> {
    v.and_then(|v| v.as_str()).map(str::to_string)
}

impl SlapClient {
    /// `master_url` as in `slapos.cfg`; endpoints are relative to it.
    pub fn new(master_url: &str) -> Result<SlapClient> {
        SlapClient::with_tls(master_url, &TlsSettings::default())
    }

    /// Like [`SlapClient::new`], with a client certificate and the master's
    /// authority (an `https://` master of slapos-rs or the reference).
    pub fn with_tls(master_url: &str, tls: &TlsSettings) -> Result<SlapClient> {
        let mut base = master_url.trim().to_string();
        if !base.ends_with('/') {
            base.push('/');
        }
        let builder = reqwest::Client::builder()
            .timeout(Duration::from_secs(60))
            .user_agent(concat!("slapos-rs/", env!("CARGO_PKG_VERSION")));
        let http = tls
            .apply(builder)?
            .build()
            .map_err(|e| ClientError::Unreachable {
                url: base.clone(),
                source: e,
            })?;
        Ok(SlapClient {
            base,
            http,
            api_token: None,
        })
    }

    /// Uses a `slapos master` API token (`[slapos] api_token`): listings
    /// send it, and requests and supplies use the JSON API, whose instances
    /// belong to the token's user (a client certificate, see [`TlsSettings`],
    /// names the user on the legacy protocol too).
    pub fn with_api_token(mut self, token: Option<String>) -> SlapClient {
        self.api_token = token.filter(|t| !t.trim().is_empty());
        self
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.api_token {
            Some(token) => request.bearer_auth(token.trim()),
            None => request,
        }
    }

    async fn post_json(&self, path: &str, body: &serde_json::Value) -> Result<String> {
        let url = self.url(path);
        let response = self
            .authorized(self.http.post(&url).json(body))
            .send()
            .await;
        self.check(&url, response).await
    }

    pub fn master_url(&self) -> &str {
        &self.base
    }

    fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    async fn check(
        &self,
        url: &str,
        response: std::result::Result<reqwest::Response, reqwest::Error>,
    ) -> Result<String> {
        let response = response.map_err(|e| ClientError::Unreachable {
            url: url.to_string(),
            source: e,
        })?;
        let status = response.status().as_u16();
        let body = response
            .text()
            .await
            .map_err(|e| ClientError::Unreachable {
                url: url.to_string(),
                source: e,
            })?;
        match status {
            200..=299 => Ok(body),
            404 => Err(ClientError::NotFound(first_line(&body))),
            408 => Err(ClientError::NotReady),
            _ => Err(ClientError::Refused {
                status,
                message: first_line(&body),
            }),
        }
    }

    async fn post_form(&self, path: &str, fields: &[(&str, &str)]) -> Result<String> {
        self.post(path, fields, None).await
    }

    /// A POST made on behalf of a partition carries the `X-SlapPartition` header, as 1.26 clients do.
    async fn post_partition(
        &self,
        path: &str,
        computer_id: &str,
        partition: &str,
        fields: &[(&str, &str)],
    ) -> Result<String> {
        self.post(path, fields, Some((computer_id, partition)))
            .await
    }

    async fn post(
        &self,
        path: &str,
        fields: &[(&str, &str)],
        partition: Option<(&str, &str)>,
    ) -> Result<String> {
        let url = self.url(path);
        let body = form_urlencoded::Serializer::new(String::new())
            .extend_pairs(fields)
            .finish();
        let mut request = self
            .http
            .post(&url)
            .header("Content-Type", "application/x-www-form-urlencoded")
            .body(body);
        if let Some((computer, partition)) = partition {
            request = request.header(
                "Authorization",
                format!(
                    "X-SlapPartition computer_id={computer}, computer_partition_id={partition}"
                ),
            );
        }
        let response = request.send().await;
        self.check(&url, response).await
    }

    async fn get_text(&self, path: &str) -> Result<String> {
        let url = self.url(path);
        let response = self.http.get(&url).send().await;
        self.check(&url, response).await
    }

    async fn get_json(&self, path: &str) -> Result<serde_json::Value> {
        let url = self.url(path);
        let response = self.authorized(self.http.get(&url)).send().await;
        let body = self.check(&url, response).await?;
        serde_json::from_str(&body).map_err(|e| {
            ClientError::BadAnswer(format!(
                "{url} did not answer JSON ({e}); is this a slapos-rs master?"
            ))
        })
    }

    /// Requests (or re-requests) an instance.
    pub async fn request(&self, spec: &RequestSpec) -> Result<RequestedInstance> {
        if self.api_token.is_some() {
            return self.request_json(spec).await;
        }
        self.request_with(spec, None).await
    }

    /// A user's request through the JSON API (with an API token).
    async fn request_json(&self, spec: &RequestSpec) -> Result<RequestedInstance> {
        let body = serde_json::json!({
            "software_release": spec.software_release,
            "title": spec.title,
            "software_type": spec.software_type,
            "parameters": spec.parameters,
            "sla": spec.sla,
            "state": spec.state,
            "shared": spec.shared,
        });
        let answer = self.post_json("api/v1/instances", &body).await?;
        let answer: serde_json::Value = serde_json::from_str(&answer)
            .map_err(|e| ClientError::BadAnswer(format!("api/v1/instances: {e}")))?;
        let map = |v: &serde_json::Value| -> BTreeMap<String, Option<String>> {
            v.as_object()
                .map(|o| {
                    o.iter()
                        .map(|(k, v)| (k.clone(), v.as_str().map(str::to_string)))
                        .collect()
                })
                .unwrap_or_default()
        };
        let text = |key: &str| answer[key].as_str().map(str::to_string);
        let (computer, partition) = (text("computer"), text("partition"));
        Ok(RequestedInstance {
            state: text("requested_state"),
            connection_parameters: map(&answer["connection_parameters"]),
            parameters: map(&answer["parameters"]),
            instance_guid: match (&computer, &partition) {
                (Some(c), Some(p)) => Some(format!("{c}-{p}")),
                _ => None,
            },
            computer,
            partition,
        })
    }

    async fn request_with(
        &self,
        spec: &RequestSpec,
        partition: Option<(&str, &str)>,
    ) -> Result<RequestedInstance> {
        let dict = |m: &BTreeMap<String, String>| {
            Value::Dict(
                m.iter()
                    .map(|(k, v)| (Value::str(k.clone()), Value::str(v.clone())))
                    .collect(),
            )
        };
        let encode =
            |v: &Value| marshal::dumps(v).map_err(|e| ClientError::BadAnswer(e.to_string()));
        let parameters = encode(&dict(&spec.parameters))?;
        let sla = encode(&dict(&spec.sla))?;
        let state = encode(&spec.state.clone().map_or(Value::None, Value::String))?;
        let shared = encode(&Value::Bool(spec.shared))?;
        let body = self
            .post(
                "requestComputerPartition",
                &[
                    ("software_release", spec.software_release.as_str()),
                    ("partition_reference", spec.title.as_str()),
                    ("partition_parameter_xml", parameters.as_str()),
                    ("filter_xml", sla.as_str()),
                    (
                        "software_type",
                        spec.software_type.as_deref().unwrap_or("default"),
                    ),
                    ("state", state.as_str()),
                    ("shared_xml", shared.as_str()),
                ],
                partition,
            )
            .await?;
        let answer = marshal::loads(&body).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        Ok(RequestedInstance {
            state: string_of(answer.get("_requested_state")),
            connection_parameters: string_map(answer.get("_connection_dict")),
            parameters: string_map(answer.get("_parameter_dict")),
            computer: string_of(answer.get("slap_computer_id")),
            partition: string_of(answer.get("slap_computer_partition_id")),
            instance_guid: string_of(answer.get("_instance_guid")),
        })
    }

    /// Supplies a release to a computer (`available`) or removes it (`destroyed`).
    pub async fn supply(&self, url: &str, computer: &str, state: &str) -> Result<()> {
        if self.api_token.is_some() {
            let encoded: String = form_urlencoded::byte_serialize(computer.as_bytes()).collect();
            self.post_json(
                &format!("api/v1/computers/{}/software", encoded.replace('+', "%20")),
                &serde_json::json!({"url": url, "state": state}),
            )
            .await?;
            return Ok(());
        }
        self.post_form(
            "supplySupply",
            &[("url", url), ("computer_id", computer), ("state", state)],
        )
        .await
        .map(|_| ())
    }

    pub async fn list_instances(&self) -> Result<serde_json::Value> {
        self.get_json("api/v1/instances?roots_only=true&limit=1000")
            .await
    }

    pub async fn instance_by_title(&self, title: &str) -> Result<serde_json::Value> {
        let encoded: String = form_urlencoded::byte_serialize(title.as_bytes()).collect();
        self.get_json(&format!(
            "api/v1/instances/by-title/{}",
            encoded.replace('+', "%20")
        ))
        .await
    }

    /// Usage per time bucket (`GET /api/v1/usage/summary`); `query` is the
    /// URL-encoded filter (`tree=ID&from=...&bucket=86400`).
    pub async fn usage_summary(&self, query: &str) -> Result<serde_json::Value> {
        self.get_json(&format!("api/v1/usage/summary?{query}"))
            .await
    }

    /// The ledger's records (`GET /api/v1/usage`).
    pub async fn usage_records(&self, query: &str) -> Result<serde_json::Value> {
        self.get_json(&format!("api/v1/usage?{query}")).await
    }

    /// Your invoices and credit notes, newest first.
    pub async fn invoices(&self) -> Result<serde_json::Value> {
        self.get_json("api/v1/invoices").await
    }

    /// One invoice with its lines.
    pub async fn invoice(&self, number: &str) -> Result<serde_json::Value> {
        self.get_json(&format!("api/v1/invoices/{}", encode_segment(number)))
            .await
    }

    /// One invoice's lines as CSV.
    pub async fn invoice_csv(&self, number: &str) -> Result<String> {
        let url = self.url(&format!(
            "api/v1/invoices/{}?format=csv",
            encode_segment(number)
        ));
        let response = self.authorized(self.http.get(&url)).send().await;
        self.check(&url, response).await
    }

    /// What this month's (or `period`'s) invoice would be today.
    pub async fn invoice_drafts(&self, period: Option<&str>) -> Result<serde_json::Value> {
        match period {
            Some(p) => {
                self.get_json(&format!(
                    "api/v1/invoices/draft?period={}",
                    encode_segment(p)
                ))
                .await
            }
            None => self.get_json("api/v1/invoices/draft").await,
        }
    }

    pub async fn list_computers(&self) -> Result<serde_json::Value> {
        self.get_json("api/v1/computers").await
    }

    pub async fn computer(&self, reference: &str) -> Result<serde_json::Value> {
        let encoded: String = form_urlencoded::byte_serialize(reference.as_bytes()).collect();
        self.get_json(&format!("api/v1/computers/{}", encoded.replace('+', "%20")))
            .await
    }
}

/// A path segment or query value, percent-encoded.
fn encode_segment(text: &str) -> String {
    let encoded: String = form_urlencoded::byte_serialize(text.as_bytes()).collect();
    encoded.replace('+', "%20")
}

fn first_line(body: &str) -> String {
    let line = body
        .lines()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .trim();
    line.chars().take(500).collect()
}
