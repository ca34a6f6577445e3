//! Veza audit events (`/api/preview/system/audit[/export]`): one per API
//! call, `endpoint` = `/api_protos.v1.<Service>/<Method>`.
//!
//! | Veza | OCSF |
//! |---|---|
//! | `AuthService/Login…`, `…/Logout…` | Authentication 3002 (Logon/Logoff) |
//! | `UserService/{Create,Delete,Enable,Disable,Lock,Unlock}User…` | Account Change 3001 |
//! | other writes (`Create*`, `Update*`, `Delete*`…) | Entity Management 3004 |
//! | the rest (reads, exports) | API Activity 6003 |
//!
//! Every class carries `actor.user` (`identity.user_id`, `identity.email`),
//! `actor.session`, `src_endpoint.ip` (`client.ip`), `http_request`
//! (`method`, `client.user_agent`, `url`), `api` (operation, service,
//! `request_id`) and `status_*` from the gRPC code and HTTP status.

use serde_json::{json, Value};

use super::build::{authentication, endpoint, millis, text, user, verb_activity, Mapped};
use super::schema::{self, account, crud, severity, status};

pub(super) fn map(ev: &Value) -> Option<Mapped> {
    let endpoint_path = text(ev, "endpoint")?;
    let (service, operation) = endpoint_path
        .trim_start_matches('/')
        .rsplit_once('/')
        .unwrap_or(("", endpoint_path));
    let service_short = service.rsplit('.').next().unwrap_or(service);
    let actor_user = user(text(ev, "identity.user_id"), text(ev, "identity.email"));
    let mut m = if service_short == "AuthService" {
        authentication(operation, actor_user.clone(), "Veza")?
    } else if let Some(activity) = (service_short == "UserService")
        .then(|| activity_by_prefix(operation, ACCOUNT_ACTIVITIES))
        .flatten()
    {
        let mut m = Mapped::new(schema::ACCOUNT_CHANGE, activity);
        let target = text(ev, "response.value.id").or_else(|| text(ev, "request.id"));
        let name = text(ev, "request.email").or_else(|| text(ev, "request.name"));
        m.set(
            "user",
            Some(user(target, name).unwrap_or_else(|| json!({"name": operation}))),
        );
        m
    } else if let Some(activity) = activity_by_prefix(operation, WRITE_ACTIVITIES) {
        let mut m = Mapped::new(schema::ENTITY_MANAGEMENT, activity);
        let mut entity = serde_json::Map::new();
        entity.insert("type".into(), json!(entity_type(service_short)));
        let uid = text(ev, "response.value.id")
            .or_else(|| text(ev, "request.id"))
            .or_else(|| text(ev, "url").and_then(|u| u.rsplit('/').next()));
        let name = text(ev, "request.name").or_else(|| text(ev, "response.value.name"));
        entity.insert("name".into(), json!(name.or(uid).unwrap_or(operation)));
        if let Some(uid) = uid {
            entity.insert("uid".into(), json!(uid));
        }
        m.set("entity", Some(Value::Object(entity)));
        m
    } else {
        let activity = verb_activity(operation)
            .filter(|a| *a <= crud::DELETE)
            .or_else(|| method_activity(text(ev, "method")?))
            .unwrap_or(schema::ACTIVITY_OTHER);
        Mapped::new(schema::API_ACTIVITY, activity)
    };
    let mut actor = serde_json::Map::new();
    if let Some(u) = actor_user {
        actor.insert("user".into(), u);
    }
    if let Some(session) = text(ev, "identity.session_id") {
        actor.insert("session".into(), json!({ "uid": session }));
    }
    if let Some(key) = text(ev, "identity.api_key_id") {
        actor.insert("app_uid".into(), json!(key));
    }
    if actor.is_empty() {
        actor.insert("app_name".into(), json!("unknown"));
    }
    m.set("actor", Some(Value::Object(actor)));
    let mut api = json!({
        "operation": operation,
        "service": {"name": if service.is_empty() { "Veza" } else { service }},
    });
    if let Some(id) = text(ev, "request_id") {
        api["request"] = json!({ "uid": id });
    }
    m.set("api", Some(api));
    // Required by API Activity: a call without a usable address says so.
    let src = endpoint(text(ev, "client.ip")).unwrap_or_else(|| json!({"name": "unknown"}));
    if let Some(ua) = text(ev, "client.user_agent") {
        m.set(
            "http_request",
            Some(json!({
                "user_agent": ua,
                "http_method": text(ev, "method").unwrap_or("POST"),
                "url": {"path": text(ev, "url").unwrap_or(endpoint_path)},
            })),
        );
    }
    m.set("src_endpoint", Some(src));
    m.set(
        "start_time",
        ev.get("started_at").and_then(millis).map(Value::from),
    );
    m.set(
        "end_time",
        ev.get("ended_at").and_then(millis).map(Value::from),
    );
    let grpc = text(ev, "status.grpc_code");
    let http = ev.pointer("/status/http_status").and_then(Value::as_u64);
    if grpc.is_some() || http.is_some() {
        let ok = grpc.is_none_or(|c| c == "OK") && http.is_none_or(|h| h < 400);
        if m.status_id.is_none() || !ok {
            m.status_id = Some(if ok { status::SUCCESS } else { status::FAILURE });
        }
        m.severity_id = match grpc {
            Some("PermissionDenied" | "Unauthenticated") => severity::MEDIUM,
            _ if !ok => severity::LOW,
            _ => m.severity_id,
        };
        m.set(
            "status_code",
            grpc.map(|c| json!(c))
                .or(http.map(|h| json!(h.to_string()))),
        );
        m.set(
            "status_detail",
            text(ev, "status.error_reason").map(|r| json!(r)),
        );
    }
    m.set("message", Some(json!(endpoint_path)));
    Some(m)
}

/// Account Change activities of `UserService` methods, by prefix.
const ACCOUNT_ACTIVITIES: &[(&str, u32)] = &[
    ("create", account::CREATE),
    ("delete", account::DELETE),
    ("enable", account::ENABLE),
    ("disable", account::DISABLE),
    ("unlock", account::UNLOCK),
    ("lock", account::LOCK),
    ("resetpassword", account::PASSWORD_RESET),
    ("changepassword", account::PASSWORD_CHANGE),
];

/// Entity Management activities of writing methods, by prefix (reads are
/// API Activity).
const WRITE_ACTIVITIES: &[(&str, u32)] = &[
    ("create", crud::CREATE),
    ("add", crud::CREATE),
    ("update", crud::UPDATE),
    ("set", crud::UPDATE),
    ("rename", crud::UPDATE),
    ("delete", crud::DELETE),
    ("remove", crud::DELETE),
    ("enable", crud::ENABLE),
    ("disable", crud::DISABLE),
];

/// The activity of the first prefix of `table` that `operation` starts
/// with, ignoring case.
fn activity_by_prefix(operation: &str, table: &[(&str, u32)]) -> Option<u32> {
    let op = operation.to_ascii_lowercase();
    table
        .iter()
        .find(|(prefix, _)| op.starts_with(prefix))
        .map(|&(_, a)| a)
}

fn method_activity(method: &str) -> Option<u32> {
    Some(match method.to_ascii_uppercase().as_str() {
        "POST" => crud::CREATE,
        "GET" | "HEAD" => crud::READ,
        "PUT" | "PATCH" => crud::UPDATE,
        "DELETE" => crud::DELETE,
        _ => return None,
    })
}

/// `APIKeyService` → `APIKey`.
fn entity_type(service: &str) -> &str {
    service
        .strip_suffix("Service")
        .filter(|s| !s.is_empty())
        .unwrap_or(service)
}
