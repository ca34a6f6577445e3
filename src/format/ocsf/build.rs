//! What the mappings share: [`Mapped`], the classes' common building
//! blocks (`user`, `src_endpoint`, an Authentication event) and readers of
//! the vendors' JSON.

use chrono::DateTime;
use serde_json::{json, Map, Value};

use super::schema::{self, Class};

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
    pub(super) fn new(class: Class, activity_id: u32) -> Mapped {
        Mapped {
            class,
            activity_id,
            severity_id: schema::severity::INFORMATIONAL,
            status_id: None,
            attrs: Map::new(),
        }
    }

    /// Sets `key` when there is a value (absent attributes stay absent).
    pub(super) fn set(&mut self, key: &str, value: Option<Value>) {
        if let Some(v) = value {
            self.attrs.insert(key.to_string(), v);
        }
    }
}

/// A non-empty string at a dotted path.
pub(super) fn text<'a>(v: &'a Value, path: &str) -> Option<&'a str> {
    let mut cur = v;
    for seg in path.split('.') {
        cur = cur.get(seg)?;
    }
    cur.as_str().filter(|s| !s.is_empty())
}

/// An RFC 3339 time as epoch milliseconds (OCSF `timestamp_t`).
pub(super) fn millis(v: &Value) -> Option<i64> {
    DateTime::parse_from_rfc3339(v.as_str()?)
        .ok()
        .map(|t| t.timestamp_millis())
}

/// An OCSF `user` from an id and a name or email: `email_addr` only when
/// the value is an address OCSF accepts (a redacted one is not).
pub(super) fn user(uid: Option<&str>, name: Option<&str>) -> Option<Value> {
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
pub(super) fn endpoint(ip: Option<&str>) -> Option<Value> {
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
pub(super) fn outcome_status(word: &str) -> u32 {
    match word.to_ascii_lowercase().as_str() {
        "success" | "succeeded" | "ok" | "allowed" | "allow" => schema::status::SUCCESS,
        "failure" | "failed" | "fail" | "denied" | "deny" | "error" | "blocked" => {
            schema::status::FAILURE
        }
        _ => schema::status::UNKNOWN,
    }
}

/// Account Change (3001) of the user a verb acted on (`created`, `disabled`…);
/// a user the event does not name is `unknown`, as the class requires one.
pub(super) fn account_change(verb: &str, target: Option<Value>) -> Mapped {
    use schema::account;
    let activity = match verb_activity(verb) {
        Some(schema::crud::CREATE) => account::CREATE,
        Some(schema::crud::DELETE) => account::DELETE,
        Some(schema::crud::ENABLE) => account::ENABLE,
        Some(schema::crud::DISABLE) => account::DISABLE,
        _ => schema::ACTIVITY_OTHER,
    };
    let mut m = Mapped::new(schema::ACCOUNT_CHANGE, activity);
    m.set(
        "user",
        Some(target.unwrap_or_else(|| json!({"name": "unknown"}))),
    );
    m
}

/// The CRUD-like activity a verb names (`created`, `renew`, `revoked`…).
pub(super) fn verb_activity(verb: &str) -> Option<u32> {
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
pub(super) fn authentication(action: &str, user: Option<Value>, product: &str) -> Option<Mapped> {
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
