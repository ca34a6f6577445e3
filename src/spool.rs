//! A durable local queue of records, shared by the `webhook_in` source
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

use std::fs::{self, File, OpenOptions, TryLockError};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

const MAGIC: &[u8] = b"auditrelay-spool v1\n";
/// A record: `[u32 LE length][u32 LE CRC-32][bytes]`.
pub(crate) const RECORD_HEAD: u64 = 8;

/// How long opening waits for a previous instance to let go of the spool.
const LOCK_WAIT: Duration = Duration::from_secs(10);

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
    /// How far the consumer committed (see [`Spool::release`]): the bytes
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

pub struct Spool {
    dir: PathBuf,
    segment_bytes: u64,
    max_bytes: u64,
    writer: Mutex<Writer>,
    tail: watch::Sender<Tail>,
    /// The lock on `dir/.lock`, released when the spool is dropped.
    _lock: File,
}

/// What one read returned.
pub struct Chunk {
    pub records: Vec<Bytes>,
    /// Where the next read starts.
    pub next: Pos,
    /// Corrupt data that was skipped (never silently): what and where.
    pub skipped: Vec<String>,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:020}.spool")
}

/// The head of one record: its length and CRC-32, little-endian. The
/// syslog replay log writes the same records.
pub(crate) fn record_head(record: &[u8]) -> io::Result<[u8; RECORD_HEAD as usize]> {
    let len = u32::try_from(record.len())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "record larger than 4 GiB"))?;
    let mut head = [0u8; RECORD_HEAD as usize];
    head[..4].copy_from_slice(&len.to_le_bytes());
    head[4..].copy_from_slice(&crc32fast::hash(record).to_le_bytes());
    Ok(head)
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// Opens (creating) the spool in `dir`, cutting a torn record off the
    /// newest segment.
    pub fn open(dir: &Path, segment_bytes: u64, max_bytes: u64) -> io::Result<Spool> {
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
        Ok(Spool {
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

    /// The position of the oldest record on disk.
    pub fn start(&self) -> io::Result<Pos> {
        let first = list_segments(&self.dir)?
            .first()
            .copied()
            .unwrap_or(self.tail().segment);
        Ok(Pos {
            segment: first,
            offset: MAGIC.len() as u64,
        })
    }

    /// Reads up to `max_records` records (and about `max_bytes`) from
    /// `pos`; blocking.
    pub fn read(&self, pos: Pos, max_records: usize, max_bytes: usize) -> io::Result<Chunk> {
        let mut out = Chunk {
            records: Vec::new(),
            next: pos,
            skipped: Vec::new(),
        };
        let mut bytes = 0usize;
        let segments = list_segments(&self.dir)?;
        // Each round reads a segment or moves past one: bounded by their number.
        for _ in 0..=segments.len() {
            let tail = self.tail();
            let path = self.dir.join(segment_name(out.next.segment));
            let sealed = out.next.segment < tail.segment;
            let exists = path.exists();
            if !exists || out.next.offset < MAGIC.len() as u64 {
                match (exists, segments.iter().find(|&&s| s > out.next.segment)) {
                    (true, _) => out.next.offset = MAGIC.len() as u64,
                    (false, Some(&s)) if sealed => {
                        out.next = Pos {
                            segment: s,
                            offset: MAGIC.len() as u64,
                        };
                        continue;
                    }
                    _ => return Ok(out),
                }
            }
            let limit = if sealed {
                fs::metadata(&path)?.len()
            } else {
                tail.synced
            };
            if out.next.offset < limit {
                let mut file = BufReader::new(File::open(&path)?);
                file.seek(SeekFrom::Start(out.next.offset))?;
                let mut at = out.next.offset;
                while at < limit && out.records.len() < max_records && bytes < max_bytes {
                    match read_record(&mut file, at, limit) {
                        Ok(r) => {
                            at += RECORD_HEAD + r.len() as u64;
                            bytes += r.len();
                            out.records.push(Bytes::from(r));
                        }
                        Err(RecordError::Checksum { len }) => {
                            out.skipped.push(format!(
                                "{} at offset {at}: a record of {len} bytes fails its checksum; that record is skipped",
                                path.display()
                            ));
                            at += RECORD_HEAD + len;
                            file.seek(SeekFrom::Start(at))?;
                        }
                        Err(RecordError::Cut(why)) => {
                            out.skipped.push(format!(
                                "{} at offset {at}: {why}; the rest of the segment ({} bytes) is skipped",
                                path.display(),
                                limit - at
                            ));
                            at = limit;
                        }
                    }
                }
                out.next.offset = at;
                if out.records.len() >= max_records || bytes >= max_bytes {
                    return Ok(out);
                }
            }
            if !sealed {
                return Ok(out);
            }
            match segments.iter().find(|&&s| s > out.next.segment) {
                Some(&s) => {
                    out.next = Pos {
                        segment: s,
                        offset: MAGIC.len() as u64,
                    }
                }
                None => return Ok(out),
            }
        }
        Ok(out)
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

/// Takes the spool's lock, waiting up to [`LOCK_WAIT`] for a previous
/// instance to drop it.
fn lock_dir(dir: &Path) -> io::Result<File> {
    let path = dir.join(".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is still locked after {}s by another instance of this spool \
                         (the one a reload replaces, still finishing a write)",
                        path.display(),
                        LOCK_WAIT.as_secs()
                    ),
                ))
            }
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}

fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name.strip_suffix(".spool").and_then(|s| s.parse().ok()) {
            out.push(seq);
        }
    }
    out.sort_unstable();
    Ok(out)
}

fn create_segment(dir: &Path, seq: u64) -> io::Result<(File, u64)> {
    let path = dir.join(segment_name(seq));
    let mut file = match OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&path)
    {
        Ok(f) => f,
        // Left by a failed earlier attempt before its header was written:
        // it holds nothing, so it may be reused.
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && holds_no_record(&path)? => {
            let f = OpenOptions::new().read(true).write(true).open(&path)?;
            f.set_len(0)?;
            f
        }
        Err(e) => return Err(e),
    };
    file.write_all(MAGIC)?;
    file.sync_all()?;
    sync_dir(dir)?;
    Ok((file, MAGIC.len() as u64))
}

/// Whether a segment file is empty or holds part of the header at most.
fn holds_no_record(path: &Path) -> io::Result<bool> {
    let data = fs::read(path)?;
    Ok(data.len() <= MAGIC.len() && MAGIC.starts_with(&data))
}

enum RecordError {
    /// The record runs past the end: a torn write, or a corrupt length.
    Cut(String),
    /// The record is whole but its bytes are not what was written.
    Checksum { len: u64 },
}

/// One record at `at`, which must end by `limit`.
fn read_record(file: &mut impl Read, at: u64, limit: u64) -> Result<Vec<u8>, RecordError> {
    let mut head = [0u8; RECORD_HEAD as usize];
    if at + RECORD_HEAD > limit {
        return Err(RecordError::Cut("a record header is cut short".into()));
    }
    file.read_exact(&mut head)
        .map_err(|e| RecordError::Cut(e.to_string()))?;
    let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as u64;
    let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
    if at + RECORD_HEAD + len > limit {
        return Err(RecordError::Cut(format!(
            "a record of {len} bytes runs past the end"
        )));
    }
    let mut data = vec![0u8; len as usize];
    file.read_exact(&mut data)
        .map_err(|e| RecordError::Cut(e.to_string()))?;
    if crc32fast::hash(&data) != crc {
        return Err(RecordError::Checksum { len });
    }
    Ok(data)
}

/// What a scan of a segment found.
struct Scan {
    /// End of the last record before a torn end (where to cut).
    valid: u64,
    /// The file is shorter than the header and a prefix of it.
    header_missing: bool,
}

/// Scans a segment: whole records, skipping damaged ones, up to a torn end.
fn scan_segment(path: &Path) -> io::Result<Scan> {
    if holds_no_record(path)? {
        return Ok(Scan {
            valid: 0,
            header_missing: true,
        });
    }
    let len = fs::metadata(path)?.len();
    let mut file = BufReader::new(File::open(path)?);
    let mut magic = vec![0u8; MAGIC.len()];
    if len < MAGIC.len() as u64 || file.read_exact(&mut magic).is_err() || magic != MAGIC {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{} is not a spool segment (bad header); move it away to continue",
                path.display()
            ),
        ));
    }
    let mut at = MAGIC.len() as u64;
    while at < len {
        match read_record(&mut file, at, len) {
            Ok(r) => at += RECORD_HEAD + r.len() as u64,
            Err(RecordError::Checksum { len: n }) => at += RECORD_HEAD + n,
            Err(RecordError::Cut(_)) => break,
        }
    }
    Ok(Scan {
        valid: at,
        header_missing: false,
    })
}

/// Whether segment `seq` holds a whole record that fails its checksum.
fn scan_damaged(dir: &Path, seq: u64) -> io::Result<bool> {
    let path = dir.join(segment_name(seq));
    let len = fs::metadata(&path)?.len();
    let mut file = BufReader::new(File::open(&path)?);
    file.seek(SeekFrom::Start(MAGIC.len() as u64))?;
    let mut at = MAGIC.len() as u64;
    while at < len {
        match read_record(&mut file, at, len) {
            Ok(r) => at += RECORD_HEAD + r.len() as u64,
            Err(RecordError::Checksum { .. }) => return Ok(true),
            Err(RecordError::Cut(_)) => break,
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(r: &Chunk) -> Vec<String> {
        r.records
            .iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[test]
    fn a_reopened_spool_waits_for_the_instance_it_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let old = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        let start = old.start().unwrap();
        let (opened_tx, opened_rx) = std::sync::mpsc::channel();
        let path = dir.path().to_path_buf();
        let reopening = std::thread::spawn(move || {
            let new = Spool::open(&path, 1 << 20, 1 << 20);
            let _ = opened_tx.send(());
            new
        });
        // The old instance is still writing into its header-only segment.
        assert!(
            opened_rx.recv_timeout(Duration::from_millis(200)).is_err(),
            "the new instance must not open the segment the old one writes"
        );
        old.append(&[b"from-old"]).unwrap();
        drop(old);
        opened_rx
            .recv_timeout(Duration::from_secs(10))
            .expect("opens once the old instance is gone");
        let new = reopening.join().unwrap().unwrap();
        new.append(&[b"from-new"]).unwrap();
        let mut got = Vec::new();
        let mut pos = start;
        for _ in 0..10 {
            let r = new.read(pos, 10, 1 << 20).unwrap();
            got.extend(texts(&r));
            if r.next == pos {
                break;
            }
            pos = r.next;
        }
        assert_eq!(got, vec!["from-old", "from-new"]);
    }

    #[test]
    fn delivered_bytes_of_the_current_segment_do_not_count_as_full() {
        let dir = tempfile::tempdir().unwrap();
        // A segment larger than the spool: it never rotates while full.
        let spool = Spool::open(dir.path(), 1 << 20, 200).unwrap();
        let start = spool.start().unwrap();
        let record = [b'x'; 80];
        spool.append(&[&record]).unwrap();
        spool.append(&[&record]).unwrap();
        assert!(matches!(
            spool.append(&[&record]),
            Err(AppendError::Full { .. })
        ));
        let read = spool.read(start, 10, 1 << 20).unwrap();
        assert_eq!(read.records.len(), 2);
        // Both delivered and committed: room again, in the same segment.
        spool.release(read.next).unwrap();
        spool.append(&[&record]).unwrap();
        spool.append(&[&record]).unwrap();
        assert!(matches!(
            spool.append(&[&record]),
            Err(AppendError::Full { .. })
        ));
    }

    #[test]
    fn append_read_rotate_and_remove() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 64, 1 << 20).unwrap();
        let start = spool.start().unwrap();
        spool.append(&[b"{\"a\":1}", b"{\"b\":2}"]).unwrap();
        spool.append(&[b"{\"c\":3}"]).unwrap();
        spool.append(&[b"{\"d\":4}"]).unwrap();
        assert!(spool.tail().segment > 1, "rotated at 64 bytes");
        let r = spool.read(start, 2, 1 << 20).unwrap();
        assert_eq!(texts(&r), vec!["{\"a\":1}", "{\"b\":2}"]);
        let r2 = spool.read(r.next, 10, 1 << 20).unwrap();
        assert_eq!(texts(&r2), vec!["{\"c\":3}", "{\"d\":4}"]);
        let r3 = spool.read(r2.next, 10, 1 << 20).unwrap();
        assert!(r3.records.is_empty() && r3.next == r2.next);
        let before = spool.bytes();
        assert!(spool.remove_before(r2.next.segment).unwrap() >= 1);
        assert!(spool.bytes() < before);
        // Reading from a removed segment moves on to the next one.
        let r4 = spool.read(start, 10, 1 << 20).unwrap();
        assert!(r4.records.len() <= 2);
    }

    #[test]
    fn torn_tail_is_cut_at_open_and_full_spool_refuses() {
        let dir = tempfile::tempdir().unwrap();
        {
            let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
            spool.append(&[b"{\"ok\":1}"]).unwrap();
        }
        let path = dir.path().join(segment_name(1));
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
        drop(f);
        let spool = Spool::open(dir.path(), 1 << 20, 100).unwrap();
        let r = spool.read(spool.start().unwrap(), 10, 1 << 20).unwrap();
        assert_eq!(texts(&r), vec!["{\"ok\":1}"]);
        assert!(r.skipped.is_empty());
        spool.append(&[b"{\"next\":2}"]).unwrap();
        let r = spool.read(r.next, 10, 1 << 20).unwrap();
        assert_eq!(texts(&r), vec!["{\"next\":2}"]);
        let big = vec![b'x'; 200];
        assert!(matches!(
            spool.append(&[&big]),
            Err(AppendError::Full { .. })
        ));
    }

    #[test]
    fn corruption_in_a_sealed_segment_is_reported_and_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let spool = Spool::open(dir.path(), 40, 1 << 20).unwrap();
        spool
            .append(&[b"{\"first\":1}", b"{\"second\":2}"])
            .unwrap();
        spool.append(&[b"{\"third\":3}"]).unwrap();
        let path = dir.path().join(segment_name(1));
        let mut data = fs::read(&path).unwrap();
        let last = data.len() - 2;
        data[last] ^= 0xff;
        fs::write(&path, &data).unwrap();
        let r = spool.read(spool.start().unwrap(), 10, 1 << 20).unwrap();
        assert_eq!(texts(&r), vec!["{\"first\":1}", "{\"third\":3}"]);
        assert_eq!(r.skipped.len(), 1);
        assert!(r.skipped[0].contains("checksum"), "{:?}", r.skipped);
    }

    #[test]
    fn a_damaged_record_in_the_newest_segment_is_skipped_not_cut() {
        let dir = tempfile::tempdir().unwrap();
        let delivered;
        {
            let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
            for r in [b"{\"r\":1}", b"{\"r\":2}", b"{\"r\":3}"] {
                spool.append(&[r]).unwrap();
            }
            let r = spool.read(spool.start().unwrap(), 10, 1 << 20).unwrap();
            assert_eq!(r.records.len(), 3);
            delivered = r.next;
        }
        // Bit rot in record 1, already delivered.
        let path = dir.path().join(segment_name(1));
        let mut data = fs::read(&path).unwrap();
        let whole = data.len();
        data[MAGIC.len() + 8 + 2] ^= 0xff;
        fs::write(&path, &data).unwrap();
        let spool = Spool::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        assert_eq!(
            fs::metadata(&path).unwrap().len() as usize,
            whole,
            "nothing cut"
        );
        spool.append(&[b"{\"r\":4}"]).unwrap();
        spool.append(&[b"{\"r\":5}"]).unwrap();
        let r = spool.read(delivered, 10, 1 << 20).unwrap();
        assert_eq!(texts(&r), vec!["{\"r\":4}", "{\"r\":5}"], "{:?}", r.skipped);
        // Read from the start: only the damaged record is skipped.
        let all = spool.read(spool.start().unwrap(), 10, 1 << 20).unwrap();
        assert_eq!(
            texts(&all),
            vec!["{\"r\":2}", "{\"r\":3}", "{\"r\":4}", "{\"r\":5}"]
        );
        assert_eq!(all.skipped.len(), 1, "{:?}", all.skipped);
    }
}
