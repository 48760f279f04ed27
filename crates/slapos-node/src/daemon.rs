//! The node's convergence loop: `slapos node software`, `instance`,
//! `report` as single passes, and `slapos node run` doing them continuously.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use slapos_client::node::{ComputerTarget, PartitionTarget, UsageSent};
use slapos_client::{ClientError, SlapClient};
use slapos_proto::usage::{InstanceRef, UsageReport};

use crate::config::NodeConfig;
use crate::format::Formatted;
use crate::instance::{self, Deployer, Outcome};
use crate::software::Installer;
use crate::supervisor::Supervisor;

/// What the node last did, for status displays.
#[derive(Debug, Clone, Default)]
pub struct NodeStatus {
    /// Release URL → `available`, `building`, `error: ...`.
    pub software: BTreeMap<String, String>,
    /// Partition → what its last processing said.
    pub partitions: BTreeMap<String, String>,
    pub master_reachable: bool,
    pub passes: u64,
}

pub struct Node {
    pub config: NodeConfig,
    pub client: SlapClient,
    pub deployer: Deployer,
    pub status: Arc<Mutex<NodeStatus>>,
    /// Releases whose install failed, and when: retried after a pause, not on every pass.
    failed_installs: Mutex<BTreeMap<String, std::time::Instant>>,
    /// The instance each partition holds, from the master's last answer (for metering).
    instances: Mutex<BTreeMap<String, InstanceRef>>,
    disk_sizes: Arc<crate::usage::DiskSizes>,
}

/// What `report_usage` did.
#[derive(Debug, Clone, Default)]
pub struct ReportSummary {
    /// The report made of the periods just closed (none if nothing was consumed).
    pub created: Vec<UsageReport>,
    /// Reports the master acknowledged.
    pub sent: usize,
    /// Reports still pending (to be retried).
    pub pending: usize,
}

/// How long a failed install waits before it is tried again.
const INSTALL_RETRY: Duration = Duration::from_secs(60);

/// Rounds a pass adds while partitions wait for what the previous round
/// brought about (children allocated, connection parameters published).
const EXTRA_ROUNDS: usize = 4;

/// The outcome of processing every partition once.
struct Round {
    /// Partitions that still need attention (waiting, or in error).
    pending: usize,
    /// Partitions started, stopped or destroyed by this round.
    deployed: usize,
}

/// What, in the master's view, makes the node process a partition.
fn fingerprint(target: &ComputerTarget) -> Vec<(&str, &str, Option<&str>, Option<&str>)> {
    target
        .partitions
        .iter()
        .map(|p| {
            (
                p.reference.as_str(),
                p.requested_state.as_str(),
                p.software_release.as_deref(),
                p.timestamp.as_deref(),
            )
        })
        .collect()
}

impl Node {
    pub fn open(config: NodeConfig, formatted: Formatted) -> anyhow::Result<Node> {
        let client = SlapClient::with_tls(&config.master_url, &config.tls)?;
        let mut installer = Installer::new(&config.software_root)?;
        if let Some(cache) = &config.download_cache {
            installer = installer.with_cache_dir(cache)?;
        }
        let installer = Arc::new(installer);
        let supervisor = Arc::new(Supervisor::open(&config.state_dir().join("supervisor"))?);
        Ok(Node {
            deployer: Deployer {
                config: config.clone(),
                client: client.clone(),
                installer,
                supervisor,
                formatted,
            },
            client,
            config,
            status: Arc::new(Mutex::new(NodeStatus::default())),
            failed_installs: Mutex::new(BTreeMap::new()),
            instances: Mutex::new(BTreeMap::new()),
            disk_sizes: Arc::new(crate::usage::DiskSizes::new(Duration::from_secs(30))),
        })
    }

    pub fn supervisor(&self) -> &Arc<Supervisor> {
        &self.deployer.supervisor
    }

    fn set_status(&self, f: impl FnOnce(&mut NodeStatus)) {
        if let Ok(mut s) = self.status.lock() {
            f(&mut s);
        }
    }

    /// Restarts the services of partitions that were started, from the
    /// node's own records: instances come back after a reboot even before
    /// the master answers.
    pub async fn restore(&self) {
        let dir = self.config.state_dir().join("partitions");
        let Ok(entries) = std::fs::read_dir(&dir) else {
            return;
        };
        for entry in entries.flatten() {
            let name = entry
                .file_name()
                .to_string_lossy()
                .trim_end_matches(".json")
                .to_string();
            if let Some(record) = instance::load_record(&self.config, &name) {
                if record.requested_state == "started" && !record.services.is_empty() {
                    let specs = record.services.iter().map(|s| s.to_spec(&name)).collect();
                    if let Err(e) = self.supervisor().apply(&name, specs).await {
                        tracing::warn!(partition = %name, error = %e, "cannot restore services");
                    }
                }
            }
        }
    }

    /// Installs what is supplied, removes what is to be destroyed, reporting each.
    pub async fn software_step(&self, target: &ComputerTarget) -> usize {
        let mut failures = 0;
        type Job<'a> = std::pin::Pin<
            Box<dyn std::future::Future<Output = (String, Result<String, String>)> + Send + 'a>,
        >;
        let jobs: Vec<Job<'_>> = target
            .software
            .iter()
            .map(|sw| Box::pin(self.converge_software(sw)) as Job<'_>)
            .collect();
        // Two at a time: installs are mostly downloads and unpacking.
        use futures::stream::StreamExt;
        let results: Vec<_> = futures::stream::iter(jobs)
            .buffer_unordered(2)
            .collect()
            .await;
        for (url, result) in results {
            let text = match result {
                Ok(s) => s,
                Err(e) => {
                    failures += 1;
                    tracing::error!(%url, error = %e, "software release failed");
                    format!("error: {e}")
                }
            };
            self.set_status(|s| {
                s.software.insert(url, text);
            });
        }
        failures
    }

    /// Installs or removes one release, reporting to the master.
    async fn converge_software(
        &self,
        sw: &slapos_client::node::SuppliedSoftware,
    ) -> (String, Result<String, String>) {
        let computer = &self.config.computer_id;
        let installer = &self.deployer.installer;
        let url = sw.url.as_str();
        if sw.requested_state == "destroyed" {
            let result = installer.remove(url).await;
            if result.is_ok() {
                let _ = self
                    .client
                    .report_software(computer, url, "destroyed", None)
                    .await;
            }
            return (
                url.to_string(),
                result
                    .map(|_| "destroyed".to_string())
                    .map_err(|e| e.to_string()),
            );
        }
        if installer.installed(url).is_some() {
            return (url.to_string(), Ok("available".to_string()));
        }
        let recently_failed = self
            .failed_installs
            .lock()
            .ok()
            .and_then(|f| f.get(url).map(|at| at.elapsed() < INSTALL_RETRY))
            .unwrap_or(false);
        if recently_failed {
            let previous = self
                .status
                .lock()
                .ok()
                .and_then(|s| s.software.get(url).cloned())
                .unwrap_or_default();
            return (
                url.to_string(),
                Err(previous.trim_start_matches("error: ").to_string()),
            );
        }
        let _ = self
            .client
            .report_software(computer, url, "building", None)
            .await;
        match installer.install(url).await {
            Ok(_) => {
                let _ = self
                    .client
                    .report_software(computer, url, "available", None)
                    .await;
                (url.to_string(), Ok("available".to_string()))
            }
            Err(e) => {
                let message = e.to_string();
                let _ = self
                    .client
                    .report_software(computer, url, "error", Some(&message))
                    .await;
                if let Ok(mut f) = self.failed_installs.lock() {
                    f.insert(url.to_string(), std::time::Instant::now());
                }
                (url.to_string(), Err(message))
            }
        }
    }

    /// Processes every partition; returns how many still need attention.
    pub async fn instance_step(&self, target: &ComputerTarget, force: bool) -> usize {
        self.instance_round(target, force).await.pending
    }

    /// Processes every partition once.
    async fn instance_round(&self, target: &ComputerTarget, force: bool) -> Round {
        let mut pending = 0;
        let mut deployed = 0;
        // Children (instances of a tree whose root is another one) before
        // roots: a root's templates and promises use what its children
        // publish, so a started tree comes up in one round.
        let mut order: Vec<&PartitionTarget> = target.partitions.iter().collect();
        order.sort_by_key(|p| {
            p.instance_title.is_none() || p.instance_title == p.root_instance_title
        });
        for partition in order {
            let outcome = self.process_partition(partition, force).await;
            if matches!(
                outcome,
                Ok(Outcome::Started | Outcome::Stopped | Outcome::Destroyed)
            ) {
                deployed += 1;
            }
            let text = match outcome {
                Ok(Outcome::Waiting(why)) => {
                    pending += 1;
                    format!("waiting: {why}")
                }
                Ok(Outcome::Free) => "free".into(),
                Ok(o) => format!("{o:?}").to_lowercase(),
                Err(e) => {
                    pending += 1;
                    format!("error: {e}")
                }
            };
            self.set_status(|s| {
                s.partitions.insert(partition.reference.clone(), text);
            });
        }
        Round { pending, deployed }
    }

    async fn process_partition(
        &self,
        partition: &PartitionTarget,
        force: bool,
    ) -> Result<Outcome, instance::DeployError> {
        match self.deployer.process(partition, force).await {
            Ok(o) => Ok(o),
            Err(instance::DeployError::NotInstalled(url)) => Ok(Outcome::Waiting(format!(
                "software {url} not installed yet"
            ))),
            Err(e) => {
                tracing::warn!(partition = %partition.reference, error = %e, "partition failed");
                let _ = self
                    .client
                    .report_partition(
                        &self.config.computer_id,
                        &partition.reference,
                        "error",
                        Some(&e.to_string()),
                    )
                    .await;
                Err(e)
            }
        }
    }

    /// Remembers which instance each partition holds, for metering.
    pub fn note_instances(&self, target: &ComputerTarget) {
        let map = target
            .partitions
            .iter()
            .filter(|p| p.software_release.is_some())
            .map(|p| {
                (
                    p.reference.clone(),
                    InstanceRef {
                        guid: p.instance_guid.clone(),
                        title: p.instance_title.clone(),
                        root_title: p.root_instance_title.clone(),
                    },
                )
            })
            .collect();
        if let Ok(mut m) = self.instances.lock() {
            *m = map;
        }
    }

    /// Takes one usage sample into the journal (off the async threads: it
    /// reads /proc and walks partition directories).
    pub async fn meter(&self) -> anyhow::Result<()> {
        let instances = self.instances.lock().map(|m| m.clone()).unwrap_or_default();
        let config = self.config.clone();
        let supervisor = self.supervisor().clone();
        let disk = self.disk_sizes.clone();
        tokio::task::spawn_blocking(move || {
            crate::usage::meter_once(&config, &supervisor, &instances, &disk)
        })
        .await??;
        Ok(())
    }

    /// `slapos node report`: samples, closes the open periods into a pending
    /// report (on disk before anything is sent), then sends every pending
    /// report, removing each only once the master acknowledged it.
    pub async fn report_usage(&self) -> anyhow::Result<ReportSummary> {
        self.meter().await?;
        let journal = crate::usage::JournalDir::of(&self.config);
        let created = journal.update(|j| j.close(crate::usage::new_report_id()).cloned())?;
        let mut summary = self.send_pending().await?;
        summary.created = created.into_iter().collect();
        Ok(summary)
    }

    /// Sends the pending reports, oldest first; stops at the first the
    /// master could not take (unreachable, 5xx): they are retried later.
    pub async fn send_pending(&self) -> anyhow::Result<ReportSummary> {
        let journal = crate::usage::JournalDir::of(&self.config);
        let pending = journal.read()?.pending;
        let mut summary = ReportSummary {
            pending: pending.len(),
            ..Default::default()
        };
        for report in pending {
            let id = report.report_id.clone().unwrap_or_default();
            match self
                .client
                .send_usage(&self.config.computer_id, &report)
                .await
            {
                Ok(how) => {
                    if let UsageSent::Json {
                        recorded,
                        already_recorded,
                    } = how
                    {
                        tracing::info!(report = %id, recorded, already_recorded, "usage report acknowledged");
                    } else {
                        tracing::info!(report = %id, "usage journal acknowledged (useComputer)");
                    }
                    journal.update(|j| j.acknowledge(&id))?;
                    summary.sent += 1;
                    summary.pending -= 1;
                }
                Err(
                    e @ (ClientError::NotFound(_)
                    | ClientError::Refused {
                        status: 400..=499, ..
                    }),
                ) => {
                    // Refused as such: kept (nothing is ever dropped), the
                    // others still go.
                    tracing::error!(report = %id, error = %e, "usage report refused by the master; kept pending");
                }
                Err(e) => {
                    tracing::warn!(report = %id, error = %e, "usage report not sent; kept pending");
                    break;
                }
            }
        }
        Ok(summary)
    }

    /// One full pass: read the master, install, deploy.
    pub async fn converge_once(&self, force: bool) -> anyhow::Result<usize> {
        let target = match self.client.computer_target(&self.config.computer_id).await {
            Ok(t) => {
                self.set_status(|s| s.master_reachable = true);
                self.note_instances(&t);
                t
            }
            Err(e) => {
                self.set_status(|s| s.master_reachable = false);
                return Err(e.into());
            }
        };
        // Instances of installed releases do not wait for other installs.
        // Failed installs are reported and retried later; they do not make the loop spin.
        let (_failures, mut round) = tokio::join!(
            self.software_step(&target),
            self.instance_round(&target, force)
        );
        // A partition that requests children waits for them; the master
        // allocates them at once (often on this computer) and they publish
        // as soon as they are deployed. So while something waits, and the
        // round deployed something or the master's view changed, read it
        // again and deploy what is new in this same pass, instead of after
        // the next wait: a tree deploys in one pass rather than one per level.
        let mut target = target;
        for _ in 0..EXTRA_ROUNDS {
            if round.pending == 0 {
                break;
            }
            let next = self
                .client
                .computer_target(&self.config.computer_id)
                .await?;
            if round.deployed == 0 && fingerprint(&next) == fingerprint(&target) {
                break;
            }
            target = next;
            round = self.instance_round(&target, false).await;
        }
        self.set_status(|s| s.passes += 1);
        Ok(round.pending)
    }

    /// `slapos node run`: converge, then wait for a change (or retry soon if
    /// something is pending), until `shutdown` resolves. Instances keep
    /// running when the master is unreachable. Meanwhile, usage is sampled
    /// every `metering_interval` and reported every `report_interval`.
    pub async fn run(&self, shutdown: impl std::future::Future<Output = ()>) {
        self.restore().await;
        // Metering runs beside the passes; a shutdown only interrupts the
        // wait between passes, never a pass.
        tokio::select! {
            _ = self.converge_loop(shutdown) => {}
            _ = self.metering_loop() => {}
        }
    }

    async fn converge_loop(&self, shutdown: impl std::future::Future<Output = ()>) {
        tokio::pin!(shutdown);
        let mut version: Option<String> = None;
        loop {
            let pending = match self.converge_once(false).await {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "master unreachable; instances keep running");
                    1
                }
            };
            let wait = async {
                if pending > 0 {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                } else {
                    version = self.wait_for_change(version.take()).await;
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = wait => {}
            }
        }
    }

    /// Samples usage into the journal and sends reports, forever.
    async fn metering_loop(&self) {
        let every = Duration::from_secs(self.config.metering_interval.max(1));
        let report_every = Duration::from_secs(self.config.report_interval.max(1));
        let mut ticker = tokio::time::interval(every);
        ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_report = tokio::time::Instant::now();
        loop {
            ticker.tick().await;
            if let Err(e) = self.meter().await {
                tracing::warn!(error = %e, "usage sample not recorded");
            }
            if last_report.elapsed() >= report_every {
                last_report = tokio::time::Instant::now();
                if let Err(e) = self.report_usage().await {
                    tracing::warn!(error = %e, "usage report not sent; retried at the next interval");
                }
            }
        }
    }

    /// Long-polls our master's watch; falls back to the poll interval
    /// against masters without one (the reference proxy).
    async fn wait_for_change(&self, since: Option<String>) -> Option<String> {
        match self
            .client
            .watch(
                &self.config.computer_id,
                since.as_deref(),
                Duration::from_secs(25),
            )
            .await
        {
            Ok(v) => Some(v),
            Err(_) => {
                tokio::time::sleep(Duration::from_secs(self.config.poll_interval)).await;
                None
            }
        }
    }
}
