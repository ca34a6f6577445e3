//! CertifyClouds audit entries (`/audit/entries`):
//! `{id, timestamp, event_type, actor{type,id,name}, resource{type,id},
//! description, details, severity, ip_address, user_agent}`.
//!
//! | CertifyClouds | OCSF |
//! |---|---|
//! | `auth.login.success`, `auth.login.failed`, `auth.logout` | Authentication 3002 |
//! | `auth.account.locked`, `user.created/updated/deleted` | Account Change 3001 |
//! | `discovery.*`, `rotation.*`, `sync.*`, `settings.*`… | Entity Management 3004, `entity` = `resource` |
//!
//! `severity` (`info`/`warning`/`error`) → `severity_id`, `ip_address` →
//! `src_endpoint.ip`, `user_agent` → `http_request.user_agent`.

use serde_json::{json, Value};

use super::build::{account_change, authentication, endpoint, text, user, verb_activity, Mapped};
use super::schema::{self, account, severity};

pub(super) fn map(ev: &Value) -> Option<Mapped> {
    let event_type = text(ev, "event_type")?;
    let actor_user = user(
        text(ev, "actor.id"),
        text(ev, "actor.name").or_else(|| text(ev, "actor.email")),
    );
    let mut parts = event_type.split('.');
    let noun = parts.next().unwrap_or(event_type);
    let verb = event_type.rsplit('.').next().unwrap_or(event_type);
    let mut m = if noun == "auth" && event_type.contains("account.locked") {
        let mut m = Mapped::new(schema::ACCOUNT_CHANGE, account::LOCK);
        m.set(
            "user",
            Some(
                actor_user
                    .clone()
                    .unwrap_or_else(|| json!({"name": "unknown"})),
            ),
        );
        m
    } else if noun == "auth" {
        let mut m = authentication(event_type, actor_user.clone(), "CertifyClouds")?;
        if verb == "failed" {
            m.status_id = Some(schema::status::FAILURE);
        }
        m
    } else if noun == "user" {
        account_change(verb, user(text(ev, "resource.id"), None))
    } else {
        let activity = verb_activity(verb).unwrap_or(schema::ACTIVITY_OTHER);
        let mut m = Mapped::new(schema::ENTITY_MANAGEMENT, activity);
        let kind = text(ev, "resource.type").unwrap_or(noun);
        let mut entity = json!({ "type": kind, "name": text(ev, "resource.name").or(text(ev, "resource.id")).unwrap_or(kind) });
        if let Some(uid) = text(ev, "resource.id") {
            entity["uid"] = json!(uid);
        }
        m.set("entity", Some(entity));
        if matches!(verb, "failed" | "error") {
            m.status_id = Some(schema::status::FAILURE);
        } else if matches!(verb, "completed" | "success") {
            m.status_id = Some(schema::status::SUCCESS);
        }
        m
    };
    if m.activity_id == schema::ACTIVITY_OTHER {
        m.set("activity_name", Some(json!(event_type)));
    }
    if let Some(word) = text(ev, "severity") {
        let id = severity::from_word(word);
        if id != severity::UNKNOWN {
            m.severity_id = id;
        }
    }
    if let Some(u) = actor_user {
        m.set("actor", Some(json!({ "user": u })));
    }
    m.set("src_endpoint", endpoint(text(ev, "ip_address")));
    if let Some(ua) = text(ev, "user_agent") {
        m.set("http_request", Some(json!({ "user_agent": ua })));
    }
    m.set("message", text(ev, "description").map(|d| json!(d)));
    Some(m)
}
