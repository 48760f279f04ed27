//! The process supervisor against real processes (`/bin/sh`, `sleep`).
//! Each test uses its own temporary directory and its own `sleep` durations,
//! so processes can be told apart by their command line.

use std::cell::RefCell;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use slapos_node::supervisor::{
    ExitReason, RestartPolicy, ServiceSpec, ServiceState, ServiceStatus, StartError, Supervisor,
    SupervisorError, SupervisorOptions,
};
use tempfile::TempDir;

/// Shorter than production so the whole file runs in seconds.
fn options() -> SupervisorOptions {
    SupervisorOptions {
        grace: Duration::from_millis(500),
        tick: Duration::from_millis(50),
        backoff_initial: Duration::from_millis(100),
        backoff_max: Duration::from_secs(2),
        healthy_after: Duration::from_secs(10),
        startup: Duration::from_millis(200),
        log_rotate_bytes: 10 * 1024 * 1024,
    }
}

/// A `sleep` command line unique to this test run and to `id`, so tests
/// can count their processes. The run's tag is passed to helper processes.
fn sleeper(id: u32) -> String {
    let tag =
        std::env::var("SUPERVISOR_TEST_TAG").unwrap_or_else(|_| std::process::id().to_string());
    format!("sleep 30.{id} 0.{tag}")
}

/// A computer with one partition directory and the supervisor's state
/// directory, both in a temporary directory. Processes it handed out
/// `sleep` command lines for are killed when it is dropped, so a failing
/// test leaves nothing behind.
struct Computer {
    _root: TempDir,
    state: PathBuf,
    partition: PathBuf,
    sleepers: RefCell<Vec<String>>,
}

impl Drop for Computer {
    fn drop(&mut self) {
        for sleeper in self.sleepers.borrow().iter() {
            for pid in processes_running(sleeper) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
            }
        }
    }
}

impl Computer {
    fn new() -> Computer {
        let root = tempfile::tempdir().unwrap();
        let state = root.path().join("state");
        let partition = root.path().join("slappart0");
        fs::create_dir(&partition).unwrap();
        Computer {
            state,
            partition,
            _root: root,
            sleepers: RefCell::default(),
        }
    }

    /// `sleeper(id)`, remembered for the cleanup.
    fn sleep(&self, id: u32) -> String {
        let sleeper = sleeper(id);
        self.sleepers.borrow_mut().push(sleeper.clone());
        sleeper
    }

    /// A `/bin/sh -c <script>` service of `slappart0` logging to `<name>.log`.
    fn service(&self, name: &str, script: &str) -> ServiceSpec {
        let mut spec = ServiceSpec::new(
            "slappart0",
            name,
            "/bin/sh",
            &self.partition,
            format!("{name}.log"),
        );
        spec.args = vec!["-c".into(), script.into()];
        spec
    }

    fn log(&self, name: &str) -> String {
        fs::read_to_string(self.partition.join(format!("{name}.log"))).unwrap_or_default()
    }

    fn open(&self) -> Supervisor {
        Supervisor::open_with(&self.state, options()).unwrap()
    }
}

fn status(supervisor: &Supervisor, name: &str) -> ServiceStatus {
    supervisor
        .status_of("slappart0")
        .into_iter()
        .find(|status| status.name == name)
        .unwrap_or_else(|| panic!("no service {name}"))
}

fn pid_of(supervisor: &Supervisor, name: &str) -> Option<u32> {
    status(supervisor, name).pid
}

/// Alive and not a zombie (pid 1 of some containers never reaps orphans).
fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        let state = stat[stat.rfind(')').unwrap() + 2..].chars().next();
        !matches!(state, Some('Z' | 'X'))
    })
}

/// Live processes whose command line is `command` (zombies have none).
fn processes_running(command: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
                String::from_utf8_lossy(&cmdline)
                    .replace('\0', " ")
                    .trim_end()
                    == command
            })
        })
        .collect()
}

fn count_processes(command: &str) -> usize {
    processes_running(command).len()
}

/// Polls `condition` every 10 ms until it holds or `timeout` passes.
async fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn wait_for_file(path: &Path) -> String {
    assert!(
        wait_until(Duration::from_secs(5), || fs::read_to_string(path)
            .is_ok_and(|text| text.ends_with('\n')))
        .await,
        "{} never appeared",
        path.display()
    );
    fs::read_to_string(path).unwrap()
}

#[tokio::test]
async fn starts_logs_and_stops_a_service() {
    let computer = Computer::new();
    let supervisor = computer.open();
    let mut spec = computer.service(
        "web",
        &format!(
            "echo \"hello $USER $LANG $GREETING\"; echo oops >&2; exec {}",
            computer.sleep(101)
        ),
    );
    spec.env.insert("GREETING".into(), "bonjour".into());
    supervisor.apply("slappart0", vec![spec]).await.unwrap();

    let pid = pid_of(&supervisor, "web").expect("running");
    assert!(alive(pid));
    assert!(
        wait_until(Duration::from_secs(2), || computer
            .log("web")
            .contains("oops"))
        .await
    );
    let user = nix::unistd::User::from_uid(nix::unistd::geteuid())
        .unwrap()
        .unwrap()
        .name;
    assert!(
        computer
            .log("web")
            .contains(&format!("hello {user} C.UTF-8 bonjour\n")),
        "{}",
        computer.log("web")
    );
    assert!(computer.state.join("slappart0/web.json").exists());
    // Its own session and process group, so it survives the node.
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 2..].split(' ').collect();
    assert_eq!(
        (fields[2], fields[3]),
        (&*pid.to_string(), &*pid.to_string())
    );

    supervisor.stop_partition("slappart0").await.unwrap();
    assert!(!alive(pid));
    let stopped = status(&supervisor, "web");
    assert_eq!((stopped.state, stopped.pid), (ServiceState::Stopped, None));
    assert!(!computer.state.join("slappart0/web.json").exists());
}

#[tokio::test]
async fn a_killed_service_comes_back_within_two_seconds() {
    let computer = Computer::new();
    let supervisor = computer.open();
    let spec = computer.service("db", &format!("exec {}", computer.sleep(102)));
    supervisor.apply("slappart0", vec![spec]).await.unwrap();
    let first = pid_of(&supervisor, "db").unwrap();

    kill(Pid::from_raw(first as i32), Signal::SIGKILL).unwrap();
    let killed_at = Instant::now();
    assert!(
        wait_until(Duration::from_secs(2), || pid_of(&supervisor, "db")
            .is_some_and(|pid| pid != first))
        .await
    );
    let back = status(&supervisor, "db");
    println!("back after {:?}", killed_at.elapsed());
    assert_eq!(back.restarts, 1);
    assert_eq!(back.last_exit, Some(ExitReason::Signal(9)));
    assert!(matches!(
        back.state,
        ServiceState::Starting | ServiceState::Running
    ));
    assert!(alive(back.pid.unwrap()));
    supervisor.stop_all().await;
}

#[tokio::test]
async fn a_crash_looping_service_backs_off_exponentially() {
    let computer = Computer::new();
    let supervisor = computer.open();
    let spec = computer.service("crash", "exit 1");
    supervisor.apply("slappart0", vec![spec]).await.unwrap();

    // The delay of each backoff, as (until - since), by restart count.
    let mut delays: Vec<(u32, Duration)> = Vec::new();
    let begin = Instant::now();
    while begin.elapsed() < Duration::from_millis(2000) {
        let now = status(&supervisor, "crash");
        if let ServiceState::Backoff { until } = now.state {
            if delays
                .last()
                .is_none_or(|(restarts, _)| *restarts != now.restarts)
            {
                delays.push((now.restarts, until.duration_since(now.since).unwrap()));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let millis: Vec<u128> = delays.iter().map(|(_, delay)| delay.as_millis()).collect();
    assert!(millis.len() >= 4, "{millis:?}");
    assert_eq!(&millis[..4], &[100, 200, 400, 800], "{delays:?}");
    // Without backoff a 50 ms tick would have restarted it ~40 times.
    let restarts = status(&supervisor, "crash").restarts;
    assert!((3..=5).contains(&restarts), "{restarts} restarts");
    assert_eq!(
        status(&supervisor, "crash").last_exit,
        Some(ExitReason::Code(1))
    );
    supervisor.stop_all().await;
}

#[tokio::test]
async fn a_healthy_run_resets_the_backoff() {
    let computer = Computer::new();
    let supervisor = Supervisor::open_with(
        &computer.state,
        SupervisorOptions {
            healthy_after: Duration::from_millis(250),
            ..options()
        },
    )
    .unwrap();
    supervisor
        .apply(
            "slappart0",
            vec![computer.service("flaky", "sleep 0.3; exit 1")],
        )
        .await
        .unwrap();
    let mut delays = Vec::new();
    let begin = Instant::now();
    while begin.elapsed() < Duration::from_millis(1400) {
        let now = status(&supervisor, "flaky");
        if let ServiceState::Backoff { until } = now.state {
            let delay = until.duration_since(now.since).unwrap().as_millis();
            if delays.last() != Some(&(now.restarts, delay)) {
                delays.push((now.restarts, delay));
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(delays.len() >= 2, "{delays:?}");
    assert!(delays.iter().all(|(_, delay)| *delay == 100), "{delays:?}");
    supervisor.stop_all().await;
}

#[tokio::test]
async fn a_oneshot_runs_once_per_spec() {
    let computer = Computer::new();
    let supervisor = computer.open();
    let mut setup = computer.service("setup", "echo run >> runs.txt");
    setup.oneshot = true;
    let mut failing = computer.service("failing", "exit 3");
    failing.oneshot = true;
    failing.restart = RestartPolicy::Never;
    supervisor
        .apply("slappart0", vec![setup.clone(), failing.clone()])
        .await
        .unwrap();
    let runs = || fs::read_to_string(computer.partition.join("runs.txt")).unwrap_or_default();

    assert!(
        wait_until(Duration::from_secs(2), || status(&supervisor, "setup")
            .state
            == ServiceState::Done)
        .await
    );
    assert!(
        wait_until(Duration::from_secs(2), || status(&supervisor, "failing")
            .state
            == ServiceState::Exited {
                reason: ExitReason::Code(3)
            })
        .await
    );
    // Applying the same spec again, even later, does not run it again.
    tokio::time::sleep(Duration::from_millis(300)).await;
    supervisor
        .apply("slappart0", vec![setup.clone(), failing.clone()])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(runs(), "run\n");
    assert_eq!(status(&supervisor, "setup").restarts, 0);

    // A new spec runs it again.
    setup.env.insert("VERSION".into(), "2".into());
    supervisor
        .apply("slappart0", vec![setup.clone(), failing.clone()])
        .await
        .unwrap();
    assert!(wait_until(Duration::from_secs(2), || runs() == "run\nrun\n").await);
    assert!(
        wait_until(Duration::from_secs(2), || status(&supervisor, "setup")
            .state
            == ServiceState::Done)
        .await
    );

    // Done survives a node restart.
    supervisor.detach().await;
    let supervisor = computer.open();
    assert_eq!(status(&supervisor, "setup").state, ServiceState::Done);
    supervisor
        .apply("slappart0", vec![setup, failing])
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(runs(), "run\nrun\n");
    supervisor.stop_all().await;
}

#[tokio::test]
async fn a_spec_change_restarts_only_that_service() {
    let computer = Computer::new();
    let supervisor = computer.open();
    let stable = computer.service("stable", &format!("exec {}", computer.sleep(103)));
    let mut changing = computer.service("changing", &format!("exec {}", computer.sleep(104)));
    supervisor
        .apply("slappart0", vec![stable.clone(), changing.clone()])
        .await
        .unwrap();
    let (stable_pid, old_pid) = (
        pid_of(&supervisor, "stable").unwrap(),
        pid_of(&supervisor, "changing").unwrap(),
    );

    changing.env.insert("PORT".into(), "8081".into());
    supervisor
        .apply("slappart0", vec![stable, changing])
        .await
        .unwrap();
    assert_eq!(pid_of(&supervisor, "stable"), Some(stable_pid));
    let new_pid = pid_of(&supervisor, "changing").unwrap();
    assert_ne!(new_pid, old_pid);
    assert!(!alive(old_pid));
    assert!(alive(new_pid) && alive(stable_pid));
    // A new spec starts counting restarts afresh.
    assert_eq!(status(&supervisor, "changing").restarts, 0);
    supervisor.stop_all().await;
}

#[tokio::test]
async fn a_removed_service_is_stopped() {
    let computer = Computer::new();
    let supervisor = computer.open();
    let kept = computer.service("kept", &format!("exec {}", computer.sleep(105)));
    let removed = computer.service("removed", &format!("exec {}", computer.sleep(106)));
    supervisor
        .apply("slappart0", vec![kept.clone(), removed])
        .await
        .unwrap();
    let removed_pid = pid_of(&supervisor, "removed").unwrap();

    supervisor.apply("slappart0", vec![kept]).await.unwrap();
    assert!(!alive(removed_pid));
    let names: Vec<String> = supervisor
        .status_of("slappart0")
        .into_iter()
        .map(|status| status.name)
        .collect();
    assert_eq!(names, ["kept"]);
    assert!(!computer.state.join("slappart0/removed.json").exists());

    // An empty list removes the partition entirely.
    supervisor.apply("slappart0", vec![]).await.unwrap();
    assert!(supervisor.status().is_empty());
    assert_eq!(count_processes(&computer.sleep(105)), 0);
}

#[tokio::test]
async fn stop_partition_kills_the_whole_process_group() {
    let computer = Computer::new();
    let supervisor = Supervisor::open_with(
        &computer.state,
        SupervisorOptions {
            grace: Duration::from_millis(300),
            ..options()
        },
    )
    .unwrap();
    let polite = computer.service(
        "polite",
        &format!("{} & echo $! > polite.pid; wait", computer.sleep(107)),
    );
    // Ignored signals are inherited: neither the shell nor its child die on SIGTERM.
    let stubborn = computer.service(
        "stubborn",
        &format!(
            "trap '' TERM; {} & echo $! > stubborn.pid; wait",
            computer.sleep(108)
        ),
    );
    supervisor
        .apply("slappart0", vec![polite, stubborn])
        .await
        .unwrap();
    let polite_child: u32 = wait_for_file(&computer.partition.join("polite.pid"))
        .await
        .trim()
        .parse()
        .unwrap();
    let stubborn_child: u32 = wait_for_file(&computer.partition.join("stubborn.pid"))
        .await
        .trim()
        .parse()
        .unwrap();
    let leaders = [
        pid_of(&supervisor, "polite").unwrap(),
        pid_of(&supervisor, "stubborn").unwrap(),
    ];
    assert!(alive(polite_child) && alive(stubborn_child));

    let begin = Instant::now();
    supervisor.stop_partition("slappart0").await.unwrap();
    let took = begin.elapsed();
    for pid in leaders.into_iter().chain([polite_child, stubborn_child]) {
        assert!(!alive(pid), "{pid} survived");
    }
    // The stubborn group needed SIGKILL after the grace period.
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(took < Duration::from_secs(2), "{took:?}");
}

#[tokio::test]
async fn a_restarted_node_adopts_running_services() {
    let computer = Computer::new();
    let supervisor = computer.open();
    let spec = computer.service("cache", &format!("exec {}", computer.sleep(109)));
    supervisor
        .apply("slappart0", vec![spec.clone()])
        .await
        .unwrap();
    let pid = pid_of(&supervisor, "cache").unwrap();
    supervisor.detach().await;
    assert!(alive(pid), "detach must leave services running");

    let supervisor = computer.open();
    let adopted = status(&supervisor, "cache");
    assert_eq!(adopted.pid, Some(pid));
    assert!(adopted.adopted);
    assert!(matches!(
        adopted.state,
        ServiceState::Starting | ServiceState::Running
    ));
    assert_eq!(adopted.restarts, 0);
    // The node re-applies the same spec: nothing is restarted or duplicated.
    supervisor.apply("slappart0", vec![spec]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(pid_of(&supervisor, "cache"), Some(pid));
    assert_eq!(count_processes(&computer.sleep(109)), 1);

    // Adopted services are supervised like the others.
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || pid_of(&supervisor, "cache")
            .is_some_and(|new| new != pid))
        .await
    );
    assert_eq!(status(&supervisor, "cache").restarts, 1);
    // The new shell may not have exec'd `sleep` yet.
    let one = || count_processes(&computer.sleep(109)) == 1;
    assert!(wait_until(Duration::from_secs(1), one).await);
    supervisor.stop_all().await;
    assert_eq!(count_processes(&computer.sleep(109)), 0);
}

/// Plays the node in `a_node_killed_with_sigkill_is_replaced_without_duplicates`:
/// starts two services, writes their pids to `ready`, then waits to be killed.
#[tokio::test]
#[ignore = "run by another test as a separate node process"]
async fn node_process_helper() {
    let Some(root) = std::env::var_os("SUPERVISOR_TEST_NODE") else {
        return;
    };
    let root = PathBuf::from(root);
    let supervisor = Supervisor::open_with(&root.join("state"), options()).unwrap();
    let service = |name: &str, id: u32| {
        let log = format!("{name}.log");
        let mut spec = ServiceSpec::new("slappart0", name, "/bin/sh", root.join("slappart0"), log);
        spec.args = vec!["-c".into(), format!("exec {}", sleeper(id))];
        spec
    };
    let services = vec![service("worker", 110), service("other", 117)];
    supervisor.apply("slappart0", services).await.unwrap();
    let pids = (
        pid_of(&supervisor, "worker").unwrap(),
        pid_of(&supervisor, "other").unwrap(),
    );
    fs::write(root.join("ready"), format!("{} {}\n", pids.0, pids.1)).unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
}

#[tokio::test]
async fn a_node_killed_with_sigkill_is_replaced_without_duplicates() {
    let computer = Computer::new();
    let root = computer.partition.parent().unwrap();
    let mut node = Command::new(std::env::current_exe().unwrap())
        .args(["node_process_helper", "--exact", "--ignored", "--nocapture"])
        .env("SUPERVISOR_TEST_NODE", root)
        .env("SUPERVISOR_TEST_TAG", std::process::id().to_string())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let ready = wait_for_file(&root.join("ready")).await;
    let pids: Vec<u32> = ready
        .split_whitespace()
        .map(|pid| pid.parse().unwrap())
        .collect();
    let (pid, other_pid) = (pids[0], pids[1]);
    node.kill().unwrap(); // SIGKILL
    node.wait().unwrap();
    assert!(
        alive(pid) && alive(other_pid),
        "services must outlive their node"
    );

    let supervisor = computer.open();
    let adopted = status(&supervisor, "worker");
    assert_eq!((adopted.pid, adopted.adopted), (Some(pid), true));
    let worker = computer.service("worker", &format!("exec {}", computer.sleep(110)));
    let mut other = computer.service("other", &format!("exec {}", computer.sleep(117)));
    other.env.insert("CHANGED".into(), "yes".into());
    supervisor
        .apply("slappart0", vec![worker, other])
        .await
        .unwrap();
    assert_eq!(pid_of(&supervisor, "worker"), Some(pid));
    assert_eq!(count_processes(&computer.sleep(110)), 1);
    // The changed one was stopped although it is not our child.
    assert!(!alive(other_pid));
    assert!(pid_of(&supervisor, "other").is_some_and(|new| new != other_pid));

    // Not our child: its death is seen through its pidfd, status unknown.
    kill(Pid::from_raw(pid as i32), Signal::SIGKILL).unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || pid_of(&supervisor, "worker")
            .is_some_and(|new| new != pid))
        .await
    );
    let restarted = status(&supervisor, "worker");
    assert_eq!(restarted.last_exit, Some(ExitReason::Unknown));
    assert!(!restarted.adopted);
    // The new shell may not have exec'd `sleep` yet.
    let one = || count_processes(&computer.sleep(110)) == 1;
    assert!(wait_until(Duration::from_secs(1), one).await);
    supervisor.stop_all().await;
    assert_eq!(count_processes(&computer.sleep(110)), 0);
}

#[tokio::test]
async fn stale_records_are_not_adopted() {
    let computer = Computer::new();
    let supervisor = computer.open();
    let dead = computer.service("dead", &format!("exec {}", computer.sleep(111)));
    let reused = computer.service("reused", &format!("exec {}", computer.sleep(112)));
    supervisor
        .apply("slappart0", vec![dead, reused])
        .await
        .unwrap();
    let dead_pid = pid_of(&supervisor, "dead").unwrap();
    let reused_pid = pid_of(&supervisor, "reused").unwrap();
    supervisor.detach().await;

    // `dead` dies while no node watches (we are still its parent: reap it).
    kill(Pid::from_raw(dead_pid as i32), Signal::SIGKILL).unwrap();
    nix::sys::wait::waitpid(Pid::from_raw(dead_pid as i32), None).unwrap();
    // `reused`'s pid now belongs to an unrelated process (a live one with
    // another start time), which must be left alone.
    kill(Pid::from_raw(reused_pid as i32), Signal::SIGKILL).unwrap();
    nix::sys::wait::waitpid(Pid::from_raw(reused_pid as i32), None).unwrap();
    let mut bystander = Command::new("sleep")
        .args(["30.113", "0.5"])
        .spawn()
        .unwrap();
    let record_path = computer.state.join("slappart0/reused.json");
    let mut record: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(&record_path).unwrap()).unwrap();
    record["run"]["pid"] = bystander.id().into();
    fs::write(&record_path, record.to_string()).unwrap();

    let supervisor = computer.open();
    for (name, stale) in [("dead", dead_pid), ("reused", bystander.id())] {
        let now = status(&supervisor, name);
        assert!(!now.adopted && now.pid != Some(stale), "{now:?}");
        assert_eq!(now.last_exit, Some(ExitReason::Unknown));
    }
    // Their restart policy (always) brings them back.
    assert!(
        wait_until(Duration::from_secs(2), || {
            ["dead", "reused"]
                .iter()
                .all(|name| pid_of(&supervisor, name).is_some())
        })
        .await
    );
    supervisor.stop_all().await;
    assert!(alive(bystander.id()), "an unrelated process was killed");
    bystander.kill().unwrap();
    bystander.wait().unwrap();
}

#[tokio::test]
async fn runs_as_the_partition_user() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("skipped: switching users needs root");
        return;
    }
    let computer = Computer::new();
    let nobody = (65534, 65534);
    nix::unistd::chown(
        &computer.partition,
        Some(nix::unistd::Uid::from_raw(nobody.0)),
        Some(nix::unistd::Gid::from_raw(nobody.1)),
    )
    .unwrap();
    let supervisor = computer.open();
    let mut spec = computer.service(
        "app",
        &format!("echo \"$USER $HOME\"; exec {}", computer.sleep(114)),
    );
    spec.user = Some(nobody);
    supervisor.apply("slappart0", vec![spec]).await.unwrap();
    let pid = pid_of(&supervisor, "app").unwrap();

    let proc_status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> Vec<String> {
        let line = proc_status
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap();
        line[name.len()..]
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    assert_eq!(field("Uid:"), ["65534"; 4]);
    assert_eq!(field("Gid:"), ["65534"; 4]);
    assert!(field("Groups:").iter().all(|group| group != "0"));
    // The log was created by the service itself, as its user.
    assert!(
        wait_until(Duration::from_secs(2), || computer
            .log("app")
            .ends_with('\n'))
        .await
    );
    assert_eq!(
        fs::metadata(computer.partition.join("app.log"))
            .unwrap()
            .uid(),
        65534
    );
    let account = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(65534))
        .unwrap()
        .unwrap();
    assert_eq!(
        computer.log("app"),
        format!("{} {}\n", account.name, account.dir.display())
    );
    supervisor.stop_all().await;
}

#[tokio::test]
async fn start_errors_say_what_to_fix() {
    let computer = Computer::new();
    let supervisor = computer.open();
    let mut missing = computer.service("missing", "");
    missing.program = "/nonexistent/bin/server".into();
    let mut not_in_path = computer.service("not-in-path", "");
    not_in_path.program = "no-such-program-4242".into();
    let mut no_log_dir = computer.service("no-log-dir", &format!("exec {}", computer.sleep(115)));
    no_log_dir.log_file = "var/log/no-log-dir.log".into();
    let mut as_root = computer.service("as-root", &format!("exec {}", computer.sleep(115)));
    as_root.user = Some((0, 0));
    let script = computer.partition.join("script");
    fs::write(&script, "#!/nonexistent/interpreter\n").unwrap();
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755)).unwrap();
    let mut bad_interpreter = computer.service("bad-interpreter", "");
    bad_interpreter.program = "./script".into();
    bad_interpreter.args.clear();
    let fine = computer.service("fine", &format!("exec {}", computer.sleep(116)));
    let error = supervisor
        .apply(
            "slappart0",
            vec![
                missing,
                not_in_path,
                no_log_dir,
                as_root,
                bad_interpreter,
                fine,
            ],
        )
        .await
        .unwrap_err();
    let SupervisorError::StartFailed(failures) = &error else {
        panic!("{error}");
    };
    let message = error.to_string();
    println!("{message}");
    assert_eq!(failures.len(), 5, "{message}");
    // In name order.
    assert!(matches!(failures[0].error, StartError::RootTarget));
    assert!(matches!(
        failures[1].error,
        StartError::MissingInterpreter { .. }
    ));
    assert!(matches!(
        failures[2].error,
        StartError::ProgramNotFound { .. }
    ));
    assert!(matches!(failures[3].error, StartError::LogFile { .. }));
    assert!(matches!(
        failures[4].error,
        StartError::ProgramNotInPath { .. }
    ));
    assert!(
        message.contains("/script: the interpreter named on its #! line"),
        "{message}"
    );
    assert!(
        message.contains("/nonexistent/bin/server does not exist"),
        "{message}"
    );
    assert!(
        message.contains("`no-such-program-4242` not found in PATH="),
        "{message}"
    );
    assert!(message.contains("cannot open log file"), "{message}");
    assert!(message.contains("var/log/no-log-dir.log"), "{message}");
    assert!(
        message.contains("refusing to run a partition service as root"),
        "{message}"
    );
    // The others were started all the same; failed ones say why.
    assert!(pid_of(&supervisor, "fine").is_some());
    let failed = status(&supervisor, "missing");
    assert_eq!(failed.state, ServiceState::Failed);
    assert!(failed.last_error.unwrap().contains("does not exist"));

    // Fixing the cause and applying again starts it.
    fs::create_dir_all(computer.partition.join("var/log")).unwrap();
    let mut no_log_dir = computer.service("no-log-dir", &format!("exec {}", computer.sleep(115)));
    no_log_dir.log_file = "var/log/no-log-dir.log".into();
    let fine = computer.service("fine", &format!("exec {}", computer.sleep(116)));
    supervisor
        .apply("slappart0", vec![no_log_dir, fine])
        .await
        .unwrap();
    assert!(pid_of(&supervisor, "no-log-dir").is_some());
    supervisor.stop_all().await;

    let invalid = computer.service("../escape", "true");
    assert!(matches!(
        supervisor.apply("slappart0", vec![invalid]).await,
        Err(SupervisorError::InvalidSpec { .. })
    ));
}

#[tokio::test]
async fn large_logs_are_rotated_at_start() {
    let computer = Computer::new();
    let supervisor = Supervisor::open_with(
        &computer.state,
        SupervisorOptions {
            log_rotate_bytes: 1000,
            ..options()
        },
    )
    .unwrap();
    fs::write(computer.partition.join("job.log"), "old\n".repeat(500)).unwrap();
    let mut job = computer.service("job", "echo fresh");
    job.oneshot = true;
    supervisor.apply("slappart0", vec![job]).await.unwrap();
    assert!(
        wait_until(Duration::from_secs(2), || status(&supervisor, "job").state
            == ServiceState::Done)
        .await
    );
    assert_eq!(computer.log("job"), "fresh\n");
    assert_eq!(
        fs::read_to_string(computer.partition.join("job.log.1")).unwrap(),
        "old\n".repeat(500)
    );
}

#[tokio::test]
async fn one_node_per_state_directory() {
    let computer = Computer::new();
    let first = computer.open();
    assert!(matches!(
        Supervisor::open_with(&computer.state, options()),
        Err(SupervisorError::StateDirLocked { .. })
    ));
    first.detach().await;
    let second = computer.open();
    assert!(second.status().is_empty());
}
