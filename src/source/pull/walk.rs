//! The loop of a source that walks time windows page by page: wait for the
//! next pass, and turn each page into a batch of its new events whose
//! checkpoint holds the walk.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use tracing::debug;

use super::dedup::{count_fresh, dedup_key, report_before_window};
use super::fetch::Fetcher;
use super::window::{Next, Pass, WindowState};
use super::PullCommon;
use crate::event::{Batch, Event};
use crate::metrics::metrics;

/// Where the walk goes after a page.
pub enum After {
    /// As the page said (a token, a link, a page number, or the end).
    Next(Next),
    /// An offset walk: from the offset of this page's last entry, which the
    /// next page must hold (`last` when the page is provably the last).
    Offset { last: bool },
}

/// The window walk of one source: its fetcher, its checkpoint, its pace.
pub struct Walker {
    pub name: Arc<str>,
    pub fetcher: Fetcher,
    pub state: WindowState,
    start: DateTime<Utc>,
    overlap: Duration,
    poll_interval: Duration,
    next_pass: Option<Instant>,
}

impl Walker {
    /// `state` is the loaded checkpoint; `start` the resolved `start_at`.
    pub fn new(
        fetcher: Fetcher,
        state: WindowState,
        common: &PullCommon,
        start: DateTime<Utc>,
    ) -> Self {
        let name: Arc<str> = fetcher.name().into();
        if let Some(t) = state.watermark {
            metrics().set_committed_time(&name, t);
        }
        Walker {
            name,
            fetcher,
            state,
            start,
            overlap: common.overlap,
            poll_interval: common.poll_interval,
            next_pass: None,
        }
    }

    /// How the walk resumes, for the "ready" log line.
    pub fn resume(&self) -> &'static str {
        if self.state.pass.is_some() {
            "the pass in progress"
        } else if self.state.watermark.is_some() {
            "watermark minus overlap"
        } else {
            "start_at"
        }
    }

    /// The pass in progress; between passes, waits `poll_interval` after
    /// the last one and begins the next.
    pub async fn pass(&mut self) -> &mut Pass {
        if self.state.between_passes() {
            if let Some(at) = self.next_pass {
                tokio::time::sleep_until(at.into()).await;
            }
        }
        self.state.pass(self.overlap, self.start)
    }

    /// Where the current page was asked (`None` on a pass's first page).
    pub fn cursor(&self) -> Option<&str> {
        self.state.pass.as_ref().and_then(|p| p.cursor.as_deref())
    }

    /// Takes the events of a page of the current pass: drops what was
    /// delivered (by key), moves the cursor as `after` says, and returns
    /// the batch of new events, if any, with the checkpoint of the walk.
    pub fn take(&mut self, events: Vec<Event>, after: After) -> Option<Batch> {
        let returned = events.len();
        let keys: Vec<String> = events.iter().map(|e| dedup_key(e).into_owned()).collect();
        let found = self.state.fresh(events);
        count_fresh(&self.name, returned, &found);
        report_before_window(&self.name, &found);
        self.fetcher.count_answer(!found.events.is_empty());
        let next = match after {
            After::Next(next) => next,
            After::Offset { last } => self.state.next_offset(&self.name, &keys, last),
        };
        debug!(source = %self.name, returned, new = found.events.len(), repeated = found.repeated, before_window = found.before_window, last_page = matches!(next, Next::Done), "page");
        let checkpoint =
            self.state
                .record_page(&self.name, &found.events, keys, next, self.overlap);
        if self.state.between_passes() {
            self.next_pass = Some(Instant::now() + self.poll_interval);
        }
        if found.events.is_empty() {
            return None;
        }
        Some(Batch {
            source: self.name.clone(),
            events: found.events,
            checkpoint,
            newest_time: self.state.newest(),
            fetched_at: Instant::now(),
        })
    }
}
