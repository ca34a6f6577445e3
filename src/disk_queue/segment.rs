//! The segment files on disk: `<seq>.spool`, a header line, then records
//! `[u32 LE length][u32 LE CRC-32][bytes]`; creating, listing and scanning them.

use std::fs::{self, File, OpenOptions};
use std::io::{self, BufReader, Read, Seek, SeekFrom, Write};
use std::path::Path;

pub(super) const MAGIC: &[u8] = b"auditrelay-spool v1\n";
/// A record: `[u32 LE length][u32 LE CRC-32][bytes]`.
pub(crate) const RECORD_HEAD: u64 = 8;

pub(super) fn segment_name(seq: u64) -> String {
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

pub(super) fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

pub(super) fn list_segments(dir: &Path) -> io::Result<Vec<u64>> {
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

pub(super) fn create_segment(dir: &Path, seq: u64) -> io::Result<(File, u64)> {
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
pub(super) fn holds_no_record(path: &Path) -> io::Result<bool> {
    let data = fs::read(path)?;
    Ok(data.len() <= MAGIC.len() && MAGIC.starts_with(&data))
}

pub(super) enum RecordError {
    /// The record runs past the end: a torn write, or a corrupt length.
    Cut(String),
    /// The record is whole but its bytes are not what was written.
    Checksum { len: u64 },
}

/// One record at `at`, which must end by `limit`.
pub(super) fn read_record(
    file: &mut impl Read,
    at: u64,
    limit: u64,
) -> Result<Vec<u8>, RecordError> {
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
pub(super) struct Scan {
    /// End of the last record before a torn end (where to cut).
    pub(super) valid: u64,
    /// The file is shorter than the header and a prefix of it.
    pub(super) header_missing: bool,
}

/// Scans a segment: whole records, skipping damaged ones, up to a torn end.
pub(super) fn scan_segment(path: &Path) -> io::Result<Scan> {
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
pub(super) fn scan_damaged(dir: &Path, seq: u64) -> io::Result<bool> {
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
