//! What runs: one task per source pipeline, reporting its end (and why it
//! died) to the daemon's loop; draining pipelines and closing sinks.

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checkpoint::CheckpointStore;
use crate::config_file::Config;
use crate::health::Health;
use crate::metrics::metrics;
use crate::pipeline::{panic_message, SourcePipeline};
use crate::sink::Sink;

/// A pipeline task's end, reported to the daemon's loop.
pub(super) struct Finished {
    pub(super) name: String,
    pub(super) generation: u64,
    /// Why it died, when it did not end by itself or by a stop.
    pub(super) failure: Option<String>,
}

/// The pipeline task of one source.
pub(super) struct Task {
    pub(super) stop: CancellationToken,
    pub(super) handle: JoinHandle<()>,
    pub(super) generation: u64,
}

/// What runs now, and the config it was built from.
pub(super) struct Running {
    pub(super) config: Config,
    pub(super) health: Health,
    pub(super) store: CheckpointStore,
    pub(super) sinks: BTreeMap<String, Arc<dyn Sink>>,
    pub(super) pipelines: BTreeMap<String, Task>,
    /// Sources of `config` that should run but could not be started (a
    /// reload failed and so did going back); the next reload retries them.
    pub(super) not_running: BTreeSet<String>,
    pub(super) generation: u64,
    /// Each pipeline task reports its end here.
    pub(super) finished_tx: mpsc::UnboundedSender<Finished>,
}

impl Running {
    pub(super) fn spawn(&mut self, pipeline: SourcePipeline) {
        self.generation += 1;
        let generation = self.generation;
        let name = pipeline.name.to_string();
        let stop = CancellationToken::new();
        let (token, tx, reported) = (stop.clone(), self.finished_tx.clone(), name.clone());
        let handle = tokio::spawn(async move {
            // A panic of the source (or anything else in the pipeline task)
            // must reach the daemon, not end the task silently.
            let failure = match AssertUnwindSafe(pipeline.run(token)).catch_unwind().await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(payload) => Some(format!("panic: {}", panic_message(payload.as_ref()))),
            };
            if let Some(why) = &failure {
                error!(source = %reported, error = %why, "pipeline task failed");
            }
            let _ = tx.send(Finished {
                name: reported,
                generation,
                failure,
            });
        });
        info!(source = %name, "pipeline started");
        self.not_running.remove(&name);
        self.pipelines.insert(
            name,
            Task {
                stop,
                handle,
                generation,
            },
        );
    }

    /// A pipeline ended by itself; true when it was a current one.
    pub(super) fn finished(&mut self, name: &str, generation: u64) -> bool {
        if self
            .pipelines
            .get(name)
            .is_some_and(|t| t.generation == generation)
        {
            self.pipelines.remove(name);
            return true;
        }
        false
    }

    pub(super) fn idle(&self) -> bool {
        self.pipelines.is_empty() && self.not_running.is_empty()
    }

    /// Stops the named pipelines like SIGTERM does: no new fetches, batches
    /// in flight delivered and committed, all within `timeout`; what is still
    /// running then is aborted (its unconfirmed batches are fetched again by
    /// whatever starts from the checkpoint). Returns the aborted ones.
    pub(super) async fn drain(&mut self, names: &[String], timeout: Duration) -> Vec<String> {
        let tasks: Vec<(String, Task)> = names
            .iter()
            .filter_map(|n| self.pipelines.remove(n).map(|t| (n.clone(), t)))
            .collect();
        for (_, task) in &tasks {
            task.stop.cancel();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut aborted = Vec::new();
        for (name, mut task) in tasks {
            if tokio::time::timeout_at(deadline, &mut task.handle)
                .await
                .is_err()
            {
                task.handle.abort();
                let _ = task.handle.await;
                metrics()
                    .in_flight_batches
                    .with_label_values(&[&name])
                    .set(0);
                aborted.push(name);
            } else {
                info!(source = %name, "pipeline stopped; its checkpoint is committed");
            }
        }
        aborted
    }

    /// Drains every pipeline (a stop), warning about the aborted ones.
    pub(super) async fn drain_all(&mut self, timeout: Duration) {
        let all: Vec<String> = self.pipelines.keys().cloned().collect();
        let aborted = self.drain(&all, timeout).await;
        if !aborted.is_empty() {
            warn!(sources = ?aborted, "shutdown_timeout reached; unconfirmed batches will be sent again at the next start");
        }
    }
}

/// Longest wait for sinks to close their connections at a stop or reload.
const CLOSE_MAX: Duration = Duration::from_secs(5);

/// Lets `sinks` end their connections in order (a syslog sink that sees its
/// receiver close cleanly need not resend anything at the next start),
/// within `CLOSE_MAX` and what is left until `by`.
pub(super) async fn close_sinks<'a>(
    sinks: impl Iterator<Item = (&'a String, &'a Arc<dyn Sink>)>,
    by: Instant,
) {
    let within = by.saturating_duration_since(Instant::now()).min(CLOSE_MAX);
    let (names, closing): (Vec<&String>, Vec<_>) = sinks.map(|(n, s)| (n, s.close())).unzip();
    let all = futures_util::future::join_all(closing);
    if tokio::time::timeout(within, all).await.is_err() {
        warn!(sinks = ?names, timeout_s = within.as_secs_f64(), "sinks did not close their connections in time; what they could not prove delivered is sent again");
    }
}
