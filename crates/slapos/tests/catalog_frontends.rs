//! End to end: the catalog's front ends (`frontend` with shared sites,
//! `haproxy`, `varnish`, `stunnel`), installed from Debian packages by a
//! real node behind a real proxy, in front of the catalog's `hello`
//! backends, and talked to with real clients (raw HTTP, `openssl s_client`).
//!
//! One cluster for the four releases, so that they install in parallel.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::cluster::*;
use common::e2e::*;

const INSTALL: Duration = Duration::from_secs(150);
const CONVERGE: Duration = Duration::from_secs(40);

// ----- clients ---------------------------------------------------------------------------

/// GET over HTTP/1.0 with an explicit Host header: (status, headers, body).
fn http_get_full(url: &str, host: Option<&str>) -> Result<(u16, String, String), String> {
    let addr = authority(url);
    let path = url
        .strip_prefix("http://")
        .and_then(|r| r.find('/').map(|i| r[i..].to_string()))
        .unwrap_or_else(|| "/".into());
    let mut stream = TcpStream::connect(&addr).map_err(|e| format!("{url}: {e}"))?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let host = host.unwrap_or(&addr);
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())
        .map_err(|e| e.to_string())?;
    let mut response = String::new();
    stream
        .read_to_string(&mut response)
        .map_err(|e| format!("{url}: {e}"))?;
    let (head, body) = response
        .split_once("\r\n\r\n")
        .ok_or_else(|| format!("no end of headers in {response:?}"))?;
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| format!("no HTTP status in {response:?}"))?;
    Ok((status, head.to_string(), body.to_string()))
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.trim().eq_ignore_ascii_case(name).then(|| v.trim())
    })
}

/// An HTTP/1.0 GET through TLS with the real `openssl s_client`.
fn tls_http_get(addr: &str) -> Result<String, String> {
    let mut child = Command::new("openssl")
        .args(["s_client", "-connect", addr, "-quiet", "-ign_eof"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("openssl: {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"GET / HTTP/1.0\r\nHost: x\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if child.try_wait().map_err(|e| e.to_string())?.is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().map_err(|e| e.to_string())?;
    if !out.status.success() {
        return Err(format!(
            "openssl s_client: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// `openssl x509 -subject` of a PEM file.
fn cert_subject(path: &Path) -> String {
    run(
        "openssl",
        &["x509", "-noout", "-subject", "-in", &path.to_string_lossy()],
    )
    .unwrap_or_else(|e| e)
}

/// Prints every partition's logs (`FRONTENDS_DUMP_LOGS=1`), to see what
/// the daemons say.
fn dump_partition_logs(root: &Path) {
    for part in std::fs::read_dir(root).into_iter().flatten().flatten() {
        let logs = part.path().join("var/log");
        for log in std::fs::read_dir(&logs).into_iter().flatten().flatten() {
            let text = std::fs::read_to_string(log.path()).unwrap_or_default();
            let lines: Vec<&str> = text.lines().collect();
            eprintln!(
                "--- {} ---\n{}",
                log.path().display(),
                lines[lines.len().saturating_sub(15)..].join("\n")
            );
        }
    }
}

fn elapsed(t: Instant) -> String {
    format!("{:.1}s", t.elapsed().as_secs_f64())
}

// ----- the test ----------------------------------------------------------------------------

/// hello backends b1, b2 → frontend with two shared sites (path routes and a
/// Host-based domain) → haproxy over both backends → varnish in front of b1
/// (second GET a hit) → stunnel wrapping b2 (openssl s_client) → bad
/// parameters refused at request time → everything destroyed: partitions
/// free, no process left.
#[test]
fn frontends_haproxy_varnish_stunnel() {
    let t0 = Instant::now();
    let hello = catalog_url("hello");
    let frontend = catalog_url("frontend");
    let haproxy = catalog_url("haproxy");
    let varnish = catalog_url("varnish");
    let stunnel = catalog_url("stunnel");
    let computer = "COMP-FRONT";
    let partitions = 8;
    let cluster = Cluster::start(
        computer,
        "cfront",
        partitions,
        &[&hello, &frontend, &haproxy, &varnish, &stunnel],
    );
    let _sweep = Sweep(vec![cluster.dir.path().to_path_buf()]);

    // Bad parameters are refused by the master at request time, naming the parameter.
    for (title, url, param) in [
        ("bad-lb", &haproxy, "backends=not a backend"),
        ("bad-cache", &varnish, "backend-url=ftp://x"),
        ("bad-tls", &stunnel, "backend=nohostport"),
    ] {
        let name = param.split('=').next().unwrap();
        let out = cluster.cli(&["request", title, url, "--parameters", param]);
        assert_eq!(out.status.code(), Some(1), "{}", text(&out));
        assert!(text(&out).contains(name), "{}", text(&out));
    }

    // Two backends.
    cluster.request(&["b1", &hello, "--parameters", "greeting=Backend one"]);
    cluster.request(&["b2", &hello, "--parameters", "greeting=Backend two"]);
    let b1_info = cluster.published("b1", &["url"], INSTALL);
    let b2_info = cluster.published("b2", &["url"], INSTALL);
    let (b1, b2) = (conn(&b1_info, "url"), conn(&b2_info, "url"));
    let page1 = "Backend one from b1\n".to_string();
    let page2 = "Backend two from b2\n".to_string();

    // Everything else at once: the releases install in parallel.
    cluster.request(&["front", &frontend]);
    cluster.request(&[
        "lb",
        &haproxy,
        "--parameters",
        &format!("backends={} {}", authority(&b1), authority(&b2)),
    ]);
    cluster.request(&[
        "cache",
        &varnish,
        "--parameters",
        &format!("backend-url={b1}"),
    ]);
    cluster.request(&[
        "tls",
        &stunnel,
        "--parameters",
        &format!("backend={}", authority(&b2)),
    ]);

    // --- frontend: two shared sites, each its own URL and route.
    let front = cluster.published("front", &["url"], INSTALL);
    let front_url = conn(&front, "url");
    eprintln!("[{}] frontend at {front_url}", elapsed(t0));
    let bad = cluster.cli(&[
        "request",
        "bad-site",
        &frontend,
        "--slave",
        "--parameters",
        "url=ftp://x",
    ]);
    assert_eq!(bad.status.code(), Some(1), "{}", text(&bad));
    assert!(text(&bad).contains("url"), "{}", text(&bad));
    cluster.request(&[
        "site-one",
        &frontend,
        "--slave",
        "--parameters",
        &format!("url={b1}"),
    ]);
    cluster.request(&[
        "site-two",
        &frontend,
        "--slave",
        "--parameters",
        &format!("url={b2}"),
        "custom_domain=two.example.test",
    ]);
    // A title that could inject nginx configuration is not routed: its
    // shared instance publishes why, and the other sites keep working.
    let odd = "odd site; return 500 {x}";
    cluster.request(&[
        odd,
        &frontend,
        "--slave",
        "--parameters",
        &format!("url={b1}"),
    ]);
    let s1 = conn(
        &cluster.published_shared("site-one", &["site_url"], CONVERGE),
        "site_url",
    );
    let odd_info = cluster.published_shared(odd, &["error"], CONVERGE);
    assert!(
        conn(&odd_info, "error").contains("not routed"),
        "{odd_info:#}"
    );
    assert_eq!(conn(&odd_info, "site_url"), "", "{odd_info:#}");
    let s2_info = cluster.published_shared("site-two", &["site_url", "domain_url"], CONVERGE);
    let s2 = conn(&s2_info, "site_url");
    assert_ne!(s1, s2, "each site has its own URL");
    assert!(
        s1.starts_with(&front_url) && s2.starts_with(&front_url),
        "{s1} {s2} {front_url}"
    );
    for (url, page) in [(&s1, &page1), (&s2, &page2)] {
        wait_for(
            &format!("{url} to serve its backend's page"),
            CONVERGE,
            || (http_get(url).ok()? == (200, page.clone())).then_some(()),
            || format!("{:?}\n{}", http_get(url), cluster.logs()),
        );
    }
    // The Host-based route of site-two, on the front end's port.
    assert_eq!(conn(&s2_info, "domain"), "two.example.test");
    let by_host = http_get_full(&front_url, Some("two.example.test")).map(|(s, _, b)| (s, b));
    assert_eq!(by_host, Ok((200, page2.clone())));
    // The front end's root is no site.
    assert_eq!(http_get(&front_url).map(|r| r.0), Ok(404));
    eprintln!("[{}] frontend: both sites served", elapsed(t0));

    // --- haproxy: requests spread over both backends.
    let lb = cluster.published("lb", &["url", "stats_url"], INSTALL);
    let lb_url = conn(&lb, "url");
    let seen = std::cell::RefCell::new(std::collections::BTreeSet::new());
    wait_for(
        "haproxy to reach both backends",
        CONVERGE,
        || {
            let mut seen = seen.borrow_mut();
            if let Ok((200, body)) = http_get(&lb_url) {
                seen.insert(body);
            }
            (seen.contains(&page1) && seen.contains(&page2)).then_some(())
        },
        || format!("seen {:?}\n{}", seen.borrow(), cluster.logs()),
    );
    let (status, stats) = http_get(&conn(&lb, "stats_url")).expect("haproxy stats");
    assert_eq!(status, 200);
    assert!(
        stats.contains("backend1") && stats.contains("backend2"),
        "{stats}"
    );
    eprintln!("[{}] haproxy: both backends seen", elapsed(t0));

    // A changed parameter rewrites the configuration and restarts HAProxy.
    cluster.request(&[
        "lb",
        &haproxy,
        "--parameters",
        &format!("backends={}", authority(&b2)),
    ]);
    wait_for(
        "haproxy to use only b2",
        CONVERGE,
        || {
            let info = cluster.info("lb").ok()?;
            (conn(&info, "backends") == authority(&b2)).then_some(())
        },
        || cluster.logs(),
    );
    wait_for(
        "haproxy to answer only with b2",
        CONVERGE,
        || {
            (0..4)
                .all(|_| http_get(&lb_url).ok() == Some((200, page2.clone())))
                .then_some(())
        },
        || cluster.logs(),
    );
    eprintln!("[{}] haproxy: reconfigured to one backend", elapsed(t0));

    // --- varnish: the backend's page, then a cache hit.
    let cache = cluster.published("cache", &["url"], INSTALL);
    let cache_url = conn(&cache, "url");
    let first = http_get_full(&cache_url, None).expect("GET through varnish");
    assert_eq!(
        (first.0, first.2.clone()),
        (200, page1.clone()),
        "{}",
        first.1
    );
    std::thread::sleep(Duration::from_millis(1100));
    let second = http_get_full(&cache_url, None).expect("second GET through varnish");
    assert_eq!((second.0, second.2.clone()), (200, page1.clone()));
    let xv = header(&second.1, "X-Varnish").unwrap_or_default();
    let age: u64 = header(&second.1, "Age")
        .and_then(|a| a.parse().ok())
        .unwrap_or(0);
    assert!(
        xv.split_whitespace().count() == 2 && age > 0,
        "second GET is a hit: X-Varnish {xv:?}, Age {age}\n{}",
        second.1
    );
    eprintln!("[{}] varnish: hit (X-Varnish {xv}, Age {age})", elapsed(t0));

    // --- stunnel: TLS to the published address reaches the wrapped backend.
    let tls = cluster.published("tls", &["host", "port", "certificate"], INSTALL);
    let tls_addr = format!("{}:{}", conn(&tls, "host"), conn(&tls, "port"));
    let answer = tls_http_get(&tls_addr).unwrap_or_else(|e| panic!("{e}\n{}", cluster.logs()));
    assert!(answer.starts_with("HTTP/1.0 200"), "{answer}");
    assert!(answer.ends_with(&page2), "{answer}");
    let cert = PathBuf::from(conn(&tls, "certificate"));
    assert!(
        cert.starts_with(cluster.instance_root()),
        "{}",
        cert.display()
    );
    assert!(
        cert_subject(&cert).contains(&conn(&tls, "host")),
        "{}",
        cert_subject(&cert)
    );
    let key = cert.with_file_name("key.pem");
    let mode = std::fs::metadata(&key)
        .expect("key in the partition")
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "key readable by others: {mode:o}");
    eprintln!("[{}] stunnel: TLS reaches the backend", elapsed(t0));

    // --- stop, then start: each service goes (no process, port closed) and
    // comes back serving as before; stunnel keeps its certificate, the
    // front end its shared sites.
    let pem = std::fs::read_to_string(&cert).expect("certificate");
    // A request sets all the parameters, so a state change repeats them.
    let lb_params = format!("backends={}", authority(&b2));
    let cache_params = format!("backend-url={b1}");
    let tls_params = format!("backend={}", authority(&b2));
    let services = [
        ("front", &frontend, None, &front, authority(&front_url)),
        ("lb", &haproxy, Some(&lb_params), &lb, authority(&lb_url)),
        (
            "cache",
            &varnish,
            Some(&cache_params),
            &cache,
            authority(&cache_url),
        ),
        ("tls", &stunnel, Some(&tls_params), &tls, tls_addr.clone()),
    ];
    for (title, release, param, info, addr) in &services {
        let params: Vec<&str> = param
            .iter()
            .flat_map(|p| ["--parameters", p.as_str()])
            .collect();
        cluster.stop(title, release, &params, &cluster.partition_dir(info), addr);
    }
    eprintln!("[{}] front, lb, cache, tls stopped", elapsed(t0));
    for (title, release, param, _, _) in &services {
        let params: Vec<&str> = param
            .iter()
            .flat_map(|p| ["--parameters", p.as_str()])
            .collect();
        cluster.start_again(title, release, &params);
    }
    for (what, url, page) in [
        ("site-two", &s2, &page2),
        ("haproxy", &lb_url, &page2),
        ("varnish", &cache_url, &page1),
    ] {
        wait_for(
            &format!("{what} to serve again at {url}"),
            CONVERGE,
            || (http_get(url).ok()? == (200, page.clone())).then_some(()),
            || format!("{:?}\n{}", http_get(url), cluster.logs()),
        );
    }
    wait_for(
        "stunnel to come back",
        CONVERGE,
        || tls_http_get(&tls_addr).ok().filter(|a| a.ends_with(&page2)),
        || cluster.logs(),
    );
    assert_eq!(
        std::fs::read_to_string(&cert).unwrap(),
        pem,
        "certificate kept"
    );
    eprintln!("[{}] front, lb, cache, tls started again", elapsed(t0));

    if std::env::var_os("FRONTENDS_DUMP_LOGS").is_some() {
        dump_partition_logs(&cluster.instance_root());
    }

    // --- a destroyed site loses its route; the others keep theirs.
    cluster.request(&["site-one", &frontend, "--slave", "--state", "destroyed"]);
    wait_for(
        "site-one's route to go",
        CONVERGE,
        || (http_get(&s1).ok()?.0 == 404).then_some(()),
        || format!("{:?}\n{}", http_get(&s1), cluster.logs()),
    );
    assert_eq!(http_get(&s2), Ok((200, page2.clone())));
    eprintln!("[{}] frontend: destroyed site unrouted", elapsed(t0));

    // --- destroy everything: partitions free and empty, no process and no
    // file of their users left, nothing listening.
    let mut dirs: Vec<PathBuf> = services
        .iter()
        .map(|(_, _, _, info, _)| cluster.partition_dir(info))
        .collect();
    dirs.extend([&b1_info, &b2_info].map(|i| cluster.partition_dir(i)));
    let addrs: Vec<String> = services
        .iter()
        .map(|(.., addr)| addr.clone())
        .chain([authority(&b1), authority(&b2)])
        .collect();
    let doomed = Doomed::new(&dirs, &addrs.iter().map(String::as_str).collect::<Vec<_>>());
    for title in ["site-two", odd] {
        cluster.request(&[title, &frontend, "--slave", "--state", "destroyed"]);
    }
    for (title, url) in [
        ("front", &frontend),
        ("lb", &haproxy),
        ("cache", &varnish),
        ("tls", &stunnel),
        ("b1", &hello),
        ("b2", &hello),
    ] {
        cluster.request(&[title, url, "--state", "destroyed"]);
    }
    doomed.assert_gone(&cluster.cfg, computer, || cluster.logs());
    let free = slapos_json(&cluster.cfg, &["computer", "info", computer, "--json"]).unwrap();
    assert_eq!(free["computer"]["partitions_free"], partitions, "{free:#}");
    eprintln!("[{}] destroyed: partitions free, no process", elapsed(t0));
    cluster.shutdown_and_check();
}
