//! End to end: the catalog's MariaDB and WordPress releases (Debian packages
//! unpacked into the release), deployed by a real proxy and node, checked
//! with the real `mariadb` client and WordPress's own install page.

mod common;

use std::time::{Duration, Instant};

use common::cluster::*;
use common::e2e::*;
use serde_json::Value;

const INSTALL: Duration = Duration::from_secs(150);
const CONVERGE: Duration = Duration::from_secs(40);

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
    let cluster = Cluster::start("COMP-MARIADB", "clmdb", 2, &[&url]);

    cluster.request(&["db1", &url, "--parameters", "database=shop", "user=alice"]);
    let info = cluster.published("db1", &["url", "host", "port", "password"], INSTALL);
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

    // Stop: no process, port closed; start: the row survived, same credentials.
    let addr = format!("{host}:{port}");
    let params = ["--parameters", "database=shop", "user=alice"];
    cluster.stop("db1", &url, &params, &pdir, &addr);
    cluster.start_again("db1", &url, &params);
    let again = cluster.published("db1", &["url"], CONVERGE);
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
    cluster.destroy("db1", &url, &[], &pdir, &addr);
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
    let cluster = Cluster::start("COMP-WORDPRESS", "clwp", 3, &[&url, &child_release]);

    // Refused by the master, naming the parameter.
    let bad = cluster.cli(&["request", "blog", &url, "--parameters", "php-workers=0"]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("php-workers"), "{}", text(&bad));

    cluster.request(&["blog", &url]);
    let info = cluster.published("blog", &["url", "install-url", "database"], INSTALL);
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
    // The node starts the child before its parent, so the parent's
    // install-page promise finds the database up: one pass, seconds (it was
    // ~23 s, the promise timeout and a second pass, parent first).
    cluster.request(&["blog", &url, "--state", "started"]);
    let restart = Instant::now();
    let (status, page) = wait_for(
        "the tree to be started and the install page served again",
        CONVERGE,
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

    // Destroying the parent destroys the child: nothing of either is left.
    let db_addr = format!("{}:{}", conn(&db, "host"), conn(&db, "port"));
    let doomed = Doomed::new(
        &[parent_dir, child_dir],
        &[authority(&site).as_str(), db_addr.as_str()],
    );
    cluster.request(&["blog", &url, "--state", "destroyed"]);
    doomed.assert_gone(&cluster.cfg, &cluster.computer, || cluster.logs());
    assert!(http_get(&site).is_err(), "nothing serves {site} any more");
    cluster.shutdown_and_check();
    eprintln!(
        "wordpress_tree_install_page_then_destroy: {:?}",
        t0.elapsed()
    );
}
