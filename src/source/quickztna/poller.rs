//! The journal's poller: polls QuickZTNA every `poll_interval` whatever the
//! sinks do, and appends the new entries to the journal before it moves
//! its watermark (see [`super::journal`] for the order of writes).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::api::Api;
use super::journal::{Journal, JOURNAL_BYTES, JOURNAL_FULL};
use super::window::Window;
use crate::disk_queue::AppendError;
use crate::event::Event;
use crate::health::Health;

/// Entries per journal append (one fsync each).
const APPEND_ENTRIES: usize = 100;
/// Share of `max_journal_bytes` one append may take at most: an append
/// bigger than the whole journal would be refused for good, even empty.
const APPEND_SHARE: u64 = 8;

/// Bytes `events` take in the journal (each record has an 8-byte head).
fn append_bytes(events: &[Event]) -> u64 {
    events.iter().map(|e| e.raw.len() as u64 + 8).sum()
}

/// Splits a poll's entries into appends of at most [`APPEND_ENTRIES`]
/// entries and `max_bytes` bytes (an entry bigger than that goes alone).
fn appends(events: &[Event], max_bytes: u64) -> Vec<&[Event]> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0u64);
    for (i, ev) in events.iter().enumerate() {
        let size = append_bytes(std::slice::from_ref(ev));
        if i > start && (i - start >= APPEND_ENTRIES || bytes + size > max_bytes) {
            out.push(&events[start..i]);
            (start, bytes) = (i, 0);
        }
        bytes += size;
    }
    if start < events.len() {
        out.push(&events[start..]);
    }
    out
}

pub(super) struct Poller {
    pub(super) api: Api,
    pub(super) window: Window,
    pub(super) journal: Arc<Journal>,
    pub(super) health: Health,
    pub(super) poll_interval: Duration,
    pub(super) room: Arc<Notify>,
    pub(super) stop: CancellationToken,
}

impl Poller {
    fn health_key(&self) -> String {
        format!("source.{}.journal", self.window.name)
    }

    /// Polls every `poll_interval` until stopped, whatever the sinks do.
    /// Stops only between a poll's appends, never inside one.
    pub(super) async fn run(mut self) {
        let name = self.window.name.clone();
        let mut next_poll: Option<Instant> = None;
        // Set when an append did not fit: wait for room before polling.
        let mut refused = false;
        let mut full = false;
        let mut write_failed = false;
        loop {
            loop {
                let used = self.journal.spool.bytes();
                if !refused && used < self.journal.max_bytes {
                    break;
                }
                if !full {
                    full = true;
                    JOURNAL_FULL.with_label_values(&[&name]).set(1);
                    let reason = format!(
                        "the journal holds {used} bytes, its limit (max_journal_bytes) is {}: the sinks are not taking events; polling is paused, and if more than the API's cap of entries are created meanwhile the oldest are lost (reported as a data gap)",
                        self.journal.max_bytes
                    );
                    error!(source = %name, "{reason}");
                    self.health.set_unready(&self.health_key(), reason);
                }
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = self.room.notified() => refused = false,
                }
            }
            if full {
                full = false;
                JOURNAL_FULL.with_label_values(&[&name]).set(0);
                info!(source = %name, journal_bytes = self.journal.spool.bytes(), "the journal has room again; polling resumes");
                self.health.set_ready(&self.health_key());
            }
            if let Some(at) = next_poll {
                tokio::select! {
                    _ = self.stop.cancelled() => return,
                    _ = tokio::time::sleep_until(at.into()) => {}
                }
            }
            let start = self.window.next_start();
            let answer = tokio::select! {
                _ = self.stop.cancelled() => return,
                a = self.api.poll(start) => a,
            };
            next_poll = Some(Instant::now() + self.poll_interval);
            let asked_at = answer.asked_at;
            let events = self.window.select(answer, &self.api.fetcher);
            // Small appends, so one always fits a journal with some room.
            let max_append = self.journal.max_bytes / APPEND_SHARE;
            for chunk in appends(&events, max_append) {
                if self.stop.is_cancelled() {
                    // Stopped (a reload, a shutdown): the rest is polled
                    // again by whoever opens the journal next.
                    break;
                }
                match self.append(chunk).await {
                    Ok(()) if write_failed => {
                        write_failed = false;
                        info!(source = %name, "the journal is written again");
                        self.health.set_ready(&self.health_key());
                    }
                    Ok(()) => {}
                    Err(AppendError::Full { max, .. }) if append_bytes(chunk) > max => {
                        error!(source = %name, entry_bytes = append_bytes(chunk), max, "an entry is larger than the whole journal (max_journal_bytes); raise max_journal_bytes: polling stays paused until then");
                        refused = true;
                        break;
                    }
                    Err(AppendError::Full { used, max }) => {
                        warn!(source = %name, used, max, entries = chunk.len(), "the journal has no room for the rest of this poll; it is asked for again once delivered entries are removed");
                        refused = true;
                        break;
                    }
                    Err(AppendError::Io(e)) => {
                        let reason = format!(
                            "cannot write the journal {}: {e}; polling again in poll_interval",
                            self.journal.spool.dir().display()
                        );
                        error!(source = %name, "{reason}");
                        self.health.set_unready(&self.health_key(), reason);
                        write_failed = true;
                        break;
                    }
                }
                self.window.record(chunk, asked_at);
            }
            // Once per poll: entries appended before a crash that comes
            // first are read back from the previous saved position.
            let (journal, state) = (self.journal.clone(), self.window.state.clone());
            let saved = tokio::task::spawn_blocking(move || journal.save_state(&state)).await;
            if let Err(e) = saved.map_err(anyhow::Error::from).and_then(|r| r) {
                error!(source = %name, error = %format!("{e:#}"), "cannot save the journal's poller state");
            }
        }
    }

    /// Appends `chunk` and fsyncs. Not cancelled half-way: the blocking
    /// write finishes even if this future is dropped.
    async fn append(&self, chunk: &[Event]) -> Result<(), AppendError> {
        let records: Vec<Bytes> = chunk.iter().map(|e| e.raw.clone()).collect();
        let journal = self.journal.clone();
        let written = tokio::task::spawn_blocking(move || {
            let refs: Vec<&[u8]> = records.iter().map(|r| &r[..]).collect();
            journal.spool.append(&refs)
        })
        .await
        .map_err(|e| AppendError::Io(std::io::Error::other(e.to_string())))?;
        JOURNAL_BYTES
            .with_label_values(&[&self.window.name])
            .set(self.journal.spool.bytes() as i64);
        written
    }
}
