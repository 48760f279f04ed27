//! The node's settings, from the `[slapos]` and `[slapformat]` sections of
//! the reference's `slapos.cfg` (plus `[slapos-node]` for what is ours).

use std::path::PathBuf;

/// Everything the node needs to know about its computer.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub computer_id: String,
    pub master_url: String,
    pub instance_root: PathBuf,
    pub software_root: PathBuf,
    pub partition_amount: usize,
    pub partition_base_name: String,
    pub user_base_name: String,
    pub software_user: String,
    /// Interface that carries the partitions' addresses (`lo` by default).
    pub interface_name: String,
    /// `10.0.0.0/16`: each partition gets one address of it. `None`: all
    /// partitions share 127.0.0.1 and are told apart by their port ranges.
    pub ipv4_local_network: Option<String>,
    /// Create a Unix user per partition (only possible as root).
    pub alter_user: bool,
    /// Add the partitions' addresses to the interface (only possible as root).
    pub alter_network: bool,
    /// First port of partition 0's range; partition N starts at base + N × ports_per_partition.
    pub port_base: u16,
    pub ports_per_partition: u16,
    /// Seconds between two polls of the master when it cannot be watched.
    pub poll_interval: u64,
    /// Seconds a promise may take to turn green after (re)starting services.
    pub promise_timeout: u64,
    /// Seconds between two usage reports of `slapos node run`.
    pub report_interval: u64,
    /// Seconds between two usage samples of `slapos node run`.
    pub metering_interval: u64,
    /// Where downloads are cached (default `<software_root>/.cache`); may be
    /// shared by several nodes of one machine.
    pub download_cache: Option<PathBuf>,
    /// The computer's client certificate and the master's authority
    /// (`[slapos] cert_file`, `key_file`, `master_ca_file`), for an HTTPS
    /// master that authenticates nodes.
    pub tls: slapos_client::TlsSettings,
}

impl NodeConfig {
    /// Defaults for a computer with `partition_amount` partitions under the given roots.
    pub fn new(
        computer_id: &str,
        master_url: &str,
        instance_root: PathBuf,
        software_root: PathBuf,
    ) -> NodeConfig {
        NodeConfig {
            computer_id: computer_id.to_string(),
            master_url: master_url.to_string(),
            instance_root,
            software_root,
            partition_amount: 10,
            partition_base_name: "slappart".into(),
            user_base_name: "slapuser".into(),
            software_user: "slapsoft".into(),
            interface_name: "lo".into(),
            ipv4_local_network: None,
            alter_user: false,
            alter_network: false,
            port_base: 20000,
            ports_per_partition: 10,
            poll_interval: 5,
            promise_timeout: 30,
            report_interval: 3600,
            metering_interval: 60,
            download_cache: std::env::var_os("SLAPOS_DOWNLOAD_CACHE").map(PathBuf::from),
            tls: slapos_client::TlsSettings::default(),
        }
    }

    /// Directory where the node keeps its own state (supervisor records,
    /// cached desired state, format record).
    pub fn state_dir(&self) -> PathBuf {
        self.instance_root.join(".slapos-node")
    }

    pub fn partition_reference(&self, index: usize) -> String {
        format!("{}{index}", self.partition_base_name)
    }

    /// Index of a partition from its reference (`slappart7` → 7).
    pub fn partition_index(&self, reference: &str) -> Option<usize> {
        reference
            .strip_prefix(&self.partition_base_name)?
            .parse()
            .ok()
    }

    pub fn partition_path(&self, reference: &str) -> PathBuf {
        self.instance_root.join(reference)
    }

    /// The port range of a partition.
    pub fn ports_of(&self, reference: &str) -> std::ops::Range<u32> {
        let index = self.partition_index(reference).unwrap_or(0) as u32;
        let start = self.port_base as u32 + index * self.ports_per_partition as u32;
        start..start + self.ports_per_partition as u32
    }
}
