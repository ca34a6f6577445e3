//! OCSF: each source's events mapped to the OCSF event class that fits
//! them (`schema = "ocsf"`), one file per source, [`generic`] for what no
//! mapping recognises. A mapping only picks the class and fills the
//! attributes it knows; [`map`] adds what every OCSF event carries
//! (classification, `type_uid`, `time`, `metadata`, severity).

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
use schema::Class;

/// What a source's mapping makes of one event, before the attributes
/// every class shares are added.
#[derive(Debug)]
pub struct Mapped {
    pub class: Class,
    pub activity_id: u32,
    pub severity_id: u32,
    /// `status_id` (success or failure), when the event says.
    pub status_id: Option<u32>,
    /// The class's own attributes (`actor`, `api`, `user`, `entity`…).
    pub attrs: Map<String, Value>,
}

impl Mapped {
    fn new(class: Class, activity_id: u32) -> Mapped {
        Mapped {
            class,
            activity_id,
            severity_id: schema::severity::INFORMATIONAL,
            status_id: None,
            attrs: Map::new(),
        }
    }

    /// Sets `key` when there is a value (absent attributes stay absent).
    fn set(&mut self, key: &str, value: Option<Value>) {
        if let Some(v) = value {
            self.attrs.insert(key.to_string(), v);
        }
    }
}

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

/// A non-empty string at a dotted path.
fn text<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = cur.get(seg)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

/// An RFC 3339 time as epoch milliseconds (OCSF `timestamp_t`).
fn millis(v: &Value) -> Option<i64> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// An OCSF `user` from an id and a name or email: `email_addr` only when
/// the value is an address OCSF accepts (a redacted one is not).
fn user(uid: Option<&str>, name: Option<&str>) -> Option<Value> {
    let mut u = Map::new();
    if let Some(uid) = uid {
        u.insert("uid".into(), json!(uid));
    }
    if let Some(name) = name {
        u.insert("name".into(), json!(name));
        if is_email(name) {
            u.insert("email_addr".into(), json!(name));
        }
    }
    (!u.is_empty()).then_some(Value::Object(u))
}

/// A `network_endpoint` from an IP (kept only when it is one) and a
/// user agent; `None` when neither is known.
fn endpoint(ip: Option<&str>) -> Option<Value> {
    let ip = ip.filter(|ip| ip.trim().parse::<std::net::IpAddr>().is_ok())?;
    Some(json!({ "ip": ip.trim() }))
}

/// Whether `s` matches OCSF's `email_t` pattern
/// (`^[a-zA-Z0-9!#$%&'*+-/=?^_\`{|}~.]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+$`).
pub fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let local_ok = !local.is_empty()
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+,-./=?^_`{|}~".contains(c));
    let Some((label, rest)) = domain.split_once('.') else {
        return false;
    };
    let label_ok =
        !label.is_empty() && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
    let rest_ok = !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    local_ok && label_ok && rest_ok
}

/// `status_id` of a vendor outcome word.
fn outcome_status(word: &str) -> u32 {
    match word.to_ascii_lowercase().as_str() {
        "success" | "succeeded" | "ok" | "allowed" | "allow" => schema::status::SUCCESS,
        "failure" | "failed" | "fail" | "denied" | "deny" | "error" | "blocked" => {
            schema::status::FAILURE
        }
        _ => schema::status::UNKNOWN,
    }
}

/// The CRUD-like activity a verb names (`created`, `renew`, `revoked`…).
fn verb_activity(verb: &str) -> Option<u32> {
    use schema::crud::*;
    let v = verb.to_ascii_lowercase();
    let has = |words: &[&str]| words.iter().any(|w| v.contains(w));
    if has(&[
        "creat", "add", "issue", "register", "generat", "import", "invite",
    ]) {
        Some(CREATE)
    } else if has(&["delet", "remov", "revok", "purg", "destroy"]) {
        Some(DELETE)
    } else if has(&[
        "updat", "renam", "renew", "rotat", "set", "chang", "modif", "edit", "assign", "patch",
    ]) {
        Some(UPDATE)
    } else if has(&["enabl", "activat"]) {
        Some(ENABLE)
    } else if has(&["disabl", "deactivat", "suspend"]) {
        Some(DISABLE)
    } else if has(&[
        "get", "list", "read", "view", "export", "download", "search", "query",
    ]) {
        Some(READ)
    } else {
        None
    }
}

/// An Authentication event (Logon, or Logoff for `logout` words) for
/// the sign-in actions of the audit shapes.
fn authentication(action: &str, user: Option<Value>, product: &str) -> Option<Mapped> {
    let a = action.to_ascii_lowercase();
    if !(a.contains("login")
        || a.contains("logout")
        || a.contains("sign_in")
        || a.contains("signin")
        || a.contains("logon"))
    {
        return None;
    }
    let logoff = a.contains("logout") || a.contains("logoff") || a.contains("sign_out");
    let mut m = Mapped::new(
        schema::AUTHENTICATION,
        if logoff {
            schema::LOGOFF
        } else {
            schema::LOGON
        },
    );
    let failed = a.contains("fail") || a.contains("denied");
    m.status_id = Some(if failed {
        schema::status::FAILURE
    } else {
        schema::status::SUCCESS
    });
    if failed {
        m.severity_id = schema::severity::LOW;
    }
    m.set(
        "user",
        Some(user.unwrap_or_else(|| json!({"name": "unknown"}))),
    );
    m.set("service", Some(json!({ "name": product })));
    Some(m)
}

#[cfg(test)]
mod tests;
