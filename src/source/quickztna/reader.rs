//! The pipeline's side of a journaled QuickZTNA source: recovery at
//! start, the poller task, and batches read out of the journal (see
//! [`super::journal`] for the order of writes).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use super::api::Api;
use super::journal::{
    dir, Journal, JournalCheckpoint, Resume, BATCH_BYTES, JOURNAL_BYTES, JOURNAL_DAMAGED,
};
use super::poller::Poller;
use super::window::Window;
use crate::checkpoint::CheckpointStore;
use crate::event::{Batch, FieldExtractor};
use crate::metrics::metrics;
use crate::source::pull::WindowState;
use crate::source::queued::{events_of, QueueCursor, QueueRead};

/// How often an idle reader looks for commits that free journal segments.
const GC_RECHECK: Duration = Duration::from_millis(250);

/// The pipeline's side: batches read out of the journal.
pub struct Reader {
    name: Arc<str>,
    journal: Arc<Journal>,
    cursor: QueueCursor,
    newest: Option<DateTime<Utc>>,
    extractor: FieldExtractor,
    pipeline_store: CheckpointStore,
    room: Arc<Notify>,
    poller: JoinHandle<()>,
    stop: CancellationToken,
}

/// Everything [`start`] needs.
pub struct Parts {
    pub api: Api,
    pub window: Window,
    pub journal: Journal,
    pub resume: Resume,
    pub batch_size: usize,
    pub poll_interval: Duration,
    pub recent_ids: usize,
    pub state_dir: PathBuf,
}

/// Recovers the poller state, starts the poller task, returns the reader.
pub fn start(parts: Parts) -> anyhow::Result<Reader> {
    let Parts {
        api,
        mut window,
        journal,
        resume,
        batch_size,
        poll_interval,
        recent_ids,
        state_dir,
    } = parts;
    let name = window.name.clone();
    let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
        anyhow::anyhow!("sources.{name}: the journal poller needs the async runtime")
    })?;
    // Only the journal's own crash recovery moves the watermark over the
    // replayed entries: a checkpoint set by hand (or reset) polls from
    // where it says, whatever the journal still holds.
    let (pos, newest, replay_from, recovering) = match resume {
        // A position past the journal's end belongs to a journal that is
        // gone (removed by hand): read this one from its start, never from
        // an offset inside a record (nothing would be read, or garbage).
        Resume::Journal(ck) if ck.journal > journal.end() => {
            let start = journal.spool.start()?;
            warn!(source = %name, journal = %dir(&state_dir, &name).display(), checkpoint_segment = ck.journal.segment, checkpoint_offset = ck.journal.offset, "the checkpoint points past the end of the journal (was it removed?); reading the journal from its start and polling again from the newest delivered entry minus overlap");
            window.state = WindowState {
                watermark: ck.newest,
                ..Default::default()
            };
            (start, ck.newest, start, false)
        }
        Resume::Journal(ck) => match journal.load_state(recent_ids)? {
            Some(state) => {
                window.state = state.window;
                (
                    ck.journal,
                    ck.newest,
                    state.appended.unwrap_or(ck.journal),
                    true,
                )
            }
            None => {
                warn!(source = %name, file = %journal.state_file().display(), "the journal's poller state is missing; polling again from the newest delivered entry minus overlap");
                window.state = WindowState {
                    watermark: ck.newest,
                    ..Default::default()
                };
                (ck.journal, ck.newest, ck.journal, true)
            }
        },
        Resume::Window(state) => {
            // Journal-less checkpoint (an upgrade), a manual one, or none:
            // it is the poll state, and whatever the journal holds is
            // delivered from its start.
            let newest = state.watermark;
            window.state = *state;
            let start = journal.spool.start()?;
            (start, newest, start, false)
        }
    };
    let replayed = journal.replay(replay_from, &mut window.state, &api.extractor, recovering)?;
    journal.save_state(&window.state).map_err(|e| {
        anyhow::anyhow!("sources.{name}: cannot save the journal's poller state: {e:#}")
    })?;
    if let Some(t) = newest {
        metrics().set_committed_time(&name, t);
    }
    info!(
        source = %name,
        journal = %dir(&state_dir, &name).display(),
        journal_bytes = journal.spool.bytes(),
        resume_segment = pos.segment,
        resume_offset = pos.offset,
        replayed,
        "quickztna journal open"
    );
    let pipeline_store =
        CheckpointStore::open(&state_dir).map_err(|e| anyhow::anyhow!("state_dir: {e}"))?;
    let journal = Arc::new(journal);
    let room = Arc::new(Notify::new());
    let stop = CancellationToken::new();
    let extractor = api.extractor.clone();
    let poller = Poller {
        health: window.health.clone(),
        api,
        window,
        journal: journal.clone(),
        poll_interval,
        room: room.clone(),
        stop: stop.clone(),
    };
    let poller = runtime.spawn(poller.run());
    Ok(Reader {
        name: name.clone(),
        cursor: QueueCursor::new(
            QueueRead {
                source: name.clone(),
                what: "journal",
                max_records: batch_size,
                max_bytes: BATCH_BYTES,
                damaged: &JOURNAL_DAMAGED,
            },
            &journal.spool,
            pos,
        ),
        journal,
        newest,
        extractor,
        pipeline_store,
        room,
        poller,
        stop,
    })
}

impl Reader {
    /// Removes the segments before the committed position (read back from
    /// the checkpoint store: the pipeline commits, not the source), and
    /// tells the poller when that made room.
    fn collect_garbage(&mut self) {
        if !self.cursor.has_read_past_oldest() {
            return;
        }
        let committed = self
            .pipeline_store
            .committed::<JournalCheckpoint>(&self.name, "journal position");
        let Some(committed) = committed else { return };
        match self.journal.spool.remove_before(committed.journal.segment) {
            Ok(n) => {
                self.cursor.oldest = committed.journal.segment;
                if n > 0 {
                    debug!(source = %self.name, segments = n, "removed delivered journal segments");
                    JOURNAL_BYTES
                        .with_label_values(&[&self.name])
                        .set(self.journal.spool.bytes() as i64);
                    self.room.notify_one();
                }
            }
            Err(e) => {
                warn!(source = %self.name, error = %e, "cannot remove delivered journal segments")
            }
        }
    }

    /// The next batch out of the journal, waiting for the poller.
    pub async fn next_batch(&mut self) -> anyhow::Result<Batch> {
        loop {
            let records = self.cursor.next_records(self.journal.clone()).await?;
            self.collect_garbage();
            if records.is_empty() {
                if self.poller.is_finished() {
                    anyhow::bail!(
                        "the journal poller of source {} stopped; restart the daemon",
                        self.name
                    );
                }
                // Batches read but not yet committed hold segments the
                // poller may be waiting for: look at the commits again soon.
                let held = self.cursor.has_read_past_oldest();
                let recheck = async move {
                    if held {
                        tokio::time::sleep(GC_RECHECK).await
                    } else {
                        std::future::pending().await
                    }
                };
                tokio::select! {
                    _ = self.cursor.appended() => {}
                    _ = &mut self.poller => {}
                    _ = recheck => {}
                }
                continue;
            }
            let events = events_of(&self.extractor, records);
            if let Some(t) = events.iter().filter_map(|e| e.time).max() {
                self.newest = Some(self.newest.map_or(t, |n| n.max(t)));
            }
            let checkpoint = serde_json::to_vec(&JournalCheckpoint {
                journal: self.cursor.pos,
                newest: self.newest,
            })?;
            return Ok(Batch {
                source: self.name.clone(),
                events,
                checkpoint: checkpoint.into(),
                newest_time: self.newest,
                fetched_at: Instant::now(),
            });
        }
    }

    /// Stops the poller at its next safe point and waits for it, so a
    /// replacement (a reload) never appends beside it.
    pub async fn close(&mut self) {
        self.stop.cancel();
        if !self.poller.is_finished() {
            let _ = (&mut self.poller).await;
        }
    }
}

impl Drop for Reader {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}
