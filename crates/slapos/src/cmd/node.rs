//! `slapos node format|software|instance|report|run`: the node agent.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use slapos_client::SlapClient;
use slapos_node::config::NodeConfig;
use slapos_node::daemon::Node;
use slapos_node::format::{self, Formatted};

use crate::config::{self, SlaposConfig};

/// Reads the node's settings from `slapos.cfg` (`[slapos]`, `[slapformat]`, `[slapos-node]`).
pub fn node_config(cfg: &SlaposConfig) -> Result<NodeConfig> {
    let need = |key: &str| {
        cfg.get("slapos", key)
            .with_context(|| format!("{}: [slapos] {key} is not set", cfg.path.display()))
    };
    let mut c = NodeConfig::new(
        &need("computer_id")?,
        &need("master_url")?,
        PathBuf::from(need("instance_root")?),
        PathBuf::from(need("software_root")?),
    );
    let flag =
        |v: Option<String>, default: bool| match v.as_deref().map(str::to_lowercase).as_deref() {
            Some("true" | "yes" | "1" | "on") => true,
            Some("false" | "no" | "0" | "off") => false,
            _ => default,
        };
    if let Some(n) = cfg.get("slapformat", "partition_amount") {
        c.partition_amount = n
            .parse()
            .context("[slapformat] partition_amount must be a number")?;
    }
    if let Some(v) = cfg.get("slapformat", "partition_base_name") {
        c.partition_base_name = v;
    }
    if let Some(v) = cfg.get("slapformat", "user_base_name") {
        c.user_base_name = v;
    }
    if let Some(v) = cfg.get("slapformat", "software_user") {
        c.software_user = v;
    }
    if let Some(v) = cfg.get("slapformat", "interface_name") {
        c.interface_name = v;
    }
    c.ipv4_local_network = cfg.get("slapformat", "ipv4_local_network");
    c.alter_user = flag(cfg.get("slapformat", "alter_user"), true);
    c.alter_network = flag(cfg.get("slapformat", "alter_network"), true);
    if let Some(v) = cfg.get("slapos-node", "port_base") {
        c.port_base = v
            .parse()
            .context("[slapos-node] port_base must be a port number")?;
    }
    if let Some(v) = cfg.get("slapos-node", "poll_interval") {
        c.poll_interval = v
            .parse()
            .context("[slapos-node] poll_interval must be seconds")?;
    }
    if let Some(v) = cfg.get("slapos-node", "download_cache") {
        c.download_cache = Some(PathBuf::from(v));
    }
    if let Some(v) = cfg
        .get("slapos", "report_interval")
        .or_else(|| cfg.get("slapos-node", "report_interval"))
    {
        c.report_interval = v
            .parse()
            .context("[slapos] report_interval must be seconds")?;
    }
    if let Some(v) = cfg.get("slapos", "metering_interval") {
        c.metering_interval = v
            .parse()
            .context("[slapos] metering_interval must be seconds")?;
    }
    if let Some(v) = cfg.get("slapos-node", "promise_timeout") {
        c.promise_timeout = v
            .parse()
            .context("[slapos-node] promise_timeout must be seconds")?;
    }
    c.tls = cfg.client_tls();
    Ok(c)
}

pub fn load(cfg: Option<&Path>) -> Result<NodeConfig> {
    let path = config::locate(cfg, false)?;
    node_config(&SlaposConfig::load(&path)?)
}

pub async fn format(config: &NodeConfig) -> Result<Formatted> {
    let client = SlapClient::with_tls(&config.master_url, &config.tls)?;
    let formatted = format::format(config, &client).await?;
    println!(
        "Formatted {} partitions under {} and registered computer {} with {}",
        formatted.partitions.len(),
        config.instance_root.display(),
        config.computer_id,
        config.master_url
    );
    Ok(formatted)
}

fn open_node(config: &NodeConfig) -> Result<Node> {
    let formatted = Formatted::load(config).with_context(|| {
        format!(
            "computer not formatted: run `slapos node format` first ({} missing)",
            config.state_dir().join("format.json").display()
        )
    })?;
    Node::open(config.clone(), formatted)
}

/// Exit code 1 when something failed.
pub async fn software(config: &NodeConfig) -> Result<i32> {
    let node = open_node(config)?;
    let target = node.client.computer_target(&config.computer_id).await?;
    let wanted: Vec<String> = target.software.iter().map(|s| s.url.clone()).collect();
    let failures = if std::io::IsTerminal::is_terminal(&std::io::stdout()) && !wanted.is_empty() {
        // A spinner naming what is still being installed.
        let bar = indicatif::ProgressBar::new_spinner();
        bar.enable_steady_tick(std::time::Duration::from_millis(120));
        let step = node.software_step(&target);
        tokio::pin!(step);
        loop {
            tokio::select! {
                failures = &mut step => { bar.finish_and_clear(); break failures; }
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {
                    let done = node.status.lock().map(|s| s.software.len()).unwrap_or(0);
                    bar.set_message(format!("software releases: {done}/{} done", wanted.len()));
                }
            }
        }
    } else {
        node.software_step(&target).await
    };
    print_status(&node);
    node.supervisor().clone().detach_ref().await;
    Ok(if failures > 0 { 1 } else { 0 })
}

pub async fn instance(config: &NodeConfig, force: bool) -> Result<i32> {
    let node = open_node(config)?;
    let target = node.client.computer_target(&config.computer_id).await?;
    let pending = node.instance_step(&target, force).await;
    print_status(&node);
    node.supervisor().clone().detach_ref().await;
    Ok(if pending > 0 { 1 } else { 0 })
}

pub async fn report(config: &NodeConfig) -> Result<i32> {
    let node = open_node(config)?;
    // Learn which instance each partition holds (best effort: the journal
    // keeps what the daemon last knew).
    if let Ok(target) = node.client.computer_target(&config.computer_id).await {
        node.note_instances(&target);
    }
    let summary = node.report_usage().await?;
    for r in &summary.created {
        for e in &r.records {
            println!(
                "{} {}: {:.2} s CPU, {:.1} MiB·h memory, {:.1} MiB·h disk, running {} s ({} s)",
                r.report_id.as_deref().unwrap_or(""),
                e.partition,
                e.cpu_micros as f64 / 1e6,
                e.memory_byte_seconds as f64 / 1048576.0 / 3600.0,
                e.disk_byte_seconds as f64 / 1048576.0 / 3600.0,
                e.running_seconds,
                (e.period_end - e.period_start) / 1_000_000,
            );
        }
    }
    println!(
        "usage reports: {} sent, {} pending",
        summary.sent, summary.pending
    );
    node.supervisor().clone().detach_ref().await;
    Ok(if summary.pending > 0 { 1 } else { 0 })
}

pub async fn run(config: &NodeConfig) -> Result<i32> {
    let node = open_node(config)?;
    tracing::info!(computer = %config.computer_id, master = %config.master_url, "node running");
    node.run(crate::cmd::serve::shutdown_signal()).await;
    // Services keep running: a restarted node adopts them.
    node.supervisor().clone().detach_ref().await;
    Ok(0)
}

fn print_status(node: &Node) {
    if let Ok(status) = node.status.lock() {
        for (url, state) in &status.software {
            println!("software {url}: {state}");
        }
        for (partition, state) in &status.partitions {
            if state != "free" {
                println!("{partition}: {state}");
            }
        }
    }
}
