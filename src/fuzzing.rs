//! Entry points for the fuzz targets in `fuzz/` and the corpus replay test:
//! each feeds arbitrary bytes to a parser or encoder of the product and
//! panics only when an invariant breaks.

use std::cell::RefCell;

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::event::Event;
use crate::health::Health;
use crate::source::veza::{VezaConfig, VezaSource};
use crate::source::SourceContext;

thread_local! {
    static VEZA: RefCell<Option<VezaSource>> = const { RefCell::new(None) };
}

fn veza_source() -> VezaSource {
    std::env::set_var("AUDITRELAY_FUZZ_TOKEN", "fuzz");
    let cfg: VezaConfig = serde_json::from_str(
        r#"{"url":"http://127.0.0.1:9","token_env":"AUDITRELAY_FUZZ_TOKEN","recent_ids":100}"#,
    )
    .expect("fuzz config");
    VezaSource::new(
        cfg,
        SourceContext {
            name: "fuzz".into(),
            checkpoint: None,
            health: Health::default(),
            state_dir: std::env::temp_dir(),
        },
    )
    .expect("fuzz source")
}

/// A Veza export response body: never a panic; every event is exactly one
/// JSON value cut from the body.
pub fn veza_page(data: &[u8]) {
    let body = Bytes::copy_from_slice(data);
    VEZA.with(|cell| {
        let mut slot = cell.borrow_mut();
        let src = slot.get_or_insert_with(veza_source);
        if let Some(events) = src.parse_response(200, body.clone()) {
            for e in events {
                assert!(
                    serde_json::from_slice::<&RawValue>(&e.raw).is_ok(),
                    "event is not one JSON value"
                );
                let start = (e.raw.as_ptr() as usize).wrapping_sub(body.as_ptr() as usize);
                assert!(
                    start + e.raw.len() <= body.len(),
                    "event bytes outside the page"
                );
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
    if let Err(e) = crate::config::load_str(text) {
        assert!(!e.problems.is_empty(), "an error without problems");
        let _ = e.to_string();
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
