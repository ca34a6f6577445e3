//! `http_pull` APIs in the common audit shape (Zaita's REST API):
//! `{event_id, timestamp, tenant_id, actor{type,id,email}, action,
//! resource{type,id,name}, outcome, metadata, source_ip}`. Events of
//! other shapes (no `action`) are Base Events.
//!
//! | Zaita | OCSF |
//! |---|---|
//! | `user.login`, `user.login_failed`, `*.logout` | Authentication 3002 |
//! | `user.created/deleted/…` on a user | Account Change 3001 |
//! | any other `noun.verb` (`certificate.issue`, `pki.ca_created`…) | Entity Management 3004, `entity` = `resource` |
//!
//! `outcome` (`success`/`failure`/`denied`) → `status_id` (denied:
//! Medium severity), `actor` → `actor.user`, `source_ip` →
//! `src_endpoint.ip`, `tenant_id` → `metadata.tenant_uid`.

use serde_json::{json, Value};

use super::build::{
    account_change, authentication, endpoint, outcome_status, text, user, verb_activity, Mapped,
};
use super::schema::{self, severity, status};

pub(super) fn map(ev: &Value) -> Option<Mapped> {
    let action = text(ev, "action")?;
    let actor_user = user(
        text(ev, "actor.id"),
        text(ev, "actor.email").or_else(|| text(ev, "actor.name")),
    );
    let (noun, verb) = action.split_once('.').unwrap_or((action, action));
    let mut m = if let Some(m) = authentication(verb, actor_user.clone(), "auditrelay") {
        m
    } else if noun == "user" || text(ev, "resource.type") == Some("user") {
        account_change(
            verb,
            user(text(ev, "resource.id"), text(ev, "resource.name")),
        )
    } else {
        let activity = verb_activity(verb).unwrap_or(schema::ACTIVITY_OTHER);
        let mut m = Mapped::new(schema::ENTITY_MANAGEMENT, activity);
        let kind = text(ev, "resource.type").unwrap_or(noun);
        let mut entity = json!({
            "type": kind,
            "name": text(ev, "resource.name").or(text(ev, "resource.id")).unwrap_or(kind),
        });
        if let Some(uid) = text(ev, "resource.id") {
            entity["uid"] = json!(uid);
        }
        m.set("entity", Some(entity));
        m
    };
    if m.activity_id == schema::ACTIVITY_OTHER {
        m.set("activity_name", Some(json!(action)));
    }
    if let Some(outcome) = text(ev, "outcome") {
        let s = outcome_status(outcome);
        if s != status::UNKNOWN {
            m.status_id = Some(s);
        }
        m.set("status_detail", Some(json!(outcome)));
        if outcome.eq_ignore_ascii_case("denied") {
            m.severity_id = severity::MEDIUM;
        } else if s == status::FAILURE {
            m.severity_id = severity::LOW;
        }
    }
    if let Some(u) = actor_user {
        m.set("actor", Some(json!({ "user": u })));
    }
    m.set("src_endpoint", endpoint(text(ev, "source_ip")));
    m.set("message", Some(json!(action)));
    Some(m)
}
