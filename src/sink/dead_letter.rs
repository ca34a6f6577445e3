//! Dead-letter files: one NDJSON file per sink under `state_dir/dead_letter/`
//! holding every event a destination rejected permanently, with the reason,
//! so nothing is lost quietly and it can be inspected or re-sent later
//! (`auditrelay dlq list|replay --sink NAME`).
//!
//! The file has a size cap. A full file does not drop anything: the sink
//! waits inside its delivery ([`DeadLetters::write_waiting`]) holding the
//! events it could not dead-letter, without sending again what the receiver
//! already accepted; its sources pause, the `auditrelay_dead_letter_full`
//! gauge and `/readyz` say why, and one error is logged. It resumes by itself
//! once the file has room (moved away, emptied, or a reload raised
//! `dead_letter_max_bytes`).
//!
//! Every record starts on a line of its own: a write that fails half-way is
//! cut back, and a file found not ending in a newline (a crash mid-write)
//! gets one before the next record, so a torn record never fuses with the
//! next one. [`DeadLetters::read`] still splits fused lines of older files.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use prometheus::IntGaugeVec;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::{debug, error, info, warn};

use crate::event::Event;
use crate::health::Health;
use crate::metrics::metrics;

/// Default cap of one sink's dead-letter file.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;

static FULL: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics().gauge_vec(
        "auditrelay_dead_letter_full",
        "1 while a sink's dead-letter file is at its size cap (the sink then stops confirming).",
        &["sink"],
    )
});

#[derive(Clone)]
pub struct DeadLetters {
    sink: Arc<str>,
    path: PathBuf,
    max_bytes: u64,
    file: Arc<Mutex<Option<(File, u64)>>>,
    /// Where a sink stuck on its dead letters turns unready.
    health: Option<Health>,
}

/// Longest pause between two attempts of a dead-letter write that waits
/// for room: how soon a sink resumes after the file was moved away.
const MAX_WAIT: Duration = Duration::from_secs(5);

/// The record prefix every writer produces (`time` is the first field), to
/// find where a valid record starts in a line fused with a torn one.
const RECORD_START: &str = "{\"time\":\"";

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    sink: &'a str,
    source: &'a str,
    id: Option<&'a str>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    kind: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_time: Option<DateTime<Utc>>,
    error: &'a str,
    /// The event itself when it is JSON, else its bytes as a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_text: Option<std::borrow::Cow<'a, str>>,
}

/// One dead letter read back from a file.
#[derive(Debug, Deserialize)]
pub struct DeadLetter {
    pub time: String,
    pub source: String,
    pub id: Option<String>,
    #[serde(rename = "type")]
    pub kind: Option<String>,
    pub event_time: Option<DateTime<Utc>>,
    pub error: String,
    pub event: Option<Box<RawValue>>,
    pub event_text: Option<String>,
}

impl DeadLetter {
    /// The event as the sink first received it.
    pub fn to_event(&self) -> Event {
        let raw = match (&self.event, &self.event_text) {
            (Some(v), _) => Bytes::copy_from_slice(v.get().as_bytes()),
            (None, Some(t)) => Bytes::copy_from_slice(t.as_bytes()),
            (None, None) => Bytes::from_static(b"null"),
        };
        Event {
            raw,
            id: self.id.as_deref().map(Into::into),
            time: self.event_time,
            kind: self.kind.as_deref().map(Into::into),
        }
    }
}

/// What a dead-letter file holds: the records that parse, and the lines
/// that do not (a torn last line after a crash), kept verbatim.
pub struct DeadLetterFile {
    pub records: Vec<DeadLetter>,
    pub unreadable: Vec<(usize, String)>,
}

impl DeadLetters {
    pub fn new(state_dir: &Path, sink: &str) -> Self {
        DeadLetters {
            sink: sink.into(),
            path: Self::path_for(state_dir, sink),
            max_bytes: DEFAULT_MAX_BYTES,
            file: Arc::new(Mutex::new(None)),
            health: None,
        }
    }

    /// Reports a sink stuck on its dead letters as unready
    /// (`sink.NAME.dead_letter`).
    pub fn with_health(mut self, health: Health) -> Self {
        self.health = Some(health);
        self
    }

    /// As [`write`](Self::write), but a failure (a full file, a full disk)
    /// is waited out instead of returned: the sink's delivery holds the
    /// events until they are written, so it neither drops them nor makes
    /// its caller send again what the receiver already accepted. One error
    /// is logged and the sink is unready while it waits.
    pub async fn write_waiting(&self, source: &str, events: &[Event], error: &str) {
        let component = format!("sink.{}.dead_letter", self.sink);
        let mut backoff = crate::retry::Backoff::new(crate::config::RetryConfig {
            initial: Duration::from_millis(100),
            max: MAX_WAIT,
        });
        let mut stuck = false;
        loop {
            match self.write(source, events, error) {
                Ok(()) => {
                    if stuck {
                        if let Some(h) = &self.health {
                            h.remove(&component);
                        }
                        info!(sink = %self.sink, file = %self.path.display(), "dead-letter file writable again; the sink resumes");
                    }
                    return;
                }
                Err(e) => {
                    if !stuck {
                        stuck = true;
                        error!(sink = %self.sink, source, events = events.len(), error = %format!("{e:#}"), "cannot write dead letters; the sink holds these events and stops confirming until it can");
                        if let Some(h) = &self.health {
                            h.set_unready(&component, format!("{e:#}"));
                        }
                    } else {
                        debug!(sink = %self.sink, error = %format!("{e:#}"), "dead letters still cannot be written");
                    }
                    tokio::time::sleep(backoff.next_delay()).await;
                }
            }
        }
    }

    pub fn with_max_bytes(mut self, max_bytes: u64) -> Self {
        self.max_bytes = max_bytes;
        self
    }

    pub fn path_for(state_dir: &Path, sink: &str) -> PathBuf {
        state_dir.join("dead_letter").join(format!("{sink}.ndjson"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Appends the events with `error` and fsyncs; only then may the caller
    /// treat them as handled.
    pub fn write(&self, source: &str, events: &[Event], error: &str) -> anyhow::Result<()> {
        let mut buf = Vec::new();
        let time = Utc::now().to_rfc3339_opts(SecondsFormat::Millis, true);
        for e in events {
            let raw: Option<&RawValue> = serde_json::from_slice(&e.raw).ok();
            let rec = Record {
                time: time.clone(),
                sink: &self.sink,
                source,
                id: e.id.as_deref(),
                kind: e.kind.as_deref(),
                event_time: e.time,
                error,
                event: raw,
                event_text: if raw.is_none() {
                    Some(String::from_utf8_lossy(&e.raw))
                } else {
                    None
                },
            };
            let start = buf.len();
            serde_json::to_writer(&mut buf, &rec)?;
            // serde escapes newlines inside strings; any left came from the
            // raw event, where they can only be whitespace: keep one line.
            for b in &mut buf[start..] {
                if *b == b'\n' || *b == b'\r' {
                    *b = b' ';
                }
            }
            buf.push(b'\n');
        }
        let mut guard = self
            .file
            .lock()
            .map_err(|_| anyhow::anyhow!("dead-letter file lock poisoned"))?;
        if guard.is_none() {
            *guard = Some(self.open()?);
        }
        let (file, size) = guard
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("dead-letter file not open"))?;
        if *size + buf.len() as u64 > self.max_bytes {
            FULL.with_label_values(&[&self.sink]).set(1);
            let used = *size;
            // Opened afresh next time: the file may be moved away meanwhile.
            *guard = None;
            anyhow::bail!(
                "dead-letter file {} is full ({} of {} bytes): sink {} stops confirming until it is \
                 emptied (`auditrelay dlq replay --sink {}`), moved away, or \
                 sinks.{}.dead_letter_max_bytes is raised",
                self.path.display(),
                used,
                self.max_bytes,
                self.sink,
                self.sink,
                self.sink
            );
        }
        let before = *size;
        if let Err(e) = file.write_all(&buf).and_then(|_| file.sync_data()) {
            // Cut back what was written, so the next record does not follow
            // a torn one; when that fails too, the next open starts it on a
            // new line.
            if file.set_len(before).and_then(|_| file.sync_data()).is_err() {
                *guard = None;
            }
            anyhow::bail!("cannot write dead-letter file {}: {e}", self.path.display());
        }
        *size += buf.len() as u64;
        FULL.with_label_values(&[&self.sink]).set(0);
        metrics()
            .events_dead_lettered
            .with_label_values(&[&self.sink, source])
            .inc_by(events.len() as u64);
        warn!(sink = %self.sink, source, events = events.len(), error, file = %self.path.display(), "events rejected permanently; written to the dead-letter file");
        Ok(())
    }

    /// Opens the file for appending, creating it durably; a file that does
    /// not end in a newline (a crash mid-write) gets one first.
    fn open(&self) -> anyhow::Result<(File, u64)> {
        let cannot = |e: std::io::Error| {
            anyhow::anyhow!("cannot open dead-letter file {}: {e}", self.path.display())
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        if !dir.exists() {
            std::fs::create_dir_all(dir).map_err(cannot)?;
            if let Some(up) = dir.parent() {
                File::open(up).and_then(|d| d.sync_all()).map_err(cannot)?;
            }
        }
        let existed = self.path.exists();
        let mut f = OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&self.path)
            .map_err(cannot)?;
        if !existed {
            File::open(dir).and_then(|d| d.sync_all()).map_err(cannot)?;
        }
        let mut size = f.metadata().map_err(cannot)?.len();
        if size > 0 {
            let mut last = [0u8];
            f.read_exact_at(&mut last, size - 1).map_err(cannot)?;
            if last[0] != b'\n' {
                warn!(sink = %self.sink, file = %self.path.display(), "dead-letter file ends in a torn record (a crash mid-write); the next record starts on a new line");
                f.write_all(b"\n")
                    .and_then(|_| f.sync_data())
                    .map_err(cannot)?;
                size += 1;
            }
        }
        Ok((f, size))
    }

    /// Reads a dead-letter file.
    pub fn read(path: &Path) -> anyhow::Result<DeadLetterFile> {
        let f =
            File::open(path).map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
        let mut out = DeadLetterFile {
            records: Vec::new(),
            unreadable: Vec::new(),
        };
        for (i, line) in BufReader::new(f).lines().enumerate() {
            let line = line.map_err(|e| anyhow::anyhow!("cannot read {}: {e}", path.display()))?;
            if line.trim().is_empty() {
                continue;
            }
            match serde_json::from_str::<DeadLetter>(&line) {
                Ok(r) => out.records.push(r),
                Err(_) => match split_fused(&line) {
                    Some((torn, r)) => {
                        out.unreadable.push((i + 1, torn.to_string()));
                        out.records.push(r);
                    }
                    None => out.unreadable.push((i + 1, line)),
                },
            }
        }
        Ok(out)
    }
}

/// A torn record followed on the same line by a whole one (files written
/// before records were kept on lines of their own): the torn part and the
/// record. The leftmost record start whose rest parses wins, so a record
/// whose event holds a `time` field is never cut inside.
///
/// A candidate is taken only when no record start before it runs on to the
/// end of the line as the beginning of one JSON value: else it may be an
/// object inside the event of a torn record (one that lost only its last
/// bytes), and replaying it would send an event that never was. Such a line
/// (also a record torn right after `"event":` then a whole one, which reads
/// the same) stays unreadable, kept verbatim.
fn split_fused(line: &str) -> Option<(&str, DeadLetter)> {
    let starts: Vec<usize> = line.match_indices(RECORD_START).map(|(at, _)| at).collect();
    let (at, record) = starts.iter().filter(|&&at| at > 0).find_map(|&at| {
        serde_json::from_str::<DeadLetter>(&line[at..])
            .ok()
            .map(|r| (at, r))
    })?;
    let inside_a_torn_record = std::iter::once(0)
        .chain(starts.iter().copied())
        .filter(|&s| s < at)
        .any(|s| {
            serde_json::from_str::<serde::de::IgnoredAny>(&line[s..]).is_err_and(|e| e.is_eof())
        });
    (!inside_a_torn_record).then(|| (&line[..at], record))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(raw: &'static [u8], id: Option<&str>) -> Event {
        Event {
            raw: Bytes::from_static(raw),
            id: id.map(Into::into),
            time: None,
            kind: Some("t".into()),
        }
    }

    #[test]
    fn records_hold_event_and_reason_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::new(dir.path(), "hook");
        let events = [
            ev(b"{\n\"request_id\":\"r1\"}", Some("r1")),
            ev(b"not json", None),
        ];
        dl.write("veza", &events, "HTTP 400: bad field").unwrap();
        let text = std::fs::read_to_string(dl.path()).unwrap();
        assert_eq!(text.lines().count(), 2, "one line per event:\n{text}");
        let back = DeadLetters::read(dl.path()).unwrap();
        assert!(back.unreadable.is_empty());
        assert_eq!(back.records[0].error, "HTTP 400: bad field");
        assert_eq!(back.records[0].id.as_deref(), Some("r1"));
        let again = back.records[0].to_event();
        let v: serde_json::Value = serde_json::from_slice(&again.raw).unwrap();
        assert_eq!(v["request_id"], "r1");
        assert_eq!(again.kind.as_deref(), Some("t"));
        assert_eq!(&back.records[1].to_event().raw[..], b"not json");
    }

    #[test]
    fn a_full_file_refuses_instead_of_dropping() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::new(dir.path(), "hook").with_max_bytes(300);
        dl.write("s", &[ev(b"{\"a\":1}", Some("1"))], "x").unwrap();
        let err = dl
            .write(
                "s",
                &[ev(b"{\"a\":2}", Some("2")), ev(b"{\"a\":3}", Some("3"))],
                "x",
            )
            .unwrap_err();
        assert!(err.to_string().contains("is full"), "{err}");
        assert_eq!(FULL.with_label_values(&["hook"]).get(), 1);
        assert_eq!(DeadLetters::read(dl.path()).unwrap().records.len(), 1);
    }

    /// A dead-letter file holding `text`, read back.
    fn read_text(text: &str) -> DeadLetterFile {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.ndjson");
        std::fs::write(&p, text).unwrap();
        DeadLetters::read(&p).unwrap()
    }

    #[test]
    fn torn_lines_are_kept_apart() {
        let f = read_text(
            "{\"time\":\"t\",\"source\":\"s\",\"error\":\"e\",\"event\":{}}\n{\"time\":\"t\",\"sou",
        );
        assert_eq!(f.records.len(), 1);
        assert_eq!(f.unreadable.len(), 1);
        assert_eq!(f.unreadable[0].0, 2);
    }

    #[test]
    fn a_record_after_a_torn_one_starts_on_its_own_line() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::new(dir.path(), "torn");
        std::fs::create_dir_all(dl.path().parent().unwrap()).unwrap();
        // A crash in the middle of a write left half a record.
        std::fs::write(dl.path(), "{\"time\":\"t\",\"sou").unwrap();
        dl.write("s", &[ev(b"{\"a\":1}", Some("1"))], "x").unwrap();
        let back = DeadLetters::read(dl.path()).unwrap();
        assert_eq!(back.records.len(), 1, "the new record reads back whole");
        assert_eq!(back.records[0].id.as_deref(), Some("1"));
        assert_eq!(back.unreadable.len(), 1);
        assert_eq!(back.unreadable[0].1, "{\"time\":\"t\",\"sou");
    }

    #[test]
    fn a_line_fused_from_a_torn_and_a_whole_record_keeps_the_whole_one() {
        // Written by an earlier version: no newline after the torn part. The
        // event of the whole record holds a `time` field of its own.
        let f = read_text(
            "{\"time\":\"t\",\"sou{\"time\":\"t2\",\"source\":\"s\",\"id\":\"9\",\"error\":\"e\",\"event\":{\"time\":\"x\"}}\n",
        );
        assert_eq!(f.records.len(), 1);
        assert_eq!(f.records[0].id.as_deref(), Some("9"));
        assert_eq!(
            f.records[0].event.as_ref().unwrap().get(),
            "{\"time\":\"x\"}"
        );
        assert_eq!(f.unreadable, vec![(1, "{\"time\":\"t\",\"sou".to_string())]);
    }

    #[test]
    fn a_torn_record_is_never_split_at_an_object_inside_its_event() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::new(dir.path(), "torn");
        // The event has the fields of a record; a crash lost the record's
        // last `}` (and its newline): what is left ends with the event.
        let event = br#"{"time":"2024-05-01T00:00:00Z","source":"okta","error":"denied","event":{"user":"mallory"}}"#;
        dl.write("s", &[ev(event, Some("1"))], "x").unwrap();
        let whole = std::fs::read_to_string(dl.path()).unwrap();
        let torn = whole.trim_end_matches('\n').strip_suffix('}').unwrap();
        std::fs::write(dl.path(), torn).unwrap();
        // The next write starts its record on a new line.
        let dl = DeadLetters::new(dir.path(), "torn");
        dl.write("s", &[ev(b"{\"a\":2}", Some("2"))], "x").unwrap();
        let back = DeadLetters::read(dl.path()).unwrap();
        let ids: Vec<_> = back.records.iter().map(|r| r.id.as_deref()).collect();
        assert_eq!(ids, vec![Some("2")], "only the whole record is replayed");
        assert_eq!(back.unreadable, vec![(1, torn.to_string())]);
        // Behind another torn record on the same line (an older writer).
        let fused = dir.path().join("fused.ndjson");
        std::fs::write(&fused, format!("{{\"time\":\"t\",\"sou{torn}\n")).unwrap();
        let back = DeadLetters::read(&fused).unwrap();
        assert!(back.records.is_empty(), "{:?}", back.records);
        assert_eq!(back.unreadable.len(), 1);
    }

    #[test]
    fn a_new_file_and_its_directory_are_created() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::new(dir.path(), "fresh");
        dl.write("s", &[ev(b"{}", None)], "x").unwrap();
        assert_eq!(DeadLetters::read(dl.path()).unwrap().records.len(), 1);
    }
}
