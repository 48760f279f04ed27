//! `slapos proxy start` and `slapos master`: the same engine, configured for
//! one user on one machine (proxy) or for many nodes (master).

use std::path::PathBuf;

use anyhow::{Context, Result};
use slapos_master::{Authentication, EngineConfig, MasterConfig};
use slapos_store::{Store, StoreOptions};

use crate::config::SlaposConfig;

pub struct ServeOptions {
    pub cfg: Option<PathBuf>,
    pub host: Option<String>,
    pub port: Option<u16>,
    pub database_uri: Option<String>,
    /// Proxy mode: requests without `computer_guid` go to `[slapos] computer_id`.
    pub proxy: bool,
}

pub async fn run(options: ServeOptions) -> Result<()> {
    let config = match &options.cfg {
        Some(path) => Some(SlaposConfig::load(path)?),
        None => None,
    };
    let section = if options.proxy {
        "slapproxy"
    } else {
        "slapmaster"
    };
    let get = |key: &str| -> Option<String> {
        config
            .as_ref()
            .and_then(|c| c.first(&[(section, key), ("slapproxy", key), ("slapos", key)]))
    };
    let host = options
        .host
        .clone()
        .or_else(|| get("host"))
        .unwrap_or_else(|| "127.0.0.1".into());
    let port: u16 = match options.port {
        Some(p) => p,
        None => get("port")
            .map(|p| p.parse().context("port must be a number"))
            .transpose()?
            .unwrap_or(8080),
    };
    let database_uri = options
        .database_uri
        .clone()
        .or_else(|| get("database_uri"))
        .context("no database: set database_uri in the configuration or pass --database-uri")?;
    let default_computer = if options.proxy {
        config.as_ref().and_then(|c| c.get("slapos", "computer_id"))
    } else {
        None
    };
    let mut software_products = config
        .as_ref()
        .map(|c| c.pairs("slapproxy", "software_product_list"))
        .unwrap_or_default();
    software_products.dedup();
    let forwards = config.as_ref().map(|c| c.forwards()).unwrap_or_default();

    let store = {
        let uri = database_uri.clone();
        tokio::task::spawn_blocking(move || Store::open(&uri, &StoreOptions::default()))
            .await?
            .with_context(|| format!("cannot open the database {database_uri}"))?
    };
    // Accounts are a `slapos master` feature: the proxy stays single-user.
    let authentication = if options.proxy {
        Authentication::Off
    } else {
        match config
            .as_ref()
            .and_then(|c| c.get("slapmaster", "authentication"))
            .as_deref()
            .map(str::trim)
        {
            None | Some("") | Some("off") | Some("none") => Authentication::Off,
            Some("token") => Authentication::Token,
            Some(other) => anyhow::bail!(
                "[slapmaster] authentication = {other:?}: expected \"token\" or \"off\""
            ),
        }
    };
    let master_config = MasterConfig {
        engine: EngineConfig { default_computer },
        software_products,
        forwards,
        authentication,
        ..MasterConfig::default()
    };
    // HTTPS (`slapos master` only): the authority and the server's
    // certificate are created when their files are missing.
    let tls = match config.as_ref().filter(|_| !options.proxy) {
        Some(c) => match c.master_tls()? {
            Some(files) => {
                let hosts = vec![host.clone()];
                let shown = files.clone();
                let created =
                    tokio::task::spawn_blocking(move || slapos_master::pki::ensure(&shown, &hosts))
                        .await??;
                if created.ca {
                    tracing::info!(path = %files.ca_cert.display(), "created the certificate authority");
                }
                if created.server {
                    tracing::info!(path = %files.cert.display(), "created the server certificate");
                }
                Some(slapos_master::pki::server_config(&files)?)
            }
            None => None,
        },
        None => None,
    };
    if authentication == Authentication::Token && tls.is_none() {
        tracing::warn!(
            "authentication = token without HTTPS: nodes have no credential (client \
             certificates need [slapmaster] ssl_cert_file, ssl_key_file, ca_cert_file, \
             ca_key_file), so the legacy node routes answer 401"
        );
    }
    let address = format!("{}:{port}", host.trim_matches(['[', ']']));
    let listener = tokio::net::TcpListener::bind(if host.contains(':') {
        format!("[{}]:{port}", host.trim_matches(['[', ']']))
    } else {
        address.clone()
    })
    .await
    .with_context(|| format!("cannot listen on {address}"))?;
    tracing::info!(
        address = %listener.local_addr()?,
        database = %database_uri,
        ?authentication,
        https = tls.is_some(),
        "master listening"
    );
    slapos_master::serve_with_tls(listener, tls, store, master_config, shutdown_signal()).await?;
    tracing::info!("master stopped");
    Ok(())
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        if let Ok(mut s) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        {
            s.recv().await;
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
