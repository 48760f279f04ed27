//! `slapos up`: everything on one machine in the foreground: a proxy on
//! SQLite, a node with its partitions, and the catalog supplied; all state
//! under one directory, with a `slapos.cfg` that our CLI and the Python
//! `slapos` CLI can both use.

use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use slapos_client::SlapClient;
use slapos_master::{EngineConfig, MasterConfig};
use slapos_node::daemon::Node;
use slapos_store::{Store, StoreOptions};
use tokio::sync::watch;

use crate::config::SlaposConfig;

pub struct UpOptions {
    pub data_dir: Option<PathBuf>,
    pub partitions: usize,
    pub port: u16,
    /// First port of the partitions' ranges.
    pub port_base: u16,
    /// Catalog releases to supply; empty: all of them; `none`: none.
    pub supply: Vec<String>,
    /// The computer's reference (`local` by default).
    pub computer_id: String,
    /// Prefix of the partitions' Unix users (`[slapformat] user_base_name`).
    pub user_base: Option<String>,
}

/// `$XDG_DATA_HOME/slapos`, else `~/.local/share/slapos`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_DATA_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("slapos");
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."));
    home.join(".local/share/slapos")
}

fn write_config(data: &Path, options: &UpOptions, catalog: &[(String, String)]) -> Result<PathBuf> {
    let (port, port_base, partitions) = (options.port, options.port_base, options.partitions);
    let computer_id = &options.computer_id;
    let users = options
        .user_base
        .as_ref()
        .map(|base| format!("user_base_name = {base}\n"))
        .unwrap_or_default();
    let aliases: String = catalog
        .iter()
        .map(|(n, u)| format!("  {n} {u}\n"))
        .collect();
    let text = format!(
        "# Written by `slapos up`; used by `slapos ... --cfg {cfg}` (ours and the Python CLI).\n\
         [slapos]\nmaster_url = http://127.0.0.1:{port}\ncomputer_id = {computer_id}\n\
         instance_root = {inst}\nsoftware_root = {soft}\n\n\
         [slapproxy]\nhost = 127.0.0.1\nport = {port}\ndatabase_uri = {db}\nsoftware_product_list =\n{aliases}\n\
         [slapformat]\npartition_amount = {partitions}\nalter_network = false\n{users}\n\
         [slapos-node]\nport_base = {port_base}\n\n\
         [slapconsole]\nalias =\n{aliases}",
        cfg = data.join("slapos.cfg").display(),
        inst = data.join("instance").display(),
        soft = data.join("software").display(),
        db = data.join("proxy.db").display(),
    );
    let path = data.join("slapos.cfg");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(path)
}

pub async fn up(options: UpOptions) -> Result<()> {
    let data = std::path::absolute(options.data_dir.clone().unwrap_or_else(default_data_dir))?;
    std::fs::create_dir_all(&data).with_context(|| format!("cannot create {}", data.display()))?;
    let catalog =
        slapos_catalog::materialize(&data.join("catalog")).context("cannot write the catalog")?;
    let cfg_path = write_config(&data, &options, &catalog)?;
    let cfg = SlaposConfig::load(&cfg_path)?;
    let mut node_config = crate::cmd::node::node_config(&cfg)?;
    node_config.poll_interval = 1;

    // The master.
    let db = data.join("proxy.db").to_string_lossy().into_owned();
    let store =
        tokio::task::spawn_blocking(move || Store::open(&db, &StoreOptions::default())).await??;
    let listener = tokio::net::TcpListener::bind(("127.0.0.1", options.port))
        .await
        .with_context(|| {
            format!(
                "cannot listen on 127.0.0.1:{} (in use? try --port)",
                options.port
            )
        })?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|v| *v).await;
    };
    let master_config = MasterConfig {
        engine: EngineConfig {
            default_computer: Some(node_config.computer_id.clone()),
        },
        software_products: catalog.clone(),
        ..MasterConfig::default()
    };
    let master = tokio::spawn(slapos_master::serve(
        listener,
        store,
        master_config,
        stopped(stop_rx.clone()),
    ));

    // The node, formatted and registered, with the catalog supplied.
    let client = SlapClient::new(&node_config.master_url)?;
    let formatted = slapos_node::format::format(&node_config, &client).await?;
    let supply_none = options.supply == ["none"];
    for name in options.supply.iter().filter(|_| !supply_none) {
        if !catalog.iter().any(|(n, _)| n == name) {
            anyhow::bail!(
                "--supply: no release {name:?} in the catalog (see `slapos catalog list`)"
            );
        }
    }
    let mut supplied = std::collections::BTreeSet::new();
    for (name, url) in &catalog {
        let wanted = !supply_none && (options.supply.is_empty() || options.supply.contains(name));
        if wanted && supplied.insert(url.clone()) {
            client
                .supply(url, &node_config.computer_id, "available")
                .await?;
        }
    }
    let node = Arc::new(Node::open(node_config.clone(), formatted)?);
    let runner = {
        let node = node.clone();
        let rx = stop_rx.clone();
        tokio::spawn(async move { node.run(stopped(rx)).await })
    };

    println!(
        "slapos up: master http://127.0.0.1:{}  data {}",
        options.port,
        data.display()
    );
    println!(
        "  try: slapos request my-redis redis --cfg {}",
        cfg_path.display()
    );
    println!(
        "  catalog: {}",
        catalog
            .iter()
            .map(|(n, _)| n.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let tty = std::io::stdout().is_terminal();
    let mut last = String::new();
    let shutdown = crate::cmd::serve::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
        let line = summary(&node);
        if line != last {
            if tty {
                print!("\r\x1b[2K{line}");
                use std::io::Write;
                let _ = std::io::stdout().flush();
            } else {
                println!("{line}");
            }
            last = line;
        }
    }
    println!("\nslapos up: stopping");
    let _ = stop_tx.send(true);
    let _ = runner.await;
    node.supervisor().stop_all().await;
    let _ = master.await;
    Ok(())
}

fn summary(node: &Node) -> String {
    let Ok(s) = node.status.lock() else {
        return String::new();
    };
    let count = |prefix: &str| {
        s.partitions
            .values()
            .filter(|v| v.starts_with(prefix))
            .count()
    };
    let sw_ok = s.software.values().filter(|v| *v == "available").count();
    let sw_err = s
        .software
        .values()
        .filter(|v| v.starts_with("error"))
        .count();
    format!(
        "master {} | software {}/{} ready{} | instances: {} started, {} stopped, {} waiting, {} failing | {} free partitions",
        if s.master_reachable { "up" } else { "unreachable" },
        sw_ok,
        s.software.len(),
        if sw_err > 0 { format!(", {sw_err} failed") } else { String::new() },
        count("started") + count("uptodate"),
        count("stopped"),
        count("waiting"),
        count("error"),
        count("free"),
    )
}
