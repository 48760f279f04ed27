//! Deploying one partition from its release's manifest: templates rendered
//! with the parameters, addresses and ports, services handed to the
//! supervisor, promises checked, children requested, connection parameters
//! published when they change, state reported to the master.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use minijinja::{Environment, Value as Tpl};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use slapos_client::node::PartitionTarget;
use slapos_client::{ClientError, RequestSpec, SlapClient};

use crate::config::NodeConfig;
use crate::format::{write_atomic, Formatted};
use crate::manifest::{Manifest, Promise, SoftwareType};
use crate::software::Installer;
use crate::supervisor::{RestartPolicy, ServiceSpec, Supervisor};

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("software release {0} is not installed yet")]
    NotInstalled(String),
    #[error("software release {url} has no software type {software_type:?} (it has: {known})")]
    UnknownType {
        url: String,
        software_type: String,
        known: String,
    },
    #[error("parameter error: {0}")]
    Parameters(String),
    #[error("template {what}: {message}")]
    Template { what: String, message: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("promise {name} failed: {message}")]
    Promise { name: String, message: String },
    #[error("supervisor: {0}")]
    Supervisor(String),
    #[error("master: {0}")]
    Master(#[from] ClientError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> DeployError {
    let what = what.into();
    move |source| DeployError::Io { what, source }
}

/// What processing a partition did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Nothing changed since the last successful run.
    UpToDate,
    Started,
    Stopped,
    /// Wiped and reported destroyed.
    Destroyed,
    /// Free partition, nothing to do.
    Free,
    /// Deployed but waiting for something (a child's connection parameters...).
    Waiting(String),
}

/// What the node remembers of a partition between runs (and reboots).
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PartitionRecord {
    pub timestamp: Option<String>,
    pub requested_state: String,
    pub software_release: Option<String>,
    /// Services last applied, so they can be restarted before the master answers.
    pub services: Vec<ServiceRecord>,
    /// Connection parameters last published, per slave reference ("" for the instance).
    pub published: BTreeMap<String, BTreeMap<String, String>>,
    /// Files rendered for hosted shared instances, removed once their instance is gone.
    #[serde(default)]
    pub shared_files: Vec<PathBuf>,
}

/// A serialisable copy of a [`ServiceSpec`].
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ServiceRecord {
    pub name: String,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub env: BTreeMap<String, String>,
    pub cwd: PathBuf,
    pub user: Option<(u32, u32)>,
    pub log_file: PathBuf,
    pub restart: String,
    pub oneshot: bool,
}

impl ServiceRecord {
    pub fn to_spec(&self, partition: &str) -> ServiceSpec {
        ServiceSpec {
            partition: partition.to_string(),
            name: self.name.clone(),
            program: self.program.clone(),
            args: self.args.clone(),
            env: self.env.clone(),
            cwd: self.cwd.clone(),
            user: self.user,
            log_file: self.log_file.clone(),
            restart: match self.restart.as_str() {
                "never" => RestartPolicy::Never,
                "on-failure" => RestartPolicy::OnFailure,
                _ => RestartPolicy::Always,
            },
            oneshot: self.oneshot,
        }
    }
}

pub fn record_path(config: &NodeConfig, partition: &str) -> PathBuf {
    config
        .state_dir()
        .join("partitions")
        .join(format!("{partition}.json"))
}

pub fn load_record(config: &NodeConfig, partition: &str) -> Option<PartitionRecord> {
    serde_json::from_str(&std::fs::read_to_string(record_path(config, partition)).ok()?).ok()
}

fn save_record(
    config: &NodeConfig,
    partition: &str,
    record: &PartitionRecord,
) -> Result<(), DeployError> {
    let path = record_path(config, partition);
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(io("create the node's state directory"))?;
    }
    let json = serde_json::to_vec_pretty(record).unwrap_or_default();
    write_atomic(&path, &json).map_err(io(format!("write {}", path.display())))
}

pub struct Deployer {
    pub config: NodeConfig,
    pub client: SlapClient,
    pub installer: Arc<Installer>,
    pub supervisor: Arc<Supervisor>,
    pub formatted: Formatted,
}

/// Resolves `relative` against the URL of the manifest that names it.
/// Dot segments are removed (RFC 3986 §5.2.4), never climbing above the
/// root, so `../mariadb/software.toml` names the same release, by the same
/// URL, as a direct reference to it.
pub fn resolve_url(base: &str, relative: &str) -> String {
    if relative.contains("://") || relative.starts_with('/') {
        return relative.to_string();
    }
    // Split `scheme://authority` from the path.
    let path_start = match base.find("://") {
        Some(i) => base[i + 3..].find('/').map_or(base.len(), |j| i + 3 + j),
        None => 0,
    };
    let (origin, path) = base.split_at(path_start);
    let dir = path.rfind('/').map_or("", |i| &path[..i]);
    let mut segments: Vec<&str> = Vec::new();
    for segment in dir.split('/').chain(relative.split('/')) {
        match segment {
            "" | "." => {}
            ".." => {
                segments.pop();
            }
            s => segments.push(s),
        }
    }
    format!("{origin}/{}", segments.join("/"))
}

pub use slapos_release::{effective_parameters, validate_parameters};

/// Random passwords kept for the partition's whole life.
#[derive(Clone, Default)]
struct Secrets {
    path: PathBuf,
    values: Arc<Mutex<BTreeMap<String, String>>>,
}

impl Secrets {
    fn load(partition: &Path) -> Secrets {
        let path = partition.join(".slapos").join("secrets.json");
        let values = std::fs::read_to_string(&path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default();
        Secrets {
            path,
            values: Arc::new(Mutex::new(values)),
        }
    }

    fn get(&self, name: &str) -> String {
        use rand::distr::{Alphanumeric, SampleString};
        let mut values = self.values.lock().unwrap_or_else(|e| e.into_inner());
        values
            .entry(name.to_string())
            .or_insert_with(|| Alphanumeric.sample_string(&mut rand::rng(), 24))
            .clone()
    }

    fn save(&self) -> Result<(), DeployError> {
        let values = self
            .values
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if values.is_empty() {
            return Ok(());
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io("create .slapos"))?;
            let _ = std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700));
        }
        write_atomic(&self.path, &serde_json::to_vec(&values).unwrap_or_default())
            .map_err(io("write secrets"))?;
        let _ = std::fs::set_permissions(&self.path, std::fs::Permissions::from_mode(0o600));
        Ok(())
    }
}

struct Renderer {
    env: Environment<'static>,
}

impl Renderer {
    fn new(secrets: Secrets) -> Renderer {
        let mut env = Environment::new();
        env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
        // Configuration files end with a newline, as written in the manifest.
        env.set_keep_trailing_newline(true);
        env.add_function("secret", move |name: String| secrets.get(&name));
        Renderer { env }
    }

    fn render(&self, what: &str, template: &str, ctx: &Tpl) -> Result<String, DeployError> {
        self.env
            .render_str(template, ctx)
            .map_err(|e| DeployError::Template {
                what: what.to_string(),
                message: e.to_string(),
            })
    }
}

/// Writes `content` only if it differs; returns whether it changed.
fn write_if_changed(path: &Path, content: &str, mode: u32) -> Result<bool, DeployError> {
    if std::fs::read_to_string(path).ok().as_deref() == Some(content) {
        return Ok(false);
    }
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).map_err(io(format!("create {}", parent.display())))?;
    }
    write_atomic(path, content.as_bytes()).map_err(io(format!("write {}", path.display())))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io(format!("chmod {}", path.display())))?;
    Ok(true)
}

fn chown_tree(path: &Path, owner: Option<(u32, u32)>) {
    let Some((uid, gid)) = owner else { return };
    let _ = std::os::unix::fs::lchown(path, Some(uid), Some(gid));
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            let p = entry.path();
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                chown_tree(&p, owner);
            } else {
                let _ = std::os::unix::fs::lchown(&p, Some(uid), Some(gid));
            }
        }
    }
}

/// Removes everything inside a partition directory, keeping the directory.
pub fn wipe(path: &Path) -> Result<(), DeployError> {
    let entries = match std::fs::read_dir(path) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => {
            return Err(DeployError::Io {
                what: format!("read {}", path.display()),
                source: e,
            })
        }
    };
    for entry in entries.flatten() {
        let p = entry.path();
        let is_dir = entry.file_type().map(|t| t.is_dir()).unwrap_or(false);
        let result = if is_dir {
            std::fs::remove_dir_all(&p)
        } else {
            std::fs::remove_file(&p)
        };
        result.map_err(io(format!("remove {}", p.display())))?;
    }
    Ok(())
}

async fn check_promise(p: &Promise, rendered: &RenderedPromise) -> Result<(), String> {
    let timeout = Duration::from_secs(p.timeout.unwrap_or(10));
    match rendered {
        RenderedPromise::Tcp(addr) => {
            let connect = tokio::net::TcpStream::connect(addr.as_str());
            match tokio::time::timeout(timeout, connect).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(e)) => Err(format!("cannot connect to {addr}: {e}")),
                Err(_) => Err(format!("connecting to {addr} timed out")),
            }
        }
        RenderedPromise::Http(url, status) => {
            let client = reqwest::Client::builder()
                .timeout(timeout)
                .build()
                .map_err(|e| e.to_string())?;
            match client.get(url).send().await {
                Ok(r) if r.status().as_u16() == *status => Ok(()),
                Ok(r) => Err(format!(
                    "{url} answered {}, expected {status}",
                    r.status().as_u16()
                )),
                Err(e) => Err(format!("{url}: {e}")),
            }
        }
        RenderedPromise::Command(argv, cwd) => {
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..]).current_dir(cwd).kill_on_drop(true);
            match tokio::time::timeout(timeout, cmd.output()).await {
                Ok(Ok(out)) if out.status.success() => Ok(()),
                Ok(Ok(out)) => {
                    let text = String::from_utf8_lossy(&out.stderr).into_owned()
                        + &String::from_utf8_lossy(&out.stdout);
                    Err(format!("exited with {}: {}", out.status, text.trim()))
                }
                Ok(Err(e)) => Err(format!("cannot run {}: {e}", argv[0])),
                Err(_) => Err("timed out".into()),
            }
        }
    }
}

enum RenderedPromise {
    Tcp(String),
    Http(String, u16),
    Command(Vec<String>, PathBuf),
}

impl Deployer {
    fn owner(&self, partition: &str) -> Option<(u32, u32)> {
        let p = self.formatted.partition(partition)?;
        Some((p.uid?, p.gid?))
    }

    /// Converges one partition towards its target.
    pub async fn process(
        &self,
        target: &PartitionTarget,
        force: bool,
    ) -> Result<Outcome, DeployError> {
        let reference = target.reference.as_str();
        let path = self.config.partition_path(reference);
        let record = load_record(&self.config, reference);
        let Some(url) = target.software_release.clone() else {
            // Free. Anything left from an instance the master forgot is cleaned up.
            if record.is_some() {
                self.supervisor
                    .stop_partition(reference)
                    .await
                    .map_err(|e| DeployError::Supervisor(e.to_string()))?;
                wipe(&path)?;
                let _ = std::fs::remove_file(record_path(&self.config, reference));
            }
            return Ok(Outcome::Free);
        };
        if target.requested_state == "destroyed" {
            return self.destroy(target).await;
        }
        let unchanged = record.as_ref().is_some_and(|r| {
            r.timestamp.is_some()
                && r.timestamp == target.timestamp
                && r.requested_state == target.requested_state
        });
        if unchanged && !force {
            return Ok(Outcome::UpToDate);
        }
        let installed = self
            .installer
            .installed(&url)
            .ok_or_else(|| DeployError::NotInstalled(url.clone()))?;
        let manifest = &installed.manifest;
        let type_name = target
            .software_type
            .clone()
            .unwrap_or_else(|| "default".into());
        let software_type =
            manifest
                .software_type(&type_name)
                .ok_or_else(|| DeployError::UnknownType {
                    url: url.clone(),
                    software_type: type_name.clone(),
                    known: manifest
                        .types
                        .keys()
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
        let params = effective_parameters(&target.parameters, software_type.parameters.as_ref())
            .map_err(|e| DeployError::Parameters(e.to_string()))?;
        if let Some(schema) = &software_type.parameters {
            validate_parameters(&params, schema).map_err(DeployError::Parameters)?;
        }
        let mut record = record.unwrap_or_default();
        let (ctx_base, secrets) = self.context(
            target,
            manifest,
            &installed.dir,
            software_type,
            &params,
            &path,
        );
        let renderer = Renderer::new(secrets.clone());

        // Children first: their connection parameters feed the templates.
        let mut children = BTreeMap::new();
        let mut waiting = Vec::new();
        for child in &software_type.children {
            let ctx = Tpl::from_serialize(&ctx_base);
            let render = |what: &str, t: &str| {
                renderer.render(&format!("child {}: {what}", child.title), t, &ctx)
            };
            let mut parameters = BTreeMap::new();
            for (k, v) in &child.parameters {
                parameters.insert(k.clone(), render(k, v)?);
            }
            let spec = RequestSpec {
                software_release: resolve_url(&url, &render("software", &child.software)?),
                title: render("title", &child.title)?,
                software_type: child.software_type.clone(),
                parameters,
                sla: child.sla.clone(),
                state: Some(if target.requested_state == "stopped" {
                    "stopped".into()
                } else {
                    "started".into()
                }),
                shared: child.shared,
            };
            match self
                .client
                .request_as_partition(&self.config.computer_id, reference, &spec)
                .await
            {
                Ok(answer) => {
                    let conn: BTreeMap<String, String> = answer
                        .connection_parameters
                        .into_iter()
                        .map(|(k, v)| (k, v.unwrap_or_default()))
                        .collect();
                    if conn.is_empty() {
                        waiting.push(format!("child {} has published nothing yet", child.title));
                    }
                    children.insert(child.title.clone(), conn);
                }
                Err(ClientError::NotReady) => {
                    waiting.push(format!("child {} is being allocated", child.title));
                    children.insert(child.title.clone(), BTreeMap::new());
                }
                Err(e) => return Err(e.into()),
            }
        }
        let mut ctx_json = ctx_base.clone();
        ctx_json.insert(
            "children".into(),
            serde_json::to_value(&children).unwrap_or_default(),
        );
        let ctx = Tpl::from_serialize(&ctx_json);
        let owner = self.owner(reference);

        for dir in &software_type.directories {
            let d = path.join(renderer.render("directory", dir, &ctx)?);
            std::fs::create_dir_all(&d).map_err(io(format!("create {}", d.display())))?;
        }
        // Services restart when a file they read changes: the files' digest
        // is part of every service's environment, hence of its spec.
        let mut digest = Sha256::new();
        for f in &software_type.files {
            let file = path.join(renderer.render("file path", &f.path, &ctx)?);
            let content = renderer.render(&f.path, &f.template, &ctx)?;
            digest.update(file.to_string_lossy().as_bytes());
            digest.update(content.as_bytes());
            write_if_changed(&file, &content, parse_mode(f.mode.as_deref()))?;
        }
        // Shared instances hosted here.
        let mut shared_connections = Vec::new();
        let mut shared_files = Vec::new();
        if let Some(shared_tpl) = &software_type.shared {
            for entry in &target.shared {
                let reference_key = entry.get("slave_reference").cloned().unwrap_or_default();
                let mut sctx = ctx_json.clone();
                sctx.insert(
                    "shared".into(),
                    serde_json::json!({
                        "reference": reference_key,
                        "title": entry.get("slave_title").cloned().unwrap_or_default(),
                        "parameters": entry,
                    }),
                );
                let sctx = Tpl::from_serialize(&sctx);
                for f in &shared_tpl.files {
                    let file = path.join(renderer.render("shared file path", &f.path, &sctx)?);
                    let content = renderer.render(&f.path, &f.template, &sctx)?;
                    digest.update(file.to_string_lossy().as_bytes());
                    digest.update(content.as_bytes());
                    write_if_changed(&file, &content, parse_mode(f.mode.as_deref()))?;
                    shared_files.push(file);
                }
                let mut conn = BTreeMap::new();
                for (k, v) in &shared_tpl.connection {
                    conn.insert(
                        k.clone(),
                        renderer.render(&format!("shared connection {k}"), v, &sctx)?,
                    );
                }
                shared_connections.push((reference_key, conn));
            }
        }
        for stale in record
            .shared_files
            .iter()
            .filter(|f| !shared_files.contains(f))
        {
            let _ = std::fs::remove_file(stale);
        }
        record.shared_files = shared_files;
        secrets.save()?;
        chown_tree(&path, owner);

        let mut services = self.services(
            reference,
            &path,
            software_type,
            &installed,
            &renderer,
            &ctx,
            owner,
        )?;
        let files_digest = hex::encode(&digest.finalize()[..8]);
        for s in &mut services {
            s.env
                .insert("SLAPOS_FILES_DIGEST".into(), files_digest.clone());
        }
        record.services = services.clone();
        record.software_release = Some(url.clone());
        record.requested_state = target.requested_state.clone();
        let specs: Vec<ServiceSpec> = services.iter().map(|s| s.to_spec(reference)).collect();

        if target.requested_state == "stopped" {
            self.supervisor
                .stop_partition(reference)
                .await
                .map_err(|e| DeployError::Supervisor(e.to_string()))?;
            record.timestamp = target.timestamp.clone();
            save_record(&self.config, reference, &record)?;
            self.client
                .report_partition(&self.config.computer_id, reference, "stopped", None)
                .await?;
            return Ok(Outcome::Stopped);
        }
        save_record(&self.config, reference, &record)?;
        self.supervisor
            .apply(reference, specs)
            .await
            .map_err(|e| DeployError::Supervisor(e.to_string()))?;
        self.check_promises(software_type, &renderer, &ctx, &path)
            .await?;

        // Publish only what changed.
        let mut connection = BTreeMap::new();
        for (k, v) in &software_type.connection {
            connection.insert(
                k.clone(),
                renderer.render(&format!("connection {k}"), v, &ctx)?,
            );
        }
        let on_master: BTreeMap<String, String> = target
            .connection
            .iter()
            .map(|(k, v)| (k.clone(), v.clone().unwrap_or_default()))
            .collect();
        if !connection.is_empty() && connection != on_master {
            self.client
                .set_connection(&self.config.computer_id, reference, None, &connection)
                .await?;
        }
        record.published.insert(String::new(), connection);
        for (slave, conn) in shared_connections {
            if record.published.get(&slave) != Some(&conn) {
                self.client
                    .set_connection(&self.config.computer_id, reference, Some(&slave), &conn)
                    .await?;
                record.published.insert(slave, conn);
            }
        }
        self.client
            .report_partition(&self.config.computer_id, reference, "started", None)
            .await?;
        if waiting.is_empty() {
            record.timestamp = target.timestamp.clone();
        }
        save_record(&self.config, reference, &record)?;
        Ok(if waiting.is_empty() {
            Outcome::Started
        } else {
            Outcome::Waiting(waiting.join("; "))
        })
    }

    fn context(
        &self,
        target: &PartitionTarget,
        manifest: &Manifest,
        software_dir: &Path,
        software_type: &SoftwareType,
        params: &serde_json::Map<String, serde_json::Value>,
        path: &Path,
    ) -> (serde_json::Map<String, serde_json::Value>, Secrets) {
        let reference = &target.reference;
        let ipv4 = target
            .ip_list
            .iter()
            .map(|(_, a)| a)
            .find(|a| a.parse::<std::net::Ipv4Addr>().is_ok())
            .cloned()
            .or_else(|| self.formatted.partition(reference).map(|p| p.ipv4.clone()))
            .unwrap_or_else(|| "127.0.0.1".into());
        let ipv6 = target
            .ip_list
            .iter()
            .map(|(_, a)| a)
            .find(|a| a.parse::<std::net::Ipv6Addr>().is_ok())
            .cloned()
            .unwrap_or_else(|| "::1".into());
        let mut ports = serde_json::Map::new();
        for (name, port) in software_type
            .ports
            .iter()
            .zip(self.config.ports_of(reference))
        {
            ports.insert(name.clone(), port.into());
        }
        let ctx = serde_json::json!({
            "partition": path.to_string_lossy(),
            "software": software_dir.to_string_lossy(),
            "software_name": manifest.name,
            "computer_id": self.config.computer_id,
            "partition_id": reference,
            "user": self
                .formatted
                .partition(reference)
                .map(|p| p.user.clone())
                .unwrap_or_else(|| "nobody".into()),
            "ipv4": ipv4,
            "ipv6": ipv6,
            "ports": ports,
            "parameters": params,
            "instance_title": target.instance_title.clone().unwrap_or_default(),
            "root_instance_title": target.root_instance_title.clone().unwrap_or_default(),
            "software_type": target.software_type.clone().unwrap_or_else(|| "default".into()),
            "shared_instances": target.shared,
        });
        let ctx = match ctx {
            serde_json::Value::Object(m) => m,
            _ => serde_json::Map::new(),
        };
        (ctx, Secrets::load(path))
    }

    #[allow(clippy::too_many_arguments)]
    fn services(
        &self,
        reference: &str,
        path: &Path,
        software_type: &SoftwareType,
        installed: &crate::software::Installed,
        renderer: &Renderer,
        ctx: &Tpl,
        owner: Option<(u32, u32)>,
    ) -> Result<Vec<ServiceRecord>, DeployError> {
        let log_dir = path.join("var").join("log");
        std::fs::create_dir_all(&log_dir).map_err(io("create var/log"))?;
        chown_tree(&path.join("var"), owner);
        let base_env = installed.environment();
        let mut out = Vec::new();
        for s in &software_type.services {
            let mut argv = Vec::with_capacity(s.command.len());
            for (i, a) in s.command.iter().enumerate() {
                argv.push(renderer.render(&format!("service {} argument {i}", s.name), a, ctx)?);
            }
            let mut env: BTreeMap<String, String> = base_env.clone();
            // The partition is the service's home, whatever the passwd entry says.
            env.insert("HOME".into(), path.to_string_lossy().into_owned());
            for (k, v) in &s.environment {
                env.insert(
                    k.clone(),
                    renderer.render(&format!("service {} environment {k}", s.name), v, ctx)?,
                );
            }
            out.push(ServiceRecord {
                name: s.name.clone(),
                program: PathBuf::from(&argv[0]),
                args: argv[1..].to_vec(),
                env,
                cwd: path.to_path_buf(),
                user: owner,
                log_file: log_dir.join(format!("{}.log", s.name)),
                restart: s.restart.clone().unwrap_or_else(|| "always".into()),
                oneshot: s.oneshot,
            });
        }
        let _ = reference;
        Ok(out)
    }

    async fn check_promises(
        &self,
        software_type: &SoftwareType,
        renderer: &Renderer,
        ctx: &Tpl,
        path: &Path,
    ) -> Result<(), DeployError> {
        let mut rendered = Vec::new();
        for p in &software_type.promises {
            let r = if let Some(t) = &p.tcp {
                RenderedPromise::Tcp(renderer.render(&format!("promise {}", p.name), t, ctx)?)
            } else if let Some(u) = &p.http {
                RenderedPromise::Http(
                    renderer.render(&format!("promise {}", p.name), u, ctx)?,
                    p.status.unwrap_or(200),
                )
            } else {
                let argv = p.command.clone().unwrap_or_default();
                let mut out = Vec::new();
                for a in &argv {
                    out.push(renderer.render(&format!("promise {}", p.name), a, ctx)?);
                }
                if out.is_empty() {
                    continue;
                }
                RenderedPromise::Command(out, path.to_path_buf())
            };
            rendered.push((p, r));
        }
        let deadline = Instant::now() + Duration::from_secs(self.config.promise_timeout);
        for (p, r) in &rendered {
            loop {
                match check_promise(p, r).await {
                    Ok(()) => break,
                    Err(message) if Instant::now() >= deadline => {
                        return Err(DeployError::Promise {
                            name: p.name.clone(),
                            message,
                        });
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        }
        Ok(())
    }

    /// Stops, wipes and reports a destroyed partition so that the master frees it.
    async fn destroy(&self, target: &PartitionTarget) -> Result<Outcome, DeployError> {
        let reference = target.reference.as_str();
        self.supervisor
            .stop_partition(reference)
            .await
            .map_err(|e| DeployError::Supervisor(e.to_string()))?;
        self.client
            .report_partition(&self.config.computer_id, reference, "stopped", None)
            .await?;
        wipe(&self.config.partition_path(reference))?;
        let _ = std::fs::remove_file(record_path(&self.config, reference));
        self.client
            .report_partition(&self.config.computer_id, reference, "destroyed", None)
            .await?;
        Ok(Outcome::Destroyed)
    }

    /// Promise checks of an up-to-date started partition (no reprocessing).
    pub async fn check(&self, target: &PartitionTarget) -> Result<(), DeployError> {
        let Some(url) = target.software_release.as_deref() else {
            return Ok(());
        };
        let Some(installed) = self.installer.installed(url) else {
            return Ok(());
        };
        let type_name = target
            .software_type
            .clone()
            .unwrap_or_else(|| "default".into());
        let Some(software_type) = installed.manifest.software_type(&type_name) else {
            return Ok(());
        };
        let params = effective_parameters(&target.parameters, software_type.parameters.as_ref())
            .map_err(|e| DeployError::Parameters(e.to_string()))?;
        let path = self.config.partition_path(&target.reference);
        let (ctx, secrets) = self.context(
            target,
            &installed.manifest,
            &installed.dir,
            software_type,
            &params,
            &path,
        );
        let renderer = Renderer::new(secrets);
        let mut ctx = ctx;
        ctx.insert("children".into(), serde_json::json!({}));
        self.check_promises(software_type, &renderer, &Tpl::from_serialize(&ctx), &path)
            .await
    }
}

fn parse_mode(mode: Option<&str>) -> u32 {
    mode.and_then(|m| u32::from_str_radix(m.trim_start_matches("0o"), 8).ok())
        .unwrap_or(0o640)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_resolve_against_the_manifest() {
        assert_eq!(
            resolve_url(
                "file:///c/wordpress/software.toml",
                "../mariadb/software.toml"
            ),
            "file:///c/mariadb/software.toml"
        );
        assert_eq!(
            resolve_url("https://h/r/a/s.toml", "./b/c.toml"),
            "https://h/r/a/b/c.toml"
        );
        assert_eq!(
            resolve_url("https://h/a/s.toml", "../../../x.toml"),
            "https://h/x.toml"
        );
        assert_eq!(
            resolve_url("file:///c/a/software.toml", "https://x/y.toml"),
            "https://x/y.toml"
        );
    }
}
