//! The progress log of a source, beside its checkpoint
//! (`<source>.progress`): which events of its not yet committed batches
//! each sink confirmed, so a restart does not send them to that sink again.
//!
//! Every record is a true claim, written only after the fact it claims:
//! "sink S confirmed the events with these keys", or (a pending record)
//! "sink S sent the events with these keys in a request the destination
//! knows by this token (HEC: channel and ack id), not confirmed yet". A
//! pending record never counts as a confirmation: after a restart the sink
//! is asked about it first ([`crate::sink::Sink::resolve_pending`]). Losing records (a torn
//! tail, a crash before the append, a compaction racing an append) costs
//! duplicates, never events: the checkpoint alone decides what is
//! refetched. The file is an append log of framed records
//! (`len u32 LE, crc32 u32 LE, payload`), fdatasynced per append, and is
//! rewritten atomically (temp file, fsync, rename) when the pipeline
//! compacts it after commits, so it only covers uncommitted batches.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use std::sync::atomic::{AtomicU64, Ordering};

/// Numbers the temp files of rewrites in this process (the pid is in their
/// name: a store's start removes only other processes' temp files).
static TEMP_SEQ: AtomicU64 = AtomicU64::new(0);

/// Identifies an event across refetches (a digest of its bytes and id);
/// 128 bits, so two different events never share one in practice.
pub type EventKey = [u8; 16];

const MAGIC: &[u8] = b"auditrelay-progress v1\n";
const KEY_LEN: usize = 16;

/// One sink's confirmation of some events.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProgressRecord {
    pub sink: String,
    pub keys: Vec<EventKey>,
}

/// A sink's claim that it sent the events with `keys` in a request the
/// destination can still confirm, named by the sink's own `token`.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PendingRecord {
    pub sink: String,
    pub token: Vec<u8>,
    /// When the request was sent (ms since the Unix epoch), so a restart
    /// asks no longer than the sink would have waited for it.
    pub sent_ms: u64,
    pub keys: Vec<EventKey>,
}

/// What a log holds once retirements cancelled what they retire.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LoadedProgress {
    pub confirmed: Vec<ProgressRecord>,
    pub pending: Vec<PendingRecord>,
}

/// Records to append at once (one write, one fdatasync).
#[derive(Debug, Default)]
pub struct Appends {
    pub confirmed: Vec<ProgressRecord>,
    pub pending: Vec<PendingRecord>,
    /// Each cancels one earlier confirmation of each of its keys.
    pub retired: Vec<ProgressRecord>,
    /// Each cancels one earlier, identical pending record.
    pub retired_pending: Vec<PendingRecord>,
}

impl Appends {
    pub fn is_empty(&self) -> bool {
        self.confirmed.is_empty()
            && self.pending.is_empty()
            && self.retired.is_empty()
            && self.retired_pending.is_empty()
    }
}

/// The open progress log of one source.
pub struct ProgressLog {
    path: PathBuf,
    dir: PathBuf,
    temp_dir: PathBuf,
    file: File,
    /// Bytes in the file, to decide when compacting pays.
    len: u64,
}

/// The records of the progress log at `path`, oldest first; none when
/// there is no log. A torn or damaged record ends the read (logged): what
/// follows it is only a lost chance to skip, not a loss.
pub fn load(path: &Path, source: &str) -> io::Result<Vec<ProgressRecord>> {
    Ok(load_all(path, source)?.confirmed)
}

/// The confirmations and pending records of the log at `path` (see
/// [`load`]).
pub fn load_all(path: &Path, source: &str) -> io::Result<LoadedProgress> {
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(LoadedProgress::default()),
        Err(e) => return Err(e),
    };
    let (records, damage) = decode_log(&data);
    if let Some(why) = damage {
        tracing::warn!(source, file = %path.display(), why, records = records.len(), "progress log ends in a damaged record; the events after it may be sent again");
    }
    let (mut confirmed, mut pending) = (Vec::new(), Vec::new());
    for entry in records {
        match entry {
            Entry::Confirmed(r, retired) => confirmed.push((r, retired)),
            Entry::Pending(r, retired) => pending.push((r, retired)),
        }
    }
    Ok(LoadedProgress {
        confirmed: net(confirmed),
        pending: net_pending(pending),
    })
}

/// The pending records less the retired ones (each retirement cancels one
/// identical record).
fn net_pending(records: Vec<(PendingRecord, bool)>) -> Vec<PendingRecord> {
    let mut retired: HashMap<PendingRecord, u32> = HashMap::new();
    for (r, _) in records.iter().filter(|(_, retired)| *retired) {
        *retired.entry(r.clone()).or_default() += 1;
    }
    records
        .into_iter()
        .filter(|(_, retired)| !retired)
        .filter_map(|(r, _)| match retired.get_mut(&r) {
            Some(n) if *n > 0 => {
                *n -= 1;
                None
            }
            _ => Some(r),
        })
        .collect()
}

/// The confirmations less the retired ones (of batches committed since).
fn net(records: Vec<(ProgressRecord, bool)>) -> Vec<ProgressRecord> {
    let mut retired: HashMap<(String, EventKey), u32> = HashMap::new();
    for (r, _) in records.iter().filter(|(_, retired)| *retired) {
        for k in &r.keys {
            *retired.entry((r.sink.clone(), *k)).or_default() += 1;
        }
    }
    records
        .into_iter()
        .filter(|(_, retired)| !retired)
        .map(|(mut r, _)| {
            r.keys
                .retain(|k| match retired.get_mut(&(r.sink.clone(), *k)) {
                    Some(n) if *n > 0 => {
                        *n -= 1;
                        false
                    }
                    _ => true,
                });
            r
        })
        .filter(|r| !r.keys.is_empty())
        .collect()
}

/// Removes the log at `path`, if there is one.
pub fn remove(path: &Path) -> io::Result<()> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

impl ProgressLog {
    /// Opens the log at `path` (in `dir`) for appending, creating it when
    /// absent; rewrites go through temp files in `temp_dir`.
    pub fn open(dir: &Path, path: PathBuf, temp_dir: PathBuf) -> io::Result<Self> {
        let mut file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(&path)?;
        let mut len = file.metadata()?.len();
        if len == 0 {
            file.write_all(MAGIC)?;
            file.sync_data()?;
            File::open(dir)?.sync_all()?;
            len = MAGIC.len() as u64;
        }
        Ok(ProgressLog {
            path,
            dir: dir.to_path_buf(),
            temp_dir,
            file,
            len,
        })
    }

    /// Appends `records` durably (one write, one fdatasync).
    pub fn append(&mut self, records: &[ProgressRecord]) -> io::Result<()> {
        let mut buf = Vec::new();
        encode_records(records, &[], false, &mut buf);
        self.write_durably(buf)
    }

    /// Appends every kind of record durably (one write, one fdatasync).
    pub fn append_all(&mut self, a: &Appends) -> io::Result<()> {
        let mut buf = Vec::new();
        encode_records(&a.confirmed, &a.pending, false, &mut buf);
        encode_records(&a.retired, &a.retired_pending, true, &mut buf);
        self.write_durably(buf)
    }

    fn write_durably(&mut self, buf: Vec<u8>) -> io::Result<()> {
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Replaces the log by `records` atomically (a crash leaves the old or
    /// the new log), then appends to the new one.
    pub fn rewrite(&mut self, records: &[ProgressRecord]) -> io::Result<()> {
        self.rewrite_all(records, &[])
    }

    /// [`Self::rewrite`] with pending records too.
    pub fn rewrite_all(
        &mut self,
        records: &[ProgressRecord],
        pending: &[PendingRecord],
    ) -> io::Result<()> {
        fs::create_dir_all(&self.temp_dir)?;
        let name = self
            .path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let tmp = self.temp_dir.join(format!(
            "{name}.{}.{}",
            std::process::id(),
            TEMP_SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let mut buf = MAGIC.to_vec();
        encode_records(records, pending, false, &mut buf);
        let written = (|| {
            let mut f = File::create(&tmp)?;
            f.write_all(&buf)?;
            f.sync_all()?;
            fs::rename(&tmp, &self.path)?;
            File::open(&self.dir)?.sync_all()?;
            OpenOptions::new().append(true).read(true).open(&self.path)
        })();
        match written {
            Ok(file) => {
                self.file = file;
                self.len = buf.len() as u64;
                Ok(())
            }
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                Err(e)
            }
        }
    }

    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len <= MAGIC.len() as u64
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// The bytes one record takes in the log.
pub fn record_len(sink: &str, keys: usize) -> u64 {
    (8 + 2 + sink.len() + 4 + keys * KEY_LEN) as u64
}

/// The bytes one pending record takes in the log.
pub fn pending_len(r: &PendingRecord) -> u64 {
    record_len(&r.sink, r.keys.len()) + 2 + r.token.len() as u64 + 8
}

/// The flag of a retirement in a record's key count (confirmations of
/// older versions never have it).
const RETIRED: u32 = 1 << 31;
/// The flag of a pending record in its key count: the keys are followed by
/// the token (`len u16 LE`, bytes) and the send time (`u64 LE`, ms). A
/// version without pending records stops reading at the first one (its
/// length does not match): only duplicates.
const PENDING: u32 = 1 << 30;

/// Confirmations, then pending records (or, with `retired`, the
/// retirements of such records), in the order they are to be read.
fn encode_records(
    confirmed: &[ProgressRecord],
    pending: &[PendingRecord],
    retired: bool,
    out: &mut Vec<u8>,
) {
    for r in confirmed {
        encode_record(r, retired, out);
    }
    for r in pending {
        encode_pending(r, retired, out);
    }
}

fn encode_pending(r: &PendingRecord, retired: bool, out: &mut Vec<u8>) {
    let name = &r.sink.as_bytes()[..r.sink.len().min(u16::MAX as usize)];
    // Tokens are a few dozen bytes; a longer one is not recorded (a lost
    // chance to skip, nothing else).
    let Ok(token_len) = u16::try_from(r.token.len()) else {
        return;
    };
    let mut payload = Vec::with_capacity(pending_len(r) as usize);
    payload.extend_from_slice(&(name.len() as u16).to_le_bytes());
    payload.extend_from_slice(name);
    let flag = PENDING | if retired { RETIRED } else { 0 };
    payload.extend_from_slice(&(r.keys.len() as u32 | flag).to_le_bytes());
    for k in &r.keys {
        payload.extend_from_slice(k);
    }
    payload.extend_from_slice(&token_len.to_le_bytes());
    payload.extend_from_slice(&r.token);
    payload.extend_from_slice(&r.sent_ms.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// One decoded record and whether it is a retirement.
enum Entry {
    Confirmed(ProgressRecord, bool),
    Pending(PendingRecord, bool),
}

fn encode_record(r: &ProgressRecord, retired: bool, out: &mut Vec<u8>) {
    // Sink names are config keys: far below u16::MAX.
    let name = &r.sink.as_bytes()[..r.sink.len().min(u16::MAX as usize)];
    let mut payload = Vec::with_capacity(2 + name.len() + 4 + r.keys.len() * KEY_LEN);
    payload.extend_from_slice(&(name.len() as u16).to_le_bytes());
    payload.extend_from_slice(name);
    let flag = if retired { RETIRED } else { 0 };
    payload.extend_from_slice(&(r.keys.len() as u32 | flag).to_le_bytes());
    for k in &r.keys {
        payload.extend_from_slice(k);
    }
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(&payload).to_le_bytes());
    out.extend_from_slice(&payload);
}

/// The whole records of a log (and whether each is a retirement), and why
/// the read stopped early, if it did.
fn decode_log(data: &[u8]) -> (Vec<Entry>, Option<String>) {
    let mut records = Vec::new();
    let Some(mut rest) = data.strip_prefix(MAGIC) else {
        let why = if data.is_empty() {
            None
        } else {
            Some("no progress-log header".to_string())
        };
        return (records, why);
    };
    let mut offset = MAGIC.len();
    while !rest.is_empty() {
        match decode_record(rest) {
            Ok((record, used)) => {
                records.push(record);
                rest = &rest[used..];
                offset += used;
            }
            Err(why) => return (records, Some(format!("at byte {offset}: {why}"))),
        }
    }
    (records, None)
}

fn decode_record(data: &[u8]) -> Result<(Entry, usize), String> {
    let u32_at = |d: &[u8], at: usize| -> Option<u32> {
        d.get(at..at + 4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    };
    let len = u32_at(data, 0).ok_or("torn record header")? as usize;
    let crc = u32_at(data, 4).ok_or("torn record header")?;
    let payload = data.get(8..8 + len).ok_or("torn record")?;
    if crc32fast::hash(payload) != crc {
        return Err("checksum mismatch".into());
    }
    let name_len = payload
        .get(..2)
        .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
        .ok_or("no sink name")?;
    let sink = payload.get(2..2 + name_len).ok_or("short sink name")?;
    let sink = std::str::from_utf8(sink)
        .map_err(|_| "sink name is not UTF-8")?
        .to_string();
    let count = u32_at(payload, 2 + name_len).ok_or("no key count")?;
    let retired = count & RETIRED != 0;
    let pending = count & PENDING != 0;
    let count = (count & !(RETIRED | PENDING)) as usize;
    let keys_at = 2 + name_len + 4;
    let rest = payload.get(keys_at..).ok_or("no keys")?;
    let (key_bytes, tail) = if pending {
        let keys_end = count.checked_mul(KEY_LEN).ok_or("key count overflows")?;
        let (keys, tail) = rest
            .split_at_checked(keys_end)
            .ok_or("pending record shorter than its keys")?;
        (keys, Some(tail))
    } else {
        (rest, None)
    };
    if key_bytes.len() != count * KEY_LEN {
        return Err(format!("{} key bytes for {count} keys", key_bytes.len()));
    }
    let keys = key_bytes
        .chunks_exact(KEY_LEN)
        .map(|k| {
            let mut key = [0u8; KEY_LEN];
            key.copy_from_slice(k);
            key
        })
        .collect();
    let entry = match tail {
        None => Entry::Confirmed(ProgressRecord { sink, keys }, retired),
        Some(tail) => {
            let token_len = tail
                .get(..2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
                .ok_or("no token length")?;
            let token = tail.get(2..2 + token_len).ok_or("short token")?.to_vec();
            let sent = tail.get(2 + token_len..).ok_or("no send time")?;
            let sent_ms = <[u8; 8]>::try_from(sent)
                .map(u64::from_le_bytes)
                .map_err(|_| format!("{} bytes of send time, not 8", sent.len()))?;
            Entry::Pending(
                PendingRecord {
                    sink,
                    token,
                    sent_ms,
                    keys,
                },
                retired,
            )
        }
    };
    Ok((entry, 8 + len))
}

/// Records for tests, each event key named by one byte (`[b; 16]`).
#[cfg(test)]
pub mod samples {
    use super::{EventKey, PendingRecord, ProgressRecord};

    pub fn keys(bytes: &[u8]) -> Vec<EventKey> {
        bytes.iter().map(|b| [*b; 16]).collect()
    }

    pub fn record(sink: &str, key_bytes: &[u8]) -> ProgressRecord {
        ProgressRecord {
            sink: sink.into(),
            keys: keys(key_bytes),
        }
    }

    /// A pending record sent at 2023-11-14T22:13:20Z.
    pub fn pending(sink: &str, token: &str, key_bytes: &[u8]) -> PendingRecord {
        PendingRecord {
            sink: sink.into(),
            token: token.as_bytes().to_vec(),
            sent_ms: 1_700_000_000_000,
            keys: keys(key_bytes),
        }
    }
}

#[cfg(test)]
#[path = "progress_tests.rs"]
mod tests;
