//! `slapos console` as a user runs it: a script file against a real
//! `slapos up` (the catalog's `hello` release deployed by the real node),
//! commands piped to standard input, and errors naming their line.

mod common;

use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use common::e2e::*;

/// `slapos console --cfg CFG [args]` with `stdin` piped in; history kept in `dir`.
fn console(cfg: &Path, args: &[&str], stdin: &str) -> Output {
    let dir = cfg.parent().unwrap();
    let mut child = Command::new(common::binary())
        .arg("console")
        .arg("--cfg")
        .arg(cfg)
        .args(args)
        .current_dir(dir)
        .env("SLAPOS_CONSOLE_HISTORY", dir.join("console_history"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start slapos console");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().expect("slapos console")
}

fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// A configuration whose master does not answer: enough for what does not
/// reach the master, and for the errors of what does.
fn offline_cfg() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("slapos.cfg");
    let port = common::free_port();
    std::fs::write(
        &cfg,
        format!(
            "[slapos]\nmaster_url = http://127.0.0.1:{port}\ncomputer_id = local\n\
             [slapconsole]\nalias =\n  demo https://lab.example.invalid/demo/software.cfg\n"
        ),
    )
    .unwrap();
    (dir, cfg)
}

/// `slapos up` with only `hello` supplied, on its own ports, in a temp dir.
struct Up {
    daemon: Option<Daemon>,
    cfg: PathBuf,
    dir: tempfile::TempDir,
}

impl Up {
    fn start() -> Up {
        let dir = tempfile::Builder::new()
            .prefix("slapos-console-")
            .tempdir()
            .unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let port = common::free_port();
        let port_base = free_port_range(20);
        let data = dir.path().to_string_lossy().into_owned();
        let daemon = Daemon::spawn(
            "up",
            &common::binary(),
            &[
                "up",
                "--data-dir",
                &data,
                "--port",
                &port.to_string(),
                "--port-base",
                &port_base.to_string(),
                "--partitions",
                "2",
                "--supply",
                "hello",
            ],
            dir.path(),
            dir.path(),
        );
        let up = Up {
            daemon: Some(daemon),
            cfg: dir.path().join("slapos.cfg"),
            dir,
        };
        let master = format!("127.0.0.1:{port}");
        wait_for(
            "slapos up to listen and register its partitions",
            Duration::from_secs(30),
            || {
                if !port_open(&master) || !up.cfg.exists() {
                    return None;
                }
                let info = slapos_json(&up.cfg, &["computer", "info", "local", "--json"]).ok()?;
                (info["computer"]["partitions_total"] == 2).then_some(())
            },
            || up.logs(),
        );
        up
    }

    fn logs(&self) -> String {
        self.daemon.as_ref().map(|d| d.tail(40)).unwrap_or_default()
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        if let Some(mut d) = self.daemon.take() {
            d.stop(Duration::from_secs(30));
        }
        kill_processes_under(&[self.dir.path().to_path_buf()]);
    }
}

/// The issue's "done when": a console script requests an instance, waits for
/// its connection parameter and prints it; then the same session's objects
/// through piped commands (state, status, dictionaries, stop, destroy).
#[test]
fn script_requests_hello_and_prints_its_url_then_piped_commands_drive_it() {
    let up = Up::start();
    let script = repo_root().join("examples/console/hello.rhai");
    let out = console(&up.cfg, &[script.to_str().unwrap()], "");
    assert!(
        out.status.success(),
        "console script failed: {}\n{}",
        text(&out),
        up.logs()
    );
    let url = stdout(&out).lines().last().unwrap_or_default().to_string();
    assert!(url.starts_with("http://"), "printed: {:?}", stdout(&out));

    // The URL is the one the master holds, and it answers.
    let info = slapos_json(&up.cfg, &["service", "info", "hello-console", "--json"]).unwrap();
    assert_eq!(info["connection_parameters"]["url"], url.as_str());
    let (status, body) = http_get(&url).unwrap();
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("Hello from the console"), "{body}");

    // Piped commands: values printed, one bad line reported, the rest goes on.
    let commands = r#"
let site = request(hello, "hello-console", #{ greeting: "Hello from the console" });
site.getParameter("url")
site.getParameter("no-such-parameter")
site.getConnectionParameter("no-such-parameter")
print(site.getConnectionParameterDict().url)
site.getInstanceParameterDict().greeting
site.getState()
site.waitParameter("url", 5) == site.getConnectionParameter("url")
site.reference
"#;
    let out = console(&up.cfg, &[], commands);
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(
        lines,
        [
            format!("{url:?}"),
            url.clone(),
            "\"Hello from the console\"".to_string(),
            "\"started\"".to_string(),
            "true".to_string(),
            "\"hello-console\"".to_string(),
        ],
        "{}",
        text(&out)
    );
    assert_eq!(out.status.code(), Some(1), "one command failed");
    let err = stderr(&out);
    assert!(
        err.contains("stdin:5:") && err.contains("no-such-parameter"),
        "{err}"
    );

    let request = "let site = request(hello, \"hello-console\", #{ greeting: \"Hello from the console\" });\n";
    let out = console(
        &up.cfg,
        &[],
        &format!("{request}print(site.getStatus());\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out).trim(), "started");

    // Supply and remove, by alias or URL.
    let other = "https://lab.example.invalid/console/software.cfg";
    let software_state = |url: &str| {
        let c = slapos_json(&up.cfg, &["computer", "info", "local", "--json"]).unwrap();
        c["software"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["url"] == url)
            .map(|s| {
                s["requested_state"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string()
            })
    };
    let out = console(
        &up.cfg,
        &[],
        &format!("supply(\"hello\", \"local\");\nsupply(\"{other}\", \"local\");\nprint(hello)\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    let hello_url = stdout(&out).trim().to_string();
    assert_eq!(software_state(&hello_url).as_deref(), Some("available"));
    assert_eq!(software_state(other).as_deref(), Some("available"));
    let out = console(&up.cfg, &[], &format!("remove(\"{other}\", \"local\")\n"));
    assert!(out.status.success(), "{}", text(&out));
    // Marked destroyed, or already dropped (never installed).
    let after = software_state(other);
    assert!(
        matches!(after.as_deref(), None | Some("destroyed")),
        "{after:?}"
    );

    // Stop, then destroy: the requested state follows, the node frees the partition.
    let out = console(
        &up.cfg,
        &[],
        &format!("{request}site.stop();\nprint(site.getState());\nsite.destroy();\nprint(site.getState());\n"),
    );
    assert!(out.status.success(), "{}", text(&out));
    assert_eq!(stdout(&out).trim(), "stopped\ndestroyed");
    wait_for(
        "the hello instance to be destroyed",
        Duration::from_secs(60),
        || {
            let c = slapos_json(&up.cfg, &["computer", "info", "local", "--json"]).ok()?;
            (c["computer"]["partitions_free"] == 2).then_some(())
        },
        || up.logs(),
    );
    let (status, _) = http_get(&url).unwrap_or((0, String::new()));
    assert_ne!(status, 200, "{url} still answers after destroy()");
}

#[test]
fn script_errors_name_their_file_line_and_column() {
    let (dir, cfg) = offline_cfg();
    let script = dir.path().join("bad.rhai");

    std::fs::write(
        &script,
        "let a = 1;\nlet b = 2;\nlet c = a + no_such_variable;\n",
    )
    .unwrap();
    let out = console(&cfg, &[script.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let err = stderr(&out);
    assert!(
        err.contains(&format!("{}:3:13:", script.display())) && err.contains("no_such_variable"),
        "{err}"
    );

    std::fs::write(&script, "print(\"never\");\nlet x = ;\n").unwrap();
    let out = console(&cfg, &[script.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stdout(&out).is_empty(),
        "a script that does not parse does not run"
    );
    assert!(stderr(&out).contains("bad.rhai:2:"), "{}", stderr(&out));

    // The master's errors too (here: it does not answer).
    std::fs::write(&script, "// requests\nlet i = request(hello, \"h\");\n").unwrap();
    let out = console(&cfg, &[script.to_str().unwrap()], "");
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("bad.rhai:2:") && err.contains("cannot reach the master"),
        "{err}"
    );

    let out = console(
        &cfg,
        &[dir.path().join("missing.rhai").to_str().unwrap()],
        "",
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("missing.rhai"), "{}", stderr(&out));
}

#[test]
fn piped_commands_see_catalog_names_and_keep_state() {
    let (_dir, cfg) = offline_cfg();
    let out = console(
        &cfg,
        &[],
        "print(hello)\nprint(mysql == mariadb)\nprint(demo)\nlet x = 40;\nfn twice(n) {\n  n * 2\n}\nx + twice(1)\n",
    );
    assert!(out.status.success(), "{}", text(&out));
    let text_out = stdout(&out);
    let lines: Vec<&str> = text_out.lines().collect();
    assert_eq!(lines.len(), 4, "{text_out}");
    assert!(
        lines[0].starts_with("file://") && lines[0].ends_with("/catalog/hello/software.toml"),
        "{text_out}"
    );
    assert_eq!(lines[1], "true");
    assert_eq!(lines[2], "https://lab.example.invalid/demo/software.cfg");
    assert_eq!(lines[3], "42");

    // An error does not end the session, but the exit code tells.
    let out = console(&cfg, &[], "1 +\n+ ;\nprint(\"still here\")\n");
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    assert_eq!(stdout(&out).trim(), "still here");
    assert!(stderr(&out).contains("stdin:2:3:"), "{}", stderr(&out));
}

/// On a terminal (given by util-linux `script`): prompts, continuation
/// lines, functions kept across entries, errors that do not end the session,
/// Ctrl-D to quit, and the history written to its file.
#[test]
fn interactive_console_on_a_terminal() {
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("skipped: no `script` (util-linux) to give the console a terminal");
        return;
    }
    let (dir, cfg) = offline_cfg();
    let history = dir.path().join("history");
    let command = format!(
        "{} console --cfg {}",
        common::binary().display(),
        cfg.display()
    );
    let mut child = Command::new("script")
        .args(["-q", "-e", "-c", &command, "/dev/null"])
        .env("SLAPOS_CONSOLE_HISTORY", &history)
        .env("TERM", "xterm")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start script");
    let output = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let reader = {
        let output = output.clone();
        let mut stdout = child.stdout.take().unwrap();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut buf = [0u8; 4096];
            while let Ok(n) = stdout.read(&mut buf) {
                if n == 0 {
                    break;
                }
                output
                    .lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        })
    };
    let seen = || strip_ansi(&output.lock().unwrap()).replace('\r', "");
    let mut stdin = child.stdin.take().unwrap();
    let mut send = |text: &str, expect: &str| {
        stdin.write_all(text.as_bytes()).unwrap();
        stdin.flush().unwrap();
        wait_for(
            &format!("the console to show {expect:?}"),
            Duration::from_secs(15),
            || seen().contains(expect).then_some(()),
            seen,
        );
    };
    send("", ">>> ");
    send("let z = 41\n", ">>> let z = 41\n>>> ");
    send("fn f(a) {\n", "... ");
    send("a + 1 }\n", "a + 1 }\n>>> ");
    send("f(z)\n", "\n42\n");
    send("no_such_thing\n", "Variable not found: no_such_thing");
    send("help()\n", ".waitParameter(name [, timeout_s])");
    send(
        "print(demo)\n",
        "\nhttps://lab.example.invalid/demo/software.cfg\n",
    );
    stdin.write_all(b"\x04").unwrap();
    stdin.flush().unwrap();
    let status = poll_until(Duration::from_secs(15), || child.try_wait().ok().flatten());
    let Some(status) = status else {
        let _ = child.kill();
        panic!("the console did not end on Ctrl-D:\n{}", seen());
    };
    reader.join().unwrap();
    assert!(status.success(), "{status:?}\n{}", seen());
    let saved = std::fs::read_to_string(&history).unwrap_or_default();
    assert!(
        saved.contains("let z = 41") && saved.contains("f(z)") && saved.contains("print(demo)"),
        "history: {saved:?}"
    );
}

/// A master that speaks only the SLAP protocol, as the reference does (no
/// `/api/v1`: a 404 page): the console reads instances by requesting them
/// again. The instance publishes its URL at the third request.
fn legacy_only_master() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use slapos_proto::marshal::{dumps, Object, SlapClass, Value};
    use std::io::{BufRead, BufReader, Read};
    use std::sync::atomic::{AtomicUsize, Ordering};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let requests = std::sync::Arc::new(AtomicUsize::new(0));
    let count = requests.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { continue };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut first = String::new();
            if reader.read_line(&mut first).is_err() {
                continue;
            }
            let mut length = 0usize;
            loop {
                let mut header = String::new();
                if reader.read_line(&mut header).unwrap_or(0) == 0 || header.trim().is_empty() {
                    break;
                }
                let lower = header.to_ascii_lowercase();
                if let Some(v) = lower.strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
            let mut body = vec![0u8; length];
            let _ = reader.read_exact(&mut body);
            let body = String::from_utf8_lossy(&body).into_owned();
            let (status, text) = if first.starts_with("POST /requestComputerPartition") {
                let n = count.fetch_add(1, Ordering::SeqCst) + 1;
                let state = ["stopped", "destroyed"]
                    .into_iter()
                    .find(|s| body.contains(s))
                    .unwrap_or("started");
                let connection = if n >= 3 {
                    vec![(Value::str("url"), Value::str("http://legacy.invalid/"))]
                } else {
                    vec![]
                };
                let answer = Value::Object(Box::new(Object::new(
                    SlapClass::SoftwareInstance,
                    vec![],
                    vec![
                        (Value::str("_connection_dict"), Value::Dict(connection)),
                        (
                            Value::str("_parameter_dict"),
                            Value::Dict(vec![(Value::str("size"), Value::str("3"))]),
                        ),
                        (Value::str("_requested_state"), Value::str(state)),
                    ],
                )));
                ("200 OK", dumps(&answer).unwrap())
            } else {
                (
                    "404 NOT FOUND",
                    "<!doctype html>\n<title>404 Not Found</title>\n<p>The requested URL was not found on the server.</p>\n".to_string(),
                )
            };
            let mut stream = stream;
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{text}",
                text.len()
            );
        }
    });
    (url, requests)
}

#[test]
fn instances_of_a_master_without_json_api_are_read_by_requesting_again() {
    let (url, requests) = legacy_only_master();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("slapos.cfg");
    std::fs::write(&cfg, format!("[slapos]\nmaster_url = {url}\n")).unwrap();
    let script = dir.path().join("legacy.rhai");
    std::fs::write(
        &script,
        "let i = request(hello, \"r1\", #{ size: 3 });\n\
         print(i.getParameter(\"url\") == ());\n\
         print(i.waitParameter(\"url\", 20));\n\
         print(i.getInstanceParameterDict().size);\n\
         print(i.getState());\n\
         i.stop();\n\
         print(i.getState());\n\
         i.getStatus();\n",
    )
    .unwrap();
    let out = console(&cfg, &[script.to_str().unwrap()], "");
    assert_eq!(
        stdout(&out),
        "true\nhttp://legacy.invalid/\n3\nstarted\nstopped\n",
        "{}",
        text(&out)
    );
    assert_eq!(out.status.code(), Some(1));
    let err = stderr(&out);
    assert!(
        err.contains("legacy.rhai:8:") && err.contains("no JSON API"),
        "{err}"
    );
    assert!(requests.load(std::sync::atomic::Ordering::SeqCst) >= 4);
}
