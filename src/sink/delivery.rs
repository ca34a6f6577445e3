//! One delivery state machine for request-based sinks (the idea of Vector's
//! `RetryLogic`): a sink sends one request and classifies its answer as a
//! [`Verdict`]; [`Delivery::deliver`] does the rest the same way for every
//! sink: backoff, Retry-After, readiness, halving refused requests down to
//! the one event the receiver refuses, dead letters (waiting while the file
//! is full), and the request metrics.
//!
//! Nothing leaves the loop unconfirmed: every run ends confirmed, split, or
//! (one event) written to the dead-letter file; everything else is sent
//! again. Only a [`Verdict::Fatal`] (a local error) ends it early, as an
//! `Err` the pipeline retries.

use std::collections::BTreeMap;
use std::fmt::Debug;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use tracing::{debug, error, trace, warn};

use super::DeadLetters;
use crate::config::RetryConfig;
use crate::event::Event;
use crate::health::Health;
use crate::metrics::metrics;
use crate::retry::Backoff;

/// The events one request carries: indices into the delivered slice.
pub type Run = Range<usize>;

/// Retries in a row (without a success) before a sink with a `failing`
/// trouble reports not ready: one 503 is weather, three are an outage.
const FAILURES_BEFORE_UNREADY: u32 = 3;

/// The longest wait a server's Retry-After gets when `retry.max` is
/// shorter: a longer one is more likely garbled than meant, and would stall
/// the sink (with `/readyz` still ready) for as long as it says.
pub const LONGEST_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long to honour a server's Retry-After: at least `retry.initial` (a
/// `0`, or a date in the past, would resend at once, in a loop) and at most
/// the longer of `retry.max` and [`LONGEST_RETRY_AFTER`].
pub fn server_wait(after: Duration, retry: RetryConfig) -> Duration {
    after
        .max(retry.initial)
        .min(retry.max.max(LONGEST_RETRY_AFTER))
}

/// How the destination answered one request, as the sink understands it.
#[derive(Debug)]
pub enum Verdict<T: 'static> {
    /// The destination has every event of the run; the answer also proves
    /// the `fixed` troubles gone.
    Confirmed { fixed: &'static [T] },
    /// Transient: send again after `after` (the server's Retry-After) or
    /// the next backoff delay.
    Retry {
        why: String,
        after: Option<Duration>,
    },
    /// Sent and accepted, but not confirmed in time (HEC's indexer ack):
    /// send again at once; an earlier send may still confirm (see
    /// [`RetryLogic::Memory`]).
    Unconfirmed { why: String },
    /// Some events of the run are unacceptable: split it (around `bad`, the
    /// run-relative index of the refused event, when the receiver names
    /// it; else in halves) until the refused event is alone, which goes to
    /// the dead-letter file.
    Refused { why: String, bad: Option<usize> },
    /// Wrong credentials, endpoint or setting: an operator must act.
    /// Nothing is dropped: send again every `auth_retry` at least, with the
    /// sink not ready (`trouble` set to `reason`); `log` is the error line.
    AuthWait {
        trouble: T,
        why: String,
        reason: String,
        log: String,
    },
    /// No progress is possible for a local reason: the delivery ends with
    /// this error and the pipeline calls it again.
    Fatal(anyhow::Error),
}

/// What a sink tells [`Delivery::deliver`]: how to send a run and read the
/// answer.
#[async_trait]
pub trait RetryLogic: Send + Sync {
    /// The readiness troubles this sink's answers can set and clear.
    type Trouble: Copy + Ord + Debug + Send + Sync + 'static;
    /// What a run remembers between its attempts (HEC: the ack ids of
    /// earlier sends, any of which may still confirm it).
    type Memory: Default + Send;

    /// Sends `events[run]` once and classifies the answer. A sink that
    /// sends the source name keeps it itself (HEC's `EventRequests`).
    async fn attempt(
        &self,
        events: &[Event],
        run: Run,
        memory: &mut Self::Memory,
    ) -> Verdict<Self::Trouble>;

    /// The run is settled (confirmed, split, dead-lettered or abandoned).
    fn forget(&self, _memory: Self::Memory) {}

    /// After an auth wait, before the run is sent again (re-read a token
    /// that may have been rotated).
    async fn after_auth_wait(&self, _trouble: Self::Trouble) {}
}

/// A sink's readiness as a set of troubles, each set and cleared by what
/// can tell (an answer, a health probe); ready when there is none.
pub struct Readiness<T> {
    health: Health,
    key: String,
    troubles: Mutex<BTreeMap<T, String>>,
}

impl<T: Copy + Ord> Readiness<T> {
    /// Registers `sink.NAME` with `health`.
    pub fn new(health: Health, sink: &str) -> Self {
        let key = format!("sink.{sink}");
        health.register(&key);
        Readiness {
            health,
            key,
            troubles: Mutex::new(BTreeMap::new()),
        }
    }

    fn update(&self, f: impl FnOnce(&mut BTreeMap<T, String>)) {
        let mut map = self.troubles.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut map);
        match joined(&map) {
            None => self.health.set_ready(&self.key),
            Some(reasons) => self.health.set_unready(&self.key, reasons),
        }
    }

    pub fn set(&self, t: T, reason: String) {
        self.update(|m| {
            m.insert(t, reason);
        });
    }

    pub fn clear(&self, list: &[T]) {
        self.update(|m| {
            for t in list {
                m.remove(t);
            }
        });
    }

    pub fn has_any(&self, list: &[T]) -> bool {
        let map = self.troubles.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().any(|t| map.contains_key(t))
    }

    /// Every trouble's reason, joined; `None` when ready.
    pub fn reasons(&self) -> Option<String> {
        joined(&self.troubles.lock().unwrap_or_else(|p| p.into_inner()))
    }
}

/// Every trouble's reason, joined; `None` when there is none.
fn joined<T>(map: &BTreeMap<T, String>) -> Option<String> {
    if map.is_empty() {
        return None;
    }
    let reasons: Vec<&str> = map.values().map(String::as_str).collect();
    Some(reasons.join("; "))
}

/// The parts of a sink the delivery loop works with.
pub struct Delivery<T> {
    pub name: Arc<str>,
    pub retry: RetryConfig,
    /// Least wait between attempts in an auth wait.
    pub auth_retry: Duration,
    pub readiness: Readiness<T>,
    pub dead_letters: DeadLetters,
    /// The trouble set after [`FAILURES_BEFORE_UNREADY`] retries in a row;
    /// `None` for a sink whose own health probe reports outages.
    pub failing: Option<T>,
}

impl<T: Copy + Ord + Debug + Send + Sync + 'static> Delivery<T> {
    /// Sends each run of `runs` (in order, one request at a time) until
    /// every event of them is confirmed or dead-lettered.
    pub async fn deliver<L: RetryLogic<Trouble = T>>(
        &self,
        logic: &L,
        source: &str,
        events: &[Event],
        runs: Vec<Run>,
    ) -> anyhow::Result<()> {
        let mut backoff = Backoff::new(self.retry);
        let mut failures_in_a_row = 0u32;
        // A stack, so splitting keeps the order: the first part on top.
        let mut todo = runs;
        todo.reverse();
        // The memory of the run on top of `todo`, kept while it is retried.
        let mut kept: Option<(Run, L::Memory)> = None;
        while let Some(run) = todo.pop() {
            // Nothing to send; a refused empty run would split forever.
            if run.is_empty() {
                continue;
            }
            let n = run.len() as u64;
            let failed = |outcome: &str| count_failed(&self.name, source, n, outcome);
            let mut memory = match kept.take() {
                Some((r, memory)) if r == run => memory,
                Some((_, other)) => {
                    logic.forget(other);
                    L::Memory::default()
                }
                None => L::Memory::default(),
            };
            let started = Instant::now();
            match logic.attempt(events, run.clone(), &mut memory).await {
                Verdict::Confirmed { fixed } => {
                    logic.forget(memory);
                    backoff.reset();
                    failures_in_a_row = 0;
                    self.readiness.clear(fixed);
                    count_confirmed(&self.name, source, n);
                    trace!(sink = %self.name, events = n, ms = started.elapsed().as_millis() as u64, "delivered");
                }
                Verdict::Retry { why, after } => {
                    failed("retry");
                    let delay = match after {
                        Some(after) => server_wait(after, self.retry),
                        None => backoff.next_delay(),
                    };
                    warn!(sink = %self.name, error = %why, retry_in_s = delay.as_secs_f64(), "delivery failed; retrying");
                    failures_in_a_row += 1;
                    if let Some(t) = self.failing {
                        if failures_in_a_row >= FAILURES_BEFORE_UNREADY {
                            self.readiness.set(
                                t,
                                format!(
                                    "deliveries keep failing ({failures_in_a_row} in a row): {why}"
                                ),
                            );
                        }
                    }
                    tokio::time::sleep(delay).await;
                    kept = Some((run.clone(), memory));
                    todo.push(run);
                }
                Verdict::Unconfirmed { why } => {
                    failed("ack_timeout");
                    warn!(sink = %self.name, events = n, error = %why, "sending the events again");
                    kept = Some((run.clone(), memory));
                    todo.push(run);
                }
                Verdict::AuthWait {
                    trouble,
                    why,
                    reason,
                    log,
                } => {
                    failed("refused");
                    let delay = backoff.next_delay().max(self.auth_retry);
                    error!(sink = %self.name, error = %why, retry_in_s = delay.as_secs_f64(), "{log}");
                    self.readiness.set(trouble, reason);
                    tokio::time::sleep(delay).await;
                    logic.after_auth_wait(trouble).await;
                    kept = Some((run.clone(), memory));
                    todo.push(run);
                }
                Verdict::Refused { why, bad } => {
                    logic.forget(memory);
                    metrics()
                        .sink_requests
                        .with_label_values(&[&self.name, "rejected"])
                        .inc();
                    if run.len() == 1 {
                        self.dead_letters
                            .write_waiting(source, &events[run], &why)
                            .await;
                        continue;
                    }
                    debug!(sink = %self.name, error = %why, events = n, "events refused; splitting the request");
                    todo.extend(split(run, bad).into_iter().rev());
                }
                Verdict::Fatal(e) => {
                    logic.forget(memory);
                    return Err(e);
                }
            }
        }
        Ok(())
    }
}

/// Counts a request that confirmed `events` events.
pub fn count_confirmed(sink: &str, source: &str, events: u64) {
    let m = metrics();
    m.sink_requests.with_label_values(&[sink, "ok"]).inc();
    m.events_delivered
        .with_label_values(&[sink, source])
        .inc_by(events);
}

/// Counts a request of `events` events that failed and will be retried.
pub fn count_failed(sink: &str, source: &str, events: u64, outcome: &str) {
    let m = metrics();
    m.sink_requests.with_label_values(&[sink, outcome]).inc();
    m.sink_retries.with_label_values(&[sink]).inc();
    m.events_failed
        .with_label_values(&[sink, source])
        .inc_by(events);
}

/// The parts of a refused run of two or more events, in order: around the
/// event at run-relative index `bad` when known, else two halves.
fn split(run: Run, bad: Option<usize>) -> Vec<Run> {
    match bad.filter(|k| *k < run.len()) {
        Some(k) => {
            let bad = run.start + k;
            [run.start..bad, bad..bad + 1, bad + 1..run.end]
                .into_iter()
                .filter(|r| !r.is_empty())
                .collect()
        }
        None => {
            let mid = run.start + run.len() / 2;
            vec![run.start..mid, mid..run.end]
        }
    }
}

/// An HTTP request's outcome after the checks every HTTP sink makes.
pub enum Sent {
    /// The endpoint's own answer (not a redirect).
    Answer {
        status: u16,
        retry_after: Option<Duration>,
        body: reqwest::Result<Bytes>,
    },
    /// A redirect the client did not follow: a configuration error, never
    /// a confirmation. `label` is the request-counter outcome.
    Redirect { why: String, label: String },
    /// No answer (connect, timeout, reset): retry.
    NoAnswer(String),
}

/// Sends `req` and sorts out redirects and network errors, so no sink
/// takes a 3xx for an answer.
pub async fn send_http(req: reqwest::RequestBuilder) -> Sent {
    let sent = req.send().await;
    if let Some(why) = crate::http::unfollowed_redirect(&sent) {
        let label = match &sent {
            Ok(r) => format!("http_{}", r.status().as_u16()),
            Err(_) => "redirect".into(),
        };
        return Sent::Redirect { why, label };
    }
    match sent {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = crate::http::retry_after(resp.headers());
            Sent::Answer {
                status,
                retry_after,
                body: resp.bytes().await,
            }
        }
        Err(e) => Sent::NoAnswer(crate::http::no_answer(e)),
    }
}

/// Text of an answer for logs: at most `max` characters, on one line.
pub fn snippet(body: &[u8], max: usize) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(max)
        .collect::<String>()
        .replace(['\n', '\r'], " ")
}

#[cfg(test)]
#[path = "delivery_tests.rs"]
mod tests;
