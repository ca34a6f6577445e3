//! The syslog encoder target, and a strict reader of what the encoder
//! writes: RFC 6587 framing, the RFC 5424 and RFC 3164 headers, RFC 5424
//! structured data, CEF and LEEF bodies. Every frame is read back and
//! compared with what went in, so an escaping or size mistake shows as a
//! broken invariant rather than as a frame a collector splits or rejects.

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::event::{parse_time, Event};
use crate::format::rfc5424;
use crate::format::syslog::cut;
use crate::sink::syslog::{Body, Encoder, Format, Framing, SyslogConfig, SD_VALUE_MAX};

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
                let shape = "dddd-dd-ddTdd:dd:dd.dddZ";
                assert!(
                    t.len() == shape.len()
                        && t.bytes().zip(shape.bytes()).all(|(c, s)| if s == b'd' {
                            c.is_ascii_digit()
                        } else {
                            c == s
                        }),
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
        json_shape(&whole, &cut),
        "the shortened body is not the event with values cut"
    );
}

fn json_shape(whole: &serde_json::Value, cut: &serde_json::Value) -> bool {
    use serde_json::Value;
    match (whole, cut) {
        (Value::String(w), Value::String(c)) => marked_prefix(w, c),
        (Value::Array(w), Value::Array(c)) => {
            w.len() == c.len() && w.iter().zip(c).all(|(a, b)| json_shape(a, b))
        }
        (Value::Object(w), Value::Object(c)) => {
            w.len() == c.len()
                && w.iter()
                    .all(|(k, a)| c.get(k).is_some_and(|b| json_shape(a, b)))
        }
        _ => whole == cut,
    }
}

/// `cut` is `whole`, or a prefix of it followed by the truncation marker.
/// (JSON values are compared decoded: the marker counts escaped bytes, so
/// only its shape is checked there.)
fn marked_prefix(whole: &str, cut: &str) -> bool {
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

fn same_or_marked(cut: &[String], whole: &[String], what: &str) {
    assert_eq!(cut.len(), whole.len(), "{what}: fields");
    for (c, w) in cut.iter().zip(whole) {
        assert!(
            c == w || (marked_prefix(w, c) && c.len() < w.len()),
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

/// The message inside a frame of `framing`.
fn unframe(frame: &[u8], framing: Option<Framing>) -> &[u8] {
    match framing {
        Some(Framing::OctetCounting) => {
            let sp = frame
                .iter()
                .position(|c| *c == b' ')
                .expect("octet count without a space");
            let digits = &frame[..sp];
            assert!(
                !digits.is_empty() && digits[0] != b'0' && digits.iter().all(u8::is_ascii_digit),
                "MSG-LEN is not NONZERO-DIGIT *DIGIT"
            );
            let n: usize = std::str::from_utf8(digits)
                .expect("digits")
                .parse()
                .expect("count");
            let msg = &frame[sp + 1..];
            assert_eq!(n, msg.len(), "octet count differs from the message length");
            msg
        }
        Some(Framing::Lf) => {
            let msg = frame.strip_suffix(b"\n").expect("LF frame without its LF");
            assert!(!msg.contains(&b'\n'), "a raw LF inside an LF frame");
            msg
        }
        None => frame,
    }
}

/// A byte cursor that panics on anything the grammar does not allow.
struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, what: &[u8], field: &str) {
        assert!(
            self.s[self.i..].starts_with(what),
            "{field}: expected {:?} at {}",
            String::from_utf8_lossy(what),
            self.i
        );
        self.i += what.len();
    }

    /// Bytes up to (not including) the first of `stop`, or the end.
    fn until(&mut self, stop: &[u8]) -> &'a [u8] {
        let start = self.i;
        while self.i < self.s.len() && !stop.contains(&self.s[self.i]) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    fn rest(&mut self) -> &'a [u8] {
        let r = &self.s[self.i..];
        self.i = self.s.len();
        r
    }

    /// `<PRI>`: 1-3 digits without leading zeros, at most 191.
    fn pri(&mut self) -> u8 {
        self.expect(b"<", "PRI");
        let d = self.until(b">");
        self.expect(b">", "PRI");
        assert!(
            (1..=3).contains(&d.len())
                && d.iter().all(u8::is_ascii_digit)
                && (d.len() == 1 || d[0] != b'0'),
            "PRI {:?}",
            String::from_utf8_lossy(d)
        );
        let n: u16 = std::str::from_utf8(d)
            .expect("digits")
            .parse()
            .expect("PRI");
        assert!(n <= 191, "PRI {n}");
        n as u8
    }

    /// A header token: 1..=max PRINTUSASCII bytes, then a space.
    fn token(&mut self, max: usize, field: &str) -> &'a [u8] {
        let t = self.until(b" ");
        assert!(
            (1..=max).contains(&t.len()) && t.iter().all(u8::is_ascii_graphic),
            "{field} {:?} is not 1-{max} PRINTUSASCII",
            String::from_utf8_lossy(t)
        );
        self.expect(b" ", field);
        t
    }
}

/// An RFC 5424 message: its PRI, its SD element (`SD-ID`, params unescaped)
/// and its MSG.
#[allow(clippy::type_complexity)]
fn read_rfc5424(msg: &[u8], lf: bool) -> (u8, Option<(String, Vec<(String, String)>)>, &[u8]) {
    let mut r = Reader { s: msg, i: 0 };
    let pri = r.pri();
    r.expect(b"1 ", "VERSION");
    let ts = r.token(32, "TIMESTAMP");
    if ts != b"-" {
        check_timestamp(ts);
    }
    r.token(rfc5424::HOSTNAME_MAX, "HOSTNAME");
    r.token(rfc5424::APP_NAME_MAX, "APP-NAME");
    r.token(rfc5424::PROCID_MAX, "PROCID");
    r.token(rfc5424::MSGID_MAX, "MSGID");
    let sd = if r.peek() == Some(b'-') {
        r.i += 1;
        None
    } else {
        let mut elements = Vec::new();
        while r.peek() == Some(b'[') {
            elements.push(read_sd_element(&mut r, lf));
        }
        assert_eq!(elements.len(), 1, "one SD element");
        elements.pop()
    };
    let body = if r.peek().is_none() {
        &[][..]
    } else {
        r.expect(b" ", "SP before MSG");
        r.rest()
    };
    (pri, sd, body)
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` with the ranges of RFC 5424 §6.2.3 (no
/// leap second, at most 6 fraction digits, a 4-digit year).
fn check_timestamp(ts: &[u8]) {
    let t = std::str::from_utf8(ts).expect("ascii");
    let shape = "dddd-dd-ddTdd:dd:dd.ddddddZ";
    assert!(
        t.len() == shape.len()
            && t.bytes().zip(shape.bytes()).all(|(c, s)| if s == b'd' {
                c.is_ascii_digit()
            } else {
                c == s
            }),
        "TIMESTAMP {t:?} is not FULL-DATE \"T\" FULL-TIME"
    );
    let n = |a: usize, b: usize| t[a..b].parse::<u32>().expect("digits");
    assert!((1..=12).contains(&n(5, 7)), "month in {t}");
    assert!((1..=31).contains(&n(8, 10)), "day in {t}");
    assert!(n(11, 13) <= 23 && n(14, 16) <= 59, "time in {t}");
    assert!(
        n(17, 19) <= 59,
        "TIME-SECOND in {t} (00-59, no leap second)"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(t).is_ok(),
        "TIMESTAMP {t} is no date"
    );
}

/// `[SD-ID *(SP PARAM-NAME="PARAM-VALUE")]`, values unescaped.
fn read_sd_element(r: &mut Reader<'_>, lf: bool) -> (String, Vec<(String, String)>) {
    let sd_name = |t: &[u8]| {
        (1..=32).contains(&t.len())
            && t.iter()
                .all(|c| c.is_ascii_graphic() && !matches!(c, b'=' | b']' | b'"'))
    };
    r.expect(b"[", "SD-ELEMENT");
    let id = r.until(b" ]");
    assert!(sd_name(id), "SD-ID {:?}", String::from_utf8_lossy(id));
    let mut params = Vec::new();
    loop {
        match r.peek() {
            Some(b']') => {
                r.i += 1;
                break;
            }
            Some(b' ') => r.i += 1,
            other => panic!("SD-ELEMENT: unexpected {other:?}"),
        }
        let name = r.until(b"=");
        assert!(
            sd_name(name),
            "PARAM-NAME {:?}",
            String::from_utf8_lossy(name)
        );
        r.expect(b"=\"", "SD-PARAM");
        let mut value = Vec::new();
        loop {
            match r.peek().expect("PARAM-VALUE not closed") {
                b'\\' => {
                    let e = r.s.get(r.i + 1).copied().expect("escape at the end");
                    value.push(match e {
                        b'"' | b'\\' | b']' => e,
                        b'n' if lf => b'\n',
                        b'r' if lf => b'\r',
                        _ => panic!("PARAM-VALUE escape \\{}", e as char),
                    });
                    r.i += 2;
                }
                b'"' => {
                    r.i += 1;
                    break;
                }
                b']' => panic!("unescaped ] in PARAM-VALUE"),
                c => {
                    value.push(c);
                    r.i += 1;
                }
            }
        }
        params.push((
            String::from_utf8(name.to_vec()).expect("ascii"),
            String::from_utf8(value).expect("PARAM-VALUE is not UTF-8"),
        ));
    }
    (String::from_utf8(id.to_vec()).expect("ascii"), params)
}

/// `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG`: the PRI and MSG.
fn read_rfc3164(msg: &[u8]) -> (u8, &[u8]) {
    let mut r = Reader { s: msg, i: 0 };
    let pri = r.pri();
    let ts = r.s.get(r.i..r.i + 15).expect("TIMESTAMP");
    let t = std::str::from_utf8(ts).expect("TIMESTAMP is ASCII");
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    assert!(MONTHS.contains(&&t[..3]), "month in {t:?}");
    let day = t[4..6].trim_start();
    assert!(
        t.as_bytes()[3] == b' '
            && !day.is_empty()
            && day.bytes().all(|c| c.is_ascii_digit())
            && (1..=31).contains(&day.parse::<u32>().unwrap_or(0)),
        "day in {t:?}"
    );
    let shape = " dd:dd:dd";
    assert!(
        t[6..]
            .bytes()
            .zip(shape.bytes())
            .all(|(c, s)| if s == b'd' {
                c.is_ascii_digit()
            } else {
                c == s
            }),
        "time in {t:?}"
    );
    let n = |a: usize| t[a..a + 2].parse::<u32>().expect("digits");
    assert!(
        n(7) <= 23 && n(10) <= 59 && n(13) <= 59,
        "time in {t:?} (00-23:00-59:00-59, no leap second)"
    );
    r.i += 15;
    r.expect(b" ", "SP");
    r.token(255, "HOSTNAME");
    let tag = r.until(b"[");
    assert!(
        (1..=32).contains(&tag.len())
            && tag
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/')),
        "TAG {:?}",
        String::from_utf8_lossy(tag)
    );
    r.expect(b"[", "PID");
    let pid = r.until(b"]");
    assert!(!pid.is_empty() && pid.iter().all(u8::is_ascii_digit), "PID");
    r.expect(b"]: ", "after PID");
    (pri, r.rest())
}

/// Splits `s` on unescaped `sep` (a `\` escapes the next byte, which must be
/// one of `escapable`); returns the pieces unescaped. `complete = false`
/// accepts a prefix of a record (a cut body).
fn split_escaped(s: &[u8], sep: Option<u8>, escapable: &[(u8, u8)], what: &str) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' => {
                let e = *s
                    .get(i + 1)
                    .unwrap_or_else(|| panic!("{what}: lone \\ at the end"));
                let (_, v) = escapable
                    .iter()
                    .find(|(k, _)| *k == e)
                    .unwrap_or_else(|| panic!("{what}: escape \\{}", e as char));
                out.last_mut().expect("piece").push(*v);
                i += 2;
            }
            c if Some(c) == sep => {
                out.push(Vec::new());
                i += 1;
            }
            c => {
                assert!(c != b'\n' && c != b'\r', "{what}: raw line break");
                out.last_mut().expect("piece").push(c);
                i += 1;
            }
        }
    }
    out
}

fn text(v: Vec<u8>) -> String {
    String::from_utf8(v).expect("field is not UTF-8")
}

/// A CEF record: the six header fields (unescaped) and the extensions as
/// key/value pairs (unescaped).
fn read_cef(body: &[u8], complete: bool) -> (Vec<String>, Vec<(String, String)>) {
    let prefix: &[u8] = b"CEF:0|";
    if !complete && body.len() < prefix.len() {
        assert!(prefix.starts_with(body), "CEF prefix");
        return Default::default();
    }
    assert!(body.starts_with(prefix), "no CEF:0| prefix");
    let rest = &body[prefix.len()..];
    // The header ends at the sixth unescaped `|`.
    let mut pipes = 0;
    let mut i = 0;
    while i < rest.len() && pipes < 6 {
        match rest[i] {
            b'\\' => i += 2,
            b'|' => {
                pipes += 1;
                i += 1
            }
            _ => i += 1,
        }
    }
    let (head, ext) = rest.split_at(i.min(rest.len()));
    let fields = split_escaped(
        head,
        Some(b'|'),
        &[(b'\\', b'\\'), (b'|', b'|')],
        "CEF header",
    );
    if !complete && pipes < 6 {
        return Default::default();
    }
    assert_eq!(pipes, 6, "CEF header has {pipes} separators");
    let fields: Vec<String> = fields.into_iter().map(text).collect();
    let severity = &fields[5];
    assert!(
        severity.parse::<u8>().is_ok_and(|n| n <= 10),
        "CEF severity {severity:?}"
    );
    // Extensions: every unescaped `=` ends a key that starts the extension
    // or follows a space; the value runs to the space before the next key.
    let mut eqs = Vec::new();
    let mut i = 0;
    while i < ext.len() {
        match ext[i] {
            b'\\' => {
                assert!(i + 1 < ext.len(), "CEF extension: lone \\ at the end");
                assert!(
                    matches!(ext[i + 1], b'\\' | b'=' | b'n' | b'r'),
                    "CEF extension escape \\{}",
                    ext[i + 1] as char
                );
                i += 2;
            }
            b'=' => {
                eqs.push(i);
                i += 1;
            }
            b'\n' | b'\r' => panic!("CEF extension: raw line break"),
            _ => i += 1,
        }
    }
    let mut pairs = Vec::new();
    let mut key_starts = Vec::new();
    for (n, &eq) in eqs.iter().enumerate() {
        let floor = if n == 0 { 0 } else { eqs[n - 1] + 1 };
        let ks = ext[floor..eq]
            .iter()
            .rposition(|c| *c == b' ')
            .map_or(floor, |p| floor + p + 1);
        let key = &ext[ks..eq];
        assert!(
            crate::format::cef::valid_key(std::str::from_utf8(key).unwrap_or("")),
            "CEF key {:?}",
            String::from_utf8_lossy(key)
        );
        assert!(
            ks == 0 && n == 0 || ks > 0 && ext[ks - 1] == b' ',
            "CEF key does not start the extension or follow a space"
        );
        key_starts.push(ks);
    }
    if !ext.is_empty() {
        assert!(!eqs.is_empty() || !complete, "CEF extension without a key");
    }
    for (n, &eq) in eqs.iter().enumerate() {
        let end = key_starts.get(n + 1).map_or(ext.len(), |ks| ks - 1);
        let key = String::from_utf8(ext[key_starts[n]..eq].to_vec()).expect("key");
        let value = split_escaped(
            &ext[eq + 1..end],
            None,
            &[(b'\\', b'\\'), (b'=', b'='), (b'n', b'\n'), (b'r', b'\r')],
            "CEF value",
        );
        pairs.push((key, text(value.concat())));
    }
    (fields, pairs)
}

/// A LEEF 2.0 record: the four header fields before the delimiter
/// declaration (unescaped) and the attributes.
fn read_leef(body: &[u8], delim: char, complete: bool) -> (Vec<String>, Vec<(String, String)>) {
    let prefix: &[u8] = b"LEEF:2.0|";
    if !complete && body.len() < prefix.len() {
        assert!(prefix.starts_with(body), "LEEF prefix");
        return Default::default();
    }
    assert!(body.starts_with(prefix), "no LEEF:2.0| prefix");
    let rest = &body[prefix.len()..];
    let mut pipes = 0;
    let mut i = 0;
    while i < rest.len() && pipes < 5 {
        match rest[i] {
            b'\\' => i += 2,
            b'|' => {
                pipes += 1;
                i += 1
            }
            _ => i += 1,
        }
    }
    let (head, attrs) = rest.split_at(i.min(rest.len()));
    let mut fields = split_escaped(
        head,
        Some(b'|'),
        &[(b'\\', b'\\'), (b'|', b'|')],
        "LEEF header",
    );
    if !complete && pipes < 5 {
        return Default::default();
    }
    assert_eq!(pipes, 5, "LEEF header has {pipes} separators");
    fields.truncate(5);
    let declared = text(fields.pop().expect("delimiter field"));
    let want = if delim == '\t' {
        "x09".to_string()
    } else {
        delim.to_string()
    };
    assert_eq!(declared, want, "LEEF delimiter declaration");
    let d = delim as u8;
    let mut escapable = vec![(b'\\', b'\\'), (b'n', b'\n'), (b'r', b'\r'), (d, d)];
    if d == b'\t' {
        escapable.push((b't', b'\t'));
    }
    let pieces = split_escaped(attrs, Some(d), &escapable, "LEEF attributes");
    let last = pieces.len() - 1;
    let mut pairs = Vec::new();
    for (n, piece) in pieces.into_iter().enumerate() {
        let piece = text(piece);
        match piece.split_once('=') {
            Some((k, v)) => {
                assert!(
                    !k.is_empty() && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'),
                    "LEEF key {k:?}"
                );
                pairs.push((k.to_string(), v.to_string()));
            }
            None => assert!(!complete && n == last, "LEEF attribute without ="),
        }
    }
    (fields.into_iter().map(text).collect(), pairs)
}
