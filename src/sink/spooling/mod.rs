//! `on_unavailable = "spool"`: when a sink stops confirming, its batches go
//! to a bounded on-disk queue (`state_dir/sink_spool/NAME/`), so the other
//! sinks of the same sources keep flowing and the checkpoints keep moving;
//! a drainer delivers the queue in order once the sink is back.
//!
//! While the spool is empty a batch is delivered directly. A delivery that
//! has not confirmed within `spool_after`, or failed locally, has its batch
//! written to the spool (fsynced) and is reported as confirmed. The direct
//! attempt is not cancelled: cancelling a sink half way through a write
//! could leave half a frame on a connection. It runs on, and the drainer,
//! on reaching that batch, waits for the attempt's outcome, so a batch that
//! got through after all is not sent a second time. From then on every
//! batch goes to the spool until the drainer has emptied it, which keeps an
//! ordered sink's batches in order. A full spool blocks, exactly like
//! `block`: nothing is dropped. A batch is written as records of at most a
//! quarter of the spool, so any batch fits; a single event larger than half
//! of it waits for the spool to empty and is sent directly.
//!
//! Each spool record is one batch (`encode_batch`); the delivered position
//! is a checkpoint file next to the segments, written after each batch the
//! sink confirmed. A crash between the two sends that batch again (at least
//! once); a torn record at the end is cut off at the next start, and a
//! damaged record further in is reported and skipped, never a crash loop.

mod append;
mod batch_record;
mod drainer;
mod metrics;
mod shared;
#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use chrono::Utc;
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::Sink;
use crate::checkpoint::CheckpointStore;
use crate::config::RetryConfig;
use crate::disk_queue::{DiskQueue, Pos, Tail};
use crate::event::Event;
use crate::health::Health;
pub use batch_record::{decode_batch, encode_batch, SpooledBatch};
use drainer::Drainer;
use metrics::SPOOL_METRICS;
use shared::{Shared, State, POSITION};

/// The smallest `spool_max_bytes` accepted: room for a few large pages.
pub const MIN_MAX_BYTES: u64 = 16 << 20;

/// Batches an unordered sink is sent at once from its spool.
const DRAIN_IN_FLIGHT: usize = 4;

/// A sink behind a spool.
pub struct SpoolingSink {
    inner: Arc<dyn Sink>,
    shared: Arc<Shared>,
    /// `None`: drain only (the sink is `block` now, but its spool still
    /// holds batches from when it was not): batches wait for the spool to
    /// empty, then go directly.
    spool_after: Option<Duration>,
    retry: RetryConfig,
    stop: CancellationToken,
    /// Attempts that outlived `spool_after` and go on: they end with this
    /// instance (a reload's replacement delivers their batches from the
    /// spool), so none lingers, e.g. waiting for dead-letter room, forever.
    late_attempts: Mutex<Vec<AbortHandle>>,
}

/// Aborts a direct attempt when the delivery that started it is dropped (a
/// drain that timed out), unless it goes on late ([`Self::keep`]).
struct AttemptGuard(Option<AbortHandle>);

impl AttemptGuard {
    fn keep(mut self) -> Option<AbortHandle> {
        self.0.take()
    }
}

impl Drop for AttemptGuard {
    fn drop(&mut self) {
        if let Some(attempt) = self.0.take() {
            attempt.abort();
        }
    }
}

impl SpoolingSink {
    /// Opens the spool of sink `name` under `state_dir` and starts its
    /// drainer; batches left by a previous run are delivered first.
    pub fn open(
        name: &str,
        state_dir: &Path,
        inner: Arc<dyn Sink>,
        spool_after: Option<Duration>,
        max_bytes: u64,
        retry: RetryConfig,
        health: Health,
    ) -> anyhow::Result<SpoolingSink> {
        let dir = spool_dir(state_dir, name);
        let context = |what: &str, e: &dyn std::fmt::Display| {
            anyhow::anyhow!(
                "sinks.{name}.on_unavailable: cannot {what} the spool {}: {e}",
                dir.display()
            )
        };
        // Delivered batches leave the disk a whole segment at a time: small
        // segments keep what lingers after a drain small.
        let segment_bytes = (max_bytes / 64).clamp(1 << 20, 16 << 20);
        let spool =
            DiskQueue::open(&dir, segment_bytes, max_bytes).map_err(|e| context("open", &e))?;
        let positions = CheckpointStore::in_dir(&dir).map_err(|e| context("open", &e))?;
        let first = spool.start().map_err(|e| context("read", &e))?;
        // A position that cannot be used costs duplicates (the spool is sent
        // from its start), never a refusal to start.
        let saved = positions
            .load(POSITION)
            .map_err(|e| e.to_string())
            .and_then(|b| {
                b.map(|b| serde_json::from_slice::<Pos>(&b).map_err(|e| e.to_string()))
                    .transpose()
            });
        let start = match saved {
            Ok(Some(pos)) if pos_within(pos, spool.tail()) => pos,
            Ok(Some(pos)) => {
                warn!(sink = name, spool = %dir.display(), position = ?pos, "the delivered position lies past the end of the spool; sending the spool from its start");
                first
            }
            Ok(None) => first,
            Err(e) => {
                warn!(sink = name, spool = %dir.display(), error = %e, "the delivered position is unreadable; sending the spool from its start");
                first
            }
        };
        // Direct delivery from the first batch when nothing waits on disk.
        let backlog = spool
            .read(start, 1, 1)
            .map_or(true, |c| !c.records.is_empty());
        let shared = Arc::new(Shared {
            name: name.to_string(),
            spool,
            state: Mutex::new(State {
                backlog,
                ..State::default()
            }),
            changed: Notify::new(),
            space: Notify::new(),
            emptied: Notify::new(),
            health,
            max_bytes,
            next_id: AtomicU64::new(
                // Ids only need to be unique within this process's spool.
                u64::try_from(Utc::now().timestamp_micros()).unwrap_or(1) << 8,
            ),
        });
        shared.update_bytes();
        SPOOL_METRICS.full.with_label_values(&[name]).set(0);
        for c in [
            &SPOOL_METRICS.spooled,
            &SPOOL_METRICS.drained,
            &SPOOL_METRICS.corrupt,
        ] {
            c.with_label_values(&[name]);
        }
        let stop = CancellationToken::new();
        let in_flight = if inner.ordered() { 1 } else { DRAIN_IN_FLIGHT };
        let drainer = Drainer {
            shared: shared.clone(),
            inner: inner.clone(),
            positions,
            delivered: start,
            in_flight,
            retry,
            dir,
        };
        tokio::spawn(drainer.run(stop.clone()));
        Ok(SpoolingSink {
            inner,
            shared,
            spool_after,
            retry,
            stop,
            late_attempts: Mutex::new(Vec::new()),
        })
    }
}

impl Drop for SpoolingSink {
    fn drop(&mut self) {
        self.stop.cancel();
        let late = self
            .late_attempts
            .get_mut()
            .unwrap_or_else(|p| p.into_inner());
        for attempt in late.drain(..) {
            attempt.abort();
        }
    }
}

/// Whether `pos` is at or before the end of what was written.
fn pos_within(pos: Pos, tail: Tail) -> bool {
    (pos.segment, pos.offset) <= (tail.segment, tail.synced)
}

/// Where the spool of sink `name` lives.
pub fn spool_dir(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("sink_spool").join(name)
}

#[async_trait]
impl Sink for SpoolingSink {
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
        let Some(spool_after) = self.spool_after else {
            self.wait_until_empty().await;
            return self.inner.deliver(source, events).await;
        };
        let shared = &self.shared;
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        if shared.state().backlog {
            return self.append(id, source, events).await;
        }
        let (inner, owned, src) = (self.inner.clone(), events.to_vec(), source.to_string());
        let mut attempt = tokio::spawn(async move { inner.deliver(&src, &owned).await });
        let guard = AttemptGuard(Some(attempt.abort_handle()));
        let why = match tokio::time::timeout(spool_after, &mut attempt).await {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(e))) => format!("the sink failed: {e:#}"),
            Ok(Err(e)) => format!("the delivery task failed: {e}"),
            Err(_) => {
                // Registered before the record exists, so the drainer always
                // finds it and waits for the attempt's outcome.
                let (outcome_tx, outcome_rx) = watch::channel(None);
                shared.state().late.insert(id, outcome_rx);
                if let Some(late) = guard.keep() {
                    let mut kept = self.late_attempts.lock().unwrap_or_else(|p| p.into_inner());
                    kept.retain(|a| !a.is_finished());
                    kept.push(late);
                }
                tokio::spawn(async move {
                    let ok = matches!(attempt.await, Ok(Ok(())));
                    let _ = outcome_tx.send(Some(ok));
                });
                if let Err(e) = self.append(id, source, events).await {
                    shared.state().late.remove(&id);
                    return Err(e);
                }
                warn!(sink = %shared.name, source, events = events.len(), spool_after_s = spool_after.as_secs_f64(), "sink did not confirm in time; its batches go to the spool until it catches up");
                return Ok(());
            }
        };
        warn!(sink = %shared.name, source, events = events.len(), reason = %why, "delivery failed; the batch goes to the spool");
        self.append(id, source, events).await
    }

    fn ordered(&self) -> bool {
        self.inner.ordered()
    }

    // `deliver_tracked` stays the default (nothing reported): a spooled
    // batch is confirmed at its fsync, so the inner sink's requests are
    // the drainer's business. What an earlier run (perhaps without the
    // spool) left pending is a question for the destination itself.
    async fn resolve_pending(&self, requests: &[crate::sink::PendingRequest]) -> Vec<bool> {
        self.inner.resolve_pending(requests).await
    }

    async fn healthcheck(&self) -> anyhow::Result<()> {
        self.inner.healthcheck().await
    }

    async fn flush(&self) {
        self.wait_until_empty().await;
        self.inner.flush().await;
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}
