//! Durable per-source checkpoints under `state_dir/checkpoints/`.
//!
//! Each file is a header line with a CRC-32 and the length of the body, then
//! the source's JSON state. Writes go to a temp file that is fsynced, renamed
//! over the old file, and the directory is fsynced, so a crash at any instant
//! leaves either the old or the new checkpoint, never a mix. A file that fails
//! its checksum is an error that stops the daemon: restarting from zero would
//! silently re-send or skip days of events.
//!
//! Every write has a temp file of its own (`.tmp/<source>.<pid>.<n>`): a
//! committer aborted by a reload may still be finishing its write (a
//! blocking task cannot be stopped) while its replacement writes, and the
//! two must never write into, or rename away, each other's file.

mod event_key;
mod lock;
mod progress;
mod remote;

pub use event_key::EventKeyer;
pub use lock::StateLock;
#[cfg(test)]
pub use progress::samples as progress_samples;
pub use progress::{
    pending_len, record_len, remove as remove_progress_log, Appends, EventKey, LoadedProgress,
    PendingRecord, ProgressLog, ProgressRecord,
};
pub use remote::RemoteCheckpoints;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// Numbers the temp files of this process.
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Where temp files go, inside the store's directory.
const TEMP_DIR: &str = ".tmp";

const MAGIC: &str = "auditrelay-checkpoint v1";

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("cannot read checkpoint {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot read checkpoint of source \"{source_name}\" from {place}: {why}")]
    Remote {
        place: String,
        why: String,
        source_name: String,
    },
    #[error(
        "checkpoint {path} is corrupt ({why}); nothing was changed. Inspect it, then either \
         restore it from a backup or remove it to restart source \"{source_name}\" from its \
         start_at (`auditrelay checkpoint reset --source {source_name}`, or delete the file)"
    )]
    Corrupt {
        path: PathBuf,
        why: String,
        source_name: String,
    },
}

/// The checkpoint files of one state directory.
#[derive(Clone, Debug)]
pub struct CheckpointStore {
    dir: PathBuf,
    /// Source checkpoints kept elsewhere (a cluster's engine), not in `dir`.
    remote: Option<Arc<dyn RemoteCheckpoints>>,
}

impl CheckpointStore {
    /// Opens (and creates) `state_dir/checkpoints`.
    pub fn open(state_dir: &Path) -> io::Result<Self> {
        Self::in_dir(&state_dir.join("checkpoints"))
    }

    /// Opens `state_dir/checkpoints` to read only: nothing is created or
    /// cleaned up, since a daemon may be running (`checkpoint show` takes no
    /// state lock) and the temp files there are its writes in progress.
    pub fn open_for_reading(state_dir: &Path) -> Self {
        CheckpointStore {
            dir: state_dir.join("checkpoints"),
            remote: None,
        }
    }

    /// A store in `dir` itself, for state that is not a source's (the
    /// delivered position of a sink spool).
    pub fn in_dir(dir: &Path) -> io::Result<Self> {
        fs::create_dir_all(dir)?;
        remove_stale_temp_files(dir);
        Ok(CheckpointStore {
            dir: dir.to_path_buf(),
            remote: None,
        })
    }

    /// The same store with source checkpoints kept in `remote` instead.
    pub fn with_remote(mut self, remote: Arc<dyn RemoteCheckpoints>) -> Self {
        self.remote = Some(remote);
        self
    }

    pub fn path(&self, source: &str) -> PathBuf {
        self.dir.join(format!("{source}.checkpoint"))
    }

    /// The committed state of `source` as a `T`, for a source that frees
    /// what the pipeline has confirmed (`what` names it in the log): `None`
    /// while there is none, or when it cannot be read (logged; the freeing
    /// waits, nothing is lost).
    pub fn committed<T: serde::de::DeserializeOwned>(&self, source: &str, what: &str) -> Option<T> {
        match self.load(source) {
            Ok(Some(b)) => serde_json::from_slice(&b).ok(),
            Ok(None) => None,
            Err(e) => {
                tracing::warn!(source, error = %e, "cannot read the committed {what}");
                None
            }
        }
    }

    /// The stored state of `source`, or `None` when it has never committed.
    pub fn load(&self, source: &str) -> Result<Option<Vec<u8>>, CheckpointError> {
        if let Some(remote) = &self.remote {
            return remote.load(source).map_err(|why| CheckpointError::Remote {
                place: remote.describe(source),
                why,
                source_name: source.to_string(),
            });
        }
        let path = self.path(source);
        let data = match fs::read(&path) {
            Ok(d) => d,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(CheckpointError::Io { path, source: e }),
        };
        decode(&data)
            .map(Some)
            .map_err(|why| CheckpointError::Corrupt {
                path,
                why,
                source_name: source.to_string(),
            })
    }

    /// Replaces the state of `source` atomically and durably.
    pub fn save(&self, source: &str, state: &[u8]) -> io::Result<()> {
        if let Some(remote) = &self.remote {
            return remote.save(source, state);
        }
        let path = self.path(source);
        let temp_dir = self.dir.join(TEMP_DIR);
        fs::create_dir_all(&temp_dir)?;
        let tmp = temp_dir.join(format!(
            "{source}.{}.{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let written = (|| {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&encode(state))?;
            f.sync_all()?;
            fs::rename(&tmp, &path)
        })();
        if written.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        written?;
        File::open(&self.dir)?.sync_all()
    }

    /// The progress log of `source` (see [`ProgressLog`]).
    pub fn progress_path(&self, source: &str) -> PathBuf {
        self.dir.join(format!("{source}.progress"))
    }

    /// The records of `source`'s progress log, oldest first (none if absent).
    pub fn load_progress(&self, source: &str) -> io::Result<Vec<ProgressRecord>> {
        progress::load(&self.progress_path(source), source)
    }

    /// The confirmations and pending records of `source`'s progress log.
    pub fn load_progress_all(&self, source: &str) -> io::Result<LoadedProgress> {
        progress::load_all(&self.progress_path(source), source)
    }

    /// The key of every source's progress-log event keys (made on first use).
    pub fn event_keyer(&self) -> io::Result<EventKeyer> {
        EventKeyer::load_or_create(
            &self.dir.join(event_key::KEY_FILE),
            &self.dir.join(TEMP_DIR),
        )
    }

    /// Opens `source`'s progress log for appending, creating it when absent.
    pub fn open_progress(&self, source: &str) -> io::Result<ProgressLog> {
        ProgressLog::open(
            &self.dir,
            self.progress_path(source),
            self.dir.join(TEMP_DIR),
        )
    }

    /// Forgets what sinks confirmed of `source`'s uncommitted batches: a
    /// source moved to another position (`checkpoint set`, `reset`) sends
    /// everything from there to every sink again.
    pub fn forget_progress(&self, source: &str) -> io::Result<()> {
        progress::remove(&self.progress_path(source))
    }

    /// Removes the checkpoint of `source`; the source restarts from `start_at`.
    pub fn reset(&self, source: &str) -> io::Result<bool> {
        // A source started over sends everything again.
        self.forget_progress(source)?;
        if let Some(remote) = &self.remote {
            return remote.reset(source);
        }
        match fs::remove_file(self.path(source)) {
            Ok(()) => {
                File::open(&self.dir)?.sync_all()?;
                Ok(true)
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(e),
        }
    }
}

/// Temp files of earlier processes (a crash between write and rename).
/// Those of this process may belong to a write still in progress.
fn remove_stale_temp_files(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir.join(TEMP_DIR)) else {
        return;
    };
    let mine = format!(".{}.", std::process::id());
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().contains(&mine) {
            let _ = fs::remove_file(entry.path());
        }
    }
}

fn encode(state: &[u8]) -> Vec<u8> {
    let header = format!(
        "{MAGIC} crc32={:08x} len={}\n",
        crc32fast::hash(state),
        state.len()
    );
    let mut out = Vec::with_capacity(header.len() + state.len());
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(state);
    out
}

fn decode(data: &[u8]) -> Result<Vec<u8>, String> {
    let nl = data
        .iter()
        .position(|b| *b == b'\n')
        .ok_or("no header line")?;
    let header = std::str::from_utf8(&data[..nl]).map_err(|_| "header is not text")?;
    let rest = header
        .strip_prefix(MAGIC)
        .ok_or_else(|| format!("header does not start with \"{MAGIC}\""))?;
    let mut crc = None;
    let mut len = None;
    for field in rest.split_whitespace() {
        if let Some(v) = field.strip_prefix("crc32=") {
            crc = u32::from_str_radix(v, 16).ok();
        } else if let Some(v) = field.strip_prefix("len=") {
            len = v.parse::<usize>().ok();
        }
    }
    let (crc, len) = match (crc, len) {
        (Some(c), Some(l)) => (c, l),
        _ => return Err("header lacks crc32= or len=".to_string()),
    };
    let body = &data[nl + 1..];
    if body.len() != len {
        return Err(format!(
            "body is {} bytes, header says {len} (truncated write?)",
            body.len()
        ));
    }
    let actual = crc32fast::hash(body);
    if actual != crc {
        return Err(format!(
            "checksum mismatch: header {crc:08x}, body {actual:08x}"
        ));
    }
    Ok(body.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store in a fresh directory, removed when the guard drops.
    fn new_store() -> (tempfile::TempDir, CheckpointStore) {
        let dir = tempfile::tempdir().unwrap();
        let store = CheckpointStore::open(dir.path()).unwrap();
        (dir, store)
    }

    #[test]
    fn round_trip_and_missing() {
        let (_dir, store) = new_store();
        assert!(store.load("veza").unwrap().is_none());
        store.save("veza", br#"{"token":"a"}"#).unwrap();
        store.save("veza", br#"{"token":"b"}"#).unwrap();
        assert_eq!(store.load("veza").unwrap().unwrap(), br#"{"token":"b"}"#);
        let mut progress = store.open_progress("veza").unwrap();
        let confirmed = ProgressRecord {
            sink: "hec".into(),
            keys: vec![[7; 16]],
        };
        progress.append(std::slice::from_ref(&confirmed)).unwrap();
        assert_eq!(store.load_progress("veza").unwrap(), vec![confirmed]);
        assert!(store.reset("veza").unwrap());
        assert!(store.load("veza").unwrap().is_none());
        assert!(
            store.load_progress("veza").unwrap().is_empty(),
            "a reset source sends everything again"
        );
    }

    #[test]
    fn concurrent_writers_never_share_a_temp_file() {
        // An aborted committer still finishing its write next to the new
        // one: every write succeeds and the file always reads back whole.
        let (dir, store) = new_store();
        let writers: Vec<_> = [&b"{\"a\":1}"[..], &[b'x'; 3000][..]]
            .into_iter()
            .map(|state| {
                let store = store.clone();
                std::thread::spawn(move || {
                    for _ in 0..300 {
                        store.save("s", state)?;
                    }
                    Ok::<_, io::Error>(())
                })
            })
            .collect();
        for _ in 0..300 {
            if let Ok(Some(state)) = store.load("s") {
                assert!(state == b"{\"a\":1}" || state == [b'x'; 3000]);
            }
        }
        for w in writers {
            w.join().unwrap().expect("every write succeeds");
        }
        assert!(store.load("s").unwrap().is_some());
        let left = fs::read_dir(dir.path().join("checkpoints").join(TEMP_DIR))
            .unwrap()
            .count();
        assert_eq!(left, 0, "no temp file is left behind");
    }

    #[test]
    fn corruption_is_an_error_naming_file_and_fix() {
        let (_dir, store) = new_store();
        store.save("veza", br#"{"token":"abc"}"#).unwrap();
        let path = store.path("veza");
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 3;
        data[last] ^= 0x20;
        fs::write(&path, &data).unwrap();
        let err = store.load("veza").unwrap_err().to_string();
        assert!(err.contains("checksum mismatch"), "{err}");
        assert!(err.contains(&path.display().to_string()), "{err}");
        assert!(err.contains("checkpoint reset --source veza"), "{err}");

        fs::write(&path, &data[..data.len() - 4]).unwrap();
        let err = store.load("veza").unwrap_err().to_string();
        assert!(err.contains("truncated"), "{err}");

        fs::write(&path, b"garbage").unwrap();
        assert!(store.load("veza").is_err());
    }
}
