//! Entry points for the fuzz targets in `fuzz/` and the corpus replay test:
//! each feeds arbitrary bytes to a parser or encoder of the product and
//! panics only when an invariant breaks.
//!
//! The source parsers are the ones a live poll uses (each source's
//! `parse_page`/`parse_body`), on sources built once per thread from a fixed
//! config; no request is ever sent.

use std::cell::RefCell;

use bytes::Bytes;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::value::RawValue;

use crate::event::{Event, FieldExtractor};
use crate::health::Health;
use crate::source::certifyclouds::CertifycloudsSource;
use crate::source::http_pull::HttpPullSource;
use crate::source::pull::Next;
use crate::source::quickztna::QuickztnaSource;
use crate::source::veza::{VezaConfig, VezaSource};
use crate::source::veza_list::{VezaListConfig, VezaListSource};
use crate::source::SourceContext;

mod frame;

pub use frame::syslog_encoder;

thread_local! {
    static VEZA: RefCell<Option<VezaSource>> = const { RefCell::new(None) };
    static QUICKZTNA: [QuickztnaSource; 3] = [
        source_cfg(r#"{"endpoint":"export","format":"json","journal":false}"#, QuickztnaSource::new),
        source_cfg(r#"{"endpoint":"audit","journal":false}"#, QuickztnaSource::new),
        source_cfg(r#"{"endpoint":"export","format":"csv","journal":false}"#, QuickztnaSource::new),
    ];
    static CERTIFYCLOUDS: [CertifycloudsSource; 2] = [
        source_cfg("{}", CertifycloudsSource::new),
        source_cfg(r#"{"items_path":"result.entries"}"#, CertifycloudsSource::new),
    ];
    static HTTP_PULL: Vec<HttpPullSource> = HTTP_PULL_CONFIGS
        .iter()
        .map(|c| source_cfg(c, HttpPullSource::new))
        .collect();
    static VEZA_LIST: VezaListSource =
        source_cfg("{}", |cfg: VezaListConfig, ctx| {
            VezaListSource::new(cfg, ctx, "fuzz", None)
        });
}

const FUZZ_URL: &str = "http://127.0.0.1:9";

fn context() -> SourceContext {
    SourceContext {
        name: "fuzz".into(),
        checkpoint: None,
        health: Health::default(),
        state_dir: std::env::temp_dir(),
    }
}

/// A source of a fixed config: `extra` (a JSON object) on top of the url,
/// a token and an org id (for the sources that need them).
fn source_cfg<C, S>(extra: &str, new: impl Fn(C, SourceContext) -> anyhow::Result<S>) -> S
where
    C: serde::de::DeserializeOwned,
{
    std::env::set_var("AUDITRELAY_FUZZ_TOKEN", "fuzz");
    let mut cfg: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(extra).expect("fuzz config extra");
    for (k, v) in [
        ("url", FUZZ_URL),
        ("token_env", "AUDITRELAY_FUZZ_TOKEN"),
        ("org_id", "org"),
    ] {
        cfg.entry(k).or_insert_with(|| v.into());
    }
    let cfg: C = serde_json::from_value(cfg.into()).expect("fuzz config");
    new(cfg, context()).expect("fuzz source")
}

/// The `http_pull` configs a page is read under: every pagination mode,
/// with and without an items path.
const HTTP_PULL_CONFIGS: &[&str] = &[
    r#"{"path":"/api/events?x=1","pagination":{"mode":"token","token_path":"meta.next_token"}}"#,
    r#"{"path":"/api/events?x=1","items_path":"data.items","pagination":{"mode":"token","token_header":"X-Next-Token"}}"#,
    r#"{"path":"/api/events?x=1","pagination":{"mode":"link"}}"#,
    r#"{"path":"/api/events?x=1","page_size":3,"pagination":{"mode":"offset"}}"#,
    r#"{"path":"/api/events?x=1","items_path":"results","pagination":{"mode":"page","first_page":1,"stop":"empty_page"}}"#,
    r#"{"path":"/api/events?x=1","items_path":".","pagination":{"mode":"none"}}"#,
];

fn veza_source() -> VezaSource {
    std::env::set_var("AUDITRELAY_FUZZ_TOKEN", "fuzz");
    let cfg: VezaConfig = serde_json::from_str(
        r#"{"url":"http://127.0.0.1:9","token_env":"AUDITRELAY_FUZZ_TOKEN","recent_ids":100}"#,
    )
    .expect("fuzz config");
    VezaSource::new(cfg, context()).expect("fuzz source")
}

/// An event of a page: exactly one JSON value, and (zero-copy) the bytes
/// of the page it was cut from.
fn assert_cut_from(body: &Bytes, e: &Event) {
    assert!(
        serde_json::from_slice::<&RawValue>(&e.raw).is_ok(),
        "event is not one JSON value"
    );
    let start = (e.raw.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
    assert!(
        start <= body.len() && e.raw.len() <= body.len() - start,
        "event bytes outside the page"
    );
}

/// An event built by the product (CSV rows): one JSON object.
fn assert_object(e: &Event) {
    let v: serde_json::Value = serde_json::from_slice(&e.raw).expect("event is JSON");
    assert!(v.is_object(), "event is not a JSON object");
}

/// A Veza export response body: never a panic; every event is exactly one
/// JSON value cut from the body.
pub fn veza_page(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    VEZA.with(|cell| {
        let mut slot = cell.borrow_mut();
        let src = slot.get_or_insert_with(veza_source);
        if let Some(events) = src.parse_response(200, body.clone()) {
            for e in &events {
                assert_cut_from(&body, e);
            }
        }
        let _ = src.parse_response(429, body.clone());
        let _ = src.parse_response(400, body);
    });
}

/// Config text: a config or problems with key paths, never a panic.
pub fn config_text(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Err(e) = crate::config_file::load_str(text) {
        assert!(!e.problems.is_empty(), "an error without problems");
        let _ = e.to_string();
    }
}

/// One `[sources.NAME]` or `[sinks.NAME]` section of any registered type:
/// byte 0 picks the type (sources first, then sinks, in registration order),
/// the rest is the TOML of its keys. Reading and validating it gives a
/// config of that type or problems under the section's key path, never a
/// panic. Driven by the registries, so a new source or sink is covered
/// without an edit here.
pub fn component_section(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let Ok(keys) = std::str::from_utf8(rest) else {
        return;
    };
    let (sources, sinks) = (crate::source::KINDS, crate::sink::KINDS);
    let i = pick as usize % (sources.len() + sinks.len());
    let (table, kind) = match sources.get(i) {
        Some(kind) => ("sources", *kind),
        None => ("sinks", sinks[i - sources.len()]),
    };
    let text = format!("[{table}.fuzz]\ntype = \"{kind}\"\n{keys}");
    use figment::providers::Format as _;
    let fig = figment::Figment::new().merge(figment::providers::Toml::string(&text));
    let path = format!("{table}.fuzz");
    let mut problems = crate::config::Problems::default();
    let read = if table == "sources" {
        crate::source::SourceConfig::from_figment(&fig, &path).map(|c| {
            assert_eq!(c.kind(), kind, "read as another source type");
            c.validate(&path, &mut problems);
        })
    } else {
        crate::sink::SinkConfig::from_figment(&fig, &path).map(|c| {
            assert_eq!(c.kind.kind(), kind, "read as another sink type");
            c.validate(&path, &mut problems);
        })
    };
    if let Err(list) = read {
        assert!(!list.is_empty(), "an error without problems");
        problems.extend(list);
    }
    for p in problems.into_vec() {
        // A TOML syntax error has no key path; every other problem is
        // about a key of this section.
        assert!(
            p.path.is_empty() || p.path.starts_with(&path),
            "problem outside {path}: {p}"
        );
    }
}

/// Event bytes through the NDJSON and JSON-array encoders.
pub fn encoders(data: &[u8]) {
    let events: Vec<Event> = data
        .split(|b| *b == 0xff)
        .map(|part| Event {
            raw: Bytes::copy_from_slice(part),
            id: None,
            time: None,
            kind: None,
        })
        .collect();
    let lines = crate::format::ndjson::lines(&events);
    assert_eq!(
        lines.iter().filter(|b| **b == b'\n').count(),
        events.len(),
        "one line per event"
    );
    let array = crate::format::ndjson::array(&events);
    assert_eq!(array.first(), Some(&b'['));
    assert_eq!(array.last(), Some(&b']'));
    if events
        .iter()
        .all(|e| serde_json::from_slice::<&RawValue>(&e.raw).is_ok())
    {
        let parsed: Vec<&RawValue> =
            serde_json::from_slice(&array).expect("array of valid events is valid JSON");
        assert_eq!(parsed.len(), events.len());
        for line in lines.split(|b| *b == b'\n').filter(|l| !l.is_empty()) {
            assert!(
                serde_json::from_slice::<&RawValue>(line).is_ok(),
                "NDJSON line is not JSON"
            );
        }
    }
}

/// A QuickZTNA response body as the export (JSON and CSV format) and the
/// audit query read it: events cut from the body, or built from the CSV.
pub fn quickztna_page(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    QUICKZTNA.with(|[export, audit, csv]| {
        for src in [export, audit] {
            if let Ok(events) = src.parse_body(&body) {
                for e in &events {
                    assert_cut_from(&body, e);
                }
            }
        }
        if let Ok(events) = csv.parse_body(&body) {
            events.iter().for_each(assert_object);
        }
    });
}

/// CSV text as the QuickZTNA export sends it (in `data.csv`): one JSON
/// object per row, whose values are strings or null; the same result
/// whether the text is parsed alone or inside an export answer.
pub fn quickztna_csv(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    QUICKZTNA.with(|[_, _, csv_source]| {
        let extractor = FieldExtractor::new(
            vec![crate::event::FieldPath::parse("id").expect("path")],
            vec![crate::event::FieldPath::parse("created_at").expect("path")],
            vec![crate::event::FieldPath::parse("action").expect("path")],
        );
        let alone = crate::source::quickztna::csv_events(&text, &extractor);
        if let Ok(events) = &alone {
            for e in events {
                let row: std::collections::BTreeMap<String, Option<String>> =
                    serde_json::from_slice(&e.raw).expect("a row is an object of strings");
                assert!(
                    row.values().flatten().all(|v| !v.is_empty()),
                    "an empty cell must be null"
                );
                if let Some(id) = &e.id {
                    assert!(!id.is_empty(), "empty id");
                }
            }
        }
        let answer = serde_json::json!({"success": true, "data": {"csv": text}});
        let body = Bytes::from(answer.to_string());
        let wrapped = csv_source.parse_body(&body);
        match (&alone, &wrapped) {
            (Ok(a), Ok(b)) => {
                assert_eq!(a.len(), b.len(), "CSV alone and in an answer differ");
                for (x, y) in a.iter().zip(b) {
                    assert_eq!(x.raw, y.raw);
                    assert_eq!((&x.id, x.time, &x.kind), (&y.id, y.time, &y.kind));
                }
            }
            (Err(_), Err(_)) => {}
            _ => panic!("CSV alone and in an answer disagree: {alone:?} / {wrapped:?}"),
        }
    });
}

/// A CertifyClouds entries page, with the default item lookup and with an
/// items path: events cut from the body.
pub fn certifyclouds_page(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    CERTIFYCLOUDS.with(|sources| {
        for src in sources {
            if let Ok(events) = src.parse_page(&body) {
                for e in &events {
                    assert_cut_from(&body, e);
                }
            }
        }
    });
}

/// An `http_pull` answer: byte 0 picks the config (pagination mode, items
/// path), then `Name: value` header lines up to an empty line, then the
/// body. Events are cut from the body; the next cursor is what the mode
/// says (the header's token, a same-origin link, the offset or page).
pub fn http_pull_page(data: &[u8]) {
    let Some((&pick, rest)) = data.split_first() else {
        return;
    };
    let (head, body) = match rest.windows(2).position(|w| w == b"\n\n") {
        Some(i) => (&rest[..i], &rest[i + 2..]),
        None => (&rest[..0], rest),
    };
    let mut headers = HeaderMap::new();
    for line in head.split(|b| *b == b'\n') {
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            continue;
        };
        if let (Ok(k), Ok(v)) = (
            HeaderName::from_bytes(&line[..colon]),
            HeaderValue::from_bytes(line[colon + 1..].trim_ascii()),
        ) {
            headers.append(k, v);
        }
    }
    let body = Bytes::copy_from_slice(body);
    let asked = url::Url::parse(FUZZ_URL)
        .and_then(|u| u.join("/api/events?x=1"))
        .expect("url");
    HTTP_PULL.with(|sources| {
        let i = pick as usize % sources.len();
        let Ok((events, next)) = sources[i].parse_page(&body, &headers, &asked) else {
            return;
        };
        for e in &events {
            assert_cut_from(&body, e);
        }
        let Next::Cursor(cursor) = next else { return };
        assert!(!cursor.is_empty(), "an empty cursor");
        match i {
            1 => assert_eq!(
                headers
                    .get("x-next-token")
                    .and_then(|v| v.to_str().ok())
                    .map(str::trim),
                Some(cursor.as_str()),
                "the token is not the header's"
            ),
            2 => {
                let next = url::Url::parse(&cursor).expect("the next link is a URL");
                assert_eq!(next.origin(), asked.origin(), "link to another origin");
            }
            3 => assert_eq!(cursor, events.len().to_string(), "offset"),
            4 => assert_eq!(cursor, "2", "page number"),
            5 => panic!("pagination none has no next page"),
            _ => {}
        }
    });
}

/// A Veza audit list page (`veza_list`, the backfill): events cut from the
/// body, a next token that is never empty.
pub fn veza_list_page(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    VEZA_LIST.with(|src| {
        if let Ok((events, next)) = src.parse_page(&body) {
            for e in &events {
                assert_cut_from(&body, e);
            }
            assert!(next.is_none_or(|t| !t.is_empty()), "an empty next token");
        }
    });
}

/// A `webhook_in` request body: byte 0 odd = gzip-encoded (decoded with a
/// small limit first). Every event is one JSON object of the (decoded)
/// body, and the event built from its spooled bytes keeps them as they are.
pub fn webhook_in_body(data: &[u8]) {
    let Some((&flags, raw)) = data.split_first() else {
        return;
    };
    const MAX: usize = 64 * 1024;
    let body = if flags & 1 == 1 {
        match crate::source::webhook_in::gunzip(raw, MAX) {
            Ok(d) => {
                assert!(d.len() <= MAX, "decoded body over the limit");
                Bytes::from(d)
            }
            Err(_) => return,
        }
    } else {
        Bytes::copy_from_slice(raw)
    };
    let Ok(ranges) = crate::source::webhook_in::parse_events(&body) else {
        return;
    };
    WEBHOOK_EXTRACTOR.with(|extractor| {
        for r in ranges {
            assert!(
                r.start <= r.end && r.end <= body.len(),
                "range outside the body"
            );
            let record = body.slice(r);
            let item: &RawValue =
                serde_json::from_slice(&record).expect("an event is one JSON value");
            assert!(item.get().starts_with('{'), "an event is not an object");
            let e = crate::source::webhook_in::record_event(extractor, record.clone());
            assert_eq!(e.raw, record, "the event changed its bytes");
        }
    });
}

thread_local! {
    static WEBHOOK_EXTRACTOR: FieldExtractor = {
        let cfg: crate::source::webhook_in::WebhookInConfig =
            serde_json::from_str(r#"{"listen":"127.0.0.1:0"}"#).expect("fuzz config");
        FieldExtractor::new(
            cfg.id_path.parse().expect("id_path"),
            cfg.time_path.parse().expect("time_path"),
            cfg.type_path.parse().expect("type_path"),
        )
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every registered type goes through the entry point, including keys
    /// it does not know and values of the wrong type.
    #[test]
    fn component_section_reaches_every_registered_type() {
        let types = crate::source::KINDS.len() + crate::sink::KINDS.len();
        for pick in 0..types {
            for keys in ["", "bogus = 1\n", "retry = \"soon\"\n", "[broken"] {
                let mut data = vec![pick as u8];
                data.extend_from_slice(keys.as_bytes());
                component_section(&data);
            }
        }
    }
}
