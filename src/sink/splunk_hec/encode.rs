//! HEC's event envelopes: measured once per delivery to cut requests, and
//! written per request when it is sent.

use std::ops::Range;

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde_json::value::RawValue;

use super::config::SplunkHecConfig;
use crate::event::{Event, FieldPath};
use crate::sink::BatchConfig;

/// Splunk's default `max_content_length` used to be 1 MB (and Splunk Cloud
/// still caps requests near it); envelopes are counted before gzip.
const DEFAULT_MAX_BYTES: usize = 900_000;
const DEFAULT_MAX_EVENTS: usize = 1000;

/// Envelope metadata, JSON-encoded once.
pub(super) struct Envelope {
    host: Option<String>,
    source: Option<String>,
    sourcetype: Option<String>,
    index: Option<String>,
    fields: Vec<(String, FieldPath)>,
    /// `schema = "ocsf"` without a `sourcetype`: each event's is
    /// `ocsf:<class>`, from its `class_name`.
    ocsf_sourcetype: bool,
}

/// `"ocsf:api_activity"` (JSON-encoded) for an OCSF event of that class.
fn ocsf_sourcetype(raw: &[u8]) -> Option<String> {
    let object = serde_json::from_slice::<&RawValue>(raw).ok()?;
    let name: String =
        serde_json::from_str(crate::event::get_field(object, "class_name")?.get()).ok()?;
    Some(json_string(&format!(
        "ocsf:{}",
        crate::format::ocsf::class_slug(&name)
    )))
}

pub(super) fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Epoch seconds with microseconds, HEC's `time` format. Written in place:
/// `format!` here cost 4 % of a HEC run's CPU.
fn write_epoch(out: &mut Vec<u8>, t: DateTime<Utc>) {
    let micros = t.timestamp_micros();
    if micros < 0 {
        out.push(b'-');
    }
    let abs = micros.unsigned_abs();
    out.extend_from_slice(itoa::Buffer::new().format(abs / 1_000_000).as_bytes());
    let mut fraction = [b'0'; 7];
    fraction[0] = b'.';
    let mut rest = abs % 1_000_000;
    for digit in fraction[1..].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    out.extend_from_slice(&fraction);
}

/// An indexed field's value as HEC takes it: a string or an array of
/// strings. Numbers and booleans become their text, objects their JSON
/// text; null (and nothing) leaves the field out.
fn write_field_value(out: &mut Vec<u8>, v: &RawValue) -> bool {
    let text = v.get();
    match text.as_bytes().first() {
        Some(b'"') => out.extend_from_slice(text.as_bytes()),
        Some(b'n') | None => return false,
        Some(b'[') => {
            let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(text) else {
                return false;
            };
            out.push(b'[');
            let mut first = true;
            for item in items {
                let t = item.get();
                if t == "null" || t.starts_with('[') {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                if t.starts_with('"') {
                    out.extend_from_slice(t.as_bytes());
                } else {
                    out.extend_from_slice(json_string(t).as_bytes());
                }
            }
            out.push(b']');
        }
        Some(_) => out.extend_from_slice(json_string(text).as_bytes()),
    }
    true
}

impl Envelope {
    pub(super) fn new(cfg: &SplunkHecConfig) -> anyhow::Result<Self> {
        let mut fields = Vec::new();
        for (name, path) in &cfg.fields {
            let p = FieldPath::parse(path).map_err(|e| anyhow::anyhow!("fields.{name}: {e}"))?;
            fields.push((json_string(name), p));
        }
        Ok(Envelope {
            host: cfg.host.as_deref().map(json_string),
            source: cfg.source.as_deref().map(json_string),
            sourcetype: cfg.sourcetype.as_deref().map(json_string),
            index: cfg.index.as_deref().map(json_string),
            fields,
            ocsf_sourcetype: false,
        })
    }

    /// Each event's `sourcetype` is `ocsf:<class>` unless one is configured.
    pub(super) fn with_ocsf_sourcetype(mut self) -> Self {
        self.ocsf_sourcetype = self.sourcetype.is_none();
        self
    }

    /// Appends one event's envelope; `source` is JSON-encoded already.
    fn write(&self, out: &mut Vec<u8>, source: &str, e: &Event) {
        self.write_head(out, source, e);
        out.extend_from_slice(&e.raw);
        out.push(b'}');
    }

    /// The envelope up to the event itself (`…,"event":`).
    fn write_head(&self, out: &mut Vec<u8>, source: &str, e: &Event) {
        out.push(b'{');
        if let Some(t) = e.time {
            out.extend_from_slice(b"\"time\":");
            write_epoch(out, t);
            out.push(b',');
        }
        let source = self.source.as_deref().unwrap_or(source);
        let class_sourcetype = self
            .ocsf_sourcetype
            .then(|| ocsf_sourcetype(&e.raw))
            .flatten();
        for (key, value) in [
            ("host", self.host.as_deref()),
            ("source", Some(source)),
            (
                "sourcetype",
                self.sourcetype.as_deref().or(class_sourcetype.as_deref()),
            ),
            ("index", self.index.as_deref()),
        ] {
            if let Some(v) = value {
                out.push(b'"');
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\":");
                out.extend_from_slice(v.as_bytes());
                out.push(b',');
            }
        }
        if !self.fields.is_empty() {
            if let Ok(object) = serde_json::from_slice::<&RawValue>(&e.raw) {
                let start = out.len();
                out.extend_from_slice(b"\"fields\":{");
                let mut any = false;
                for (name, path) in &self.fields {
                    let Some(v) = path.lookup(object) else {
                        continue;
                    };
                    let mark = out.len();
                    if any {
                        out.push(b',');
                    }
                    out.extend_from_slice(name.as_bytes());
                    out.push(b':');
                    if write_field_value(out, v) {
                        any = true;
                    } else {
                        out.truncate(mark);
                    }
                }
                if any {
                    out.extend_from_slice(b"},");
                } else {
                    out.truncate(start);
                }
            }
        }
        out.extend_from_slice(b"\"event\":");
    }

    /// The envelope sizes of `events`, all from `source` (JSON-encoded),
    /// to cut requests by; no envelope is kept.
    pub(super) fn measure(&self, source: &str, events: &[Event]) -> Sizes {
        let mut scratch = Vec::new();
        let mut offsets = Vec::with_capacity(events.len() + 1);
        offsets.push(0);
        let mut total = 0;
        for e in events {
            scratch.clear();
            // The event's bytes are copied only when the body is built.
            self.write_head(&mut scratch, source, e);
            total += scratch.len() + e.raw.len() + 1;
            offsets.push(total);
        }
        Sizes { offsets }
    }

    /// One request's body: the envelopes of `events`, all from `source`
    /// (JSON-encoded), `size` bytes as measured. Built when the request is sent, so the bodies in
    /// memory are those of the requests on the wire, not of every run
    /// waiting for a send slot.
    pub(super) fn encode(&self, source: &str, events: &[Event], size: usize) -> Bytes {
        let mut buf = Vec::with_capacity(size);
        for e in events {
            self.write(&mut buf, source, e);
        }
        buf.into()
    }
}

/// The cumulative envelope sizes of one `deliver` call's events.
pub(super) struct Sizes {
    offsets: Vec<usize>,
}

impl Sizes {
    /// The envelope bytes of `r`.
    pub(super) fn bytes(&self, r: &Range<usize>) -> usize {
        self.offsets[r.end] - self.offsets[r.start]
    }

    /// Runs of at most `max_events` events and `max_bytes` envelope bytes
    /// (an event larger than that alone).
    pub(super) fn runs(&self, batch: &BatchConfig) -> Vec<Range<usize>> {
        let max_events = batch.max_events.unwrap_or(DEFAULT_MAX_EVENTS).max(1);
        let max_bytes = batch.max_bytes.unwrap_or(DEFAULT_MAX_BYTES).max(1);
        let n = self.offsets.len() - 1;
        let mut out = Vec::new();
        let mut start = 0;
        for i in 0..n {
            let bytes = self.offsets[i + 1] - self.offsets[start];
            if i > start && (i - start >= max_events || bytes > max_bytes) {
                out.push(start..i);
                start = i;
            }
        }
        if start < n {
            out.push(start..n);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn event(raw: &str, time: Option<DateTime<Utc>>) -> Event {
        Event {
            raw: Bytes::from(raw.to_string()),
            id: None,
            time,
            kind: None,
        }
    }

    fn config(extra: &str) -> SplunkHecConfig {
        let text = format!("endpoint = \"http://127.0.0.1:1\"\ntoken_env = \"X\"\n{extra}");
        use figment::providers::Format;
        figment::Figment::from(figment::providers::Toml::string(&text))
            .extract()
            .unwrap()
    }

    fn epoch(t: DateTime<Utc>) -> String {
        let mut out = Vec::new();
        write_epoch(&mut out, t);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn epoch_has_microseconds_and_handles_before_1970() {
        let t = Utc.timestamp_opt(7, 1_000).unwrap();
        assert_eq!(epoch(t), "7.000001");
        let t = Utc.timestamp_opt(1_690_359_797, 151_080_751).unwrap();
        assert_eq!(epoch(t), "1690359797.151080");
        let t = Utc.timestamp_opt(-5, 250_000_000).unwrap();
        assert_eq!(epoch(t), "-4.750000");
        assert_eq!(epoch(Utc.timestamp_opt(0, 0).unwrap()), "0.000000");
    }

    #[test]
    fn envelope_wraps_the_raw_event_with_metadata_and_fields() {
        let cfg = config(
            "host = \"relay-1\"\nsourcetype = \"veza:audit\"\nindex = \"sec\"\n\
             fields = { user = \"identity.email\", code = \"status.http_status\", \
             tags = \"tags\", obj = \"identity\", gone = \"missing\", nul = \"n\" }",
        );
        let env = Envelope::new(&cfg).unwrap();
        let raw = r#"{"identity":{"email":"a\"b@x"},"status":{"http_status":403},"tags":["x",1,true,null],"n":null,
  "note":"line"}"#;
        let t = Utc.timestamp_opt(1_700_000_000, 5_000).unwrap();
        let mut out = Vec::new();
        env.write(&mut out, &json_string("veza"), &event(raw, Some(t)));
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                r#"{"time":1700000000.000005,"host":"relay-1","source":"veza","sourcetype":"veza:audit","index":"sec","fields":{"#
            ),
            "{text}"
        );
        assert!(text.ends_with(&format!(",\"event\":{raw}}}")), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["fields"]["user"], "a\"b@x");
        assert_eq!(v["fields"]["code"], "403");
        assert_eq!(v["fields"]["tags"], serde_json::json!(["x", "1", "true"]));
        assert_eq!(v["fields"]["obj"], r#"{"email":"a\"b@x"}"#);
        assert!(v["fields"].get("gone").is_none() && v["fields"].get("nul").is_none());
    }

    #[test]
    fn envelope_without_time_or_fields_and_a_configured_source() {
        let cfg = config("source = \"auditrelay\"\nfields = { user = \"u\" }");
        let env = Envelope::new(&cfg).unwrap();
        let mut out = Vec::new();
        env.write(&mut out, &json_string("veza"), &event("[1,2]", None));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"source":"auditrelay","event":[1,2]}"#
        );
    }

    #[test]
    fn runs_respect_events_and_envelope_bytes() {
        let enc = Sizes {
            offsets: vec![0, 100, 200, 300, 1300, 1400],
        };
        let b = BatchConfig {
            max_events: Some(2),
            max_bytes: Some(250),
            timeout: None,
        };
        assert_eq!(enc.runs(&b), vec![0..2, 2..3, 3..4, 4..5]);
        let b = BatchConfig::default();
        assert_eq!(enc.runs(&b), vec![0..5]);
    }

    #[test]
    fn bodies_built_per_run_are_the_measured_envelopes_and_stay_under_max_bytes() {
        // Envelopes of varied size (fields found or not, OCSF classes or
        // not, with and without time): each request built from its run
        // alone must be exactly the bytes measured for it, and together
        // the envelopes of every event once, in order.
        let cfg = config("fields = { user = \"identity.email\" }");
        let env = Envelope::new(&cfg).unwrap().with_ocsf_sourcetype();
        let t = Utc.timestamp_opt(1_700_000_000, 0).unwrap();
        let events: Vec<Event> = (0..300)
            .map(|i| {
                let raw = match i % 4 {
                    0 => format!(r#"{{"n":{i},"identity":{{"email":"u{i}@x"}}}}"#),
                    1 => format!(
                        r#"{{"n":{i},"class_name":"API Activity","pad":"{}"}}"#,
                        "p".repeat(i % 37)
                    ),
                    2 => format!(r#"{{"n":{i}}}"#),
                    _ => format!(r#"{{"n":{i},"big":"{}"}}"#, "b".repeat(400 + i)),
                };
                event(&raw, (i % 3 == 0).then_some(t))
            })
            .collect();
        let source = json_string("veza \"eu\"");
        let sizes = env.measure(&source, &events);
        let mut whole = Vec::new();
        for e in &events {
            env.write(&mut whole, &source, e);
        }
        let max_bytes = 1_000;
        let runs = sizes.runs(&BatchConfig {
            max_events: Some(7),
            max_bytes: Some(max_bytes),
            timeout: None,
        });
        let mut sent = Vec::new();
        let mut next = 0;
        for run in runs {
            assert_eq!(run.start, next, "runs cover every event once, in order");
            next = run.end;
            let body = env.encode(&source, &events[run.clone()], sizes.bytes(&run));
            assert_eq!(body.len(), sizes.bytes(&run), "run {run:?}");
            assert!(run.len() <= 7);
            assert!(
                run.len() == 1 || body.len() <= max_bytes,
                "run {run:?}: {} bytes",
                body.len()
            );
            sent.extend_from_slice(&body);
        }
        assert_eq!(next, events.len());
        assert_eq!(sent, whole);
    }

    #[test]
    fn ocsf_events_default_their_sourcetype_to_their_class() {
        let ocsf = r#"{"class_uid":2004,"class_name":"Detection Finding"}"#;
        let write = |env: &Envelope, raw: &str| {
            let mut out = Vec::new();
            env.write(&mut out, &json_string("veza"), &event(raw, None));
            String::from_utf8(out).unwrap()
        };
        let env = Envelope::new(&config("")).unwrap().with_ocsf_sourcetype();
        assert!(write(&env, ocsf).contains(r#""sourcetype":"ocsf:detection_finding","#));
        // Not an OCSF event (a Base Event always has a class_name): no sourcetype.
        assert!(!write(&env, r#"{"a":1}"#).contains("sourcetype"));
        let env = Envelope::new(&config("sourcetype = \"mine\""))
            .unwrap()
            .with_ocsf_sourcetype();
        assert!(write(&env, ocsf).contains(r#""sourcetype":"mine","#));
        let raw_mode = Envelope::new(&config("")).unwrap();
        assert!(!write(&raw_mode, ocsf).contains("sourcetype"));
    }

    /// The in-place epoch writes what `format!` wrote, and envelopes of
    /// negative, zero-second and far times measure as they are built.
    #[test]
    fn review_epoch_in_place_matches_the_formatted_one_and_measures_exactly() {
        fn formatted(t: DateTime<Utc>) -> String {
            let micros = t.timestamp_micros();
            let sign = if micros < 0 { "-" } else { "" };
            let abs = micros.unsigned_abs();
            format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
        }
        let mut times = vec![DateTime::<Utc>::MIN_UTC, DateTime::<Utc>::MAX_UTC];
        for secs in [
            -86_400i64 * 365 * 3000,
            -2,
            -1,
            0,
            1,
            9,
            10,
            999_999_999,
            4_102_444_800,
        ] {
            for nanos in [
                0u32,
                999,
                1_000,
                1_001,
                499_999_999,
                500_000_000,
                999_999_999,
            ] {
                times.push(Utc.timestamp_opt(secs, nanos).unwrap());
            }
        }
        let env = Envelope::new(&config("fields = { user = \"u\", n = \"n\" }"))
            .unwrap()
            .with_ocsf_sourcetype();
        let source = json_string("s");
        let events: Vec<Event> = times
            .iter()
            .map(|t| event(r#"{"u":"x","n":-1,"class_name":"API Activity"}"#, Some(*t)))
            .collect();
        for t in &times {
            assert_eq!(epoch(*t), formatted(*t), "{t:?}");
        }
        let sizes = env.measure(&source, &events);
        for i in 0..events.len() {
            let body = env.encode(&source, &events[i..i + 1], 0);
            assert_eq!(body.len(), sizes.bytes(&(i..i + 1)), "{:?}", times[i]);
            assert!(serde_json::from_slice::<serde_json::Value>(&body).is_ok());
        }
    }
}
