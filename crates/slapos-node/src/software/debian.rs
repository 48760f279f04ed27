//! Debian packages unpacked into a release's own `root/` directory, without
//! root and without touching the system: no dpkg database, no maintainer
//! scripts, so two versions of the same software coexist on one computer.
//!
//! 1. `apt-cache depends --recurse` (only Depends and PreDepends) gives the
//!    dependency graph of the listed packages, with its alternatives
//!    (`a | b`) and the providers of virtual packages.
//! 2. The graph is walked from the listed packages. A dependency already
//!    installed on the host (`dpkg-query`) is taken from the host and not
//!    followed, except one built from the same source package as a listed
//!    package (`redis-server` needs `redis-tools`' binary: they are one
//!    piece of software at one version). For an unsatisfied alternative the
//!    first one that exists is taken, as apt does.
//! 3. The chosen packages' `.deb` files, at the version apt would install
//!    (or, when that one is only installed on the host and no repository
//!    serves it, as a backport installed by hand, the highest version a
//!    repository serves, with a warning), are fetched with `apt-get
//!    download` into the node's cache, where their
//!    file name (which includes the version) is the key: a second release
//!    with the same packages downloads nothing.
//! 4. Each one is unpacked with `dpkg-deb -x` into `<release>/root`.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::{Path, PathBuf};
use std::process::Stdio;

use tokio::process::Command;

use super::download::unique_name;
use super::log::BuildLog;

/// Advice appended to errors that stale or missing package lists explain.
const UPDATE_HINT: &str =
    "if the package lists are missing or stale, run `apt-get update` as root on this computer";

/// Unpacks `packages` and the dependencies the host lacks into `root`,
/// using `debs` as the `.deb` cache.
pub(super) async fn install(
    packages: &[String],
    root: &Path,
    debs: &Path,
    log: &BuildLog,
) -> Result<(), String> {
    for p in packages {
        if !valid_name(p) {
            return Err(format!("{p:?} is not a Debian package name"));
        }
    }
    check_lists(log).await?;
    let mut depends = Command::new("apt-cache");
    depends
        .args([
            "depends",
            "--recurse",
            "--no-recommends",
            "--no-suggests",
            "--no-conflicts",
            "--no-breaks",
            "--no-replaces",
            "--no-enhances",
        ])
        .args(packages);
    // It fails when it knows none of the packages: checked just below.
    let graph = parse_depends(&output(&mut depends, log, false).await?);
    for p in packages {
        if !graph.deps.contains_key(p.as_str()) {
            return Err(format!(
                "apt does not know the package {p:?} (or it is only a virtual package: name a real one); {UPDATE_HINT}"
            ));
        }
    }
    let mut show = Command::new("apt-cache");
    show.args(["show", "--no-all-versions"]).args(&graph.order);
    let info = parse_show(&output(&mut show, log, true).await?);
    let mut query = Command::new("dpkg-query");
    query.args(["-W", "-f", "${Package}\t${db:Status-Status}\n"]);
    let installed = parse_installed(&output(&mut query, log, true).await?);

    let chosen = choose(&graph, packages, &installed, &info)?;
    let mut info = info;
    for name in &chosen {
        let base = base_name(name);
        if info.get(base).is_some_and(|i| !i.downloadable) {
            if let Some(served) = served_version(base, log).await? {
                let candidate = &info[base].version;
                let warning = format!(
                    "warning: apt's candidate for {name}, {candidate}, is served by no repository \
                     (installed on this computer from elsewhere?): taking {}, the highest version \
                     a repository serves",
                    served.version
                );
                tracing::warn!("{warning}");
                log.note(warning);
                info.insert(base.to_string(), served);
            }
        }
    }
    let mut wanted: Vec<Deb> = Vec::new();
    for name in &chosen {
        let Some(i) = info.get(base_name(name)) else {
            return Err(format!(
                "apt-cache show does not describe {name}; {UPDATE_HINT}"
            ));
        };
        if !i.downloadable {
            return Err(format!(
                "no download source for {name} {}; {UPDATE_HINT}",
                i.version
            ));
        }
        let file = deb_file_name(base_name(name), &i.version, &i.architecture);
        wanted.push(Deb {
            spec: format!("{name}={}", i.version),
            cached: debs.join(&file),
            file,
        });
    }
    log.note(format!(
        "Debian packages to unpack: {}",
        wanted
            .iter()
            .map(|w| w.spec.as_str())
            .collect::<Vec<_>>()
            .join(" ")
    ));
    let missing: Vec<&Deb> = wanted.iter().filter(|w| !w.cached.is_file()).collect();
    if missing.is_empty() {
        log.note(format!("all {} .deb files are in the cache", wanted.len()));
    } else {
        download(&missing, debs, log).await?;
    }
    tokio::fs::create_dir_all(root)
        .await
        .map_err(|e| format!("cannot create {}: {e}", root.display()))?;
    for deb in &wanted {
        let mut unpack = Command::new("dpkg-deb");
        unpack.arg("-x").arg(&deb.cached).arg(root);
        if let Err(e) = run(&mut unpack, log).await {
            // A damaged file must not stay in the cache: the next attempt
            // downloads it again.
            let _ = tokio::fs::remove_file(&deb.cached).await;
            return Err(format!("cannot unpack {}: {e}", deb.file));
        }
        log.note(format!("unpacked {}", deb.spec));
    }
    Ok(())
}

/// The highest version of `package` a repository serves (`apt-cache
/// madison` lists them, highest first), described by `apt-cache show`.
async fn served_version(package: &str, log: &BuildLog) -> Result<Option<PackageInfo>, String> {
    let mut madison = Command::new("apt-cache");
    madison.args(["madison", package]);
    let Some(version) = parse_madison(&output(&mut madison, log, false).await?) else {
        return Ok(None);
    };
    let mut show = Command::new("apt-cache");
    show.arg("show").arg(format!("{package}={version}"));
    let info = parse_show(&output(&mut show, log, true).await?);
    Ok(info
        .get(package)
        .filter(|i| i.downloadable && i.version == version)
        .cloned())
}

/// The first version of `apt-cache madison`'s lines `name | version | source`.
fn parse_madison(out: &str) -> Option<String> {
    out.lines()
        .filter_map(|l| l.split('|').nth(1))
        .map(str::trim)
        .find(|v| !v.is_empty())
        .map(str::to_string)
}

/// A package to unpack.
struct Deb {
    /// `name=version`, as `apt-get download` takes it.
    spec: String,
    /// The file name `apt-get download` gives it.
    file: String,
    /// Where it is (or will be) in the cache.
    cached: PathBuf,
}

/// `apt-get download` of the missing packages into a private directory of
/// the cache, then each file moved into the cache (a rename: atomic).
async fn download(missing: &[&Deb], debs: &Path, log: &BuildLog) -> Result<(), String> {
    let tmp = debs.join(unique_name("apt-get-download"));
    tokio::fs::create_dir_all(&tmp)
        .await
        .map_err(|e| format!("cannot create {}: {e}", tmp.display()))?;
    let result = async {
        let n = missing.len();
        log.note(format!(
            "apt-get download ({n} package{})",
            if n == 1 { "" } else { "s" }
        ));
        let mut cmd = Command::new("apt-get");
        if nix::unistd::geteuid().is_root() {
            // apt would drop to its `_apt` user, which cannot write here,
            // then download as root anyway with a warning.
            cmd.args(["-o", "APT::Sandbox::User=root"]);
        }
        cmd.arg("download")
            .args(missing.iter().map(|w| &w.spec))
            .current_dir(&tmp);
        run(&mut cmd, log)
            .await
            .map_err(|e| format!("{e}; {UPDATE_HINT}"))?;
        for deb in missing {
            tokio::fs::rename(tmp.join(&deb.file), &deb.cached)
                .await
                .map_err(|e| {
                    format!(
                        "apt-get download did not give {} for {}: {e}",
                        deb.file, deb.spec
                    )
                })?;
        }
        Ok(())
    }
    .await;
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    result
}

/// `apt-get download` works without root but needs the package lists.
async fn check_lists(log: &BuildLog) -> Result<(), String> {
    let mut config = Command::new("apt-config");
    config.args(["shell", "LISTS", "Dir::State::lists/d"]);
    let out = output(&mut config, log, true).await?;
    let dir = out
        .trim()
        .strip_prefix("LISTS='")
        .and_then(|s| s.strip_suffix('\''))
        .unwrap_or("/var/lib/apt/lists/")
        .to_string();
    let has_lists = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.file_name().to_string_lossy().contains("_Packages"))
        })
        .unwrap_or(false);
    if has_lists {
        Ok(())
    } else {
        Err(format!(
            "the apt package lists are missing ({dir} has none): run `apt-get update` as root on this computer"
        ))
    }
}

/// Runs a tool with its stderr in the log and returns its stdout; a failure
/// exit status is an error if `check`.
async fn output(cmd: &mut Command, log: &BuildLog, check: bool) -> Result<String, String> {
    let program = program(cmd);
    let stderr = log
        .stdio()
        .map_err(|e| format!("cannot write the build log: {e}"))?;
    let out = cmd
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stderr(stderr)
        .kill_on_drop(true)
        .output()
        .await
        .map_err(|e| cannot_run(&program, e))?;
    if check && !out.status.success() {
        return Err(format!(
            "`{program}` failed ({}); its messages are in the build log",
            out.status
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Runs a tool with its output in the log.
async fn run(cmd: &mut Command, log: &BuildLog) -> Result<(), String> {
    let program = program(cmd);
    let (stdout, stderr) = match (log.stdio(), log.stdio()) {
        (Ok(o), Ok(e)) => (o, e),
        (Err(e), _) | (_, Err(e)) => return Err(format!("cannot write the build log: {e}")),
    };
    let status = cmd
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(stdout)
        .stderr(stderr)
        .kill_on_drop(true)
        .status()
        .await
        .map_err(|e| cannot_run(&program, e))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!(
            "`{program}` failed ({status}); its messages are in the build log"
        ))
    }
}

/// `apt-get download`: the program and its sub-command, to name it.
fn program(cmd: &Command) -> String {
    let std = cmd.as_std();
    let mut words = vec![std.get_program().to_string_lossy().into_owned()];
    words.extend(
        std.get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .find(|a| !a.starts_with('-') && !a.contains("::")),
    );
    words.join(" ")
}

fn cannot_run(program: &str, e: std::io::Error) -> String {
    if e.kind() == std::io::ErrorKind::NotFound {
        format!("`{program}` is not available on this computer: Debian packages need apt and dpkg")
    } else {
        format!("cannot run `{program}`: {e}")
    }
}

/// Debian policy: lower-case letters, digits, `+ - .`, at least two
/// characters, starting with a letter or digit; an optional `:arch`.
fn valid_name(name: &str) -> bool {
    let (pkg, arch) = match name.split_once(':') {
        Some((p, a)) => (p, Some(a)),
        None => (name, None),
    };
    let ok = |s: &str, extra: &str| {
        s.len() >= 2
            && s.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(c))
    };
    ok(pkg, "+-.") && arch.is_none_or(|a| ok(a, "-"))
}

/// `libc6:amd64` → `libc6`.
fn base_name(name: &str) -> &str {
    name.split_once(':').map_or(name, |(p, _)| p)
}

/// The file name `apt-get download` gives a package: its fields joined by
/// `_`, each with `_`, `:` and `%` quoted (`5:7.0` → `5%3a7.0`).
fn deb_file_name(package: &str, version: &str, architecture: &str) -> String {
    fn quote(s: &str) -> String {
        let mut out = String::new();
        for c in s.chars() {
            if matches!(c, '_' | ':' | '%') || (c as u32) <= 0x20 || (c as u32) >= 0x7f {
                let mut buf = [0u8; 4];
                for b in c.encode_utf8(&mut buf).bytes() {
                    out.push_str(&format!("%{b:02x}"));
                }
            } else {
                out.push(c);
            }
        }
        out
    }
    format!(
        "{}_{}_{}.deb",
        quote(package),
        quote(version),
        quote(architecture)
    )
}

/// One alternative of a dependency: a real package, or a virtual one
/// (`<name>` in apt's output), with the packages that provide it.
#[derive(Debug, Clone, PartialEq)]
struct Alternative {
    name: String,
    is_virtual: bool,
    providers: Vec<String>,
}

/// The output of `apt-cache depends --recurse`: for each real package, its
/// dependencies, each a list of alternatives.
#[derive(Debug, Default)]
struct Graph {
    deps: HashMap<String, Vec<Vec<Alternative>>>,
    order: Vec<String>,
}

/// Parses lines such as
/// ```text
/// redis-server
///   PreDepends: init-system-helpers
///  |Depends: debconf
///   Depends: <debconf-2.0>
///     cdebconf
/// ```
/// (`|` joins a line to the next one as alternatives; deeper lines list the
/// providers of the dependency above).
fn parse_depends(out: &str) -> Graph {
    let mut graph = Graph::default();
    let mut current: Option<String> = None;
    let mut joins_next = false;
    for line in out.lines() {
        if line.trim().is_empty() {
            continue;
        }
        if !line.starts_with(' ') {
            joins_next = false;
            let name = line.trim();
            current = None;
            if !name.starts_with('<') && !graph.deps.contains_key(name) {
                graph.deps.insert(name.to_string(), Vec::new());
                graph.order.push(name.to_string());
                current = Some(name.to_string());
            }
            continue;
        }
        let Some(groups) = current.as_ref().and_then(|c| graph.deps.get_mut(c)) else {
            continue;
        };
        let body = line.trim_start();
        let (or, body) = match body.strip_prefix('|') {
            Some(rest) => (true, rest),
            None => (false, body),
        };
        let dependency = body
            .split_once(": ")
            .filter(|(kind, _)| kind.chars().all(|c| c.is_ascii_alphabetic()));
        if let Some((_, target)) = dependency {
            let target = target.trim();
            let alternative = Alternative {
                name: target
                    .trim_start_matches('<')
                    .trim_end_matches('>')
                    .to_string(),
                is_virtual: target.starts_with('<'),
                providers: Vec::new(),
            };
            match groups.last_mut() {
                Some(group) if joins_next => group.push(alternative),
                _ => groups.push(vec![alternative]),
            }
            joins_next = or;
        } else if let Some(alternative) = groups.last_mut().and_then(|g| g.last_mut()) {
            alternative.providers.push(body.trim().to_string());
        }
    }
    graph
}

/// What `apt-cache show` says of a package's candidate version.
#[derive(Debug, Clone, PartialEq)]
struct PackageInfo {
    version: String,
    architecture: String,
    source: String,
    /// It has a `Filename` (it comes from a repository, not only from the
    /// host's dpkg database).
    downloadable: bool,
}

fn parse_show(out: &str) -> HashMap<String, PackageInfo> {
    let mut result = HashMap::new();
    for stanza in out.split("\n\n") {
        let mut fields: HashMap<&str, &str> = HashMap::new();
        for line in stanza.lines() {
            if line.starts_with(' ') {
                continue;
            }
            if let Some((k, v)) = line.split_once(':') {
                fields.insert(k, v.trim());
            }
        }
        let Some(package) = fields.get("Package") else {
            continue;
        };
        let source = fields
            .get("Source")
            .and_then(|s| s.split_whitespace().next())
            .unwrap_or(package);
        result
            .entry(package.to_string())
            .or_insert_with(|| PackageInfo {
                version: fields.get("Version").unwrap_or(&"").to_string(),
                architecture: fields.get("Architecture").unwrap_or(&"").to_string(),
                source: source.to_string(),
                downloadable: fields.contains_key("Filename"),
            });
    }
    result
}

/// The packages dpkg says are installed on the host.
fn parse_installed(out: &str) -> HashSet<String> {
    out.lines()
        .filter_map(|l| l.split_once('\t'))
        .filter(|(_, status)| status.trim() == "installed")
        .map(|(name, _)| name.to_string())
        .collect()
}

/// The packages to unpack: the listed ones and what they need that the host
/// does not provide (see the module's documentation).
fn choose(
    graph: &Graph,
    listed: &[String],
    installed: &HashSet<String>,
    info: &HashMap<String, PackageInfo>,
) -> Result<Vec<String>, String> {
    let source = |n: &str| {
        let n = base_name(n);
        info.get(n).map_or(n.to_string(), |i| i.source.clone())
    };
    let own: HashSet<String> = listed.iter().map(|p| source(p)).collect();
    let on_host = |n: &str| installed.contains(base_name(n)) && !own.contains(&source(n));
    let mut seen: HashSet<String> = listed.iter().cloned().collect();
    let mut queue: VecDeque<String> = listed.iter().cloned().collect();
    let mut chosen = Vec::new();
    while let Some(package) = queue.pop_front() {
        for group in graph.deps.get(&package).into_iter().flatten() {
            let satisfied = |n: &String| seen.contains(n) || on_host(n);
            if group
                .iter()
                .any(|a| (!a.is_virtual && satisfied(&a.name)) || a.providers.iter().any(satisfied))
            {
                continue;
            }
            let pick = group.iter().find_map(|a| {
                if !a.is_virtual && graph.deps.contains_key(&a.name) {
                    Some(a.name.clone())
                } else {
                    a.providers
                        .iter()
                        .find(|p| graph.deps.contains_key(*p))
                        .cloned()
                }
            });
            let Some(pick) = pick else {
                let names: Vec<&str> = group.iter().map(|a| a.name.as_str()).collect();
                return Err(format!(
                    "cannot satisfy the dependency of {package} on {}; {UPDATE_HINT}",
                    names.join(" | ")
                ));
            };
            seen.insert(pick.clone());
            queue.push_back(pick);
        }
        chosen.push(package);
    }
    Ok(chosen)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `apt-cache depends --recurse … redis-server` on Debian 12, shortened.
    const DEPENDS: &str = "\
redis-server
  PreDepends: init-system-helpers
  Depends: lsb-base
    sysvinit-utils
  Depends: redis-tools
init-system-helpers
 |Depends: usrmerge
  Depends: usr-is-merged
    usrmerge
lsb-base
  Depends: sysvinit-utils
sysvinit-utils
  Depends: libc6
redis-tools
  Depends: libc6
  Depends: libjemalloc2
  Depends: libsystemd0
    libelogind0
 |Depends: debconf
  Depends: <debconf-2.0>
    cdebconf
    debconf
usrmerge
  Depends: <perl:any>
    perl
usr-is-merged
libc6
libjemalloc2
  Depends: libc6
libsystemd0
libelogind0
debconf
cdebconf
  Depends: debconf
perl
<perl:any>
<debconf-2.0>
";

    fn info(pairs: &[(&str, &str)]) -> HashMap<String, PackageInfo> {
        pairs
            .iter()
            .map(|(p, s)| {
                let i = PackageInfo {
                    version: "1".into(),
                    architecture: "amd64".into(),
                    source: s.to_string(),
                    downloadable: true,
                };
                (p.to_string(), i)
            })
            .collect()
    }

    #[test]
    fn parses_alternatives_and_providers() {
        let g = parse_depends(DEPENDS);
        assert_eq!(g.order.len(), 14);
        assert!(!g.deps.contains_key("<perl:any>"));
        let tools = &g.deps["redis-tools"];
        assert_eq!(tools.len(), 4);
        assert_eq!(tools[2][0].providers, ["libelogind0"]);
        let debconf: Vec<&str> = tools[3].iter().map(|a| a.name.as_str()).collect();
        assert_eq!(debconf, ["debconf", "debconf-2.0"]);
        assert!(tools[3][1].is_virtual);
        assert_eq!(tools[3][1].providers, ["cdebconf", "debconf"]);
        assert_eq!(g.deps["init-system-helpers"].len(), 1);
    }

    #[test]
    fn takes_from_the_host_what_it_has_but_not_the_software_itself() {
        let g = parse_depends(DEPENDS);
        let info = info(&[("redis-server", "redis"), ("redis-tools", "redis")]);
        let listed = vec!["redis-server".to_string()];
        // A host with the usual base system and redis itself installed.
        let host: HashSet<String> = [
            "init-system-helpers",
            "usr-is-merged",
            "sysvinit-utils",
            "libc6",
            "libjemalloc2",
            "libsystemd0",
            "debconf",
            "redis-server",
            "redis-tools",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        assert_eq!(
            choose(&g, &listed, &host, &info).unwrap(),
            ["redis-server", "redis-tools"]
        );
        // A bare host: first alternatives, never libelogind0 or cdebconf.
        let bare: HashSet<String> = ["libc6"].iter().map(|s| s.to_string()).collect();
        let chosen = choose(&g, &listed, &bare, &info).unwrap();
        assert_eq!(
            chosen,
            [
                "redis-server",
                "init-system-helpers",
                "lsb-base",
                "redis-tools",
                "usrmerge",
                "sysvinit-utils",
                "libjemalloc2",
                "libsystemd0",
                "debconf",
                "perl"
            ]
        );
    }

    #[test]
    fn reads_show_and_dpkg_output() {
        let show = "Package: redis-server\nSource: redis\nVersion: 5:7.0.15-1~deb12u10\nArchitecture: amd64\n\
Description: x\n more: text\nFilename: pool/r/redis-server.deb\n\n\
Package: gcc-12-base\nSource: gcc-12 (12.2.0-14)\nVersion: 12.2.0-14+deb12u1\nArchitecture: amd64\n\n";
        let info = parse_show(show);
        assert_eq!(info["redis-server"].source, "redis");
        assert!(info["redis-server"].downloadable);
        assert_eq!(info["gcc-12-base"].source, "gcc-12");
        assert!(!info["gcc-12-base"].downloadable);
        let host = parse_installed("libc6\tinstalled\nfoo\tconfig-files\n");
        let madison = "qemu-utils | 1:7.2+dfsg-7+deb12u18+b3 | http://deb.debian.org/debian bookworm/main amd64 Packages\n\
qemu-utils | 1:7.2+dfsg-7+deb12u15 | http://deb.debian.org/debian-security bookworm-security/main amd64 Packages\n";
        assert_eq!(
            parse_madison(madison).as_deref(),
            Some("1:7.2+dfsg-7+deb12u18+b3")
        );
        assert_eq!(parse_madison(""), None);
        assert!(host.contains("libc6") && !host.contains("foo"));
    }

    #[test]
    fn names_deb_files_as_apt_get_download() {
        assert_eq!(
            deb_file_name("redis-server", "5:7.0.15-1~deb12u10", "amd64"),
            "redis-server_5%3a7.0.15-1~deb12u10_amd64.deb"
        );
        assert!(valid_name("libstdc++6") && valid_name("libc6:amd64"));
        assert!(
            !valid_name("-o") && !valid_name("a") && !valid_name("Redis") && !valid_name("a b")
        );
    }
}
