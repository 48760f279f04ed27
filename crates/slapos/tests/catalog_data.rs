//! End-to-end tests of the catalog's data releases (PostgreSQL, ZEO, the
//! persistent memcached-protocol store), each through a proxy, `slapos node
//! format` (partition users created: the node is root) and `slapos node
//! run`, talked to with the real client of each.

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::e2e::*;

const INSTALL: Duration = Duration::from_secs(150);
const CONVERGE: Duration = Duration::from_secs(40);

// ----- PostgreSQL ---------------------------------------------------------------------

fn psql(url: &str, sql: &str) -> Result<String, String> {
    run_client(
        Command::new("psql")
            .args([url, "-X", "-At", "-v", "ON_ERROR_STOP=1", "-c", sql])
            .env_remove("PGPASSWORD")
            .env_remove("PGHOST")
            .env_remove("PGPORT"),
    )
}

#[test]
fn postgresql_psql_data_survives_stop_start_then_destroy() {
    let t0 = Instant::now();
    let url = catalog_url("postgresql");
    let cluster = Cluster::start("COMP-PG", "cdpg", 1, &[&url]);

    // A parameter the schema refuses is refused at request time, named.
    let bad = cluster.cli(&["request", "pg1", &url, "--parameters", "database=Bad-Name"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        text(&bad).contains("database"),
        "names the parameter: {}",
        text(&bad)
    );

    let params = ["--parameters", "database=shop", "user=owner"];
    cluster.request(&[&["pg1", url.as_str()][..], &params].concat());
    let info = cluster.published("pg1", &["url", "password"], INSTALL);
    let pg_url = conn(&info, "url");
    let (host, port, password) = (
        conn(&info, "host"),
        conn(&info, "port"),
        conn(&info, "password"),
    );
    assert_eq!(
        pg_url,
        format!("postgresql://owner:{password}@{host}:{port}/shop")
    );
    assert!(password.len() >= 20, "generated password: {password}");
    let addr = format!("{host}:{port}");
    let pdir = cluster.partition_dir(&info);
    assert_not_root(&pdir);
    eprintln!("postgresql published after {:?}", t0.elapsed());

    // A wrong password is refused: the credentials are real.
    let wrong = pg_url.replace(&password, "wrong");
    assert!(
        psql(&wrong, "SELECT 1").is_err(),
        "a wrong password is refused"
    );

    psql(
        &pg_url,
        "CREATE TABLE t (k text PRIMARY KEY, v int); INSERT INTO t VALUES ('a', 42)",
    )
    .unwrap();
    assert_eq!(
        psql(&pg_url, "SELECT v FROM t WHERE k = 'a'")
            .unwrap()
            .trim(),
        "42"
    );
    assert!(pdir.join("srv/postgresql/PG_VERSION").exists());

    cluster.stop("pg1", &url, &params, &pdir, &addr);
    cluster.start_again("pg1", &url, &params);
    let got = wait_for(
        "postgresql back with the row",
        CONVERGE,
        || psql(&pg_url, "SELECT v FROM t WHERE k = 'a'").ok(),
        || cluster.logs(),
    );
    assert_eq!(got.trim(), "42", "the row survives stop/start");
    let log = std::fs::read_to_string(pdir.join("var/log/postgresql.log")).unwrap_or_default();
    assert_eq!(
        log.matches("syncing data to disk").count(),
        1,
        "initdb ran once: {log}"
    );

    cluster.destroy("pg1", &url, &params, &pdir, &addr);
    cluster.shutdown_and_check();
    eprintln!("postgresql: {:?}", t0.elapsed());
}

// ----- ZEO -------------------------------------------------------------------------------

fn zodb_client(
    lib: &Path,
    host: &str,
    port: &str,
    storage: &str,
    script: &str,
) -> Result<String, String> {
    let prelude = format!(
        "import ZEO.ClientStorage, ZODB, transaction\n\
         st = ZEO.ClientStorage.ClientStorage(('{host}', {port}), storage='{storage}', wait_timeout=10)\n\
         db = ZODB.DB(st); c = db.open(); root = c.root()\n"
    );
    let code = format!("{prelude}{script}\nc.close(); db.close()\n");
    run_client(
        Command::new("/usr/bin/python3")
            .args(["-c", &code])
            .env("PYTHONPATH", lib)
            .env("PYTHONDONTWRITEBYTECODE", "1"),
    )
}

#[test]
fn zeo_zodb_object_survives_stop_start_then_destroy() {
    let t0 = Instant::now();
    let url = catalog_url("zeo");
    let cluster = Cluster::start("COMP-ZEO", "cdzeo", 1, &[&url]);

    let bad = cluster.cli(&[
        "request",
        "z1",
        &url,
        "--parameters",
        "invalidation-queue-size=1",
    ]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(
        text(&bad).contains("invalidation-queue-size"),
        "{}",
        text(&bad)
    );

    let params = ["--parameters", "storage=main"];
    cluster.request(&[&["z1", url.as_str()][..], &params].concat());
    let info = cluster.published("z1", &["url", "host", "port"], INSTALL);
    let (host, port) = (conn(&info, "host"), conn(&info, "port"));
    assert_eq!(
        conn(&info, "url"),
        format!("zeo://{host}:{port}?storage=main")
    );
    let addr = format!("{host}:{port}");
    let pdir = cluster.partition_dir(&info);
    assert_not_root(&pdir);
    eprintln!("zeo published after {:?}", t0.elapsed());
    // The client is the release's own ZODB/ZEO.
    let lib = cluster
        .dir
        .path()
        .join("software")
        .join(md5_hex(&url))
        .join("lib");

    zodb_client(
        &lib,
        &host,
        &port,
        "main",
        "from persistent.mapping import PersistentMapping\n\
         root['doc'] = PersistentMapping(title='kept', n=7)\ntransaction.commit()",
    )
    .unwrap();
    assert!(pdir.join("srv/zeo/Data.fs").exists());

    cluster.stop("z1", &url, &params, &pdir, &addr);
    cluster.start_again("z1", &url, &params);
    wait_for(
        "zeo back",
        CONVERGE,
        || port_open(&addr).then_some(()),
        || cluster.logs(),
    );
    let out = zodb_client(
        &lib,
        &host,
        &port,
        "main",
        "print(root['doc']['title'], root['doc']['n'])",
    )
    .unwrap();
    assert_eq!(out.trim(), "kept 7", "the object survives stop/start");

    cluster.destroy("z1", &url, &params, &pdir, &addr);
    cluster.shutdown_and_check();
    eprintln!("zeo: {:?}", t0.elapsed());
}

// ----- persistent memcached-protocol store -------------------------------------------------

#[test]
fn kvstore_value_survives_stop_start_then_destroy() {
    let t0 = Instant::now();
    let url = catalog_url("kvstore");
    let cluster = Cluster::start("COMP-KV", "cdkv", 1, &[&url]);

    let bad = cluster.cli(&["request", "kv1", &url, "--parameters", "memory=8"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("memory"), "{}", text(&bad));

    cluster.request(&["kv1", &url]);
    let info = cluster.published("kv1", &["host", "port", "url"], INSTALL);
    let addr = format!("{}:{}", conn(&info, "host"), conn(&info, "port"));
    assert_eq!(conn(&info, "url"), format!("memcached://{addr}"));
    let pdir = cluster.partition_dir(&info);
    assert_not_root(&pdir);
    eprintln!("kvstore published after {:?}", t0.elapsed());

    assert_eq!(
        memcached_exchange(&addr, "set durable 5 0 4\r\nkept\r\n").unwrap(),
        "STORED\r\n"
    );
    assert_eq!(
        memcached_exchange(&addr, "get durable\r\n").unwrap(),
        "VALUE durable 5 4\r\nkept\r\nEND\r\n"
    );

    cluster.stop("kv1", &url, &[], &pdir, &addr);
    assert!(
        pdir.join("srv/kvstore/memory_file.meta").exists(),
        "saved on stop"
    );
    cluster.start_again("kv1", &url, &[]);
    let got = wait_for(
        "kvstore back",
        CONVERGE,
        || memcached_exchange(&addr, "get durable\r\n").ok(),
        || cluster.logs(),
    );
    assert_eq!(
        got,
        "VALUE durable 5 4\r\nkept\r\nEND\r\n",
        "the value survives stop/start; log:\n{}",
        std::fs::read_to_string(pdir.join("var/log/kvstore.log")).unwrap_or_default()
    );

    cluster.destroy("kv1", &url, &[], &pdir, &addr);
    cluster.shutdown_and_check();
    eprintln!("kvstore: {:?}", t0.elapsed());
}
