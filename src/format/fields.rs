//! Where the common audit facts (who, from where, what, did it work) live in
//! an event, for the bodies that name them (CEF, LEEF) and for severity
//! mapping. Each role takes a list of field paths tried in order, with
//! defaults that cover both Veza event shapes and the other SaaS sources.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};
use serde_json::Value;

use crate::config::Problems;
use crate::event::FieldPath;

/// Generates, from one row per role (its doc, its name and its default
/// paths), everything that lists the roles: the config table [`FieldMap`]
/// with its defaults and key-path checks, the parsed [`Fields`] and the
/// [`AuditFacts`] found with them. A new role is one row.
macro_rules! roles {
    ($( $(#[doc = $doc:literal])* $role:ident: [$($default:literal),+ $(,)?], )+) => {
        /// `[sinks.NAME.fields]`: a path or list of paths per role.
        #[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
        #[serde(default, deny_unknown_fields)]
        pub struct FieldMap {
            $(
                $(#[doc = $doc])*
                #[serde(deserialize_with = "one_or_many")]
                pub $role: Vec<String>,
            )+
        }

        impl Default for FieldMap {
            fn default() -> Self {
                FieldMap {
                    $($role: vec![$($default.to_string()),+],)+
                }
            }
        }

        /// A [`FieldMap`] with its paths parsed.
        #[derive(Clone, Debug)]
        pub struct Fields {
            $($role: Vec<FieldPath>,)+
        }

        /// The audit facts of one event, as text: per role, the first of
        /// its paths that holds a value.
        #[derive(Debug, Default)]
        pub struct AuditFacts {
            $(
                $(#[doc = $doc])*
                pub $role: Option<String>,
            )+
            /// From `outcome`: `Some(true)` success, `Some(false)` failure,
            /// `None` unknown.
            pub success: Option<bool>,
        }

        impl FieldMap {
            fn roles(&self) -> Vec<(&'static str, &Vec<String>)> {
                vec![$((stringify!($role), &self.$role)),+]
            }

            /// Parses the paths; call after [`FieldMap::validate`] passed.
            pub fn compile(&self) -> Result<Fields, String> {
                let parse = |list: &Vec<String>| -> Result<Vec<FieldPath>, String> {
                    list.iter().map(|p| FieldPath::parse(p)).collect()
                };
                Ok(Fields {
                    $($role: parse(&self.$role)?,)+
                })
            }
        }

        impl Fields {
            pub fn facts(&self, event: &Value) -> AuditFacts {
                let mut facts = AuditFacts {
                    $($role: first(event, &self.$role),)+
                    success: None,
                };
                facts.success = facts.outcome.as_deref().and_then(is_success);
                facts
            }
        }
    };
}

roles! {
    actor: ["identity.email", "identity.name", "actor.name", "actor.email", "actor", "user_id"],
    actor_id: ["identity.user_id", "actor.id", "user_id"],
    source_ip: ["client.ip", "source_ip", "ip_address", "client_ip"],
    /// A status: gRPC code name or number (`PERMISSION_DENIED`), HTTP
    /// status (`403`), or a word such as `success`/`denied`; it decides
    /// success or failure.
    outcome: ["status.grpc_code", "status.http_status", "result", "outcome"],
    reason: ["status.error_reason", "status.message", "reason"],
    action: ["endpoint", "intent", "action", "event_type"],
    method: ["method"],
    url: ["url", "request.url"],
    user_agent: ["client.user_agent", "user_agent"],
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

impl FieldMap {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        for (role, list) in self.roles() {
            for (i, p) in list.iter().enumerate() {
                FieldPath::check(p, &format!("{path}.fields.{role}[{i}]"), problems);
            }
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
        assert_eq!(f.outcome.as_deref(), Some("PERMISSION_DENIED"));
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
        let facts = m
            .compile()
            .unwrap()
            .facts(&serde_json::json!({"result": "allowed"}));
        assert_eq!(facts.success, Some(true));
    }
}
