//! End to end: the catalog's MariaDB and WordPress releases (Debian packages
//! unpacked into the release), deployed by a real proxy and node, checked
//! with the real `mariadb` client and WordPress's own install page.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::Output;
use std::time::{Duration, Instant};

use common::e2e::*;
use serde_json::Value;

const INSTALL: Duration = Duration::from_secs(150);
const CONVERGE: Duration = Duration::from_secs(40);

/// `slapos proxy start` + `slapos node format` + `slapos node run`, each its
/// own process, with their own port range (as node_e2e.rs's `Cluster`).
struct Cluster {
    node: Option<Daemon>,
    master: Option<Daemon>,
    cfg: PathBuf,
    computer: String,
    partitions: usize,
    dir: tempfile::TempDir,
}

impl Cluster {
    fn start(computer: &str, partitions: usize, releases: &[&str]) -> Cluster {
        let dir = tempfile::Builder::new()
            .prefix("slapos-lamp-")
            .tempdir()
            .expect("temp dir");
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let cfg = dir.path().join("slapos.cfg");
        let port = common::free_port();
        NodeCfg {
            host: "127.0.0.1",
            port,
            database: &dir.path().join("proxy.db"),
            computer_id: computer,
            instance_root: &dir.path().join("instance"),
            software_root: &dir.path().join("software"),
            partitions,
            port_base: free_port_range(10 * partitions as u16),
        }
        .write(&cfg);
        let cfg_text = cfg.to_string_lossy().into_owned();
        let master = Daemon::spawn(
            "proxy",
            &common::binary(),
            &["proxy", "start", "--cfg", &cfg_text],
            dir.path(),
            dir.path(),
        );
        let addr = format!("127.0.0.1:{port}");
        wait_for(
            "the proxy to listen",
            Duration::from_secs(20),
            || port_open(&addr).then_some(()),
            || master.tail(30),
        );
        let mut cluster = Cluster {
            node: None,
            master: Some(master),
            cfg,
            computer: computer.to_string(),
            partitions,
            dir,
        };
        let out = cluster.cli(&["node", "format"]);
        assert!(out.status.success(), "node format: {}", text(&out));
        for url in releases {
            let out = cluster.cli(&["supply", url, computer]);
            assert!(out.status.success(), "supply: {}", text(&out));
        }
        cluster.node = Some(Daemon::spawn(
            "node",
            &common::binary(),
            &["node", "run", "--cfg", &cfg_text],
            cluster.dir.path(),
            cluster.dir.path(),
        ));
        cluster
    }

    fn cli(&self, args: &[&str]) -> Output {
        let mut all = args.to_vec();
        let cfg = self.cfg.to_string_lossy();
        all.extend(["--cfg", &cfg]);
        slapos_cli(&all)
    }

    /// A request the master accepts (0: answered, 2: being provisioned).
    fn request(&self, args: &[&str]) {
        let mut all = vec!["request"];
        all.extend_from_slice(args);
        let out = self.cli(&all);
        assert!(
            matches!(out.status.code(), Some(0) | Some(2)),
            "slapos {all:?} failed:\n{}",
            text(&out)
        );
    }

    fn info(&self, title: &str) -> Result<Value, String> {
        slapos_json(&self.cfg, &["service", "info", title, "--json"])
    }

    /// An instance by id, from the master's REST API (child instances have
    /// no `service info` of their own: it looks up the user's titles).
    fn instance(&self, id: &Value) -> Option<Value> {
        let text = std::fs::read_to_string(&self.cfg).ok()?;
        let master = text.lines().find_map(|l| l.strip_prefix("master_url = "))?;
        let (status, body) = http_get(&format!("{master}/api/v1/instances/{id}")).ok()?;
        (status == 200).then(|| serde_json::from_str(&body).ok())?
    }

    fn computer(&self) -> Value {
        slapos_json(&self.cfg, &["computer", "info", &self.computer, "--json"])
            .unwrap_or_else(|e| panic!("computer info: {e}"))
    }

    fn partition_dir(&self, info: &Value) -> PathBuf {
        let reference = info["partition"].as_str().expect("a partition");
        self.dir.path().join("instance").join(reference)
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for d in [&self.master, &self.node].into_iter().flatten() {
            out.push_str(&d.tail(40));
        }
        out
    }

    /// Waits until `title` is started and publishes every one of `keys`;
    /// fails at once if it is reported in error.
    fn wait_published(&self, title: &str, keys: &[&str], timeout: Duration) -> Value {
        wait_for(
            &format!("{title} to be started and publish {keys:?}"),
            timeout,
            || {
                let info = self.info(title).ok()?;
                if info["reported_state"] == "error" {
                    panic!(
                        "{title} is reported in error: {}\n{info:#}\n{}",
                        info["status_message"],
                        self.logs()
                    );
                }
                let published = keys.iter().all(|k| {
                    info["connection_parameters"][*k]
                        .as_str()
                        .is_some_and(|v| !v.is_empty())
                });
                (published && info["reported_state"] == "started").then_some(info)
            },
            || {
                format!(
                    "{:#}\n{}",
                    self.info(title).unwrap_or_default(),
                    self.logs()
                )
            },
        )
    }

    /// Waits until every partition is free, and `dirs` empty with nothing running.
    fn wait_all_free(&self, dirs: &[PathBuf]) {
        wait_for(
            "every partition to be freed and emptied",
            CONVERGE,
            || {
                let free = self.computer()["computer"]["partitions_free"] == self.partitions;
                let clean = dirs.iter().all(|d| {
                    processes_under(d).is_empty()
                        && std::fs::read_dir(d)
                            .map(|mut e| e.next().is_none())
                            .unwrap_or(true)
                });
                (free && clean).then_some(())
            },
            || {
                let left: Vec<_> = dirs
                    .iter()
                    .map(|d| (d.clone(), processes_under(d)))
                    .collect();
                format!("{:#}\n{left:#?}\n{}", self.computer(), self.logs())
            },
        );
    }

    fn shutdown_and_check(mut self) {
        for mut d in [self.node.take(), self.master.take()].into_iter().flatten() {
            let (_, in_time) = d.stop(Duration::from_secs(15));
            assert!(
                in_time,
                "{} did not stop on SIGTERM\n{}",
                d.name,
                d.tail(30)
            );
        }
        kill_processes_under(&[self.dir.path().to_path_buf()]);
        let left = poll_until(Duration::from_secs(5), || {
            processes_under(self.dir.path()).is_empty().then_some(())
        });
        assert!(
            left.is_some(),
            "processes survive: {:#?}",
            processes_under(self.dir.path())
        );
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        drop(self.node.take());
        drop(self.master.take());
        kill_processes_under(&[self.dir.path().to_path_buf()]);
    }
}

/// `POST` of an `application/x-www-form-urlencoded` body (already encoded)
/// over HTTP/1.0: (status, body). WordPress's installation takes seconds.
fn http_post_form(url: &str, form: &str) -> Result<(u16, String), String> {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").ok_or("not an http URL")?;
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let mut stream = std::net::TcpStream::connect(authority).map_err(|e| format!("{url}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .map_err(|e| e.to_string())?;
    write!(
        stream,
        "POST {path} HTTP/1.0\r\nHost: {authority}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\n\
         Content-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("{url}: {e}"))?;
    let status = response
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {response:?}"))?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    Ok((status, body))
}

fn conn(info: &Value, key: &str) -> String {
    info["connection_parameters"][key]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

/// The host's MariaDB client (`mariadb`, else `mysql`).
fn mysql_client() -> &'static str {
    if run("mariadb", &["--version"]).is_ok() {
        "mariadb"
    } else {
        "mysql"
    }
}

/// Runs `sql` with the host's client over TCP with the published credentials.
fn sql(info: &Value, statement: &str) -> Result<String, String> {
    let password = format!("--password={}", conn(info, "password"));
    let port = conn(info, "port");
    run(
        mysql_client(),
        &[
            "--no-defaults",
            "--protocol=TCP",
            "-h",
            &conn(info, "host"),
            "-P",
            &port,
            "-u",
            &conn(info, "user"),
            &password,
            "--batch",
            "--skip-column-names",
            "-e",
            statement,
            &conn(info, "database"),
        ],
    )
}

/// request → the client connects with the published URL's credentials, writes
/// a row → stop → start → the row is still there → bad parameter refused →
/// destroy → partition freed, no process left.
#[test]
fn mariadb_request_query_stop_start_destroy() {
    let t0 = Instant::now();
    let url = catalog_url("mariadb");
    let cluster = Cluster::start("COMP-MARIADB", 2, &[&url]);

    cluster.request(&["db1", &url, "--parameters", "database=shop", "user=alice"]);
    let info = cluster.wait_published("db1", &["url", "host", "port", "password"], INSTALL);
    let (host, port, password) = (
        conn(&info, "host"),
        conn(&info, "port"),
        conn(&info, "password"),
    );
    assert_eq!(password.len(), 24, "{info:#}");
    assert_eq!(
        conn(&info, "url"),
        format!("mysql://alice:{password}@{host}:{port}/shop")
    );
    assert_eq!(
        (
            conn(&info, "user").as_str(),
            conn(&info, "database").as_str()
        ),
        ("alice", "shop")
    );
    assert_ne!(
        port, "3306",
        "the partition's own port, not the host's server"
    );
    eprintln!("mariadb published after {:?}", t0.elapsed());

    sql(
        &info,
        "CREATE TABLE t (id INT PRIMARY KEY, v VARCHAR(20)); INSERT INTO t VALUES (1, 'kept');",
    )
    .unwrap_or_else(|e| panic!("create/insert: {e}\n{}", cluster.logs()));
    assert_eq!(
        sql(&info, "SELECT v FROM t WHERE id = 1").unwrap().trim(),
        "kept"
    );
    // A wrong password is refused.
    let mut wrong = info.clone();
    wrong["connection_parameters"]["password"] = "not-the-password".into();
    assert!(
        sql(&wrong, "SELECT 1").is_err(),
        "a wrong password is refused"
    );

    let pdir = cluster.partition_dir(&info);
    assert!(
        !processes_in(&pdir).is_empty(),
        "mariadbd runs in its partition"
    );
    assert!(pdir.join("srv/mariadb/.slapos-initialised").exists());
    assert!(
        pdir.join("var/run/mariadb.sock").exists(),
        "socket in the partition"
    );

    // Stop: no process, port closed.
    let addr = format!("{host}:{port}");
    cluster.request(&[
        "db1",
        &url,
        "--parameters",
        "database=shop",
        "user=alice",
        "--state",
        "stopped",
    ]);
    wait_for(
        "mariadb to stop",
        CONVERGE,
        || {
            let info = cluster.info("db1").ok()?;
            (processes_under(&pdir).is_empty()
                && !port_open(&addr)
                && info["reported_state"] == "stopped")
                .then_some(())
        },
        || format!("{:#?}\n{}", processes_under(&pdir), cluster.logs()),
    );
    // Start: the row survived, same credentials.
    cluster.request(&[
        "db1",
        &url,
        "--parameters",
        "database=shop",
        "user=alice",
        "--state",
        "started",
    ]);
    let again = cluster.wait_published("db1", &["url"], CONVERGE);
    assert_eq!(conn(&again, "url"), conn(&info, "url"));
    let row = wait_for(
        "the row after a restart",
        CONVERGE,
        || sql(&again, "SELECT v FROM t WHERE id = 1").ok(),
        || cluster.logs(),
    );
    assert_eq!(row.trim(), "kept");

    // A parameter the schema refuses: the master says which one.
    let bad = cluster.cli(&[
        "request",
        "db1",
        &url,
        "--parameters",
        "max-connections=lots",
    ]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("max-connections"), "{}", text(&bad));
    let bad = cluster.cli(&["request", "db2", &url, "--parameters", "user=bob;drop"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("user"), "{}", text(&bad));

    // Destroy: partition freed and emptied, nothing left running.
    cluster.request(&["db1", &url, "--state", "destroyed"]);
    cluster.wait_all_free(std::slice::from_ref(&pdir));
    assert!(!port_open(&addr), "nothing listens on {addr} any more");
    cluster.shutdown_and_check();
    eprintln!(
        "mariadb_request_query_stop_start_destroy: {:?}",
        t0.elapsed()
    );
}

/// request wordpress → its MariaDB child deploys, then WordPress (nginx +
/// PHP-FPM) → the install page is served with the database reachable →
/// the installation is completed (tables in the child's database) → stop →
/// start → still installed → destroying the parent destroys the child → every partition freed.
#[test]
fn wordpress_tree_install_page_then_destroy() {
    let t0 = Instant::now();
    let url = catalog_url("wordpress");
    // The child's release: ../mariadb/software.toml relative to wordpress's.
    let child_release = catalog_url("mariadb");
    let cluster = Cluster::start("COMP-WORDPRESS", 3, &[&url, &child_release]);

    // Refused by the master, naming the parameter.
    let bad = cluster.cli(&["request", "blog", &url, "--parameters", "php-workers=0"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("php-workers"), "{}", text(&bad));

    cluster.request(&["blog", &url]);
    let info = cluster.wait_published("blog", &["url", "install-url", "database"], INSTALL);
    eprintln!("wordpress published after {:?}", t0.elapsed());
    let children = info["children"].as_array().cloned().unwrap_or_default();
    assert_eq!(children.len(), 1, "{info:#}");
    assert_eq!(children[0]["title"], "mariadb");
    let db = wait_for(
        "the MariaDB child's connection parameters",
        CONVERGE,
        || {
            cluster
                .instance(&children[0]["id"])
                .filter(|i| !conn(i, "url").is_empty())
        },
        || cluster.logs(),
    );
    assert!(conn(&db, "url").starts_with("mysql://wordpress:"), "{db:#}");
    assert_eq!(
        conn(&info, "database"),
        format!("{}:{}/wordpress", conn(&db, "host"), conn(&db, "port"))
    );

    let site = conn(&info, "url");
    let (status, page) = http_get(&format!("{site}wp-admin/install.php"))
        .unwrap_or_else(|e| panic!("GET install.php: {e}\n{}", cluster.logs()));
    assert_eq!(status, 200, "{page}");
    assert!(page.contains("WordPress"), "{page}");
    // The language form (or the install form) is shown only when WordPress
    // reached its database.
    assert!(
        page.contains("id=\"language\"") || page.contains("name=\"weblog_title\""),
        "no installation form: {page}"
    );
    assert!(
        !page.contains("Error establishing a database connection"),
        "{page}"
    );
    // Finishing the installation writes WordPress's tables into the child's
    // database (read back with the host's client and the child's credentials).
    let (status, done) = http_post_form(
        &format!("{site}wp-admin/install.php?step=2"),
        "weblog_title=SlapOS+LAMP+test&user_name=admin&admin_password=Correct-Horse-42\
         &admin_password2=Correct-Horse-42&pw_weak=1&admin_email=admin%40example.org\
         &blog_public=0&language=",
    )
    .unwrap_or_else(|e| panic!("POST install.php?step=2: {e}\n{}", cluster.logs()));
    assert_eq!(status, 200, "{done}");
    assert!(done.contains("Success!"), "{done}");
    let blogname = sql(
        &db,
        "SELECT option_value FROM wp_options WHERE option_name = 'blogname'",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(blogname.trim(), "SlapOS LAMP test");
    let (status, _) = http_get(&format!("{site}wp-login.php")).unwrap();
    assert_eq!(status, 200);

    let parent_dir = cluster.partition_dir(&info);
    let child_dir = cluster.partition_dir(&db);
    assert!(!processes_in(&parent_dir).is_empty() && !processes_under(&child_dir).is_empty());

    // Stopping the parent stops the child; starting it brings both back.
    cluster.request(&["blog", &url, "--state", "stopped"]);
    wait_for(
        "the tree to stop",
        CONVERGE,
        || {
            (processes_under(&parent_dir).is_empty() && processes_under(&child_dir).is_empty())
                .then_some(())
        },
        || cluster.logs(),
    );
    // The node processes the parent before its child, so the parent's
    // install-page promise may fail (database still stopped) and the parent
    // be reported in error until the node's next pass: wait for both.
    cluster.request(&["blog", &url, "--state", "started"]);
    let restart = Instant::now();
    let (status, page) = wait_for(
        "the tree to be started and the install page served again",
        Duration::from_secs(90),
        || {
            let page = http_get(&format!("{site}wp-admin/install.php"))
                .ok()
                .filter(|(s, _)| *s == 200)?;
            (cluster.info("blog").ok()?["reported_state"] == "started").then_some(page)
        },
        || {
            format!(
                "{:#}\n{}",
                cluster.info("blog").unwrap_or_default(),
                cluster.logs()
            )
        },
    );
    eprintln!(
        "wordpress tree served again {:?} after start",
        restart.elapsed()
    );
    assert_eq!(status, 200);
    assert!(
        page.contains("Already Installed"),
        "the installation survived: {page}"
    );

    // Destroying the parent destroys the child.
    cluster.request(&["blog", &url, "--state", "destroyed"]);
    cluster.wait_all_free(&[parent_dir, child_dir]);
    assert!(http_get(&site).is_err(), "nothing serves {site} any more");
    cluster.shutdown_and_check();
    eprintln!(
        "wordpress_tree_install_page_then_destroy: {:?}",
        t0.elapsed()
    );
}
