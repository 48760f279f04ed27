//! The supervisor's idle cost with a few hundred services: one background
//! task, one `poll` per tick, no thread per process.

use std::fs;
use std::time::{Duration, Instant};

use slapos_node::supervisor::{ServiceSpec, Supervisor, SupervisorOptions};

const SERVICES: usize = 300;

/// CPU time (user + system) used by this process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the zeroed struct we own.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        assert_eq!(libc::getrusage(libc::RUSAGE_SELF, &mut usage), 0);
        usage
    };
    let micros = |time: libc::timeval| {
        Duration::from_micros(time.tv_sec as u64 * 1_000_000 + time.tv_usec as u64)
    };
    micros(usage.ru_utime) + micros(usage.ru_stime)
}

fn threads() -> usize {
    fs::read_dir("/proc/self/task").unwrap().count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundreds_of_idle_services_cost_little() {
    let root = tempfile::tempdir().unwrap();
    let partitions: Vec<_> = (0..SERVICES / 10)
        .map(|index| {
            let directory = root.path().join(format!("slappart{index}"));
            fs::create_dir(&directory).unwrap();
            directory
        })
        .collect();
    // Production tick, so the measure is what a node pays.
    let supervisor =
        Supervisor::open_with(&root.path().join("state"), SupervisorOptions::default()).unwrap();
    let threads_before = threads();

    let begin = Instant::now();
    for (index, directory) in partitions.iter().enumerate() {
        let partition = format!("slappart{index}");
        let services = (0..10)
            .map(|service| {
                let name = format!("service{service}");
                let mut spec =
                    ServiceSpec::new(&partition, &name, "sleep", directory, format!("{name}.log"));
                spec.args = vec!["60".into(), format!("0.{}", std::process::id())];
                spec
            })
            .collect();
        supervisor.apply(&partition, services).await.unwrap();
    }
    let started_in = begin.elapsed();
    assert_eq!(
        supervisor
            .status()
            .iter()
            .filter(|status| status.pid.is_some())
            .count(),
        SERVICES
    );

    let (cpu_before, wall_before) = (cpu_time(), Instant::now());
    tokio::time::sleep(Duration::from_secs(2)).await;
    let idle_cpu = (cpu_time() - cpu_before).as_secs_f64() / wall_before.elapsed().as_secs_f64();
    let threads_after = threads();

    let begin = Instant::now();
    supervisor.stop_all().await;
    let stopped_in = begin.elapsed();
    println!(
        "{SERVICES} services: started in {started_in:?}, idle CPU {:.2}% of a core, \
         threads {threads_before} -> {threads_after}, stopped in {stopped_in:?}",
        idle_cpu * 100.0
    );
    assert!(
        idle_cpu < 0.02,
        "idle supervision costs {:.1}% of a core",
        idle_cpu * 100.0
    );
    // No thread per service (tokio may add a blocking thread or two).
    assert!(
        threads_after <= threads_before + 2,
        "{threads_before} -> {threads_after}"
    );
    assert!(supervisor
        .status()
        .iter()
        .all(|status| status.pid.is_none()));
}
