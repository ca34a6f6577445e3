//! The at-least-once pipeline of one source.
//!
//! ```text
//!  source ──page──▶ batch n ──▶ every routed sink, concurrently ──▶ confirmed
//!                   batch n+1 ─▶ …                                      │
//!                   (≤ max_in_flight batches,                           ▼
//!                    ≤ max_in_flight_bytes)   commit in order: checkpoint of the
//!                                           newest batch whose predecessors and
//!                                           itself every sink confirmed
//! ```
//!
//! The bytes of the batches in flight bound memory ([`budget`]): the source
//! is not asked for another page unless one as large as the last fits in
//! `max_in_flight_bytes` beside the events (or `max_in_flight` batches)
//! waiting for their sinks, so a slow or dead sink
//! pauses the source instead of growing a queue.
//!
//! Each sink gets a batch in runs of at most one of its requests, and each
//! confirmed run is recorded in the source's progress log ([`progress`]):
//! after a crash, the batches refetched from the checkpoint skip what a sink
//! had confirmed, so a restart re-sends only the runs that were unconfirmed.
//!
//! A sink that panics in `deliver` has not confirmed anything: the panic is
//! caught, counted (`auditrelay_sink_panics_total`), logged with the sink's
//! name, marks the sink unready, and the batch is delivered to it again with
//! the usual backoff. A committer that dies ends the pipeline with an error
//! the daemon acts on (it never commits past a batch it did not see).

mod budget;
mod deliver;
mod pending;
mod progress;
mod request;
mod route;

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checkpoint::CheckpointStore;
use crate::config::RetryConfig;
use crate::metrics::metrics;
use crate::retry::Backoff;
use crate::source::Source;
use budget::{ByteBudget, Charge};
use deliver::{deliver_everywhere, Delivery};
use progress::{Notes, Progress};
pub use request::RequestSize;
pub use route::{panic_message, Route};

/// Everything the pipeline of one source needs.
pub struct SourcePipeline {
    pub name: Arc<str>,
    pub source: Box<dyn Source>,
    pub routes: Vec<Route>,
    pub store: CheckpointStore,
    pub max_in_flight: usize,
    /// Bytes of events in flight before the source waits (`max_in_flight_bytes`).
    pub max_in_flight_bytes: u64,
    /// Backoff for local failures (checkpoint writes, sink errors).
    pub retry: RetryConfig,
}

struct InFlight {
    delivery: Delivery,
    join: JoinHandle<()>,
    _permit: OwnedSemaphorePermit,
    _bytes: Charge,
}

/// A pipeline aborted after its drain timed out (a reload) takes its
/// deliveries with it, so no late commit of the old pipeline can land after
/// its replacement started from the checkpoint.
impl Drop for InFlight {
    fn drop(&mut self) {
        self.join.abort();
    }
}

/// Aborts a task when dropped (the committer, when the pipeline is aborted).
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

impl SourcePipeline {
    /// Runs until `stop` is cancelled or the source is finished, then lets the
    /// batches in flight finish and commits them. The caller bounds that
    /// drain with the shutdown timeout. An `Err` means the pipeline died
    /// (its committer failed): what it confirmed but did not commit is
    /// fetched again by whatever starts from the checkpoint.
    pub async fn run(self, stop: CancellationToken) -> anyhow::Result<()> {
        let SourcePipeline {
            name,
            mut source,
            routes,
            store,
            max_in_flight,
            max_in_flight_bytes,
            retry,
        } = self;
        let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
        let budget = ByteBudget::new(max_in_flight_bytes);
        // Past twice what was in flight before a crash, every batch of then
        // has come back: what did not match is given up.
        let mut progress = Progress::start(
            &store,
            &name,
            max_in_flight_bytes.saturating_mul(2),
            (max_in_flight as u64).saturating_mul(2),
        );
        // Before the first page: what sinks confirm of their requests
        // pending at the crash is skipped like their confirmations.
        // A stop meanwhile skips it (what stays pending costs duplicates).
        tokio::select! {
            _ = stop.cancelled() => {}
            _ = progress.resolve_pending(&routes) => {}
        }
        let (tx, rx) = mpsc::unbounded_channel::<InFlight>();
        let routes: Arc<[Route]> = routes.into();
        let mut committer = AbortOnDrop(tokio::spawn(commit_in_order(
            name.clone(),
            rx,
            store,
            progress.notes(),
        )));
        let mut seq = 0u64;
        // The next page is expected to be as large as the last non-empty one.
        let mut expected = 0u64;
        let in_flight = metrics().in_flight_batches.with_label_values(&[&name]);
        let mut backoff = Backoff::new(retry);
        // Per route, the completion of the previous batch's delivery, so
        // ordered sinks receive a source's batches one after another.
        let mut previous: Vec<Option<oneshot::Receiver<()>>> =
            routes.iter().map(|_| None).collect();
        loop {
            let permit = tokio::select! {
                _ = stop.cancelled() => break,
                p = permits.clone().acquire_owned() => match p {
                    Ok(p) => p,
                    Err(_) => break,
                },
            };
            tokio::select! {
                _ = stop.cancelled() => break,
                _ = budget.room(expected) => {}
            }
            let next = tokio::select! {
                _ = stop.cancelled() => break,
                b = source.next_batch() => b,
            };
            let batch = match next {
                Ok(Some(b)) => Arc::new(b),
                Ok(None) => {
                    info!(source = %name, "source finished");
                    break;
                }
                Err(e) => {
                    let delay = backoff.next_delay();
                    error!(source = %name, error = %format!("{e:#}"), retry_in_s = delay.as_secs_f64(), "source failed; retrying");
                    tokio::select! {
                        _ = stop.cancelled() => break,
                        _ = tokio::time::sleep(delay) => continue,
                    }
                }
            };
            backoff.reset();
            in_flight.inc();
            let page_bytes = batch.events.iter().map(|e| e.raw.len() as u64).sum();
            if page_bytes > 0 {
                expected = page_bytes;
            }
            let bytes = budget.charge(page_bytes);
            seq += 1;
            let plan = Arc::new(progress.plan(seq, &batch, &routes));
            let mut chain = Vec::with_capacity(routes.len());
            for prev in previous.iter_mut() {
                let (done_tx, done_rx) = oneshot::channel();
                chain.push((prev.replace(done_rx), done_tx));
            }
            let delivery = Delivery {
                batch,
                plan,
                routes: routes.clone(),
                retry,
                notes: progress.notes(),
            };
            let join = tokio::spawn(deliver_everywhere(delivery.clone(), chain));
            if tx
                .send(InFlight {
                    delivery,
                    join,
                    _permit: permit,
                    _bytes: bytes,
                })
                .is_err()
            {
                break;
            }
        }
        drop(tx);
        // No new fetches from here on; a listening source stops listening.
        source.close().await;
        match (&mut committer.0).await {
            Ok(()) => {
                progress.finish().await;
                Ok(())
            }
            Err(e) => {
                let why = if e.is_panic() {
                    panic_message(e.into_panic().as_ref())
                } else {
                    e.to_string()
                };
                error!(source = %name, error = %why, "commit task failed; nothing after the last checkpoint is committed");
                Err(anyhow::anyhow!(
                    "source {name}: the commit task failed ({why})"
                ))
            }
        }
    }
}

/// Waits for batches in fetch order and persists each one's checkpoint once
/// it is confirmed: the checkpoint never passes an unconfirmed batch.
async fn commit_in_order(
    name: Arc<str>,
    mut rx: mpsc::UnboundedReceiver<InFlight>,
    store: CheckpointStore,
    notes: Notes,
) {
    let m = metrics();
    let in_flight = m.in_flight_batches.with_label_values(&[&name]);
    while let Some(mut item) = rx.recv().await {
        // A panicking sink is a bug; never commit past it, deliver again.
        let retry = item.delivery.retry;
        let mut redeliver = Backoff::new(retry);
        while let Err(e) = (&mut item.join).await {
            let delay = redeliver.next_delay();
            error!(source = %name, error = %e, retry_in_s = delay.as_secs_f64(), "delivery task failed; delivering the batch again");
            tokio::time::sleep(delay).await;
            item.join = tokio::spawn(deliver_everywhere(item.delivery.clone(), Vec::new()));
        }
        let batch = item.delivery.batch.clone();
        // Its confirmations must not outlive the checkpoint moving past it.
        notes.retire(item.delivery.plan.seq).await;
        let mut backoff = Backoff::new(retry);
        loop {
            let (writer, source) = (store.clone(), name.clone());
            let state = batch.checkpoint.clone();
            let saved = tokio::task::spawn_blocking(move || writer.save(&source, &state)).await;
            match saved {
                Ok(Ok(())) => {
                    m.checkpoint_writes.with_label_values(&[&name, "ok"]).inc();
                    break;
                }
                Ok(Err(e)) => {
                    m.checkpoint_writes
                        .with_label_values(&[&name, "error"])
                        .inc();
                    let delay = backoff.next_delay();
                    error!(source = %name, file = %store.path(&name).display(), error = %e, retry_in_s = delay.as_secs_f64(), "cannot write checkpoint; the previous one stays; retrying");
                    tokio::time::sleep(delay).await;
                }
                Err(e) => {
                    warn!(source = %name, error = %e, "checkpoint task failed; retrying");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        notes.committed(item.delivery.plan.seq);
        if let Some(t) = batch.newest_time {
            m.set_committed_time(&name, t);
        }
        m.commit_latency_seconds
            .with_label_values(&[&name])
            .observe(batch.fetched_at.elapsed().as_secs_f64());
        in_flight.dec();
    }
}

#[cfg(test)]
mod tests;
