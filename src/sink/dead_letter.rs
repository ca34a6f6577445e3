//! Dead-letter files: one NDJSON file per sink under `state_dir/dead_letter/`
//! holding every event a destination rejected permanently, with the reason,
//! so nothing is lost quietly and it can be inspected or re-sent later.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use chrono::{SecondsFormat, Utc};
use serde::Serialize;
use serde_json::value::RawValue;
use tracing::warn;

use crate::event::Event;
use crate::metrics::metrics;

#[derive(Clone)]
pub struct DeadLetters {
    sink: Arc<str>,
    path: PathBuf,
    file: Arc<Mutex<Option<File>>>,
}

#[derive(Serialize)]
struct Record<'a> {
    time: String,
    sink: &'a str,
    source: &'a str,
    id: Option<&'a str>,
    error: &'a str,
    /// The event itself when it is JSON, else its bytes as a string.
    #[serde(skip_serializing_if = "Option::is_none")]
    event: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    event_text: Option<std::borrow::Cow<'a, str>>,
}

impl DeadLetters {
    pub fn new(state_dir: &Path, sink: &str) -> Self {
        DeadLetters {
            sink: sink.into(),
            path: state_dir.join("dead_letter").join(format!("{sink}.ndjson")),
            file: Arc::new(Mutex::new(None)),
        }
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
            // serde escapes newlines in strings, so any left came from the
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
            *guard = Some(
                OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(&self.path)
                    .map_err(|e| {
                        anyhow::anyhow!("cannot open dead-letter file {}: {e}", self.path.display())
                    })?,
            );
        }
        let file = guard
            .as_mut()
            .ok_or_else(|| anyhow::anyhow!("dead-letter file not open"))?;
        file.write_all(&buf)
            .and_then(|_| file.sync_data())
            .map_err(|e| {
                anyhow::anyhow!("cannot write dead-letter file {}: {e}", self.path.display())
            })?;
        metrics()
            .events_dead_lettered
            .with_label_values(&[&self.sink, source])
            .inc_by(events.len() as u64);
        warn!(sink = %self.sink, source, events = events.len(), error, file = %self.path.display(), "events rejected permanently; written to the dead-letter file");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn records_hold_event_and_reason() {
        let dir = tempfile::tempdir().unwrap();
        let dl = DeadLetters::new(dir.path(), "hook");
        let events = [
            Event {
                raw: Bytes::from_static(br#"{"request_id":"r1"}"#),
                id: Some("r1".into()),
                time: None,
                kind: None,
            },
            Event {
                raw: Bytes::from_static(b"{\"request_id\":\"r2\",\r\n \"note\":\"a\\nb\"}"),
                id: Some("r2".into()),
                time: None,
                kind: None,
            },
            Event {
                raw: Bytes::from_static(b"not json"),
                id: None,
                time: None,
                kind: None,
            },
        ];
        dl.write("veza", &events, "HTTP 400: bad field").unwrap();
        let text = std::fs::read_to_string(dl.path()).unwrap();
        let rows: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 3);
        assert_eq!(rows[0]["event"]["request_id"], "r1");
        assert_eq!(rows[0]["error"], "HTTP 400: bad field");
        // A raw newline between tokens does not break the line.
        assert_eq!(rows[1]["event"]["note"], "a\nb");
        assert_eq!(rows[2]["event_text"], "not json");
    }
}
