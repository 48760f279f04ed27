//! One story of the master's engine, run on SQLite and on PostgreSQL
//! (`SLAPOS_TEST_POSTGRES=postgresql://...`; CI sets it). Each PostgreSQL
//! run gets a database of its own, dropped afterwards.

use std::collections::BTreeMap;

use slapos_core::{InstanceState, Sla, SoftwareState};
use slapos_master::engine::{
    self, ComputerConfig, DestroyOutcome, PartitionConfig, RequestInput, Requester, SoftwareReport,
};
use slapos_master::{EngineConfig, MasterError};
use slapos_proto::marshal::Value;
use slapos_store::queries::{self as q, Address};
use slapos_store::{Store, StoreOptions};

const SR: &str = "https://lab.example.invalid/software/demo/software.cfg";

struct TestDb {
    store: Store,
    _dir: Option<tempfile::TempDir>,
    drop_pg: Option<(String, String)>,
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Some((admin, name)) = self.drop_pg.take() {
            // The synchronous client runs its own runtime: use a plain thread.
            let _ = std::thread::spawn(move || {
                if let Ok(mut c) = postgres::Client::connect(&admin, postgres::NoTls) {
                    let _ =
                        c.batch_execute(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"));
                }
            })
            .join();
        }
    }
}

fn sqlite() -> TestDb {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("master.db");
    TestDb {
        store: Store::open(path.to_str().unwrap(), &StoreOptions::default()).unwrap(),
        _dir: Some(dir),
        drop_pg: None,
    }
}

/// A fresh PostgreSQL database, or None when no server is configured.
fn postgres() -> Option<TestDb> {
    let admin = std::env::var("SLAPOS_TEST_POSTGRES").ok()?;
    let name = format!("slapos_test_{}_{}", std::process::id(), rand_suffix());
    let mut client = postgres::Client::connect(&admin, postgres::NoTls)
        .expect("SLAPOS_TEST_POSTGRES is set but unreachable");
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .unwrap();
    let url = match admin.rsplit_once('/') {
        Some((base, _)) => format!("{base}/{name}"),
        None => panic!("SLAPOS_TEST_POSTGRES must end with /DATABASE"),
    };
    Some(TestDb {
        store: Store::open(&url, &StoreOptions::default()).unwrap(),
        _dir: None,
        drop_pg: Some((admin, name)),
    })
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .subsec_nanos() as u64
}

fn backends() -> Vec<(&'static str, TestDb)> {
    let mut all = vec![("sqlite", sqlite())];
    match std::thread::spawn(postgres).join().unwrap() {
        Some(pg) => all.push(("postgresql", pg)),
        None => eprintln!("SLAPOS_TEST_POSTGRES not set: PostgreSQL run skipped"),
    }
    all
}

fn computer(reference: &str, partitions: usize) -> ComputerConfig {
    ComputerConfig {
        reference: reference.into(),
        address: Some("10.0.0.1".into()),
        netmask: Some("255.255.255.0".into()),
        partitions: (0..partitions)
            .map(|i| PartitionConfig {
                reference: format!("slappart{i}"),
                addresses: vec![Address {
                    interface: format!("slaptap{i}"),
                    addr: format!("10.0.0.{}", 10 + i),
                    netmask: "255.255.255.0".into(),
                }],
            })
            .collect(),
    }
}

fn input(title: &str, computer: Option<&str>) -> RequestInput {
    RequestInput {
        software_release: SR.into(),
        title: title.into(),
        software_type: "default".into(),
        parameters: vec![
            ("port".into(), Value::Int(8080)),
            ("name".into(), Value::str("straße")),
        ],
        sla: Sla::from_pairs(computer.map(|c| ("computer_guid".to_string(), c.to_string()))),
        state: None,
        shared: false,
        requester: Requester::User,
        owner: None,
    }
}

async fn run<T: Send + 'static>(
    store: &Store,
    job: impl FnMut(&mut dyn slapos_store::Db) -> Result<T, MasterError> + Send + 'static,
) -> Result<T, MasterError> {
    store.write(job).await
}

async fn story(name: &str, store: &Store) {
    let config = EngineConfig::default();
    // Registration, and re-format keeping what exists.
    for c in [computer("COMP-1", 3), computer("COMP-2", 2)] {
        run(store, move |db| engine::load_computer_configuration(db, &c))
            .await
            .unwrap();
    }
    run(store, |db| {
        engine::load_computer_configuration(db, &computer("COMP-1", 3))
    })
    .await
    .unwrap();
    store
        .write(|db| {
            let c2 = q::computer_by_reference(db, "COMP-2")?.unwrap();
            q::set_computer_attributes(
                db,
                c2.id,
                &BTreeMap::from([("country".to_string(), "fr".to_string())]),
            )?;
            Ok::<_, MasterError>(())
        })
        .await
        .unwrap();

    // Supply and software reports.
    run(store, |db| {
        engine::supply(db, q::Scope::All, "COMP-1", SR, SoftwareState::Available)
    })
    .await
    .unwrap();
    run(store, |db| {
        engine::report_software(db, "COMP-1", SR, SoftwareReport::Available, None)
    })
    .await
    .unwrap();
    let software = store
        .read(|db| Ok::<_, MasterError>(q::software_of(db, 1)?))
        .await
        .unwrap();
    assert_eq!(software.len(), 1, "{name}");
    assert_eq!(
        software[0].reported_state.as_deref(),
        Some("available"),
        "{name}"
    );

    // A request lands on the named computer; a re-request is idempotent.
    let cfg = config.clone();
    let first = run(store, move |db| {
        engine::request(db, &cfg, &input("root", Some("COMP-1")))
    })
    .await
    .unwrap();
    assert_eq!(
        (first.computer.as_str(), first.partition.reference.as_str()),
        ("COMP-1", "slappart0"),
        "{name}"
    );
    assert_eq!(
        first.parameters,
        vec![
            ("name".into(), Some("straße".into())),
            ("port".into(), Some("8080".into()))
        ]
    );
    let cfg = config.clone();
    let again = run(store, move |db| {
        engine::request(db, &cfg, &input("root", Some("COMP-1")))
    })
    .await
    .unwrap();
    assert_eq!(again.partition.id, first.partition.id, "{name}");
    assert_eq!(
        again.instance.timestamp, first.instance.timestamp,
        "{name}: identical re-request keeps the timestamp"
    );
    let cfg = config.clone();
    let changed = run(store, move |db| {
        let mut i = input("root", Some("COMP-1"));
        i.parameters.push(("extra".into(), Value::str("1")));
        engine::request(db, &cfg, &i)
    })
    .await
    .unwrap();
    assert!(
        changed.instance.timestamp > first.instance.timestamp,
        "{name}: new parameters bump the timestamp"
    );

    // Placement by computer attribute.
    let cfg = config.clone();
    let french = run(store, move |db| {
        let mut i = input("in-france", None);
        i.sla = Sla::from_pairs([("country".to_string(), "fr".to_string())]);
        engine::request(db, &cfg, &i)
    })
    .await
    .unwrap();
    assert_eq!(french.computer, "COMP-2", "{name}");
    let cfg = config.clone();
    let nowhere = run(store, move |db| {
        let mut i = input("in-mars", None);
        i.sla = Sla::from_pairs([("country".to_string(), "mars".to_string())]);
        engine::request(db, &cfg, &i)
    })
    .await;
    assert!(
        matches!(nowhere, Err(MasterError::NotFound(_))),
        "{name}: {nowhere:?}"
    );
    let leftover = store
        .read(|db| Ok::<_, MasterError>(q::instance_by_title(db, 0, false, None, "in-mars")?))
        .await
        .unwrap();
    assert!(
        leftover.is_none(),
        "{name}: a refused request leaves nothing behind"
    );

    // A child requested by the root's partition joins its tree.
    let cfg = config.clone();
    let child = run(store, move |db| {
        let mut i = input("child", Some("COMP-1"));
        i.requester = Requester::Partition {
            computer: "COMP-1".into(),
            partition: "slappart0".into(),
        };
        engine::request(db, &cfg, &i)
    })
    .await
    .unwrap();
    assert_eq!(child.instance.tree_id, first.instance.id, "{name}");
    assert_eq!(child.partition.reference, "slappart1", "{name}");

    // The child publishes: stored, and its requester is bumped.
    let before = store
        .read(move |db| {
            Ok::<_, MasterError>(q::instance_by_title(db, 0, false, None, "root")?.unwrap())
        })
        .await
        .unwrap();
    run(store, |db| {
        engine::set_connection(
            db,
            "COMP-1",
            "slappart1",
            None,
            &[("url".into(), Value::str("mysql://x"))],
        )
    })
    .await
    .unwrap();
    let after = store
        .read(move |db| {
            Ok::<_, MasterError>(q::instance_by_title(db, 0, false, None, "root")?.unwrap())
        })
        .await
        .unwrap();
    assert!(
        after.timestamp > before.timestamp,
        "{name}: publishing bumps the requester"
    );

    // A shared instance is hosted by a matching instance.
    let cfg = config.clone();
    let shared = run(store, move |db| {
        let mut i = input("site", Some("COMP-1"));
        i.shared = true;
        i.parameters = vec![("domain".into(), Value::str("shop.example.com"))];
        engine::request(db, &cfg, &i)
    })
    .await
    .unwrap();
    assert_eq!(
        shared.partition.reference, "slappart0",
        "{name}: hosted by the root"
    );
    run(store, |db| {
        engine::set_connection(
            db,
            "COMP-1",
            "slappart0",
            Some("_site"),
            &[("site-url".into(), Value::str("https://shop"))],
        )
    })
    .await
    .unwrap();
    let view = store
        .read(|db| slapos_master::views::computer_view(db, "COMP-1"))
        .await
        .unwrap()
        .unwrap();
    let host = view.partitions[0].instance.as_ref().unwrap();
    assert_eq!(host.shared.len(), 1, "{name}");
    assert_eq!(host.shared[0].slave_reference, "_site", "{name}");

    // Bang: one common new timestamp for the tree.
    run(store, |db| {
        engine::bang(db, "COMP-1", "slappart1", "promise failed")
    })
    .await
    .unwrap();
    let view = store
        .read(|db| slapos_master::views::computer_view(db, "COMP-1"))
        .await
        .unwrap()
        .unwrap();
    let t0 = view.partitions[0].instance.as_ref().unwrap().row.timestamp;
    let t1 = view.partitions[1].instance.as_ref().unwrap().row.timestamp;
    assert_eq!(t0, t1, "{name}");

    // Stopping the root stops its tree; destroying frees children first.
    let cfg = config.clone();
    run(store, move |db| {
        let mut i = input("root", Some("COMP-1"));
        i.parameters.push(("extra".into(), Value::str("1")));
        i.state = Some(InstanceState::Destroyed);
        engine::request(db, &cfg, &i)
    })
    .await
    .unwrap();
    let waiting = run(store, |db| {
        engine::destroyed_partition(db, "COMP-1", "slappart0")
    })
    .await
    .unwrap();
    assert_eq!(
        waiting,
        DestroyOutcome::WaitingForChildren(vec!["child".into()]),
        "{name}"
    );
    assert_eq!(
        run(store, |db| engine::destroyed_partition(
            db,
            "COMP-1",
            "slappart1"
        ))
        .await
        .unwrap(),
        DestroyOutcome::Freed
    );
    assert_eq!(
        run(store, |db| engine::destroyed_partition(
            db,
            "COMP-1",
            "slappart0"
        ))
        .await
        .unwrap(),
        DestroyOutcome::Freed
    );
    let (free, total) = store
        .read(|db| {
            let c = q::computer_by_reference(db, "COMP-1")?.unwrap();
            Ok::<_, MasterError>(q::partition_counts(db, c.id)?)
        })
        .await
        .unwrap();
    assert_eq!((free, total), (3, 3), "{name}: every partition free again");

    // Bad input is refused and changes nothing.
    let bad = run(store, |db| {
        engine::supply(
            db,
            q::Scope::All,
            "COMP-1",
            "file:///srv/../etc/passwd",
            SoftwareState::Available,
        )
    })
    .await;
    assert!(
        matches!(bad, Err(MasterError::BadRequest(_))),
        "{name}: {bad:?}"
    );
    let unknown = run(store, |db| {
        engine::report_partition(db, "COMP-9", "slappart0", engine::PartitionReport::Started)
    })
    .await;
    assert!(
        matches!(unknown, Err(MasterError::NotFound(_))),
        "{name}: {unknown:?}"
    );
    let refused = run(store, |db| {
        engine::destroyed_partition(db, "COMP-2", "slappart0")
    })
    .await;
    assert!(
        matches!(refused, Err(MasterError::Conflict(_))),
        "{name}: freeing a started instance is refused: {refused:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn engine_story_on_every_backend() {
    for (name, db) in backends() {
        story(name, &db.store).await;
    }
}

/// 8 concurrent clients, 200 requests, 200 partitions: all distinct.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_requests_get_distinct_partitions() {
    for (name, db) in backends() {
        let store = db.store.clone();
        store
            .write(|db| engine::load_computer_configuration(db, &computer("COMP-C", 200)))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for client in 0..8 {
            let store = store.clone();
            tasks.push(tokio::spawn(async move {
                let mut got = Vec::new();
                for n in 0..25 {
                    let cfg = EngineConfig::default();
                    let title = format!("c{client}-{n}");
                    let outcome = store
                        .write(move |db| engine::request(db, &cfg, &input(&title, Some("COMP-C"))))
                        .await
                        .unwrap();
                    got.push(outcome.partition.id);
                }
                got
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap());
        }
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(all.len(), 200, "{name}");
        assert_eq!(
            distinct.len(),
            200,
            "{name}: a partition was handed out twice"
        );
    }
}

/// What a committed write acknowledged is there after a restart.
#[tokio::test]
async fn acknowledged_writes_survive_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.db").to_string_lossy().into_owned();
    {
        let store = Store::open(&path, &StoreOptions::default()).unwrap();
        store
            .write(|db| engine::load_computer_configuration(db, &computer("COMP-R", 2)))
            .await
            .unwrap();
        let cfg = EngineConfig::default();
        store
            .write(move |db| engine::request(db, &cfg, &input("kept", Some("COMP-R"))))
            .await
            .unwrap();
    }
    let store = Store::open(&path, &StoreOptions::default()).unwrap();
    let kept = store
        .read(|db| Ok::<_, MasterError>(q::instance_by_title(db, 0, false, None, "kept")?))
        .await
        .unwrap();
    assert!(kept.is_some());
}

/// Usage reports: recorded once per (computer, report, partition), attributed
/// to the instance the node names even after the partition changed hands,
/// refused whole when malformed.
async fn usage_story(name: &str, store: &Store) {
    use slapos_proto::usage::{InstanceRef, UsageEntry, UsageReport};
    use slapos_store::usage::{usage_records, UsageFilter};
    let config = EngineConfig::default();
    run(store, |db| {
        engine::load_computer_configuration(db, &computer("COMP-U", 1))
    })
    .await
    .unwrap();
    let c = config.clone();
    let a = run(store, move |db| engine::request(db, &c, &input("a", None)))
        .await
        .unwrap();
    let entry = |title: &str| UsageEntry {
        partition: "slappart0".into(),
        report_id: None,
        instance: Some(InstanceRef {
            guid: None,
            title: Some(title.into()),
            root_title: Some(title.into()),
        }),
        period_start: 1_000_000,
        period_end: 61_000_000,
        cpu_micros: 1_500_000,
        memory_byte_seconds: 60 << 20,
        disk_byte_seconds: 60 << 30,
        running_seconds: 60,
    };
    let report = UsageReport {
        report_id: Some("r1".into()),
        records: vec![entry("a")],
    };
    let r = report.clone();
    let first = run(store, move |db| engine::report_usage(db, "COMP-U", &r))
        .await
        .unwrap();
    assert_eq!((first.recorded, first.already_recorded), (1, 0), "{name}");
    // The same report again, as TioXML through useComputer: nothing new.
    let xml = report.to_tioxml();
    let again = run(store, move |db| engine::use_computer(db, "COMP-U", &xml))
        .await
        .unwrap();
    assert_eq!((again.recorded, again.already_recorded), (0, 1), "{name}");

    // a is destroyed, b takes the partition; a late report naming a goes to a.
    let c = config.clone();
    let mut destroy = input("a", None);
    destroy.state = Some(InstanceState::Destroyed);
    run(store, move |db| engine::request(db, &c, &destroy))
        .await
        .unwrap();
    run(store, |db| {
        engine::destroyed_partition(db, "COMP-U", "slappart0")
    })
    .await
    .unwrap();
    let c = config.clone();
    let b = run(store, move |db| engine::request(db, &c, &input("b", None)))
        .await
        .unwrap();
    assert_eq!(b.partition.reference, "slappart0", "{name}");
    let late = UsageReport {
        report_id: Some("r2".into()),
        records: vec![entry("a"), {
            let mut e = entry("b");
            e.report_id = Some("r3".into());
            e
        }],
    };
    run(store, move |db| engine::report_usage(db, "COMP-U", &late))
        .await
        .unwrap();
    // Malformed: refused whole, nothing recorded.
    let bad = run(store, |db| {
        engine::use_computer(db, "COMP-U", "<journal><transaction>")
    })
    .await;
    assert!(
        matches!(bad, Err(MasterError::BadRequest(_))),
        "{name}: {bad:?}"
    );
    let unknown = UsageReport {
        report_id: Some("r4".into()),
        records: vec![entry("b"), {
            let mut e = entry("b");
            e.partition = "slappart9".into();
            e
        }],
    };
    let refused = run(store, move |db| {
        engine::report_usage(db, "COMP-U", &unknown)
    })
    .await;
    assert!(
        matches!(refused, Err(MasterError::NotFound(_))),
        "{name}: {refused:?}"
    );

    let records = store
        .read(|db| Ok::<_, MasterError>(usage_records(db, q::Scope::All, &UsageFilter::default())?))
        .await
        .unwrap();
    let got: Vec<(&str, Option<i64>, i64)> = records
        .iter()
        .map(|r| (r.report_id.as_str(), r.instance_id, r.cpu_micros))
        .collect();
    assert_eq!(
        got,
        vec![
            ("r1", Some(a.instance.id), 1_500_000),
            ("r2", Some(a.instance.id), 1_500_000),
            ("r3", Some(b.instance.id), 1_500_000),
        ],
        "{name}"
    );
    assert_eq!(records[0].software_release.as_deref(), Some(SR), "{name}");
    assert_eq!(records[0].tree_id, Some(a.instance.id), "{name}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn usage_reports_on_every_backend() {
    for (name, db) in backends() {
        usage_story(name, &db.store).await;
    }
}
