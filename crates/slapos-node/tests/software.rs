//! The software release installer against real files, a real HTTP server
//! (a thread in the test), real build commands and the real apt/dpkg.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use sha2::{Digest, Sha256};
use slapos_node::manifest::Manifest;
use slapos_node::software::{release_dir, InstallError, Installer};

fn sha256(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes a manifest and returns its `file://` URL.
fn manifest(dir: &Path, file: &str, text: &str) -> String {
    let path = dir.join(file);
    std::fs::write(&path, text).unwrap();
    format!("file://{}", path.display())
}

/// A tiny HTTP/1.0 server that serves fixed files and counts requests.
struct Server {
    base: String,
    hits: Arc<Mutex<HashMap<String, usize>>>,
}

impl Server {
    fn start(files: HashMap<String, Vec<u8>>) -> Server {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let hits = Arc::new(Mutex::new(HashMap::new()));
        let counter = hits.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match stream.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let text = String::from_utf8_lossy(&request);
                let path = text.split_whitespace().nth(1).unwrap_or("/").to_string();
                *counter.lock().unwrap().entry(path.clone()).or_insert(0) += 1;
                let (status, body) = match files.get(&path) {
                    Some(body) => ("200 OK", body.clone()),
                    None => ("404 Not Found", b"not found".to_vec()),
                };
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    body.len()
                );
                let _ = stream.write_all(head.as_bytes());
                let _ = stream.write_all(&body);
            }
        });
        Server { base, hits }
    }

    fn hits(&self, path: &str) -> usize {
        self.hits.lock().unwrap().get(path).copied().unwrap_or(0)
    }
}

fn lines(path: &Path) -> usize {
    std::fs::read_to_string(path)
        .map(|t| t.lines().count())
        .unwrap_or(0)
}

#[tokio::test]
async fn installs_once_with_fetched_files_and_build_commands() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("src");
    std::fs::create_dir_all(src.join("tree")).unwrap();
    std::fs::write(src.join("payload.txt"), "hello payload\n").unwrap();
    std::fs::write(src.join("tree/inner.txt"), "inner\n").unwrap();
    let tar = std::process::Command::new("tar")
        .args(["-czf", "tree.tar.gz", "tree"])
        .current_dir(&src)
        .status()
        .unwrap();
    assert!(tar.success());
    let payload_sha = sha256(b"hello payload\n");
    let tree_sha = sha256(&std::fs::read(src.join("tree.tar.gz")).unwrap());
    let counter = tmp.path().join("builds");
    let url = manifest(
        &src,
        "software.toml",
        &format!(
            r#"
name = "demo"
version = "1"
[install]
build = [
  "cat data/payload.txt tree/tree/inner.txt > built.txt",
  "echo \"$SOFTWARE\" > software-var.txt",
  "echo build >> {counter}",
]
[[install.fetch]]
url = "payload.txt"
sha256 = "{payload_sha}"
path = "data/payload.txt"
[[install.fetch]]
url = "tree.tar.gz"
sha256 = "{tree_sha}"
path = "tree"
extract = true
[type.default]
"#,
            counter = counter.display()
        ),
    );
    let root = tmp.path().join("software");
    let installer = Installer::new(&root).unwrap();
    assert!(installer.installed(&url).is_none());

    let installed = installer.install(&url).await.unwrap();
    let dir = release_dir(&root, &url);
    assert_eq!(installed.dir, dir);
    assert_eq!(installed.manifest.name, "demo");
    assert!(dir.join(".completed").is_file());
    assert_eq!(
        std::fs::read_to_string(dir.join("built.txt")).unwrap(),
        "hello payload\ninner\n"
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("software-var.txt"))
            .unwrap()
            .trim(),
        dir.display().to_string()
    );
    let copy = std::fs::read_to_string(dir.join("software.toml")).unwrap();
    assert_eq!(Manifest::parse(&copy).unwrap(), installed.manifest);
    assert!(installer.installed(&url).is_some());
    assert_eq!(
        installed.environment()["SOFTWARE"],
        dir.display().to_string()
    );

    // Installed: the second install does nothing.
    let again = installer.install(&url).await.unwrap();
    assert_eq!(again.dir, dir);
    assert_eq!(lines(&counter), 1);
    // A new installer (a restarted node) sees it too.
    assert!(Installer::new(&root).unwrap().installed(&url).is_some());
    eprintln!("installs_once: {:?}", t0.elapsed());
}

#[tokio::test]
async fn checksum_mismatch_fails_and_leaves_nothing() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("payload.txt"), "actual content").unwrap();
    let expected = sha256(b"something else");
    let actual = sha256(b"actual content");
    let url = manifest(
        tmp.path(),
        "software.toml",
        &format!(
            "name = \"bad-sum\"\n[[install.fetch]]\nurl = \"payload.txt\"\nsha256 = \"{expected}\"\npath = \"p\"\n"
        ),
    );
    let root = tmp.path().join("software");
    let installer = Installer::new(&root).unwrap();
    let err = installer.install(&url).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, InstallError::Failed { .. }), "{text}");
    assert!(text.contains(&expected) && text.contains(&actual), "{text}");
    assert!(text.contains("checksum mismatch"), "{text}");
    assert!(!release_dir(&root, &url).exists());
    assert!(installer.installed(&url).is_none());
    // Nothing entered the cache under either hash.
    let cache = installer.cache_dir().join("sha256");
    assert!(!cache.join(&expected).exists() && !cache.join(&actual).exists());
}

#[tokio::test]
async fn failing_build_reports_the_log_tail() {
    let tmp = tempfile::tempdir().unwrap();
    let url = manifest(
        tmp.path(),
        "software.toml",
        r#"
name = "broken"
[install]
build = ["echo compiling things", "echo 'cc: fatal error: no input files' >&2; exit 3", "echo never"]
"#,
    );
    let root = tmp.path().join("software");
    let installer = Installer::new(&root).unwrap();
    let err = installer.install(&url).await.unwrap_err();
    let text = err.to_string();
    let InstallError::Failed {
        step,
        reason,
        log,
        log_tail,
        ..
    } = &err
    else {
        panic!("not a build failure: {text}");
    };
    assert!(step.starts_with("build command 2"), "{step}");
    assert_eq!(reason, "exited with status 3");
    assert!(log_tail.contains("compiling things"), "{log_tail}");
    assert!(
        log_tail.contains("cc: fatal error: no input files"),
        "{log_tail}"
    );
    assert!(!log_tail.contains("never"), "{log_tail}");
    assert!(text.contains("cc: fatal error"), "{text}");
    assert_eq!(*log, installer.log_path(&url));
    assert!(std::fs::read_to_string(log)
        .unwrap()
        .contains("== error: build command 2"));
    let dir = release_dir(&root, &url);
    assert!(!dir.exists());
    assert!(!dir.join(".completed").exists());
    assert!(installer.installed(&url).is_none());
}

#[tokio::test]
async fn unreachable_and_unsupported_urls_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let installer = Installer::new(&tmp.path().join("software")).unwrap();
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}/software.toml");
    let err = installer.install(&url).await.unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, InstallError::Unreachable { .. }), "{text}");
    assert!(
        text.contains(&url) && text.to_lowercase().contains("refused"),
        "{text}"
    );
    assert!(!release_dir(installer.software_root(), &url).exists());

    let server = Server::start(HashMap::new());
    let url = format!("{}/missing.toml", server.base);
    let err = installer.fetch_manifest(&url).await.unwrap_err();
    assert!(
        matches!(err, InstallError::HttpStatus { status: 404, .. }),
        "{err}"
    );
    assert!(err.to_string().contains("HTTP status 404"), "{err}");

    let missing = format!("file://{}/nope.toml", tmp.path().display());
    let err = installer.install(&missing).await.unwrap_err();
    assert!(err.to_string().contains("No such file"), "{err}");

    let err = installer
        .install("ftp://example.org/software.toml")
        .await
        .unwrap_err();
    assert!(matches!(err, InstallError::UnsupportedUrl { .. }), "{err}");
}

#[tokio::test]
async fn invalid_manifests_are_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("software");
    let installer = Installer::new(&root).unwrap();

    let url = manifest(tmp.path(), "syntax.toml", "name = \n[install");
    let err = installer.install(&url).await.unwrap_err();
    assert!(err.to_string().contains("not valid TOML"), "{err}");
    assert!(!release_dir(&root, &url).exists());

    let url = manifest(
        tmp.path(),
        "invalid.toml",
        "name = \"x\"\n[[install.fetch]]\nurl = \"a\"\nsha256 = \"abc\"\npath = \"a\"\n",
    );
    let err = installer.install(&url).await.unwrap_err();
    assert!(err.to_string().contains("invalid manifest"), "{err}");
    assert!(err.to_string().contains("sha256"), "{err}");

    let url = manifest(
        tmp.path(),
        "big.toml",
        &format!("name = \"x\"\n# {}\n", "x".repeat(1 << 20)),
    );
    let err = installer.fetch_manifest(&url).await.unwrap_err();
    assert!(matches!(err, InstallError::TooLarge { .. }), "{err}");

    let url = manifest(
        tmp.path(),
        "debian.toml",
        "name = \"x\"\n[install]\ndebian = [\"--no-such-option\"]\n",
    );
    let err = installer.install(&url).await.unwrap_err();
    assert!(
        err.to_string().contains("not a Debian package name"),
        "{err}"
    );
}

#[tokio::test]
async fn downloads_are_cached_across_releases() {
    let t0 = Instant::now();
    let body = b"a file both releases fetch\n".to_vec();
    let sha = sha256(&body);
    let fetch =
        format!("[[install.fetch]]\nurl = \"/blob\"\nsha256 = \"{sha}\"\npath = \"blob\"\n");
    let local = fetch.replace("url = \"/blob\"", "url = \"file:///etc/hostname\"");
    let files = HashMap::from([
        ("/blob".to_string(), body.clone()),
        (
            "/a/software.toml".to_string(),
            format!("name = \"a\"\n{fetch}").into_bytes(),
        ),
        (
            "/b/software.toml".to_string(),
            format!("name = \"b\"\n{fetch}").into_bytes(),
        ),
        (
            "/c/software.toml".to_string(),
            format!("name = \"c\"\n{local}").into_bytes(),
        ),
    ]);
    let server = Server::start(files);
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("software");
    let installer = Installer::new(&root).unwrap();

    let a = installer
        .install(&format!("{}/a/software.toml", server.base))
        .await
        .unwrap();
    assert_eq!(std::fs::read(a.dir.join("blob")).unwrap(), body);
    assert_eq!(server.hits("/blob"), 1);
    let b = installer
        .install(&format!("{}/b/software.toml", server.base))
        .await
        .unwrap();
    assert_eq!(std::fs::read(b.dir.join("blob")).unwrap(), body);
    assert_eq!(
        server.hits("/blob"),
        1,
        "the second release downloaded the file again"
    );
    assert_eq!(server.hits("/a/software.toml"), 1);
    let log =
        std::fs::read_to_string(installer.log_path(&format!("{}/b/software.toml", server.base)))
            .unwrap();
    assert!(log.contains("in the cache"), "{log}");

    // A remote manifest cannot read the node's own files.
    let err = installer
        .install(&format!("{}/c/software.toml", server.base))
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("cannot fetch files of this computer"),
        "{err}"
    );

    // A damaged cache entry is detected and fetched again.
    std::fs::write(installer.cache_dir().join("sha256").join(&sha), "garbage").unwrap();
    installer
        .remove(&format!("{}/b/software.toml", server.base))
        .await
        .unwrap();
    installer
        .install(&format!("{}/b/software.toml", server.base))
        .await
        .unwrap();
    assert_eq!(server.hits("/blob"), 2);
    eprintln!("cache: {:?}", t0.elapsed());
}

#[tokio::test]
async fn remove_deletes_the_release() {
    let tmp = tempfile::tempdir().unwrap();
    let url = manifest(
        tmp.path(),
        "software.toml",
        "name = \"r\"\n[install]\nbuild = [\"mkdir -p ro/sub && chmod 500 ro\"]\n",
    );
    let root = tmp.path().join("software");
    let installer = Installer::new(&root).unwrap();
    let installed = installer.install(&url).await.unwrap();
    assert!(installed.dir.join("ro/sub").is_dir());
    installer.remove(&url).await.unwrap();
    assert!(!installed.dir.exists());
    assert!(installer.installed(&url).is_none());
    installer.remove(&url).await.unwrap(); // not installed: fine
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_installs_of_one_release_build_once() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let counter = tmp.path().join("builds");
    let url = manifest(
        tmp.path(),
        "software.toml",
        &format!(
            "name = \"slow\"\n[install]\nbuild = [\"echo build >> {}\", \"sleep 1\"]\n",
            counter.display()
        ),
    );
    let root = tmp.path().join("software");
    // Two installers stand for two node processes: the lock is a file lock.
    let first = Installer::new(&root).unwrap();
    let second = Installer::new(&root).unwrap();
    let (u1, u2) = (url.clone(), url.clone());
    let a = tokio::spawn(async move { first.install(&u1).await });
    let b = tokio::spawn(async move { second.install(&u2).await });
    let (a, b) = (a.await.unwrap().unwrap(), b.await.unwrap().unwrap());
    assert_eq!(a.dir, b.dir);
    assert_eq!(lines(&counter), 1);
    eprintln!("concurrent: {:?}", t0.elapsed());
}

fn data(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(file)
}

/// The complete example of docs/software-release.md is tests/data/redis/software.toml.
#[test]
fn the_documented_example_is_the_tested_one() {
    let doc_path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/software-release.md");
    let doc = std::fs::read_to_string(doc_path).unwrap();
    let start = doc
        .find("```toml\nname = \"redis\"")
        .expect("the example in the document")
        + "```toml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    let documented = Manifest::parse(&doc[start..end]).unwrap();
    let tested =
        Manifest::parse(&std::fs::read_to_string(data("redis/software.toml")).unwrap()).unwrap();
    assert_eq!(documented, tested);
}

/// Ensures apt can download: the package lists are needed.
fn apt_ready() -> bool {
    let Ok(status) = std::process::Command::new("apt-get")
        .arg("--version")
        .output()
    else {
        eprintln!("SKIPPED: apt-get is not available on this machine");
        return false;
    };
    assert!(status.status.success());
    let has_lists = std::fs::read_dir("/var/lib/apt/lists")
        .map(|d| {
            d.flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false);
    if !has_lists {
        eprintln!("the package lists are missing: running apt-get update");
        let ok = std::process::Command::new("apt-get")
            .args(["update", "-qq"])
            .status()
            .unwrap();
        assert!(ok.success(), "apt-get update failed");
    }
    true
}

#[tokio::test]
async fn debian_packages_are_unpacked_into_the_release_and_cached() {
    if !apt_ready() {
        return;
    }
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let text = std::fs::read_to_string(data("redis/software.toml")).unwrap();
    let first = manifest(tmp.path(), "redis-a.toml", &text);
    let second = manifest(tmp.path(), "redis-b.toml", &text);
    let root = tmp.path().join("software");
    let installer = Installer::new(&root).unwrap();

    let installed = installer
        .install(&first)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let t1 = t0.elapsed();
    let server = installed.root().join("usr/bin/redis-server");
    assert!(server.exists(), "{} is missing", server.display());
    let log = std::fs::read_to_string(installer.log_path(&first)).unwrap();
    assert!(log.contains("== apt-get download"), "{log}");

    // The release's own redis, found through the environment it provides.
    let out = std::process::Command::new("sh")
        .args(["-c", "command -v redis-server && redis-server --version"])
        .env_clear()
        .envs(installed.environment())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&server.display().to_string()),
        "{stdout}"
    );
    assert!(stdout.contains("Redis server v="), "{stdout}");
    // Nothing was installed on the system: dpkg knows nothing of the release.
    assert!(!log.contains("dpkg -i") && !log.contains("dpkg --install"));

    // Another release with the same packages downloads nothing.
    let again = installer
        .install(&second)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(again.root().join("usr/bin/redis-server").exists());
    let log = std::fs::read_to_string(installer.log_path(&second)).unwrap();
    assert!(!log.contains("== apt-get download"), "{log}");
    assert!(log.contains(".deb files are in the cache"), "{log}");
    let debs: Vec<_> = std::fs::read_dir(installer.cache_dir().join("debs"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        debs.iter().any(|d| d.starts_with("redis-server_")),
        "{debs:?}"
    );
    eprintln!("debian: first {t1:?}, both {:?}", t0.elapsed());
}

#[tokio::test]
async fn unknown_debian_package_is_a_clear_error() {
    if !apt_ready() {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let url = manifest(
        tmp.path(),
        "software.toml",
        "name = \"x\"\n[install]\ndebian = [\"no-such-package-slapos-rs\"]\n",
    );
    let root = tmp.path().join("software");
    let installer = Installer::new(&root).unwrap();
    let err = installer.install(&url).await.unwrap_err();
    let text = err.to_string();
    assert!(
        text.contains("no-such-package-slapos-rs") && text.contains("apt-get update"),
        "{text}"
    );
    assert!(!release_dir(&root, &url).exists());
}

/// A package whose apt candidate is only installed on the host (a backport
/// installed by hand, which no repository serves) is taken at the highest
/// version a repository serves, with a warning. Runs only on such a host
/// (here: qemu-utils from bookworm-backports installed).
#[tokio::test]
async fn a_candidate_no_repository_serves_falls_back_to_a_served_version() {
    if !apt_ready() {
        return;
    }
    let show = std::process::Command::new("apt-cache")
        .args(["show", "--no-all-versions", "qemu-utils"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&show.stdout);
    if !show.status.success()
        || !text.starts_with("Package: qemu-utils")
        || text.contains("\nFilename:")
    {
        eprintln!("SKIPPED: qemu-utils' candidate is served by a repository here, or unknown");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let url = manifest(
        tmp.path(),
        "software.toml",
        "name = \"q\"\n[install]\ndebian = [\"qemu-utils\"]\n",
    );
    let mut installer = Installer::new(&tmp.path().join("software")).unwrap();
    if let Some(cache) = std::env::var_os("SLAPOS_DOWNLOAD_CACHE") {
        installer = installer.with_cache_dir(Path::new(&cache)).unwrap();
    }
    let installed = installer
        .install(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let log = std::fs::read_to_string(installer.log_path(&url)).unwrap();
    assert!(log.contains("is served by no repository"), "{log}");
    assert!(installed.root().join("usr/bin/qemu-img").exists());
}

/// Every template of the example renders in strict mode with the variables
/// docs/software-release.md lists, before and after the child publishes.
#[test]
fn the_documented_example_renders() {
    let manifest =
        Manifest::parse(&std::fs::read_to_string(data("redis/software.toml")).unwrap()).unwrap();
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    env.add_function("secret", |name: String| format!("secret-{name}"));
    let shared =
        serde_json::json!({"slave_reference": "SHARED-1", "slave_title": "app", "prefix": "app"});
    let base = serde_json::json!({
        "partition": "/srv/slapgrid/slappart0", "software": "/opt/slapgrid/abc", "software_name": "redis",
        "computer_id": "COMP-1", "partition_id": "slappart0", "ipv4": "10.0.0.2", "ipv6": "fd00::2",
        "ports": {"redis": 6379}, "parameters": {"maxmemory": "64mb", "databases": 16},
        "instance_title": "cache", "root_instance_title": "cache", "software_type": "default",
        "shared_instances": [shared.clone()],
    });
    let primary = serde_json::json!({"host": "10.0.0.3", "port": "6379", "password": "p", "url": "redis://:p@10.0.0.3:6379/0"});
    for children in [
        serde_json::json!({"primary": {}}),
        serde_json::json!({"primary": primary}),
    ] {
        for (name, t) in &manifest.types {
            let mut ctx = base.clone();
            ctx["children"] = children.clone();
            let mut templates: Vec<&str> = vec![];
            templates.extend(t.directories.iter().map(String::as_str));
            for f in &t.files {
                templates.extend([f.path.as_str(), f.template.as_str()]);
            }
            for s in &t.services {
                templates.extend(s.command.iter().map(String::as_str));
                templates.extend(s.environment.values().map(String::as_str));
            }
            for p in &t.promises {
                templates.extend(p.tcp.iter().chain(p.http.iter()).map(String::as_str));
                templates.extend(p.command.iter().flatten().map(String::as_str));
            }
            templates.extend(t.connection.values().map(String::as_str));
            for template in templates {
                let out = env
                    .render_str(template, &ctx)
                    .unwrap_or_else(|e| panic!("type {name}: {template}: {e}"));
                assert!(!out.contains("{{"), "{out}");
            }
            if let Some(s) = &t.shared {
                ctx["shared"] = serde_json::json!({"reference": "SHARED-1", "title": "app", "parameters": shared});
                for template in s
                    .files
                    .iter()
                    .flat_map(|f| [&f.path, &f.template])
                    .chain(s.connection.values())
                {
                    env.render_str(template, &ctx)
                        .unwrap_or_else(|e| panic!("type {name}: {template}: {e}"));
                }
            }
            if name == "replica" {
                let conf = env.render_str(&t.files[0].template, &ctx).unwrap();
                assert_eq!(
                    conf.contains("replicaof 10.0.0.3 6379"),
                    children["primary"].get("host").is_some(),
                    "{conf}"
                );
            }
        }
    }
}

/// `[install] pypi`: the first installation downloads the wheels into the
/// node's cache; a second one (another software root, the same cache)
/// installs from the cache with `pip --no-index`, downloading nothing.
#[tokio::test]
async fn pypi_wheels_are_cached_so_a_second_install_downloads_nothing() {
    let t0 = Instant::now();
    let tmp = tempfile::tempdir().unwrap();
    let url = manifest(
        tmp.path(),
        "software.toml",
        r#"
name = "py"
[install]
pypi = ["six==1.17.0"]
build = ["PYTHONPATH=$SOFTWARE/lib /usr/bin/python3 -c 'import six; print(six.__version__)' > six.txt"]
"#,
    );
    let cache = tmp.path().join("cache");
    let installs = [tmp.path().join("software-a"), tmp.path().join("software-b")].map(|root| {
        Installer::new(&root)
            .unwrap()
            .with_cache_dir(&cache)
            .unwrap()
    });

    let first = installs[0]
        .install(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read_to_string(first.dir.join("six.txt")).unwrap(),
        "1.17.0\n"
    );
    let log = std::fs::read_to_string(installs[0].log_path(&url)).unwrap();
    assert!(log.contains("== 1 wheels entered the cache"), "{log}");
    let wheels: Vec<String> = std::fs::read_dir(cache.join("pypi"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        wheels.len() == 1 && wheels[0].starts_with("six-1.17.0-"),
        "{wheels:?}"
    );
    let t1 = t0.elapsed();

    let second = installs[1]
        .install(&url)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        std::fs::read_to_string(second.dir.join("six.txt")).unwrap(),
        "1.17.0\n"
    );
    let log = std::fs::read_to_string(installs[1].log_path(&url)).unwrap();
    assert!(log.contains("nothing downloaded"), "{log}");
    assert!(!log.contains("pip wheel"), "{log}");
    assert_eq!(std::fs::read_dir(cache.join("pypi")).unwrap().count(), 1);
    eprintln!("pypi: first {t1:?}, both {:?}", t0.elapsed());
}
