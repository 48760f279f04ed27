//! User commands in the habits of the reference CLI: `request`, `supply`,
//! `remove`, `service list|info`, `computer list|info`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use slapos_client::{ClientError, RequestSpec, SlapClient};

use crate::config::{self, SlaposConfig};

pub struct Session {
    pub config: SlaposConfig,
    pub client: SlapClient,
}

impl Session {
    pub fn open(cfg: Option<&Path>) -> Result<Session> {
        let path = config::locate(cfg, true)?;
        let config = SlaposConfig::load(&path)?;
        // `[slapos] api_token`: a `slapos master` token (accounts on).
        // `[slapos] cert_file`/`key_file`: a client certificate (HTTPS).
        let client = SlapClient::with_tls(&config.master_url()?, &config.client_tls())?
            .with_api_token(config.get("slapos", "api_token"));
        Ok(Session { config, client })
    }

    /// A URL, or an alias from the configuration.
    pub fn resolve_software(&self, software: &str) -> String {
        let name = software.strip_prefix("product.").unwrap_or(software);
        self.config
            .aliases()
            .into_iter()
            .find(|(alias, _)| alias == name)
            .map(|(_, url)| url)
            .unwrap_or_else(|| software.to_string())
    }
}

fn key_values(items: &[String], what: &str) -> Result<BTreeMap<String, String>> {
    items
        .iter()
        .map(|item| {
            item.split_once('=')
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .with_context(|| format!("{what} {item:?} is not of the form key=value"))
        })
        .collect()
}

pub struct RequestArgs {
    pub reference: String,
    pub software: String,
    pub software_type: Option<String>,
    pub parameters: Vec<String>,
    pub node: Vec<String>,
    pub state: Option<String>,
    pub shared: bool,
}

/// Exit code 2 when the master is still provisioning, as the reference does.
pub async fn request(session: &Session, args: RequestArgs) -> Result<i32> {
    let software_release = session.resolve_software(&args.software);
    let spec = RequestSpec {
        software_release: software_release.clone(),
        title: args.reference.clone(),
        software_type: args.software_type,
        parameters: key_values(&args.parameters, "parameter")?,
        sla: key_values(&args.node, "node constraint")?,
        state: args.state,
        shared: args.shared,
    };
    println!(
        "Requesting {} as an instance of {software_release} ...",
        args.reference
    );
    match session.client.request(&spec).await {
        Ok(instance) => {
            println!("Instance requested.");
            println!(
                "State is : {}.",
                instance.state.as_deref().unwrap_or("started")
            );
            println!("Connection parameters of instance are:");
            println!(
                "{}",
                serde_json::to_string_pretty(&instance.connection_parameters)?
            );
            println!("You can rerun the command to get up-to-date information.");
            Ok(0)
        }
        Err(ClientError::NotReady) => {
            eprintln!("Instance requested. Master is provisioning it. Please rerun in a couple of minutes to get connection information.");
            Ok(2)
        }
        Err(e) => Err(e.into()),
    }
}

pub async fn supply(session: &Session, software: &str, computer: &str, state: &str) -> Result<()> {
    let url = session.resolve_software(software);
    session.client.supply(&url, computer, state).await?;
    match state {
        "destroyed" => println!("Requested removal of {url} from {computer}."),
        _ => println!("Requested {url} to be installed on {computer}."),
    }
    Ok(())
}

fn print_table(rows: &[Vec<String>], headers: &[&str]) {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |cells: Vec<&str>| {
        let parts: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", parts.join("  ").trim_end());
    };
    line(headers.to_vec());
    for row in rows {
        line(row.iter().map(String::as_str).collect());
    }
}

fn field(v: &serde_json::Value, key: &str) -> String {
    match &v[key] {
        serde_json::Value::String(s) => s.clone(),
        serde_json::Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn api_hint(e: ClientError) -> anyhow::Error {
    match e {
        ClientError::NotFound(m) if m.to_lowercase().contains("requested url was not found") => {
            anyhow::anyhow!("this master has no JSON API (listing needs a slapos-rs master)")
        }
        other => other.into(),
    }
}

pub async fn service_list(session: &Session, json: bool) -> Result<()> {
    let list = session.client.list_instances().await.map_err(api_hint)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .map(|i| {
            vec![
                field(i, "title"),
                field(i, "requested_state"),
                field(i, "reported_state"),
                field(i, "software_type"),
                field(i, "software_release"),
            ]
        })
        .collect();
    print_table(
        &rows,
        &["TITLE", "REQUESTED", "REPORTED", "TYPE", "SOFTWARE"],
    );
    Ok(())
}

pub async fn service_info(session: &Session, reference: &str, json: bool) -> Result<()> {
    let info = session
        .client
        .instance_by_title(reference)
        .await
        .map_err(api_hint)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    for key in [
        "title",
        "software_release",
        "software_type",
        "shared",
        "requested_state",
        "reported_state",
        "computer",
        "partition",
    ] {
        println!("{key}: {}", field(&info, key));
    }
    println!(
        "parameters: {}",
        serde_json::to_string_pretty(&info["parameters"])?
    );
    println!(
        "connection parameters: {}",
        serde_json::to_string_pretty(&info["connection_parameters"])?
    );
    Ok(())
}

pub async fn computer_list(session: &Session, json: bool) -> Result<()> {
    let list = session.client.list_computers().await.map_err(api_hint)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .map(|c| {
            vec![
                field(c, "reference"),
                field(c, "address"),
                format!(
                    "{}/{}",
                    field(c, "partitions_free"),
                    field(c, "partitions_total")
                ),
            ]
        })
        .collect();
    print_table(&rows, &["REFERENCE", "ADDRESS", "FREE/TOTAL"]);
    Ok(())
}

pub async fn computer_info(session: &Session, reference: &str, json: bool) -> Result<()> {
    let info = session.client.computer(reference).await.map_err(api_hint)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&info)?);
        return Ok(());
    }
    let c = &info["computer"];
    println!("reference: {}", field(c, "reference"));
    println!("address: {}", field(c, "address"));
    println!(
        "partitions: {} free of {}",
        field(c, "partitions_free"),
        field(c, "partitions_total")
    );
    let partitions: Vec<Vec<String>> = info["partitions"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .map(|p| {
            vec![
                field(p, "reference"),
                if p["free"].as_bool() == Some(true) {
                    "free".into()
                } else {
                    "busy".into()
                },
                field(p, "instance_title"),
            ]
        })
        .collect();
    print_table(&partitions, &["PARTITION", "STATE", "INSTANCE"]);
    let software: Vec<Vec<String>> = info["software"]
        .as_array()
        .map(|a| a.as_slice())
        .unwrap_or(&[])
        .iter()
        .map(|s| {
            vec![
                field(s, "url"),
                field(s, "requested_state"),
                field(s, "reported_state"),
            ]
        })
        .collect();
    if !software.is_empty() {
        println!();
        print_table(&software, &["SOFTWARE", "REQUESTED", "REPORTED"]);
    }
    Ok(())
}
