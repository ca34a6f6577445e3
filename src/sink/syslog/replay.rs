//! The TCP/TLS replay window on disk, so frames the receiver's kernel
//! acknowledged but the receiver then lost (a reset) are sent again even
//! when auditrelay was killed, restarted or reloaded in between.
//!
//! Each sink instance appends every confirmed batch to its own file
//! `state_dir/syslog_replay/SINK/INSTANCE.replay` and `fdatasync`s it
//! *before* the batch is reported confirmed (so before the source
//! checkpoint can pass it). Records are `len u32 LE, crc32 u32 LE, frames`;
//! a torn last record (a crash mid-append) belonged to a batch that was
//! never confirmed and is ignored. When the file outgrows twice the window
//! it is rewritten with just the window (temp file, fsync, rename).
//!
//! An instance holds an `flock` on `INSTANCE.lock` while it lives. A new
//! instance (after a restart, or the replacement built by a reload) adopts
//! the files whose lock it can take — their owner is gone — writes their
//! frames into its own file first, then deletes them, and resends them
//! before its first batch. Two live instances never share a file, and a
//! crash at any point costs duplicates, never frames.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;

use crate::disk_queue::record_head;

/// The first line of a file: `auditrelay-syslog-replay v1 framing=…`. Frames
/// are stored framed, so only an instance with the same framing may send
/// them (octet-counted frames on an LF connection would break the stream).
const MAGIC: &str = "auditrelay-syslog-replay v1 framing=";
/// Records as in the spool (`[len][crc][frames]`, see [`record_head`]).
const RECORD_HEAD: usize = crate::disk_queue::RECORD_HEAD as usize;

/// Frames of recent batches, oldest first, at most `cap` bytes (a single
/// batch larger than `cap` is not kept at all).
#[derive(Default)]
pub struct Window {
    pub batches: VecDeque<Bytes>,
    pub bytes: usize,
}

impl Window {
    pub fn push(&mut self, frames: Bytes, cap: usize) {
        self.bytes += frames.len();
        self.batches.push_back(frames);
        while self.bytes > cap {
            match self.batches.pop_front() {
                Some(old) => self.bytes -= old.len(),
                None => break,
            }
        }
    }

    pub fn clear(&mut self) {
        self.batches.clear();
        self.bytes = 0;
    }

    pub fn is_empty(&self) -> bool {
        self.batches.is_empty()
    }
}

/// One sink instance's replay file.
pub struct ReplayLog {
    dir: PathBuf,
    /// The first line of the file.
    header: Vec<u8>,
    path: PathBuf,
    file: File,
    /// Held for the life of the instance; released by the kernel on a crash.
    _lock: File,
    file_bytes: u64,
    cap: usize,
    /// A write or sync failed: the file may end in part of a record, and
    /// a record appended after it would never be read back (reading stops
    /// at the first torn record). The next append rewrites the file.
    torn: bool,
}

/// Frames found in the files of earlier instances.
pub struct Adopted {
    pub window: Window,
    /// Files whose last record was torn or failed its checksum.
    pub damaged: Vec<PathBuf>,
    /// Files of another framing (or unreadable), removed unsent.
    pub discarded: Vec<PathBuf>,
}

static INSTANCES: AtomicU64 = AtomicU64::new(0);

pub fn replay_dir(state_dir: &Path, sink: &str) -> PathBuf {
    state_dir.join("syslog_replay").join(sink)
}

impl ReplayLog {
    /// Creates this instance's file and adopts what earlier instances of
    /// sink `sink` left behind (already written into the new file).
    pub fn open(
        state_dir: &Path,
        sink: &str,
        cap: usize,
        framing: &str,
    ) -> io::Result<(ReplayLog, Adopted)> {
        let header = format!("{MAGIC}{framing}\n").into_bytes();
        let dir = replay_dir(state_dir, sink);
        fs::create_dir_all(&dir)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let id = format!(
            "{}-{nanos}-{}",
            std::process::id(),
            INSTANCES.fetch_add(1, Ordering::Relaxed)
        );
        // Locked before it gets its `.lock` name: another instance opening
        // at this moment must never find it unlocked and take it for the
        // lock of a dead instance (it would delete it, and our window with
        // it would never be adopted after a crash).
        let fresh = dir.join(format!("{id}.lock.new"));
        let lock = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&fresh)?;
        lock.try_lock().map_err(|e| match e {
            TryLockError::Error(e) => e,
            TryLockError::WouldBlock => io::Error::other("a fresh lock file is locked"),
        })?;
        fs::rename(&fresh, dir.join(format!("{id}.lock")))?;
        let mut adopted = Adopted {
            window: Window::default(),
            damaged: Vec::new(),
            discarded: Vec::new(),
        };
        let mut orphans = Vec::new();
        let mut entries: Vec<PathBuf> = fs::read_dir(&dir)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "lock"))
            .collect();
        // Oldest instance first (by when its lock file was made), so a
        // window over the cap keeps the newest frames.
        entries.sort_by_key(|p| fs::metadata(p).and_then(|m| m.modified()).ok());
        for lock_path in entries {
            if lock_path.file_stem() == Some(id.as_ref()) {
                continue;
            }
            let Ok(other) = OpenOptions::new().write(true).open(&lock_path) else {
                continue;
            };
            if other.try_lock().is_err() {
                continue; // a live instance (the one a reload replaces, still draining)
            }
            let data = lock_path.with_extension("replay");
            match fs::read(&data) {
                Ok(bytes) => match decode(&bytes, &header) {
                    Some((batches, intact)) => {
                        if !intact {
                            adopted.damaged.push(data.clone());
                        }
                        for b in batches {
                            adopted.window.push(b, cap);
                        }
                    }
                    None => adopted.discarded.push(data.clone()),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            orphans.push((lock_path, data, other));
        }
        let path = dir.join(format!("{id}.replay"));
        let mut log = ReplayLog {
            file: write_new(&dir, &path, &header, &adopted.window)?,
            header,
            file_bytes: 0,
            dir,
            path,
            _lock: lock,
            cap,
            torn: false,
        };
        log.file_bytes = log.file.metadata()?.len();
        // Our file holds their frames now: theirs can go.
        for (lock_path, data, _held) in orphans {
            match fs::remove_file(&data) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            // A temp file of a rewrite the owner did not finish.
            let _ = fs::remove_file(data.with_extension("tmp"));
            let _ = fs::remove_file(&lock_path);
        }
        File::open(&log.dir)?.sync_all()?;
        Ok((log, adopted))
    }

    /// Appends a confirmed batch durably; rewrites the file with `window`
    /// (which already holds `frames`) once it is twice the window's size.
    pub fn append(&mut self, frames: &[u8], window: &Window) -> io::Result<()> {
        if self.torn || self.file_bytes > (2 * self.cap as u64).max(1 << 20) {
            return self.rewrite(window);
        }
        let head = record_head(frames)?;
        self.torn = true;
        self.file.write_all(&head)?;
        self.file.write_all(frames)?;
        self.file.sync_data()?;
        self.torn = false;
        self.file_bytes += (head.len() + frames.len()) as u64;
        Ok(())
    }

    /// Replaces the file's contents with `window` (empty after the
    /// receiver closed cleanly: it read everything).
    pub fn rewrite(&mut self, window: &Window) -> io::Result<()> {
        self.file = write_new(&self.dir, &self.path, &self.header, window)?;
        self.torn = false;
        self.file_bytes = self.file.metadata()?.len();
        Ok(())
    }
}

/// Writes `window` to `path` through a temp file and a rename, and returns
/// the file opened for appending.
fn write_new(dir: &Path, path: &Path, header: &[u8], window: &Window) -> io::Result<File> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .open(&tmp)?;
        // Record by record: a copy of the whole window (8 MiB by default)
        // would be held on every rewrite.
        f.write_all(header)?;
        for b in &window.batches {
            f.write_all(&record_head(b)?)?;
            f.write_all(b)?;
        }
        f.sync_all()?;
    }
    fs::rename(&tmp, path)?;
    File::open(dir)?.sync_all()?;
    OpenOptions::new().append(true).open(path)
}

/// The batches of a replay file, and whether it was read to its end
/// without a torn or corrupt record (reading stops at the first one);
/// `None` when it does not start with `header` (another framing). An empty
/// file (a crash before its first write) holds nothing.
fn decode(bytes: &[u8], header: &[u8]) -> Option<(Vec<Bytes>, bool)> {
    if bytes.is_empty() {
        return Some((Vec::new(), true));
    }
    let mut rest = bytes.strip_prefix(header)?;
    let mut out = Vec::new();
    while !rest.is_empty() {
        if rest.len() < RECORD_HEAD {
            return Some((out, false));
        }
        let mut len = [0u8; 4];
        let mut crc = [0u8; 4];
        let mut head = &rest[..RECORD_HEAD];
        // Reading from a slice of the right length cannot fail.
        if head.read_exact(&mut len).is_err() || head.read_exact(&mut crc).is_err() {
            return Some((out, false));
        }
        let len = u32::from_le_bytes(len) as usize;
        let Some(frames) = rest.get(RECORD_HEAD..RECORD_HEAD + len) else {
            return Some((out, false));
        };
        if crc32fast::hash(frames) != u32::from_le_bytes(crc) {
            return Some((out, false));
        }
        out.push(Bytes::copy_from_slice(frames));
        rest = &rest[RECORD_HEAD + len..];
    }
    Some((out, true))
}

#[cfg(test)]
mod tests {
    use super::*;

    const OC: &str = "octet_counting";

    fn frames(w: &Window) -> Vec<&[u8]> {
        w.batches.iter().map(|b| &b[..]).collect()
    }

    #[test]
    fn a_dead_instance_s_window_is_adopted_once_and_a_live_one_s_never() {
        let dir = tempfile::tempdir().unwrap();
        let (mut first, adopted) = ReplayLog::open(dir.path(), "sys", 100, OC).unwrap();
        assert!(adopted.window.is_empty());
        let mut w = Window::default();
        for b in [&b"aaaa"[..], b"bbbb", b"cccc"] {
            w.push(Bytes::copy_from_slice(b), 100);
            first.append(b, &w).unwrap();
        }
        // A reload builds the new instance while the old one still runs.
        let (second, adopted) = ReplayLog::open(dir.path(), "sys", 100, OC).unwrap();
        assert!(
            adopted.window.is_empty(),
            "the live instance's file is its own"
        );
        drop(second);
        // The old one goes (or is SIGKILLed: the kernel drops its lock).
        drop(first);
        let (third, adopted) = ReplayLog::open(dir.path(), "sys", 6, OC).unwrap();
        assert_eq!(
            frames(&adopted.window),
            [&b"cccc"[..]],
            "bounded by the window"
        );
        assert!(adopted.damaged.is_empty());
        drop(third);
        // The third wrote what it adopted into its own file first.
        let (_fourth, adopted) = ReplayLog::open(dir.path(), "sys", 100, OC).unwrap();
        assert_eq!(frames(&adopted.window), [&b"cccc"[..]]);
        let left: Vec<_> = fs::read_dir(replay_dir(dir.path(), "sys"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(
            left.len(),
            2,
            "only the live instance's lock and file: {left:?}"
        );
    }

    #[test]
    fn frames_of_another_framing_are_never_adopted() {
        let dir = tempfile::tempdir().unwrap();
        let (mut lf, _) = ReplayLog::open(dir.path(), "sys", 100, "lf").unwrap();
        let mut w = Window::default();
        w.push(Bytes::from_static(b"<134>1 - - - - - - x\n"), 100);
        lf.append(b"<134>1 - - - - - - x\n", &w).unwrap();
        let lf_file = lf.path.clone();
        drop(lf);
        let (_oc, adopted) = ReplayLog::open(dir.path(), "sys", 100, OC).unwrap();
        assert!(adopted.window.is_empty());
        assert_eq!(adopted.discarded, std::slice::from_ref(&lf_file));
        assert!(!lf_file.exists());
    }

    #[test]
    fn a_torn_or_corrupt_tail_keeps_the_records_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = ReplayLog::open(dir.path(), "sys", 100, OC).unwrap();
        let mut w = Window::default();
        for b in [&b"one"[..], b"two"] {
            w.push(Bytes::copy_from_slice(b), 100);
            log.append(b, &w).unwrap();
        }
        let path = log.path.clone();
        drop(log);
        let mut bytes = fs::read(&path).unwrap();
        let whole = bytes.len();
        bytes.truncate(whole - 1);
        let header = format!("{MAGIC}{OC}\n").into_bytes();
        let one = Some((vec![Bytes::from_static(b"one")], false));
        assert_eq!(decode(&bytes, &header), one);
        bytes.push(b'X');
        assert_eq!(decode(&bytes, &header), one);
        fs::write(&path, &bytes).unwrap();
        let (_log, adopted) = ReplayLog::open(dir.path(), "sys", 100, OC).unwrap();
        assert_eq!(frames(&adopted.window), [&b"one"[..]]);
        assert_eq!(adopted.damaged, [path]);
    }

    /// Runs `name` (an ignored test of this module) in a child process with
    /// `env` set, so it may change process-wide limits.
    fn in_child(name: &str, env: &str, value: &Path) {
        let out = std::process::Command::new(std::env::current_exe().unwrap())
            .args(["--exact", &format!("sink::syslog::replay::tests::{name}")])
            .args(["--ignored", "--nocapture", "--test-threads=1"])
            .env(env, value)
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        assert!(out.status.success(), "{text}");
        assert!(text.contains("1 passed"), "the child ran the test: {text}");
    }

    /// A failed append (here: the file size limit; in life a full disk)
    /// leaves part of a record behind. The batch is not confirmed and is
    /// sent and appended again: what a later instance adopts must still
    /// hold it and every batch after it.
    #[test]
    fn a_batch_appended_after_a_failed_append_is_still_adopted() {
        let dir = tempfile::tempdir().unwrap();
        in_child(
            "failed_append_child",
            "REPLAY_FAILED_APPEND_DIR",
            dir.path(),
        );
    }

    #[test]
    #[ignore = "run by a_batch_appended_after_a_failed_append_is_still_adopted"]
    fn failed_append_child() {
        let Some(dir) = std::env::var_os("REPLAY_FAILED_APPEND_DIR") else {
            return;
        };
        let dir = Path::new(&dir);
        let limit = |soft: libc::rlim_t| {
            let mut lim = libc::rlimit {
                rlim_cur: 0,
                rlim_max: 0,
            };
            // SAFETY: plain libc calls on a valid struct, in a child process
            // of its own.
            unsafe {
                libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
                assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0);
                lim.rlim_cur = soft.min(lim.rlim_max);
                assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
            }
        };
        let (mut log, _) = ReplayLog::open(dir, "sys", 1 << 20, OC).unwrap();
        let mut w = Window::default();
        let (a, b, c) = (vec![b'a'; 100], vec![b'b'; 8000], vec![b'c'; 100]);
        w.push(Bytes::copy_from_slice(&a), 1 << 20);
        log.append(&a, &w).unwrap();
        limit(4096);
        w.push(Bytes::copy_from_slice(&b), 1 << 20);
        assert!(log.append(&b, &w).is_err(), "over the size limit");
        limit(libc::RLIM_INFINITY);
        // Sent again and confirmed this time, then the next batch.
        w.push(Bytes::copy_from_slice(&b), 1 << 20);
        log.append(&b, &w).unwrap();
        w.push(Bytes::copy_from_slice(&c), 1 << 20);
        log.append(&c, &w).unwrap();
        drop(log);
        let (_next, adopted) = ReplayLog::open(dir, "sys", 1 << 20, OC).unwrap();
        let got = frames(&adopted.window);
        assert!(
            got.contains(&&b[..]) && got.last() == Some(&&c[..]),
            "{:?}",
            got.iter().map(|f| f.len()).collect::<Vec<_>>()
        );
        assert!(adopted.damaged.is_empty(), "{:?}", adopted.damaged);
    }

    #[test]
    fn rewriting_keeps_only_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let (mut log, _) = ReplayLog::open(dir.path(), "sys", 4, OC).unwrap();
        let mut w = Window::default();
        let batch = vec![b'x'; 4];
        w.push(Bytes::copy_from_slice(&batch), 4);
        log.file_bytes = 2 << 20; // as if it had grown past twice the window
        log.append(&batch, &w).unwrap();
        assert_eq!(
            fs::metadata(&log.path).unwrap().len() as usize,
            MAGIC.len() + OC.len() + 1 + RECORD_HEAD + 4
        );
        w.clear();
        log.rewrite(&w).unwrap();
        assert_eq!(
            fs::read(&log.path).unwrap(),
            format!("{MAGIC}{OC}\n").as_bytes()
        );
    }
}
