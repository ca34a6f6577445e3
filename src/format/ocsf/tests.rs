//! What each mapping makes of its vendor's documented sample events (the
//! schema itself is checked by the integration suite `ocsf`).

use bytes::Bytes;
use serde_json::{json, Value};

use super::*;

fn event(raw: &Value, id: Option<&str>, kind: Option<&str>) -> Event {
    Event {
        raw: Bytes::from(raw.to_string()),
        id: id.map(Into::into),
        time: DateTime::from_timestamp(1_700_000_000, 0),
        kind: kind.map(Into::into),
    }
}

fn mapped(kind: &str, raw: Value) -> Value {
    map(kind, "src", &raw, &event(&raw, Some("id-1"), Some("k")))
}

/// A Veza audit event of the RPC `rpc` (`Service/Method` below `api_protos.v1`).
fn veza(rpc: &str, method: &str, grpc: &str, http: u16) -> Value {
    mapped(
        "veza",
        json!({
            "identity": {"user_id": "u-1", "session_id": "s-1", "api_key_id": "", "email": "cookie@cookie.ai"},
            "status": {"grpc_code": grpc, "http_status": http, "error_reason": "OK"},
            "client": {"ip": "10.42.1.1", "user_agent": "Mozilla/5.0"},
            "endpoint": format!("/api_protos.v1.{rpc}"), "method": method, "url": "/api/preview/keys",
            "request_id": "1a98", "request": {"name": "KeyName1"},
            "response": {"value": {"id": "fde4", "name": "KeyName1"}},
            "started_at": "2023-07-26T08:23:17.134994459Z",
            "ended_at": "2023-07-26T08:23:17.151080751Z"
        }),
    )
}

fn class_activity(v: &Value) -> (u64, u64, u64) {
    (
        v["class_uid"].as_u64().unwrap(),
        v["activity_id"].as_u64().unwrap(),
        v["type_uid"].as_u64().unwrap(),
    )
}

const CREATE_API_KEY: &str = "APIKeyService/CreateAPIKey";
const LOGIN: &str = "AuthService/Login";

#[test]
fn veza_classes_by_endpoint() {
    // (RPC, method, gRPC code, HTTP status) → (class, activity, type).
    for (rpc, method, grpc, http, expected) in [
        (CREATE_API_KEY, "POST", "OK", 200, (3004, 1, 300401)),
        ("UserService/ListUsers", "GET", "OK", 200, (6003, 2, 600302)),
        (LOGIN, "POST", "PermissionDenied", 403, (3002, 1, 300201)),
        (
            "UserService/DeleteUser",
            "DELETE",
            "OK",
            200,
            (3001, 6, 300106),
        ),
    ] {
        let v = veza(rpc, method, grpc, http);
        assert_eq!(class_activity(&v), expected, "{rpc}");
    }
    let key = veza(CREATE_API_KEY, "POST", "OK", 200);
    assert_eq!(
        key["entity"],
        json!({"type": "APIKey", "name": "KeyName1", "uid": "fde4"})
    );
    assert_eq!(
        key["actor"]["user"]["email_addr"],
        json!("cookie@cookie.ai")
    );
    assert_eq!(key["actor"]["session"]["uid"], json!("s-1"));
    assert_eq!(key["src_endpoint"]["ip"], json!("10.42.1.1"));
    assert_eq!(key["api"]["operation"], json!("CreateAPIKey"));
    assert_eq!(key["api"]["request"]["uid"], json!("1a98"));
    assert_eq!(key["status_id"], json!(1));
    assert_eq!(key["start_time"], json!(1_690_359_797_134i64));
    let login = veza(LOGIN, "POST", "PermissionDenied", 403);
    assert_eq!(login["status_id"], json!(2));
    assert_eq!(login["status_code"], json!("PermissionDenied"));
    assert_eq!(login["severity_id"], json!(3));
    assert_eq!(login["user"]["uid"], json!("u-1"));
}

#[test]
fn common_attributes() {
    let v = veza("UserService/ListUsers", "GET", "OK", 200);
    assert_eq!(v["time"], json!(1_700_000_000_000i64));
    assert_eq!(v["metadata"]["uid"], json!("id-1"));
    assert_eq!(v["metadata"]["version"], json!(schema::VERSION));
    assert_eq!(v["metadata"]["product"]["name"], json!("Veza"));
    assert_eq!(v["class_name"], json!("API Activity"));
    assert_eq!(v["category_uid"], json!(6));
    assert_eq!(v["type_name"], json!("API Activity: Read"));
}

#[test]
fn quickztna_entries() {
    let entry = |action: &str, rtype: &str| {
        mapped(
            "quickztna",
            json!({"id": "q1", "action": action, "resource_type": rtype, "resource_id": "r1",
                   "user_id": "usr-1", "created_at": "2026-01-01T00:00:00.000Z", "details": "{}"}),
        )
    };
    let failed = entry("auth.login_failed", "user");
    assert_eq!(class_activity(&failed), (3002, 1, 300201));
    assert_eq!(failed["status_id"], json!(2));
    let renamed = entry("machine.renamed", "machine");
    assert_eq!(class_activity(&renamed), (3004, 3, 300403));
    assert_eq!(renamed["entity"]["type"], json!("machine"));
    let revoked = entry("auth_key.revoked", "auth_key");
    assert_eq!(class_activity(&revoked), (3004, 4, 300404));
}

#[test]
fn certifyclouds_entries() {
    let entry = |t: &str, sev: &str| {
        mapped(
            "certifyclouds",
            json!({"id": "a1", "timestamp": "2026-01-01T00:00:00.000Z", "event_type": t,
                   "actor": {"type": "user", "id": "user-1", "name": "user-1@company.com"},
                   "resource": {"type": "scan", "id": "scan-1"}, "description": "d",
                   "severity": sev, "ip_address": "192.0.2.50", "user_agent": "Mozilla/5.0"}),
        )
    };
    let ok = entry("auth.login.success", "info");
    assert_eq!(class_activity(&ok), (3002, 1, 300201));
    assert_eq!(ok["status_id"], json!(1));
    assert_eq!(entry("auth.login.failed", "warning")["status_id"], json!(2));
    assert_eq!(
        entry("auth.login.failed", "warning")["severity_id"],
        json!(3)
    );
    assert_eq!(
        class_activity(&entry("auth.account.locked", "info")).0,
        3001
    );
    let sync = entry("sync.failed", "error");
    assert_eq!(class_activity(&sync), (3004, 99, 300499));
    assert_eq!(sync["activity_name"], json!("sync.failed"));
    assert_eq!(sync["severity_id"], json!(4));
}

#[test]
fn zaita_events_through_http_pull() {
    let ev = |action: &str, outcome: &str| {
        mapped(
            "http_pull",
            json!({"event_id": "e1", "timestamp": "2026-03-15T08:42:17.003Z", "tenant_id": "tnt_1",
                   "actor": {"type": "user", "id": "usr_1", "email": "ops@example.com"},
                   "action": action, "resource": {"type": "certificate", "id": "crt_1", "name": "api.example.com"},
                   "outcome": outcome, "source_ip": "203.0.113.42"}),
        )
    };
    let issue = ev("certificate.issue", "success");
    assert_eq!(class_activity(&issue), (3004, 1, 300401));
    assert_eq!(issue["metadata"]["tenant_uid"], json!("tnt_1"));
    assert_eq!(issue["entity"]["name"], json!("api.example.com"));
    let denied = ev("user.login_failed", "denied");
    assert_eq!(class_activity(&denied), (3002, 1, 300201));
    assert_eq!(denied["status_id"], json!(2));
    assert_eq!(denied["severity_id"], json!(3));
    // An http_pull API of another shape is a Base Event, original kept by the caller.
    let other = mapped("http_pull", json!({"foo": 1}));
    assert_eq!(class_activity(&other), (0, 99, 99));
    assert_eq!(other["activity_name"], json!("k"));
}

#[test]
fn webhook_in_violations_are_detection_findings() {
    let v = mapped(
        "webhook_in",
        json!({"type": "policy.violation", "id": "v-9", "severity": "high",
               "rule": "no-public-buckets", "description": "bucket x is public", "user_id": "u-2"}),
    );
    assert_eq!(class_activity(&v), (2004, 1, 200401));
    assert_eq!(v["finding_info"]["uid"], json!("v-9"));
    assert_eq!(v["finding_info"]["title"], json!("no-public-buckets"));
    assert_eq!(v["severity_id"], json!(4));
    let nested = mapped(
        "webhook_in",
        json!({"alert": {"id": "a-1", "title": "Impossible travel", "severity": "critical"}}),
    );
    assert_eq!(class_activity(&nested), (2004, 1, 200401));
    assert_eq!(nested["finding_info"]["title"], json!("Impossible travel"));
    assert_eq!(nested["severity_id"], json!(5));
    let pushed_entry = mapped(
        "webhook_in",
        json!({"id": "a1", "event_type": "auth.login.success", "actor": {"id": "u"}}),
    );
    assert_eq!(class_activity(&pushed_entry).0, 3002);
}

#[test]
fn unknown_sources_and_shapes_are_base_events() {
    let raw = json!([1, 2]);
    let v = map("demo", "d", &raw, &event(&raw, None, None));
    assert_eq!(class_activity(&v), (0, 0, 0));
    assert!(v["metadata"].get("uid").is_none());
    assert_eq!(v["metadata"]["product"]["name"], json!("d"));
}

#[test]
fn emails_and_slugs() {
    assert!(is_email("ops+audit@example.org"));
    assert!(is_email("bob.o'neil@example.com"));
    assert!(!is_email("\"chief\"@example.com"));
    assert!(!is_email("zoë@example.de"));
    assert!(!is_email("[REDACTED]"));
    assert!(!is_email("a@localhost"));
    assert_eq!(
        class_slug("Identity & Access Management"),
        "identity_access_management"
    );
    assert_eq!(class_slug("API Activity"), "api_activity");
}
