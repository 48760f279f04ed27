//! Reading URLs: the manifest (bounded) and the files a release fetches,
//! which go through the node's download cache, `<cache>/sha256/<hex>`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use reqwest::Url;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::log::BuildLog;
use super::InstallError;

/// Where a URL points.
#[derive(Debug, Clone, PartialEq)]
pub(super) enum Location {
    File(PathBuf),
    Http(Url),
}

/// `file://` and absolute paths are local files; `http(s)://` is remote.
pub(super) fn locate(url: &str) -> Result<Location, String> {
    if url.starts_with('/') {
        return Ok(Location::File(PathBuf::from(url)));
    }
    let parsed = Url::parse(url).map_err(|e| format!("{url:?} is not a URL ({e})"))?;
    match parsed.scheme() {
        "http" | "https" => Ok(Location::Http(parsed)),
        "file" => parsed
            .to_file_path()
            .map(Location::File)
            .map_err(|()| format!("{url:?} is not a local file URL")),
        scheme => Err(format!(
            "unsupported URL scheme {scheme:?} in {url:?}: use file://, http:// or https://"
        )),
    }
}

/// Resolves `reference` (absolute or relative, RFC 3986) against the URL of
/// the manifest that contains it.
pub(super) fn resolve(base: &str, reference: &str) -> Result<String, String> {
    let base_url = if base.starts_with('/') {
        Url::from_file_path(base).map_err(|()| format!("{base:?} is not an absolute path"))?
    } else {
        Url::parse(base).map_err(|e| format!("{base:?} is not a URL ({e})"))?
    };
    base_url
        .join(reference)
        .map(String::from)
        .map_err(|e| format!("cannot resolve {reference:?} against {base}: {e}"))
}

/// An error and its causes on one line (reqwest's own message alone says
/// little: "error sending request").
pub(super) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut parts: Vec<String> = vec![error.to_string()];
    let mut source = error.source();
    while let Some(e) = source {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        source = e.source();
    }
    parts.join(": ")
}

/// The manifest's text, at most `limit` bytes.
pub(super) async fn read_manifest(
    http: &reqwest::Client,
    url: &str,
    limit: u64,
) -> Result<String, InstallError> {
    let unreachable = |reason: String| InstallError::Unreachable {
        url: url.to_string(),
        reason,
    };
    let too_large = || InstallError::TooLarge {
        url: url.to_string(),
    };
    let bytes = match locate(url).map_err(|_| InstallError::UnsupportedUrl {
        url: url.to_string(),
    })? {
        Location::File(path) => {
            let meta = tokio::fs::metadata(&path)
                .await
                .map_err(|e| unreachable(format!("{}: {e}", path.display())))?;
            if !meta.is_file() {
                return Err(unreachable(format!("{} is not a file", path.display())));
            }
            if meta.len() > limit {
                return Err(too_large());
            }
            tokio::fs::read(&path)
                .await
                .map_err(|e| unreachable(format!("{}: {e}", path.display())))?
        }
        Location::Http(u) => {
            let mut response = http
                .get(u)
                .send()
                .await
                .map_err(|e| unreachable(error_chain(&e)))?;
            let status = response.status();
            if !status.is_success() {
                return Err(InstallError::HttpStatus {
                    url: url.to_string(),
                    status: status.as_u16(),
                });
            }
            if response.content_length().is_some_and(|n| n > limit) {
                return Err(too_large());
            }
            let mut body = Vec::new();
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| unreachable(error_chain(&e)))?
            {
                body.extend_from_slice(&chunk);
                if body.len() as u64 > limit {
                    return Err(too_large());
                }
            }
            body
        }
    };
    String::from_utf8(bytes).map_err(|_| InstallError::Manifest {
        url: url.to_string(),
        error: crate::manifest::ManifestError::Syntax("the file is not UTF-8 text".into()),
    })
}

/// A name no other writer in this or another process uses at the same time.
pub(super) fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        ".{prefix}-{}-{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// The lower-case hex sha256 of a file.
pub(super) async fn sha256_file(path: &Path) -> std::io::Result<String> {
    let mut file = tokio::fs::File::open(path).await?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file.read(&mut buf).await?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex::encode(hasher.finalize()))
}

/// The path of the file with this sha256 in the cache, fetching `url` into
/// it first unless it is already there. A file that does not have the
/// expected checksum never enters the cache.
pub(super) async fn cached_file(
    http: &reqwest::Client,
    cache: &Path,
    url: &str,
    sha256: &str,
    log: &BuildLog,
) -> Result<PathBuf, String> {
    let sha256 = sha256.to_ascii_lowercase();
    let dest = cache.join(&sha256);
    if tokio::fs::try_exists(&dest).await.unwrap_or(false) {
        match sha256_file(&dest).await {
            Ok(actual) if actual == sha256 => {
                log.note(format!("fetch {url}: in the cache ({})", dest.display()));
                return Ok(dest);
            }
            _ => {
                log.note(format!(
                    "fetch {url}: cache entry {} is damaged, fetching again",
                    dest.display()
                ));
                let _ = tokio::fs::remove_file(&dest).await;
            }
        }
    }
    tokio::fs::create_dir_all(cache)
        .await
        .map_err(|e| format!("cannot create the cache {}: {e}", cache.display()))?;
    let tmp = cache.join(unique_name("download"));
    let result = download(http, url, &tmp, log).await;
    let actual = match result {
        Ok(actual) => actual,
        Err(e) => {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(e);
        }
    };
    if actual != sha256 {
        let _ = tokio::fs::remove_file(&tmp).await;
        return Err(format!(
            "checksum mismatch for {url}: expected sha256 {sha256}, got {actual}"
        ));
    }
    tokio::fs::rename(&tmp, &dest)
        .await
        .map_err(|e| format!("cannot store {} in the cache: {e}", dest.display()))?;
    Ok(dest)
}

/// Copies `url` into `dest`, returning the sha256 of what was written.
async fn download(
    http: &reqwest::Client,
    url: &str,
    dest: &Path,
    log: &BuildLog,
) -> Result<String, String> {
    let write_error = |e: std::io::Error| format!("cannot write {}: {e}", dest.display());
    let mut out = tokio::fs::File::create(dest).await.map_err(write_error)?;
    let mut hasher = Sha256::new();
    let mut size: u64 = 0;
    match locate(url)? {
        Location::File(path) => {
            log.note(format!("fetch {url}: copying {}", path.display()));
            let mut input = tokio::fs::File::open(&path)
                .await
                .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = input
                    .read(&mut buf)
                    .await
                    .map_err(|e| format!("cannot read {}: {e}", path.display()))?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
                out.write_all(&buf[..n]).await.map_err(write_error)?;
                size += n as u64;
            }
        }
        Location::Http(u) => {
            log.note(format!("fetch {url}: downloading"));
            let mut response = http
                .get(u)
                .send()
                .await
                .map_err(|e| format!("cannot download {url}: {}", error_chain(&e)))?;
            let status = response.status();
            if !status.is_success() {
                return Err(format!("cannot download {url}: HTTP status {status}"));
            }
            while let Some(chunk) = response
                .chunk()
                .await
                .map_err(|e| format!("cannot download {url}: {}", error_chain(&e)))?
            {
                hasher.update(&chunk);
                out.write_all(&chunk).await.map_err(write_error)?;
                size += chunk.len() as u64;
            }
        }
    }
    out.flush().await.map_err(write_error)?;
    out.sync_all().await.map_err(write_error)?;
    log.note(format!("fetch {url}: {size} bytes"));
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locates_and_resolves_urls() {
        assert_eq!(
            locate("/srv/a.toml").unwrap(),
            Location::File("/srv/a.toml".into())
        );
        assert_eq!(
            locate("file:///srv/a.toml").unwrap(),
            Location::File("/srv/a.toml".into())
        );
        assert!(matches!(
            locate("https://x.org/a.toml").unwrap(),
            Location::Http(_)
        ));
        assert!(locate("ftp://x.org/a")
            .unwrap_err()
            .contains("unsupported URL scheme"));
        assert!(locate("software.toml").is_err());
        assert_eq!(
            resolve("/srv/r/software.toml", "data/x.tgz").unwrap(),
            "file:///srv/r/data/x.tgz"
        );
        assert_eq!(
            resolve("https://x.org/r/software.toml", "../y.tgz").unwrap(),
            "https://x.org/y.tgz"
        );
        assert_eq!(
            resolve("https://x.org/r/software.toml", "http://z.org/y").unwrap(),
            "http://z.org/y"
        );
    }
}
