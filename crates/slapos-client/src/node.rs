//! The node's side of the legacy SLAP protocol: what slapgrid calls. Works
//! against our master and against the reference proxy and master.

use std::collections::BTreeMap;

use slapos_proto::marshal::{self, Value};

use crate::{ClientError, Result, SlapClient};

/// One software release supplied to the computer.
#[derive(Debug, Clone, PartialEq)]
pub struct SuppliedSoftware {
    pub url: String,
    /// `available` (install it) or `destroyed` (remove it).
    pub requested_state: String,
}

/// What a partition must be, as the master sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionTarget {
    pub reference: String,
    /// `started`, `stopped` or `destroyed` (free partitions are `destroyed`
    /// with no software release).
    pub requested_state: String,
    pub software_release: Option<String>,
    pub software_type: Option<String>,
    pub instance_title: Option<String>,
    pub root_instance_title: Option<String>,
    /// `_instance_guid`: names the instance to the master.
    pub instance_guid: Option<String>,
    /// Changes whenever the partition must be reprocessed.
    pub timestamp: Option<String>,
    /// Instance parameters (system keys removed).
    pub parameters: BTreeMap<String, Option<String>>,
    pub connection: BTreeMap<String, Option<String>>,
    /// `(interface, address)` pairs.
    pub ip_list: Vec<(String, String)>,
    /// Shared instances hosted here: each a flat map of their parameters plus
    /// `slave_reference`, `slave_title`, `slap_software_type`.
    pub shared: Vec<BTreeMap<String, String>>,
}

/// The node's whole desired state.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct ComputerTarget {
    pub software: Vec<SuppliedSoftware>,
    pub partitions: Vec<PartitionTarget>,
}

const SYSTEM_KEYS: &[&str] = &[
    "full_address_list",
    "instance_title",
    "ip_list",
    "root_instance_title",
    "slap_computer_id",
    "slap_computer_partition_id",
    "slap_software_release_url",
    "slap_software_type",
    "slave_instance_list",
    "timestamp",
];

fn text(v: Option<&Value>) -> Option<String> {
    match v {
        None | Some(Value::None) => None,
        Some(v) => Some(marshal::python_str(v)),
    }
}

fn string_map(v: Option<&Value>) -> BTreeMap<String, Option<String>> {
    match v {
        Some(Value::Dict(items)) => items
            .iter()
            .map(|(k, v)| (marshal::python_str(k), text(Some(v))))
            .collect(),
        _ => BTreeMap::new(),
    }
}

fn partition_target(p: &Value) -> Result<PartitionTarget> {
    let reference = text(p.get("_partition_id"))
        .ok_or_else(|| ClientError::BadAnswer("a partition has no _partition_id".into()))?;
    let params = p.get("_parameter_dict");
    let software_release = match p.get("_software_release_document") {
        Some(Value::Object(sr)) => text(sr.get("_software_release")),
        _ => None,
    };
    let ip_list = match params.and_then(|d| d.get("ip_list")) {
        Some(Value::List(items)) | Some(Value::Tuple(items)) => items
            .iter()
            .filter_map(|t| match t.as_slice() {
                Some([iface, addr, ..]) => {
                    Some((marshal::python_str(iface), marshal::python_str(addr)))
                }
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    let shared = match params.and_then(|d| d.get("slave_instance_list")) {
        Some(Value::List(items)) => items
            .iter()
            .map(|s| match s {
                Value::Dict(kv) => kv
                    .iter()
                    .map(|(k, v)| (marshal::python_str(k), marshal::python_str(v)))
                    .collect(),
                _ => BTreeMap::new(),
            })
            .collect(),
        _ => Vec::new(),
    };
    let mut parameters = string_map(params);
    parameters.retain(|k, _| !SYSTEM_KEYS.contains(&k.as_str()));
    Ok(PartitionTarget {
        reference,
        requested_state: text(p.get("_requested_state")).unwrap_or_else(|| "destroyed".into()),
        software_type: params.and_then(|d| text(d.get("slap_software_type"))),
        instance_title: params.and_then(|d| text(d.get("instance_title"))),
        root_instance_title: params.and_then(|d| text(d.get("root_instance_title"))),
        instance_guid: text(p.get("_instance_guid")),
        timestamp: params.and_then(|d| text(d.get("timestamp"))),
        connection: string_map(p.get("_connection_dict")),
        software_release,
        parameters,
        ip_list,
        shared,
    })
}

/// Parses a marshalled `Computer` (the answer of `getFullComputerInformation`).
pub fn parse_computer(body: &str) -> Result<ComputerTarget> {
    let computer = marshal::loads(body)
        .map_err(|e| ClientError::BadAnswer(format!("computer information: {e}")))?;
    let software = match computer.get("_software_release_list") {
        Some(Value::List(items)) => items
            .iter()
            .filter_map(|s| {
                Some(SuppliedSoftware {
                    url: text(s.get("_software_release"))?,
                    requested_state: text(s.get("_requested_state"))
                        .unwrap_or_else(|| "available".into()),
                })
            })
            .collect(),
        _ => {
            return Err(ClientError::BadAnswer(
                "computer information has no _software_release_list".into(),
            ))
        }
    };
    let partitions = match computer.get("_computer_partition_list") {
        Some(Value::List(items)) => items
            .iter()
            .map(partition_target)
            .collect::<Result<Vec<_>>>()?,
        _ => {
            return Err(ClientError::BadAnswer(
                "computer information has no _computer_partition_list".into(),
            ))
        }
    };
    Ok(ComputerTarget {
        software,
        partitions,
    })
}

/// How a usage report was acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UsageSent {
    /// By our master's JSON endpoint: records new and already recorded.
    Json {
        recorded: u64,
        already_recorded: u64,
    },
    /// By `useComputer` (the reference answers no counts).
    Legacy,
}

/// A partition registered by `node format`.
#[derive(Debug, Clone, PartialEq)]
pub struct PartitionRegistration {
    pub reference: String,
    pub path: String,
    /// `(address, netmask)` pairs.
    pub addresses: Vec<(String, String)>,
    pub interface: String,
    pub user: String,
}

impl SlapClient {
    /// The node's desired state.
    pub async fn computer_target(&self, computer_id: &str) -> Result<ComputerTarget> {
        let body = self
            .get_text(&format!(
                "getFullComputerInformation?computer_id={}",
                enc(computer_id)
            ))
            .await?;
        parse_computer(&body)
    }

    /// Registers the computer and its partitions (`slapos node format`).
    pub async fn register_computer(
        &self,
        computer_id: &str,
        address: &str,
        netmask: &str,
        instance_root: &str,
        software_root: &str,
        partitions: &[PartitionRegistration],
    ) -> Result<()> {
        let s = |v: &str| Value::str(v);
        let partition_list = partitions
            .iter()
            .map(|p| {
                Value::Dict(vec![
                    (
                        s("address_list"),
                        Value::List(
                            p.addresses
                                .iter()
                                .map(|(a, m)| {
                                    Value::Dict(vec![(s("addr"), s(a)), (s("netmask"), s(m))])
                                })
                                .collect(),
                        ),
                    ),
                    (s("path"), s(&p.path)),
                    (s("reference"), s(&p.reference)),
                    (s("tap"), Value::Dict(vec![(s("name"), s(&p.interface))])),
                    (
                        s("user"),
                        Value::Dict(vec![(s("name"), s(&p.user)), (s("path"), s(&p.path))]),
                    ),
                ])
            })
            .collect();
        let dict = Value::Dict(vec![
            (s("address"), s(address)),
            (s("instance_root"), s(instance_root)),
            (s("netmask"), s(netmask)),
            (s("partition_list"), Value::List(partition_list)),
            (s("reference"), s(computer_id)),
            (s("software_root"), s(software_root)),
        ]);
        let xml = marshal::dumps(&dict).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        self.post_form("loadComputerConfigurationFromXML", &[("xml", xml.as_str())])
            .await
            .map(|_| ())
    }

    /// `building`, `available`, `destroyed` or `error` (with its log) for a release.
    pub async fn report_software(
        &self,
        computer_id: &str,
        url: &str,
        state: &str,
        error_log: Option<&str>,
    ) -> Result<()> {
        let endpoint = match state {
            "building" => "buildingSoftwareRelease",
            "available" => "availableSoftwareRelease",
            "destroyed" => "destroyedSoftwareRelease",
            _ => "softwareReleaseError",
        };
        let mut fields = vec![("url", url), ("computer_id", computer_id)];
        if let Some(log) = error_log {
            fields.push(("error_log", log));
        }
        self.post_form(endpoint, &fields).await.map(|_| ())
    }

    /// `started`, `stopped`, `destroyed` or `error` (with its log) for a partition.
    pub async fn report_partition(
        &self,
        computer_id: &str,
        partition: &str,
        state: &str,
        error_log: Option<&str>,
    ) -> Result<()> {
        let endpoint = match state {
            "started" => "startedComputerPartition",
            "stopped" => "stoppedComputerPartition",
            "destroyed" => "destroyedComputerPartition",
            _ => "softwareInstanceError",
        };
        let mut fields = vec![
            ("computer_id", computer_id),
            ("computer_partition_id", partition),
        ];
        if let Some(log) = error_log {
            fields.push(("error_log", log));
        }
        self.post_partition(endpoint, computer_id, partition, &fields)
            .await
            .map(|_| ())
    }

    /// Publishes connection parameters (for a hosted shared instance with `slave_reference`).
    pub async fn set_connection(
        &self,
        computer_id: &str,
        partition: &str,
        slave_reference: Option<&str>,
        connection: &BTreeMap<String, String>,
    ) -> Result<()> {
        let dict = Value::Dict(
            connection
                .iter()
                .map(|(k, v)| (Value::str(k.clone()), Value::str(v.clone())))
                .collect(),
        );
        let xml = marshal::dumps(&dict).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        let fields = [
            ("computer_id", computer_id),
            ("computer_partition_id", partition),
            ("connection_xml", xml.as_str()),
            ("slave_reference", slave_reference.unwrap_or("None")),
        ];
        self.post_partition(
            "setComputerPartitionConnectionXml",
            computer_id,
            partition,
            &fields,
        )
        .await
        .map(|_| ())
    }

    /// A request made by an instance (its children and shared instances).
    pub async fn request_as_partition(
        &self,
        computer_id: &str,
        partition: &str,
        spec: &crate::RequestSpec,
    ) -> Result<crate::RequestedInstance> {
        self.request_with(spec, Some((computer_id, partition)))
            .await
    }

    pub async fn bang(&self, computer_id: &str, partition: &str, message: &str) -> Result<()> {
        let fields = [
            ("computer_id", computer_id),
            ("computer_partition_id", partition),
            ("message", message),
        ];
        self.post_partition("softwareInstanceBang", computer_id, partition, &fields)
            .await
            .map(|_| ())
    }

    /// Waits until the computer's desired state differs from `since` (our
    /// master's long poll); returns the new version. Masters without a watch
    /// (the reference) answer an error: poll instead.
    pub async fn watch(
        &self,
        computer_id: &str,
        since: Option<&str>,
        timeout: std::time::Duration,
    ) -> Result<String> {
        let mut path = format!(
            "api/v1/computers/{}/watch?timeout={}",
            enc(computer_id),
            timeout.as_secs()
        );
        if let Some(v) = since {
            path.push_str(&format!("&since={}", enc(v)));
        }
        let url = self.url(&path);
        let response = self
            .http
            .get(&url)
            .timeout(timeout + std::time::Duration::from_secs(10))
            .send()
            .await;
        let body = self.check(&url, response).await?;
        let v: serde_json::Value =
            serde_json::from_str(&body).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        v["version"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| ClientError::BadAnswer("watch answer has no version".into()))
    }

    /// Sends a usage report: as JSON to our master, as the TioXML journal
    /// (`useComputer`) to the reference, which has no JSON endpoint.
    pub async fn send_usage(
        &self,
        computer_id: &str,
        report: &slapos_proto::usage::UsageReport,
    ) -> Result<UsageSent> {
        let body =
            serde_json::to_value(report).map_err(|e| ClientError::BadAnswer(e.to_string()))?;
        let path = format!("api/v1/computers/{}/usage", enc(computer_id));
        match self.post_json(&path, &body).await {
            Ok(answer) => {
                let v: serde_json::Value = serde_json::from_str(&answer)
                    .map_err(|e| ClientError::BadAnswer(format!("usage answer: {e}")))?;
                Ok(UsageSent::Json {
                    recorded: v["recorded"].as_u64().unwrap_or(0),
                    already_recorded: v["already_recorded"].as_u64().unwrap_or(0),
                })
            }
            // A 4xx that is not one of our master's JSON errors: a master
            // without this route (the reference): the legacy call.
            Err(ClientError::NotFound(m)) if !is_json_error(&m) => {
                self.use_computer(computer_id, &report.to_tioxml()).await?;
                Ok(UsageSent::Legacy)
            }
            Err(ClientError::Refused { status, message })
                if (400..500).contains(&status) && !is_json_error(&message) =>
            {
                self.use_computer(computer_id, &report.to_tioxml()).await?;
                Ok(UsageSent::Legacy)
            }
            Err(e) => Err(e),
        }
    }

    /// Sends the usage journal (TioXML) of the computer.
    pub async fn use_computer(&self, computer_id: &str, use_string: &str) -> Result<()> {
        self.post_form(
            "useComputer",
            &[("computer_id", computer_id), ("use_string", use_string)],
        )
        .await
        .map(|_| ())
    }
}

/// Our master's errors are JSON objects `{"error": ..., "status": ...}`.
fn is_json_error(message: &str) -> bool {
    let m = message.trim_start();
    m.starts_with('{') && m.contains("\"status\":")
}

fn enc(s: &str) -> String {
    form_urlencoded::byte_serialize(s.as_bytes()).collect()
}
