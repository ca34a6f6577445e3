//! Event shaping (`schema`, `redact`, `drop_fields`, `add_fields`): a sink
//! behind a [`ShapingSink`] receives each event rewritten, its `id`,
//! `time` and `kind` kept. Built only when one of those keys is set, so a
//! sink without them gets the events byte for byte, at no cost.
//!
//! Order: `redact` and `drop_fields` apply to the event as the source sent
//! it (their paths name the source's fields, so an OCSF event is built
//! from the redacted values and keeps a redacted original); a path found
//! nowhere in the original is tried on the OCSF event (`actor.user.name`).
//! Then `add_fields` is added: at the top level of a raw event, as
//! `metadata.tags` of an OCSF one.

mod metrics;
mod paths;

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use hmac::{Hmac, Mac};
use serde_json::{json, Value};
use sha2::Sha256;

use super::{OcsfRaw, RedactMode, Schema, Sink, SinkCommon, Tracked};
use crate::config::Problems;
use crate::event::{Event, FieldPath};
use crate::format::ocsf;
use crate::secret::{Secret, SecretSource};
use paths::Parsed;
use tracing::warn;

/// What a redacted value becomes with `redact_mode = "mask"`.
pub const MASK: &str = "[REDACTED]";

/// The rewriting of one sink's events.
pub struct Shaper {
    schema: Schema,
    ocsf_raw: OcsfRaw,
    redact: Vec<FieldPath>,
    hmac_key: Option<Secret>,
    drop: Vec<FieldPath>,
    add: Vec<(FieldPath, Value)>,
    /// Source name → source type, to pick each event's OCSF mapping.
    source_kinds: Arc<BTreeMap<String, String>>,
}

impl Shaper {
    /// The shaper of the sink at `path` (`sinks.NAME`); `None` when no
    /// shaping key is set. Errors name the key.
    pub fn new(
        common: &SinkCommon,
        path: &str,
        source_kinds: Arc<BTreeMap<String, String>>,
    ) -> anyhow::Result<Option<Shaper>> {
        if !common.shapes_events() {
            return Ok(None);
        }
        let paths = |list: &[String], key: &str| -> anyhow::Result<Vec<FieldPath>> {
            list.iter()
                .enumerate()
                .map(|(i, p)| FieldPath::of_key(p, &format!("{path}.{key}[{i}]")))
                .collect()
        };
        let hmac_key = match common.redact_mode {
            RedactMode::Mask => None,
            RedactMode::Hmac => {
                Some(load_key(common, path).map_err(|(key, e)| anyhow::anyhow!("{key}: {e}"))?)
            }
        };
        let mut add = Vec::new();
        for (name, value) in &common.add_fields {
            add.push((
                FieldPath::of_key(name, &format!("{path}.add_fields"))?,
                value.clone(),
            ));
        }
        Ok(Some(Shaper {
            schema: common.schema,
            ocsf_raw: common.ocsf_raw,
            redact: paths(&common.redact, "redact")?,
            hmac_key,
            drop: paths(&common.drop_fields, "drop_fields")?,
            add,
            source_kinds,
        }))
    }

    /// The event rewritten; an event that is not JSON is kept as it is in
    /// raw mode (there is no field to change) and wrapped in OCSF mode.
    pub fn shape(&self, source: &str, event: &Event) -> Event {
        self.shape_classed(source, event).0
    }

    /// [`Self::shape`], and the OCSF class it was given (`schema = "ocsf"`).
    fn shape_classed(&self, source: &str, event: &Event) -> (Event, Option<String>) {
        let mut original = match (paths::parse(&event.raw), self.schema) {
            (Parsed::Value(v), _) => v,
            (Parsed::NotJson, Schema::Raw) => return (event.clone(), None),
            (Parsed::NotJson, Schema::Ocsf) => {
                Value::String(String::from_utf8_lossy(&event.raw).into_owned())
            }
            // JSON too deep to walk: a redacted or dropped field may be in
            // it, so the whole text is redacted rather than sent in clear.
            (Parsed::TooDeep, _) if !(self.redact.is_empty() && self.drop.is_empty()) => {
                warn!(source, id = ?event.id, "an event is nested too deeply to redact field by field; redacting all of it");
                json!({ "auditrelay_unshaped": self.redacted(&Value::String(String::from_utf8_lossy(&event.raw).into_owned())) })
            }
            (Parsed::TooDeep, Schema::Raw) => return (event.clone(), None),
            (Parsed::TooDeep, Schema::Ocsf) => {
                Value::String(String::from_utf8_lossy(&event.raw).into_owned())
            }
        };
        let mut pending = Vec::new();
        let mut hidden = Vec::new();
        for p in &self.redact {
            if !self.redact_at(&mut original, p, &mut hidden) {
                pending.push(p);
            }
        }
        // The id and type were read from the event before shaping: when
        // they are a value just redacted, they go out redacted too.
        let event = &self.without_hidden(event, &hidden);
        let mut pending_drop = Vec::new();
        for p in &self.drop {
            if !paths::remove(&mut original, p.segments()) {
                pending_drop.push(p);
            }
        }
        let mut class = None;
        let out = match self.schema {
            Schema::Raw => {
                for (p, v) in &self.add {
                    paths::set(&mut original, p.segments(), v.clone());
                }
                original
            }
            Schema::Ocsf => {
                let kind = self.source_kinds.get(source).map_or("", String::as_str);
                let mut out = ocsf::map(kind, source, &original, event);
                for p in pending {
                    self.redact_at(&mut out, p, &mut Vec::new());
                }
                for p in pending_drop {
                    paths::remove(&mut out, p.segments());
                }
                self.keep_original(&mut out, original);
                if !self.add.is_empty() {
                    let tags: Vec<Value> = self
                        .add
                        .iter()
                        .map(|(name, v)| json!({"name": name.to_string(), "value": tag_text(v)}))
                        .collect();
                    // `metadata` may have been redacted by a path the
                    // original lacked: the tags then make a new one.
                    match out.get_mut("metadata") {
                        Some(Value::Object(m)) => {
                            m.insert("tags".into(), Value::Array(tags));
                        }
                        _ => out["metadata"] = json!({ "tags": tags }),
                    }
                }
                class = out["class_name"].as_str().map(ocsf::class_slug);
                out
            }
        };
        let shaped = Event {
            raw: Bytes::from(serde_json::to_vec(&out).unwrap_or_else(|_| event.raw.to_vec())),
            ..event.clone()
        };
        (shaped, class)
    }

    fn keep_original(&self, out: &mut Value, original: Value) {
        match self.ocsf_raw {
            OcsfRaw::RawData => {
                let text = match original {
                    Value::String(s) => s,
                    v => v.to_string(),
                };
                out["raw_data"] = Value::String(text);
            }
            OcsfRaw::Unmapped => {
                out["unmapped"] = match original {
                    v @ Value::Object(_) => v,
                    v => json!({ "original": v }),
                };
            }
            OcsfRaw::None => {}
        }
    }

    /// Redacts every value at `path`; returns whether there was one.
    /// Redacts every value at `path`, adding the texts it hid to `hidden`.
    fn redact_at(&self, v: &mut Value, path: &FieldPath, hidden: &mut Vec<String>) -> bool {
        paths::for_each(v, path.segments(), &mut |x| {
            hidden.push(tag_text(x));
            *x = self.redacted(x)
        })
    }

    /// `event` with its id and type redacted where they are one of the
    /// `hidden` texts (an `id_path` or `type_path` on a redacted field).
    fn without_hidden(&self, event: &Event, hidden: &[String]) -> Event {
        let hide = |field: &Option<Arc<str>>| match field {
            Some(text) if hidden.iter().any(|h| h.as_str() == &**text) => {
                Some(tag_text(&self.redacted(&Value::String(text.to_string()))).into())
            }
            other => other.clone(),
        };
        Event {
            id: hide(&event.id),
            kind: hide(&event.kind),
            ..event.clone()
        }
    }

    fn redacted(&self, v: &Value) -> Value {
        let Some(key) = &self.hmac_key else {
            return Value::String(MASK.into());
        };
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        // A key of any length is valid for HMAC; this cannot fail.
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes()) else {
            return Value::String(MASK.into());
        };
        mac.update(text.as_bytes());
        Value::String(hex::encode(mac.finalize().into_bytes()))
    }
}

/// An `add_fields` value as an OCSF tag's string `value`.
fn tag_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// The HMAC key, or the key path and what is wrong (never the value).
fn load_key(common: &SinkCommon, path: &str) -> Result<Secret, (String, String)> {
    let key = format!("{path}.redact_key_file");
    let Some(file) = &common.redact_key_file else {
        return Err((
            key,
            "required with redact_mode = \"hmac\" (the HMAC key)".into(),
        ));
    };
    SecretSource::File(file.clone())
        .load()
        .map_err(|e| (key, e))
}

/// Reports bad shaping keys of the sink at `path` with their key path.
pub fn validate(common: &SinkCommon, path: &str, problems: &mut Problems) {
    for (key, list) in [
        ("redact", &common.redact),
        ("drop_fields", &common.drop_fields),
    ] {
        for (i, p) in list.iter().enumerate() {
            FieldPath::check(p, &format!("{path}.{key}[{i}]"), problems);
        }
    }
    for name in common.add_fields.keys() {
        FieldPath::check(name, &format!("{path}.add_fields"), problems);
    }
    match common.redact_mode {
        RedactMode::Hmac => {
            if let Err((key, e)) = load_key(common, path) {
                problems.push(key, e);
            }
        }
        RedactMode::Mask if common.redact_key_file.is_some() => problems.push(
            format!("{path}.redact_key_file"),
            "is used only with redact_mode = \"hmac\"; set it, or remove the key file",
        ),
        RedactMode::Mask => {}
    }
    if common.schema == Schema::Raw && common.ocsf_raw != OcsfRaw::default() {
        problems.push(
            format!("{path}.ocsf_raw"),
            "applies only with schema = \"ocsf\"",
        );
    }
}

/// A sink that receives its events shaped.
pub struct ShapingSink {
    name: String,
    inner: Arc<dyn Sink>,
    shaper: Shaper,
}

impl ShapingSink {
    pub fn new(name: &str, inner: Arc<dyn Sink>, shaper: Shaper) -> ShapingSink {
        ShapingSink {
            name: name.to_string(),
            inner,
            shaper,
        }
    }

    /// `events` shaped, counted by OCSF class when handed to the sink (a
    /// batch the pipeline retries is counted again, like the sink's own
    /// request metrics).
    fn shape(&self, source: &str, events: &[Event]) -> Vec<Event> {
        let mut classes: BTreeMap<String, u64> = BTreeMap::new();
        let shaped = events
            .iter()
            .map(|e| {
                let (shaped, class) = self.shaper.shape_classed(source, e);
                if let Some(class) = class {
                    *classes.entry(class).or_default() += 1;
                }
                shaped
            })
            .collect();
        for (class, n) in classes {
            metrics::SHAPING_METRICS
                .ocsf_events
                .with_label_values(&[&self.name, source, &class])
                .inc_by(n);
        }
        shaped
    }
}

#[async_trait]
impl Sink for ShapingSink {
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
        let shaped = self.shape(source, events);
        self.inner.deliver(source, &shaped).await
    }

    /// Shaping maps event for event, so the inner sink's ranges are ours.
    async fn deliver_tracked(&self, call: Tracked<'_>) -> anyhow::Result<()> {
        let events = &self.shape(call.source, call.events);
        self.inner.deliver_tracked(Tracked { events, ..call }).await
    }

    async fn resolve_pending(&self, requests: &[crate::sink::PendingRequest]) -> Vec<bool> {
        self.inner.resolve_pending(requests).await
    }

    fn ordered(&self) -> bool {
        self.inner.ordered()
    }

    async fn healthcheck(&self) -> anyhow::Result<()> {
        self.inner.healthcheck().await
    }

    async fn flush(&self) {
        self.inner.flush().await;
    }

    async fn close(&self) {
        self.inner.close().await;
    }
}

#[cfg(test)]
mod tests;
