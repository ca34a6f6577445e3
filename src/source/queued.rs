//! Sources that deliver from their own on-disk queue (webhook_in's spool,
//! quickztna's journal) read it the same way: off the runtime, a batch of
//! records at a time, counting and logging what a damaged segment lost.

use std::sync::Arc;

use bytes::Bytes;
use prometheus::IntCounterVec;
use tokio::sync::watch;
use tracing::error;

use super::webhook_in::record_event;
use crate::disk_queue::{DiskQueue, Pos, Tail};
use crate::event::{Event, FieldExtractor};

/// What a source reads its queue with.
pub(crate) struct QueueRead {
    pub source: Arc<str>,
    /// "spool", "journal": names the queue in errors and logs.
    pub what: &'static str,
    pub max_records: usize,
    pub max_bytes: usize,
    /// Counts damaged data skipped, by source.
    pub damaged: &'static IntCounterVec,
}

impl QueueRead {
    /// The records at `pos` and the position after them; damaged data in
    /// between is skipped (those records are lost), counted and logged.
    pub async fn records<Q>(&self, queue: Arc<Q>, pos: Pos) -> anyhow::Result<(Vec<Bytes>, Pos)>
    where
        Q: AsRef<DiskQueue> + Send + Sync + 'static,
    {
        let chunk =
            DiskQueue::read_off_runtime(queue, pos, self.max_records, self.max_bytes, self.what)
                .await?;
        for why in &chunk.skipped {
            self.damaged.with_label_values(&[&self.source]).inc();
            error!(source = %self.source, "damaged {} data skipped (those records are lost): {why}", self.what);
        }
        Ok((chunk.records, chunk.next))
    }
}

/// Where a source is in its queue: the next position to read, the oldest
/// segment possibly still on disk, and the watch that tells of appends.
pub(crate) struct QueueCursor {
    read: QueueRead,
    tail: watch::Receiver<Tail>,
    pub pos: Pos,
    pub oldest: u64,
}

impl QueueCursor {
    /// Reading `queue` from `pos`.
    pub fn new(read: QueueRead, queue: &DiskQueue, pos: Pos) -> Self {
        QueueCursor {
            read,
            tail: queue.subscribe(),
            oldest: queue.start().map(|p| p.segment).unwrap_or(pos.segment),
            pos,
        }
    }

    /// The next records, moving `pos` past them. The tail is marked seen
    /// before the read, so an append during it wakes [`Self::appended`].
    pub async fn next_records<Q>(&mut self, queue: Arc<Q>) -> anyhow::Result<Vec<Bytes>>
    where
        Q: AsRef<DiskQueue> + Send + Sync + 'static,
    {
        self.tail.borrow_and_update();
        let (records, next) = self.read.records(queue, self.pos).await?;
        self.pos = next;
        Ok(records)
    }

    /// Whether segments before the one being read may still be on disk
    /// (and can go once a commit has passed them).
    pub fn has_read_past_oldest(&self) -> bool {
        self.pos.segment > self.oldest
    }

    /// Until something is appended after the last read. The queue, which
    /// holds the sender, lives as long as its source.
    pub async fn appended(&mut self) {
        let _ = self.tail.changed().await;
    }
}

/// Events out of queued records (bodies as received, one JSON value each).
pub(crate) fn events_of(extractor: &FieldExtractor, records: Vec<Bytes>) -> Vec<Event> {
    records
        .into_iter()
        .map(|raw| record_event(extractor, raw))
        .collect()
}
