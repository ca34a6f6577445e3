//! A durable local queue of records on disk (a "spool"), shared by the `webhook_in` source
//! (`state_dir/spool/<source>/`: pushed events) and by sinks with
//! `on_unavailable = "spool"` (`state_dir/sink_spool/<sink>/`: batches the
//! sink could not take yet).
//!
//! Segment files `<seq>.spool` hold a header line, then records
//! `[u32 LE length][u32 LE CRC-32][bytes]`. An append writes its records and
//! fsyncs before it returns, so what was acknowledged survives a crash; a crash in the middle of an append leaves
//! a torn record at the end of the newest segment, which is cut off at the
//! next start (it was never acknowledged). The reader only reads what is
//! synced, and positions are `(segment, offset)` pairs that a checkpoint can
//! hold; segments wholly before the committed position are deleted.
//!
//! One instance at a time: an open spool holds an OS lock on `dir/.lock`.
//! A spool reopened by a reload waits (a little) until the instance it
//! replaces is gone, including a blocking write that instance may still be
//! finishing, so the two never write the same segment.

mod lock;
mod read;
mod segment;
#[cfg(test)]
mod tests;

use std::fs::{self, File, OpenOptions};
use std::io::{self, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use lock::lock_dir;
use segment::{
    create_segment, list_segments, scan_damaged, scan_segment, segment_name, sync_dir, MAGIC,
};
pub(crate) use segment::{record_head, RECORD_HEAD};

/// Where the reader is: the next record starts at `offset` in `segment`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Pos {
    pub segment: u64,
    pub offset: u64,
}

/// The durable end of the spool.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tail {
    pub segment: u64,
    pub synced: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the spool holds {used} bytes, its limit (max_spool_bytes) is {max}: the sinks are not keeping up")]
    Full { used: u64, max: u64 },
    #[error("cannot write the spool: {0}")]
    Io(#[from] io::Error),
}

struct Writer {
    segment: u64,
    file: File,
    len: u64,
    /// Bytes of every segment on disk.
    total: u64,
    /// How far the consumer committed (see [`DiskQueue::release`]): the bytes
    /// before it in its segment are delivered and do not count as full.
    delivered: Pos,
}

impl Writer {
    /// Bytes on disk not yet delivered: what `max_bytes` bounds.
    fn undelivered(&self) -> u64 {
        let delivered = self.delivered.offset.saturating_sub(MAGIC.len() as u64);
        self.total.saturating_sub(delivered)
    }
}

/// What one read returned.
pub struct Chunk {
    pub records: Vec<Bytes>,
    /// Where the next read starts.
    pub next: Pos,
    /// Corrupt data that was skipped (never silently): what and where.
    pub skipped: Vec<String>,
}

pub struct DiskQueue {
    dir: PathBuf,
    segment_bytes: u64,
    max_bytes: u64,
    writer: Mutex<Writer>,
    tail: watch::Sender<Tail>,
    /// The lock on `dir/.lock`, released when the spool is dropped.
    _lock: File,
}

impl DiskQueue {
    /// Opens (creating) the spool in `dir`, cutting a torn record off the
    /// newest segment.
    pub fn open(dir: &Path, segment_bytes: u64, max_bytes: u64) -> io::Result<DiskQueue> {
        fs::create_dir_all(dir)?;
        let lock = lock_dir(dir)?;
        let segments = list_segments(dir)?;
        let mut total = 0;
        for &seq in &segments {
            total += fs::metadata(dir.join(segment_name(seq)))?.len();
        }
        let (mut segment, mut file, mut len) = match segments.last() {
            Some(&seq) => {
                let path = dir.join(segment_name(seq));
                let scan = scan_segment(&path)?;
                let file = OpenOptions::new().read(true).write(true).open(&path)?;
                let actual = file.metadata()?.len();
                if scan.header_missing {
                    // Created but never given its header (a crash right after
                    // the create): it holds nothing acknowledged.
                    tracing::warn!(file = %path.display(), "spool segment has no header (a crash while it was created); writing it");
                    file.set_len(0)?;
                    (&file).write_all(MAGIC)?;
                    file.sync_all()?;
                    total = total - actual + MAGIC.len() as u64;
                    (seq, file, MAGIC.len() as u64)
                } else {
                    if scan.valid < actual {
                        tracing::warn!(file = %path.display(), cut_bytes = actual - scan.valid, "spool segment ends with a torn record (a crash during a write that was never acknowledged); cutting it off");
                        file.set_len(scan.valid)?;
                        file.sync_all()?;
                        total -= actual - scan.valid;
                    }
                    (seq, file, scan.valid)
                }
            }
            None => {
                let (file, len) = create_segment(dir, 1)?;
                total += len;
                (1, file, len)
            }
        };
        if len > MAGIC.len() as u64 {
            if scan_damaged(dir, segment)? {
                tracing::error!(file = %dir.join(segment_name(segment)).display(), "spool segment holds a damaged record; it is skipped when read (logged with its offset)");
            }
            // New records go to a fresh segment: a damaged record is never
            // followed by new ones, and a writer of an earlier instance that
            // is still finishing (a reload) cannot write over them.
            let next = segment + 1;
            let (f, l) = create_segment(dir, next)?;
            total += l;
            (segment, file, len) = (next, f, l);
        }
        Ok(DiskQueue {
            dir: dir.to_path_buf(),
            segment_bytes: segment_bytes.max(MAGIC.len() as u64 + 1),
            max_bytes,
            tail: watch::Sender::new(Tail {
                segment,
                synced: len,
            }),
            writer: Mutex::new(Writer {
                segment,
                file,
                len,
                total,
                delivered: Pos::default(),
            }),
            _lock: lock,
        })
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn lock(&self) -> MutexGuard<'_, Writer> {
        self.writer.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Appends `records` and fsyncs; blocking. Nothing is written when it
    /// fails, as far as the file system lets us undo.
    pub fn append(&self, records: &[&[u8]]) -> Result<(), AppendError> {
        if records.is_empty() {
            return Ok(());
        }
        let size: u64 = records.iter().map(|r| RECORD_HEAD + r.len() as u64).sum();
        let mut w = self.lock();
        // Rotate first: a full segment becomes removable once delivered,
        // even while the spool has no room for this append.
        if w.len >= self.segment_bytes {
            self.rotate(&mut w)?;
        }
        if w.undelivered() + size > self.max_bytes {
            return Err(AppendError::Full {
                used: w.undelivered(),
                max: self.max_bytes,
            });
        }
        let mut buf = Vec::with_capacity(size as usize);
        for r in records {
            buf.extend_from_slice(&record_head(r)?);
            buf.extend_from_slice(r);
        }
        let before = w.len;
        let written = w
            .file
            .seek(SeekFrom::Start(before))
            .and_then(|_| w.file.write_all(&buf))
            .and_then(|_| w.file.sync_data());
        if let Err(e) = written {
            // Undo, so the next append does not follow a half record.
            if w.file
                .set_len(before)
                .and_then(|_| w.file.sync_all())
                .is_err()
            {
                // The tail stays torn: continue in a fresh segment; the
                // reader skips the torn end of this one.
                let _ = self.rotate(&mut w);
            }
            return Err(e.into());
        }
        w.len += size;
        w.total += size;
        self.tail.send_replace(Tail {
            segment: w.segment,
            synced: w.len,
        });
        Ok(())
    }

    /// Continues in a new segment; the current one is sealed.
    fn rotate(&self, w: &mut Writer) -> io::Result<()> {
        let next = w.segment + 1;
        let (file, len) = create_segment(&self.dir, next)?;
        w.segment = next;
        w.file = file;
        w.len = len;
        w.total += len;
        self.tail.send_replace(Tail {
            segment: next,
            synced: len,
        });
        Ok(())
    }

    pub fn tail(&self) -> Tail {
        *self.tail.borrow()
    }

    /// Changes whenever something was appended.
    pub fn subscribe(&self) -> watch::Receiver<Tail> {
        self.tail.subscribe()
    }

    /// Bytes of every segment on disk.
    pub fn bytes(&self) -> u64 {
        self.lock().total
    }

    /// The consumer committed up to `committed`: deletes the segments
    /// before it, and the delivered bytes left in its segment no longer
    /// count against `max_bytes` (else a segment of delivered records
    /// could hold the spool full for good). Disk use may thus exceed
    /// `max_bytes` by up to one segment.
    pub fn release(&self, committed: Pos) -> io::Result<usize> {
        let removed = self.remove_before(committed.segment)?;
        let mut w = self.lock();
        if committed > w.delivered && committed.segment <= w.segment {
            w.delivered = committed;
        }
        Ok(removed)
    }

    /// Deletes the segments before `segment` (never the one being written).
    pub fn remove_before(&self, segment: u64) -> io::Result<usize> {
        let mut removed = 0;
        for seq in list_segments(&self.dir)? {
            if seq >= segment || seq >= self.tail().segment {
                break;
            }
            let path = self.dir.join(segment_name(seq));
            let len = fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            fs::remove_file(&path)?;
            let mut w = self.lock();
            w.total = w.total.saturating_sub(len);
            if w.delivered.segment <= seq {
                w.delivered = Pos::default();
            }
            removed += 1;
        }
        if removed > 0 {
            sync_dir(&self.dir)?;
        }
        Ok(removed)
    }
}
