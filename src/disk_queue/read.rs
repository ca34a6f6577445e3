//! Reading the queue: records from a position, across sealed segments up to
//! what the writer synced, reporting (never hiding) what is damaged.

use std::fs::{self, File};
use std::io::{self, BufReader, Seek, SeekFrom};
use std::sync::Arc;

use bytes::Bytes;

use super::segment::{list_segments, read_record, segment_name, RecordError, MAGIC, RECORD_HEAD};
use super::{Chunk, DiskQueue, Pos};

impl DiskQueue {
    /// [`Self::read`] on a blocking thread, so file reads do not stall the
    /// runtime; errors name the queue as `what` ("spool", "journal") and its
    /// directory.
    pub async fn read_off_runtime<Q>(
        owner: Arc<Q>,
        pos: Pos,
        max_records: usize,
        max_bytes: usize,
        what: &str,
    ) -> anyhow::Result<Chunk>
    where
        Q: AsRef<DiskQueue> + Send + Sync + 'static,
    {
        let queue = owner.clone();
        tokio::task::spawn_blocking(move || {
            AsRef::<DiskQueue>::as_ref(&*queue).read(pos, max_records, max_bytes)
        })
        .await
        .map_err(|e| anyhow::anyhow!("{what} read task failed: {e}"))?
        .map_err(|e| {
            let dir = AsRef::<DiskQueue>::as_ref(&*owner).dir().display();
            anyhow::anyhow!("cannot read the {what} {dir}: {e}")
        })
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
}

impl AsRef<DiskQueue> for DiskQueue {
    fn as_ref(&self) -> &DiskQueue {
        self
    }
}
