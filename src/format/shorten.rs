//! Shortening a body to a byte budget without breaking its format.
//!
//! A SIEM extracts fields from a JSON body only when the body parses: a
//! JSON event cut mid-string loses every field, not just its tail. So a
//! body that must be shortened keeps its structure and only its longest
//! string *values* are cut, each ending in a visible marker
//! (`"…[truncated 3120 bytes]"`, counting the bytes of the value as
//! written that were dropped). The cut is a cap `L` on every value: values
//! of at most `L` bytes stay whole, longer ones keep their first `L` bytes
//! (fewer, to end on a whole character or escape). The largest `L` that
//! fits is found by bisection, so the result is deterministic and as
//! little as possible is cut. Keys, numbers and the nesting stay as they
//! were; insignificant whitespace is dropped first.
//!
//! When even empty values do not fit (thousands of tiny strings, huge
//! keys or numbers, nesting deeper than serde_json reads, or a body that
//! is not JSON at all), the body becomes a small summary object instead:
//! `{"auditrelay_truncated":"…","id":…,"time":…,"type":…}`.

use std::borrow::Cow;
use std::ops::Range;

use chrono::{DateTime, SecondsFormat, Utc};

/// Appended to a cut value: `…[truncated N bytes]`.
pub fn marker(dropped: usize) -> String {
    format!("…[truncated {dropped} bytes]")
}

/// `value` cut to `cap` bytes at a character boundary, with the marker, or
/// whole when that would not make it shorter. For CEF/LEEF values, cut
/// before they are escaped, so a cut never falls inside an escape.
pub fn capped(value: &str, cap: usize) -> Cow<'_, str> {
    if value.len() <= cap {
        return Cow::Borrowed(value);
    }
    let kept = super::syslog::cut(value, cap);
    let mark = marker(value.len() - kept.len());
    if kept.len() + mark.len() >= value.len() {
        return Cow::Borrowed(value);
    }
    Cow::Owned(format!("{kept}{mark}"))
}

/// The largest `cap` in `0..=max` for which `len(cap) <= room`, or `None`
/// when not even `cap = 0` fits. `len` must not decrease as `cap` grows
/// ([`capped`] and the JSON values below both guarantee that).
pub fn largest_cap(max: usize, room: usize, mut len: impl FnMut(usize) -> usize) -> Option<usize> {
    if len(max) <= room {
        return Some(max);
    }
    if len(0) > room {
        return None;
    }
    // len(lo) fits, len(hi) does not.
    let (mut lo, mut hi) = (0, max);
    while hi - lo > 1 {
        let mid = lo + (hi - lo) / 2;
        if len(mid) <= room {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Some(lo)
}

/// What [`json`] made of an event that did not fit.
#[derive(Debug, PartialEq, Eq)]
pub enum Shortened {
    /// The event, with its longest string values cut.
    Values(Vec<u8>),
    /// Not even empty values fit (or the body was not JSON): the summary
    /// object.
    Summary(Vec<u8>),
}

/// What the summary object says about the event.
pub struct Identity<'a> {
    pub id: Option<&'a str>,
    pub time: Option<DateTime<Utc>>,
    pub kind: Option<&'a str>,
}

/// `raw` (a JSON event) as valid JSON of at most `room` bytes; `None` only
/// when not even the smallest summary fits (`room` under 60 bytes).
pub fn json(raw: &[u8], room: usize, who: &Identity<'_>) -> Option<Shortened> {
    if let Some(doc) = Doc::read(raw) {
        if let Some(cap) = largest_cap(doc.longest, room, |cap| doc.len(cap)) {
            return Some(Shortened::Values(doc.render(cap)));
        }
    }
    summary(raw.len(), room, who).map(Shortened::Summary)
}

fn summary(original: usize, room: usize, who: &Identity<'_>) -> Option<Vec<u8>> {
    let note = format!(
        "the event ({original} bytes) did not fit max_message_size even with its strings cut; only its id, time and type are kept"
    );
    let mut text = String::from("{\"auditrelay_truncated\":");
    push_json_string(&mut text, &note);
    if let Some(id) = who.id {
        text.push_str(",\"id\":");
        push_json_string(&mut text, id);
    }
    if let Some(t) = who.time {
        text.push_str(",\"time\":\"");
        text.push_str(&t.to_rfc3339_opts(SecondsFormat::AutoSi, true));
        text.push('"');
    }
    if let Some(kind) = who.kind {
        text.push_str(",\"type\":");
        push_json_string(&mut text, kind);
    }
    text.push('}');
    // Long ids and types are cut like any value (the note too, when the
    // room is that small).
    let doc = Doc::read(text.as_bytes())?;
    if let Some(cap) = largest_cap(doc.longest, room, |cap| doc.len(cap)) {
        return Some(doc.render(cap));
    }
    let bare = format!("{{\"auditrelay_truncated\":{original}}}");
    (bare.len() <= room).then(|| bare.into_bytes())
}

fn push_json_string(out: &mut String, s: &str) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into()));
}

/// A JSON text as literal runs (structure, keys, numbers, without
/// insignificant whitespace) and string values (their escaped contents).
struct Doc<'a> {
    raw: &'a [u8],
    pieces: Vec<Piece>,
    /// Bytes of all literal runs.
    literal: usize,
    /// The longest string value's content, in bytes.
    longest: usize,
}

enum Piece {
    Literal(Vec<u8>),
    /// The contents (between the quotes) of a string value.
    Value(Range<usize>),
}

impl<'a> Doc<'a> {
    /// `None` unless `raw` is one valid JSON value (serde_json's reading:
    /// UTF-8, no lone surrogates, at most 128 levels deep).
    fn read(raw: &'a [u8]) -> Option<Doc<'a>> {
        // A full parse: skipping (`IgnoredAny`) lets lone surrogate escapes
        // through, which readers then refuse. Only oversized events get here.
        serde_json::from_slice::<serde_json::Value>(raw).ok()?;
        let mut pieces = Vec::new();
        let mut lit = Vec::new();
        let mut literal = 0;
        let mut longest = 0;
        let mut i = 0;
        while i < raw.len() {
            match raw[i] {
                b' ' | b'\t' | b'\n' | b'\r' => i += 1,
                b'"' => {
                    let start = i + 1;
                    let mut j = start;
                    while raw[j] != b'"' {
                        j += if raw[j] == b'\\' { 2 } else { 1 };
                    }
                    let next = raw[j + 1..]
                        .iter()
                        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'));
                    if next == Some(&b':') {
                        lit.extend_from_slice(&raw[i..=j]);
                    } else {
                        literal += lit.len();
                        pieces.push(Piece::Literal(std::mem::take(&mut lit)));
                        pieces.push(Piece::Value(start..j));
                        longest = longest.max(j - start);
                    }
                    i = j + 1;
                }
                b => {
                    lit.push(b);
                    i += 1;
                }
            }
        }
        literal += lit.len();
        pieces.push(Piece::Literal(lit));
        Some(Doc {
            raw,
            pieces,
            literal,
            longest,
        })
    }

    fn values(&self) -> impl Iterator<Item = &[u8]> {
        self.pieces.iter().filter_map(|p| match p {
            Piece::Value(r) => Some(&self.raw[r.clone()]),
            Piece::Literal(_) => None,
        })
    }

    /// Length of the text with every value capped at `cap`.
    fn len(&self, cap: usize) -> usize {
        self.literal
            + self
                .values()
                .map(|v| 2 + capped_len(v, cap).0)
                .sum::<usize>()
    }

    fn render(&self, cap: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.len(cap));
        for p in &self.pieces {
            match p {
                Piece::Literal(l) => out.extend_from_slice(l),
                Piece::Value(r) => {
                    let v = &self.raw[r.clone()];
                    out.push(b'"');
                    match capped_len(v, cap) {
                        (_, None) => out.extend_from_slice(v),
                        (_, Some(kept)) => {
                            out.extend_from_slice(&v[..kept]);
                            out.extend_from_slice(marker(v.len() - kept).as_bytes());
                        }
                    }
                    out.push(b'"');
                }
            }
        }
        out
    }
}

/// Length of the escaped string contents `v` capped at `cap`, and where it
/// is cut (`None`: kept whole, as cutting would not make it shorter).
fn capped_len(v: &[u8], cap: usize) -> (usize, Option<usize>) {
    if v.len() <= cap {
        return (v.len(), None);
    }
    let kept = cut_point(v, cap);
    let len = kept + marker(v.len() - kept).len();
    if len >= v.len() {
        (v.len(), None)
    } else {
        (len, Some(kept))
    }
}

/// The longest prefix of the escaped string contents `v` of at most `max`
/// bytes that ends between whole characters and whole escapes (a surrogate
/// pair `\uD83D\uDE00` counts as one: half of it is not valid JSON text to
/// serde_json and many others).
fn cut_point(v: &[u8], max: usize) -> usize {
    let mut at = 0;
    while at < v.len() {
        let step = match v[at] {
            b'\\' if v.get(at + 1) == Some(&b'u') => {
                let high = v
                    .get(at + 2..at + 6)
                    .and_then(|h| std::str::from_utf8(h).ok())
                    .and_then(|h| u16::from_str_radix(h, 16).ok())
                    .is_some_and(|u| (0xD800..0xDC00).contains(&u));
                if high && v.get(at + 6) == Some(&b'\\') && v.get(at + 7) == Some(&b'u') {
                    12
                } else {
                    6
                }
            }
            b'\\' => 2,
            b if b < 0x80 => 1,
            b if b >= 0xF0 => 4,
            b if b >= 0xE0 => 3,
            _ => 2,
        };
        if at + step > max {
            break;
        }
        at += step;
    }
    at.min(v.len())
}

/// Whether `cut` is `whole` with string values shortened as [`json`]
/// does it: same keys, arrays and scalars, each string whole or a prefix
/// with the marker. What tests and the fuzz targets check a result with.
#[cfg(any(test, feature = "fuzzing"))]
pub fn is_shortened(whole: &serde_json::Value, cut: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (whole, cut) {
        (Value::String(w), Value::String(c)) => is_marked_prefix(w, c),
        (Value::Array(w), Value::Array(c)) => {
            w.len() == c.len() && w.iter().zip(c).all(|(a, b)| is_shortened(a, b))
        }
        (Value::Object(w), Value::Object(c)) => {
            w.len() == c.len()
                && w.iter()
                    .all(|(k, a)| c.get(k).is_some_and(|b| is_shortened(a, b)))
        }
        _ => whole == cut,
    }
}

/// `cut` is `whole`, or a prefix of it followed by the truncation marker.
/// (JSON values are compared decoded: the marker counts escaped bytes, so
/// only its shape is checked there.)
#[cfg(any(test, feature = "fuzzing"))]
pub fn is_marked_prefix(whole: &str, cut: &str) -> bool {
    if whole == cut {
        return true;
    }
    let Some(at) = cut.rfind("…[truncated ") else {
        return false;
    };
    whole.starts_with(&cut[..at])
        && cut[at..]
            .strip_prefix("…[truncated ")
            .and_then(|m| m.strip_suffix(" bytes]"))
            .is_some_and(|n| n.parse::<usize>().is_ok_and(|n| n > 0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::StdRng;
    use rand::{Rng, SeedableRng};
    use serde_json::Value;

    const NOBODY: Identity<'static> = Identity {
        id: None,
        time: None,
        kind: None,
    };

    fn values(raw: &str, room: usize) -> Value {
        match json(raw.as_bytes(), room, &NOBODY) {
            Some(Shortened::Values(b)) => {
                assert!(b.len() <= room, "{} > {room}", b.len());
                serde_json::from_slice(&b).expect("valid JSON")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn the_longest_values_are_cut_and_marked() {
        let raw = format!(
            "{{\"id\": \"r1\", \"big\": \"{}\", \"mid\": \"{}\", \"n\": 12345, \"ok\": true}}",
            "a".repeat(5000),
            "b".repeat(300)
        );
        let v = values(&raw, 1000);
        assert_eq!(v["id"], "r1");
        assert_eq!(v["n"], 12345);
        assert_eq!(v["ok"], true);
        assert_eq!(v["mid"].as_str().unwrap().len(), 300, "short values stay");
        let big = v["big"].as_str().unwrap();
        let kept = big.trim_end_matches(|c| c != '…').trim_end_matches('…');
        assert!(kept.bytes().all(|b| b == b'a') && kept.len() > 500, "{big}");
        assert!(
            big.ends_with(&format!("…[truncated {} bytes]", 5000 - kept.len())),
            "{big}"
        );
    }

    #[test]
    fn cuts_never_split_characters_escapes_or_surrogate_pairs() {
        for unit in ["☃", "\\n", "\\\\", "\\u00e9", "\\ud83d\\ude00", "😀"] {
            let raw = format!("{{\"s\":\"{}\"}}", unit.repeat(400));
            for room in 60..140 {
                let v = values(&raw, room);
                let s = v["s"].as_str().unwrap();
                let kept = &s[..s.rfind('…').unwrap()];
                let want = serde_json::from_str::<String>(&format!("\"{unit}\"")).unwrap();
                assert!(
                    kept.is_empty() || kept.split(want.as_str()).all(|p| p.is_empty()),
                    "{unit} at {room}: {kept:?}"
                );
            }
        }
    }

    #[test]
    fn what_fits_after_dropping_whitespace_is_only_compacted() {
        let raw = "{\n  \"a\" : [ 1 , \"x y\" ] \n}";
        let out = json(raw.as_bytes(), 16, &NOBODY).unwrap();
        assert_eq!(out, Shortened::Values(b"{\"a\":[1,\"x y\"]}".to_vec()));
    }

    #[test]
    fn pathological_events_fall_back_to_the_summary() {
        let who = Identity {
            id: Some("r\"1"),
            time: Some(chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap()),
            kind: Some("DeleteUser"),
        };
        let tiny_strings = format!("[{}\"\"]", "\"\",".repeat(2000));
        let deep = format!("{}{}", "[".repeat(500), "]".repeat(500));
        let huge_key = format!("{{\"{}\":1}}", "k".repeat(5000));
        let huge_number = format!("[{}]", "9".repeat(5000));
        for raw in [tiny_strings, deep, huge_key, huge_number, "not json".into()] {
            let Some(Shortened::Summary(b)) = json(raw.as_bytes(), 500, &who) else {
                panic!("no summary for {}", &raw[..20.min(raw.len())]);
            };
            assert!(b.len() <= 500);
            let v: Value = serde_json::from_slice(&b).unwrap();
            assert_eq!(v["id"], "r\"1");
            assert_eq!(v["type"], "DeleteUser");
            assert_eq!(v["time"], "2023-11-14T22:13:20Z");
            assert!(v["auditrelay_truncated"]
                .as_str()
                .unwrap()
                .contains(&format!("({} bytes)", raw.len())));
        }
        // An id too long for the room is cut like any value.
        let long_id = "i".repeat(3000);
        let who = Identity {
            id: Some(&long_id),
            ..who
        };
        let Some(Shortened::Summary(b)) = json(b"[]]", 300, &who) else {
            panic!()
        };
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(v["id"].as_str().unwrap().contains("…[truncated "), "{v}");
        let Some(Shortened::Summary(b)) = json(b"[]]", 40, &who) else {
            panic!()
        };
        assert_eq!(b, b"{\"auditrelay_truncated\":3}");
    }

    /// A random JSON value: nested containers, strings of escapes and
    /// multi-byte characters, numbers, keys of any length.
    fn random_value(rng: &mut StdRng, depth: usize, out: &mut String) {
        let pick = if depth > 6 {
            3 + rng.random_range(0..3)
        } else {
            rng.random_range(0..6)
        };
        match pick {
            0 | 1 => {
                let (open, close) = if pick == 0 { ('{', '}') } else { ('[', ']') };
                out.push(open);
                for i in 0..rng.random_range(0..6) {
                    if i > 0 {
                        out.push_str(if rng.random_bool(0.3) { " , " } else { "," });
                    }
                    if open == '{' {
                        random_string(rng, out);
                        out.push(':');
                    }
                    random_value(rng, depth + 1, out);
                }
                out.push(close);
            }
            2 | 3 => random_string(rng, out),
            4 => out.push_str(&rng.random::<i64>().to_string()),
            _ => out.push_str(["true", "false", "null", "1.5e300"][rng.random_range(0..4)]),
        }
    }

    fn random_string(rng: &mut StdRng, out: &mut String) {
        const UNITS: [&str; 9] = [
            "a",
            "☃",
            "😀",
            "\\n",
            "\\\"",
            "\\\\",
            "\\u00e9",
            "\\ud83d\\ude00",
            " ",
        ];
        out.push('"');
        let len = if rng.random_bool(0.2) {
            rng.random_range(0..2000)
        } else {
            rng.random_range(0..20)
        };
        for _ in 0..len {
            out.push_str(UNITS[rng.random_range(0..UNITS.len())]);
        }
        out.push('"');
    }

    #[test]
    fn random_events_and_limits_always_give_valid_json_within_the_limit() {
        let mut rng = StdRng::seed_from_u64(14);
        let who = Identity {
            id: Some("e1"),
            time: None,
            kind: Some("t"),
        };
        for _ in 0..3000 {
            let mut raw = String::new();
            random_value(&mut rng, 0, &mut raw);
            let room = rng.random_range(60..raw.len().max(61) + 10);
            let out = json(raw.as_bytes(), room, &who).expect("room >= 60 always fits");
            let (Shortened::Values(b) | Shortened::Summary(b)) = &out;
            assert!(b.len() <= room, "{} > {room} for {raw}", b.len());
            let v: Value = serde_json::from_slice(b)
                .unwrap_or_else(|e| panic!("{e}: {}\nfrom {raw}", String::from_utf8_lossy(b)));
            assert_eq!(json(raw.as_bytes(), room, &who), Some(out), "deterministic");
            if let Shortened::Values(_) = json(raw.as_bytes(), room, &who).unwrap() {
                // Same shape: the original with strings shortened.
                let orig: Value = serde_json::from_str(&raw).unwrap();
                assert!(is_shortened(&orig, &v), "{raw}");
            }
        }
    }

    #[test]
    fn capped_values_mark_and_never_grow() {
        assert_eq!(capped("short", 10), "short");
        assert_eq!(
            capped(&"x".repeat(100), 10),
            format!("{}…[truncated 90 bytes]", "x".repeat(10))
        );
        assert_eq!(
            capped(&"x".repeat(20), 0),
            "x".repeat(20),
            "the marker would be longer"
        );
        assert_eq!(capped("☃☃☃☃☃☃☃☃☃☃", 4), "☃…[truncated 27 bytes]");
    }
}
