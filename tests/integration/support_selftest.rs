//! Exercises the test fakes in `tests/support/` directly, over loopback, so
//! the daemon's integration tests can trust what they observe.

use crate::support;

use std::collections::HashSet;
use std::io::Write;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime};

use chrono::{DateTime, SecondsFormat, Utc};
use flate2::write::GzEncoder;
use flate2::Compression;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use support::veza_fake::{
    Faults, Outcome, RateLimitKind, VezaFake, VezaFakeConfig, BODY_BAD_PAGE_SIZE, BODY_BAD_TOKEN,
    BODY_NOT_JSON, BODY_UNAUTHENTICATED,
};
use support::webhook_receiver::{signature, WebhookConfig, WebhookFaults, WebhookReceiver};

const LONG: Duration = Duration::from_secs(10);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(LONG)
        .build()
        .expect("reqwest client")
}

struct Answer {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    fn header(&self, name: &str) -> Option<String> {
        self.headers
            .get(name)
            .map(|v| v.to_str().expect("ASCII header").to_string())
    }

    fn ids(&self) -> Vec<String> {
        self.json()["values"]
            .as_array()
            .expect("values array")
            .iter()
            .map(|e| e["request_id"].as_str().expect("request_id").to_string())
            .collect()
    }

    fn next_token(&self) -> String {
        self.json()["next_page_token"]
            .as_str()
            .expect("next_page_token")
            .to_string()
    }
}

/// GET the export endpoint with `query` and bearer `token`.
async fn export(
    c: &reqwest::Client,
    fake: &VezaFake,
    query: &[(&str, &str)],
    token: Option<&str>,
) -> Answer {
    let mut req = c.get(fake.endpoint()).query(query);
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body read").to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn filter_from(t: DateTime<Utc>) -> String {
    // As the daemon formats it.
    format!(
        "persisted_at GE \"{}\"",
        t.to_rfc3339_opts(SecondsFormat::AutoSi, true)
    )
}

const TOKEN: &str = "test-veza-token";
const EPOCH_FILTER: &str = "persisted_at GE \"2000-01-01T00:00:00Z\"";

async fn first_page(c: &reqwest::Client, fake: &VezaFake, page_size: &str) -> Answer {
    export(
        c,
        fake,
        &[("filter", EPOCH_FILTER), ("page_size", page_size)],
        Some(TOKEN),
    )
    .await
}

async fn next_page(c: &reqwest::Client, fake: &VezaFake, token: &str, page_size: &str) -> Answer {
    export(
        c,
        fake,
        &[("page_token", token), ("page_size", page_size)],
        Some(TOKEN),
    )
    .await
}

fn cfg(initial_events: usize) -> VezaFakeConfig {
    VezaFakeConfig {
        initial_events,
        ..Default::default()
    }
}

// ---------------------------------------------------------------- raw HTTP

/// Reads one HTTP response (head and Content-Length body) from `stream`.
async fn read_response(stream: &mut TcpStream) -> (u16, String, Vec<u8>) {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 8192];
    let head_end = loop {
        if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break i;
        }
        let n = tokio::time::timeout(LONG, stream.read(&mut chunk))
            .await
            .expect("response in time")
            .expect("read");
        assert!(n > 0, "connection closed before a full response head");
        buf.extend_from_slice(&chunk[..n]);
    };
    let head = String::from_utf8(buf[..head_end].to_vec()).expect("UTF-8 head");
    let status: u16 = head[9..12].parse().expect("status code");
    let length: usize = head
        .lines()
        .find_map(|l| {
            l.to_ascii_lowercase()
                .strip_prefix("content-length:")
                .map(|v| v.trim().to_string())
        })
        .expect("content-length")
        .parse()
        .expect("numeric content-length");
    let mut body = buf[head_end + 4..].to_vec();
    while body.len() < length {
        let n = tokio::time::timeout(LONG, stream.read(&mut chunk))
            .await
            .expect("body in time")
            .expect("read");
        assert!(n > 0, "connection closed mid-body");
        body.extend_from_slice(&chunk[..n]);
    }
    (status, head, body)
}

/// Reads until the peer closes (EOF or reset); returns what arrived.
async fn read_to_close(stream: &mut TcpStream) -> Vec<u8> {
    let mut out = Vec::new();
    let mut chunk = [0u8; 8192];
    for _ in 0..100_000 {
        match tokio::time::timeout(LONG, stream.read(&mut chunk)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return out,
            Ok(Ok(n)) => out.extend_from_slice(&chunk[..n]),
            Err(_) => panic!("peer did not close the connection"),
        }
    }
    out
}

async fn connect(addr: SocketAddr) -> TcpStream {
    TcpStream::connect(addr).await.expect("connect")
}

fn get_request(fake: &VezaFake, query: &str, extra: &str) -> Vec<u8> {
    format!(
        "GET /api/preview/system/audit/export?{query} HTTP/1.1\r\nHost: {}\r\nAuthorization: Bearer {TOKEN}\r\n{extra}\r\n",
        fake.addr()
    )
    .into_bytes()
}

// ------------------------------------------------------------ Veza: paging

#[tokio::test]
async fn veza_pages_through_the_log_and_waits_at_the_end() {
    let fake = VezaFake::start(cfg(25)).await.expect("fake starts");
    let c = client();
    let mut seen = Vec::new();
    let first = first_page(&c, &fake, "10").await;
    assert_eq!(first.status, 200);
    assert_eq!(
        first.header("content-type").as_deref(),
        Some("application/json")
    );
    seen.extend(first.ids());
    let mut token = first.next_token();
    let mut caught_up_token = None;
    for _ in 0..10 {
        let page = next_page(&c, &fake, &token, "10").await;
        assert_eq!(page.status, 200, "{}", page.text());
        let ids = page.ids();
        assert!(ids.len() <= 10);
        if ids.is_empty() {
            caught_up_token = Some(page.next_token());
            break;
        }
        seen.extend(ids);
        token = page.next_token();
    }
    assert_eq!(seen, fake.all_ids());
    assert_eq!(seen.len(), 25);
    assert_eq!(seen[0], "req-000001");
    // Caught up: the token handed back points at the same place.
    let caught_up_token = caught_up_token.expect("an empty page at the end");
    assert_eq!(caught_up_token, token);
    assert!(next_page(&c, &fake, &token, "10").await.ids().is_empty());
    fake.append_now(3);
    let fresh = next_page(&c, &fake, &token, "10").await;
    assert_eq!(fresh.ids(), vec!["req-000026", "req-000027", "req-000028"]);

    let stats = fake.stats();
    assert_eq!(stats.first_calls, 1);
    assert_eq!(stats.ok, 4);
    assert_eq!(stats.empty, 2);
    assert_eq!(stats.requests, 6);
    assert_eq!(stats.filter_with_token, 0);
    assert_eq!(stats.cooldown_violations, 0);
    assert!(stats.log.iter().all(|r| r.page_size == Some(10)));
    assert!(!stats.log[0].used_token && stats.log[0].had_filter);
    assert!(stats.log[1..].iter().all(|r| r.used_token && !r.had_filter));
    assert_eq!(stats.log[1].offset, Some(10));
}

#[tokio::test]
async fn veza_events_are_veza_shaped_unique_and_ordered() {
    let fake = VezaFake::start(cfg(300)).await.expect("fake starts");
    let events = fake.events();
    let ids: HashSet<&str> = events.iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), 300);
    assert!(events
        .windows(2)
        .all(|w| w[0].persisted_at < w[1].persisted_at));
    assert!(events.last().expect("events").persisted_at < Utc::now());
    let mut texts = String::new();
    for e in &events {
        let v: Value = serde_json::from_str(&e.json).expect("event is JSON");
        assert_eq!(v["request_id"], e.id.as_str());
        for key in [
            "identity", "status", "client", "endpoint", "method", "url", "request",
        ] {
            assert!(!v[key].is_null(), "{key} missing in {}", e.json);
        }
        for key in ["user_id", "session_id", "api_key_id", "email"] {
            assert!(v["identity"][key].is_string(), "identity.{key}");
        }
        assert!(v["status"]["http_status"].is_u64());
        let persisted =
            DateTime::parse_from_rfc3339(v["persisted_at"].as_str().expect("persisted_at"))
                .expect("RFC 3339");
        assert_eq!(persisted.with_timezone(&Utc), e.persisted_at);
        let ended = DateTime::parse_from_rfc3339(v["ended_at"].as_str().expect("ended_at"))
            .expect("RFC 3339");
        let started = DateTime::parse_from_rfc3339(v["started_at"].as_str().expect("started_at"))
            .expect("RFC 3339");
        assert!(started < ended && ended < persisted);
        texts.push_str(&e.json);
    }
    // Awkward strings appear, escaped.
    for needle in ["\\n", "\\\"", "\\\\", "日本語", "ë", "🚀"] {
        assert!(texts.contains(needle), "no {needle:?} in any event");
    }
    let statuses: HashSet<u64> = events
        .iter()
        .map(|e| {
            serde_json::from_str::<Value>(&e.json).expect("JSON")["status"]["http_status"]
                .as_u64()
                .unwrap_or(0)
        })
        .collect();
    assert!(statuses.len() > 1);
    // Same seed, same contents.
    let again = VezaFake::start(VezaFakeConfig {
        first_persisted_at: Some(events[0].persisted_at),
        ..cfg(3)
    })
    .await
    .expect("fake starts");
    let (a, b) = (&fake.events()[1], &again.events()[1]);
    let strip = |s: &str| {
        let mut v: Value = serde_json::from_str(s).expect("JSON");
        for k in ["started_at", "ended_at", "persisted_at"] {
            v[k] = Value::Null;
        }
        v
    };
    assert_eq!(strip(&a.json), strip(&b.json));
}

#[tokio::test]
async fn veza_filter_selects_the_start_and_token_wins_over_filter() {
    let fake = VezaFake::start(cfg(20)).await.expect("fake starts");
    let c = client();
    let events = fake.events();
    let from = events[6].persisted_at;
    let page = export(
        &c,
        &fake,
        &[("filter", &filter_from(from)), ("page_size", "5")],
        Some(TOKEN),
    )
    .await;
    assert_eq!(page.ids()[0], "req-000007");
    // One nanosecond later starts at the next event.
    let later = from + chrono::Duration::nanoseconds(1);
    let page = export(
        &c,
        &fake,
        &[("filter", &filter_from(later)), ("page_size", "5")],
        Some(TOKEN),
    )
    .await;
    assert_eq!(page.ids()[0], "req-000008");
    assert_eq!(fake.ids_from(later)[0], "req-000008");

    // A filter past the end: empty page with a token that later serves appends.
    let future = Utc::now() + chrono::Duration::hours(1);
    let page = export(
        &c,
        &fake,
        &[("filter", &filter_from(future)), ("page_size", "5")],
        Some(TOKEN),
    )
    .await;
    assert_eq!(page.status, 200);
    assert!(page.ids().is_empty());
    fake.append_now(2);
    let token = page.next_token();
    assert_eq!(
        next_page(&c, &fake, &token, "5").await.ids(),
        vec!["req-000021", "req-000022"]
    );

    // An empty token with a filter is a first call.
    let page = export(
        &c,
        &fake,
        &[
            ("filter", EPOCH_FILTER),
            ("page_token", ""),
            ("page_size", "2"),
        ],
        Some(TOKEN),
    )
    .await;
    assert_eq!(page.ids(), vec!["req-000001", "req-000002"]);
    assert_eq!(fake.stats().filter_with_token, 0);

    // Token and filter together: counted, and the token is used.
    let token = fake.token_for_offset(10);
    let page = export(
        &c,
        &fake,
        &[
            ("filter", EPOCH_FILTER),
            ("page_token", &token),
            ("page_size", "2"),
        ],
        Some(TOKEN),
    )
    .await;
    assert_eq!(page.ids(), vec!["req-000011", "req-000012"]);
    assert_eq!(fake.stats().filter_with_token, 1);

    // Malformed filters.
    for bad in [
        "persisted_at >= \"2024-01-01T00:00:00Z\"",
        "persisted_at GE 2024-01-01T00:00:00Z",
        "persisted_at GE \"yesterday\"",
        "ended_at GE \"2024-01-01T00:00:00Z\"",
        "",
    ] {
        let page = export(
            &c,
            &fake,
            &[("filter", bad), ("page_size", "5")],
            Some(TOKEN),
        )
        .await;
        assert_eq!(page.status, 400, "filter {bad:?}");
        assert_eq!(page.json()["code"], 3);
    }
    let stats = fake.stats();
    assert_eq!(stats.bad_request, 5);
    assert_eq!(stats.first_calls, 4);
}

#[tokio::test]
async fn veza_token_param_name_is_configurable() {
    let fake = VezaFake::start(VezaFakeConfig {
        token_param: "pageToken".into(),
        ..cfg(6)
    })
    .await
    .expect("fake starts");
    let c = client();
    let first = first_page(&c, &fake, "4").await;
    let token = first.next_token();
    let second = export(
        &c,
        &fake,
        &[("pageToken", &token), ("page_size", "4")],
        Some(TOKEN),
    )
    .await;
    assert_eq!(second.ids(), vec!["req-000005", "req-000006"]);
    // The other name is not a token: a call without token or filter.
    let other = export(
        &c,
        &fake,
        &[("page_token", &token), ("page_size", "4")],
        Some(TOKEN),
    )
    .await;
    assert_eq!(other.ids()[0], "req-000001");
    assert_eq!(fake.stats().unfiltered_calls, 1);
}

#[tokio::test]
async fn veza_page_size_is_required_and_bounded() {
    let fake = VezaFake::start(cfg(5)).await.expect("fake starts");
    let c = client();
    for query in [
        vec![("filter", EPOCH_FILTER)],
        vec![("filter", EPOCH_FILTER), ("page_size", "0")],
        vec![("filter", EPOCH_FILTER), ("page_size", "10001")],
        vec![("filter", EPOCH_FILTER), ("page_size", "ten")],
        vec![("filter", EPOCH_FILTER), ("page_size", "-1")],
    ] {
        let a = export(&c, &fake, &query, Some(TOKEN)).await;
        assert_eq!(a.status, 400, "{query:?}");
        assert_eq!(a.text(), BODY_BAD_PAGE_SIZE);
    }
    assert_eq!(first_page(&c, &fake, "10000").await.ids().len(), 5);
    let stats = fake.stats();
    assert_eq!(stats.bad_request, 5);
    assert_eq!(stats.log[2].page_size, Some(10001));
    assert_eq!(stats.log[0].page_size, None);
}

#[tokio::test]
async fn veza_bearer_is_checked_and_can_change_and_rejections_skip_faults() {
    let fake = VezaFake::start(cfg(5)).await.expect("fake starts");
    let c = client();
    let q = [("filter", EPOCH_FILTER), ("page_size", "5")];
    for token in [None, Some("wrong")] {
        let a = export(&c, &fake, &q, token).await;
        assert_eq!(a.status, 401);
        assert_eq!(a.text(), BODY_UNAUTHENTICATED);
    }
    let basic = c
        .get(fake.endpoint())
        .query(&q)
        .basic_auth("user", Some(TOKEN))
        .send()
        .await
        .expect("sent");
    assert_eq!(basic.status().as_u16(), 401);
    fake.set_token("rotated");
    assert_eq!(export(&c, &fake, &q, Some(TOKEN)).await.status, 401);
    assert_eq!(export(&c, &fake, &q, Some("rotated")).await.status, 200);

    // Every fault on: rejected requests are still rejected, not faulted.
    fake.set_faults(Faults {
        rate_limit: 1.0,
        server_error: 1.0,
        reset: 1.0,
        truncated: 1.0,
        not_json: 1.0,
        duplicates: 1.0,
        slow: 0.0,
    });
    assert_eq!(export(&c, &fake, &q, Some(TOKEN)).await.status, 401);
    let a = export(&c, &fake, &[("page_size", "0")], Some("rotated")).await;
    assert_eq!(a.status, 400);
    let a = export(
        &c,
        &fake,
        &[("page_token", "forged"), ("page_size", "5")],
        Some("rotated"),
    )
    .await;
    assert_eq!(a.text(), BODY_BAD_TOKEN);
    let stats = fake.stats();
    assert_eq!(stats.unauthorized, 5);
    assert_eq!(stats.bad_request, 1);
    assert_eq!(stats.bad_token, 1);
    assert_eq!(
        stats.rate_limited + stats.server_error + stats.reset + stats.truncated + stats.not_json,
        0
    );
    assert_eq!(fake.cooldown_until(), None);
}

#[tokio::test]
async fn veza_expired_and_forged_tokens_are_rejected() {
    let fake = VezaFake::start(cfg(10)).await.expect("fake starts");
    let c = client();
    let token = first_page(&c, &fake, "3").await.next_token();
    assert_eq!(next_page(&c, &fake, &token, "3").await.status, 200);
    fake.expire_tokens();
    let a = next_page(&c, &fake, &token, "3").await;
    assert_eq!(a.status, 400);
    assert_eq!(a.text(), BODY_BAD_TOKEN);
    use base64::Engine;
    let forged_offset = {
        let raw = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(&token)
            .expect("base64url token");
        let text = String::from_utf8(raw).expect("UTF-8 token");
        let mut parts: Vec<&str> = text.split(':').collect();
        parts[0] = "2";
        parts[1] = "4";
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(parts.join(":"))
    };
    for bad in ["not-a-token", "%%%", &forged_offset, "MTow", "MjowOmFiYw"] {
        let a = next_page(&c, &fake, bad, "3").await;
        assert_eq!(a.status, 400, "token {bad:?}");
        assert_eq!(a.text(), BODY_BAD_TOKEN);
    }
    // A token past the end of the log is invalid too.
    let past = fake.token_for_offset(11);
    assert_eq!(
        next_page(&c, &fake, &past, "3").await.text(),
        BODY_BAD_TOKEN
    );
    // Fresh tokens work.
    let fresh = fake.token_for_offset(3);
    assert_eq!(
        next_page(&c, &fake, &fresh, "3").await.ids()[0],
        "req-000004"
    );
    assert_eq!(fake.stats().bad_token, 7);
}

// ----------------------------------------------------------- Veza: faults

/// One rate-limit kind: answer shape, announced cool-down, violation count.
async fn rate_limit_case(kind: RateLimitKind) {
    let fake = VezaFake::start(VezaFakeConfig {
        rate_limit_kinds: vec![kind],
        retry_after_secs: 1,
        default_wait: Duration::from_millis(500),
        faults: Faults {
            rate_limit: 1.0,
            ..Faults::none()
        },
        ..cfg(5)
    })
    .await
    .expect("fake starts");
    let c = client();
    let sent_wall = SystemTime::now();
    let sent = Instant::now();
    let a = first_page(&c, &fake, "5").await;
    let deadline = fake.cooldown_until().expect("a cool-down is announced");
    let body = a.json();
    assert_eq!(body["code"], 8, "{kind:?}");
    let retry_after = a.header("retry-after");
    match kind {
        RateLimitKind::RetryAfterSeconds => {
            assert_eq!(a.status, 429);
            assert_eq!(retry_after.as_deref(), Some("1"));
            let wait = deadline - sent;
            assert!(
                wait >= Duration::from_secs(1) && wait < Duration::from_secs(3),
                "{wait:?}"
            );
        }
        RateLimitKind::RetryAfterDate => {
            assert_eq!(a.status, 429);
            let date = httpdate::parse_http_date(&retry_after.expect("Retry-After"))
                .expect("an HTTP date");
            assert!(date >= sent_wall + Duration::from_secs(1));
            assert!(date <= sent_wall + Duration::from_secs(4));
            // The deadline is that instant (within clock-reading noise).
            let by_date = date
                .duration_since(SystemTime::now())
                .expect("date in the future");
            let by_deadline = deadline - Instant::now();
            let skew = by_date.abs_diff(by_deadline);
            assert!(skew < Duration::from_millis(20), "{skew:?}");
        }
        RateLimitKind::NoRetryAfter => {
            assert_eq!(a.status, 429);
            assert_eq!(retry_after, None);
        }
        RateLimitKind::ResetHeader => {
            unreachable!("not a Veza answer: source_fakes checks it on the pull fake")
        }
        RateLimitKind::Grpc503 | RateLimitKind::Grpc200 => {
            assert_eq!(
                a.status,
                if kind == RateLimitKind::Grpc503 {
                    503
                } else {
                    200
                }
            );
            assert_eq!(retry_after, None);
            assert_eq!(body["status"], "RESOURCE_EXHAUSTED");
            assert!(body.get("values").is_none());
        }
    }
    if matches!(
        kind,
        RateLimitKind::NoRetryAfter | RateLimitKind::Grpc503 | RateLimitKind::Grpc200
    ) {
        let wait = deadline - sent;
        assert!(
            wait >= Duration::from_millis(500) && wait < Duration::from_millis(2500),
            "{wait:?}"
        );
    }
    fake.set_faults(Faults::none());
    // Too early: served, but counted as a violation.
    let early = first_page(&c, &fake, "5").await;
    assert_eq!(early.status, 200);
    assert_eq!(fake.stats().cooldown_violations, 1);
    assert!(fake.stats().log[1].during_cooldown);
    // Honouring the cool-down: not a violation.
    tokio::time::sleep_until(deadline.into()).await;
    assert_eq!(first_page(&c, &fake, "5").await.status, 200);
    let stats = fake.stats();
    assert_eq!(stats.cooldown_violations, 1, "{kind:?}");
    assert_eq!(stats.rate_limited, 1);
    assert_eq!(stats.log[0].outcome, Outcome::RateLimited);
}

#[tokio::test]
async fn veza_rate_limit_answers_and_cooldown_violations() {
    let cases: Vec<_> = RateLimitKind::ALL
        .into_iter()
        .map(|kind| tokio::spawn(rate_limit_case(kind)))
        .collect();
    for case in cases {
        case.await.expect("rate-limit case passes");
    }
}

#[tokio::test]
async fn veza_rate_limit_kinds_are_all_drawn() {
    let fake = VezaFake::start(VezaFakeConfig {
        faults: Faults {
            rate_limit: 1.0,
            ..Faults::none()
        },
        retry_after_secs: 0,
        default_wait: Duration::ZERO,
        seed: 7,
        ..cfg(5)
    })
    .await
    .expect("fake starts");
    let c = client();
    let mut shapes = HashSet::new();
    for _ in 0..60 {
        let a = first_page(&c, &fake, "5").await;
        let retry = a.header("retry-after").map(|v| v.parse::<u64>().is_ok());
        shapes.insert((a.status, retry));
    }
    let expected: HashSet<(u16, Option<bool>)> = [
        (429, Some(true)),
        (429, Some(false)),
        (429, None),
        (503, None),
        (200, None),
    ]
    .into();
    assert_eq!(shapes, expected);
}

#[tokio::test]
async fn veza_server_errors_are_5xx_and_not_rate_limits() {
    let fake = VezaFake::start(VezaFakeConfig {
        faults: Faults {
            server_error: 1.0,
            ..Faults::none()
        },
        ..cfg(5)
    })
    .await
    .expect("fake starts");
    let c = client();
    let mut statuses = HashSet::new();
    for _ in 0..30 {
        let a = first_page(&c, &fake, "5").await;
        assert!([500, 502, 503].contains(&a.status), "{}", a.status);
        assert!(!a.text().contains("\"code\":8") && !a.text().contains("RESOURCE_EXHAUSTED"));
        statuses.insert(a.status);
    }
    assert_eq!(statuses.len(), 3);
    let stats = fake.stats();
    assert_eq!(stats.server_error, 30);
    assert_eq!(stats.rate_limited, 0);
    assert_eq!(fake.cooldown_until(), None);
}

#[tokio::test]
async fn veza_slow_answers_are_delayed() {
    let fake = VezaFake::start(VezaFakeConfig {
        faults: Faults {
            slow: 1.0,
            ..Faults::none()
        },
        slow_delay: Duration::from_millis(300),
        ..cfg(5)
    })
    .await
    .expect("fake starts");
    let started = Instant::now();
    let a = first_page(&client(), &fake, "5").await;
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert_eq!(a.ids().len(), 5);
    let impatient = reqwest::Client::builder()
        .timeout(Duration::from_millis(100))
        .build()
        .expect("client");
    let err = impatient
        .get(fake.endpoint())
        .query(&[("filter", EPOCH_FILTER), ("page_size", "5")])
        .bearer_auth(TOKEN)
        .send()
        .await
        .expect_err("times out");
    assert!(err.is_timeout(), "{err}");
    let stats = fake.stats();
    assert_eq!(stats.slow, 2);
    assert_eq!(stats.ok, 2);
}

async fn reset_case(rst: bool) {
    let fake = VezaFake::start(VezaFakeConfig {
        faults: Faults {
            reset: 1.0,
            ..Faults::none()
        },
        reset_with_rst: rst,
        ..cfg(50)
    })
    .await
    .expect("fake starts");
    // Through reqwest: the request fails (the body cannot be read whole).
    let result = async {
        let resp = client()
            .get(fake.endpoint())
            .query(&[("filter", EPOCH_FILTER), ("page_size", "50")])
            .bearer_auth(TOKEN)
            .send()
            .await?;
        resp.bytes().await
    }
    .await;
    assert!(result.is_err(), "rst={rst}: a cut body must fail");
    // On the wire: head with the full length, then fewer bytes, then close.
    let mut s = connect(fake.addr()).await;
    s.write_all(&get_request(
        &fake,
        "filter=persisted_at+GE+%222000-01-01T00%3A00%3A00Z%22&page_size=50",
        "",
    ))
    .await
    .expect("write");
    let got = read_to_close(&mut s).await;
    let text = String::from_utf8_lossy(&got);
    let head_end = text.find("\r\n\r\n").expect("a head arrived");
    assert!(text.starts_with("HTTP/1.1 200"));
    let length: usize = text[..head_end]
        .lines()
        .find_map(|l| l.strip_prefix("Content-Length: "))
        .expect("content-length")
        .parse()
        .expect("number");
    let body_got = got.len() - head_end - 4;
    assert!(
        body_got > 0 && body_got < length,
        "got {body_got} of {length}"
    );
    assert_eq!(fake.stats().reset, 2);
}

#[tokio::test]
async fn veza_reset_cuts_the_body_mid_way() {
    reset_case(true).await;
    reset_case(false).await;
}

#[tokio::test]
async fn veza_truncated_and_not_json_bodies() {
    let fake = VezaFake::start(VezaFakeConfig {
        faults: Faults {
            truncated: 1.0,
            ..Faults::none()
        },
        ..cfg(20)
    })
    .await
    .expect("fake starts");
    let c = client();
    let a = first_page(&c, &fake, "10").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.header("content-length"), Some(a.body.len().to_string()));
    assert!(a.body.starts_with(b"{\"values\":["));
    assert!(serde_json::from_slice::<Value>(&a.body).is_err());

    fake.set_faults(Faults {
        not_json: 1.0,
        ..Faults::none()
    });
    let a = first_page(&c, &fake, "10").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.text(), BODY_NOT_JSON);
    assert_eq!(a.header("content-type").as_deref(), Some("text/html"));
    let stats = fake.stats();
    assert_eq!((stats.truncated, stats.not_json, stats.ok), (1, 1, 0));
}

#[tokio::test]
async fn veza_duplicates_repeat_ids_but_cover_everything() {
    let fake = VezaFake::start(VezaFakeConfig {
        faults: Faults {
            duplicates: 1.0,
            ..Faults::none()
        },
        ..cfg(60)
    })
    .await
    .expect("fake starts");
    let c = client();
    let first = first_page(&c, &fake, "7").await;
    let mut all = first.ids();
    let mut first_ids = vec![all.first().cloned()];
    let mut token = first.next_token();
    let mut reached_end = false;
    for _ in 0..100 {
        let page = next_page(&c, &fake, &token, "7").await;
        let ids = page.ids();
        first_ids.push(ids.first().cloned());
        assert!(ids.len() <= 7);
        if ids.is_empty() {
            reached_end = true;
            break;
        }
        all.extend(ids);
        token = page.next_token();
    }
    assert!(reached_end);
    let unique: HashSet<&String> = all.iter().collect();
    assert_eq!(unique.len(), 60);
    assert!(all.len() > 60 + 5, "{} deliveries", all.len());
    let stats = fake.stats();
    assert!(stats.duplicates >= 5);
    // Both shapes: a page starting before the token's offset, and a token
    // that advances less than the page.
    let log_ids = fake.all_ids();
    let (mut prefix, mut overlap) = (0, 0);
    for (record, first_id) in stats.log.iter().zip(&first_ids) {
        let (Some(offset), Some(next)) = (record.offset, record.next_offset) else {
            continue;
        };
        assert!(
            next > offset || record.values == 0,
            "the token always advances"
        );
        if first_id
            .as_deref()
            .is_some_and(|id| offset < log_ids.len() && *id != log_ids[offset])
        {
            prefix += 1;
        } else if next < offset + record.values {
            overlap += 1;
        }
    }
    assert!(
        prefix > 0 && overlap > 0,
        "prefix {prefix}, overlap {overlap}"
    );
}

// ------------------------------------------------------ Veza: HTTP layer

#[tokio::test]
async fn veza_http_layer_is_robust_and_keeps_connections_alive() {
    let fake = VezaFake::start(cfg(5)).await.expect("fake starts");
    let q = "filter=persisted_at+GE+%222000-01-01T00%3A00%3A00Z%22&page_size=2";

    // Keep-alive: two requests on one connection, a body to skip in between.
    let mut s = connect(fake.addr()).await;
    s.write_all(&get_request(&fake, q, "Content-Length: 5\r\n"))
        .await
        .expect("write");
    s.write_all(b"hello").await.expect("write");
    let (status, head, body) = read_response(&mut s).await;
    assert_eq!(status, 200, "{head}");
    assert!(!head.contains("Connection: close"));
    assert!(String::from_utf8_lossy(&body).contains("req-000001"));
    s.write_all(&get_request(&fake, q, "Connection: close\r\n"))
        .await
        .expect("write");
    let (status, head, _) = read_response(&mut s).await;
    assert_eq!(status, 200);
    assert!(head.contains("Connection: close"));
    assert!(read_to_close(&mut s).await.is_empty());

    // Garbage, oversized heads, wrong paths and methods: answers, no panics.
    let cases: Vec<(Vec<u8>, u16)> = vec![
        (b"HELLO\r\n\r\n".to_vec(), 400),
        (b"GET / HTTP/9.9\r\n\r\n".to_vec(), 505),
        (b"GET /x HTTP/1.1\r\nbad header\r\n\r\n".to_vec(), 400),
        (b"GET /x HTTP/1.1\r\nContent-Length: nope\r\n\r\n".to_vec(), 400),
        (b"\xff\xfe HTTP/1.1\r\n\r\n".to_vec(), 400),
        (
            format!("GET /x HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(70 * 1024)).into_bytes(),
            431,
        ),
        (
            format!(
                "GET /api/preview/system/audit/export?{q}&page_size=3 HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .into_bytes(),
            400,
        ),
        (
            format!("GET /elsewhere?{q} HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n").into_bytes(),
            404,
        ),
        (
            format!(
                "POST /api/preview/system/audit/export?{q} HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\nContent-Length: 0\r\n\r\n"
            )
            .into_bytes(),
            405,
        ),
        (
            format!(
                "GET /api/preview/system/audit/export?filter=%zz%ff&page_size=2 HTTP/1.1\r\nAuthorization: Bearer {TOKEN}\r\n\r\n"
            )
            .into_bytes(),
            400,
        ),
    ];
    for (request, expected) in cases {
        let mut s = connect(fake.addr()).await;
        s.write_all(&request).await.expect("write");
        let (status, _, _) = read_response(&mut s).await;
        assert_eq!(
            status,
            expected,
            "{}",
            String::from_utf8_lossy(&request[..request.len().min(60)])
        );
    }
    // A client that vanishes mid-request is simply dropped.
    let mut s = connect(fake.addr()).await;
    s.write_all(b"GET /api/preview/system/audit/export HTTP/1.1\r\nHost: x")
        .await
        .expect("write");
    drop(s);
    // Still serving.
    let c = client();
    assert_eq!(first_page(&c, &fake, "2").await.ids().len(), 2);
    let stats = fake.stats();
    assert_eq!(stats.not_found, 1);
    assert_eq!(stats.bad_request, 9);
}

#[tokio::test]
async fn veza_appends_continuously_up_to_the_cap() {
    let fake = VezaFake::start(VezaFakeConfig {
        append_every: Some(Duration::from_millis(10)),
        append_batch: 4,
        total_events: 25,
        ..cfg(5)
    })
    .await
    .expect("fake starts");
    assert!(fake.wait_for_events(25, LONG).await);
    assert!(!fake.wait_for_events(26, Duration::from_millis(200)).await);
    assert_eq!(fake.event_count(), 25);
    let events = fake.events();
    assert!(events
        .windows(2)
        .all(|w| w[0].persisted_at < w[1].persisted_at));
    let ids: HashSet<String> = fake.all_ids().into_iter().collect();
    assert_eq!(ids.len(), 25);
    // Appended events are stamped about now.
    let newest = events.last().expect("events").persisted_at;
    assert!((Utc::now() - newest).num_seconds() < 5);
    // A client can walk all of them.
    let c = client();
    let page = first_page(&c, &fake, "100").await;
    assert_eq!(page.ids().len(), 25);
    assert!(fake.wait_for_requests(1, LONG).await);
}

#[tokio::test]
async fn veza_stops_when_dropped_or_shut_down() {
    let fake = VezaFake::start(cfg(1)).await.expect("fake starts");
    let addr = fake.addr();
    let mut held = connect(addr).await;
    fake.shutdown().await;
    assert!(TcpStream::connect(addr).await.is_err(), "listener closed");
    assert!(
        read_to_close(&mut held).await.is_empty(),
        "open connection closed"
    );

    let fake = VezaFake::start(VezaFakeConfig {
        append_every: Some(Duration::from_millis(5)),
        ..cfg(1)
    })
    .await
    .expect("fake starts");
    let addr = fake.addr();
    drop(fake);
    // Aborted tasks are dropped at the runtime's next turn.
    let mut closed = false;
    for _ in 0..1000 {
        tokio::task::yield_now().await;
        if TcpStream::connect(addr).await.is_err() {
            closed = true;
            break;
        }
    }
    assert!(closed, "listener closed after drop");
}

// ------------------------------------------------------------- Webhook

async fn post(c: &reqwest::Client, url: &str, body: Vec<u8>, headers: &[(&str, &str)]) -> Answer {
    let mut req = c.post(url).body(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request sent");
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.bytes().await.expect("body").to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut enc = GzEncoder::new(Vec::new(), Compression::default());
    enc.write_all(data).expect("gzip");
    enc.finish().expect("gzip")
}

fn events_json<S: AsRef<str>>(ids: &[S]) -> Vec<u8> {
    let events: Vec<Value> = ids
        .iter()
        .map(|id| serde_json::json!({"request_id": id.as_ref(), "msg": "ünï \"q\" \\ \n"}))
        .collect();
    serde_json::to_vec(&events).expect("JSON")
}

#[tokio::test]
async fn webhook_records_arrays_ndjson_and_single_objects() {
    let rx = WebhookReceiver::start(WebhookConfig::default())
        .await
        .expect("receiver starts");
    let c = client();
    let a = post(
        &c,
        &rx.url_for("/hook/a"),
        events_json(&["a1", "a2", "a3"]),
        &[("X-Test", "one")],
    )
    .await;
    assert_eq!(a.status, 200, "{}", a.text());
    assert_eq!(a.json()["accepted"], 3);
    assert_eq!(rx.last_path().as_deref(), Some("/hook/a"));
    assert_eq!(rx.last_header("x-test").as_deref(), Some("one"));
    let ndjson = b"{\"request_id\":\"n1\",\"x\":1}\r\n\n{\"id\":42}\n{\"no_id\":true}\n".to_vec();
    assert_eq!(
        post(
            &c,
            &rx.url(),
            ndjson,
            &[("Content-Type", "application/x-ndjson")]
        )
        .await
        .status,
        200
    );
    let single = br#" {"request_id":"s1","nested":{"k":[1,2]}} "#.to_vec();
    assert_eq!(post(&c, &rx.url_for("x"), single, &[]).await.status, 200);
    assert_eq!(
        post(&c, &rx.url(), events_json(&["a1"]), &[]).await.status,
        200
    );
    assert_eq!(post(&c, &rx.url(), b"[]".to_vec(), &[]).await.status, 200);

    assert_eq!(rx.unique_ids(), vec!["a1", "a2", "a3", "n1", "42", "s1"]);
    assert_eq!(rx.count_of("a1"), 2);
    assert_eq!(rx.counts().get("42"), Some(&1));
    let events = rx.events();
    assert_eq!(events.len(), 8);
    assert_eq!(events[0]["msg"], "ünï \"q\" \\ \n");
    assert_eq!(
        rx.raw_events()[6],
        r#"{"request_id":"s1","nested":{"k":[1,2]}}"#
    );
    let stats = rx.stats();
    assert_eq!(stats.requests, 5);
    assert_eq!(stats.accepted_requests, 5);
    assert_eq!(stats.events_recorded, 8);
    assert_eq!(stats.unique_ids, 6);
    assert_eq!(stats.duplicate_events, 1);
    assert_eq!(stats.events_without_id, 1);
    assert_eq!(stats.by_status.get(&200), Some(&5));
}

#[tokio::test]
async fn webhook_id_field_is_configurable() {
    let rx = WebhookReceiver::start(WebhookConfig {
        id_field: "event.uid".into(),
        ..Default::default()
    })
    .await
    .expect("receiver starts");
    let body = br#"[{"event":{"uid":"u1"}},{"id":"fallback"},{"request_id":"ignored"}]"#.to_vec();
    assert_eq!(post(&client(), &rx.url(), body, &[]).await.status, 200);
    assert_eq!(rx.unique_ids(), vec!["u1", "fallback"]);
    assert_eq!(rx.stats().events_without_id, 1);
}

#[tokio::test]
async fn webhook_decodes_gzip() {
    let rx = WebhookReceiver::start(WebhookConfig::default())
        .await
        .expect("receiver starts");
    let c = client();
    let body = gzip(b"{\"request_id\":\"g1\"}\n{\"request_id\":\"g2\"}\n");
    assert_eq!(
        post(&c, &rx.url(), body, &[("Content-Encoding", "gzip")])
            .await
            .status,
        200
    );
    assert_eq!(rx.unique_ids(), vec!["g1", "g2"]);
    assert_eq!(rx.last_header("content-encoding").as_deref(), Some("gzip"));
    let a = post(
        &c,
        &rx.url(),
        b"not gzip at all".to_vec(),
        &[("Content-Encoding", "gzip")],
    )
    .await;
    assert_eq!(a.status, 400);
    let a = post(
        &c,
        &rx.url(),
        events_json(&["b1"]),
        &[("Content-Encoding", "br")],
    )
    .await;
    assert_eq!(a.status, 415);
    // gzip of something that is not JSON.
    let a = post(
        &c,
        &rx.url(),
        gzip(b"{nope"),
        &[("Content-Encoding", "gzip")],
    )
    .await;
    assert_eq!(a.status, 400);
    assert_eq!(rx.unique_count(), 2);
    assert_eq!(rx.stats().bad_requests, 3);
}

#[tokio::test]
async fn webhook_checks_authorization() {
    let rx = WebhookReceiver::start(WebhookConfig {
        expect_authorization: Some("Bearer s3cret".into()),
        ..Default::default()
    })
    .await
    .expect("receiver starts");
    let c = client();
    assert_eq!(
        post(&c, &rx.url(), events_json(&["x"]), &[]).await.status,
        401
    );
    let wrong = post(
        &c,
        &rx.url(),
        events_json(&["x"]),
        &[("Authorization", "Bearer nope")],
    )
    .await;
    assert_eq!(wrong.status, 401);
    assert_eq!(rx.unique_count(), 0);
    let right = post(
        &c,
        &rx.url(),
        events_json(&["x"]),
        &[("Authorization", "Bearer s3cret")],
    )
    .await;
    assert_eq!(right.status, 200);
    assert_eq!(rx.unique_ids(), vec!["x"]);
    assert_eq!(rx.stats().auth_failures, 2);
    assert_eq!(rx.stats().by_status.get(&401), Some(&2));

    let basic = WebhookReceiver::start(WebhookConfig {
        expect_authorization: Some("Basic dXNlcjpwYXNz".into()),
        ..Default::default()
    })
    .await
    .expect("receiver starts");
    let resp = c
        .post(basic.url())
        .basic_auth("user", Some("pass"))
        .body(events_json(&["b"]))
        .send()
        .await
        .expect("sent");
    assert_eq!(resp.status().as_u16(), 200);
}

#[tokio::test]
async fn webhook_verifies_hmac_over_the_bytes_sent() {
    let secret = b"hmac-secret".to_vec();
    let rx = WebhookReceiver::start(WebhookConfig {
        hmac_secret: Some(secret.clone()),
        ..Default::default()
    })
    .await
    .expect("receiver starts");
    let c = client();
    let plain = events_json(&["h1"]);
    let sig = signature(&secret, &plain);
    assert!(sig.starts_with("sha256=") && sig.len() == 7 + 64);
    assert_eq!(sig, sig.to_lowercase());
    let ok = post(
        &c,
        &rx.url(),
        plain.clone(),
        &[("X-Auditrelay-Signature", sig.as_str())],
    )
    .await;
    assert_eq!(ok.status, 200);
    // gzip: signed over the compressed bytes.
    let zipped = gzip(&events_json(&["h2"]));
    let zsig = signature(&secret, &zipped);
    let ok = post(
        &c,
        &rx.url(),
        zipped.clone(),
        &[
            ("Content-Encoding", "gzip"),
            ("x-auditrelay-signature", zsig.as_str()),
        ],
    )
    .await;
    assert_eq!(ok.status, 200);
    // Failures: signature of the decoded body, upper-case hex, wrong secret,
    // missing header, tampered body.
    let decoded_sig = signature(&secret, &events_json(&["h3"]));
    let zipped3 = gzip(&events_json(&["h3"]));
    let upper = format!("sha256={}", signature(&secret, &plain)[7..].to_uppercase());
    let other = signature(b"other", &plain);
    type Case<'a> = (Vec<u8>, Vec<(&'a str, &'a str)>);
    let failures: Vec<Case> = vec![
        (
            zipped3,
            vec![
                ("Content-Encoding", "gzip"),
                ("X-Auditrelay-Signature", decoded_sig.as_str()),
            ],
        ),
        (
            plain.clone(),
            vec![("X-Auditrelay-Signature", upper.as_str())],
        ),
        (
            plain.clone(),
            vec![("X-Auditrelay-Signature", other.as_str())],
        ),
        (plain.clone(), vec![]),
        (
            events_json(&["tampered"]),
            vec![("X-Auditrelay-Signature", sig.as_str())],
        ),
    ];
    for (body, headers) in failures {
        assert_eq!(post(&c, &rx.url(), body, &headers).await.status, 401);
    }
    assert_eq!(rx.unique_ids(), vec!["h1", "h2"]);
    assert_eq!(rx.stats().hmac_failures, 5);

    // Custom header name.
    let custom = WebhookReceiver::start(WebhookConfig {
        hmac_secret: Some(secret.clone()),
        hmac_header: "X-Signature-256".into(),
        ..Default::default()
    })
    .await
    .expect("receiver starts");
    assert_eq!(
        post(
            &c,
            &custom.url(),
            plain.clone(),
            &[("X-Auditrelay-Signature", sig.as_str())]
        )
        .await
        .status,
        401
    );
    assert_eq!(
        post(
            &c,
            &custom.url(),
            plain,
            &[("X-Signature-256", sig.as_str())]
        )
        .await
        .status,
        200
    );
}

#[tokio::test]
async fn webhook_injected_errors_record_nothing() {
    let rx = WebhookReceiver::start(WebhookConfig {
        retry_after_secs: 7,
        faults: WebhookFaults {
            server_error: 1.0,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .expect("receiver starts");
    let c = client();
    let mut statuses = HashSet::new();
    for i in 0..20 {
        let a = post(&c, &rx.url(), events_json(&[format!("e{i}")]), &[]).await;
        statuses.insert(a.status);
    }
    assert_eq!(statuses, [500, 503].into());
    rx.set_faults(WebhookFaults {
        rate_limit: 1.0,
        ..Default::default()
    });
    let a = post(&c, &rx.url(), events_json(&["r"]), &[]).await;
    assert_eq!(a.status, 429);
    assert_eq!(a.header("retry-after").as_deref(), Some("7"));
    assert_eq!(rx.unique_count(), 0);
    assert!(rx.events().is_empty());
    let stats = rx.stats();
    assert_eq!(stats.server_errors, 20);
    assert_eq!(stats.rate_limited, 1);
    assert_eq!(stats.by_status.values().sum::<u64>(), 21);
    assert_eq!(stats.accepted_requests, 0);
    // Partial probabilities: some of each, deterministic for a seed.
    rx.set_faults(WebhookFaults {
        server_error: 0.3,
        rate_limit: 0.3,
        ..Default::default()
    });
    let mut ok = 0;
    for i in 0..50 {
        if post(&c, &rx.url(), events_json(&[format!("p{i}")]), &[])
            .await
            .status
            == 200
        {
            ok += 1;
        }
    }
    assert!(ok > 5 && ok < 45, "{ok}");
    assert_eq!(rx.unique_count(), ok);
}

#[tokio::test]
async fn webhook_too_large_and_rejected_ids() {
    let rx = WebhookReceiver::start(WebhookConfig {
        faults: WebhookFaults {
            too_large_over: Some(3),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .expect("receiver starts");
    let c = client();
    assert_eq!(
        post(&c, &rx.url(), events_json(&["1", "2", "3", "4"]), &[])
            .await
            .status,
        413
    );
    assert_eq!(rx.unique_count(), 0);
    assert_eq!(
        post(&c, &rx.url(), events_json(&["1", "2", "3"]), &[])
            .await
            .status,
        200
    );
    rx.set_too_large_over(None);
    rx.set_reject_ids(["poison"]);
    assert_eq!(
        post(&c, &rx.url(), events_json(&["4", "poison", "5"]), &[])
            .await
            .status,
        400
    );
    assert_eq!(rx.unique_count(), 3);
    // A sender that splits the batch isolates the poison event.
    assert_eq!(
        post(&c, &rx.url(), events_json(&["4"]), &[]).await.status,
        200
    );
    assert_eq!(
        post(&c, &rx.url(), events_json(&["poison"]), &[])
            .await
            .status,
        400
    );
    assert_eq!(
        post(&c, &rx.url(), events_json(&["5"]), &[]).await.status,
        200
    );
    assert_eq!(rx.unique_ids(), vec!["1", "2", "3", "4", "5"]);
    let stats = rx.stats();
    assert_eq!((stats.too_large, stats.rejected_ids), (1, 2));
    assert_eq!(rx.faults().reject_ids.len(), 1);
}

#[tokio::test]
async fn webhook_outages_down_stop_and_restart_on_the_same_port() {
    let rx = WebhookReceiver::start(WebhookConfig::default())
        .await
        .expect("receiver starts");
    let c = client();
    assert_eq!(
        post(&c, &rx.url(), events_json(&["before"]), &[])
            .await
            .status,
        200
    );
    rx.set_down(true);
    assert_eq!(
        post(&c, &rx.url(), events_json(&["down"]), &[])
            .await
            .status,
        503
    );
    rx.set_down(false);
    assert_eq!(rx.stats().down, 1);

    let port = rx.port();
    rx.stop().await;
    assert!(!rx.is_listening());
    // The pooled connection is gone too: the request cannot be delivered.
    let err = c
        .post(rx.url())
        .body(events_json(&["during"]))
        .send()
        .await
        .expect_err("nothing listens");
    assert!(err.is_connect() || err.is_request(), "{err}");
    assert!(TcpStream::connect(("127.0.0.1", port)).await.is_err());

    rx.restart().await.expect("restarts on the same port");
    assert_eq!(rx.port(), port);
    rx.restart()
        .await
        .expect("restart while listening is a no-op");
    assert_eq!(
        post(&c, &rx.url(), events_json(&["after"]), &[])
            .await
            .status,
        200
    );
    assert_eq!(rx.unique_ids(), vec!["before", "after"]);
    assert_eq!(rx.stats().by_status.get(&503), Some(&1));
}

#[tokio::test]
async fn webhook_wait_for_unique_wakes_on_arrival() {
    let rx = WebhookReceiver::start(WebhookConfig::default())
        .await
        .expect("receiver starts");
    assert!(!rx.wait_for_unique(1, Duration::from_millis(50)).await);
    let url = rx.url();
    let sender = tokio::spawn(async move {
        let c = client();
        for i in 0..10 {
            // Each id twice, in separate requests.
            for _ in 0..2 {
                post(&c, &url, events_json(&[format!("w{i}")]), &[]).await;
            }
        }
    });
    assert!(rx.wait_for_unique(10, LONG).await);
    assert!(rx.wait_for_requests(20, LONG).await);
    sender.await.expect("sender done");
    assert!(!rx.wait_for_unique(11, Duration::from_millis(100)).await);
    assert_eq!(rx.stats().duplicate_events, 10);
    rx.clear_records();
    assert_eq!(rx.unique_count(), 0);
}

#[tokio::test]
async fn webhook_malformed_requests_get_4xx_and_chunked_bodies_work() {
    let rx = WebhookReceiver::start(WebhookConfig {
        max_body_bytes: 1024,
        ..Default::default()
    })
    .await
    .expect("receiver starts");
    let c = client();
    assert_eq!(
        c.get(rx.url())
            .send()
            .await
            .expect("sent")
            .status()
            .as_u16(),
        405
    );
    assert_eq!(
        post(&c, &rx.url(), b"{nope".to_vec(), &[]).await.status,
        400
    );
    assert_eq!(
        post(&c, &rx.url(), b"[1,2]".to_vec(), &[]).await.status,
        400
    );
    assert_eq!(
        post(&c, &rx.url(), b"{\"a\":1}\n{bad".to_vec(), &[])
            .await
            .status,
        400
    );
    assert_eq!(post(&c, &rx.url(), Vec::new(), &[]).await.status, 400);
    assert_eq!(post(&c, &rx.url(), vec![b' '; 2048], &[]).await.status, 413);
    // gzip bombs are bounded by the decoded size too.
    let bomb = gzip(&vec![b' '; 64 * 1024]);
    assert_eq!(
        post(&c, &rx.url(), bomb, &[("Content-Encoding", "gzip")])
            .await
            .status,
        413
    );

    let addr: SocketAddr = ([127, 0, 0, 1], rx.port()).into();
    let payload = br#"[{"id":"c1"},{"id":"c2"}]"#;
    let mut request =
        b"POST /chunked HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n".to_vec();
    for (i, piece) in payload.chunks(7).enumerate() {
        let ext = if i == 1 { ";ext=1" } else { "" };
        request.extend_from_slice(format!("{:x}{ext}\r\n", piece.len()).as_bytes());
        request.extend_from_slice(piece);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\nX-Trailer: y\r\n\r\n");
    let mut s = connect(addr).await;
    s.write_all(&request).await.expect("write");
    let (status, _, body) = read_response(&mut s).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
    assert_eq!(rx.unique_ids(), vec!["c1", "c2"]);
    let mut s = connect(addr).await;
    s.write_all(b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .await
        .expect("write");
    assert_eq!(read_response(&mut s).await.0, 400);
    let mut s = connect(addr).await;
    s.write_all(b"garbage\r\n\r\n").await.expect("write");
    assert_eq!(read_response(&mut s).await.0, 400);
    assert_eq!(rx.stats().by_status.get(&200), Some(&1));
    assert_eq!(rx.stats().bad_requests, 9);
}

// ---- Splunk HEC fake ----

use support::hec_fake::{HecFake, HecFakeConfig, HecFaults};

const HEC_TOKEN: &str = "11111111-2222-3333-4444-555555555555";
const CHANNEL: &str = "0aa1b2c3-d4e5-4f60-8a7b-9c0d1e2f3a4b";

/// POSTs `body` to `path` of the HEC fake with extra headers; (status, JSON).
async fn hec_post(
    fake: &HecFake,
    path: &str,
    body: &[u8],
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = client()
        .post(format!("{}{path}", fake.url()))
        .body(body.to_vec());
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("HEC fake answers");
    let status = resp.status().as_u16();
    let text = resp.text().await.expect("body");
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::String(text)),
    )
}

fn splunk_auth() -> String {
    format!("Splunk {HEC_TOKEN}")
}

#[tokio::test]
async fn hec_checks_tokens_like_splunk() {
    let fake = HecFake::start(HecFakeConfig {
        token: HEC_TOKEN.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let body = br#"{"event":{"request_id":"a"}}"#;
    let ev = "/services/collector/event";
    assert_eq!(hec_post(&fake, ev, body, &[]).await.1["code"], 2);
    let (status, v) = hec_post(&fake, ev, body, &[("Authorization", "Bearer x")]).await;
    assert_eq!((status, v["code"].as_i64()), (401, Some(3)));
    let (status, v) = hec_post(&fake, ev, body, &[("Authorization", "Splunk nope")]).await;
    assert_eq!((status, v["text"].as_str()), (403, Some("Invalid token")));
    let (status, v) = hec_post(&fake, &format!("{ev}?token={HEC_TOKEN}"), body, &[]).await;
    assert_eq!((status, v["code"].as_i64()), (400, Some(16)));
    fake.set_token_disabled(true);
    let (status, v) = hec_post(&fake, ev, body, &[("Authorization", &splunk_auth())]).await;
    assert_eq!((status, v["code"].as_i64()), (403, Some(1)));
    fake.set_token_disabled(false);
    let (status, v) = hec_post(&fake, ev, body, &[("Authorization", &splunk_auth())]).await;
    assert_eq!(
        (status, v),
        (200, serde_json::json!({"text":"Success","code":0}))
    );
    assert_eq!(fake.unique_ids(), vec!["a"]);
    assert_eq!(fake.stats().auth_failures, 5);
}

#[tokio::test]
async fn hec_parses_concatenated_json_and_gzip_and_rejects_like_splunk() {
    let fake = HecFake::start(HecFakeConfig {
        token: HEC_TOKEN.into(),
        allowed_indexes: Some(vec!["main".into()]),
        max_content_length: 2000,
        ..Default::default()
    })
    .await
    .unwrap();
    let auth = splunk_auth();
    let a = [("Authorization", auth.as_str())];
    let ev = "/services/collector/event";
    // No separator, whitespace separators, gzip.
    let body = br#"{"time":1.5,"index":"main","event":{"request_id":"a"}}{"event":{"request_id":"b"},"fields":{"u":"x","l":["y"]}}
  {"time":"2.25","event":"text c"}"#;
    let gz = gzip(body);
    let (status, v) = hec_post(&fake, ev, &gz, &[a[0], ("Content-Encoding", "gzip")]).await;
    assert_eq!((status, v["code"].as_i64()), (200, Some(0)), "{v}");
    assert_eq!(fake.unique_ids(), vec!["a", "b"]);
    let indexed = fake.indexed();
    assert_eq!(indexed.len(), 3);
    assert_eq!(indexed[0].envelope["time"], 1.5);
    assert_eq!(indexed[0].event_raw, r#"{"request_id":"a"}"#);
    assert_eq!(indexed[1].envelope["fields"]["l"][0], "y");
    assert_eq!(indexed[2].event_raw, r#""text c""#);
    assert_eq!(fake.stats().gzip_requests, 1);

    // The first bad object stops the request; those before it are indexed.
    let cases: [(&[u8], i64, &str, usize); 7] = [
        (
            br#"{"event":{"request_id":"c"}}{"event":{"x":}}{"event":1}"#,
            6,
            "Invalid data format",
            1,
        ),
        (
            br#"{"event":{"request_id":"d"}}{"time":1}"#,
            12,
            "Event field is required",
            1,
        ),
        (br#"{"event":""}"#, 13, "Event field cannot be blank", 0),
        (br#"{"time":"soon","event":1}"#, 6, "Invalid data format", 0),
        (br#"{"index":"other","event":1}"#, 7, "Incorrect index", 0),
        (
            br#"{"fields":{"u":{"nested":1}},"event":1}"#,
            15,
            "Error in handling indexed fields",
            0,
        ),
        (br#"[{"event":1}]"#, 6, "Invalid data format", 0),
    ];
    for (body, code, text, n) in cases {
        let (status, v) = hec_post(&fake, ev, body, &a).await;
        assert_eq!(status, 400, "{v}");
        assert_eq!(v["code"], code, "{v}");
        assert_eq!(v["text"], text, "{v}");
        assert_eq!(v["invalid-event-number"], n, "{v}");
    }
    assert_eq!(fake.unique_ids(), vec!["a", "b", "c", "d"]);
    let (status, v) = hec_post(&fake, ev, b"  ", &a).await;
    assert_eq!((status, v["code"].as_i64()), (400, Some(5)));
    let (status, _) = hec_post(&fake, ev, &vec![b' '; 2001], &a).await;
    assert_eq!(status, 413);
    fake.set_reject_ids(["e"]);
    let (_, v) = hec_post(&fake, ev, br#"{"event":{"request_id":"e"}}"#, &a).await;
    assert_eq!(v["code"], 6);
    let (status, v) = hec_post(&fake, "/services/collector/raw", b"x", &a).await;
    assert_eq!((status, v["code"].as_i64()), (404, Some(404)));
}

#[tokio::test]
async fn hec_channels_and_acks_read_true_once_and_lost_batches_never() {
    let fake = HecFake::start(HecFakeConfig {
        token: HEC_TOKEN.into(),
        ack: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let auth = splunk_auth();
    let ev = "/services/collector/event";
    let body = br#"{"event":{"request_id":"a"}}"#;
    let (status, v) = hec_post(&fake, ev, body, &[("Authorization", &auth)]).await;
    assert_eq!((status, v["code"].as_i64()), (400, Some(10)));
    let bad = [
        ("Authorization", auth.as_str()),
        ("X-Splunk-Request-Channel", "nope"),
    ];
    assert_eq!(hec_post(&fake, ev, body, &bad).await.1["code"], 11);
    let h = [
        ("Authorization", auth.as_str()),
        ("X-Splunk-Request-Channel", CHANNEL),
    ];
    let (_, v) = hec_post(&fake, ev, body, &h).await;
    assert_eq!(v, serde_json::json!({"text":"Success","code":0,"ackId":0}));
    // The channel may come as a query parameter too.
    let (_, v) = hec_post(
        &fake,
        &format!("{ev}?channel={CHANNEL}"),
        br#"{"event":{"request_id":"b"}}"#,
        &[("Authorization", &auth)],
    )
    .await;
    assert_eq!(v["ackId"], 1);
    let ack = "/services/collector/ack";
    let (_, v) = hec_post(&fake, ack, br#"{"acks":[0,1,7]}"#, &h).await;
    assert_eq!(v, serde_json::json!({"acks":{"0":true,"1":true,"7":false}}));
    let (_, v) = hec_post(&fake, ack, br#"{"acks":[0,1]}"#, &h).await;
    assert_eq!(
        v,
        serde_json::json!({"acks":{"0":false,"1":false}}),
        "true only once"
    );
    assert_eq!(hec_post(&fake, ack, b"{}", &h).await.1["code"], 6);

    // Late acks: false until the delay passed; held acks: false until released.
    fake.set_faults(HecFaults {
        ack_delay: Duration::from_millis(300),
        hold_acks: true,
        ..Default::default()
    });
    let (_, v) = hec_post(&fake, ev, br#"{"event":{"request_id":"c"}}"#, &h).await;
    assert_eq!(v["ackId"], 2);
    let (_, v) = hec_post(&fake, ack, br#"{"acks":[2]}"#, &h).await;
    assert_eq!(v["acks"]["2"], false);
    tokio::time::sleep(Duration::from_millis(350)).await;
    assert_eq!(
        hec_post(&fake, ack, br#"{"acks":[2]}"#, &h).await.1["acks"]["2"],
        false
    );
    fake.set_hold_acks(false);
    assert_eq!(
        hec_post(&fake, ack, br#"{"acks":[2]}"#, &h).await.1["acks"]["2"],
        true
    );

    // A lost batch: accepted with an ackId, never indexed, never acked.
    fake.set_faults(HecFaults {
        lose: 1.0,
        ..Default::default()
    });
    let (_, v) = hec_post(&fake, ev, br#"{"event":{"request_id":"lost"}}"#, &h).await;
    assert_eq!(v["ackId"], 3);
    assert_eq!(
        hec_post(&fake, ack, br#"{"acks":[3]}"#, &h).await.1["acks"]["3"],
        false
    );
    assert_eq!(fake.unique_ids(), vec!["a", "b", "c"]);
    let stats = fake.stats();
    assert_eq!((stats.lost_requests, stats.lost_events), (1, 1));
    assert_eq!(fake.pending_acks(), 1);

    // Acks per channel; acknowledgment off on the token: code 14.
    let other = [
        ("Authorization", auth.as_str()),
        (
            "X-Splunk-Request-Channel",
            "ffffffff-0000-4000-8000-000000000000",
        ),
    ];
    fake.set_faults(HecFaults::default());
    assert_eq!(hec_post(&fake, ev, body, &other).await.1["ackId"], 0);
    fake.set_ack(false);
    let (status, v) = hec_post(&fake, ack, br#"{"acks":[0]}"#, &h).await;
    assert_eq!((status, v["code"].as_i64()), (400, Some(14)));
    assert_eq!(
        hec_post(&fake, ev, body, &[("Authorization", &auth)])
            .await
            .1,
        serde_json::json!({"text":"Success","code":0})
    );
}

#[tokio::test]
async fn hec_health_busy_and_rate_limits() {
    let fake = HecFake::start(HecFakeConfig {
        token: HEC_TOKEN.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let health = client()
        .get(format!("{}/services/collector/health", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 200);
    assert_eq!(
        serde_json::from_str::<Value>(&health.text().await.unwrap()).unwrap()["code"],
        17
    );
    fake.set_unhealthy(true);
    let health = client()
        .get(format!("{}/services/collector/health/1.0", fake.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status().as_u16(), 503);
    assert_eq!(
        serde_json::from_str::<Value>(&health.text().await.unwrap()).unwrap()["code"],
        18
    );

    let auth = splunk_auth();
    let a = [("Authorization", auth.as_str())];
    let ev = "/services/collector/event";
    fake.set_faults(HecFaults {
        busy: 1.0,
        ..Default::default()
    });
    let (status, v) = hec_post(&fake, ev, br#"{"event":1}"#, &a).await;
    assert_eq!((status, v["code"].as_i64()), (503, Some(9)));
    fake.set_faults(HecFaults {
        rate_limit: 1.0,
        retry_after_secs: 2,
        ..Default::default()
    });
    let resp = client()
        .post(format!("{}{ev}", fake.url()))
        .header("Authorization", &auth)
        .body(r#"{"event":1}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 429);
    assert_eq!(resp.headers()["retry-after"], "2");
    fake.set_faults(HecFaults::default());
    let (status, _) = hec_post(&fake, ev, br#"{"event":1}"#, &a).await;
    assert_eq!(status, 200);
    let stats = fake.stats();
    assert_eq!(
        (stats.busy, stats.rate_limited, stats.early_retries),
        (1, 1, 1)
    );
    assert_eq!(stats.by_code.get(&9), Some(&1));
    assert_eq!(stats.health_checks, 2);
}
