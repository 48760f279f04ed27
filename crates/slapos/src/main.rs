//! `slapos`: the one binary of slapos-rs (master, proxy and client commands).

mod cmd;
mod config;

use std::path::PathBuf;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "slapos",
    version,
    about = "SlapOS in Rust: master, proxy and client"
)]
struct Cli {
    /// More logging (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a single-user master for one machine (slapproxy).
    Proxy {
        #[command(subcommand)]
        action: ProxyAction,
    },
    /// Run a master for many nodes, on SQLite or PostgreSQL.
    Master {
        #[arg(long)]
        cfg: Option<PathBuf>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        /// A file path (SQLite) or postgresql://... URL.
        #[arg(short = 'u', long)]
        database_uri: Option<String>,
    },
    /// Request an instance and print its state and connection parameters.
    Request {
        reference: String,
        /// A software release URL or an alias.
        software: String,
        #[arg(long = "type")]
        software_type: Option<String>,
        /// Instance parameters as key=value.
        #[arg(long, num_args = 1..)]
        parameters: Vec<String>,
        /// Placement constraints as key=value (computer_guid=..., country=...).
        #[arg(long, num_args = 1..)]
        node: Vec<String>,
        #[arg(long, value_parser = ["started", "stopped", "destroyed"])]
        state: Option<String>,
        /// Request a shared ("slave") instance.
        #[arg(long)]
        slave: bool,
        #[arg(long)]
        cfg: Option<PathBuf>,
    },
    /// Ask a computer to install a software release.
    Supply {
        software: String,
        computer: String,
        #[arg(long)]
        cfg: Option<PathBuf>,
    },
    /// Ask a computer to remove a software release.
    Remove {
        software: String,
        computer: String,
        #[arg(long)]
        cfg: Option<PathBuf>,
    },
    /// Instances (services) you requested.
    Service {
        #[command(subcommand)]
        action: InfoAction,
    },
    /// Registered computers (nodes).
    Computer {
        #[command(subcommand)]
        action: InfoAction,
    },
}

#[derive(Subcommand)]
enum ProxyAction {
    /// Start the proxy in the foreground.
    Start {
        #[arg(long)]
        cfg: Option<PathBuf>,
        #[arg(long)]
        host: Option<String>,
        #[arg(long)]
        port: Option<u16>,
        #[arg(short = 'u', long)]
        database_uri: Option<String>,
    },
}

#[derive(Subcommand)]
enum InfoAction {
    List {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        cfg: Option<PathBuf>,
    },
    Info {
        reference: String,
        #[arg(long)]
        json: bool,
        #[arg(long)]
        cfg: Option<PathBuf>,
    },
}

fn init_logging(verbose: u8) {
    let default = match verbose {
        0 => "warn,slapos=info,slapos_master=info",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("SLAPOS_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
}

#[tokio::main]
async fn main() {
    let cli = Cli::parse();
    init_logging(cli.verbose);
    match run(cli.command).await {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::exit(1);
        }
    }
}

async fn run(command: Command) -> Result<i32> {
    use cmd::client::{self, Session};
    match command {
        Command::Proxy {
            action:
                ProxyAction::Start {
                    cfg,
                    host,
                    port,
                    database_uri,
                },
        } => {
            let cfg = Some(config::locate(cfg.as_deref(), false)?);
            cmd::serve::run(cmd::serve::ServeOptions {
                cfg,
                host,
                port,
                database_uri,
                proxy: true,
            })
            .await?;
        }
        Command::Master {
            cfg,
            host,
            port,
            database_uri,
        } => {
            cmd::serve::run(cmd::serve::ServeOptions {
                cfg,
                host,
                port,
                database_uri,
                proxy: false,
            })
            .await?;
        }
        Command::Request {
            reference,
            software,
            software_type,
            parameters,
            node,
            state,
            slave,
            cfg,
        } => {
            let session = Session::open(cfg.as_deref())?;
            let args = client::RequestArgs {
                reference,
                software,
                software_type,
                parameters,
                node,
                state,
                shared: slave,
            };
            return client::request(&session, args).await;
        }
        Command::Supply {
            software,
            computer,
            cfg,
        } => {
            client::supply(
                &Session::open(cfg.as_deref())?,
                &software,
                &computer,
                "available",
            )
            .await?;
        }
        Command::Remove {
            software,
            computer,
            cfg,
        } => {
            client::supply(
                &Session::open(cfg.as_deref())?,
                &software,
                &computer,
                "destroyed",
            )
            .await?;
        }
        Command::Service { action } => match action {
            InfoAction::List { json, cfg } => {
                client::service_list(&Session::open(cfg.as_deref())?, json).await?
            }
            InfoAction::Info {
                reference,
                json,
                cfg,
            } => client::service_info(&Session::open(cfg.as_deref())?, &reference, json).await?,
        },
        Command::Computer { action } => match action {
            InfoAction::List { json, cfg } => {
                client::computer_list(&Session::open(cfg.as_deref())?, json).await?
            }
            InfoAction::Info {
                reference,
                json,
                cfg,
            } => client::computer_info(&Session::open(cfg.as_deref())?, &reference, json).await?,
        },
    }
    Ok(0)
}
