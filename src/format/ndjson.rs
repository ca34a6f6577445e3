//! Newline-delimited JSON and JSON arrays built from raw event bytes.

use crate::event::Event;

/// Appends `raw` as one NDJSON line. A raw newline can only be whitespace
/// between JSON tokens (inside strings it must be escaped), so replacing it
/// with a space keeps the event intact and the line unbroken.
pub fn push_line(buf: &mut Vec<u8>, raw: &[u8]) {
    push_compact(buf, raw);
    buf.push(b'\n');
}

/// Appends `raw` with its raw CR/LF (whitespace between tokens) turned into
/// spaces: the event on one line, otherwise byte for byte.
pub fn push_compact(buf: &mut Vec<u8>, raw: &[u8]) {
    let start = buf.len();
    buf.extend_from_slice(raw);
    if raw.iter().any(|b| *b == b'\n' || *b == b'\r') {
        for b in &mut buf[start..] {
            if *b == b'\n' || *b == b'\r' {
                *b = b' ';
            }
        }
    }
}

/// All events as NDJSON.
pub fn lines(events: &[Event]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(events.iter().map(|e| e.raw.len() + 1).sum());
    for e in events {
        push_line(&mut buf, &e.raw);
    }
    buf
}

/// All events as one JSON array.
pub fn array(events: &[Event]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(events.iter().map(|e| e.raw.len() + 1).sum::<usize>() + 2);
    buf.push(b'[');
    for (i, e) in events.iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(&e.raw);
    }
    buf.push(b']');
    buf
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ev(raw: &'static str) -> Event {
        Event {
            raw: Bytes::from_static(raw.as_bytes()),
            id: None,
            time: None,
            kind: None,
        }
    }

    #[test]
    fn lines_never_split_an_event() {
        let events = [ev("{\n  \"a\": \"x\\ny\"\r\n}"), ev("{\"b\":1}")];
        let out = lines(&events);
        let text = String::from_utf8(out).unwrap();
        let rows: Vec<&str> = text.lines().collect();
        assert_eq!(rows.len(), 2);
        let v: serde_json::Value = serde_json::from_str(rows[0]).unwrap();
        assert_eq!(v["a"], "x\ny");
    }

    #[test]
    fn array_is_valid_json() {
        let out = array(&[ev("{\"a\":1}"), ev("{\"b\":2}")]);
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap();
        assert_eq!(v.as_array().unwrap().len(), 2);
        assert_eq!(array(&[]), b"[]");
    }
}
