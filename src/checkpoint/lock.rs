//! An exclusive lock on a state directory, so two daemons (or a daemon and
//! `auditrelay checkpoint set`) never move the same cursors.
//!
//! The lock is an OS file lock (`flock`), released by the kernel when the
//! process dies, so a SIGKILLed daemon never leaves a stale lock behind.

use std::fs::{File, OpenOptions, TryLockError};
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug)]
pub struct StateLock {
    _file: File,
    pub path: PathBuf,
}

impl StateLock {
    /// Takes the lock or says who holds it.
    pub fn acquire(state_dir: &Path) -> anyhow::Result<StateLock> {
        std::fs::create_dir_all(state_dir).map_err(|e| {
            anyhow::anyhow!("state_dir: cannot create {}: {e}", state_dir.display())
        })?;
        let path = state_dir.join("auditrelay.lock");
        let mut file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(|e| {
                anyhow::anyhow!("state_dir: cannot open lock file {}: {e}", path.display())
            })?;
        match file.try_lock() {
            Ok(()) => {}
            Err(TryLockError::WouldBlock) => {
                let holder = std::fs::read_to_string(&path).unwrap_or_default();
                anyhow::bail!(
                    "state_dir {} is in use by another auditrelay process (pid {}); stop it first",
                    state_dir.display(),
                    holder.trim().trim_start_matches("pid=")
                );
            }
            Err(TryLockError::Error(e)) => {
                anyhow::bail!("cannot lock {}: {e}", path.display())
            }
        }
        file.set_len(0)?;
        writeln!(file, "pid={}", std::process::id())?;
        Ok(StateLock { _file: file, path })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_until_the_first_drops() {
        let dir = tempfile::tempdir().unwrap();
        let first = StateLock::acquire(dir.path()).unwrap();
        let err = StateLock::acquire(dir.path()).unwrap_err().to_string();
        assert!(
            err.contains("in use by another auditrelay process"),
            "{err}"
        );
        assert!(err.contains(&std::process::id().to_string()), "{err}");
        drop(first);
        assert!(StateLock::acquire(dir.path()).is_ok());
    }
}
