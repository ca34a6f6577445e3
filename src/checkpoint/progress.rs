//! The progress log of a source, beside its checkpoint
//! (`<source>.progress`): which events of its not yet committed batches
//! each sink confirmed, so a restart does not send them to that sink again.
//!
//! Every record is a true claim ("sink S confirmed the events with these
//! keys"), written only after the confirmation. Losing records (a torn
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
    let data = match fs::read(path) {
        Ok(d) => d,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let (records, damage) = decode_log(&data);
    if let Some(why) = damage {
        tracing::warn!(source, file = %path.display(), why, records = records.len(), "progress log ends in a damaged record; the events after it may be sent again");
    }
    Ok(net(records))
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
        self.append_both(records, &[])
    }

    /// Appends confirmations and retirements durably (one write, one
    /// fdatasync). A retirement cancels one earlier confirmation of each of
    /// its keys by its sink: that of a batch about to be committed, which
    /// must not skip anything after the checkpoint moved past it.
    pub fn append_both(
        &mut self,
        records: &[ProgressRecord],
        retired: &[ProgressRecord],
    ) -> io::Result<()> {
        let mut buf = Vec::new();
        for r in records {
            encode_record(r, false, &mut buf);
        }
        for r in retired {
            encode_record(r, true, &mut buf);
        }
        self.file.write_all(&buf)?;
        self.file.sync_data()?;
        self.len += buf.len() as u64;
        Ok(())
    }

    /// Replaces the log by `records` atomically (a crash leaves the old or
    /// the new log), then appends to the new one.
    pub fn rewrite(&mut self, records: &[ProgressRecord]) -> io::Result<()> {
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
        for r in records {
            encode_record(r, false, &mut buf);
        }
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

/// The flag of a retirement in a record's key count (confirmations of
/// older versions never have it).
const RETIRED: u32 = 1 << 31;

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
fn decode_log(data: &[u8]) -> (Vec<(ProgressRecord, bool)>, Option<String>) {
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

fn decode_record(data: &[u8]) -> Result<((ProgressRecord, bool), usize), String> {
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
    let count = (count & !RETIRED) as usize;
    let keys_at = 2 + name_len + 4;
    let key_bytes = payload.get(keys_at..).ok_or("no keys")?;
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
    Ok(((ProgressRecord { sink, keys }, retired), 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(sink: &str, keys: &[u8]) -> ProgressRecord {
        ProgressRecord {
            sink: sink.into(),
            keys: keys.iter().map(|b| [*b; 16]).collect(),
        }
    }

    fn open(dir: &Path) -> ProgressLog {
        ProgressLog::open(dir, dir.join("s.progress"), dir.join(".tmp")).unwrap()
    }

    #[test]
    fn appends_survive_reopen_and_rewrite_replaces() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.progress");
        assert!(load(&path, "s").unwrap().is_empty());
        let mut log = open(dir.path());
        assert!(log.is_empty());
        log.append(&[record("hec", &[1, 2])]).unwrap();
        log.append(&[record("hook", &[3]), record("hec", &[4])])
            .unwrap();
        drop(log);
        let mut log = open(dir.path());
        log.append(&[record("hec", &[5])]).unwrap();
        assert_eq!(
            load(&path, "s").unwrap(),
            vec![
                record("hec", &[1, 2]),
                record("hook", &[3]),
                record("hec", &[4]),
                record("hec", &[5])
            ]
        );
        log.rewrite(&[record("hook", &[9])]).unwrap();
        log.append(&[record("hec", &[7])]).unwrap();
        assert_eq!(
            load(&path, "s").unwrap(),
            vec![record("hook", &[9]), record("hec", &[7])]
        );
        assert_eq!(log.len(), fs::metadata(&path).unwrap().len());
        assert_eq!(fs::read_dir(dir.path().join(".tmp")).unwrap().count(), 0);
        remove(&path).unwrap();
        assert!(load(&path, "s").unwrap().is_empty());
        remove(&path).unwrap();
    }

    #[test]
    fn a_torn_or_damaged_tail_keeps_the_whole_records_before_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.progress");
        let mut log = open(dir.path());
        log.append(&[record("a", &[1]), record("b", &[2, 3])])
            .unwrap();
        let whole = fs::read(&path).unwrap();
        for cut in 1..record_len("b", 2) as usize {
            fs::write(&path, &whole[..whole.len() - cut]).unwrap();
            assert_eq!(
                load(&path, "s").unwrap(),
                vec![record("a", &[1])],
                "cut {cut}"
            );
        }
        let mut flipped = whole.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        fs::write(&path, &flipped).unwrap();
        assert_eq!(load(&path, "s").unwrap(), vec![record("a", &[1])]);
        fs::write(&path, b"garbage").unwrap();
        assert!(load(&path, "s").unwrap().is_empty());
    }
}
