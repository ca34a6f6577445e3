//! Writing to the spool: a batch becomes records of at most a quarter of the
//! spool, appended in order; a full spool makes the sources wait (never a drop).

use std::sync::atomic::Ordering;

use bytes::Bytes;
use tracing::{info, warn};

use super::batch_record::encode_batch;
use super::drainer::deliver_until_confirmed;
use super::metrics::SPOOL_METRICS;
use super::SpoolingSink;
use crate::disk_queue::AppendError;
use crate::event::Event;

impl SpoolingSink {
    /// Writes a batch to the spool, waiting while it is full, as records
    /// of at most a quarter of the spool each (in order), so any batch fits.
    /// `id` names the batch's first record.
    pub(super) async fn append(
        &self,
        id: u64,
        source: &str,
        events: &[Event],
    ) -> anyhow::Result<()> {
        let shared = &self.shared;
        {
            let mut s = shared.state();
            s.backlog = true;
            s.appending += 1;
        }
        let mut result = Ok(());
        let mut first = Some(id);
        for part in split_for_spool(events, shared.max_bytes / 4) {
            let id = first
                .take()
                .unwrap_or_else(|| shared.next_id.fetch_add(1, Ordering::Relaxed));
            let record = encode_batch(id, source, part);
            if record.len() as u64 > shared.max_bytes / 2 {
                // One event too large for the spool: let the spool empty
                // (so order holds), send it directly, then go on spooling.
                warn!(sink = %shared.name, source, bytes = record.len(), spool_max_bytes = shared.max_bytes, "an event larger than half the spool waits for the spool to empty and is sent directly");
                shared.state().appending -= 1;
                shared.changed.notify_one();
                self.wait_until_empty().await;
                deliver_until_confirmed(&*self.inner, &shared.name, source, part, self.retry).await;
                let mut s = shared.state();
                s.backlog = true;
                s.appending += 1;
                continue;
            }
            result = self.append_record(record).await;
            if result.is_err() {
                break;
            }
            SPOOL_METRICS
                .spooled
                .with_label_values(&[&shared.name])
                .inc();
        }
        shared.state().appending -= 1;
        shared.changed.notify_one();
        shared.update_bytes();
        result
    }

    /// Waits until the drainer has emptied the spool.
    pub(super) async fn wait_until_empty(&self) {
        loop {
            let emptied = self.shared.emptied.notified();
            tokio::pin!(emptied);
            emptied.as_mut().enable();
            if !self.shared.state().backlog {
                return;
            }
            emptied.await;
        }
    }

    async fn append_record(&self, record: Bytes) -> anyhow::Result<()> {
        let shared = &self.shared;
        let mut full = false;
        loop {
            let room = shared.space.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            let (writer, data) = (shared.clone(), record.clone());
            let appended = tokio::task::spawn_blocking(move || writer.spool.append(&[&data]))
                .await
                .map_err(|e| anyhow::anyhow!("spool task failed: {e}"))?;
            match appended {
                Ok(()) => {
                    if full {
                        info!(sink = %shared.name, "spool has room again; the sources go on");
                        SPOOL_METRICS.full.with_label_values(&[&shared.name]).set(0);
                        shared.health.set_ready(&shared.health_key());
                    }
                    return Ok(());
                }
                Err(AppendError::Full { used, max }) => {
                    if !full {
                        warn!(sink = %shared.name, used_bytes = used, spool_max_bytes = max, "spool full: the sources of this sink wait until it delivers (nothing is dropped)");
                        SPOOL_METRICS.full.with_label_values(&[&shared.name]).set(1);
                        shared.health.set_unready(
                            &shared.health_key(),
                            format!("spool full ({used} of {max} bytes); its sources wait"),
                        );
                        full = true;
                    }
                    // Delivered records in a sealed segment are freed by
                    // the drainer: make sure it looks.
                    shared.changed.notify_one();
                    room.await;
                }
                Err(AppendError::Io(e)) => {
                    return Err(anyhow::anyhow!(
                        "cannot write the spool of sink {}: {e}",
                        shared.name
                    ))
                }
            }
        }
    }
}

/// Cuts a batch into runs whose records stay under `max_record` bytes (a
/// single larger event is a run of its own).
pub(super) fn split_for_spool(events: &[Event], max_record: u64) -> Vec<&[Event]> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0u64);
    for (i, e) in events.iter().enumerate() {
        let this = 40
            + e.raw.len() as u64
            + e.id.as_ref().map_or(0, |s| s.len() as u64)
            + e.kind.as_ref().map_or(0, |s| s.len() as u64);
        if i > start && size + this > max_record {
            out.push(&events[start..i]);
            (start, size) = (i, 0);
        }
        size += this;
    }
    if start < events.len() || events.is_empty() {
        out.push(&events[start..]);
    }
    out
}
