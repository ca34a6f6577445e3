//! Dead-letter files: one NDJSON file per sink under `state_dir/dead_letter/`
//! holding every event a destination rejected permanently, with the reason,
//! so nothing is lost quietly and it can be inspected or re-sent later
//! (`auditrelay dlq list|replay --sink NAME`).
//!
//! The file has a size cap. A full file does not drop anything: the write
//! fails, the sink stops confirming, its sources pause, and the
//! `auditrelay_dead_letter_full` gauge and `/readyz` say why.

use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock, Mutex};

use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use prometheus::{IntGaugeVec, Opts};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::warn;

use crate::event::Event;
use crate::metrics::metrics;

/// Default cap of one sink's dead-letter file.
pub const DEFAULT_MAX_BYTES: u64 = 1024 * 1024 * 1024;

static FULL: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics().register(
        IntGaugeVec::new(
            Opts::new(
                "auditrelay_dead_letter_full",
                "1 while a sink's dead-letter file is at its size cap (the sink then stops confirming).",
            ),
            &["sink"],
        )
        .expect("metric definition is valid"),
    )
});

#[derive(Clone)]
pub struct DeadLetters {
    sink: Arc<str>,
    path: PathBuf,
    max_bytes: u64,
    file: Arc<Mutex<Option<(File, u64)>>>,
}

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
            if let Some(dir) = self.path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)
                .map_err(|e| {
                    anyhow::anyhow!("cannot open dead-letter file {}: {e}", self.path.display())
                })?;
            let size = f.metadata()?.len();
            *guard = Some((f, size));
        }
        let (file, size) = guard
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("dead-letter file not open"))?;
        if *size + buf.len() as u64 > self.max_bytes {
            FULL.with_label_values(&[&self.sink]).set(1);
            anyhow::bail!(
                "dead-letter file {} is full ({} of {} bytes): sink {} stops confirming until it is \
                 emptied (`auditrelay dlq replay --sink {}`) or moved away",
                self.path.display(),
                size,
                self.max_bytes,
                self.sink,
                self.sink
            );
        }
        file.write_all(&buf)
            .and_then(|_| file.sync_data())
            .map_err(|e| {
                anyhow::anyhow!("cannot write dead-letter file {}: {e}", self.path.display())
            })?;
        *size += buf.len() as u64;
        FULL.with_label_values(&[&self.sink]).set(0);
        metrics()
            .events_dead_lettered
            .with_label_values(&[&self.sink, source])
            .inc_by(events.len() as u64);
        warn!(sink = %self.sink, source, events = events.len(), error, file = %self.path.display(), "events rejected permanently; written to the dead-letter file");
        Ok(())
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
                Err(_) => out.unreadable.push((i + 1, line)),
            }
        }
        Ok(out)
    }
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

    #[test]
    fn torn_lines_are_kept_apart() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.ndjson");
        std::fs::write(
            &p,
            "{\"time\":\"t\",\"source\":\"s\",\"error\":\"e\",\"event\":{}}\n{\"time\":\"t\",\"sou",
        )
        .unwrap();
        let f = DeadLetters::read(&p).unwrap();
        assert_eq!(f.records.len(), 1);
        assert_eq!(f.unreadable.len(), 1);
        assert_eq!(f.unreadable[0].0, 2);
    }
}
