//! Python distributions from PyPI (`[install] pypi`, each `name==version`),
//! installed into `<release>/lib` for the host's Python from a wheelhouse in
//! the node's download cache (`<cache>/pypi`):
//!
//! 1. `pip install --no-index --find-links <cache>/pypi --target <release>/lib`:
//!    if every requirement and dependency has its wheel in the cache, that is
//!    all, and nothing was downloaded (`--no-index`: pip cannot reach PyPI);
//! 2. otherwise `pip wheel` downloads (or builds) the wheels of the
//!    requirements and their dependencies into a private directory, reusing
//!    the cached ones; each new wheel enters the cache by a rename (atomic);
//!    then step 1 again, which must now succeed.
//!
//! pip's own HTTP cache is not used (`--no-cache-dir`): the node's cache is
//! the one that counts, shared by every release and software root of the node.

use std::path::Path;

use tokio::process::Command;

use super::download::unique_name;
use super::log::BuildLog;
use super::run_logged;

/// The interpreter the wheels are for: the host's.
fn python() -> &'static str {
    if Path::new("/usr/bin/python3").exists() {
        "/usr/bin/python3"
    } else {
        "python3"
    }
}

/// `python3 -m pip <command>` with the options every call shares, and none
/// of the environment's pip settings that would add another source.
fn pip(command: &str) -> Command {
    let mut cmd = Command::new(python());
    cmd.args(["-m", "pip", command])
        .args(["--disable-pip-version-check", "--no-cache-dir"])
        .env_remove("PIP_FIND_LINKS")
        .env_remove("PIP_NO_INDEX")
        .env_remove("PIP_TARGET")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    cmd
}

/// Installs `requirements` into `lib` from the wheelhouse `wheels`,
/// downloading into it only the wheels it lacks.
pub(super) async fn install(
    requirements: &[String],
    lib: &Path,
    wheels: &Path,
    log: &BuildLog,
) -> Result<(), String> {
    tokio::fs::create_dir_all(wheels)
        .await
        .map_err(|e| format!("cannot create the cache {}: {e}", wheels.display()))?;
    log.note(format!(
        "pip install from the cache {} (no index)",
        wheels.display()
    ));
    if offline_install(requirements, lib, wheels, log)
        .await
        .is_ok()
    {
        log.note(format!(
            "all {} requirements and their dependencies were in the cache: nothing downloaded",
            requirements.len()
        ));
        return Ok(());
    }
    log.note("not every wheel is in the cache: pip wheel downloads the missing ones");
    let _ = tokio::fs::remove_dir_all(lib).await;
    let tmp = wheels.join(unique_name("pip-wheel"));
    let added = download(requirements, wheels, &tmp, log).await;
    let _ = tokio::fs::remove_dir_all(&tmp).await;
    let added = added?;
    log.note(format!("{added} wheels entered the cache"));
    offline_install(requirements, lib, wheels, log)
        .await
        .map_err(|e| format!("pip install from the cache failed after downloading: {e}"))
}

async fn offline_install(
    requirements: &[String],
    lib: &Path,
    wheels: &Path,
    log: &BuildLog,
) -> Result<(), String> {
    let mut cmd = pip("install");
    cmd.args(["--no-index", "--no-warn-script-location", "--quiet"])
        .arg("--find-links")
        .arg(wheels)
        .arg("--target")
        .arg(lib)
        .args(requirements);
    run_logged(&mut cmd, log).await
}

/// `pip wheel` into `tmp`, then each wheel the cache lacks moved into it;
/// returns how many entered the cache.
async fn download(
    requirements: &[String],
    wheels: &Path,
    tmp: &Path,
    log: &BuildLog,
) -> Result<usize, String> {
    let mut cmd = pip("wheel");
    cmd.arg("--wheel-dir")
        .arg(tmp)
        .arg("--find-links")
        .arg(wheels)
        .args(requirements);
    run_logged(&mut cmd, log)
        .await
        .map_err(|e| format!("pip wheel {}: {e}", requirements.join(" ")))?;
    let mut added = 0;
    let mut entries = tokio::fs::read_dir(tmp)
        .await
        .map_err(|e| format!("cannot read {}: {e}", tmp.display()))?;
    while let Some(entry) = entries
        .next_entry()
        .await
        .map_err(|e| format!("cannot read {}: {e}", tmp.display()))?
    {
        let name = entry.file_name();
        if !name.to_string_lossy().ends_with(".whl") {
            continue;
        }
        let dest = wheels.join(&name);
        if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
            continue;
        }
        tokio::fs::rename(entry.path(), &dest)
            .await
            .map_err(|e| format!("cannot store {} in the cache: {e}", dest.display()))?;
        log.note(format!("cached {}", name.to_string_lossy()));
        added += 1;
    }
    Ok(added)
}
