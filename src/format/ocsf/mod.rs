//! OCSF: each source's events mapped to the OCSF event class that fits
//! them (`schema = "ocsf"`), one file per source, [`generic`] for what no
//! mapping recognises. A mapping only picks the class and fills the
//! attributes it knows; [`map`] adds what every OCSF event carries
//! (classification, `type_uid`, `time`, `metadata`, severity).

mod build;
mod certifyclouds;
mod generic;
mod http_pull;
mod quickztna;
pub mod schema;
mod veza;
mod webhook_in;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};

use crate::event::Event;
pub use build::is_email;
use build::{millis, text, Mapped};

/// The OCSF event of `original`, an event of a source of type
/// `source_kind` named `source_name`. Never fails: what the source's
/// mapping does not recognise becomes a Base Event.
pub fn map(source_kind: &str, source_name: &str, original: &Value, event: &Event) -> Value {
    let mapped = match source_kind {
        "veza" | "veza_list" => veza::map(original),
        "quickztna" => quickztna::map(original),
        "certifyclouds" => certifyclouds::map(original),
        "http_pull" => http_pull::map(original),
        "webhook_in" => webhook_in::map(original),
        _ => None,
    }
    .unwrap_or_else(|| generic::map(event));
    let product = match source_kind {
        "veza" | "veza_list" => "Veza",
        "quickztna" => "QuickZTNA",
        "certifyclouds" => "CertifyClouds",
        _ => source_name,
    };
    finish(mapped, product, source_name, original, event)
}

/// The OCSF class name in the form sinks use in names (`api_activity`,
/// `ocsf:detection_finding`), from an OCSF event's `class_name`.
pub fn class_slug(class_name: &str) -> String {
    class_name
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect::<Vec<_>>()
        .join("_")
}

fn finish(
    mapped: Mapped,
    product: &str,
    source_name: &str,
    original: &Value,
    event: &Event,
) -> Value {
    let Mapped {
        class,
        activity_id,
        severity_id,
        status_id,
        mut attrs,
    } = mapped;
    let time = event
        .time
        .or_else(|| original_time(original))
        .unwrap_or_else(Utc::now);
    let mut metadata = json!({
        "product": {"name": product, "vendor_name": product},
        "version": schema::VERSION,
        "log_name": source_name,
    });
    if let Some(id) = event.id.as_deref().filter(|id| !id.is_empty()) {
        metadata["uid"] = json!(id);
    }
    if let Some(tenant) = text(original, "tenant_id") {
        metadata["tenant_uid"] = json!(tenant);
    }
    if let Some(kind) = event.kind.as_deref().filter(|k| !k.is_empty()) {
        metadata["event_code"] = json!(kind);
    }
    let mut out = Map::new();
    out.insert("class_uid".into(), json!(class.uid));
    out.insert("class_name".into(), json!(class.name));
    out.insert("category_uid".into(), json!(class.category_uid));
    out.insert("category_name".into(), json!(class.category_name));
    out.insert("activity_id".into(), json!(activity_id));
    let activity_name = attrs
        .remove("activity_name")
        .unwrap_or_else(|| json!(schema::activity_caption(class, activity_id)));
    out.insert(
        "type_name".into(),
        json!(format!(
            "{}: {}",
            class.name,
            activity_name.as_str().unwrap_or("Other")
        )),
    );
    out.insert("activity_name".into(), activity_name);
    out.insert(
        "type_uid".into(),
        json!(u64::from(class.uid) * 100 + u64::from(activity_id)),
    );
    out.insert("severity_id".into(), json!(severity_id));
    out.insert(
        "severity".into(),
        json!(schema::severity::caption(severity_id)),
    );
    if let Some(status) = status_id {
        out.insert("status_id".into(), json!(status));
        out.insert("status".into(), json!(schema::status::caption(status)));
    }
    out.insert("time".into(), json!(time.timestamp_millis()));
    out.insert("metadata".into(), metadata);
    out.append(&mut attrs);
    Value::Object(out)
}

/// A time field of the common audit shapes, for events whose source did
/// not extract one.
fn original_time(original: &Value) -> Option<DateTime<Utc>> {
    ["timestamp", "created_at", "time", "ended_at"]
        .iter()
        .find_map(|k| millis(original.get(k)?))
        .and_then(DateTime::from_timestamp_millis)
}

#[cfg(test)]
mod tests;
