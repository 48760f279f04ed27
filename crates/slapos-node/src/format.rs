//! `slapos node format`: partitions (directories, Unix users, addresses)
//! created on this computer and registered with the master. Idempotent:
//! what exists is kept, busy partitions included.

use std::net::Ipv4Addr;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use serde::{Deserialize, Serialize};
use slapos_client::node::PartitionRegistration;
use slapos_client::SlapClient;

use crate::config::NodeConfig;

#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Command(String),
    #[error("invalid ipv4_local_network {0:?}: expected a.b.c.d/prefix")]
    Network(String),
    #[error("cannot register the computer with the master: {0}")]
    Master(#[from] slapos_client::ClientError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> FormatError {
    let what = what.into();
    move |source| FormatError::Io { what, source }
}

/// One formatted partition, as recorded on disk.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FormattedPartition {
    pub reference: String,
    pub path: String,
    pub ipv4: String,
    pub netmask: String,
    pub user: String,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
}

/// What format did, kept in `<state_dir>/format.json`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Default)]
pub struct Formatted {
    pub partitions: Vec<FormattedPartition>,
}

impl Formatted {
    pub fn load(config: &NodeConfig) -> Option<Formatted> {
        let text = std::fs::read_to_string(config.state_dir().join("format.json")).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub fn partition(&self, reference: &str) -> Option<&FormattedPartition> {
        self.partitions.iter().find(|p| p.reference == reference)
    }
}

pub fn is_root() -> bool {
    nix::unistd::Uid::effective().is_root()
}

fn parse_network(text: &str) -> Result<(Ipv4Addr, u8), FormatError> {
    let (addr, prefix) = text
        .split_once('/')
        .ok_or_else(|| FormatError::Network(text.into()))?;
    let addr: Ipv4Addr = addr
        .parse()
        .map_err(|_| FormatError::Network(text.into()))?;
    let prefix: u8 = prefix
        .parse()
        .map_err(|_| FormatError::Network(text.into()))?;
    if !(8..=30).contains(&prefix) {
        return Err(FormatError::Network(text.into()));
    }
    Ok((addr, prefix))
}

fn netmask(prefix: u8) -> Ipv4Addr {
    Ipv4Addr::from(u32::MAX << (32 - prefix as u32))
}

/// Partition N's address: the network's (N + 10)th host, leaving the first
/// addresses to the network's gateway and the computer.
fn partition_ipv4(network: Ipv4Addr, prefix: u8, index: usize) -> Result<Ipv4Addr, FormatError> {
    let hosts = (1u64 << (32 - prefix as u32)) - 2;
    let host = index as u64 + 10;
    if host >= hosts {
        return Err(FormatError::Command(format!(
            "the network /{prefix} is too small for {} partitions",
            index + 1
        )));
    }
    Ok(Ipv4Addr::from(
        (u32::from(network) & u32::from(netmask(prefix))) + host as u32,
    ))
}

fn run(program: &str, args: &[&str]) -> Result<std::process::Output, FormatError> {
    std::process::Command::new(program)
        .args(args)
        .output()
        .map_err(|e| FormatError::Command(format!("cannot run {program}: {e}")))
}

fn ensure_group(name: &str) -> Result<u32, FormatError> {
    if let Ok(Some(g)) = nix::unistd::Group::from_name(name) {
        return Ok(g.gid.as_raw());
    }
    let out = run("groupadd", &["-r", name])?;
    if !out.status.success() {
        return Err(FormatError::Command(format!(
            "groupadd {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    nix::unistd::Group::from_name(name)
        .ok()
        .flatten()
        .map(|g| g.gid.as_raw())
        .ok_or_else(|| FormatError::Command(format!("group {name} missing after groupadd")))
}

fn ensure_user(name: &str, home: &Path, software_group: &str) -> Result<(u32, u32), FormatError> {
    if let Ok(Some(u)) = nix::unistd::User::from_name(name) {
        // A user made for another instance root points its home there: move it.
        if u.dir != home {
            let out = run("usermod", &["-d", &home.to_string_lossy(), name])?;
            if !out.status.success() {
                tracing::warn!(
                    user = name,
                    "usermod -d failed: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                );
            }
        }
        return Ok((u.uid.as_raw(), u.gid.as_raw()));
    }
    ensure_group(name)?;
    let home = home.to_string_lossy();
    let out = run(
        "useradd",
        &[
            "-r",
            "-d",
            &home,
            "-g",
            name,
            "-G",
            software_group,
            "-s",
            "/bin/sh",
            name,
        ],
    )?;
    if !out.status.success() {
        return Err(FormatError::Command(format!(
            "useradd {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    let u = nix::unistd::User::from_name(name)
        .ok()
        .flatten()
        .ok_or_else(|| FormatError::Command(format!("user {name} missing after useradd")))?;
    Ok((u.uid.as_raw(), u.gid.as_raw()))
}

fn ensure_address(interface: &str, ip: Ipv4Addr, prefix: u8) -> Result<(), FormatError> {
    let cidr = format!("{ip}/{prefix}");
    let out = run("ip", &["-4", "addr", "add", &cidr, "dev", interface])?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    if out.status.success() || stderr.contains("File exists") || stderr.contains("already assigned")
    {
        Ok(())
    } else {
        Err(FormatError::Command(format!(
            "ip addr add {cidr} dev {interface}: {}",
            stderr.trim()
        )))
    }
}

/// Creates what is missing on this computer and records it. Does not talk to the master.
pub fn format_local(config: &NodeConfig) -> Result<Formatted, FormatError> {
    let root = is_root();
    for dir in [
        &config.instance_root,
        &config.software_root,
        &config.state_dir(),
    ] {
        std::fs::create_dir_all(dir).map_err(io(format!("create {}", dir.display())))?;
    }
    std::fs::set_permissions(
        &config.instance_root,
        std::fs::Permissions::from_mode(0o755),
    )
    .map_err(io("chmod instance_root"))?;
    let network = config
        .ipv4_local_network
        .as_deref()
        .map(parse_network)
        .transpose()?;
    let alter_user = config.alter_user && root;
    let alter_network = config.alter_network && root && network.is_some();
    if alter_user {
        ensure_group(&config.software_user)?;
    }
    let previous = Formatted::load(config).unwrap_or_default();
    if previous.partitions.len() > config.partition_amount {
        return Err(FormatError::Command(format!(
            "partition_amount {} is smaller than the {} partitions already formatted: partitions are never removed",
            config.partition_amount,
            previous.partitions.len()
        )));
    }
    let mut formatted = Formatted::default();
    for index in 0..config.partition_amount {
        let reference = config.partition_reference(index);
        let path = config.partition_path(&reference);
        std::fs::create_dir_all(&path).map_err(io(format!("create {}", path.display())))?;
        let user = format!("{}{index}", config.user_base_name);
        let (uid, gid) = if alter_user {
            let (uid, gid) = ensure_user(&user, &path, &config.software_user)?;
            nix::unistd::chown(&path, Some(uid.into()), Some(gid.into()))
                .map_err(|e| FormatError::Command(format!("chown {}: {e}", path.display())))?;
            (Some(uid), Some(gid))
        } else {
            (None, None)
        };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o750))
            .map_err(io(format!("chmod {}", path.display())))?;
        let (ipv4, mask) = match network {
            Some((net, prefix)) => {
                let ip = partition_ipv4(net, prefix, index)?;
                if alter_network {
                    ensure_address(&config.interface_name, ip, prefix)?;
                    (ip.to_string(), netmask(prefix).to_string())
                } else {
                    ("127.0.0.1".to_string(), "255.0.0.0".to_string())
                }
            }
            None => ("127.0.0.1".to_string(), "255.0.0.0".to_string()),
        };
        formatted.partitions.push(FormattedPartition {
            reference,
            path: path.to_string_lossy().into_owned(),
            ipv4,
            netmask: mask,
            user: if alter_user { user } else { current_user() },
            uid,
            gid,
        });
    }
    let record = config.state_dir().join("format.json");
    let json = serde_json::to_string_pretty(&formatted).unwrap_or_default();
    write_atomic(&record, json.as_bytes()).map_err(io(format!("write {}", record.display())))?;
    Ok(formatted)
}

fn current_user() -> String {
    nix::unistd::User::from_uid(nix::unistd::Uid::effective())
        .ok()
        .flatten()
        .map(|u| u.name)
        .unwrap_or_else(|| "root".into())
}

/// Writes a file so that a crash leaves either the old or the new content.
pub fn write_atomic(path: &Path, content: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, content)?;
    std::fs::rename(&tmp, path)
}

/// `slapos node format`: local changes, then registration with the master.
pub async fn format(config: &NodeConfig, client: &SlapClient) -> Result<Formatted, FormatError> {
    let formatted = {
        let config = config.clone();
        tokio::task::spawn_blocking(move || format_local(&config))
            .await
            .map_err(|e| FormatError::Command(e.to_string()))??
    };
    let registrations: Vec<PartitionRegistration> = formatted
        .partitions
        .iter()
        .map(|p| PartitionRegistration {
            reference: p.reference.clone(),
            path: p.path.clone(),
            addresses: vec![(p.ipv4.clone(), p.netmask.clone())],
            interface: config.interface_name.clone(),
            user: p.user.clone(),
        })
        .collect();
    let (address, netmask) = formatted
        .partitions
        .first()
        .map(|p| (p.ipv4.clone(), p.netmask.clone()))
        .unwrap_or_else(|| ("127.0.0.1".into(), "255.0.0.0".into()));
    client
        .register_computer(
            &config.computer_id,
            &address,
            &netmask,
            &config.instance_root.to_string_lossy(),
            &config.software_root.to_string_lossy(),
            &registrations,
        )
        .await?;
    Ok(formatted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_come_from_the_network() {
        let (net, prefix) = parse_network("10.0.0.0/16").unwrap();
        assert_eq!(
            partition_ipv4(net, prefix, 0).unwrap(),
            Ipv4Addr::new(10, 0, 0, 10)
        );
        assert_eq!(
            partition_ipv4(net, prefix, 300).unwrap(),
            Ipv4Addr::new(10, 0, 1, 54)
        );
        assert_eq!(netmask(16), Ipv4Addr::new(255, 255, 0, 0));
        assert!(parse_network("10.0.0.0").is_err());
        assert!(partition_ipv4(Ipv4Addr::new(10, 0, 0, 0), 29, 5).is_err());
    }

    #[test]
    fn local_format_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = NodeConfig::new(
            "C",
            "http://x",
            dir.path().join("inst"),
            dir.path().join("soft"),
        );
        config.partition_amount = 3;
        let first = format_local(&config).unwrap();
        std::fs::write(dir.path().join("inst/slappart1/data"), "kept").unwrap();
        let second = format_local(&config).unwrap();
        assert_eq!(first, second);
        assert_eq!(second.partitions.len(), 3);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("inst/slappart1/data")).unwrap(),
            "kept"
        );
        let mode = std::fs::metadata(dir.path().join("inst/slappart2"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o750);
        config.partition_amount = 2;
        assert!(format_local(&config).is_err(), "never shrinks");
    }
}
