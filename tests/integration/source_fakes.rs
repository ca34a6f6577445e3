//! Exercises the fakes of the QuickZTNA, CertifyClouds and generic pull APIs
//! directly over loopback, so the end-to-end tests can trust them.

use crate::support;

use std::time::Duration;

use chrono::Utc;
use serde_json::{json, Value};
use support::certifyclouds_fake::{CertifycloudsFake, CertifycloudsFakeConfig};
use support::pull_fake::{PullFake, PullFakeConfig, PullMode};
use support::quickztna_fake::{js_parse_int, QuickztnaFake, QuickztnaFakeConfig, CSV_HEADER};
use support::redirect::{Redirect, LOGIN_PATH, MOVED_PREFIX};
use support::veza_list_fake::VezaListFake;

async fn post_json(url: &str, token: &str, body: Value) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .post(url)
        .bearer_auth(token)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

async fn get_json(url: &str, token: &str) -> (u16, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let body = resp.bytes().await.unwrap_or_default();
    (status, serde_json::from_slice(&body).unwrap_or(Value::Null))
}

/// One request, redirects not followed: (status, Location, JSON body).
async fn get_unfollowed(url: &str, token: &str) -> (u16, Option<String>, Value) {
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .expect("client");
    let resp = client
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let status = resp.status().as_u16();
    let location = resp
        .headers()
        .get("location")
        .and_then(|l| l.to_str().ok())
        .map(str::to_string);
    let body = resp.bytes().await.unwrap_or_default();
    (
        status,
        location,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

// ------------------------------------------------------- the paged core

/// Every paged fake can answer from behind a redirect: a moved endpoint
/// (its new place serves as usual) or an SSO proxy (a login page
/// answering 200 HTML to anything); turned off, it serves directly again.
#[tokio::test]
async fn paged_fakes_redirect_to_a_moved_endpoint_or_a_login_page() {
    let fake = CertifycloudsFake::start(CertifycloudsFakeConfig::default())
        .await
        .unwrap();
    let now = Utc::now();
    fake.add_spread(3, now - chrono::Duration::hours(2), now);
    let path = "/audit/entries?limit=10";
    let url = format!("{}{path}", fake.url());

    fake.set_redirect(Some(Redirect::Moved(308)));
    let (status, location, _) = get_unfollowed(&url, "cc-token").await;
    assert_eq!(status, 308);
    let location = location.expect("Location");
    assert_eq!(location, format!("{MOVED_PREFIX}{path}"));
    let (status, _, v) = get_unfollowed(&format!("{}{location}", fake.url()), "cc-token").await;
    assert_eq!(status, 200, "the moved endpoint serves");
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(3));

    fake.set_redirect(Some(Redirect::LoginPage(302)));
    let (status, location, _) = get_unfollowed(&url, "cc-token").await;
    assert_eq!(status, 302);
    let location = location.expect("Location");
    assert!(location.starts_with(LOGIN_PATH), "{location}");
    let (status, _, v) = get_unfollowed(&format!("{}{location}", fake.url()), "").await;
    assert_eq!(status, 200, "the login page answers anyone");
    assert_eq!(v, Value::Null, "with HTML");
    assert_eq!(fake.redirects(), 2);
    assert_eq!(
        fake.stats().requests,
        1,
        "only the moved request reached the API"
    );

    fake.set_redirect(None);
    let (status, _, v) = get_unfollowed(&url, "cc-token").await;
    assert_eq!(status, 200);
    assert_eq!(v["entries"].as_array().map(Vec::len), Some(3));
    let (status, _, _) =
        get_unfollowed(&format!("{}{MOVED_PREFIX}{path}", fake.url()), "cc-token").await;
    assert_eq!(
        status, 404,
        "without a redirect nothing lives under the moved prefix"
    );
    assert!(
        fake.wait_for_requests(6, Duration::from_secs(1)).await,
        "redirected requests count as answered"
    );
}

// ---------------------------------------------------------------- QuickZTNA

#[test]
fn quickztna_days_are_read_like_javascript_parse_int() {
    let p = |v: Value| js_parse_int(Some(&v));
    assert_eq!(p(json!(7)), Some(7));
    assert_eq!(p(json!("7")), Some(7));
    assert_eq!(p(json!(7.9)), Some(7));
    assert_eq!(p(json!("  12days")), Some(12));
    assert_eq!(p(json!("0x10")), Some(16));
    assert_eq!(p(json!("-3")), Some(-3));
    assert_eq!(p(json!("1e3")), Some(1));
    assert_eq!(p(json!([5])), Some(5));
    assert_eq!(p(json!("abc")), None);
    assert_eq!(p(json!("")), None);
    assert_eq!(p(json!(null)), None);
    assert_eq!(p(json!(true)), None);
    assert_eq!(p(json!({"d": 1})), None);
    assert_eq!(js_parse_int(None), None);
}

#[tokio::test]
async fn quickztna_export_window_follows_days_and_defaults_to_30() {
    let fake = QuickztnaFake::start(QuickztnaFakeConfig::default())
        .await
        .unwrap();
    let now = Utc::now();
    let day = chrono::Duration::days(1);
    fake.add_spread(1, now - chrono::Duration::hours(2), now);
    fake.add_spread(1, now - day * 5, now);
    fake.add_spread(1, now - day * 20, now);
    fake.add_spread(1, now - day * 40, now);
    let url = format!("{}/api/export", fake.url());
    let org = fake.org_id();
    let count = |v: &Value| v["data"]["count"].as_u64().unwrap();
    let cases = [
        (json!(1), 1, 1),
        (json!("7"), 7, 2),
        (json!("abc"), 30, 3),
        (Value::Null, 30, 3),
        (json!(90), 90, 4),
        (json!(7.9), 7, 2),
    ];
    for (days, understood, n) in cases {
        let mut body = json!({"action": "audit_logs", "org_id": org});
        if !days.is_null() {
            body["days"] = days.clone();
        }
        let (status, v) = post_json(&url, "qz-admin-token", body).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["success"], true);
        assert_eq!(count(&v), n, "days = {days}");
        assert_eq!(v["data"]["logs"].as_array().unwrap().len() as u64, n);
        assert_eq!(*fake.stats().days.last().unwrap(), understood);
    }
    // Newest first, every field present.
    let (_, v) = post_json(
        &url,
        "qz-admin-token",
        json!({"action": "audit_logs", "org_id": org, "days": 90}),
    )
    .await;
    let logs = v["data"]["logs"].as_array().unwrap();
    let times: Vec<&str> = logs
        .iter()
        .map(|l| l["created_at"].as_str().unwrap())
        .collect();
    let mut sorted = times.clone();
    sorted.sort_by(|a, b| b.cmp(a));
    assert_eq!(times, sorted);
    for key in [
        "id",
        "action",
        "resource_type",
        "resource_id",
        "user_id",
        "created_at",
        "details",
    ] {
        assert!(logs[0].get(key).is_some(), "{key} missing");
    }
}

#[tokio::test]
async fn quickztna_export_needs_an_admin_and_caps_at_10000() {
    let fake = QuickztnaFake::start(QuickztnaFakeConfig::default())
        .await
        .unwrap();
    let now = Utc::now();
    let ids = fake.add_spread(10_050, now - chrono::Duration::hours(3), now);
    let url = format!("{}/api/export", fake.url());
    let body = json!({"action": "audit_logs", "org_id": fake.org_id(), "days": 1});
    let (status, v) = post_json(&url, "qz-member-token", body.clone()).await;
    assert_eq!(status, 403);
    assert_eq!(v["error"]["code"], "FORBIDDEN");
    assert_eq!(v["error"]["message"], "Admin required");
    let (status, _) = post_json(&url, "nope", body.clone()).await;
    assert_eq!(status, 401);
    let (status, v) = post_json(&url, "qz-admin-token", body).await;
    assert_eq!(status, 200);
    let logs = v["data"]["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 10_000);
    assert_eq!(v["data"]["count"], 10_000);
    // The newest 10000: the 50 oldest are cut.
    assert_eq!(logs[0]["id"], ids[10_049].as_str());
    assert_eq!(logs[9_999]["id"], ids[50].as_str());
    assert_eq!(fake.stats().capped, 1);
    // Members may read the audit query; it clamps limit to 5000.
    let (status, v) = get_json(
        &format!(
            "{}/api/audit?org_id={}&mode=recent&limit=9000",
            fake.url(),
            fake.org_id()
        ),
        "qz-member-token",
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(v["data"]["logs"].as_array().unwrap().len(), 5000);
    assert!(fake.wait_for_requests(4, Duration::from_secs(1)).await);
    assert_eq!(fake.stats().forbidden, 1);
    assert_eq!(fake.stats().unauthorized, 1);
}

#[tokio::test]
async fn quickztna_csv_with_hostile_cells_parses_with_the_csv_crate() {
    let fake = QuickztnaFake::start(QuickztnaFakeConfig::default())
        .await
        .unwrap();
    let entries = fake.add_hostile(Utc::now() - chrono::Duration::minutes(5));
    let (status, v) = post_json(
        &format!("{}/api/export", fake.url()),
        "qz-admin-token",
        json!({"action": "audit_logs", "org_id": fake.org_id(), "days": 1, "format": "csv"}),
    )
    .await;
    assert_eq!(status, 200);
    let csv_text = v["data"]["csv"].as_str().unwrap();
    assert!(csv_text.starts_with(&format!("{CSV_HEADER}\n")));
    assert!(csv_text.contains("\"\"\"\"\"\"\""), "quotes are doubled");
    let mut reader = csv::Reader::from_reader(csv_text.as_bytes());
    assert_eq!(
        reader
            .headers()
            .unwrap()
            .iter()
            .collect::<Vec<_>>()
            .join(","),
        CSV_HEADER
    );
    let rows: Vec<csv::StringRecord> = reader.records().map(|r| r.unwrap()).collect();
    assert_eq!(rows.len(), entries.len());
    assert_eq!(v["data"]["count"], entries.len());
    for row in rows {
        let e = entries.iter().find(|e| e.id == row[0]).unwrap();
        // csvSafe guards formula prefixes with a quote; nothing else changes.
        let guarded = |s: &str| {
            if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
                format!("'{s}")
            } else {
                s.to_string()
            }
        };
        assert_eq!(&row[1], guarded(&e.action));
        assert_eq!(&row[3], e.resource_id);
        assert_eq!(&row[4], e.user_id.as_deref().unwrap_or(""));
        assert_eq!(&row[6], guarded(&e.details));
    }
}

// ------------------------------------------------------------ CertifyClouds

#[tokio::test]
async fn certifyclouds_pages_by_offset_filters_and_shifts_under_inserts() {
    let fake = CertifycloudsFake::start(CertifycloudsFakeConfig {
        insert_per_page: 2,
        insert_age: Duration::from_secs(600),
        insert_budget: 2,
        ..Default::default()
    })
    .await
    .unwrap();
    let now = Utc::now();
    let ids = fake.add_spread(
        10,
        now - chrono::Duration::minutes(100),
        now - chrono::Duration::minutes(1),
    );
    let page = |query: String| {
        let url = format!("{}/audit/entries?{query}", fake.url());
        async move { get_json(&url, "cc-token").await }
    };
    let (status, v) = page("limit=4&offset=0".into()).await;
    assert_eq!(status, 200);
    assert_eq!(v["total"], 10);
    let first: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    // Newest first.
    assert_eq!(first, vec![ids[9].as_str(), &ids[8], &ids[7], &ids[6]]);
    for key in [
        "id",
        "timestamp",
        "event_type",
        "actor",
        "resource",
        "description",
        "details",
        "severity",
        "ip_address",
        "user_agent",
    ] {
        assert!(v["entries"][0].get(key).is_some(), "{key} missing");
    }
    // Two entries 10 minutes old were inserted after that page: the next
    // page starts with the two entries the first page ended with.
    let (_, v) = page("limit=4&offset=4".into()).await;
    let second: Vec<&str> = v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(&second[..2], &[ids[7].as_str(), &ids[6]]);
    assert_eq!(v["total"], 12);
    // Date filters: an RFC 3339 time or a day; a bad one is a 400.
    let from = (now - chrono::Duration::minutes(30)).to_rfc3339();
    let (_, v) = page(format!(
        "start_date={}&end_date={}",
        urlenc(&from),
        urlenc(&now.to_rfc3339())
    ))
    .await;
    assert!(v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["timestamp"].as_str().unwrap() >= from.as_str().get(..19).unwrap()));
    let (_, v) = page(format!("start_date={}", now.format("%Y-%m-%d"))).await;
    assert!(v["total"].as_u64().unwrap() >= 2);
    let (status, _) = page("start_date=yesterday".into()).await;
    assert_eq!(status, 400);
    let (status, _) = page("limit=ten".into()).await;
    assert_eq!(status, 400);
    // event_type and actor filters.
    let kind = fake.entries()[0].event_type.clone();
    let (_, v) = page(format!("event_type={}&limit=1000", urlenc(&kind))).await;
    assert!(v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["event_type"] == kind.as_str()));
    let actor = fake.entries()[0].actor_id.clone();
    let (_, v) = page(format!("actor={actor}&limit=1000")).await;
    assert!(v["entries"]
        .as_array()
        .unwrap()
        .iter()
        .all(|e| e["actor"]["id"] == actor.as_str()));
    let (status, _) = get_json(&format!("{}/audit/entries", fake.url()), "wrong").await;
    assert_eq!(status, 401);
}

fn urlenc(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

// ------------------------------------------------------- generic pull (Zaita)

async fn get_raw(url: &str, token: &str) -> (u16, reqwest::header::HeaderMap, Value) {
    let resp = reqwest::Client::new()
        .get(url)
        .bearer_auth(token)
        .send()
        .await
        .expect("request");
    let (status, headers) = (resp.status().as_u16(), resp.headers().clone());
    let body = resp.bytes().await.unwrap_or_default();
    (
        status,
        headers,
        serde_json::from_slice(&body).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn pull_fake_serves_each_pagination_style() {
    let now = Utc::now();
    let from = (now - chrono::Duration::hours(1)).to_rfc3339();
    let window = format!(
        "start_time={}&end_time={}",
        urlenc(&from),
        urlenc(&now.to_rfc3339())
    );
    let start = |mode| {
        PullFake::start(PullFakeConfig {
            mode,
            ..Default::default()
        })
    };

    // Token in the body; tokens expire.
    let fake = start(PullMode::TokenBody).await.unwrap();
    let ids = fake.add_spread(
        5,
        now - chrono::Duration::minutes(30),
        now - chrono::Duration::minutes(1),
    );
    fake.add_spread(1, now - chrono::Duration::hours(3), now);
    let base = format!("{}/api/v1/audit/events", fake.url());
    let (status, _, v) = get_raw(&format!("{base}?{window}&page_size=3"), "zaita-token").await;
    assert_eq!(status, 200);
    let page: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap())
        .collect();
    assert_eq!(
        page,
        vec![ids[0].as_str(), &ids[1], &ids[2]],
        "oldest first, window only"
    );
    for key in [
        "event_id",
        "timestamp",
        "tenant_id",
        "actor",
        "action",
        "resource",
        "outcome",
        "metadata",
        "source_ip",
    ] {
        assert!(v["data"][0].get(key).is_some(), "{key} missing");
    }
    let token = v["next_page_token"].as_str().unwrap().to_string();
    let (_, _, v) = get_raw(
        &format!("{base}?page_size=3&page_token={token}"),
        "zaita-token",
    )
    .await;
    assert_eq!(v["data"].as_array().unwrap().len(), 2);
    assert!(v["next_page_token"].is_null());
    fake.expire_tokens();
    let (status, _, _) = get_raw(
        &format!("{base}?page_size=3&page_token={token}"),
        "zaita-token",
    )
    .await;
    assert_eq!(status, 400);
    let (status, _, _) = get_raw(&base, "wrong").await;
    assert_eq!(status, 401);

    // Link header: follow rel="next" until there is none.
    let fake = start(PullMode::Link).await.unwrap();
    fake.add_spread(
        7,
        now - chrono::Duration::minutes(30),
        now - chrono::Duration::minutes(1),
    );
    let mut url = format!("{}/api/v1/audit/events?{window}&limit=3", fake.url());
    let mut seen = 0;
    for _ in 0..10 {
        let (status, headers, v) = get_raw(&url, "zaita-token").await;
        assert_eq!(status, 200);
        seen += v.as_array().unwrap().len();
        let link = headers.get("link").unwrap().to_str().unwrap().to_string();
        assert!(link.contains("rel=\"first\""));
        match link.split(", ").find(|l| l.ends_with("rel=\"next\"")) {
            Some(next) => url = next[1..next.find('>').unwrap()].to_string(),
            None => break,
        }
    }
    assert_eq!(seen, 7);

    // Rate limits announce X-RateLimit-Reset (epoch seconds), no Retry-After.
    let fake = PullFake::start(PullFakeConfig {
        mode: PullMode::Offset,
        rate_limit: 1.0,
        // Long enough that a slow machine cannot let the reset pass
        // between the two requests.
        reset_secs: 60,
        ..Default::default()
    })
    .await
    .unwrap();
    let (status, headers, _) = get_raw(
        &format!("{}/api/v1/audit/events", fake.url()),
        "zaita-token",
    )
    .await;
    assert_eq!(status, 429);
    assert!(headers.get("retry-after").is_none());
    let reset: u64 = headers["x-ratelimit-reset"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(reset > Utc::now().timestamp() as u64 - 1);
    get_raw(
        &format!("{}/api/v1/audit/events", fake.url()),
        "zaita-token",
    )
    .await;
    assert_eq!(fake.stats().cooldown_violations, 1);
    assert!(fake.wait_for_requests(2, Duration::from_secs(1)).await);
}

// ---------------------------------------------------------------- Veza list

#[tokio::test]
async fn veza_list_fake_requires_a_recent_filter_and_page_size_and_pages_by_token() {
    let fake = VezaListFake::start("t", false).await.unwrap();
    let now = Utc::now();
    let ids = fake.add_spread(
        5,
        now - chrono::Duration::days(2),
        now - chrono::Duration::days(1),
    );
    let base = format!("{}/api/preview/system/audit", fake.url());
    let filter =
        |from: chrono::DateTime<Utc>| urlenc(&format!("ended_at GE \"{}\"", from.to_rfc3339()));
    let (status, v) = get_json(&format!("{base}?page_size=2"), "t").await;
    assert_eq!(
        (status, v["code"].as_i64()),
        (400, Some(3)),
        "filter is required"
    );
    let (status, _) = get_json(
        &format!("{base}?filter={}", filter(now - chrono::Duration::days(3))),
        "t",
    )
    .await;
    assert_eq!(status, 400, "page_size is required");
    let (status, v) = get_json(
        &format!(
            "{base}?page_size=2&filter={}",
            filter(now - chrono::Duration::days(91))
        ),
        "t",
    )
    .await;
    assert_eq!(status, 400);
    assert!(v["message"].as_str().unwrap().contains("90 days"));
    let f = filter(now - chrono::Duration::days(3));
    let (status, v) = get_json(&format!("{base}?page_size=2&filter={f}"), "t").await;
    assert_eq!(status, 200);
    assert_eq!(v["values"][0]["request_id"], ids[0].as_str());
    assert!(v["values"][0]["ended_at"].is_string() && v["values"][0]["identity"].is_object());
    let token = v["next_page_token"].as_str().unwrap().to_string();
    let (_, v) = get_json(
        &format!("{base}?page_size=2&filter={f}&page_token={token}"),
        "t",
    )
    .await;
    assert_eq!(v["values"][0]["request_id"], ids[2].as_str());
    // A token is only valid with the filter it was issued for.
    let other = filter(now - chrono::Duration::days(2));
    let (status, _) = get_json(
        &format!("{base}?page_size=2&filter={other}&page_token={token}"),
        "t",
    )
    .await;
    assert_eq!(status, 400);
    // The upper bound is honoured.
    let bounded = urlenc(&format!(
        "ended_at GE \"{}\" and ended_at LT \"{}\"",
        (now - chrono::Duration::days(3)).to_rfc3339(),
        (now - chrono::Duration::hours(36)).to_rfc3339()
    ));
    let (_, v) = get_json(&format!("{base}?page_size=100&filter={bounded}"), "t").await;
    assert_eq!(v["values"].as_array().unwrap().len(), 2, "LT is exclusive");
    assert_eq!(v["next_page_token"], "");
}
