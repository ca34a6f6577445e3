//! Events as they travel through the pipeline: the raw JSON bytes the source
//! returned, plus the few fields the pipeline and the sinks need.
//!
//! Sinks wrap `raw`; nobody re-serialises an event, so what the SIEM receives
//! is byte for byte what the API sent.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use chrono::{DateTime, TimeZone, Utc};
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// One audit event. Every field is shared, so copying an event (a route's
/// filter, a spool's direct attempt) allocates nothing.
#[derive(Clone, Debug)]
pub struct Event {
    /// The event's JSON object, exactly as received.
    pub raw: Bytes,
    /// The event's unique id, when the event carries one.
    pub id: Option<Arc<str>>,
    /// When the event happened or was persisted, per the source's time path.
    pub time: Option<DateTime<Utc>>,
    /// Event type (endpoint, action, intent…), for filters, routing and headers.
    pub kind: Option<Arc<str>>,
}

/// One page of a source, the unit of delivery and of checkpointing.
#[derive(Debug)]
pub struct Batch {
    pub source: Arc<str>,
    pub events: Vec<Event>,
    /// Serialized source state to persist once every sink confirmed this
    /// batch and all batches before it.
    pub checkpoint: Bytes,
    /// Newest event time in the batch, for the checkpoint-lag metric.
    pub newest_time: Option<DateTime<Utc>>,
    pub fetched_at: Instant,
}

/// A dotted path into an event (`identity.user_id`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldPath(Vec<String>);

impl FieldPath {
    pub fn parse(path: &str) -> Result<Self, String> {
        let segs: Vec<String> = path.split('.').map(str::to_string).collect();
        if segs.iter().any(String::is_empty) {
            return Err(format!(
                "\"{path}\" is not a field path (e.g. request_id or identity.user_id)"
            ));
        }
        Ok(FieldPath(segs))
    }

    /// The value of the config key at `key` (its full path), for building
    /// a component: the error names the key.
    pub fn of_key(text: &str, key: &str) -> anyhow::Result<Self> {
        Self::parse(text).map_err(|e| anyhow::anyhow!("{key}: {e}"))
    }

    /// Reports the value of the config key at `key` when it is not a path.
    pub fn check(text: &str, key: &str, problems: &mut crate::config::Problems) {
        if let Err(e) = Self::parse(text) {
            problems.push(key, e);
        }
    }

    pub fn first(&self) -> &str {
        &self.0[0]
    }

    pub fn segments(&self) -> &[String] {
        &self.0
    }

    /// Looks the path up in a JSON object without parsing more than needed.
    pub fn lookup<'a>(&self, object: &'a RawValue) -> Option<&'a RawValue> {
        let mut cur = object;
        for seg in &self.0 {
            cur = get_field(cur, seg)?;
        }
        Some(cur)
    }

    /// Looks the path up in an object's top-level values already found.
    fn lookup_from<'a>(&self, top: &'a RawValue) -> Option<&'a RawValue> {
        let mut cur = top;
        for seg in &self.0[1..] {
            cur = get_field(cur, seg)?;
        }
        Some(cur)
    }
}

impl fmt::Display for FieldPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0.join("."))
    }
}

/// Which fields to extract from each event of a source. Each list is tried
/// in order; the first path present wins (Veza has two event shapes).
#[derive(Clone, Debug)]
pub struct FieldExtractor {
    pub id: Vec<FieldPath>,
    pub time: Vec<FieldPath>,
    pub kind: Vec<FieldPath>,
    wanted: Vec<String>,
    /// One shared copy of each event type seen: a source has a few dozen
    /// types over millions of events, and an allocation per event cost
    /// memory and time.
    kinds: Arc<std::sync::Mutex<std::collections::HashMap<Box<str>, Arc<str>>>>,
}

/// Event types kept for sharing; past this many, new ones are not shared.
const SHARED_KINDS: usize = 1024;

impl FieldExtractor {
    pub fn new(id: Vec<FieldPath>, time: Vec<FieldPath>, kind: Vec<FieldPath>) -> Self {
        let mut wanted: Vec<String> = id
            .iter()
            .chain(&time)
            .chain(&kind)
            .map(|p| p.first().to_string())
            .collect();
        wanted.sort();
        wanted.dedup();
        FieldExtractor {
            id,
            time,
            kind,
            wanted,
            kinds: Arc::default(),
        }
    }

    /// Builds an event from one item of a page. `page` is the buffer the item
    /// borrows from, so the event's bytes are a zero-copy slice of it. An item
    /// that is not an object, or lacks the fields, is still an event (with
    /// no id, time or type): the pipeline delivers what the API returned.
    pub fn event(&self, page: &Bytes, item: &RawValue) -> Event {
        let text = item.get();
        let raw = slice_of(page, text.as_bytes());
        let fields = match TopFields::scan(item, &self.wanted) {
            Some(top) if text.starts_with('{') => self.from_top(&top.found),
            _ => Extracted::default(),
        };
        fields.into_event(raw)
    }

    /// Whether a top-level member of this name is read by some path.
    pub fn wants(&self, key: &str) -> bool {
        self.wanted.iter().any(|w| w == key)
    }

    /// The id, time and type from an object's wanted top-level members
    /// (name and value, in order; the first of a name counts).
    pub fn from_top(&self, top: &[(Cow<'_, str>, &RawValue)]) -> Extracted {
        let get = |key: &str| top.iter().find(|(k, _)| k == key).map(|(_, v)| *v);
        let find = |paths: &[FieldPath]| {
            paths.iter().find_map(|p| {
                get(p.first())
                    .and_then(|v| p.lookup_from(v))
                    .filter(|v| v.get() != "null")
            })
        };
        // An empty or blank id is no id (the next path is tried):
        // distinct entries that all say `"id": ""` must not be merged.
        let id = self
            .id
            .iter()
            .find_map(|p| {
                get(p.first())
                    .and_then(|v| p.lookup_from(v))
                    .and_then(scalar_text)
                    .filter(|t| !t.trim().is_empty())
            })
            .map(|t| Arc::from(&*t));
        let time = find(&self.time).and_then(parse_time);
        let kind = find(&self.kind)
            .and_then(scalar_text)
            .map(|t| self.shared_kind(&t));
        Extracted { id, time, kind }
    }

    fn shared_kind(&self, text: &str) -> Arc<str> {
        let mut kinds = self.kinds.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(kind) = kinds.get(text) {
            return kind.clone();
        }
        let kind: Arc<str> = Arc::from(text);
        if kinds.len() < SHARED_KINDS {
            kinds.insert(text.into(), kind.clone());
        }
        kind
    }
}

/// What a source extracts from an event besides its bytes.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Extracted {
    pub id: Option<Arc<str>>,
    pub time: Option<DateTime<Utc>>,
    pub kind: Option<Arc<str>>,
}

impl Extracted {
    pub fn into_event(self, raw: Bytes) -> Event {
        Event {
            raw,
            id: self.id,
            time: self.time,
            kind: self.kind,
        }
    }
}

/// A slice of `buf` when `part` points into it; a copy otherwise.
fn slice_of(buf: &Bytes, part: &[u8]) -> Bytes {
    let start = buf.as_ptr() as usize;
    let p = part.as_ptr() as usize;
    if p >= start && p + part.len() <= start + buf.len() {
        buf.slice_ref(part)
    } else {
        Bytes::copy_from_slice(part)
    }
}

/// Text of a JSON string or number, for ids and types.
pub fn scalar_text(v: &RawValue) -> Option<Cow<'_, str>> {
    let s = v.get();
    if s.starts_with('"') {
        let text: Cow<'_, str> = serde_json::from_str(s).ok()?;
        Some(text)
    } else if s.starts_with(|c: char| c == '-' || c.is_ascii_digit()) || s == "true" || s == "false"
    {
        Some(Cow::Borrowed(s))
    } else {
        None
    }
}

/// RFC 3339 strings, or numbers of epoch seconds (milliseconds when large).
pub fn parse_time(v: &RawValue) -> Option<DateTime<Utc>> {
    let s = v.get();
    if s.starts_with('"') {
        let text: Cow<'_, str> = serde_json::from_str(s).ok()?;
        DateTime::parse_from_rfc3339(&text)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    } else {
        let n: f64 = s.parse().ok()?;
        let secs = if n.abs() >= 1e11 { n / 1000.0 } else { n };
        let whole = secs.floor();
        let nanos = ((secs - whole) * 1e9) as u32;
        Utc.timestamp_opt(whole as i64, nanos).single()
    }
}

/// The top-level values of an object whose keys are wanted, found in one pass.
struct TopFields<'a> {
    found: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> TopFields<'a> {
    fn scan(object: &'a RawValue, wanted: &[String]) -> Option<Self> {
        let mut de = serde_json::Deserializer::from_str(object.get());
        let found = de
            .deserialize_map(CollectVisitor {
                wanted: Some(wanted),
            })
            .ok()?;
        Some(TopFields { found })
    }
}

/// Collects an object's members: those named in `wanted`, or all.
struct CollectVisitor<'w> {
    wanted: Option<&'w [String]>,
}

impl<'de> Visitor<'de> for CollectVisitor<'_> {
    type Value = Vec<(Cow<'de, str>, &'de RawValue)>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut found = Vec::new();
        while let Some(key) = map.next_key::<CowKey<'de>>()? {
            if self.wanted.is_none_or(|w| w.iter().any(|w| *w == key.0)) {
                let v: &'de RawValue = map.next_value()?;
                found.push((key.0, v));
            } else {
                map.next_value::<IgnoredAny>()?;
            }
        }
        Ok(found)
    }
}

/// A map key borrowed when it has no escapes, owned otherwise.
struct CowKey<'de>(Cow<'de, str>);

impl<'de> Deserialize<'de> for CowKey<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CowKey<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string key")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(CowKey(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(CowKey(Cow::Owned(v.to_string())))
            }
        }
        d.deserialize_str(V)
    }
}

/// The top-level members of one event object, found in one pass: several
/// lookups in the same event (severity, outcome, extra fields) then read
/// only the members they need instead of scanning the event each time.
pub struct TopIndex<'a> {
    members: Vec<(Cow<'a, str>, &'a RawValue)>,
}

impl<'a> TopIndex<'a> {
    /// The index of `raw`; `None` when it is not one JSON object.
    pub fn of(raw: &'a [u8]) -> Option<Self> {
        let text = std::str::from_utf8(raw).ok()?;
        if !text.trim_start().starts_with('{') {
            return None;
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let members = de.deserialize_map(CollectVisitor { wanted: None }).ok()?;
        de.end().ok()?;
        Some(TopIndex { members })
    }

    /// Like [`FieldPath::lookup`] on the whole event: the first member of
    /// the path's first name, then the rest of the path inside it.
    pub fn lookup(&self, path: &FieldPath) -> Option<&'a RawValue> {
        let top = self.members.iter().find(|(k, _)| k == path.first())?.1;
        path.lookup_from(top)
    }
}

/// One member of a JSON object, found without building the whole map.
pub fn get_field<'a>(object: &'a RawValue, key: &str) -> Option<&'a RawValue> {
    if !object.get().starts_with('{') {
        return None;
    }
    struct Seed<'k>(&'k str);
    impl<'de> DeserializeSeed<'de> for Seed<'_> {
        type Value = Option<&'de RawValue>;
        fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
            d.deserialize_map(self)
        }
    }
    impl<'de> Visitor<'de> for Seed<'_> {
        type Value = Option<&'de RawValue>;
        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a JSON object")
        }
        fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
            let mut hit = None;
            while let Some(k) = map.next_key::<CowKey<'de>>()? {
                if hit.is_none() && k.0 == self.0 {
                    hit = Some(map.next_value::<&'de RawValue>()?);
                } else {
                    map.next_value::<IgnoredAny>()?;
                }
            }
            Ok(hit)
        }
    }
    let mut de = serde_json::Deserializer::from_str(object.get());
    Seed(key).deserialize(&mut de).ok().flatten()
}

#[cfg(test)]
impl FieldExtractor {
    /// Veza's default id, time and type paths, for tests.
    pub(crate) fn veza_defaults() -> Self {
        let paths = |list: &[&str]| list.iter().map(|p| FieldPath::parse(p).unwrap()).collect();
        FieldExtractor::new(
            paths(&["request_id", "id"]),
            paths(&["persisted_at", "ended_at", "timestamp"]),
            paths(&["endpoint", "intent", "meta.type"]),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn extracts_from_both_veza_shapes_and_slices_the_page() {
        let page = Bytes::from_static(
            br#"[{"request_id":"r1","ended_at":"2023-07-26T08:23:17.151080751Z","endpoint":"/x"},
                 {"id":42,"timestamp":1690359797.5,"intent":"login"}]"#,
        );
        let items: Vec<&RawValue> = serde_json::from_slice(&page).unwrap();
        let ex = FieldExtractor::veza_defaults();
        let a = ex.event(&page, items[0]);
        assert_eq!(a.id.as_deref(), Some("r1"));
        assert_eq!(a.kind.as_deref(), Some("/x"));
        assert_eq!(
            a.time
                .unwrap()
                .to_rfc3339_opts(chrono::SecondsFormat::Nanos, true),
            "2023-07-26T08:23:17.151080751Z"
        );
        // Zero-copy: the event's bytes live inside the page buffer.
        let base = page.as_ptr() as usize;
        assert!(a.raw.as_ptr() as usize >= base && (a.raw.as_ptr() as usize) < base + page.len());
        let b = ex.event(&page, items[1]);
        assert_eq!(b.id.as_deref(), Some("42"));
        assert_eq!(b.kind.as_deref(), Some("login"));
        assert_eq!(b.time.unwrap().timestamp_millis(), 1_690_359_797_500);
    }

    #[test]
    fn events_of_one_type_share_its_text_and_others_keep_theirs() {
        let page = Bytes::from_static(
            br#"[{"endpoint":"/x","request_id":"1"},{"endpoint":"/x","request_id":"2"},{"endpoint":"/y"}]"#,
        );
        let items: Vec<&RawValue> = serde_json::from_slice(&page).unwrap();
        let ex = FieldExtractor::veza_defaults();
        let events: Vec<Event> = items.iter().map(|i| ex.event(&page, i)).collect();
        let kinds: Vec<&Arc<str>> = events.iter().map(|e| e.kind.as_ref().unwrap()).collect();
        assert!(Arc::ptr_eq(kinds[0], kinds[1]));
        assert_eq!(&**kinds[2], "/y");
        assert_eq!(events[1].id.as_deref(), Some("2"));
    }

    #[test]
    fn nested_paths_and_escaped_keys() {
        let page = Bytes::from_static(br#"{"me\u0074a":{"type":"auth.login"},"id":"a\"b"}"#);
        let item: &RawValue = serde_json::from_slice(&page).unwrap();
        let e = FieldExtractor::veza_defaults().event(&page, item);
        assert_eq!(e.kind.as_deref(), Some("auth.login"));
        assert_eq!(e.id.as_deref(), Some("a\"b"));
    }

    #[test]
    fn non_objects_pass_through_and_missing_fields_are_none() {
        let page = Bytes::from_static(br#"[1, {"x":null}, {"request_id":null,"id":"fallback"}]"#);
        let items: Vec<&RawValue> = serde_json::from_slice(&page).unwrap();
        let ex = FieldExtractor::veza_defaults();
        let n = ex.event(&page, items[0]);
        assert_eq!(&n.raw[..], b"1");
        assert!(n.id.is_none());
        let e = ex.event(&page, items[1]);
        assert!(e.id.is_none() && e.time.is_none() && e.kind.is_none());
        assert_eq!(ex.event(&page, items[2]).id.as_deref(), Some("fallback"));
        let page = Bytes::from_static(
            br#"[{"request_id":"","id":""}, {"request_id":" "}, {"request_id":"","id":7}]"#,
        );
        let items: Vec<&RawValue> = serde_json::from_slice(&page).unwrap();
        assert!(
            ex.event(&page, items[0]).id.is_none(),
            "an empty id is no id"
        );
        assert!(
            ex.event(&page, items[1]).id.is_none(),
            "a blank id is no id"
        );
        assert_eq!(ex.event(&page, items[2]).id.as_deref(), Some("7"));
    }

    #[test]
    fn top_index_answers_like_a_lookup_in_the_whole_event() {
        let events = [
            r#"{"status":{"grpc_code":"DENIED"},"x":[1,{"status":2}],"status":{"grpc_code":"OK"}}"#,
            " {\"st\\u0061tus\" : {\"grpc_code\":7} , \"sev\":\"warning\"} ",
            r#"{}"#,
        ];
        let paths = [
            FieldPath::parse("status.grpc_code").unwrap(),
            FieldPath::parse("sev").unwrap(),
            FieldPath::parse("x").unwrap(),
        ];
        for e in events {
            let whole: &RawValue = serde_json::from_str(e).unwrap();
            let index = TopIndex::of(e.as_bytes()).expect("an object");
            for p in &paths {
                assert_eq!(
                    index.lookup(p).map(RawValue::get),
                    p.lookup(whole).map(RawValue::get),
                    "{p} in {e}"
                );
            }
        }
        for not_an_object in ["[1]", "\"s\"", "{\"a\":1", "{\"a\":1} x"] {
            assert!(
                TopIndex::of(not_an_object.as_bytes()).is_none(),
                "{not_an_object}"
            );
        }
        assert!(TopIndex::of(b"{\"a\":\"\xff\"}").is_none(), "not UTF-8");
    }

    #[test]
    fn bad_paths_are_rejected() {
        assert!(FieldPath::parse("a..b").is_err());
        assert!(FieldPath::parse("").is_err());
    }
}
