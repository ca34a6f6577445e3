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
//! The file is the only copy of the window: memory holds where each batch
//! of the window is in it (offset and length), and a resend after a reset
//! reads the frames back batch by batch, checking each record's CRC. A
//! batch that cannot be read back fails the send it was part of, which is
//! not confirmed and is tried again, window first (duplicates, never loss).
//!
//! An instance holds an `flock` on `INSTANCE.lock` while it lives. A new
//! instance (after a restart, or the replacement built by a reload) adopts
//! the files whose lock it can take — their owner is gone — copies their
//! records into its own file first, then deletes them, and resends them
//! before its first batch. Two live instances never share a file, and a
//! crash at any point costs duplicates, never frames.
//!
//! Beside its file an instance names, in `INSTANCE.conn`, the connection
//! that carried every frame of its window (written before the first batch
//! confirmed on a new connection is appended, so after the window was
//! resent on it). A new instance skips a dead instance's window when that
//! connection closed cleanly after the kill ([`super::closed`]): the
//! receiver read all of it. Only then: a missing, unreadable or stale name
//! finds no such proof, and the window is resent.

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;

use super::closed::closed_cleanly;
use crate::disk_queue::record_head;

/// The first line of a file: `auditrelay-syslog-replay v1 framing=…`. Frames
/// are stored framed, so only an instance with the same framing may send
/// them (octet-counted frames on an LF connection would break the stream).
const MAGIC: &str = "auditrelay-syslog-replay v1 framing=";
/// Records as in the spool (`[len][crc][frames]`, see [`record_head`]).
const RECORD_HEAD: usize = crate::disk_queue::RECORD_HEAD as usize;

/// Where one batch of the window is: its record starts at `at` in the file
/// and holds `len` bytes of frames.
#[derive(Clone, Copy, Debug, PartialEq)]
struct Span {
    at: u64,
    len: usize,
}

impl Span {
    fn end(&self) -> u64 {
        self.at + (RECORD_HEAD + self.len) as u64
    }
}

/// The batches of the window, oldest first, at most `cap` bytes of frames
/// (a single batch larger than `cap` is not kept at all).
#[derive(Default)]
struct Window {
    spans: VecDeque<Span>,
    bytes: usize,
}

impl Window {
    fn push(&mut self, span: Span, cap: usize) {
        self.bytes += span.len;
        self.spans.push_back(span);
        while self.bytes > cap {
            match self.spans.pop_front() {
                Some(old) => self.bytes -= old.len,
                None => break,
            }
        }
    }

    fn clear(&mut self) {
        self.spans.clear();
        self.bytes = 0;
    }
}

/// One sink instance's replay file.
pub struct ReplayLog {
    dir: PathBuf,
    /// The first line of the file.
    header: Vec<u8>,
    path: PathBuf,
    /// Opened for appending and for reading the window back.
    file: File,
    /// Held for the life of the instance; released by the kernel on a crash.
    _lock: File,
    /// Where the next record goes (the end of the last whole record).
    file_bytes: u64,
    cap: usize,
    window: Window,
    /// A write or sync failed: the file may end in part of a record, and
    /// a record appended after it would never be read back by a later
    /// instance (reading stops at the first torn record). The next append
    /// rewrites the file first.
    torn: bool,
    /// The connection `INSTANCE.conn` names (`None`: not written yet).
    named: Option<Option<Connection>>,
}

pub use super::closed::Connection;

/// What was found in the files of earlier instances.
pub struct Adopted {
    /// Bytes of frames adopted into the window (to resend first).
    pub bytes: usize,
    /// Bytes of frames not adopted: their connection closed cleanly.
    pub read: u64,
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
    /// sink `sink` left behind (copied into the new file, record by record).
    /// A dead instance's last connection is given `close_wait` to show it
    /// closed cleanly (its receiver may still be reading up to our FIN).
    pub fn open(
        state_dir: &Path,
        sink: &str,
        cap: usize,
        framing: &str,
        close_wait: Duration,
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
            bytes: 0,
            read: 0,
            damaged: Vec::new(),
            discarded: Vec::new(),
        };
        let path = dir.join(format!("{id}.replay"));
        let tmp = path.with_extension("tmp");
        let mut out = io::BufWriter::new(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?,
        );
        out.write_all(&header)?;
        let mut copied = Copied {
            skip: false,
            read: 0,
            out,
            at: header.len() as u64,
            window: Window::default(),
            cap,
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
            // Read by the receiver: counted, not copied.
            copied.skip = read_connection(&lock_path.with_extension("conn"))
                .is_some_and(|conn| closed_cleanly(conn, close_wait));
            match File::open(&data) {
                Ok(f) => match copied.records_of(f, &header)? {
                    Some(true) => {}
                    Some(false) => adopted.damaged.push(data.clone()),
                    None => adopted.discarded.push(data.clone()),
                },
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            orphans.push((lock_path, data, other));
        }
        let Copied {
            out,
            at,
            window,
            read,
            ..
        } = copied;
        adopted.read = read;
        out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
        fs::rename(&tmp, &path)?;
        // The new name on disk before theirs are removed below: a power
        // loss in between must not leave the frames under neither.
        File::open(&dir)?.sync_all()?;
        adopted.bytes = window.bytes;
        let mut log = ReplayLog {
            file: open_for_append(&path)?,
            header,
            file_bytes: at,
            dir,
            path,
            _lock: lock,
            cap,
            window,
            torn: false,
            named: None,
        };
        // What the cap left out of the window goes before theirs do: a
        // later instance adopts just this window.
        if log.window.spans.front().map_or(at, |s| s.at) > log.header.len() as u64 {
            log.rewrite()?;
        }
        // Our file holds their frames now: theirs can go.
        for (lock_path, data, _held) in orphans {
            match fs::remove_file(&data) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
            // A temp file of a rewrite the owner did not finish.
            let _ = fs::remove_file(data.with_extension("tmp"));
            let _ = fs::remove_file(lock_path.with_extension("conn"));
            let _ = fs::remove_file(&lock_path);
        }
        File::open(&log.dir)?.sync_all()?;
        Ok((log, adopted))
    }

    /// Appends a confirmed batch durably and adds it to the window; first
    /// rewrites the file with just the window once it is twice its size.
    /// `carried_by`: the connection the batch went out on, after the window
    /// (`None`: not known, which proves nothing later).
    pub fn append(&mut self, frames: &[u8], carried_by: Option<Connection>) -> io::Result<()> {
        if self.named != Some(carried_by) {
            // Before the record: a name written after it could leave a
            // batch of this connection under an older connection's name.
            let name = self.path.with_extension("conn");
            match carried_by {
                Some(conn) => fs::write(&name, conn.to_line())?,
                None => match fs::remove_file(&name) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                    _ => {}
                },
            }
            self.named = Some(carried_by);
        }
        if self.torn || self.file_bytes > (2 * self.cap as u64).max(1 << 20) {
            self.rewrite()?;
        }
        let head = record_head(frames)?;
        self.torn = true;
        self.file.write_all(&head)?;
        self.file.write_all(frames)?;
        self.file.sync_data()?;
        self.torn = false;
        let span = Span {
            at: self.file_bytes,
            len: frames.len(),
        };
        self.file_bytes = span.end();
        self.window.push(span, self.cap);
        Ok(())
    }

    /// Empties the window, on disk too: the receiver closed cleanly, so it
    /// read everything.
    pub fn clear(&mut self) -> io::Result<()> {
        self.window.clear();
        self.rewrite()
    }

    /// Bytes of frames in the window.
    pub fn window_bytes(&self) -> usize {
        self.window.bytes
    }

    /// The frames of the window's `index`th batch (oldest first), read
    /// back from the file and checked against their record's CRC; `None`
    /// past the last batch.
    pub fn read_batch(&self, index: usize) -> io::Result<Option<Bytes>> {
        let Some(span) = self.window.spans.get(index).copied() else {
            return Ok(None);
        };
        let unreadable = |why: String| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "replay record at offset {} of {} ({} bytes of frames): {why}",
                    span.at,
                    self.path.display(),
                    span.len
                ),
            )
        };
        let mut record = vec![0u8; RECORD_HEAD + span.len];
        self.file
            .read_exact_at(&mut record, span.at)
            .map_err(|e| unreadable(e.to_string()))?;
        let frames = &record[RECORD_HEAD..];
        if record_head(frames)?[..] != record[..RECORD_HEAD] {
            return Err(unreadable(
                "length or checksum differs from what was written".into(),
            ));
        }
        Ok(Some(Bytes::from(record).slice(RECORD_HEAD..)))
    }

    /// Replaces the file with one holding just the window's records,
    /// copied from the current file (in the kernel, no buffer of ours).
    fn rewrite(&mut self) -> io::Result<()> {
        // Until the new file is in place, the next append must try again.
        self.torn = true;
        let start = self.header.len() as u64;
        let (from, to) = match (self.window.spans.front(), self.window.spans.back()) {
            (Some(first), Some(last)) => (first.at, last.end()),
            _ => (start, start),
        };
        let tmp = self.path.with_extension("tmp");
        {
            let mut f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&tmp)?;
            f.write_all(&self.header)?;
            // The window's records are contiguous: appended one after another.
            let mut src = &self.file;
            io::Seek::seek(&mut src, io::SeekFrom::Start(from))?;
            let copied = io::copy(&mut src.take(to - from), &mut f)?;
            if copied != to - from {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "{} ends at {} inside the replay window ({from}..{to})",
                        self.path.display(),
                        from + copied
                    ),
                ));
            }
            f.sync_all()?;
        }
        fs::rename(&tmp, &self.path)?;
        File::open(&self.dir)?.sync_all()?;
        self.file = open_for_append(&self.path)?;
        for span in &mut self.window.spans {
            span.at = span.at - from + start;
        }
        self.file_bytes = start + (to - from);
        self.torn = false;
        Ok(())
    }
}

/// The connection an instance's `.conn` file names, if it can be read.
fn read_connection(path: &Path) -> Option<Connection> {
    Connection::from_line(&fs::read_to_string(path).ok()?)
}

fn open_for_append(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).append(true).open(path)
}

/// The adopted records being copied into a new instance's file.
struct Copied {
    /// The records being read are only counted, into `read`.
    skip: bool,
    read: u64,
    out: io::BufWriter<File>,
    /// Where the next record goes in the new file.
    at: u64,
    window: Window,
    cap: usize,
}

impl Copied {
    /// Copies the records of an earlier instance's file, one at a time;
    /// `Some(intact)`: whether it was read to its end without a torn or
    /// corrupt record (copying stops at the first one); `None` when it does
    /// not start with `header` (another framing). An empty file (a crash
    /// before its first write) holds nothing.
    fn records_of(&mut self, file: File, header: &[u8]) -> io::Result<Option<bool>> {
        let mut left = file.metadata()?.len();
        if left == 0 {
            return Ok(Some(true));
        }
        let mut input = BufReader::new(file);
        let mut first = vec![0u8; header.len()];
        if left < header.len() as u64 || input.read_exact(&mut first).is_err() || first != header {
            return Ok(None);
        }
        left -= header.len() as u64;
        let mut frames = Vec::new();
        loop {
            if left == 0 {
                return Ok(Some(true));
            }
            let mut head = [0u8; RECORD_HEAD];
            if left < RECORD_HEAD as u64 {
                return Ok(Some(false));
            }
            input.read_exact(&mut head)?;
            left -= RECORD_HEAD as u64;
            let len = u64::from(u32::from_le_bytes([head[0], head[1], head[2], head[3]]));
            if len > left {
                return Ok(Some(false));
            }
            frames.resize(len as usize, 0);
            input.read_exact(&mut frames)?;
            left -= len;
            if record_head(&frames)? != head {
                return Ok(Some(false));
            }
            if self.skip {
                self.read += frames.len() as u64;
                continue;
            }
            self.out.write_all(&head)?;
            self.out.write_all(&frames)?;
            let span = Span {
                at: self.at,
                len: frames.len(),
            };
            self.at = span.end();
            self.window.push(span, self.cap);
        }
    }
}

/// The window read back batch by batch for a resend, so at most one batch
/// of it is in memory.
pub struct Resend {
    log: Arc<Mutex<ReplayLog>>,
    next: usize,
}

impl Resend {
    pub fn new(log: Arc<Mutex<ReplayLog>>) -> Self {
        Resend { log, next: 0 }
    }

    /// The next batch's frames; `None` after the last one.
    pub async fn next(&mut self) -> io::Result<Option<Bytes>> {
        let (log, index) = (self.log.clone(), self.next);
        let batch = tokio::task::spawn_blocking(move || lock(&log).read_batch(index))
            .await
            .map_err(io::Error::other)??;
        self.next += 1;
        Ok(batch)
    }
}

/// The log, also after a panic elsewhere while it was held (it holds no
/// invariant a panic could break halfway: `torn` covers a failed write).
pub fn lock(log: &Mutex<ReplayLog>) -> std::sync::MutexGuard<'_, ReplayLog> {
    log.lock().unwrap_or_else(|p| p.into_inner())
}

#[cfg(test)]
#[path = "replay_tests.rs"]
mod tests;
