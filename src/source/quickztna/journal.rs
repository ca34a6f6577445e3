//! The local journal of a QuickZTNA source (`journal = true`, the default).
//!
//! QuickZTNA cannot re-read the past: an answer holds the newest entries of
//! "now − days", at most the cap. If polling stopped while a sink was down
//! (the pipeline asks for pages only when it has room), the entries created
//! meanwhile could exceed the cap and the oldest would be gone for good. So
//! a poller task polls on its own schedule, whatever the sinks do, and
//! appends each poll's new entries to a journal under
//! `state_dir/journal/<source>/` (the CRC-checked segment queue of
//! [`crate::disk_queue`]); the pipeline reads batches out of the journal, and its
//! checkpoint is the journal position after each batch.
//!
//! Order of writes, and what a crash at each point means:
//! 1. append a chunk of entries to the journal, fsynced;
//! 2. save the poller state (watermark, seen-set, and the journal position
//!    it covers) atomically in `poller.checkpoint` next to the segments.
//!
//! A crash between 1 and 2 leaves entries in the journal the saved state
//! does not know: at start they are read back from the saved position and
//! put into the seen-set, so they are neither lost nor journaled twice.
//! The pipeline's commit and the removal of delivered segments are
//! independent: segments before the committed position are removed later,
//! so a crash between them only leaves a segment to remove at the next read.
//!
//! A checkpoint in the older journal-less format (a window state), one set
//! by `auditrelay checkpoint set --time`, or none at all, becomes the poller
//! state, and the pipeline reads the journal from its oldest segment: a
//! journal left from before is delivered (again, at worst), never skipped.
//!
//! The journal is bounded by `max_journal_bytes`: at that size the poller
//! stops polling (an error log line, `/readyz` component
//! `source.NAME.journal` unready, `auditrelay_quickztna_journal_full`) until
//! delivered segments are removed. Entries created meanwhile are fetched
//! when it resumes, up to the API's cap; beyond it the data gap is reported.

use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, IntGaugeVec};
use serde::{Deserialize, Serialize};

use crate::checkpoint::CheckpointStore;
use crate::disk_queue::{DiskQueue, Pos, Tail};
use crate::event::FieldExtractor;
use crate::metrics::metrics;
use crate::source::pull::{dedup_key, WindowState};
use crate::source::webhook_in::record_event;

/// About how many bytes of entries one batch takes from the journal.
pub(super) const BATCH_BYTES: usize = 4 << 20;
/// Largest journal segment: delivered entries are removed a segment at a time.
const MAX_SEGMENT_BYTES: u64 = 16 << 20;
/// The name of the poller state in the journal directory.
const POLLER_STATE: &str = "poller";

pub(super) static JOURNAL_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics().gauge_vec(
        "auditrelay_quickztna_journal_bytes",
        "Bytes of a QuickZTNA source's journal on disk (polled, not yet delivered and removed).",
        &["source"],
    )
});

pub(super) static JOURNAL_FULL: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics().gauge_vec(
        "auditrelay_quickztna_journal_full",
        "1 while a QuickZTNA source does not poll because its journal reached max_journal_bytes (its sinks are not taking events).",
        &["source"],
    )
});

pub(super) static JOURNAL_DAMAGED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics().counter_vec(
        "auditrelay_quickztna_journal_damaged_total",
        "Damaged stretches of a QuickZTNA source's journal skipped when read (a record failing its checksum, or a cut segment end): the entries there are lost. The log line \"damaged journal data skipped\" names file and offset.",
        &["source"],
    )
});

/// The pipeline checkpoint of a journaled source.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct JournalCheckpoint {
    /// Where the next batch starts in the journal.
    pub journal: Pos,
    /// Newest `created_at` delivered: the poll watermark to fall back to
    /// when the poller state is missing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub newest: Option<DateTime<Utc>>,
}

/// What a stored pipeline checkpoint says about where to go on.
pub enum Resume {
    Journal(JournalCheckpoint),
    /// The journal-less format (or `checkpoint set --time`, or nothing).
    Window(Box<WindowState>),
}

impl Resume {
    pub fn parse(name: &str, bytes: Option<&[u8]>, recent_ids: usize) -> anyhow::Result<Resume> {
        if let Some(ck) = bytes.and_then(|b| serde_json::from_slice::<JournalCheckpoint>(b).ok()) {
            return Ok(Resume::Journal(ck));
        }
        WindowState::load(name, bytes, "QuickZTNA", recent_ids).map(|w| Resume::Window(Box::new(w)))
    }
}

/// The poller's own state, saved after each append.
#[derive(Default, Deserialize, Serialize)]
pub(super) struct PollerState {
    pub(super) window: WindowState,
    /// The journal's end when this state was saved.
    pub(super) appended: Option<Pos>,
}

pub fn dir(state_dir: &Path, source: &str) -> PathBuf {
    state_dir.join("journal").join(source)
}

/// The journal of one source: its segments and the poller state beside them.
pub struct Journal {
    name: Arc<str>,
    pub(super) spool: DiskQueue,
    store: CheckpointStore,
    pub(super) max_bytes: u64,
}

impl AsRef<DiskQueue> for Journal {
    fn as_ref(&self) -> &DiskQueue {
        &self.spool
    }
}

impl Journal {
    pub fn open(state_dir: &Path, name: &str, max_bytes: u64) -> anyhow::Result<Journal> {
        let dir = dir(state_dir, name);
        let segment_bytes = (max_bytes / 8).clamp(4096, MAX_SEGMENT_BYTES);
        let spool = DiskQueue::open(&dir, segment_bytes, max_bytes).map_err(|e| {
            anyhow::anyhow!(
                "sources.{name}: cannot open the journal {}: {e}",
                dir.display()
            )
        })?;
        let store = CheckpointStore::in_dir(&dir)
            .map_err(|e| anyhow::anyhow!("sources.{name}: journal {}: {e}", dir.display()))?;
        JOURNAL_BYTES
            .with_label_values(&[name])
            .set(spool.bytes() as i64);
        JOURNAL_FULL.with_label_values(&[name]).set(0);
        JOURNAL_DAMAGED.with_label_values(&[name]);
        Ok(Journal {
            name: name.into(),
            spool,
            store,
            max_bytes,
        })
    }

    /// Where the next append goes (what is synced so far).
    pub(super) fn end(&self) -> Pos {
        let Tail { segment, synced } = self.spool.tail();
        Pos {
            segment,
            offset: synced,
        }
    }

    /// Whether anything from `pos` on is still to be delivered.
    pub fn holds_records_from(&self, pos: Pos) -> anyhow::Result<bool> {
        let chunk = self.spool.read(pos, 1, 1)?;
        Ok(!chunk.records.is_empty() || !chunk.skipped.is_empty())
    }

    /// The file of the poller state.
    pub(super) fn state_file(&self) -> PathBuf {
        self.store.path(POLLER_STATE)
    }

    /// The poller state saved last, if any.
    pub(super) fn load_state(&self, recent_ids: usize) -> anyhow::Result<Option<PollerState>> {
        let Some(bytes) = self.store.load(POLLER_STATE)? else {
            return Ok(None);
        };
        let mut state: PollerState = serde_json::from_slice(&bytes).map_err(|e| {
            anyhow::anyhow!(
                "sources.{}: {} is not a poller state ({e}); move it away to poll again from the delivered watermark",
                self.name,
                self.store.path(POLLER_STATE).display()
            )
        })?;
        state.window.seen = std::mem::take(&mut state.window.seen).with_cap(recent_ids);
        Ok(Some(state))
    }

    /// The poll window state a journal-less source goes on with, after a
    /// journaled run: refused while the journal holds undelivered entries.
    pub fn state_after(
        &self,
        ck: &JournalCheckpoint,
        recent_ids: usize,
    ) -> anyhow::Result<WindowState> {
        if self.holds_records_from(ck.journal)? {
            anyhow::bail!(
                "sources.{0}.journal: the journal {1} still holds entries that were not delivered; \
                 set journal = true until it is drained (auditrelay_quickztna_journal_bytes stops \
                 falling), then journal = false",
                self.name,
                self.store.path(POLLER_STATE).with_file_name("").display()
            );
        }
        Ok(self
            .load_state(recent_ids)?
            .map(|s| s.window)
            .unwrap_or(WindowState {
                watermark: ck.newest,
                ..Default::default()
            }))
    }

    /// Removes the segments of a drained journal (a source going on without
    /// it): turned on again later, it must not deliver them a second time.
    /// The poller state stays; the lock goes with the spool first.
    pub fn remove_delivered(self) -> anyhow::Result<()> {
        let dir = self.spool.dir().to_path_buf();
        drop(self.spool);
        let fail = |e: std::io::Error| {
            anyhow::anyhow!(
                "sources.{}: cannot remove the delivered journal {}: {e}",
                self.name,
                dir.display()
            )
        };
        for entry in std::fs::read_dir(&dir).map_err(fail)? {
            let path = entry.map_err(fail)?.path();
            if path.extension().is_some_and(|x| x == "spool") {
                std::fs::remove_file(&path).map_err(fail)?;
            }
        }
        std::fs::File::open(&dir)
            .and_then(|d| d.sync_all())
            .map_err(fail)?;
        JOURNAL_BYTES.with_label_values(&[&self.name]).set(0);
        Ok(())
    }

    pub(super) fn save_state(&self, window: &WindowState) -> anyhow::Result<()> {
        let state = serde_json::to_vec(&PollerStateRef {
            window,
            appended: Some(self.end()),
        })?;
        self.store.save(POLLER_STATE, &state)?;
        Ok(())
    }

    /// Puts the ids of the entries from `from` to the end into the seen-set:
    /// appended before a crash that came before their state was saved.
    /// With `move_watermark` (that crash, not a checkpoint set by hand) the
    /// watermark moves over them as their poll moved it (never past now,
    /// as a poll never moves it past when it asked).
    pub(super) fn replay(
        &self,
        from: Pos,
        window: &mut WindowState,
        extractor: &FieldExtractor,
        move_watermark: bool,
    ) -> anyhow::Result<u64> {
        let mut pos = from;
        let mut replayed = 0;
        loop {
            let chunk = self.spool.read(pos, 10_000, BATCH_BYTES)?;
            if chunk.next == pos {
                return Ok(replayed);
            }
            for raw in chunk.records {
                let ev = record_event(extractor, raw);
                window.seen.insert(&dedup_key(&ev), ev.time);
                if let Some(t) = ev.time.filter(|_| move_watermark) {
                    let t = t.min(Utc::now());
                    window.watermark = Some(window.watermark.map_or(t, |w| w.max(t)));
                    window.resume_at = None;
                }
                replayed += 1;
            }
            pos = chunk.next;
        }
    }
}

#[derive(Serialize)]
struct PollerStateRef<'a> {
    window: &'a WindowState,
    appended: Option<Pos>,
}
