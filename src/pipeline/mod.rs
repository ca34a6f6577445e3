//! The at-least-once pipeline of one source.
//!
//! ```text
//!  source ──page──▶ batch n ──▶ every routed sink, concurrently ──▶ confirmed
//!                   batch n+1 ─▶ …                                      │
//!                   (≤ max_in_flight batches)                           ▼
//!                                           commit in order: checkpoint of the
//!                                           newest batch whose predecessors and
//!                                           itself every sink confirmed
//! ```
//!
//! A permit per batch bounds memory: the source is not asked for another page
//! while `max_in_flight` batches wait for their sinks, so a slow or dead sink
//! pauses the source instead of growing a queue.
//!
//! A sink that panics in `deliver` has not confirmed anything: the panic is
//! caught, counted (`auditrelay_sink_panics_total`), logged with the sink's
//! name, marks the sink unready, and the batch is delivered to it again with
//! the usual backoff. A committer that dies ends the pipeline with an error
//! the daemon acts on (it never commits past a batch it did not see).

use std::any::Any;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::Duration;

use futures_util::FutureExt;

use tokio::sync::{mpsc, oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checkpoint::CheckpointStore;
use crate::config::RetryConfig;
use crate::event::{Batch, Event};
use crate::health::Health;
use crate::metrics::metrics;
use crate::retry::Backoff;
use crate::sink::{FilterConfig, Sink};
use crate::source::Source;

/// One sink a source's events go to.
#[derive(Clone)]
pub struct Route {
    pub sink_name: Arc<str>,
    pub sink: Arc<dyn Sink>,
    pub filter: FilterConfig,
    /// Where a panicking sink is marked unready (`sink.NAME.delivery`).
    pub health: Health,
}

/// Everything the pipeline of one source needs.
pub struct SourcePipeline {
    pub name: Arc<str>,
    pub source: Box<dyn Source>,
    pub routes: Vec<Route>,
    pub store: CheckpointStore,
    pub max_in_flight: usize,
    /// Backoff for local failures (checkpoint writes, sink errors).
    pub retry: RetryConfig,
}

struct InFlight {
    batch: Arc<Batch>,
    delivery: JoinHandle<()>,
    _permit: OwnedSemaphorePermit,
}

/// A pipeline aborted after its drain timed out (a reload) takes its
/// deliveries with it, so no late commit of the old pipeline can land after
/// its replacement started from the checkpoint.
impl Drop for InFlight {
    fn drop(&mut self) {
        self.delivery.abort();
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
            retry,
        } = self;
        let permits = Arc::new(Semaphore::new(max_in_flight.max(1)));
        let (tx, rx) = mpsc::unbounded_channel::<InFlight>();
        let routes: Arc<[Route]> = routes.into();
        let mut committer = AbortOnDrop(tokio::spawn(commit_in_order(
            name.clone(),
            rx,
            store,
            routes.clone(),
            retry,
        )));
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
            let mut chain = Vec::with_capacity(routes.len());
            for prev in previous.iter_mut() {
                let (done_tx, done_rx) = oneshot::channel();
                chain.push((prev.replace(done_rx), done_tx));
            }
            let delivery = tokio::spawn(deliver_everywhere(
                batch.clone(),
                routes.clone(),
                chain,
                retry,
            ));
            if tx
                .send(InFlight {
                    batch,
                    delivery,
                    _permit: permit,
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
            Ok(()) => Ok(()),
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

/// The text of a panic payload, for the log.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic without a message".to_string())
}

/// For each route: the previous batch's completion to wait for (ordered
/// sinks only) and the signal of this batch's completion.
type Chain = Vec<(Option<oneshot::Receiver<()>>, oneshot::Sender<()>)>;

/// Delivers a batch to every routed sink at once; returns when all confirmed.
async fn deliver_everywhere(
    batch: Arc<Batch>,
    routes: Arc<[Route]>,
    chain: Chain,
    retry: RetryConfig,
) {
    let mut set = tokio::task::JoinSet::new();
    let mut chain = chain.into_iter();
    for route in routes.iter() {
        let (batch, route) = (batch.clone(), route.clone());
        let (prev, done) = chain.next().unwrap_or_else(|| (None, oneshot::channel().0));
        set.spawn(async move {
            if let Some(prev) = prev.filter(|_| route.sink.ordered()) {
                // An error only means the previous delivery task is gone.
                let _ = prev.await;
            }
            deliver_to(&batch, &route, retry).await;
            let _ = done.send(());
        });
    }
    while let Some(joined) = set.join_next().await {
        // A route task that panicked outside the sink did not deliver: the
        // panic goes on to the committer, which delivers the batch again.
        if let Err(e) = joined {
            if e.is_panic() {
                std::panic::resume_unwind(e.into_panic());
            }
        }
    }
}

async fn deliver_to(batch: &Batch, route: &Route, retry: RetryConfig) {
    let filtered: Vec<Event>;
    let events: &[Event] = if route.filter.is_empty() {
        &batch.events
    } else {
        filtered = batch
            .events
            .iter()
            .filter(|e| route.filter.accepts(e.kind.as_deref()))
            .cloned()
            .collect();
        &filtered
    };
    if events.is_empty() {
        return;
    }
    let mut backoff = Backoff::new(retry);
    // Only a panic needs the name: no allocation per batch otherwise.
    let component = || format!("sink.{}.delivery", route.sink_name);
    let mut panicked = false;
    loop {
        let attempt = AssertUnwindSafe(route.sink.deliver(&batch.source, events))
            .catch_unwind()
            .await;
        match attempt {
            Ok(Ok(())) => {
                metrics()
                    .sink_batch_seconds
                    .with_label_values(&[&route.sink_name])
                    .observe(batch.fetched_at.elapsed().as_secs_f64());
                if panicked {
                    route.health.remove(&component());
                }
                return;
            }
            Err(payload) => {
                panicked = true;
                let why = panic_message(payload.as_ref());
                metrics()
                    .sink_panics
                    .with_label_values(&[&route.sink_name])
                    .inc();
                route.health.set_unready(
                    &component(),
                    format!("sink {} panicked while delivering: {why}", route.sink_name),
                );
                let delay = backoff.next_delay();
                error!(sink = %route.sink_name, source = %batch.source, panic = %why, retry_in_s = delay.as_secs_f64(), "sink panicked (a bug); the batch counts as not delivered; retrying");
                tokio::time::sleep(delay).await;
            }
            Ok(Err(e)) => {
                let delay = backoff.next_delay();
                error!(sink = %route.sink_name, source = %batch.source, error = %format!("{e:#}"), retry_in_s = delay.as_secs_f64(), "sink cannot make progress; retrying the batch");
                tokio::time::sleep(delay).await;
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
    routes: Arc<[Route]>,
    retry: RetryConfig,
) {
    let m = metrics();
    let in_flight = m.in_flight_batches.with_label_values(&[&name]);
    while let Some(mut item) = rx.recv().await {
        // A panicking sink is a bug; never commit past it, deliver again.
        let mut redeliver = Backoff::new(retry);
        while let Err(e) = (&mut item.delivery).await {
            let delay = redeliver.next_delay();
            error!(source = %name, error = %e, retry_in_s = delay.as_secs_f64(), "delivery task failed; delivering the batch again");
            tokio::time::sleep(delay).await;
            item.delivery = tokio::spawn(deliver_everywhere(
                item.batch.clone(),
                routes.clone(),
                Vec::new(),
                retry,
            ));
        }
        let mut backoff = Backoff::new(retry);
        loop {
            let (writer, source) = (store.clone(), name.clone());
            let state = item.batch.checkpoint.clone();
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
        if let Some(t) = item.batch.newest_time {
            m.set_committed_time(&name, t);
        }
        m.commit_latency_seconds
            .with_label_values(&[&name])
            .observe(item.batch.fetched_at.elapsed().as_secs_f64());
        in_flight.dec();
    }
}

#[cfg(test)]
mod tests;
