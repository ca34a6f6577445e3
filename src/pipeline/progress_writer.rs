//! The thread that owns a source's progress log (see `progress.rs`):
//! appends grouped per fdatasync, retirements before commits, compaction.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio::sync::mpsc;
use tracing::warn;

use super::{Counts, Note, COMPACT_MIN_BYTES};
use crate::checkpoint::{
    pending_len, record_len, Appends, PendingRecord, ProgressLog, ProgressRecord,
};

/// The thread that owns the progress log.
pub(super) struct Writer {
    /// See [`Abandoned`].
    pub(super) abandoned: Arc<std::sync::Mutex<bool>>,
    pub(super) source: Arc<str>,
    pub(super) log: Option<ProgressLog>,
    /// Inherited confirmations still worth keeping through a compaction.
    pub(super) inherited: Counts,
    /// Records of batches not yet committed, by batch.
    pub(super) live: BTreeMap<u64, Vec<ProgressRecord>>,
    pub(super) live_pending: BTreeMap<u64, Vec<PendingRecord>>,
    pub(super) live_bytes: u64,
    /// Whether the last write failed (logged once per streak).
    pub(super) failing: bool,
}

impl Writer {
    pub(super) fn run(mut self, mut rx: mpsc::UnboundedReceiver<Note>) {
        while let Some(first) = rx.blocking_recv() {
            let mut appends = Appends::default();
            let mut dones = Vec::new();
            let mut committed = false;
            let mut next = Some(first);
            while let Some(note) = next {
                if let Note::Retiring { seq, done } = note {
                    self.retire_into(seq, &mut appends);
                    dones.push(done);
                } else {
                    committed |= self.take(note, &mut appends);
                }
                next = rx.try_recv().ok();
            }
            if !appends.is_empty() {
                self.write(|log| log.append_all(&appends));
                let retired = !appends.retired.is_empty() || !appends.retired_pending.is_empty();
                if self.failing && retired {
                    // Unretired records could skip events after the commit.
                    self.give_up_log();
                }
            }
            for done in dones {
                let _ = done.send(());
            }
            if committed {
                self.compact(false);
            }
        }
        // Stopped: only what is still uncommitted stays for the next start.
        self.compact(true);
    }

    /// Applies a note; true when it was a commit.
    fn take(&mut self, note: Note, appends: &mut Appends) -> bool {
        match note {
            Note::Confirmed { seq, sink, keys } => {
                let record = ProgressRecord {
                    sink: sink.to_string(),
                    keys,
                };
                appends.confirmed.push(record.clone());
                self.keep(seq, record);
                false
            }
            Note::Pending { seq, record } => {
                appends.pending.push(record.clone());
                self.live_bytes += pending_len(&record);
                self.live_pending.entry(seq).or_default().push(record);
                false
            }
            Note::Resolved(confirmed) => {
                for r in confirmed {
                    let counts = self.inherited.entry(r.sink.as_str().into()).or_default();
                    for k in r.keys {
                        *counts.entry(k).or_default() += 1;
                    }
                }
                // Before any batch: the log becomes the inherited
                // confirmations alone (what was pending is settled).
                self.compact(true);
                false
            }
            Note::Skipped { seq, sink, keys } => {
                if let Some(counts) = self.inherited.get_mut(&sink) {
                    for k in &keys {
                        if let Some(n) = counts.get_mut(k) {
                            *n = n.saturating_sub(1);
                        }
                    }
                }
                let record = ProgressRecord {
                    sink: sink.to_string(),
                    keys,
                };
                self.keep(seq, record);
                false
            }
            Note::Retiring { seq, done } => {
                self.retire_into(seq, appends);
                let _ = done.send(());
                false
            }
            Note::Committed { seq } => {
                self.retire_into(seq, &mut Appends::default());
                true
            }
            Note::DropInherited => {
                appends.retired.extend(self.inherited_records());
                self.inherited.clear();
                false
            }
        }
    }

    /// Takes the records of batches up to `seq` out of the live ones, into
    /// `appends`' retirements.
    fn retire_into(&mut self, seq: u64, appends: &mut Appends) {
        let rest = self.live.split_off(&(seq + 1));
        for r in std::mem::replace(&mut self.live, rest)
            .into_values()
            .flatten()
        {
            self.live_bytes -= record_len(&r.sink, r.keys.len());
            appends.retired.push(r);
        }
        let rest = self.live_pending.split_off(&(seq + 1));
        for r in std::mem::replace(&mut self.live_pending, rest)
            .into_values()
            .flatten()
        {
            self.live_bytes -= pending_len(&r);
            appends.retired_pending.push(r);
        }
    }

    /// The log cannot be kept true: removed, and no longer written.
    fn give_up_log(&mut self) {
        let abandoned = self.abandoned.clone();
        let abandoned = abandoned.lock().unwrap_or_else(|p| p.into_inner());
        let Some(log) = self.log.take() else { return };
        if *abandoned {
            return;
        }
        if let Err(e) = crate::checkpoint::remove_progress_log(log.path()) {
            tracing::error!(source = %self.source, file = %log.path().display(), error = %e, "cannot remove the progress log after a failed write; remove it before the next start, or events confirmed earlier may skip later ones");
        }
    }

    /// The inherited confirmations not matched (yet), as records.
    fn inherited_records(&self) -> Vec<ProgressRecord> {
        self.inherited
            .iter()
            .map(|(sink, counts)| ProgressRecord {
                sink: sink.to_string(),
                keys: counts
                    .iter()
                    .flat_map(|(k, n)| std::iter::repeat_n(*k, *n as usize))
                    .collect(),
            })
            .filter(|r| !r.keys.is_empty())
            .collect()
    }

    fn keep(&mut self, seq: u64, record: ProgressRecord) {
        self.live_bytes += record_len(&record.sink, record.keys.len());
        self.live.entry(seq).or_default().push(record);
    }

    /// Rewrites the log to what still matters, when most of it is obsolete
    /// (or `always`, at the end).
    fn compact(&mut self, always: bool) {
        let Some(log) = &self.log else { return };
        let obsolete = log.len() > COMPACT_MIN_BYTES && log.len() > 2 * self.live_bytes;
        if !(obsolete || always && !log.is_empty()) {
            return;
        }
        let mut records = self.inherited_records();
        records.extend(self.live.values().flatten().cloned());
        // A pending record its sink's confirmation of the same batch covers
        // is settled: only the confirmation is kept.
        let pending: Vec<PendingRecord> = self
            .live_pending
            .iter()
            .flat_map(|(seq, list)| {
                let confirmed: Vec<&ProgressRecord> =
                    self.live.get(seq).into_iter().flatten().collect();
                list.iter().filter(move |p| {
                    !confirmed
                        .iter()
                        .any(|c| c.sink == p.sink && p.keys.iter().all(|k| c.keys.contains(k)))
                })
            })
            .cloned()
            .collect();
        self.write(|log| log.rewrite_all(&records, &pending));
    }

    fn write(&mut self, op: impl FnOnce(&mut ProgressLog) -> std::io::Result<()>) {
        let abandoned = self.abandoned.clone();
        let abandoned = abandoned.lock().unwrap_or_else(|p| p.into_inner());
        if *abandoned {
            // Aborted: the log may be the next pipeline's by now.
            self.log = None;
            return;
        }
        let Some(log) = self.log.as_mut() else { return };
        match op(log) {
            Ok(()) => self.failing = false,
            Err(e) => {
                if !self.failing {
                    warn!(source = %self.source, file = %log.path().display(), error = %e, "cannot write the progress log; a restart may send confirmed events again");
                }
                self.failing = true;
            }
        }
    }
}
