//! The drainer: delivers the spool in order once the sink is back, waiting
//! for the outcome of a late direct attempt before sending its batch again.

use std::path::PathBuf;
use std::sync::Arc;

use futures_util::stream::{FuturesOrdered, StreamExt};
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::batch_record::decode_batch;
use super::metrics::SPOOL_METRICS;
use super::shared::{Shared, POSITION};
use crate::checkpoint::CheckpointStore;
use crate::config::RetryConfig;
use crate::disk_queue::Pos;
use crate::event::Event;
use crate::retry::Backoff;
use crate::sink::Sink;

/// Delivers the spool, oldest batch first, and records what the sink
/// confirmed.
pub(super) struct Drainer {
    pub(super) shared: Arc<Shared>,
    pub(super) inner: Arc<dyn Sink>,
    pub(super) positions: CheckpointStore,
    /// Everything before this position was confirmed by the sink.
    pub(super) delivered: Pos,
    pub(super) in_flight: usize,
    pub(super) retry: RetryConfig,
    pub(super) dir: PathBuf,
}

impl Drainer {
    pub(super) async fn run(mut self, stop: CancellationToken) {
        let shared = self.shared.clone();
        let mut read_at = self.delivered;
        let mut sending = FuturesOrdered::new();
        let mut read_backoff = Backoff::new(self.retry);
        loop {
            // Read while there is room.
            while sending.len() < self.in_flight {
                let tail = shared.spool.tail();
                let reader = shared.clone();
                let chunk =
                    tokio::task::spawn_blocking(move || reader.spool.read(read_at, 1, usize::MAX))
                        .await;
                // A stopped drainer records and removes nothing more: what it
                // read may already be another writer's business.
                if stop.is_cancelled() {
                    return;
                }
                let chunk = match chunk {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => {
                        let delay = read_backoff.next_delay();
                        error!(sink = %shared.name, spool = %self.dir.display(), error = %e, retry_in_s = delay.as_secs_f64(), "cannot read the spool; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(delay) => continue,
                        }
                    }
                    Err(e) => {
                        let delay = read_backoff.next_delay();
                        error!(sink = %shared.name, error = %e, retry_in_s = delay.as_secs_f64(), "spool read task failed; retrying");
                        tokio::select! {
                            _ = stop.cancelled() => return,
                            _ = tokio::time::sleep(delay) => continue,
                        }
                    }
                };
                read_backoff.reset();
                for why in &chunk.skipped {
                    error!(sink = %shared.name, "damaged spool data skipped: {why}");
                    SPOOL_METRICS
                        .corrupt
                        .with_label_values(&[&shared.name])
                        .inc();
                }
                let next = chunk.next;
                let Some(record) = chunk.records.into_iter().next() else {
                    if sending.is_empty() {
                        if next != self.delivered {
                            self.delivered = next;
                            self.save_position().await;
                            self.remove_delivered().await;
                        }
                        let mut s = shared.state();
                        if s.backlog && s.appending == 0 && shared.spool.tail() == tail {
                            s.backlog = false;
                            s.late.clear();
                            drop(s);
                            shared.emptied.notify_waiters();
                            info!(sink = %shared.name, "spool is empty; delivering directly again");
                        }
                    }
                    read_at = next;
                    break;
                };
                read_at = next;
                match decode_batch(record) {
                    Ok(batch) => {
                        let late = shared.state().late.remove(&batch.id);
                        let (inner, retry, name) =
                            (self.inner.clone(), self.retry, shared.name.clone());
                        sending.push_back(Box::pin(async move {
                            if let Some(mut outcome) = late {
                                let got_through = outcome
                                    .wait_for(Option::is_some)
                                    .await
                                    .map(|o| *o == Some(true))
                                    .unwrap_or(false);
                                if got_through {
                                    return next;
                                }
                            }
                            deliver_until_confirmed(
                                &*inner,
                                &name,
                                &batch.source,
                                &batch.events,
                                retry,
                            )
                            .await;
                            next
                        })
                            as std::pin::Pin<Box<dyn std::future::Future<Output = Pos> + Send>>);
                    }
                    Err(why) => {
                        error!(sink = %shared.name, spool = %self.dir.display(), before = ?next, "a spooled batch cannot be decoded ({why}); it is skipped");
                        SPOOL_METRICS
                            .corrupt
                            .with_label_values(&[&shared.name])
                            .inc();
                        sending.push_back(Box::pin(async move { next }));
                    }
                }
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                Some(pos) = sending.next(), if !sending.is_empty() => {
                    self.delivered = pos;
                    self.save_position().await;
                    SPOOL_METRICS.drained.with_label_values(&[&shared.name]).inc();
                    self.remove_delivered().await;
                }
                _ = shared.changed.notified() => {}
            }
        }
    }

    /// Deletes the segments wholly delivered and wakes appenders.
    async fn remove_delivered(&self) {
        let (shared, segment) = (self.shared.clone(), self.delivered.segment);
        let removed =
            tokio::task::spawn_blocking(move || shared.spool.remove_before(segment)).await;
        if let Ok(Err(e)) = removed {
            warn!(sink = %self.shared.name, error = %e, "cannot remove delivered spool segments; retrying after the next batch");
        }
        self.shared.update_bytes();
        self.shared.space.notify_waiters();
    }

    /// Persists the delivered position; on failure the batches after the
    /// old one are simply delivered again after a restart.
    async fn save_position(&self) {
        let (store, pos) = (self.positions.clone(), self.delivered);
        let saved = tokio::task::spawn_blocking(move || {
            let json = serde_json::to_vec(&pos).map_err(std::io::Error::other)?;
            store.save(POSITION, &json)
        })
        .await;
        match saved {
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                warn!(sink = %self.shared.name, spool = %self.dir.display(), error = %e, "cannot record the delivered spool position; those batches may be sent again after a restart")
            }
            Err(e) => warn!(sink = %self.shared.name, error = %e, "spool position task failed"),
        }
    }
}

pub(super) async fn deliver_until_confirmed(
    inner: &dyn Sink,
    name: &str,
    source: &str,
    events: &[Event],
    retry: RetryConfig,
) {
    let mut backoff = Backoff::new(retry);
    loop {
        match inner.deliver(source, events).await {
            Ok(()) => return,
            Err(e) => {
                let delay = backoff.next_delay();
                error!(sink = %name, source, error = %format!("{e:#}"), retry_in_s = delay.as_secs_f64(), "sink cannot take a spooled batch; retrying");
                tokio::time::sleep(delay).await;
            }
        }
    }
}
