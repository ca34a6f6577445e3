//! Where the common audit facts (who, from where, what, did it work) live in
//! an event, for the bodies that name them (CEF, LEEF) and for severity
//! mapping. Each role takes a list of field paths tried in order, with
//! defaults that cover both Veza event shapes and the other SaaS sources.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::config::Problems;
use crate::event::FieldPath;

/// `[sinks.NAME.fields]`: a path or list of paths per role.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FieldMap {
    #[serde(default = "d_actor", deserialize_with = "one_or_many")]
    pub actor: Vec<String>,
    #[serde(default = "d_actor_id", deserialize_with = "one_or_many")]
    pub actor_id: Vec<String>,
    #[serde(default = "d_source_ip", deserialize_with = "one_or_many")]
    pub source_ip: Vec<String>,
    /// A status: gRPC code name or number, HTTP status, or a word such as
    /// `success`/`denied`; it decides success or failure.
    #[serde(default = "d_outcome", deserialize_with = "one_or_many")]
    pub outcome: Vec<String>,
    #[serde(default = "d_reason", deserialize_with = "one_or_many")]
    pub reason: Vec<String>,
    #[serde(default = "d_action", deserialize_with = "one_or_many")]
    pub action: Vec<String>,
    #[serde(default = "d_method", deserialize_with = "one_or_many")]
    pub method: Vec<String>,
    #[serde(default = "d_url", deserialize_with = "one_or_many")]
    pub url: Vec<String>,
    #[serde(default = "d_user_agent", deserialize_with = "one_or_many")]
    pub user_agent: Vec<String>,
}

fn v(list: &[&str]) -> Vec<String> {
    list.iter().map(|s| s.to_string()).collect()
}
fn d_actor() -> Vec<String> {
    v(&[
        "identity.email",
        "identity.name",
        "actor.name",
        "actor.email",
        "actor",
        "user_id",
    ])
}
fn d_actor_id() -> Vec<String> {
    v(&["identity.user_id", "actor.id", "user_id"])
}
fn d_source_ip() -> Vec<String> {
    v(&["client.ip", "source_ip", "ip_address", "client_ip"])
}
fn d_outcome() -> Vec<String> {
    v(&[
        "status.grpc_code",
        "status.http_status",
        "result",
        "outcome",
    ])
}
fn d_reason() -> Vec<String> {
    v(&["status.error_reason", "status.message", "reason"])
}
fn d_action() -> Vec<String> {
    v(&["endpoint", "intent", "action", "event_type"])
}
fn d_method() -> Vec<String> {
    v(&["method"])
}
fn d_url() -> Vec<String> {
    v(&["url", "request.url"])
}
fn d_user_agent() -> Vec<String> {
    v(&["client.user_agent", "user_agent"])
}

impl Default for FieldMap {
    fn default() -> Self {
        FieldMap {
            actor: d_actor(),
            actor_id: d_actor_id(),
            source_ip: d_source_ip(),
            outcome: d_outcome(),
            reason: d_reason(),
            action: d_action(),
            method: d_method(),
            url: d_url(),
            user_agent: d_user_agent(),
        }
    }
}

fn one_or_many<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(String),
        Many(Vec<String>),
    }
    Ok(match OneOrMany::deserialize(d)? {
        OneOrMany::One(s) => vec![s],
        OneOrMany::Many(v) => v,
    })
}

/// A [`FieldMap`] with its paths parsed.
#[derive(Clone, Debug)]
pub struct Fields {
    actor: Vec<FieldPath>,
    actor_id: Vec<FieldPath>,
    source_ip: Vec<FieldPath>,
    outcome: Vec<FieldPath>,
    reason: Vec<FieldPath>,
    action: Vec<FieldPath>,
    method: Vec<FieldPath>,
    url: Vec<FieldPath>,
    user_agent: Vec<FieldPath>,
}

impl FieldMap {
    fn roles(&self) -> [(&'static str, &Vec<String>); 9] {
        [
            ("actor", &self.actor),
            ("actor_id", &self.actor_id),
            ("source_ip", &self.source_ip),
            ("outcome", &self.outcome),
            ("reason", &self.reason),
            ("action", &self.action),
            ("method", &self.method),
            ("url", &self.url),
            ("user_agent", &self.user_agent),
        ]
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        for (role, list) in self.roles() {
            for (i, p) in list.iter().enumerate() {
                FieldPath::check(p, &format!("{path}.fields.{role}[{i}]"), problems);
            }
        }
    }

    /// Parses the paths; call after [`FieldMap::validate`] passed.
    pub fn compile(&self) -> Result<Fields, String> {
        let parse = |list: &Vec<String>| -> Result<Vec<FieldPath>, String> {
            list.iter().map(|p| FieldPath::parse(p)).collect()
        };
        Ok(Fields {
            actor: parse(&self.actor)?,
            actor_id: parse(&self.actor_id)?,
            source_ip: parse(&self.source_ip)?,
            outcome: parse(&self.outcome)?,
            reason: parse(&self.reason)?,
            action: parse(&self.action)?,
            method: parse(&self.method)?,
            url: parse(&self.url)?,
            user_agent: parse(&self.user_agent)?,
        })
    }
}

/// The audit facts of one event, as text.
#[derive(Debug, Default)]
pub struct AuditFacts {
    pub actor: Option<String>,
    pub actor_id: Option<String>,
    pub source_ip: Option<String>,
    /// The status as found (`PERMISSION_DENIED`, `403`).
    pub outcome_raw: Option<String>,
    /// `Some(true)` success, `Some(false)` failure, `None` unknown.
    pub success: Option<bool>,
    pub reason: Option<String>,
    pub action: Option<String>,
    pub method: Option<String>,
    pub url: Option<String>,
    pub user_agent: Option<String>,
}

impl Fields {
    pub fn facts(&self, event: &Value) -> AuditFacts {
        let outcome_raw = first(event, &self.outcome);
        AuditFacts {
            actor: first(event, &self.actor),
            actor_id: first(event, &self.actor_id),
            source_ip: first(event, &self.source_ip),
            success: outcome_raw.as_deref().and_then(is_success),
            outcome_raw,
            reason: first(event, &self.reason),
            action: first(event, &self.action),
            method: first(event, &self.method),
            url: first(event, &self.url),
            user_agent: first(event, &self.user_agent),
        }
    }
}

impl Fields {
    /// The outcome status straight from the raw event's index, without
    /// parsing all of it (severity mapping for JSON bodies needs nothing else).
    pub fn outcome_raw(&self, event: &crate::event::TopIndex<'_>) -> Option<String> {
        self.outcome.iter().find_map(|p| {
            event
                .lookup(p)
                .and_then(crate::event::scalar_text)
                .filter(|t| !t.is_empty())
                .map(|t| t.into_owned())
        })
    }
}

/// The value at a dotted path of a parsed event.
pub fn lookup<'a>(event: &'a Value, path: &FieldPath) -> Option<&'a Value> {
    let mut cur = event;
    for seg in path.segments() {
        cur = cur.as_object()?.get(seg)?;
    }
    Some(cur)
}

/// Scalars as text; objects and arrays as compact JSON; null and empty
/// strings as absent.
pub fn text_of(v: &Value) -> Option<String> {
    match v {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(s.clone()),
        Value::Bool(b) => Some(b.to_string()),
        Value::Number(n) => Some(n.to_string()),
        other => Some(other.to_string()),
    }
}

fn first(event: &Value, paths: &[FieldPath]) -> Option<String> {
    paths
        .iter()
        .find_map(|p| lookup(event, p).and_then(text_of))
}

/// Whether a status means success: gRPC `OK`/0, HTTP 1xx-3xx, or words such
/// as `success`, `allowed`; anything else present is a failure.
pub fn is_success(status: &str) -> Option<bool> {
    let s = status.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(n) = s.parse::<i64>() {
        return Some(n == 0 || (100..400).contains(&n));
    }
    let lower = s.to_ascii_lowercase();
    Some(matches!(
        lower.as_str(),
        "ok" | "success"
            | "succeeded"
            | "successful"
            | "allow"
            | "allowed"
            | "permit"
            | "permitted"
            | "granted"
            | "true"
            | "pass"
            | "passed"
    ))
}

/// Extra body keys: `{ cs1 = "identity.session_id" }`.
pub type ExtraFields = BTreeMap<String, String>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veza_shape_and_outcomes() {
        let ev: Value = serde_json::json!({
            "identity": {"email": "a@b.c", "user_id": "u1"},
            "status": {"grpc_code": "PERMISSION_DENIED", "http_status": 403, "error_reason": "no"},
            "client": {"ip": "10.0.0.1", "user_agent": "curl"},
            "endpoint": "/x.Svc/Do", "method": "POST", "url": ""
        });
        let f = FieldMap::default().compile().unwrap().facts(&ev);
        assert_eq!(f.actor.as_deref(), Some("a@b.c"));
        assert_eq!(f.actor_id.as_deref(), Some("u1"));
        assert_eq!(f.source_ip.as_deref(), Some("10.0.0.1"));
        assert_eq!(f.outcome_raw.as_deref(), Some("PERMISSION_DENIED"));
        assert_eq!(f.success, Some(false));
        assert_eq!(f.action.as_deref(), Some("/x.Svc/Do"));
        assert_eq!(f.url, None, "empty strings are absent");
        assert_eq!(is_success("OK"), Some(true));
        assert_eq!(is_success("204"), Some(true));
        assert_eq!(is_success("0"), Some(true));
        assert_eq!(is_success("7"), Some(false));
        assert_eq!(is_success("DENIED"), Some(false));
    }

    #[test]
    fn config_takes_one_or_many() {
        let m: FieldMap = serde_json::from_str(r#"{"actor":"who","outcome":["a.b","c"]}"#).unwrap();
        assert_eq!(m.actor, ["who"]);
        assert_eq!(m.outcome, ["a.b", "c"]);
        assert_eq!(m.method, ["method"]);
        let mut p = Problems::default();
        let bad: FieldMap = serde_json::from_str(r#"{"actor":"a..b"}"#).unwrap();
        bad.validate("sinks.s", &mut p);
        assert_eq!(p.into_vec()[0].path, "sinks.s.fields.actor[0]");
    }

    #[test]
    fn an_empty_table_takes_every_default_and_unknown_roles_are_refused() {
        let m: FieldMap = serde_json::from_str("{}").unwrap();
        assert_eq!(m, FieldMap::default());
        let roles: Vec<_> = m.roles().iter().map(|(role, _)| *role).collect();
        assert_eq!(
            roles,
            [
                "actor",
                "actor_id",
                "source_ip",
                "outcome",
                "reason",
                "action",
                "method",
                "url",
                "user_agent"
            ]
        );
        assert_eq!(m.actor[0], "identity.email");
        assert_eq!(m.user_agent, ["client.user_agent", "user_agent"]);
        let err = serde_json::from_str::<FieldMap>(r#"{"who":"x"}"#).unwrap_err();
        assert!(err.to_string().contains("unknown field `who`"), "{err}");
        let facts = m.compile().unwrap().facts(&serde_json::json!({"result": "allowed"}));
        assert_eq!(facts.success, Some(true));
    }
}
