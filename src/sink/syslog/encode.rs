//! Turns events into syslog frames: severity, header, structured data, body,
//! the size limit, and the framing of the transport.
//!
//! Size limit: the header is never cut; the body is shortened so the
//! message fits and stays valid in its format: a JSON body keeps its
//! structure with its longest string values cut and marked, CEF/LEEF keep
//! every key with their longest values cut and marked (see
//! [`crate::format::shorten`]). RFC 5424 messages then carry
//! `truncated="<original body bytes>"` in their SD element. The frame
//! therefore stays valid, the body parses, and the cut is visible. Should
//! the header and SD element alone not fit (a 255-byte hostname beside ids
//! and types that escape to twice their size), the SD values of that
//! message are cut shorter until they do.

use std::collections::HashMap;
use std::io::Write;
use std::ops::Range;

use serde_json::Value;

use super::{Body, Format, Framing, SyslogConfig};
use crate::event::{scalar_text, Event, FieldPath, TopIndex};
use crate::format::fields::{is_success, lookup, text_of, AuditFacts, Fields};
use crate::format::siem::SiemEvent;
use crate::format::syslog::{cut_escaped, pri, short_name, Facility, Severity};
use crate::format::{cef, leef, ndjson, rfc3164, rfc5424, shorten};

/// SD-PARAM values are cut to this many bytes (before escaping) so the
/// header and SD always leave room for a body.
pub const SD_VALUE_MAX: usize = 128;

pub struct Encoder {
    format: Format,
    body: Body,
    /// `None`: the transport delimits messages itself (UDP datagrams, RELP).
    framing: Option<Framing>,
    facility: Facility,
    severity: Severity,
    failure_severity: Severity,
    severity_field: Option<FieldPath>,
    severity_values: HashMap<String, Severity>,
    hostname: String,
    app_name: String,
    procid: String,
    msgid: Option<String>,
    sd_id: Option<String>,
    max_message: usize,
    vendor: String,
    product: String,
    version: String,
    delimiter: char,
    fields: Fields,
    extra: Vec<(String, FieldPath)>,
    /// Whether events must be parsed (SIEM bodies, severity from fields).
    parse: bool,
}

/// Reusable buffers, so encoding a batch allocates little.
#[derive(Default)]
pub struct Scratch {
    body: Vec<u8>,
    head: Vec<u8>,
    extra: Vec<(String, String)>,
    /// JSON bodies that had to become the summary object.
    summaries: usize,
}

/// A batch encoded: all frames back to back, and where each one is.
#[derive(Default)]
pub struct Frames {
    pub buf: Vec<u8>,
    pub spans: Vec<Range<usize>>,
    /// Messages whose body was shortened to fit `max_message_size`.
    pub truncated: usize,
    /// Of those, JSON bodies that became the summary object (see
    /// [`shorten`](crate::format::shorten)).
    pub summarized: usize,
}

impl Frames {
    pub fn frame(&self, i: usize) -> &[u8] {
        &self.buf[self.spans[i].clone()]
    }
}

impl Encoder {
    /// Builds the encoder of a validated config.
    pub fn new(
        cfg: &SyslogConfig,
        framing: Option<Framing>,
        max_message: usize,
    ) -> anyhow::Result<Self> {
        let path = |p: &str| FieldPath::parse(p).map_err(|e| anyhow::anyhow!(e));
        let hostname = cfg
            .hostname
            .clone()
            .unwrap_or_else(crate::format::syslog::local_hostname);
        let (hostname, app_name) = match cfg.format {
            Format::Rfc5424 => (
                rfc5424::token(&hostname, rfc5424::HOSTNAME_MAX),
                rfc5424::token(&cfg.app_name, rfc5424::APP_NAME_MAX),
            ),
            Format::Rfc3164 => (rfc3164::hostname(&hostname), rfc3164::tag(&cfg.app_name)),
        };
        let extra = cfg
            .extra_fields
            .iter()
            .map(|(k, p)| Ok((k.clone(), path(p)?)))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let severity_field = cfg.severity_field.as_deref().map(path).transpose()?;
        Ok(Encoder {
            format: cfg.format,
            body: cfg.body,
            framing,
            facility: cfg.facility,
            severity: cfg.severity,
            failure_severity: cfg.failure_severity,
            parse: cfg.body != Body::Json
                || severity_field.is_some()
                || cfg.failure_severity != cfg.severity,
            severity_field,
            severity_values: cfg
                .severity_values
                .iter()
                .map(|(k, v)| (k.clone(), *v))
                .collect(),
            hostname,
            app_name,
            procid: std::process::id().to_string(),
            msgid: cfg
                .msgid
                .as_deref()
                .map(|m| rfc5424::token(m, rfc5424::MSGID_MAX)),
            sd_id: cfg.structured_data.then(|| cfg.sd_id.clone()),
            max_message,
            vendor: cfg.vendor.clone(),
            product: cfg.product.clone(),
            version: cfg.product_version.clone(),
            delimiter: crate::format::leef::parse_delimiter(&cfg.leef_delimiter)
                .map_err(|e| anyhow::anyhow!(e))?,
            fields: cfg.fields.compile().map_err(|e| anyhow::anyhow!(e))?,
            extra,
        })
    }

    /// Encodes a batch.
    pub fn encode_all(&self, source: &str, events: &[Event]) -> Frames {
        let mut frames = Frames {
            buf: Vec::with_capacity(events.iter().map(|e| e.raw.len() + 160).sum()),
            spans: Vec::with_capacity(events.len()),
            truncated: 0,
            summarized: 0,
        };
        let mut scratch = Scratch::default();
        for e in events {
            let start = frames.buf.len();
            if self.encode(source, e, &mut frames.buf, &mut scratch) {
                frames.truncated += 1;
            }
            frames.spans.push(start..frames.buf.len());
        }
        frames.summarized = scratch.summaries;
        frames
    }

    /// Appends one framed message to `out`; returns whether it was truncated.
    pub fn encode(&self, source: &str, event: &Event, out: &mut Vec<u8>, s: &mut Scratch) -> bool {
        // SIEM bodies need many fields: parse once. The JSON body needs at
        // most the severity inputs, read from the raw bytes (much cheaper).
        let parsed: Option<Value> = if self.parse && self.body != Body::Json {
            serde_json::from_slice(&event.raw).ok()
        } else {
            None
        };
        let facts = match &parsed {
            Some(v) => self.fields.facts(v),
            None => AuditFacts::default(),
        };
        let severity = if self.parse && self.body == Body::Json {
            // One pass over the event for every severity input.
            match TopIndex::of(&event.raw) {
                Some(index) => self.severity_raw(&index),
                None => self.severity,
            }
        } else {
            self.severity_of(parsed.as_ref(), &facts)
        };
        s.body.clear();
        let siem = |out: &mut Vec<u8>, extra: &[(String, String)], cap: usize| {
            let siem = SiemEvent {
                vendor: &self.vendor,
                product: &self.product,
                version: &self.version,
                event_type: event.kind.as_deref(),
                id: event.id.as_deref(),
                time: event.time,
                source,
                severity,
                facts: &facts,
                extra,
            };
            if self.body == Body::Cef {
                cef::write_capped(out, &siem, cap);
            } else {
                leef::write_capped(out, &siem, self.delimiter, cap);
            }
        };
        match self.body {
            Body::Json => ndjson::push_compact(&mut s.body, &event.raw),
            Body::Cef | Body::Leef => {
                s.extra.clear();
                if let Some(v) = &parsed {
                    for (k, p) in &self.extra {
                        if let Some(text) = lookup(v, p).and_then(text_of) {
                            s.extra.push((k.clone(), text));
                        }
                    }
                }
                siem(&mut s.body, &s.extra, usize::MAX);
            }
        }
        self.head(&mut s.head, source, event, severity, None, SD_VALUE_MAX);
        let mut truncated = false;
        if s.head.len() + s.body.len() > self.max_message {
            truncated = true;
            let original = s.body.len();
            // With empty values the head is under 500 bytes, below the
            // smallest max_message_size (1024): halving ends within 8 rounds.
            let mut value_max = SD_VALUE_MAX;
            loop {
                self.head(
                    &mut s.head,
                    source,
                    event,
                    severity,
                    Some(original),
                    value_max,
                );
                if s.head.len() <= self.max_message || value_max == 0 {
                    break;
                }
                value_max /= 2;
            }
            let room = self.max_message.saturating_sub(s.head.len());
            let shortened = match self.body {
                Body::Json => {
                    let who = shorten::Identity {
                        id: event.id.as_deref(),
                        time: event.time,
                        kind: event.kind.as_deref(),
                    };
                    shorten::json(&s.body, room, &who).map(|b| match b {
                        shorten::Shortened::Values(b) => b,
                        shorten::Shortened::Summary(b) => {
                            s.summaries += 1;
                            b
                        }
                    })
                }
                Body::Cef | Body::Leef => {
                    let len = |cap| {
                        let mut buf = Vec::with_capacity(room);
                        siem(&mut buf, &s.extra, cap);
                        buf
                    };
                    shorten::largest_cap(original, room, |cap| len(cap).len()).map(len)
                }
            };
            match shortened {
                Some(b) => s.body = b,
                // Only with a room under 60 bytes, which the smallest
                // max_message_size and the head cut above rule out.
                None => {
                    let keep = cut_escaped(&s.body, room);
                    s.body.truncate(keep);
                }
            }
        }
        let msg_len = s.head.len() + s.body.len();
        match self.framing {
            Some(Framing::OctetCounting) => {
                let _ = write!(out, "{msg_len} ");
            }
            Some(Framing::Lf) | None => {}
        }
        out.extend_from_slice(&s.head);
        out.extend_from_slice(&s.body);
        if self.framing == Some(Framing::Lf) {
            out.push(b'\n');
        }
        truncated
    }

    /// [`Encoder::severity_of`] on the raw event.
    fn severity_raw(&self, raw: &TopIndex<'_>) -> Severity {
        if let Some(path) = &self.severity_field {
            if let Some(text) = raw.lookup(path).and_then(scalar_text) {
                if let Some(s) = self.mapped(&text) {
                    return s;
                }
            }
        }
        if self.fields.outcome_raw(raw).as_deref().and_then(is_success) == Some(false) {
            return self.failure_severity;
        }
        self.severity
    }

    fn mapped(&self, text: &str) -> Option<Severity> {
        self.severity_values
            .get(text)
            .copied()
            .or_else(|| Severity::parse(text))
    }

    /// Severity: a mapped event field first, then failure, then the default.
    fn severity_of(&self, parsed: Option<&Value>, facts: &AuditFacts) -> Severity {
        if let (Some(path), Some(v)) = (&self.severity_field, parsed) {
            if let Some(text) = lookup(v, path).and_then(text_of) {
                if let Some(s) = self.mapped(&text) {
                    return s;
                }
            }
        }
        if facts.success == Some(false) {
            return self.failure_severity;
        }
        self.severity
    }

    /// Everything before the body. `truncated` holds the original body size
    /// when the body will be cut; SD values are cut to `value_max` bytes.
    fn head(
        &self,
        out: &mut Vec<u8>,
        source: &str,
        event: &Event,
        severity: Severity,
        truncated: Option<usize>,
        value_max: usize,
    ) {
        out.clear();
        let pri = pri(self.facility, severity);
        let kind_name = event
            .kind
            .as_deref()
            .map(|k| short_name(k, rfc5424::MSGID_MAX));
        match self.format {
            Format::Rfc5424 => {
                let msgid = match (&self.msgid, kind_name) {
                    (Some(m), _) => m.clone(),
                    (None, Some(k)) => rfc5424::token(k, rfc5424::MSGID_MAX),
                    (None, None) => "-".into(),
                };
                rfc5424::write_header(
                    out,
                    &rfc5424::Header {
                        pri,
                        time: event.time,
                        hostname: &self.hostname,
                        app_name: &self.app_name,
                        procid: &self.procid,
                        msgid: &msgid,
                    },
                );
                match &self.sd_id {
                    Some(sd_id) => {
                        let mut params: Vec<(&str, &str)> = Vec::with_capacity(4);
                        if let Some(id) = event.id.as_deref() {
                            params.push(("id", id));
                        }
                        params.push(("source", source));
                        if let Some(kind) = event.kind.as_deref() {
                            params.push(("type", kind));
                        }
                        let original = truncated.map(|n| n.to_string());
                        if let Some(n) = original.as_deref() {
                            params.push(("truncated", n));
                        }
                        let lf = self.framing == Some(Framing::Lf);
                        rfc5424::write_sd_element(out, sd_id, &params, value_max, lf);
                    }
                    None => out.push(b'-'),
                }
                out.push(b' ');
            }
            Format::Rfc3164 => {
                let time = event.time.unwrap_or_else(chrono::Utc::now);
                rfc3164::write_header(
                    out,
                    pri,
                    time,
                    &self.hostname,
                    &self.app_name,
                    std::process::id(),
                );
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use chrono::TimeZone;
    use serde_json::Value;

    fn cfg(extra: &str) -> SyslogConfig {
        let text = format!(
            "{{\"address\":\"tcp://127.0.0.1:1\",\"hostname\":\"relay\"{}{extra}}}",
            if extra.is_empty() { "" } else { "," }
        );
        serde_json::from_str(&text).unwrap()
    }

    fn event(raw: &str) -> Event {
        Event {
            raw: Bytes::from(raw.to_string()),
            id: Some("r\"1]".into()),
            time: Some(chrono::Utc.timestamp_opt(1_700_000_000, 5_000).unwrap()),
            kind: Some("/api_protos.v1.UserService/DeleteUser".into()),
        }
    }

    fn one(enc: &Encoder, e: &Event) -> (String, bool) {
        let mut out = Vec::new();
        let t = enc.encode("veza", e, &mut out, &mut Scratch::default());
        (String::from_utf8(out).unwrap(), t)
    }

    #[test]
    fn rfc5424_json_octet_counted_with_failure_severity() {
        let c = cfg("");
        let enc = Encoder::new(&c, Some(Framing::OctetCounting), 8192).unwrap();
        let raw = "{\"status\":{\"grpc_code\":\"PERMISSION_DENIED\"},\n \"x\":\"a\\nb\"}";
        let (out, truncated) = one(&enc, &event(raw));
        assert!(!truncated);
        let (len, msg) = out.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        let pid = std::process::id();
        assert_eq!(
            msg,
            format!(
                "<132>1 2023-11-14T22:13:20.000005Z relay auditrelay {pid} DeleteUser \
                 [auditrelay@32473 id=\"r\\\"1\\]\" source=\"veza\" type=\"/api_protos.v1.UserService/DeleteUser\"] \
                 {{\"status\":{{\"grpc_code\":\"PERMISSION_DENIED\"}},  \"x\":\"a\\nb\"}}"
            )
        );
    }

    #[test]
    fn truncation_keeps_the_frame_valid_and_says_so() {
        let c = cfg("\"max_message_size\":1024");
        let enc = Encoder::new(&c, Some(Framing::Lf), 1024).unwrap();
        let big = format!("{{\"s\":\"{}\"}}", "☃\\\\".repeat(1000));
        let (out, truncated) = one(&enc, &event(&big));
        assert!(truncated);
        assert!(out.ends_with('\n') && out.matches('\n').count() == 1);
        assert!(out.len() <= 1025, "{}", out.len());
        assert!(out.contains(&format!("truncated=\"{}\"", big.len())));
        // Never ends inside an escape.
        let body = out.trim_end_matches('\n');
        let run = body.chars().rev().take_while(|c| *c == '\\').count();
        assert_eq!(run % 2, 0);
    }

    /// The body of an RFC 5424 message after its SD element.
    fn rfc5424_body(msg: &str) -> &str {
        let sd_end = msg.find("] ").expect("SD element");
        &msg[sd_end + 2..]
    }

    /// A Veza-shaped event whose `details` outgrew the limit (issue 14: 1.3 %
    /// of real events passed 8192 bytes).
    fn large_veza_event(details: usize) -> String {
        let details = r#"détail \"quoted\" \n "#.repeat(details / 20);
        format!(
            "{{\"request_id\":\"r-77\",\"persisted_at\":\"2026-03-15T08:42:00Z\",\
             \"actor\":{{\"name\":\"alice@example.com\"}},\"status\":{{\"grpc_code\":\"OK\"}},\
             \"request\":{{\"details\":\"{details}\",\"ids\":[1,2,3]}},\"note\":\"{}\"}}",
            "n".repeat(600)
        )
    }

    #[test]
    fn a_cut_json_body_still_parses_and_keeps_its_short_fields() {
        let c = cfg("");
        let enc = Encoder::new(&c, Some(Framing::OctetCounting), 8192).unwrap();
        let raw = large_veza_event(12_000);
        let (out, truncated) = one(&enc, &event(&raw));
        assert!(truncated);
        let (len, msg) = out.split_once(' ').unwrap();
        assert_eq!(len.parse::<usize>().unwrap(), msg.len());
        assert!(msg.len() <= 8192, "{}", msg.len());
        assert!(msg.contains(&format!("truncated=\"{}\"", raw.len())));
        let body: Value = serde_json::from_str(rfc5424_body(msg)).expect("the body is JSON");
        assert!(body.get("auditrelay_truncated").is_none(), "{body}");
        assert_eq!(body["request_id"], "r-77");
        assert_eq!(body["actor"]["name"], "alice@example.com");
        assert_eq!(body["request"]["ids"], serde_json::json!([1, 2, 3]));
        assert_eq!(
            body["note"].as_str().unwrap().len(),
            600,
            "shorter values stay whole"
        );
        let details = body["request"]["details"].as_str().unwrap();
        assert!(details.contains("…[truncated "), "{details}");
        assert!(
            msg.len() > 8000,
            "as little as possible is cut: {}",
            msg.len()
        );
    }

    #[test]
    fn cut_cef_and_leef_values_stay_escaped_and_marked() {
        let raw = format!(
            "{{\"actor\":{{\"name\":\"a=b\\\\c^{}\"}},\"url\":\"https://x/?q={}\",\"status\":{{\"grpc_code\":\"OK\"}}}}",
            "=\\\\^\\n☃".repeat(400),
            "u".repeat(3000)
        );
        let e = event(&raw);
        for body in ["cef", "leef"] {
            let c = cfg(&format!("\"body\":\"{body}\",\"max_message_size\":1024"));
            let enc = Encoder::new(&c, Some(Framing::Lf), 1024).unwrap();
            let (out, truncated) = one(&enc, &e);
            assert!(truncated);
            assert!(out.len() <= 1025, "{body}: {}", out.len());
            let rec = rfc5424_body(out.trim_end_matches('\n'));
            let (key, sep) = if body == "cef" {
                ("suser=", " outcome=")
            } else {
                ("usrName=", "^outcome=")
            };
            let user = &rec[rec.find(key).unwrap() + key.len()..rec.find(sep).unwrap()];
            // Every backslash starts a whole escape: the cut came before escaping.
            let mut unescaped = String::new();
            let mut chars = user.chars();
            while let Some(ch) = chars.next() {
                if ch == '\\' {
                    match chars.next() {
                        Some('n') => unescaped.push('\n'),
                        Some(x @ ('\\' | '=' | '^')) => unescaped.push(x),
                        other => panic!("{body}: bad escape \\{other:?} in {user}"),
                    }
                } else {
                    assert!(ch != '=' || body == "leef", "{body}: bare = in {user}");
                    assert!(ch != '^' || body == "cef", "{body}: bare ^ in {user}");
                    unescaped.push(ch);
                }
            }
            let full = format!("a=b\\c^{}", "=\\^\n☃".repeat(400));
            let (kept, mark) = unescaped.split_at(unescaped.find('…').unwrap());
            assert!(full.starts_with(kept), "{body}: {kept}");
            assert_eq!(
                mark,
                format!("…[truncated {} bytes]", full.len() - kept.len())
            );
            assert!(rec.contains("OK"), "{body}: short values stay: {rec}");
        }
    }

    #[test]
    fn random_events_and_limits_give_parseable_bodies_within_the_limit() {
        use rand::rngs::StdRng;
        use rand::{Rng, SeedableRng};
        let mut rng = StdRng::seed_from_u64(2);
        const UNITS: [&str; 8] = ["a", "é", "😀", "\\n", "\\\"", "\\\\", "\\ud83d\\ude00", "]"];
        for round in 0..400 {
            let max = [1024, 1500, 2048, 8192][round % 4];
            let mut raw = String::from("{");
            for f in 0..rng.random_range(1..40) {
                let longest = [5, 50, 3000][rng.random_range(0..3)];
                let len = rng.random_range(0..longest);
                let text: String = (0..len)
                    .map(|_| UNITS[rng.random_range(0..UNITS.len())])
                    .collect();
                if f > 0 {
                    raw.push(',');
                }
                raw.push_str(&format!("\"k{f}\":[\"{text}\",{f},{{\"n\":null}}]"));
            }
            raw.push('}');
            let mut c = cfg(&format!("\"max_message_size\":{max}"));
            if round % 3 == 0 {
                c.format = Format::Rfc3164;
            }
            let enc = Encoder::new(&c, None, max).unwrap();
            let (msg, _) = one(&enc, &event(&raw));
            assert!(msg.len() <= max, "{} > {max}", msg.len());
            let body = if round % 3 == 0 {
                &msg[msg.find("]: ").unwrap() + 3..]
            } else {
                rfc5424_body(&msg)
            };
            serde_json::from_str::<Value>(body).unwrap_or_else(|e| panic!("{e}: {body}"));
        }
    }

    #[test]
    fn a_long_hostname_and_hostile_ids_still_fit_the_limit() {
        // Found by the syslog_encoder fuzz target: the longest hostname,
        // APP-NAME and SD-ID the config allows, a 64-byte source and SD
        // values that escape to twice their length outgrew 1024 bytes.
        let host = "h".repeat(255);
        let mut c = cfg("\"max_message_size\":1024");
        c.hostname = Some(host.clone());
        c.app_name = "a".repeat(48);
        c.sd_id = format!("{}@32473", "s".repeat(26));
        let enc = Encoder::new(&c, Some(Framing::Lf), 1024).unwrap();
        let hostile = "\"]\\".repeat(60);
        let e = Event {
            raw: Bytes::from(format!("{{\"s\":\"{}\"}}", "x".repeat(4000))),
            id: Some(hostile.clone().into()),
            time: Some(chrono::Utc.timestamp_opt(1_700_000_000, 0).unwrap()),
            kind: Some(hostile.into()),
        };
        let mut out = Vec::new();
        let truncated = enc.encode(&"s".repeat(64), &e, &mut out, &mut Scratch::default());
        assert!(truncated);
        assert!(out.len() <= 1024 + 1, "{} bytes", out.len());
        let msg = String::from_utf8(out).unwrap();
        assert!(
            msg.contains(&format!(" {host} ")),
            "the hostname stays whole"
        );
        assert!(msg.contains("truncated=\"4008\""), "{msg}");
        assert!(msg.contains("{\"s\":\"xxx"), "some of the body is left");
    }

    #[test]
    fn severity_mapping_from_a_field() {
        let c = cfg("\"severity_field\":\"level\",\"severity_values\":{\"high\":\"crit\"},\"facility\":\"auth\"");
        let enc = Encoder::new(&c, None, 8192).unwrap();
        assert!(one(&enc, &event("{\"level\":\"high\"}"))
            .0
            .starts_with("<34>1 "));
        assert!(one(&enc, &event("{\"level\":\"notice\"}"))
            .0
            .starts_with("<37>1 "));
        assert!(one(&enc, &event("{\"level\":\"??\"}"))
            .0
            .starts_with("<38>1 "));
    }

    #[test]
    fn rfc3164_lf() {
        let c = cfg("\"format\":\"rfc3164\",\"app_name\":\"audit relay\"");
        let enc = Encoder::new(&c, Some(Framing::Lf), 2048).unwrap();
        let (out, _) = one(&enc, &event("{\"a\":\n1}"));
        assert_eq!(
            out,
            format!(
                "<134>Nov 14 22:13:20 relay auditrelay[{}]: {{\"a\": 1}}\n",
                std::process::id()
            )
        );
    }
}
