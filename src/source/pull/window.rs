//! The checkpoint of a source that has no durable cursor: it walks a time
//! window page by page ("everything since the watermark minus the
//! overlap") and drops what it already delivered.
//!
//! The watermark only moves over events handed to the pipeline, and each
//! batch carries a snapshot of the state as of that batch, so a committed
//! checkpoint never claims an unconfirmed event.

use std::collections::HashSet;
use std::time::Duration;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tracing::error;

use super::dedup::{dedup_key, fresh, fresh_except, Fresh, SeenSet};
use crate::event::Event;
use crate::source::{read_checkpoint, SourceContext};

/// A duration as a chrono duration (saturating).
pub fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(36500))
}

/// One walk through the pages of a time window. Kept in the checkpoint so a
/// restart continues the walk instead of skipping what it had not reached.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Pass {
    /// The window: from the watermark minus the overlap…
    pub start: DateTime<Utc>,
    /// …to when the walk began (later events wait for the next pass).
    pub end: DateTime<Utc>,
    /// Where the next page starts (an offset, page number, token or link);
    /// `None` before the first page.
    pub cursor: Option<String>,
    /// Newest event time delivered in this pass.
    pub newest: Option<DateTime<Utc>>,
    /// Ids of the last two pages: entries inserted while paging shift the
    /// offsets, so a page may repeat the end of the previous one.
    #[serde(default)]
    pub recent: Vec<String>,
    /// Where the keys of the current page start in `recent`.
    #[serde(default)]
    pub recent_split: usize,
    /// Pages in a row holding nothing beyond the two before (an API
    /// ignoring the cursor, or inserting ahead of it faster than it is read).
    #[serde(default)]
    pub same_pages: u32,
    /// Offset pagination: the key of the last entry read, which the next
    /// page (asked from that entry's offset) must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// Walks of this pass restarted because the anchor had moved.
    #[serde(default)]
    pub offset_restarts: u32,
}

/// Pages in a row without progress after which a pass is ended: asking
/// again would loop forever.
pub const SAME_PAGE_LIMIT: u32 = 3;

/// The checkpoint of a source that walks time windows page by page.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct WindowState {
    /// Newest event time of the completed passes (never later than the
    /// pass's end).
    pub watermark: Option<DateTime<Utc>>,
    /// Set by `auditrelay checkpoint set --time`: where the first window
    /// starts, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<Pass>,
    #[serde(default)]
    pub seen: SeenSet,
}

/// How a page ends its pass.
pub enum Next {
    /// More pages: continue at this cursor.
    Cursor(String),
    /// The window is exhausted.
    Done,
}

impl WindowState {
    /// Reads the checkpoint a source was built with; `kind` names the
    /// source type in the error.
    pub fn of_context(ctx: &SourceContext, kind: &str, cap: usize) -> anyhow::Result<Self> {
        Self::load(&ctx.name, ctx.checkpoint.as_deref(), kind, cap)
    }

    /// Reads a checkpoint; `kind` names the source type in the error.
    pub fn load(
        ctx_name: &str,
        bytes: Option<&[u8]>,
        kind: &str,
        cap: usize,
    ) -> anyhow::Result<Self> {
        let what = format!("a {kind} window state");
        let mut state: WindowState = read_checkpoint(ctx_name, bytes, &what)?.unwrap_or_default();
        state.seen = std::mem::take(&mut state.seen).with_cap(cap);
        if let Some(p) = &mut state.pass {
            p.recent_split = p.recent_split.min(p.recent.len());
        }
        Ok(state)
    }

    /// Where the next window starts: the watermark minus the overlap, else
    /// the time set by `checkpoint set --time`, else `start_at`.
    pub fn next_start(&self, overlap: Duration, start_at: DateTime<Utc>) -> DateTime<Utc> {
        match (self.watermark, self.resume_at) {
            (Some(w), _) => w - chrono_of(overlap),
            (None, Some(r)) => r,
            (None, None) => start_at,
        }
    }

    /// The pass in progress, or a new one over `[watermark - overlap, now]`.
    pub fn pass(&mut self, overlap: Duration, start_at: DateTime<Utc>) -> &mut Pass {
        let start = self.next_start(overlap, start_at);
        self.pass.get_or_insert_with(|| Pass {
            start,
            end: Utc::now(),
            cursor: None,
            newest: None,
            recent: Vec::new(),
            recent_split: 0,
            same_pages: 0,
            anchor: None,
            offset_restarts: 0,
        })
    }

    /// The new events of a page of the current pass.
    pub fn fresh(&self, events: Vec<Event>) -> Fresh {
        let Some(pass) = &self.pass else {
            return fresh(&self.seen, events, None);
        };
        let recent: HashSet<&str> = pass.recent.iter().map(String::as_str).collect();
        fresh_except(&self.seen, |k| recent.contains(k), events, Some(pass.start))
    }

    /// Records a page's new events as delivered and moves the cursor; the
    /// returned checkpoint describes everything up to this page.
    /// `returned_keys` are the keys of every item the page held.
    pub fn record_page(
        &mut self,
        source: &str,
        delivered: &[Event],
        returned_keys: Vec<String>,
        next: Next,
        overlap: Duration,
    ) -> Bytes {
        let overlap = chrono_of(overlap);
        let mut finished = matches!(next, Next::Done);
        if let Some(pass) = &mut self.pass {
            for ev in delivered {
                if let Some(t) = ev.time {
                    pass.newest = Some(pass.newest.map_or(t, |n| n.max(t)));
                }
            }
            // A page holding nothing beyond the last two pages: the API
            // ignores the cursor, or inserts ahead of it as fast as the
            // walk reads. Either way the walk is not advancing.
            let before: HashSet<&str> = pass.recent.iter().map(String::as_str).collect();
            let stalled = !returned_keys.is_empty()
                && returned_keys.iter().all(|k| before.contains(k.as_str()));
            pass.same_pages = if stalled { pass.same_pages + 1 } else { 0 };
            // Keep the keys of the last two pages.
            pass.recent
                .drain(..pass.recent_split.min(pass.recent.len()));
            pass.recent_split = pass.recent.len();
            pass.recent.extend(returned_keys);
            if let Next::Cursor(c) = next {
                pass.cursor = Some(c);
            }
            if pass.same_pages >= SAME_PAGE_LIMIT && !finished {
                error!(source, pages = pass.same_pages + 1, "the API returned the same entries page after page: it ignores the pagination parameter (check the pagination settings) or inserts ahead of the cursor faster than pages are read; ending this pass");
                finished = true;
            }
        }
        for ev in delivered {
            self.seen.insert(&dedup_key(ev), ev.time);
        }
        if let Some(pass) = &self.pass {
            // Until the pass ends, any entry of its window may come back (the
            // order of the pages is unknown): keep every id from its start.
            let mut cutoff = pass.start;
            if finished {
                if let Some(r) = pass.newest.map(|n| n.min(pass.end)) {
                    let w = self.watermark.map_or(r, |w| w.max(r));
                    self.watermark = Some(w);
                    self.resume_at = None;
                    cutoff = cutoff.max(w - overlap);
                }
                self.pass = None;
            }
            self.seen.prune_before(cutoff);
        }
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Whether the current pass is over (after `record_page`).
    pub fn between_passes(&self) -> bool {
        self.pass.is_none()
    }

    /// Newest event time delivered so far, for the checkpoint-lag metric.
    pub fn newest(&self) -> Option<DateTime<Utc>> {
        let in_pass = self.pass.as_ref().and_then(|p| p.newest);
        match (self.watermark, in_pass) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::pull::test_support::{ev, t};

    #[test]
    fn window_state_moves_the_watermark_only_when_a_pass_ends() {
        let overlap = Duration::from_secs(600);
        let start_at = t("2026-01-01T00:00:00Z");
        let mut st = WindowState::default();
        // Pass 1, newest first, two pages.
        st.pass(overlap, start_at);
        let p1 = vec![ev(Some("c"), "2026-01-01T00:30:00Z", "{}")];
        let f = st.fresh(p1.clone());
        let cp = st.record_page(
            "s",
            &f.events,
            vec!["c".into()],
            Next::Cursor("1".into()),
            overlap,
        );
        let mid: WindowState = serde_json::from_slice(&cp).unwrap();
        assert_eq!(
            mid.watermark, None,
            "mid-pass checkpoints keep the old watermark"
        );
        assert_eq!(mid.pass.as_ref().unwrap().cursor.as_deref(), Some("1"));
        assert!(mid.seen.contains("c"));
        // The next page repeats "c" (an insert shifted the offsets) and adds "b".
        let p2 = vec![
            ev(Some("c"), "2026-01-01T00:30:00Z", "{}"),
            ev(Some("b"), "2026-01-01T00:10:00Z", "{}"),
        ];
        let f = st.fresh(p2);
        assert_eq!(f.events.len(), 1);
        assert_eq!(f.repeated, 1);
        st.record_page(
            "s",
            &f.events,
            vec!["c".into(), "b".into()],
            Next::Done,
            overlap,
        );
        assert!(st.between_passes());
        assert_eq!(st.watermark, Some(t("2026-01-01T00:30:00Z")));
        assert!(!st.seen.contains("b"), "older than watermark minus overlap");
        // Pass 2 starts at watermark - overlap; a new event far newer does not
        // drop "c" from the seen-set while the pass may still return it.
        assert_eq!(st.pass(overlap, start_at).start, t("2026-01-01T00:20:00Z"));
        let f = st.fresh(vec![ev(Some("z"), "2026-01-01T05:00:00Z", "{}")]);
        st.record_page(
            "s",
            &f.events,
            vec!["z".into()],
            Next::Cursor("1".into()),
            overlap,
        );
        assert!(st.seen.contains("c"));
        let f = st.fresh(vec![ev(Some("c"), "2026-01-01T00:30:00Z", "{}")]);
        assert!(f.events.is_empty(), "c was delivered in pass 1");
    }

    #[test]
    fn a_pass_ends_when_the_api_ignores_the_cursor() {
        let overlap = Duration::from_secs(60);
        let mut st = WindowState::default();
        st.pass(overlap, t("2026-01-01T00:00:00Z"));
        for i in 0..SAME_PAGE_LIMIT + 1 {
            assert!(!st.between_passes(), "ended early at page {i}");
            st.record_page(
                "s",
                &[],
                vec!["a".into(), "b".into()],
                Next::Cursor(i.to_string()),
                overlap,
            );
        }
        assert!(st.between_passes());
    }

    #[test]
    fn a_pass_ends_when_inserts_outrun_the_walk() {
        // Each page holds only entries of the two pages before it: the API
        // inserts a page's worth ahead of the cursor per request.
        let overlap = Duration::from_secs(60);
        let mut st = WindowState::default();
        st.pass(overlap, t("2026-01-01T00:00:00Z"));
        let keys = |r: std::ops::Range<u32>| r.map(|i| i.to_string()).collect::<Vec<_>>();
        st.record_page("s", &[], keys(0..4), Next::Cursor("4".into()), overlap);
        st.record_page("s", &[], keys(4..8), Next::Cursor("8".into()), overlap);
        for i in 0..SAME_PAGE_LIMIT {
            assert!(!st.between_passes(), "ended early at page {i}");
            let shifted = if i % 2 == 0 { keys(2..6) } else { keys(4..8) };
            st.record_page("s", &[], shifted, Next::Cursor("12".into()), overlap);
        }
        assert!(st.between_passes());
    }
}
