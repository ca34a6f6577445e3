//! Sub-page commit positions: which events of the uncommitted batches each
//! sink confirmed, kept in the source's progress log
//! ([`CheckpointStore::open_progress`]), so that after a crash the batches
//! refetched from the checkpoint skip, per sink, what that sink already has.
//!
//! Events are told apart by their [`EventKeyer`] key (their bytes and id),
//! counted, not merely marked: a page may hold the same event twice, and a
//! confirmation skips only as many copies as were confirmed. A skipped
//! event still counts as delivered for the commit.
//!
//! Only true claims are ever written, after the sink confirmed (a spooling
//! sink confirms once the batch is in its fsynced spool), so whatever goes
//! wrong with the log (a lost append, a torn tail, a reload's old pipeline
//! writing beside the new one) costs duplicates, never events.
//!
//! A writer thread per source owns the file: appends are grouped (one
//! fdatasync for all confirmations that arrived meanwhile) and nobody waits
//! for them; after commits the log is compacted to the records of batches
//! not yet committed, so it stays as small as what is in flight.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

use super::pending;
use super::route::Route;
use crate::checkpoint::{CheckpointStore, EventKey, EventKeyer, PendingRecord, ProgressRecord};
use crate::event::Batch;
use crate::metrics::metrics;

/// Compact the log only past this size (and when it is mostly obsolete).
const COMPACT_MIN_BYTES: u64 = 256 << 10;

/// What one batch sends to each route, after filters and skips.
#[derive(Debug)]
pub struct Plan {
    pub seq: u64,
    pub keys: Vec<EventKey>,
    /// Per route (in route order): indices into the batch's events.
    pub send: Vec<Vec<u32>>,
}

/// A message to the writer thread.
enum Note {
    /// A sink confirmed these events of batch `seq`: append.
    Confirmed {
        seq: u64,
        sink: Arc<str>,
        keys: Vec<EventKey>,
    },
    /// `sink` sent these events of batch `seq` in a request its destination
    /// knows by `token`, not confirmed yet: append.
    Pending { seq: u64, record: PendingRecord },
    /// Inherited pending requests were resolved: these confirmations join
    /// the inherited ones, and the log is rewritten without the pending
    /// records of before the restart.
    Resolved(Vec<ProgressRecord>),
    /// Events of batch `seq` skipped for `sink` thanks to an inherited
    /// record: already in the log, now owned by this batch.
    Skipped {
        seq: u64,
        sink: Arc<str>,
        keys: Vec<EventKey>,
    },
    /// Batches up to `seq` are about to be committed: their records are
    /// retired in the log (durably, then `done`) before the checkpoint moves,
    /// or after a crash they would skip later events with the same keys.
    Retiring {
        seq: u64,
        done: tokio::sync::oneshot::Sender<()>,
    },
    /// Batches up to `seq` are committed: their records are obsolete.
    Committed { seq: u64 },
    /// Inherited records no refetched event matched are given up.
    DropInherited,
}

/// Where deliveries and the committer report to the writer.
#[derive(Clone)]
pub struct Notes(mpsc::UnboundedSender<Note>);

impl Notes {
    pub fn confirmed(&self, seq: u64, sink: &Arc<str>, keys: Vec<EventKey>) {
        // Gone writer: the pipeline is being torn down; only a skip is lost.
        let _ = self.0.send(Note::Confirmed {
            seq,
            sink: sink.clone(),
            keys,
        });
    }

    /// Records that `sink` sent `keys` of batch `seq` in a request still
    /// awaiting confirmation, named `token` (see [`Sink::deliver_tracked`]).
    ///
    /// [`Sink::deliver_tracked`]: crate::sink::Sink::deliver_tracked
    pub fn pending(&self, seq: u64, sink: &Arc<str>, token: Vec<u8>, keys: Vec<EventKey>) {
        let sent_ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or_default();
        let record = PendingRecord {
            sink: sink.to_string(),
            token,
            sent_ms,
            keys,
        };
        let _ = self.0.send(Note::Pending { seq, record });
    }

    /// Returns once the records of batches up to `seq` are retired in the
    /// log (or the writer is gone), so the checkpoint may move past them.
    pub async fn retire(&self, seq: u64) {
        let (done, retired) = tokio::sync::oneshot::channel();
        if self.0.send(Note::Retiring { seq, done }).is_ok() {
            let _ = retired.await;
        }
    }

    pub fn committed(&self, seq: u64) {
        let _ = self.0.send(Note::Committed { seq });
    }
}

type Counts = HashMap<Arc<str>, HashMap<EventKey, u32>>;

/// Set once the pipeline is gone without [`Progress::finish`] (aborted
/// after a drain timed out): its writer writes nothing more, because the
/// source's next pipeline may own the log already. Each write holds the
/// lock, so once the flag is set no write of the old pipeline is under way.
struct Abandoned(Arc<std::sync::Mutex<bool>>);

impl Drop for Abandoned {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = true;
    }
}

/// The fetch side of the progress: confirmations inherited from before the
/// restart, matched against the batches as they are fetched.
pub struct Progress {
    source: Arc<str>,
    inherited: Counts,
    /// Inherited confirmations not matched yet.
    unmatched: usize,
    /// Once this many bytes or batches were fetched, the batches of before
    /// the restart have all come back: the unmatched rest is given up.
    horizon_bytes: u64,
    horizon_batches: u64,
    /// Requests sinks reported pending before the restart, until resolved.
    pending: Vec<PendingRecord>,
    keyer: EventKeyer,
    notes: Notes,
    writer: tokio::task::JoinHandle<()>,
    abandoned: Abandoned,
}

impl Progress {
    /// Reads the log of `source` and starts its writer. A log that cannot
    /// be read or written is logged and costs only duplicates.
    pub fn start(
        store: &CheckpointStore,
        source: &Arc<str>,
        horizon_bytes: u64,
        horizon_batches: u64,
    ) -> Self {
        let loaded = store.load_progress_all(source).unwrap_or_else(|e| {
            warn!(source = %source, file = %store.progress_path(source).display(), error = %e, "cannot read the progress log; batches refetched after the restart go to every sink again");
            Default::default()
        });
        let (records, pending) = (loaded.confirmed, loaded.pending);
        let keyer = store.event_keyer().unwrap_or_else(|e| {
            warn!(source = %source, error = %e, "cannot read or make the event key; what sinks confirmed before this start goes to them again");
            EventKeyer::random()
        });
        let mut inherited: Counts = HashMap::new();
        let mut unmatched = 0;
        for r in records {
            let counts = inherited.entry(r.sink.into()).or_default();
            for k in r.keys {
                *counts.entry(k).or_default() += 1;
                unmatched += 1;
            }
        }
        let log = store.open_progress(source).map_err(|e| {
            warn!(source = %source, file = %store.progress_path(source).display(), error = %e, "cannot open the progress log; a restart will send whole uncommitted pages again");
        });
        let (tx, rx) = mpsc::unbounded_channel();
        let abandoned = Abandoned(Arc::default());
        let writer = Writer {
            abandoned: abandoned.0.clone(),
            source: source.clone(),
            log: log.ok(),
            inherited: inherited.clone(),
            live: BTreeMap::new(),
            live_pending: BTreeMap::new(),
            live_bytes: 0,
            failing: false,
        };
        let writer = tokio::task::spawn_blocking(move || writer.run(rx));
        Progress {
            source: source.clone(),
            inherited,
            unmatched,
            horizon_bytes,
            horizon_batches,
            pending,
            keyer,
            notes: Notes(tx),
            writer,
            abandoned,
        }
    }

    /// Waits for the writer to have written everything, once every other
    /// [`Notes`] is gone (the deliveries and the committer ended), so a
    /// pipeline started next (a reload) reads a settled log.
    pub async fn finish(self) {
        let Progress {
            source,
            notes,
            writer,
            abandoned,
            ..
        } = self;
        drop(notes);
        if let Err(e) = writer.await {
            warn!(source = %source, error = %e, "progress log writer failed");
        }
        // Finished: the flag is only set now, when nothing is left to write.
        drop(abandoned);
    }

    pub fn notes(&self) -> Notes {
        self.notes.clone()
    }

    /// Asks the routed sinks about the requests they reported pending
    /// before the restart (see [`pending`]); what they confirm now is
    /// skipped like any inherited confirmation. Call before the first
    /// [`Self::plan`]. Each sink bounds how long it asks.
    pub async fn resolve_pending(&mut self, routes: &[Route]) {
        let records = std::mem::take(&mut self.pending);
        if records.is_empty() {
            return;
        }
        let questions = pending::questions(records, &self.inherited);
        // Per sink: events asked about, less those found confirmed below.
        let mut resent: HashMap<String, u64> = HashMap::new();
        for q in &questions {
            *resent.entry(q.sink.clone()).or_default() += q.keys.len() as u64;
        }
        let sinks = routes
            .iter()
            .map(|r| (r.sink_name.clone(), r.sink.clone()))
            .collect();
        let confirmed = pending::ask(questions, &sinks).await;
        for r in &confirmed {
            if let Some(n) = resent.get_mut(&r.sink) {
                *n = n.saturating_sub(r.keys.len() as u64);
            }
            let counts = self.inherited.entry(r.sink.as_str().into()).or_default();
            for k in &r.keys {
                *counts.entry(*k).or_default() += 1;
                self.unmatched += 1;
            }
            metrics()
                .events_confirmed_after_restart
                .with_label_values(&[r.sink.as_str(), &self.source])
                .inc_by(r.keys.len() as u64);
        }
        for (sink, n) in resent {
            metrics()
                .events_resent_after_restart
                .with_label_values(&[sink.as_str(), &self.source])
                .inc_by(n);
        }
        let _ = self.notes.0.send(Note::Resolved(confirmed));
    }

    /// Decides what batch `seq` sends to each route: the events its filter
    /// takes, less those the sink confirmed before the restart.
    pub fn plan(&mut self, seq: u64, batch: &Batch, routes: &[Route]) -> Plan {
        let keys: Vec<EventKey> = batch.events.iter().map(|e| self.keyer.key(e)).collect();
        let mut send = Vec::with_capacity(routes.len());
        for route in routes {
            let mut inherited = self.inherited.get_mut(&route.sink_name);
            let mut to_send = Vec::with_capacity(batch.events.len());
            let mut skipped = Vec::new();
            for (i, ev) in batch.events.iter().enumerate() {
                if !route.filter.is_empty() && !route.filter.accepts(ev.kind.as_deref()) {
                    continue;
                }
                let confirmed = inherited
                    .as_deref_mut()
                    .and_then(|counts| counts.get_mut(&keys[i]))
                    .filter(|n| **n > 0);
                match confirmed {
                    Some(n) => {
                        *n -= 1;
                        skipped.push(keys[i]);
                    }
                    None => to_send.push(i as u32),
                }
            }
            if !skipped.is_empty() {
                self.unmatched = self.unmatched.saturating_sub(skipped.len());
                metrics()
                    .events_skipped_confirmed
                    .with_label_values(&[&route.sink_name, &self.source])
                    .inc_by(skipped.len() as u64);
                let _ = self.notes.0.send(Note::Skipped {
                    seq,
                    sink: route.sink_name.clone(),
                    keys: skipped,
                });
            }
            send.push(to_send);
        }
        if !self.inherited.is_empty() {
            let bytes: u64 = batch.events.iter().map(|e| e.raw.len() as u64).sum();
            self.horizon_bytes = self.horizon_bytes.saturating_sub(bytes);
            self.horizon_batches = self.horizon_batches.saturating_sub(1);
            if self.unmatched == 0 || self.horizon_bytes == 0 || self.horizon_batches == 0 {
                self.inherited.clear();
                let _ = self.notes.0.send(Note::DropInherited);
            }
        }
        Plan { seq, keys, send }
    }
}

#[path = "progress_writer.rs"]
mod writer;
use writer::Writer;
