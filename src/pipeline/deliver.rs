//! Delivery of one batch to every routed sink: each sink gets the batch's
//! events for it in runs of at most one of its requests
//! ([`RequestSize`](super::request::RequestSize)), one after another for an
//! ordered sink, a few at once otherwise; each confirmed run is reported to
//! the progress log.

use std::ops::Range;
use std::panic::AssertUnwindSafe;
use std::sync::Arc;

use futures_util::{FutureExt, StreamExt};
use tokio::sync::oneshot;
use tracing::error;

use super::progress::{Notes, Plan};
use super::route::{panic_message, Route};
use crate::config::RetryConfig;
use crate::event::{Batch, Event};
use crate::metrics::metrics;
use crate::retry::Backoff;
use crate::sink::{PendingReport, Tracked};

/// Runs of one batch an unordered sink is handed at once.
const RUNS_AT_ONCE: usize = 16;

/// For each route: the previous batch's completion to wait for (ordered
/// sinks only) and the signal of this batch's completion.
pub(super) type Chain = Vec<(Option<oneshot::Receiver<()>>, oneshot::Sender<()>)>;

/// What every delivery of one batch shares.
#[derive(Clone)]
pub(super) struct Delivery {
    pub batch: Arc<Batch>,
    pub plan: Arc<Plan>,
    pub routes: Arc<[Route]>,
    pub retry: RetryConfig,
    pub notes: Notes,
}

/// Delivers a batch to every routed sink at once; returns when all confirmed.
pub(super) async fn deliver_everywhere(d: Delivery, chain: Chain) {
    let mut set = tokio::task::JoinSet::new();
    let mut chain = chain.into_iter();
    for index in 0..d.routes.len() {
        let d = d.clone();
        let (prev, done) = chain.next().unwrap_or_else(|| (None, oneshot::channel().0));
        set.spawn(async move {
            let route = &d.routes[index];
            if let Some(prev) = prev.filter(|_| route.sink.ordered()) {
                // An error only means the previous delivery task is gone.
                let _ = prev.await;
            }
            deliver_to(&d, index).await;
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

async fn deliver_to(d: &Delivery, index: usize) {
    let route = &d.routes[index];
    let picked = &d.plan.send[index];
    if picked.is_empty() {
        return;
    }
    // `picked` is ascending: as long as the batch, it is the whole batch,
    // borrowed (the common case); a copy of its events otherwise.
    let copied: Vec<Event>;
    let events: &[Event] = if picked.len() == d.batch.events.len() {
        &d.batch.events
    } else {
        copied = picked
            .iter()
            .map(|i| d.batch.events[*i as usize].clone())
            .collect();
        &copied
    };
    let runs = route.request.runs(events);
    // A request the sink reports pending: `within` is relative to `run`.
    let pending = |run: &Range<usize>, within: Range<usize>, token: Vec<u8>| {
        let from = run.start.saturating_add(within.start);
        let to = run.start.saturating_add(within.end).min(run.end);
        if let Some(picked) = picked.get(from..to).filter(|p| !p.is_empty()) {
            let keys = picked.iter().map(|i| d.plan.keys[*i as usize]).collect();
            d.notes.pending(d.plan.seq, &route.sink_name, token, keys);
        }
    };
    let confirm = |run: Range<usize>| {
        let keys = picked[run]
            .iter()
            .map(|i| d.plan.keys[*i as usize])
            .collect();
        d.notes.confirmed(d.plan.seq, &route.sink_name, keys);
    };
    if route.sink.ordered() {
        for run in runs {
            let report = |within, token| pending(&run, within, token);
            deliver_run(&d.batch, &events[run.clone()], route, d.retry, &report).await;
            confirm(run);
        }
    } else {
        futures_util::stream::iter(runs)
            .map(|run| async {
                let report = |within, token| pending(&run, within, token);
                deliver_run(&d.batch, &events[run.clone()], route, d.retry, &report).await;
                confirm(run);
            })
            .buffer_unordered(RUNS_AT_ONCE)
            .collect::<()>()
            .await;
    }
    metrics()
        .sink_batch_seconds
        .with_label_values(&[&route.sink_name])
        .observe(d.batch.fetched_at.elapsed().as_secs_f64());
}

/// Hands `events` to the sink until it confirms them, retrying errors and
/// panics with backoff.
async fn deliver_run(
    batch: &Batch,
    events: &[Event],
    route: &Route,
    retry: RetryConfig,
    pending: PendingReport<'_>,
) {
    let mut backoff = Backoff::new(retry);
    // Only a panic needs the name: no allocation per run otherwise.
    let component = || format!("sink.{}.delivery", route.sink_name);
    let mut panicked = false;
    loop {
        let call = Tracked {
            source: &batch.source,
            events,
            pending,
        };
        let attempt = AssertUnwindSafe(route.sink.deliver_tracked(call))
            .catch_unwind()
            .await;
        match attempt {
            Ok(Ok(())) => {
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
