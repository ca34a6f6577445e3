//! What a pushed body holds: a JSON object, an array of objects, or NDJSON,
//! possibly gzip-encoded. Events keep the bytes they were sent with.

use std::ops::Range;

use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::value::RawValue;

use crate::event::{Event, FieldExtractor};

/// The byte ranges of the events of a body: a JSON object, an array of
/// objects, or NDJSON (one object per line).
pub fn parse_events(body: &[u8]) -> Result<Vec<Range<usize>>, String> {
    let base = body.as_ptr() as usize;
    let range = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        start..start + part.len()
    };
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err("empty body: send a JSON object, an array of objects, or NDJSON".into());
    }
    if trimmed.starts_with(b"[") {
        let items: Vec<&RawValue> = serde_json::from_slice(trimmed)
            .map_err(|e| format!("the JSON array does not parse: {e}"))?;
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                if item.get().starts_with('{') {
                    Ok(range(item.get().as_bytes()))
                } else {
                    Err(format!("item {i} of the array is not a JSON object"))
                }
            })
            .collect();
    }
    if !trimmed.starts_with(b"{") {
        return Err("the body is neither a JSON object, an array of objects, nor NDJSON".into());
    }
    if let Ok(one) = serde_json::from_slice::<&RawValue>(trimmed) {
        return Ok(vec![range(one.get().as_bytes())]);
    }
    let mut out = Vec::new();
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let item: &RawValue = serde_json::from_slice(line)
            .map_err(|e| format!("NDJSON line {} does not parse: {e}", n + 1))?;
        if !item.get().starts_with('{') {
            return Err(format!("NDJSON line {} is not a JSON object", n + 1));
        }
        out.push(range(item.get().as_bytes()));
    }
    Ok(out)
}

/// The event of one spooled record (the bytes of one item of a body).
pub(crate) fn record_event(extractor: &FieldExtractor, raw: Bytes) -> Event {
    match serde_json::from_slice::<&RawValue>(&raw) {
        Ok(item) => extractor.event(&raw, item),
        Err(_) => Event {
            raw: raw.clone(),
            id: None,
            time: None,
            kind: None,
        },
    }
}

pub(crate) fn gunzip(data: &[u8], max: usize) -> Result<Vec<u8>, (StatusCode, String)> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("gzip body does not decode: {e}"),
            )
        })?;
    if out.len() > max {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {max} bytes once decompressed (max_body_bytes)"),
        ));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(body: &[u8]) -> Result<Vec<String>, String> {
        parse_events(body).map(|rs| {
            rs.into_iter()
                .map(|r| String::from_utf8_lossy(&body[r]).into_owned())
                .collect()
        })
    }

    #[test]
    fn objects_arrays_and_ndjson_keep_their_bytes() {
        assert_eq!(texts(b" {\"a\": 1} \n").unwrap(), vec!["{\"a\": 1}"]);
        assert_eq!(
            texts(b"[{\"a\":1},\n {\"b\":\n2}]").unwrap(),
            vec!["{\"a\":1}", "{\"b\":\n2}"]
        );
        assert_eq!(
            texts(b"{\"a\":1}\n\n{\"b\":2}\r\n").unwrap(),
            vec!["{\"a\":1}", "{\"b\":2}"]
        );
        assert!(texts(b"[]").unwrap().is_empty());
    }

    #[test]
    fn bad_bodies_say_where() {
        assert!(texts(b"").unwrap_err().contains("empty body"));
        assert!(texts(b"[1]").unwrap_err().contains("item 0"));
        assert!(texts(b"{\"a\":1}\n{oops}\n")
            .unwrap_err()
            .contains("line 2"));
        assert!(texts(b"{\"a\":1}\n[2]\n").unwrap_err().contains("line 2"));
        assert!(texts(b"hello").unwrap_err().contains("neither"));
        assert!(texts(b"[{\"a\":1},").unwrap_err().contains("array"));
    }
}
