//! The syslog encoder target, and a strict reader of what the encoder
//! writes: RFC 6587 framing, the RFC 5424 and RFC 3164 headers, RFC 5424
//! structured data, CEF and LEEF bodies. Every frame is read back and
//! compared with what went in, so an escaping or size mistake shows as a
//! broken invariant rather than as a frame a collector splits or rejects.

mod bodies;
mod headers;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::event::{parse_time, Event};
use crate::format::shorten::{is_marked_prefix, is_shortened};
use crate::format::syslog::cut;
use crate::sink::syslog::{Body, Encoder, Format, Framing, SyslogConfig, SD_VALUE_MAX};
use bodies::{read_cef, read_leef};
use headers::{has_shape, read_rfc3164, read_rfc5424, unframe};

/// CEF/LEEF header fields from the config, with the characters the header
/// must escape.
const VENDOR: &str = "Acme|Audit\\Co";
const PRODUCT: &str = "Relay";
const VERSION: &str = "1.0";
/// `max_message_size` values (the config accepts 1024 and up).
const MAX_SIZES: [usize; 8] = [1024, 1025, 1100, 1280, 1500, 2048, 8192, 65_507];

/// Event bytes, header names and event fields through every syslog
/// encoding. Byte 0: format (bit 0), body (bits 1-2: json, cef, leef, json
/// with severity from a field), framing (bits 3-4: octet counting, LF, none,
/// LF), no structured data (bit 5), fixed MSGID (bit 6), tab LEEF
/// delimiter (bit 7). Byte 1: `max_message_size` (bits 0-2), facility (the
/// rest). Then, split on 0xff: hostname, app name, source, event id, event
/// type, event time (a JSON value, read as the sources read times), and the
/// raw event (any bytes, the rest of the input).
pub fn syslog_encoder(data: &[u8]) {
    let [a, b, rest @ ..] = data else {
        return;
    };
    let (a, b) = (*a, *b);
    let format = if a & 1 == 0 {
        Format::Rfc5424
    } else {
        Format::Rfc3164
    };
    let body_kind = match (a >> 1) & 3 {
        1 => Body::Cef,
        2 => Body::Leef,
        _ => Body::Json,
    };
    let severity_from_field = (a >> 1) & 3 == 3;
    let framing = match (a >> 3) & 3 {
        0 => Some(Framing::OctetCounting),
        2 => None,
        _ => Some(Framing::Lf),
    };
    let structured_data = a & 0x20 == 0;
    let fixed_msgid = a & 0x40 != 0;
    let delimiter = if a & 0x80 != 0 { '\t' } else { '^' };
    let max = MAX_SIZES[usize::from(b & 7)];
    let facility = (b >> 3) % 24;

    let mut parts = rest.splitn(7, |c| *c == 0xff);
    let mut text = || {
        parts
            .next()
            .map(|p| String::from_utf8_lossy(p).into_owned())
    };
    let hostname = text().unwrap_or_default();
    let app_name = text().unwrap_or_else(|| "auditrelay".into());
    let source = text().unwrap_or_else(|| "veza".into());
    let id = text();
    let kind = text();
    let time = text().and_then(|t| {
        serde_json::from_str::<&RawValue>(&t)
            .ok()
            .and_then(parse_time)
    });
    let raw = Bytes::copy_from_slice(parts.next().unwrap_or_default());
    let event = Event {
        raw: raw.clone(),
        id: id.map(std::sync::Arc::from),
        time,
        kind: kind.map(std::sync::Arc::from),
    };

    let mut cfg = serde_json::json!({
        "address": "tcp://127.0.0.1:1",
        "format": if format == Format::Rfc5424 { "rfc5424" } else { "rfc3164" },
        "body": match body_kind { Body::Json => "json", Body::Cef => "cef", Body::Leef => "leef" },
        "facility": facility,
        "hostname": hostname,
        "app_name": app_name,
        "structured_data": structured_data,
        "vendor": VENDOR,
        "product": PRODUCT,
        "product_version": VERSION,
        "leef_delimiter": if delimiter == '\t' { "tab" } else { "^" },
    });
    if fixed_msgid {
        cfg["msgid"] = app_name.clone().into();
    }
    if severity_from_field {
        cfg["severity_field"] = "level".into();
        cfg["severity_values"] = serde_json::json!({"high": "crit", "low": "debug"});
    }
    match body_kind {
        Body::Cef => cfg["extra_fields"] = serde_json::json!({"cs3": "session.id", "cs4": "level"}),
        Body::Leef => cfg["extra_fields"] = serde_json::json!({"sessionId": "session.id"}),
        Body::Json => {}
    }
    let cfg: SyslogConfig = serde_json::from_value(cfg).expect("fuzz syslog config");
    let enc = Encoder::new(&cfg, framing, max).expect("encoder");
    // The same message without a size limit: what the cut one is cut from.
    let whole = Encoder::new(&cfg, framing, usize::MAX / 4).expect("encoder");

    let frames = enc.encode_all(&source, std::slice::from_ref(&event));
    assert!(
        frames.spans.len() == 1 && frames.spans[0] == (0..frames.buf.len()),
        "one frame, all of it"
    );
    let frame = frames.frame(0);
    let truncated = frames.truncated == 1;
    let full_frames = whole.encode_all(&source, std::slice::from_ref(&event));
    assert_eq!(full_frames.truncated, 0);

    let msg = unframe(frame, framing);
    let full_msg = unframe(full_frames.frame(0), framing);
    assert!(
        msg.len() <= max,
        "message of {} bytes over max_message_size {max}",
        msg.len()
    );
    assert_eq!(
        truncated,
        full_msg.len() > max,
        "cut although it fits, or not cut although it does not"
    );
    if body_kind != Body::Json || std::str::from_utf8(&raw).is_ok() {
        assert!(std::str::from_utf8(frame).is_ok(), "frame is not UTF-8");
    }

    let lf = framing == Some(Framing::Lf);
    let (body, full_body) = match format {
        Format::Rfc5424 => {
            if !truncated {
                assert_eq!(msg, full_msg);
            }
            let (pri, sd, body) = read_rfc5424(msg, lf);
            assert_eq!(pri / 8, facility, "facility");
            let (_, _, full_body) = read_rfc5424(full_msg, lf);
            if structured_data {
                let expect = |v: &str| -> String {
                    let v = cut(v, SD_VALUE_MAX);
                    v.to_string()
                };
                let mut want: Vec<(String, String)> = Vec::new();
                if let Some(id) = event.id.as_deref() {
                    want.push(("id".into(), expect(id)));
                }
                want.push(("source".into(), expect(&source)));
                if let Some(k) = event.kind.as_deref() {
                    want.push(("type".into(), expect(k)));
                }
                if truncated {
                    want.push(("truncated".into(), full_body.len().to_string()));
                }
                let sd = sd.expect("structured data");
                assert_eq!(sd.0, cfg.sd_id, "SD-ID");
                if sd.1 != want {
                    // Values may be cut shorter when the header must make
                    // room; never anything but a prefix.
                    assert_eq!(sd.1.len(), want.len(), "SD params {:?} vs {want:?}", sd.1);
                    for ((k, v), (wk, wv)) in sd.1.iter().zip(&want) {
                        assert_eq!(k, wk);
                        if k == "truncated" {
                            assert_eq!(v, wv);
                        } else {
                            assert!(truncated && wv.starts_with(v.as_str()), "SD {k}");
                        }
                    }
                }
            } else {
                assert!(sd.is_none(), "structured data though disabled");
            }
            (body, full_body)
        }
        Format::Rfc3164 => {
            let (pri, body) = read_rfc3164(msg);
            assert_eq!(pri / 8, facility, "facility");
            (body, read_rfc3164(full_msg).1)
        }
    };
    if truncated {
        assert!(
            body.len() < full_body.len(),
            "a shortened body is not shorter"
        );
    } else {
        assert_eq!(body, full_body);
    }
    assert!(
        !body.contains(&b'\n') && !body.contains(&b'\r'),
        "a line break in the shortened body"
    );
    assert!(
        !full_body.contains(&b'\n') && !full_body.contains(&b'\r'),
        "a line break in the body"
    );
    match body_kind {
        Body::Json => {
            let compact: Vec<u8> = raw
                .iter()
                .map(|c| if matches!(c, b'\n' | b'\r') { b' ' } else { *c })
                .collect();
            assert_eq!(full_body, &compact[..], "the JSON body is not the event");
            if truncated {
                check_shortened_json(&compact, body);
            }
        }
        Body::Cef => {
            let (cut_header, cut_ext) = read_cef(body, true);
            let (header, ext) = read_cef(full_body, true);
            same_or_marked(&cut_header, &header, "CEF header");
            same_or_marked_pairs(&cut_ext, &ext, "CEF extension");
            let kind = event.kind.as_deref().unwrap_or("audit");
            let name = kind.rsplit('/').find(|s| !s.is_empty()).unwrap_or(kind);
            let want: Vec<String> = [VENDOR, PRODUCT, VERSION, kind, name]
                .iter()
                .map(|f| f.replace(['\n', '\r'], " "))
                .collect();
            assert_eq!(header[..5], want[..], "CEF header fields");
            check_pairs(&ext, &event, &source, "externalId", "cs2");
        }
        Body::Leef => {
            let (cut_header, cut_attrs) = read_leef(body, delimiter, true);
            let (header, attrs) = read_leef(full_body, delimiter, true);
            same_or_marked(&cut_header, &header, "LEEF header");
            same_or_marked_pairs(&cut_attrs, &attrs, "LEEF attribute");
            let kind = event.kind.as_deref().unwrap_or("audit");
            let want: Vec<String> = [VENDOR, PRODUCT, VERSION, kind]
                .iter()
                .map(|f| f.replace(['\n', '\r'], " "))
                .collect();
            assert_eq!(header, want, "LEEF header fields");
            check_pairs(&attrs, &event, &source, "requestId", "source");
            if let Some((_, t)) = attrs.iter().find(|(k, _)| k == "devTime") {
                // What `devTimeFormat` (yyyy-MM-dd'T'HH:mm:ss.SSSX) can read.
                assert!(
                    has_shape(t, "dddd-dd-ddTdd:dd:dd.dddZ"),
                    "devTime {t:?} does not match devTimeFormat"
                );
            }
        }
    }
}

/// A shortened JSON body parses; it is the event (`raw`: as compacted onto
/// one line) with string values cut
/// and marked, or (pathological events, bodies that were not JSON) the
/// summary object.
fn check_shortened_json(raw: &[u8], body: &[u8]) {
    let cut: serde_json::Value = serde_json::from_slice(body).unwrap_or_else(|e| {
        panic!(
            "a shortened JSON body does not parse ({e}): {}",
            String::from_utf8_lossy(body)
        )
    });
    if cut.get("auditrelay_truncated").is_some()
        && serde_json::from_slice::<serde_json::Value>(raw)
            .map_or(true, |v| v.get("auditrelay_truncated").is_none())
    {
        return;
    }
    let whole: serde_json::Value = serde_json::from_slice(raw).expect("shortened values of JSON");
    assert!(
        is_shortened(&whole, &cut),
        "the shortened body is not the event with values cut"
    );
}

fn same_or_marked(cut: &[String], whole: &[String], what: &str) {
    assert_eq!(cut.len(), whole.len(), "{what}: fields");
    for (c, w) in cut.iter().zip(whole) {
        assert!(
            c == w || (is_marked_prefix(w, c) && c.len() < w.len()),
            "{what}: {c:?} is not {w:?} cut and marked"
        );
    }
}

fn same_or_marked_pairs(cut: &[(String, String)], whole: &[(String, String)], what: &str) {
    assert_eq!(cut.len(), whole.len(), "{what}s");
    for ((ck, cv), (wk, wv)) in cut.iter().zip(whole) {
        assert_eq!(ck, wk, "{what} keys");
        // CEF/LEEF values are cut before escaping: the marker counts the
        // value's own bytes exactly.
        let exact = cv == wv
            || cv.rfind('…').is_some_and(|at| {
                wv.starts_with(&cv[..at])
                    && cv[at..] == crate::format::shorten::marker(wv.len() - at)
            });
        assert!(exact, "{what} {ck}: {cv:?} is not {wv:?} cut and marked");
    }
}

/// The id and source read back from CEF extensions / LEEF attributes.
fn check_pairs(
    pairs: &[(String, String)],
    event: &Event,
    source: &str,
    id_key: &str,
    src_key: &str,
) {
    let get = |k: &str| {
        pairs
            .iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.as_str())
    };
    assert_eq!(get(id_key), event.id.as_deref(), "{id_key}");
    assert_eq!(get(src_key), Some(source), "{src_key}");
}
