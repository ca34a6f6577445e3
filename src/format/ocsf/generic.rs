//! The fallback: an event no mapping recognises is a Base Event (class
//! 0, activity Other named after the event's type), never dropped; the
//! original is kept as `ocsf_raw` says.

use serde_json::json;

use super::build::Mapped;
use super::schema;
use crate::event::Event;

pub(super) fn map(event: &Event) -> Mapped {
    match event.kind.as_deref().filter(|k| !k.is_empty()) {
        Some(kind) => {
            let mut m = Mapped::new(schema::BASE_EVENT, schema::ACTIVITY_OTHER);
            m.set("activity_name", Some(json!(kind)));
            m.set("message", Some(json!(kind)));
            m
        }
        None => Mapped::new(schema::BASE_EVENT, schema::ACTIVITY_UNKNOWN),
    }
}
