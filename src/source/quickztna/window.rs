//! What a QuickZTNA poll keeps between polls: the watermark (newest
//! `created_at` taken) and the seen-set of the overlap, and what it makes of
//! an answer: the new entries, oldest first, and a data gap when the answer
//! was cut at the cap above what had been read before.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use chrono::{DateTime, Utc};
use prometheus::IntCounterVec;
use tracing::{debug, warn};

use super::api::Answer;
use crate::event::Event;
use crate::health::Health;
use crate::metrics::metrics;
use crate::source::gap;
use crate::source::pull::{chrono_of, count_fresh, dedup_key, fresh, Fetcher, WindowState};

static CAPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics().counter_vec(
        "auditrelay_quickztna_capped_responses_total",
        "QuickZTNA responses that held exactly the entry cap (10000 for export, limit for audit): older entries of the window may be missing (a real loss is also counted in auditrelay_source_gaps_total).",
        &["source"],
    )
});

pub struct Window {
    pub name: Arc<str>,
    pub health: Health,
    pub overlap: Duration,
    /// Where the first window starts without a checkpoint (`start_at`).
    pub start: DateTime<Utc>,
    pub cap: usize,
    pub state: WindowState,
}

impl Window {
    pub fn init_metrics(name: &str) {
        // Its gap series are made for every source (`Metrics::init_source`).
        CAPPED.with_label_values(&[name]);
    }

    /// Where the window of the next poll starts.
    pub fn next_start(&self) -> DateTime<Utc> {
        self.state.next_start(self.overlap, self.start)
    }

    /// The entries of `answer` not taken before, oldest first. An answer
    /// cut at the cap above the watermark is reported as a data gap.
    pub fn select(&self, answer: Answer, fetcher: &Fetcher) -> Vec<Event> {
        let returned = answer.events.len();
        if let Some(count) = answer.count {
            if count != returned as u64 {
                warn!(source = %self.name, count, returned, "data.count differs from the number of entries returned");
            }
        }
        if returned >= self.cap {
            self.capped(&answer);
        }
        let events = answer.events;
        let mut found = fresh(&self.state.seen, events, Some(answer.window_start));
        count_fresh(&self.name, returned, &found);
        debug!(source = %self.name, returned, new = found.events.len(), repeated = found.repeated, before_window = found.before_window, "poll answered");
        fetcher.count_answer(!found.events.is_empty());
        found.events.sort_by_key(|e| e.time);
        found.events
    }

    pub(super) fn capped(&self, answer: &Answer) {
        CAPPED.with_label_values(&[&self.name]).inc();
        let oldest = answer.events.iter().filter_map(|e| e.time).min();
        // Everything up to the watermark was read by earlier polls; the
        // first poll has read nothing before its window.
        let read_until = self.state.watermark.unwrap_or(answer.window_start);
        let cut_until = match oldest {
            Some(oldest) => (oldest > read_until).then_some(oldest),
            // No readable created_at (time_path) to compare: cut when
            // nothing of it was taken before, though something was.
            None => {
                let taken_before = answer
                    .events
                    .iter()
                    .any(|e| self.state.seen.contains(&dedup_key(e)));
                (!self.state.seen.is_empty() && !taken_before).then_some(answer.asked_at)
            }
        };
        match cut_until {
            Some(oldest) => gap::report(
                &self.health,
                &self.name,
                read_until,
                oldest,
                &format!(
                    "QuickZTNA answered with exactly its entry cap ({}), which holds only the newest \
                     entries, and older ones cannot be asked for: more entries were created between \
                     two polls than the cap (poll more often: poll_interval; keep journal = true so \
                     a sink outage does not stop the polls)",
                    self.cap
                ),
            ),
            _ => warn!(
                source = %self.name,
                returned = answer.events.len(),
                cap = self.cap,
                window_start = %answer.window_start.to_rfc3339(),
                oldest_returned = %oldest.map(|o| o.to_rfc3339()).unwrap_or_default(),
                "QuickZTNA answered with exactly its entry cap; it reaches back to entries read before, so only entries indexed late inside the overlap may be missing"
            ),
        }
    }

    /// Takes `chunk` (a slice of [`Window::select`]'s result, in order):
    /// its ids join the seen-set and the watermark moves to its newest
    /// entry, never past `asked_at` (entries a server clock dated ahead
    /// are asked for again).
    pub fn record(&mut self, chunk: &[Event], asked_at: DateTime<Utc>) {
        for ev in chunk {
            self.state.seen.insert(&dedup_key(ev), ev.time);
        }
        if let Some(newest) = chunk.iter().filter_map(|e| e.time).max() {
            let capped = newest.min(asked_at);
            self.state.watermark = Some(self.state.watermark.map_or(capped, |w| w.max(capped)));
        }
        if let Some(w) = self.state.watermark {
            self.state.resume_at = None;
            self.state.seen.prune_before(w - chrono_of(self.overlap));
        }
    }
}
