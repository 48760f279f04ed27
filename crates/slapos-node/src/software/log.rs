//! The build log of one installation attempt: our own notes and the output
//! of every subprocess, appended to `<software_root>/.logs/<md5>.log`.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// How much of the end of the log is read to find its last lines.
const TAIL_BYTES: u64 = 16 * 1024;

pub(super) struct BuildLog {
    path: PathBuf,
    file: File,
}

impl BuildLog {
    /// Starts a fresh log (the previous attempt's is replaced).
    pub(super) fn create(path: &Path) -> io::Result<BuildLog> {
        let file = OpenOptions::new()
            .create(true)
            .write(true)
            .truncate(true)
            .open(path)?;
        // Reopen in append mode so that our notes and the children's output,
        // which share the file, never overwrite each other.
        drop(file);
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(BuildLog {
            path: path.to_path_buf(),
            file,
        })
    }

    pub(super) fn path(&self) -> &Path {
        &self.path
    }

    /// Appends one line of ours, marked so it stands out from tool output.
    /// A log that cannot be written must not fail the installation.
    pub(super) fn note(&self, message: impl std::fmt::Display) {
        let _ = writeln!(&self.file, "== {message}");
    }

    /// A handle for a child's stdout or stderr.
    pub(super) fn stdio(&self) -> io::Result<Stdio> {
        Ok(Stdio::from(self.file.try_clone()?))
    }

    /// The last `lines` lines (at most 16 KiB), lossily decoded.
    pub(super) fn tail(&self, lines: usize) -> String {
        let Ok(mut file) = File::open(&self.path) else {
            return String::new();
        };
        let len = file.metadata().map(|m| m.len()).unwrap_or(0);
        let start = len.saturating_sub(TAIL_BYTES);
        let mut bytes = Vec::new();
        if file.seek(SeekFrom::Start(start)).is_err() || file.read_to_end(&mut bytes).is_err() {
            return String::new();
        }
        let text = String::from_utf8_lossy(&bytes);
        let mut all: Vec<&str> = text.lines().collect();
        if start > 0 && !all.is_empty() {
            all.remove(0); // probably cut in the middle
        }
        let from = all.len().saturating_sub(lines);
        all[from..].join("\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_keeps_the_last_lines() {
        let dir = tempfile::tempdir().unwrap();
        let log = BuildLog::create(&dir.path().join("x.log")).unwrap();
        for i in 0..100 {
            log.note(i);
        }
        let tail = log.tail(3);
        assert_eq!(tail, "== 97\n== 98\n== 99");
        let again = BuildLog::create(&dir.path().join("x.log")).unwrap();
        assert_eq!(again.tail(3), "");
    }
}
