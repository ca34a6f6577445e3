//! QuickZTNA audit entries (`/api/audit`, `/api/export`):
//! `{id, action, resource_type, resource_id, user_id, created_at, details}`.
//!
//! | QuickZTNA | OCSF |
//! |---|---|
//! | `auth.login`, `auth.login_failed`, `auth.logout` | Authentication 3002 |
//! | `user.*` (`resource_type = "user"`) | Account Change 3001 |
//! | any other action on a resource | Entity Management 3004, `entity` = `resource_type`/`resource_id` |

use serde_json::{json, Value};

use super::build::{account_change, authentication, text, user, verb_activity, Mapped};
use super::schema;

pub(super) fn map(ev: &Value) -> Option<Mapped> {
    let action = text(ev, "action")?;
    let resource_type = text(ev, "resource_type");
    let resource_id = text(ev, "resource_id");
    let actor_user = user(text(ev, "user_id"), None);
    let (noun, verb) = action.split_once('.').unwrap_or((action, action));
    let mut m = if noun == "auth" {
        authentication(verb, actor_user.clone(), "QuickZTNA")?
    } else if resource_type == Some("user") || noun == "user" {
        account_change(verb, user(resource_id, None))
    } else {
        let activity = verb_activity(verb).unwrap_or(schema::ACTIVITY_OTHER);
        let mut m = Mapped::new(schema::ENTITY_MANAGEMENT, activity);
        let mut entity =
            json!({ "name": resource_id.unwrap_or(noun), "type": resource_type.unwrap_or(noun) });
        if let Some(uid) = resource_id {
            entity["uid"] = json!(uid);
        }
        m.set("entity", Some(entity));
        m
    };
    if m.activity_id == schema::ACTIVITY_OTHER {
        m.set("activity_name", Some(json!(action)));
    }
    if let Some(u) = actor_user {
        m.set("actor", Some(json!({ "user": u })));
    }
    m.set("message", Some(json!(action)));
    Some(m)
}
