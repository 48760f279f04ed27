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
    /// Run a master for many nodes, on SQLite or PostgreSQL; with a
    /// subcommand, manage its users and API tokens.
    Master {
        #[command(subcommand)]
        action: Option<MasterAction>,
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
    /// The node agent of this computer.
    Node {
        #[command(subcommand)]
        action: NodeAction,
    },
    /// A master, a node and the catalog on this machine, in the foreground.
    Up {
        /// Where everything is kept (default: ~/.local/share/slapos).
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long, default_value_t = 10)]
        partitions: usize,
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// First port of the partitions' port ranges (10 ports each).
        #[arg(long, default_value_t = 20000)]
        port_base: u16,
        /// Catalog releases to supply, comma-separated (default: all; `none`: none).
        #[arg(long, value_delimiter = ',')]
        supply: Vec<String>,
        /// The computer's reference.
        #[arg(long, default_value = "local")]
        computer_id: String,
        /// Prefix of the partitions' Unix users (default: the node's, slapuser).
        #[arg(long)]
        user_base: Option<String>,
    },
    /// An interactive console (Rhai) to request and inspect instances, or run a script.
    Console {
        /// A Rhai script to run instead of the interactive console.
        script: Option<PathBuf>,
        #[arg(long)]
        cfg: Option<PathBuf>,
    },
    /// What your instances consumed (the master's usage ledger).
    Usage(cmd::billing::UsageArgs),
    /// Your invoices.
    Invoice {
        #[command(subcommand)]
        action: cmd::billing::InvoiceAction,
    },
    /// The software releases shipped with slapos-rs.
    Catalog {
        #[command(subcommand)]
        action: CatalogAction,
    },
}

#[derive(Subcommand)]
enum NodeAction {
    /// Create the partitions and register them with the master.
    Format {
        #[arg(long)]
        cfg: Option<PathBuf>,
    },
    /// Install the software releases supplied to this computer.
    Software {
        #[arg(long)]
        cfg: Option<PathBuf>,
    },
    /// Deploy the instances allocated to this computer.
    Instance {
        #[arg(long)]
        cfg: Option<PathBuf>,
        /// Reprocess every partition, even those up to date.
        #[arg(long)]
        force: bool,
    },
    /// Send each partition's resource usage to the master.
    Report {
        #[arg(long)]
        cfg: Option<PathBuf>,
    },
    /// Converge continuously: software, instances, supervision.
    Run {
        #[arg(long)]
        cfg: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum CatalogAction {
    /// Each release's name, URL (once materialised by `slapos up`) and software types.
    List {
        #[arg(long)]
        json: bool,
        #[arg(long)]
        data_dir: Option<PathBuf>,
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

/// Accounts of `slapos master`, written directly to its database.
#[derive(Subcommand)]
enum MasterAction {
    /// Users of the master.
    User {
        #[command(subcommand)]
        action: UserAction,
    },
    /// API tokens (`Authorization: Bearer ...`) of the master's users.
    Token {
        #[command(subcommand)]
        action: TokenAction,
    },
    /// Price lists (per resource, release and type, with validity dates).
    PriceList {
        #[command(subcommand)]
        action: cmd::billing::PriceListAction,
    },
    /// Issue invoices and credit notes.
    Invoice {
        #[command(subcommand)]
        action: cmd::billing::MasterInvoiceAction,
    },
    /// Revenue per software release over issued invoices.
    Revenue {
        /// `YYYY-MM-DD` (UTC): invoices issued from then.
        #[arg(long)]
        from: Option<String>,
        #[arg(long)]
        to: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: MasterDb,
    },
    /// The master's certificate authority (HTTPS, client certificates).
    Ca {
        #[command(subcommand)]
        action: CaAction,
    },
    /// Computers' client certificates (for their nodes).
    Computer {
        #[command(subcommand)]
        action: ComputerAction,
    },
    /// Client certificates: revoke, list.
    Certificate {
        #[command(subcommand)]
        action: CertificateAction,
    },
}

#[derive(Subcommand)]
enum CaAction {
    /// Create the authority and the server certificate named in the
    /// configuration's [slapmaster] if their files are missing.
    Init {
        #[arg(long)]
        cfg: PathBuf,
    },
}

#[derive(Subcommand)]
enum ComputerAction {
    /// A computer's client certificate.
    Certificate {
        #[command(subcommand)]
        action: IssueAction,
    },
}

/// Issues a client certificate into a directory.
#[derive(Subcommand)]
enum IssueAction {
    /// Issue one: writes DIR/key.pem, DIR/cert.pem and DIR/ca.pem (the
    /// master's authority) and registers the certificate with the master.
    Issue {
        /// The computer reference or user name it is bound to.
        name: String,
        #[arg(long)]
        out_dir: PathBuf,
        /// Validity in days.
        #[arg(long, default_value_t = slapos_master::pki::CLIENT_DAYS)]
        days: i64,
        #[command(flatten)]
        db: MasterDb,
    },
}

#[derive(Subcommand)]
enum CertificateAction {
    /// Revoke certificates: refused from the next request on.
    Revoke {
        /// By fingerprint (hex SHA-256, see `certificate list`).
        #[arg(long, conflicts_with_all = ["computer", "user"], required_unless_present_any = ["computer", "user"])]
        fingerprint: Option<String>,
        /// Every certificate of this computer.
        #[arg(long, conflicts_with = "user")]
        computer: Option<String>,
        /// Every certificate of this user.
        #[arg(long)]
        user: Option<String>,
        #[command(flatten)]
        db: MasterDb,
    },
    /// List issued certificates (never their keys).
    List {
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: MasterDb,
    },
}

/// Where the master's database is: its configuration, or the URI itself.
#[derive(clap::Args)]
pub struct MasterDb {
    #[arg(long)]
    cfg: Option<PathBuf>,
    /// A file path (SQLite) or postgresql://... URL.
    #[arg(short = 'u', long)]
    database_uri: Option<String>,
}

#[derive(Subcommand)]
enum UserAction {
    /// Create a user and print their first API token (shown only once).
    Add {
        name: String,
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        db: MasterDb,
    },
    /// A user's client certificate.
    Certificate {
        #[command(subcommand)]
        action: IssueAction,
    },
}

#[derive(Subcommand)]
enum TokenAction {
    /// Create another API token for a user and print it (shown only once).
    Add {
        user: String,
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        db: MasterDb,
    },
    /// Revoke a token by its id (see `token list`): refused from then on.
    Revoke {
        id: i64,
        #[command(flatten)]
        db: MasterDb,
    },
    /// List tokens (ids, users, labels, dates; never the tokens themselves).
    List {
        /// Only this user's tokens.
        #[arg(long)]
        user: Option<String>,
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        db: MasterDb,
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
            action: Some(action),
            ..
        } => {
            return cmd::accounts::run(action).await;
        }
        Command::Master {
            action: None,
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
        Command::Node { action } => {
            return match action {
                NodeAction::Format { cfg } => cmd::node::format(&cmd::node::load(cfg.as_deref())?)
                    .await
                    .map(|_| 0),
                NodeAction::Software { cfg } => {
                    cmd::node::software(&cmd::node::load(cfg.as_deref())?).await
                }
                NodeAction::Instance { cfg, force } => {
                    cmd::node::instance(&cmd::node::load(cfg.as_deref())?, force).await
                }
                NodeAction::Report { cfg } => {
                    cmd::node::report(&cmd::node::load(cfg.as_deref())?).await
                }
                NodeAction::Run { cfg } => cmd::node::run(&cmd::node::load(cfg.as_deref())?).await,
            };
        }
        Command::Up {
            data_dir,
            partitions,
            port,
            port_base,
            supply,
            computer_id,
            user_base,
        } => {
            cmd::up::up(cmd::up::UpOptions {
                data_dir,
                partitions,
                port,
                port_base,
                supply,
                computer_id,
                user_base,
            })
            .await?;
        }
        Command::Console { script, cfg } => return cmd::console::run(cfg, script).await,
        Command::Usage(args) => cmd::billing::usage(args).await?,
        Command::Invoice { action } => cmd::billing::invoice(action).await?,
        Command::Catalog {
            action: CatalogAction::List { json, data_dir },
        } => {
            catalog_list(json, data_dir)?;
        }
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

fn catalog_list(json: bool, data_dir: Option<PathBuf>) -> Result<()> {
    let dir = data_dir
        .unwrap_or_else(cmd::up::default_data_dir)
        .join("catalog");
    let mut rows = Vec::new();
    for r in slapos_catalog::RELEASES {
        let manifest = slapos_node::manifest::Manifest::parse(r.manifest)?;
        let url = format!(
            "file://{}",
            std::path::absolute(dir.join(r.name).join("software.toml"))?.display()
        );
        let types: Vec<String> = manifest.types.keys().cloned().collect();
        rows.push(
            serde_json::json!({"name": r.name, "url": url, "software_types": types,
                                     "description": manifest.description}),
        );
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else {
        for r in &rows {
            println!(
                "{:<10} {}  [{}]",
                r["name"].as_str().unwrap_or(""),
                r["url"].as_str().unwrap_or(""),
                r["software_types"]
                    .as_array()
                    .map(|a| a
                        .iter()
                        .filter_map(|t| t.as_str())
                        .collect::<Vec<_>>()
                        .join(", "))
                    .unwrap_or_default()
            );
        }
    }
    Ok(())
}
