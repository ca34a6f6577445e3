//! Pagination rules shared by the window walkers: when a page is the last,
//! how an offset walk moves (and notices entries moving under it), how
//! times are written in a query, and where the entries of an answer are.

use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{error, warn};

use super::window::{Next, WindowState};
use crate::metrics::metrics;

/// When a page ends a pass in offset and page pagination.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// A page shorter than the limit the server echoes (when below
    /// `page_size`) is the last; any other short page is confirmed by one
    /// more request (servers clamp silently, and may change the clamp).
    #[default]
    ShortPage,
    /// Only an empty page is the last (for APIs whose page size varies,
    /// e.g. pages cut by bytes).
    EmptyPage,
}

/// Whether a page of `returned` items is provably the last one, when
/// `asked` were asked for and the answer echoed `echoed` as its limit.
/// Only this answer's own word counts: an echo below `asked` is the server
/// stating its size. Page sizes seen before prove nothing (a server may
/// lower its clamp mid-walk, or cut pages by bytes), and neither does an
/// echo of `asked` (servers echo what they were sent): such a short page
/// costs one more request, which comes back empty at the end.
pub fn page_is_last(stop: Stop, asked: usize, returned: usize, echoed: Option<usize>) -> bool {
    match stop {
        _ if returned == 0 => true,
        Stop::EmptyPage => false,
        Stop::ShortPage => echoed.is_some_and(|e| e < asked && returned < e),
    }
}

/// A time as the query wants it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// `2026-03-15T08:42:17.003Z`
    #[default]
    Rfc3339,
    /// `2026-03-15T08:42:17Z` (whole seconds, rounded down)
    Rfc3339Seconds,
    /// `2026-03-15` (the day, rounded down)
    Date,
    /// Seconds since the epoch.
    Unix,
    /// Milliseconds since the epoch.
    UnixMs,
}

impl TimeFormat {
    pub fn format(self, t: DateTime<Utc>) -> String {
        use chrono::SecondsFormat;
        match self {
            TimeFormat::Rfc3339 => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            TimeFormat::Rfc3339Seconds => t.to_rfc3339_opts(SecondsFormat::Secs, true),
            TimeFormat::Date => t.format("%Y-%m-%d").to_string(),
            TimeFormat::Unix => t.timestamp().to_string(),
            TimeFormat::UnixMs => t.timestamp_millis().to_string(),
        }
    }
}

/// Restarts of one pass's walk after its offsets shifted backwards; past
/// this the walk goes on (a server purging faster than a walk completes).
pub const OFFSET_RESTART_LIMIT: u32 = 3;

impl WindowState {
    /// Where an offset walk goes after a page holding `keys`, asked at the
    /// pass's cursor; `last` when the page is provably the last. Each page
    /// is asked from the offset of the previous page's last entry, so it
    /// must hold that entry: when it does not, entries before the cursor
    /// were deleted (retention purges the oldest) and later ones moved to
    /// offsets already read, so the walk restarts at the window's first
    /// page (what it re-reads is dropped by key). Call before `record_page`.
    pub fn next_offset(&mut self, source: &str, keys: &[String], last: bool) -> Next {
        let Some(pass) = self.pass.as_mut() else {
            return Next::Done;
        };
        let at: u64 = pass
            .cursor
            .as_deref()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let anchor = pass.anchor.take();
        let found = anchor.as_ref().map(|a| keys.iter().position(|k| k == a));
        if let Some(None) = found {
            metrics().offset_shifts.with_label_values(&[source]).inc();
            if pass.offset_restarts < OFFSET_RESTART_LIMIT {
                pass.offset_restarts += 1;
                warn!(source, offset = at, restarts = pass.offset_restarts, "the page lacks the last entry of the page before: entries were deleted or purged under the cursor (or an insert burst moved it); walking this window again from its first page");
                // The re-read pages are expected, not a stuck API.
                pass.recent.clear();
                pass.recent_split = 0;
                pass.same_pages = 0;
                return Next::Cursor("0".into());
            }
            error!(source, offset = at, "the page lacks the last entry of the page before again; going on, so entries deleted under the cursor may have moved past it (retention purging faster than a pass completes: shorten the window with start_at, or page newest first)");
        }
        let after_anchor = match found {
            Some(Some(p)) => keys.len() - p - 1,
            _ => keys.len(),
        };
        match keys.last() {
            Some(key) if !last && after_anchor > 0 => {
                pass.anchor = Some(key.clone());
                Next::Cursor((at + keys.len() as u64 - 1).to_string())
            }
            _ => Next::Done,
        }
    }
}

/// The entries of an answer: at `items_path`, else a top-level array or
/// the first array among `candidates`; `what` names them in errors. With
/// `null_is_empty` a `null` list is an empty one, else not a list.
pub fn find_items<'a>(
    root: &'a RawValue,
    items_path: Option<&crate::event::FieldPath>,
    candidates: &[&str],
    what: &str,
    null_is_empty: bool,
) -> Result<Vec<&'a RawValue>, String> {
    let list = match items_path {
        Some(p) => p.lookup(root).ok_or_else(|| format!("no \"{p}\" member"))?,
        None if root.get().starts_with('[') => root,
        None => candidates
            .iter()
            .filter_map(|k| crate::event::get_field(root, k))
            .find(|v| v.get().starts_with('['))
            .ok_or_else(|| {
                format!(
                    "no list of {what} (a top-level array or one of {}; set items_path)",
                    candidates.join(", ")
                )
            })?,
    };
    if null_is_empty && list.get() == "null" {
        return Ok(Vec::new());
    }
    serde_json::from_str(list.get()).map_err(|e| format!("{what} are not a list: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::pull::test_support::t;
    use std::time::Duration;

    #[test]
    fn a_clamped_page_is_not_the_last_one() {
        let last = |returned, echoed| page_is_last(Stop::ShortPage, 500, returned, echoed);
        // Asked for 500, the server serves 300 and echoes nothing.
        assert!(!last(300, None), "unknown size");
        assert!(!last(120, None), "no proof without the server's word");
        assert!(
            !last(300, Some(500)),
            "an echo of what was asked proves nothing"
        );
        assert!(last(0, None));
        // An echo below what was asked is the server's own size.
        assert!(!last(300, Some(300)));
        assert!(last(299, Some(300)));
        // empty_page trusts nothing but an empty page.
        assert!(!page_is_last(Stop::EmptyPage, 50, 1, Some(10)));
        assert!(page_is_last(Stop::EmptyPage, 50, 0, None));
    }

    #[test]
    fn a_lowered_clamp_does_not_end_the_pass() {
        // The server served 60 a page, then lowers its clamp to 40 (load
        // shedding, pages cut by bytes): a page of 40 is not the last.
        let last = |returned, echoed| page_is_last(Stop::ShortPage, 250, returned, echoed);
        assert!(!last(60, None));
        assert!(
            !last(40, None),
            "a page smaller than the largest served ended the pass"
        );
        assert!(!last(40, Some(250)));
    }

    #[test]
    fn an_offset_walk_restarts_when_entries_move_back() {
        let overlap = Duration::from_secs(60);
        let keys = |r: std::ops::Range<u32>| r.map(|i| i.to_string()).collect::<Vec<_>>();
        let mut st = WindowState::default();
        st.pass(overlap, t("2026-01-01T00:00:00Z"));
        let page = |st: &mut WindowState, k: Vec<String>, last: bool| {
            let next = st.next_offset("s", &k, last);
            let cursor = match &next {
                Next::Cursor(c) => Some(c.clone()),
                Next::Done => None,
            };
            st.record_page("s", &[], k, next, overlap);
            cursor
        };
        // Oldest first: 0..5 at offset 0, then from offset 4 (entry 4).
        assert_eq!(page(&mut st, keys(0..5), false).as_deref(), Some("4"));
        assert_eq!(page(&mut st, keys(4..9), false).as_deref(), Some("8"));
        // Two oldest purged: offset 8 now starts at entry 10; 8 is gone
        // from view and 9 would be skipped.
        assert_eq!(
            page(&mut st, keys(10..15), false).as_deref(),
            Some("0"),
            "a backward shift must restart the walk"
        );
        assert_eq!(page(&mut st, keys(2..7), false).as_deref(), Some("4"));
        // Inserts ahead of the cursor (anchor found further in) are fine.
        assert_eq!(page(&mut st, keys(5..10), false).as_deref(), Some("8"));
        // Only the anchor left: the end.
        assert_eq!(page(&mut st, keys(9..10), false), None);
        assert!(st.between_passes());
    }

    #[test]
    fn time_formats() {
        let x = t("2026-03-15T08:42:17.003Z");
        assert_eq!(TimeFormat::Rfc3339.format(x), "2026-03-15T08:42:17.003Z");
        assert_eq!(TimeFormat::Rfc3339Seconds.format(x), "2026-03-15T08:42:17Z");
        assert_eq!(TimeFormat::Date.format(x), "2026-03-15");
        assert_eq!(TimeFormat::Unix.format(x), "1773564137");
        assert_eq!(TimeFormat::UnixMs.format(x), "1773564137003");
    }
}
