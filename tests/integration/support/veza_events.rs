//! The events of the Veza export fake: deterministic in (seed, index),
//! with the contents that break naive encoders (quotes, backslashes,
//! newlines, non-ASCII, IPv6, empty ids).

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;

use super::veza_fake::FakeEvent;

/// A cheap deterministic 64-bit mix (splitmix64) of seed and index.
pub fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed
        ^ index
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const EMAILS: [&str; 7] = [
    "alice@example.com",
    "bob.o'neil@example.com",
    "zoë.müller@exämple.de",
    "\"chief\"@example.com",
    "李雷@example.cn",
    "ops+audit@example.org",
    "back\\slash@example.net",
];

const USER_AGENTS: [&str; 6] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
    "curl/8.5.0",
    "veza-cli/1.4 (\"nightly\"; C:\\tools\\veza)",
    "python-requests/2.31.0",
    "terraform-provider-veza/0.9 ✓ 日本語",
    "Go-http-client/1.1",
];

const ENDPOINTS: [(&str, &str, &str); 6] = [
    (
        "/api_protos.v1.APIKeyService/CreateAPIKey",
        "POST",
        "/api/preview/keys",
    ),
    (
        "/api_protos.v1.UserService/ListUsers",
        "GET",
        "/api/v1/users",
    ),
    (
        "/api_protos.v1.QueryService/DeleteQuery",
        "DELETE",
        "/api/v1/assessments/queries/{}",
    ),
    (
        "/api_protos.v1.PolicyService/UpdatePolicy",
        "PUT",
        "/api/v1/providers/policies/{}",
    ),
    (
        "/api_protos.v1.AuthService/Login",
        "POST",
        "/api/v1/auth/login",
    ),
    (
        "/api_protos.v1.ReportService/ExportReport",
        "GET",
        "/api/v1/reports/{}/export",
    ),
];

fn uuid(rng: &mut StdRng) -> String {
    let v: u128 = rng.random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Event number `index` (0-based; id `req-{index+1:06}`), deterministic in
/// (seed, index) apart from `persisted_at`.
pub fn make_event(
    seed: u64,
    index: usize,
    persisted_at: DateTime<Utc>,
    empty_id: bool,
) -> FakeEvent {
    let mut rng = StdRng::seed_from_u64(mix(seed, index as u64));
    let id = format!("req-{:06}", index + 1);
    let (endpoint, method, url) = ENDPOINTS[rng.random_range(0..ENDPOINTS.len())];
    let url = url.replace("{}", &uuid(&mut rng));
    let (grpc_code, http_status, reason) = match rng.random_range(0..20u8) {
        0 => (
            "PermissionDenied",
            403,
            "permission denied for \"CreateAPIKey\"",
        ),
        1 => (
            "InvalidArgument",
            400,
            "invalid argument: name\nmust not be empty",
        ),
        2 => ("NotFound", 404, "not found: C:\\data\\q"),
        _ => ("OK", 200, "OK"),
    };
    let request = match rng.random_range(0..5u8) {
        0 => json!({"name": "deploy key \"prod\"", "description": "line one\nline two"}),
        1 => json!({"query": {"name": "Tëst ✓ – 日本語", "path": "C:\\Users\\admin\\report.csv"}}),
        2 => json!({}),
        3 => json!({"login": "user", "note": "tab\tseparated, emoji 🚀, nul-free \u{7f}"}),
        _ => json!({"ids": [1, 2, 3], "filter": "name eq \"x\" and path co \"\\\\share\""}),
    };
    let ip = if rng.random_range(0..4u8) == 0 {
        format!("2001:db8::{:x}", rng.random::<u16>())
    } else {
        format!(
            "10.{}.{}.{}",
            rng.random::<u8>(),
            rng.random::<u8>(),
            rng.random_range(1..255u8)
        )
    };
    let api_key_id = if rng.random::<bool>() {
        String::new()
    } else {
        format!("key-{}", uuid(&mut rng))
    };
    let duration_ns = rng.random_range(1_000_000..500_000_000i64);
    let lag_ns = rng.random_range(20_000_000..2_000_000_000i64);
    let ended_at = persisted_at - chrono::Duration::nanoseconds(lag_ns);
    let started_at = ended_at - chrono::Duration::nanoseconds(duration_ns);
    let value = json!({
        "identity": {
            "user_id": uuid(&mut rng),
            "session_id": uuid(&mut rng),
            "api_key_id": api_key_id,
            "email": EMAILS[rng.random_range(0..EMAILS.len())],
        },
        "status": {"grpc_code": grpc_code, "http_status": http_status, "error_reason": reason},
        "client": {"ip": ip, "user_agent": USER_AGENTS[rng.random_range(0..USER_AGENTS.len())]},
        "endpoint": endpoint,
        "method": method,
        "url": url,
        "request_id": id,
        "request": request,
        "started_at": rfc3339(started_at),
        "ended_at": rfc3339(ended_at),
        "persisted_at": rfc3339(persisted_at),
    });
    let mut value = value;
    value["fake_ref"] = json!(id);
    if empty_id {
        value["request_id"] = json!("");
    }
    FakeEvent {
        id,
        persisted_at,
        json: value.to_string(),
    }
}
