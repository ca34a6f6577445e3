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

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BufMut, Bytes, BytesMut};
use chrono::{DateTime, Utc};
use futures_util::stream::{FuturesOrdered, StreamExt};
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use tokio::sync::{watch, Notify};
use tokio::task::AbortHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::Sink;
use crate::checkpoint::CheckpointStore;
use crate::config::RetryConfig;
use crate::event::Event;
use crate::health::Health;
use crate::metrics::metrics;
use crate::retry::Backoff;
use crate::spool::{AppendError, Pos, Spool, Tail};

/// The smallest `spool_max_bytes` accepted: room for a few large pages.
pub const MIN_MAX_BYTES: u64 = 16 << 20;

/// Batches an unordered sink is sent at once from its spool.
const DRAIN_IN_FLIGHT: usize = 4;

/// Name of the checkpoint that holds the delivered position.
const POSITION: &str = "delivered";

struct SpoolMetrics {
    bytes: IntGaugeVec,
    full: IntGaugeVec,
    spooled: IntCounterVec,
    drained: IntCounterVec,
    corrupt: IntCounterVec,
}

static SPOOL_METRICS: LazyLock<SpoolMetrics> = LazyLock::new(|| {
    let gauge = |name: &str, help: &str| {
        metrics().register(
            IntGaugeVec::new(
                Opts::new(format!("auditrelay_sink_spool_{name}"), help),
                &["sink"],
            )
            .expect("metric definition is valid"),
        )
    };
    let counter = |name: &str, help: &str| {
        metrics().register(
            IntCounterVec::new(
                Opts::new(format!("auditrelay_sink_spool_{name}"), help),
                &["sink"],
            )
            .expect("metric definition is valid"),
        )
    };
    SpoolMetrics {
        bytes: gauge(
            "bytes",
            "Bytes of a sink's spool segments on disk: batches not yet confirmed, plus delivered ones until their segment (at most 16 MiB) is removed.",
        ),
        full: gauge(
            "full",
            "1 while a sink's spool is at spool_max_bytes and its sources wait.",
        ),
        spooled: counter(
            "batches_written_total",
            "Batches written to a sink's spool because the sink did not confirm in time.",
        ),
        drained: counter(
            "batches_delivered_total",
            "Spooled batches the sink confirmed.",
        ),
        corrupt: counter(
            "corrupt_total",
            "Damaged spool regions or records skipped (logged with file and offset).",
        ),
    }
});

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

struct Shared {
    name: String,
    spool: Spool,
    state: Mutex<State>,
    /// Wakes the drainer: something was appended, or a late direct
    /// delivery finished.
    changed: Notify,
    /// Wakes appenders waiting for room.
    space: Notify,
    /// Wakes those waiting for the spool to be empty.
    emptied: Notify,
    health: Health,
    max_bytes: u64,
    next_id: AtomicU64,
}

#[derive(Default)]
struct State {
    /// The spool may hold batches the sink has not confirmed; while it does,
    /// new batches queue behind them.
    backlog: bool,
    /// Appends under way (they hold `backlog` up).
    appending: usize,
    /// Spooled batches whose direct delivery outlived `spool_after` and may
    /// still get through: the drainer waits for the outcome (true = it did)
    /// before sending such a batch itself.
    late: HashMap<u64, watch::Receiver<Option<bool>>>,
}

impl Shared {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn health_key(&self) -> String {
        format!("sink.{}.spool", self.name)
    }

    fn update_bytes(&self) {
        SPOOL_METRICS
            .bytes
            .with_label_values(&[&self.name])
            .set(i64::try_from(self.spool.bytes()).unwrap_or(i64::MAX));
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
        let spool = Spool::open(&dir, segment_bytes, max_bytes).map_err(|e| context("open", &e))?;
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

    /// Writes a batch to the spool, waiting while it is full, as records
    /// of at most a quarter of the spool each (in order), so any batch fits.
    /// `id` names the batch's first record.
    async fn append(&self, id: u64, source: &str, events: &[Event]) -> anyhow::Result<()> {
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
    async fn wait_until_empty(&self) {
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

/// Delivers the spool, oldest batch first, and records what the sink
/// confirmed.
struct Drainer {
    shared: Arc<Shared>,
    inner: Arc<dyn Sink>,
    positions: CheckpointStore,
    /// Everything before this position was confirmed by the sink.
    delivered: Pos,
    in_flight: usize,
    retry: RetryConfig,
    dir: PathBuf,
}

impl Drainer {
    async fn run(mut self, stop: CancellationToken) {
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

async fn deliver_until_confirmed(
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

/// Cuts a batch into runs whose records stay under `max_record` bytes (a
/// single larger event is a run of its own).
fn split_for_spool(events: &[Event], max_record: u64) -> Vec<&[Event]> {
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

/// A batch as stored in the spool.
#[derive(Debug)]
pub struct SpooledBatch {
    pub id: u64,
    pub source: String,
    pub events: Vec<Event>,
}

const FORMAT: u8 = 1;
const HAS_ID: u8 = 1;
const HAS_TIME: u8 = 2;
const HAS_KIND: u8 = 4;

/// `[format u8][id u64][source]` then `[count u32]` events of
/// `[flags u8][id?][time? i64 s + u32 ns][kind?][raw]`, strings and raw
/// bytes as `[u32 length][bytes]`, all little-endian. The events' extracted
/// fields are kept, so a spooled event is sent exactly as a direct one.
pub fn encode_batch(id: u64, source: &str, events: &[Event]) -> Bytes {
    let size: usize = events
        .iter()
        .map(|e| {
            25 + e.raw.len()
                + e.id.as_ref().map_or(0, |s| s.len() + 4)
                + e.kind.as_ref().map_or(0, |s| s.len() + 4)
        })
        .sum();
    let mut b = BytesMut::with_capacity(17 + source.len() + size);
    b.put_u8(FORMAT);
    b.put_u64_le(id);
    put_bytes(&mut b, source.as_bytes());
    b.put_u32_le(events.len() as u32);
    for e in events {
        let mut flags = 0;
        if e.id.is_some() {
            flags |= HAS_ID;
        }
        if e.time.is_some() {
            flags |= HAS_TIME;
        }
        if e.kind.is_some() {
            flags |= HAS_KIND;
        }
        b.put_u8(flags);
        if let Some(id) = &e.id {
            put_bytes(&mut b, id.as_bytes());
        }
        if let Some(t) = e.time {
            b.put_i64_le(t.timestamp());
            b.put_u32_le(t.timestamp_subsec_nanos());
        }
        if let Some(kind) = &e.kind {
            put_bytes(&mut b, kind.as_bytes());
        }
        put_bytes(&mut b, &e.raw);
    }
    b.freeze()
}

fn put_bytes(b: &mut BytesMut, data: &[u8]) {
    b.put_u32_le(data.len() as u32);
    b.put_slice(data);
}

/// The inverse of [`encode_batch`]; event bytes are slices of `data`.
pub fn decode_batch(mut data: Bytes) -> Result<SpooledBatch, String> {
    fn need(data: &Bytes, n: usize, what: &str) -> Result<(), String> {
        if data.remaining() < n {
            Err(format!("the record ends inside {what}"))
        } else {
            Ok(())
        }
    }
    fn take(data: &mut Bytes, what: &str) -> Result<Bytes, String> {
        need(data, 4, what)?;
        let len = data.get_u32_le() as usize;
        need(data, len, what)?;
        Ok(data.split_to(len))
    }
    fn text(data: &mut Bytes, what: &str) -> Result<String, String> {
        String::from_utf8(take(data, what)?.to_vec()).map_err(|_| format!("{what} is not UTF-8"))
    }
    need(&data, 9, "the header")?;
    let format = data.get_u8();
    if format != FORMAT {
        return Err(format!("unknown record format {format}"));
    }
    let id = data.get_u64_le();
    let source = text(&mut data, "the source name")?;
    need(&data, 4, "the event count")?;
    let count = data.get_u32_le() as usize;
    // Each event takes at least 5 bytes: never trust the count for memory.
    let mut events = Vec::with_capacity(count.min(data.remaining() / 5));
    for i in 0..count {
        need(&data, 1, "an event")?;
        let flags = data.get_u8();
        let id = if flags & HAS_ID != 0 {
            Some(Arc::from(text(&mut data, "an event id")?))
        } else {
            None
        };
        let time = if flags & HAS_TIME != 0 {
            need(&data, 12, "an event time")?;
            let (secs, nanos) = (data.get_i64_le(), data.get_u32_le());
            Some(
                DateTime::<Utc>::from_timestamp(secs, nanos)
                    .ok_or_else(|| format!("event {i} has an impossible time"))?,
            )
        } else {
            None
        };
        let kind = if flags & HAS_KIND != 0 {
            Some(Arc::from(text(&mut data, "an event type")?))
        } else {
            None
        };
        let raw = take(&mut data, "an event")?;
        events.push(Event {
            raw,
            id,
            time,
            kind,
        });
    }
    if data.has_remaining() {
        return Err(format!("{} bytes follow the last event", data.remaining()));
    }
    Ok(SpooledBatch { id, source, events })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::sync::watch;

    /// A sink that takes nothing until its gate opens, and records what it
    /// took.
    struct GatedSink {
        open: watch::Receiver<bool>,
        got: Mutex<Vec<String>>,
        took: Notify,
    }

    impl GatedSink {
        fn new(open: bool) -> (Arc<GatedSink>, watch::Sender<bool>) {
            let (tx, rx) = watch::channel(open);
            let sink = Arc::new(GatedSink {
                open: rx,
                got: Mutex::new(Vec::new()),
                took: Notify::new(),
            });
            (sink, tx)
        }

        fn got(&self) -> Vec<String> {
            self.got.lock().unwrap().clone()
        }

        /// Waits until `n` events were taken (bounded).
        /// Bounded at 30 s: generous, so a loaded CI machine (the reopen
        /// waits for the old instance's lock) does not fail it.
        async fn wait_for(&self, n: usize) -> Vec<String> {
            for _ in 0..1500 {
                let took = self.took.notified();
                if self.got().len() >= n {
                    break;
                }
                let _ = tokio::time::timeout(Duration::from_millis(20), took).await;
            }
            self.got()
        }
    }

    #[async_trait]
    impl Sink for GatedSink {
        async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
            let mut open = self.open.clone();
            open.wait_for(|o| *o).await?;
            let mut got = self.got.lock().unwrap();
            got.extend(
                events
                    .iter()
                    .map(|e| format!("{source}:{}", e.id.as_deref().unwrap_or("-"))),
            );
            drop(got);
            self.took.notify_waiters();
            Ok(())
        }
    }

    fn events(ids: &[&str]) -> Vec<Event> {
        padded(ids, 100)
    }

    fn padded(ids: &[&str], pad: usize) -> Vec<Event> {
        ids.iter()
            .map(|id| Event {
                raw: Bytes::from(format!(
                    "{{\"id\":\"{id}\",\"pad\":\"{}\"}}",
                    "x".repeat(pad)
                )),
                id: Some((*id).into()),
                time: DateTime::from_timestamp(1_700_000_000, 123_456_789),
                kind: Some("auth.login".into()),
            })
            .collect()
    }

    fn retry() -> RetryConfig {
        RetryConfig {
            initial: Duration::from_millis(10),
            max: Duration::from_millis(50),
        }
    }

    fn open(dir: &Path, inner: Arc<dyn Sink>, max_bytes: u64, health: &Health) -> SpoolingSink {
        SpoolingSink::open(
            "spooled",
            dir,
            inner,
            Some(Duration::from_millis(50)),
            max_bytes,
            retry(),
            health.clone(),
        )
        .unwrap()
    }

    /// A sink whose delivery never ends (e.g. waiting for room in its full
    /// dead-letter file); says when a delivery of it is given up.
    struct StuckSink {
        given_up: tokio::sync::mpsc::UnboundedSender<()>,
    }

    struct SaysWhenDropped(tokio::sync::mpsc::UnboundedSender<()>);

    impl Drop for SaysWhenDropped {
        fn drop(&mut self) {
            let _ = self.0.send(());
        }
    }

    #[async_trait]
    impl Sink for StuckSink {
        async fn deliver(&self, _: &str, _: &[Event]) -> anyhow::Result<()> {
            let _guard = SaysWhenDropped(self.given_up.clone());
            std::future::pending().await
        }
    }

    #[tokio::test]
    async fn a_late_delivery_ends_with_the_sink_that_started_it() {
        let dir = tempfile::tempdir().unwrap();
        let (given_up, mut given_up_rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(StuckSink { given_up });
        let sink = open(dir.path(), inner.clone(), 1 << 20, &Health::default());
        // Outlives spool_after: spooled, and the attempt goes on late.
        sink.deliver("s", &events(&["a"])).await.unwrap();
        // A reload drops the sink: its replacement delivers the spool, so
        // the old attempt must not linger (and write dead letters) forever.
        drop(sink);
        tokio::time::timeout(Duration::from_secs(5), given_up_rx.recv())
            .await
            .expect("the late attempt is given up when its sink is dropped");
    }

    #[tokio::test]
    async fn a_dropped_delivery_takes_its_attempt_with_it() {
        let dir = tempfile::tempdir().unwrap();
        let (given_up, mut given_up_rx) = tokio::sync::mpsc::unbounded_channel();
        let inner = Arc::new(StuckSink { given_up });
        let sink = SpoolingSink::open(
            "spooled",
            dir.path(),
            inner.clone(),
            Some(Duration::from_secs(3600)),
            1 << 20,
            retry(),
            Health::default(),
        )
        .unwrap();
        // A drain that timed out aborts the pipeline's delivery mid-attempt:
        // the attempt must not go on and deliver after the replacement
        // pipeline started again from the checkpoint.
        let batch = events(&["a"]);
        let delivery = sink.deliver("s", &batch);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), delivery)
                .await
                .is_err(),
            "still waiting for the stuck sink"
        );
        tokio::time::timeout(Duration::from_secs(5), given_up_rx.recv())
            .await
            .expect("the attempt is given up with the delivery");
        drop(sink);
    }

    #[test]
    fn batch_record_round_trips_and_never_panics_when_cut() {
        let mut evs = events(&["a", "b"]);
        evs.push(Event {
            raw: Bytes::from_static(b"{}"),
            id: None,
            time: None,
            kind: None,
        });
        let record = encode_batch(42, "veza_prod", &evs);
        let back = decode_batch(record.clone()).unwrap();
        assert_eq!((back.id, back.source.as_str()), (42, "veza_prod"));
        assert_eq!(back.events.len(), 3);
        for (a, b) in back.events.iter().zip(&evs) {
            assert_eq!(
                (&a.raw, &a.id, a.time, &a.kind),
                (&b.raw, &b.id, b.time, &b.kind)
            );
        }
        for cut in 0..record.len() {
            assert!(decode_batch(record.slice(..cut)).is_err(), "cut at {cut}");
        }
        let mut longer = record.to_vec();
        longer.push(0);
        assert!(decode_batch(Bytes::from(longer)).is_err());
        let mut future = record.to_vec();
        future[0] = 9;
        assert!(decode_batch(Bytes::from(future))
            .unwrap_err()
            .contains("format 9"));
    }

    #[tokio::test]
    async fn a_late_sink_is_spooled_then_drained_in_order_without_duplicates() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, gate) = GatedSink::new(false);
        let health = Health::default();
        let sink = open(dir.path(), inner.clone(), 64 << 20, &health);
        // The first batch waits spool_after, then is parked; the next ones
        // go straight to the spool.
        sink.deliver("s", &events(&["a1", "a2"])).await.unwrap();
        sink.deliver("s", &events(&["b1"])).await.unwrap();
        sink.deliver("t", &events(&["c1"])).await.unwrap();
        assert!(inner.got().is_empty());
        assert!(spool_dir(dir.path(), "spooled")
            .join("00000000000000000001.spool")
            .exists());
        gate.send(true).unwrap();
        let got = inner.wait_for(4).await;
        assert_eq!(got, vec!["s:a1", "s:a2", "s:b1", "t:c1"]);
        // Empty again: the next batch is delivered directly.
        for _ in 0..500 {
            if !sink.shared.state().backlog {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(!sink.shared.state().backlog, "the spool never emptied");
        let direct =
            tokio::time::timeout(Duration::from_secs(5), sink.deliver("s", &events(&["d1"]))).await;
        assert!(matches!(direct, Ok(Ok(()))));
        assert_eq!(inner.wait_for(5).await.len(), 5, "{:?}", inner.got());
        assert!(
            !sink.shared.state().backlog,
            "the last batch must have gone directly"
        );

        assert_eq!(inner.got().iter().filter(|g| *g == "s:a1").count(), 1);
    }

    // Reopens the spool: the old instance's drainer must be able to run
    // (and let go of the spool's lock) while the new one waits for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn spooled_batches_survive_a_restart_and_a_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        let health = Health::default();
        {
            let (dead, _gate) = GatedSink::new(false);
            let sink = open(dir.path(), dead, 64 << 20, &health);
            sink.deliver("s", &events(&["a"])).await.unwrap();
            sink.deliver("s", &events(&["b"])).await.unwrap();
        }
        // A crash in the middle of an append leaves half a record.
        let segment = spool_dir(dir.path(), "spooled").join("00000000000000000001.spool");
        let mut data = std::fs::read(&segment).unwrap();
        let whole = data.len();
        data.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
        std::fs::write(&segment, &data).unwrap();

        let (inner, _gate) = GatedSink::new(true);
        let sink = open(dir.path(), inner.clone(), 64 << 20, &health);
        assert_eq!(inner.wait_for(2).await, vec!["s:a", "s:b"]);
        assert_eq!(std::fs::metadata(&segment).unwrap().len() as usize, whole);
        // The position is recorded after the sink confirmed.
        for _ in 0..500 {
            if !sink.shared.state().backlog {
                break;
            }
            let _ =
                tokio::time::timeout(Duration::from_millis(20), sink.shared.space.notified()).await;
        }
        assert!(!sink.shared.state().backlog, "the spool never emptied");
        drop(sink);

        // Delivered batches are not delivered again after another restart.
        let (again, _gate) = GatedSink::new(true);
        let sink = open(dir.path(), again.clone(), 64 << 20, &health);
        sink.deliver("s", &events(&["c"])).await.unwrap();
        assert_eq!(again.wait_for(1).await, vec!["s:c"]);
    }

    #[tokio::test]
    async fn a_full_spool_blocks_instead_of_dropping() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, gate) = GatedSink::new(false);
        let health = Health::default();
        // 1 MiB segments under a 2 MiB cap: a ~260 KiB batch fits a few times.
        let sink = Arc::new(open(dir.path(), inner.clone(), 2 << 20, &health));
        let ids: Vec<String> = (0..5000).map(|i| format!("e{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        let mut blocked = None;
        for (n, chunk) in refs.chunks(250).enumerate() {
            let (sink, batch) = (sink.clone(), padded(chunk, 1000));
            let mut task = tokio::spawn(async move { sink.deliver("s", &batch).await });
            // Blocked = the spool reports itself full while this one waits.
            let full = async {
                for _ in 0..1000 {
                    if !health.snapshot().0 {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            };
            tokio::select! {
                done = &mut task => assert!(matches!(done, Ok(Ok(()))), "{done:?}"),
                _ = full => {
                    blocked = Some((n, task));
                    break;
                }
            }
        }
        let (n, task) = blocked.expect("a 2 MiB spool cannot take 5 MB");
        assert!(n >= 3, "blocked after {n} batches");
        let (ready, components) = health.snapshot();
        assert!(!ready, "{components:?}");
        gate.send(true).unwrap();
        assert!(matches!(
            tokio::time::timeout(Duration::from_secs(10), task).await,
            Ok(Ok(Ok(())))
        ));
        let got = inner.wait_for((n + 1) * 250).await;
        let want: Vec<String> = refs[..(n + 1) * 250]
            .iter()
            .map(|i| format!("s:{i}"))
            .collect();
        assert_eq!(got, want);
        assert!(health.snapshot().0);
    }

    /// Fails fast for the sources in `fail_fast` while closed; otherwise
    /// waits for the gate.
    struct ScriptSink {
        open: watch::Receiver<bool>,
        fail_fast: Vec<&'static str>,
        got: Mutex<Vec<String>>,
    }

    #[async_trait]
    impl Sink for ScriptSink {
        async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
            if !*self.open.borrow() && self.fail_fast.contains(&source) {
                anyhow::bail!("down");
            }
            let mut open = self.open.clone();
            open.wait_for(|o| *o).await?;
            self.got.lock().unwrap().extend(
                events
                    .iter()
                    .map(|e| format!("{source}:{}", e.id.as_deref().unwrap_or("-"))),
            );
            Ok(())
        }
    }

    fn script(fail_fast: Vec<&'static str>) -> (Arc<ScriptSink>, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(false);
        let sink = Arc::new(ScriptSink {
            open: rx,
            fail_fast,
            got: Mutex::new(Vec::new()),
        });
        (sink, tx)
    }

    /// Bounded wait until the spool is empty and batches go directly.
    async fn wait_direct(sink: &SpoolingSink) {
        for _ in 0..500 {
            if !sink.shared.state().backlog {
                return;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        panic!("the spool never emptied");
    }

    async fn got_at_least(inner: &ScriptSink, n: usize) -> usize {
        for _ in 0..1000 {
            if inner.got.lock().unwrap().len() >= n {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let got = inner.got.lock().unwrap().len();
        got
    }

    #[tokio::test]
    async fn a_late_attempt_meeting_a_full_spool_does_not_deadlock() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, gate) = script(vec!["b"]);
        let sink = Arc::new(
            SpoolingSink::open(
                "spooled",
                dir.path(),
                inner.clone(),
                Some(Duration::from_secs(2)),
                16 << 20,
                retry(),
                Health::default(),
            )
            .unwrap(),
        );
        wait_direct(&sink).await;
        let a = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.deliver("a", &padded(&["a1"], 1 << 20)).await })
        };
        // Source b fails fast and fills the spool while a's attempt waits.
        let mut blocked = None;
        for i in 0..40 {
            let (sink, batch) = (sink.clone(), padded(&[&format!("b{i}")], 1 << 20));
            let mut t = tokio::spawn(async move { sink.deliver("b", &batch).await });
            if tokio::time::timeout(Duration::from_millis(300), &mut t)
                .await
                .is_err()
            {
                blocked = Some(t);
                break;
            }
        }
        let blocked = blocked.expect("the spool never filled");
        // a reaches spool_after on a full spool, then the sink comes back.
        tokio::time::sleep(Duration::from_millis(2500)).await;
        gate.send(true).unwrap();
        let done = tokio::time::timeout(Duration::from_secs(20), a).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "source a never confirmed");
        let done = tokio::time::timeout(Duration::from_secs(20), blocked).await;
        assert!(matches!(done, Ok(Ok(Ok(())))), "source b never confirmed");
        let got = inner.got.lock().unwrap().clone();
        assert_eq!(got.iter().filter(|g| *g == "a:a1").count(), 1, "{got:?}");
    }

    #[tokio::test]
    async fn delivered_batches_in_the_newest_segment_do_not_keep_the_spool_full() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, gate) = script(vec!["s"]);
        let sink = open(dir.path(), inner.clone(), 16 << 20, &Health::default());
        wait_direct(&sink).await;
        sink.deliver("s", &padded(&["x1"], 900 << 10))
            .await
            .unwrap();
        sink.deliver("s", &padded(&["x2"], 3900 << 10))
            .await
            .unwrap();
        gate.send(true).unwrap();
        assert_eq!(got_at_least(&inner, 2).await, 2);
        wait_direct(&sink).await;
        gate.send(false).unwrap();
        let sink = Arc::new(sink);
        let mut parts = Vec::new();
        for i in 0..3 {
            let sink = sink.clone();
            parts.push(tokio::spawn(async move {
                sink.deliver("s", &padded(&[&format!("y{i}")], 3900 << 10))
                    .await
            }));
        }
        gate.send(true).unwrap();
        for t in parts {
            let done = tokio::time::timeout(Duration::from_secs(20), t).await;
            assert!(
                matches!(done, Ok(Ok(Ok(())))),
                "blocked on a spool holding delivered batches ({} bytes on disk)",
                sink.shared.spool.bytes()
            );
        }
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_spool_keeps_its_place_in_line() {
        let dir = tempfile::tempdir().unwrap();
        let (inner, gate) = script(vec!["s"]);
        let sink = open(dir.path(), inner.clone(), 16 << 20, &Health::default());
        wait_direct(&sink).await;
        sink.deliver("s", &events(&["first"])).await.unwrap(); // fails fast: spooled
        gate.send(true).unwrap();
        // 20 events of 1 MiB: cut into records that fit, in order.
        let ids: Vec<String> = (0..20).map(|i| format!("big{i}")).collect();
        let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
        sink.deliver("s", &padded(&refs, 1 << 20)).await.unwrap();
        // One event larger than half the spool: waits for it, then direct.
        sink.deliver("s", &padded(&["huge"], 9 << 20))
            .await
            .unwrap();
        got_at_least(&inner, 22).await;
        let mut want = vec!["s:first".to_string()];
        want.extend(refs.iter().map(|r| format!("s:{r}")));
        want.push("s:huge".into());
        assert_eq!(*inner.got.lock().unwrap(), want);
    }

    // Reopens the spool: the old instance's drainer must be able to run
    // (and let go of the spool's lock) while the new one waits for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_empty_newest_segment_or_a_bad_position_does_not_stop_the_start() {
        let dir = tempfile::tempdir().unwrap();
        let health = Health::default();
        {
            let (dead, _gate) = GatedSink::new(false);
            let sink = open(dir.path(), dead, 64 << 20, &health);
            sink.deliver("s", &events(&["a"])).await.unwrap();
            sink.deliver("s", &events(&["b"])).await.unwrap();
        }
        let spool = spool_dir(dir.path(), "spooled");
        // A crash between creating a segment and writing its header.
        std::fs::write(spool.join("00000000000000000002.spool"), b"audit").unwrap();
        // A position far past the end.
        CheckpointStore::in_dir(&spool)
            .unwrap()
            .save(POSITION, br#"{"segment":99,"offset":12}"#)
            .unwrap();
        let (inner, _gate) = GatedSink::new(true);
        let sink = open(dir.path(), inner.clone(), 64 << 20, &health);
        assert_eq!(inner.wait_for(2).await, vec!["s:a", "s:b"]);
        sink.deliver("s", &events(&["c"])).await.unwrap();
        assert_eq!(inner.wait_for(3).await, vec!["s:a", "s:b", "s:c"]);
    }

    // Reopens the spool: the old instance's drainer must be able to run
    // (and let go of the spool's lock) while the new one waits for it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_sink_switched_back_to_block_still_delivers_its_spool_first() {
        let dir = tempfile::tempdir().unwrap();
        let health = Health::default();
        {
            let (dead, _gate) = GatedSink::new(false);
            let sink = open(dir.path(), dead, 64 << 20, &health);
            sink.deliver("s", &events(&["a"])).await.unwrap();
        }
        let (inner, _gate) = GatedSink::new(true);
        let sink = SpoolingSink::open(
            "spooled",
            dir.path(),
            inner.clone(),
            None,
            64 << 20,
            retry(),
            health,
        )
        .unwrap();
        sink.deliver("s", &events(&["b"])).await.unwrap();
        assert_eq!(inner.wait_for(2).await, vec!["s:a", "s:b"]);
    }
}
