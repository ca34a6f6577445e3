//! De-duplication: the bounded set of keys a source delivered recently, and
//! the choice of a response's new events.
//!
//! Sources re-read what they delivered (an overlap window after a restart,
//! a page repeating the one before), so each keeps the keys it delivered in
//! its checkpoint and drops them when they come back.

use std::borrow::Cow;
use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};
use tracing::warn;

use crate::event::Event;
use crate::metrics::{metrics, DROPPED_BEFORE_WINDOW};

/// The key an event is de-duplicated by: its id, else a digest of its bytes
/// (an event without an id must not be re-sent on every poll of its window).
/// Borrowed when there is an id: no allocation per event on a hot page.
pub fn dedup_key(ev: &Event) -> Cow<'_, str> {
    match ev.id.as_deref().filter(|id| !id.trim().is_empty()) {
        Some(id) => id.into(),
        None => {
            let digest = Sha256::digest(&ev.raw);
            format!("sha256:{}", hex::encode(&digest[..16])).into()
        }
    }
}

/// The keys delivered most recently, oldest first, with their event times,
/// bounded in count. Sources that re-read a time window also prune the
/// entries older than the window, so the set (and the checkpoint) stays as
/// small as the window.
#[derive(Clone, Debug)]
pub struct SeenSet {
    // One allocation per key, shared by the order and the set.
    order: VecDeque<(Arc<str>, Option<DateTime<Utc>>)>,
    set: HashSet<Arc<str>>,
    cap: usize,
}

/// A set built without a configured bound (a fresh checkpoint) holds this
/// many; sources set theirs with [`SeenSet::with_cap`].
const DEFAULT_SEEN_CAP: usize = 100_000;

impl Default for SeenSet {
    fn default() -> Self {
        SeenSet::new(DEFAULT_SEEN_CAP)
    }
}

impl SeenSet {
    pub fn new(cap: usize) -> Self {
        SeenSet {
            order: VecDeque::new(),
            set: HashSet::new(),
            cap: cap.max(1),
        }
    }

    /// Rebuilds a set from a checkpoint, under a possibly new cap.
    pub fn with_cap(mut self, cap: usize) -> Self {
        self.cap = cap.max(1);
        self.evict();
        self
    }

    pub fn contains(&self, key: &str) -> bool {
        self.set.contains(key)
    }

    /// Records `key`; false when it was already present.
    pub fn insert(&mut self, key: &str, time: Option<DateTime<Utc>>) -> bool {
        if self.set.contains(key) {
            return false;
        }
        let key: Arc<str> = key.into();
        self.set.insert(key.clone());
        self.order.push_back((key, time));
        self.evict();
        true
    }

    fn evict(&mut self) {
        while self.order.len() > self.cap {
            if let Some((old, _)) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Forgets entries whose event time is before `cutoff`: a query from
    /// `cutoff` cannot return them again.
    pub fn prune_before(&mut self, cutoff: DateTime<Utc>) {
        let before = self.order.len();
        self.order.retain(|(_, t)| t.is_none_or(|t| t >= cutoff));
        if self.order.len() != before {
            self.set = self.order.iter().map(|(k, _)| k.clone()).collect();
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }

    /// The keys alone, oldest first, for checkpoints that store no times
    /// (Veza's `recent_ids`); [`SeenSet`] reads both forms back.
    pub fn keys_only(&self) -> KeysOnly<'_> {
        KeysOnly(self)
    }
}

/// Serialized as `[[key, time|null], ...]`, oldest first.
impl Serialize for SeenSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.order.len()))?;
        for (k, t) in &self.order {
            seq.serialize_element(&(&**k, t))?;
        }
        seq.end()
    }
}

/// [`SeenSet::keys_only`]: `["key", ...]`, oldest first.
pub struct KeysOnly<'a>(&'a SeenSet);

impl Serialize for KeysOnly<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.order.len()))?;
        for (k, _) in &self.0.order {
            seq.serialize_element(&**k)?;
        }
        seq.end()
    }
}

/// One stored entry: `[key, time|null]`, or a bare key.
#[derive(Deserialize)]
#[serde(untagged)]
enum Stored {
    Pair(String, Option<DateTime<Utc>>),
    Key(String),
}

/// Reads both forms; the cap is set by the source ([`SeenSet::with_cap`]).
impl<'de> Deserialize<'de> for SeenSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SeenSet;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of ids or of [id, time] pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SeenSet, A::Error> {
                let mut out = SeenSet::new(usize::MAX);
                while let Some(entry) = seq.next_element::<Stored>()? {
                    match entry {
                        Stored::Pair(k, t) => out.insert(&k, t),
                        Stored::Key(k) => out.insert(&k, None),
                    };
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

/// Events of one response that are new: not seen before (nor twice in the
/// response), and not older than the window's start.
pub struct Fresh {
    pub events: Vec<Event>,
    /// Ids already delivered (the overlap doing its job).
    pub repeated: u64,
    /// Events older than the window start (delivered before, or later than
    /// the overlap allows: make `overlap` longer if the API indexes late).
    pub before_window: u64,
    /// The oldest of those, and the window start, for the log line.
    pub oldest_before_window: Option<DateTime<Utc>>,
    pub window_start: Option<DateTime<Utc>>,
}

/// Picks the new events of a response without recording them yet: the
/// caller records each batch's ids as it builds that batch's checkpoint.
pub fn fresh(seen: &SeenSet, events: Vec<Event>, window_start: Option<DateTime<Utc>>) -> Fresh {
    fresh_except(seen, |_| false, events, window_start)
}

/// [`fresh`], also dropping (as repeated) the events whose key `also_seen`
/// holds: one key per event, looked up once.
pub(super) fn fresh_except(
    seen: &SeenSet,
    also_seen: impl Fn(&str) -> bool,
    events: Vec<Event>,
    window_start: Option<DateTime<Utc>>,
) -> Fresh {
    let mut out = Fresh {
        events: Vec::with_capacity(events.len()),
        repeated: 0,
        before_window: 0,
        oldest_before_window: None,
        window_start,
    };
    let mut here: HashSet<String> = HashSet::new();
    for ev in events {
        if let (Some(start), Some(t)) = (window_start, ev.time) {
            if t < start {
                out.before_window += 1;
                out.oldest_before_window = Some(out.oldest_before_window.map_or(t, |o| o.min(t)));
                continue;
            }
        }
        let key = dedup_key(&ev);
        if seen.contains(&key) || also_seen(&key) || !here.insert(key.into_owned()) {
            out.repeated += 1;
            continue;
        }
        out.events.push(ev);
    }
    out
}

/// Counts the outcome of [`fresh`] in the shared metrics.
pub fn count_fresh(source: &str, fetched: usize, f: &Fresh) {
    let m = metrics();
    m.events_fetched
        .with_label_values(&[source])
        .inc_by(fetched as u64);
    if f.repeated > 0 {
        m.events_deduplicated
            .with_label_values(&[source])
            .inc_by(f.repeated);
    }
}

/// Counts and logs the entries of [`fresh`] older than the window: for an
/// API asked for exactly the window (a time filter), each one is an entry
/// not delivered. (Not for QuickZTNA, whose answers cover whole days or the
/// newest N entries: older entries there are re-reads, every poll.)
pub fn report_before_window(source: &str, f: &Fresh) {
    let m = metrics();
    if f.before_window > 0 {
        m.events_dropped
            .with_label_values(&[source, DROPPED_BEFORE_WINDOW])
            .inc_by(f.before_window);
        let fmt = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
        warn!(
            source,
            dropped = f.before_window,
            oldest = %fmt(f.oldest_before_window),
            window_start = %fmt(f.window_start),
            "entries older than the window start were not delivered: delivered by an earlier pass, or indexed later than `overlap` allows (then raise overlap)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::source::pull::test_support::{ev, t};

    #[test]
    fn seen_set_prunes_by_time_and_round_trips() {
        let mut s = SeenSet::new(3);
        assert!(s.insert("a", Some(t("2026-01-01T00:00:00Z"))));
        assert!(!s.insert("a", None));
        s.insert("b", Some(t("2026-01-01T00:05:00Z")));
        s.insert("c", None);
        s.prune_before(t("2026-01-01T00:01:00Z"));
        assert!(!s.contains("a") && s.contains("b") && s.contains("c"));
        s.insert("d", None);
        s.insert("e", None);
        assert!(!s.contains("b"), "cap evicts the oldest");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"[["c",null],["d",null],["e",null]]"#);
        let back: SeenSet = serde_json::from_str(&json).unwrap();
        let back = back.with_cap(2);
        assert_eq!(back.len(), 2);
        assert!(back.contains("e") && !back.contains("c"));
    }

    #[test]
    fn keys_only_form_is_bounded_ordered_and_read_back() {
        let mut r = SeenSet::new(3);
        for k in ["a", "b", "c", "d"] {
            r.insert(k, None);
        }
        assert!(!r.contains("a") && r.contains("d"));
        let json = serde_json::to_string(&r.keys_only()).unwrap();
        assert_eq!(json, r#"["b","c","d"]"#);
        let back: SeenSet = serde_json::from_str(&json).unwrap();
        assert!(back.contains("b") && back.len() == 3);
        let back = back.with_cap(2);
        assert!(
            !back.contains("b") && back.contains("d"),
            "keeps the newest"
        );
    }

    #[test]
    fn fresh_drops_seen_repeated_and_old_and_keys_idless_events_by_content() {
        let mut seen = SeenSet::new(10);
        seen.insert("x", None);
        let events = vec![
            ev(Some("x"), "2026-01-01T00:10:00Z", "{}"),
            ev(Some("y"), "2026-01-01T00:10:00Z", "{}"),
            ev(Some("y"), "2026-01-01T00:10:00Z", "{}"),
            ev(Some("old"), "2026-01-01T00:00:00Z", "{}"),
            ev(None, "2026-01-01T00:10:00Z", r#"{"a":1}"#),
            ev(None, "2026-01-01T00:10:00Z", r#"{"a":1}"#),
            ev(None, "2026-01-01T00:10:00Z", r#"{"a":2}"#),
        ];
        let f = fresh(&seen, events, Some(t("2026-01-01T00:05:00Z")));
        assert_eq!(f.events.len(), 3);
        assert_eq!(f.repeated, 3);
        assert_eq!(f.before_window, 1);
        assert!(dedup_key(&f.events[1]).starts_with("sha256:"));
    }

    #[test]
    fn empty_ids_are_no_ids() {
        let events = vec![
            ev(Some(""), "2026-01-01T00:10:00Z", r#"{"id":"","n":1}"#),
            ev(Some(""), "2026-01-01T00:10:00Z", r#"{"id":"","n":2}"#),
            ev(Some(" "), "2026-01-01T00:10:00Z", r#"{"id":" ","n":3}"#),
        ];
        let f = fresh(&SeenSet::new(10), events, None);
        assert_eq!(f.events.len(), 3, "distinct entries with empty ids merged");
        assert!(dedup_key(&f.events[0]).starts_with("sha256:"));
    }
}
