//! The real binary running the generic `http_pull` source against a
//! Zaita-shaped fake, once per pagination mode, into a webhook receiver;
//! plus expired page tokens, rate-limit signals and SIGKILLs. Every test
//! runs against a harsh server: pages clamped below `page_size` (paged
//! modes), every 6th event with an empty `event_id`, a next token or link
//! on every page (also empty ones past the end), and (where a test does
//! not choose its own) events inserted a minute back after every page.

use crate::support;

use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use support::harness::{duplicates, metric_value, wait_for_all, Setup};
use support::pull_fake::{PullFake, PullFakeConfig, PullMode};
use support::webhook_receiver::{WebhookConfig, WebhookFaults, WebhookReceiver};

const TOKEN: &str = "zaita-machine-SECRET-7c1e";

/// The clamp every paged test's server applies (`page_size`s are larger).
const CLAMP: usize = 13;

async fn fake(mode: PullMode, cfg: PullFakeConfig) -> PullFake {
    let inserts = cfg.insert_budget == 0;
    PullFake::start(PullFakeConfig {
        token: TOKEN.into(),
        mode,
        // A server without pagination cannot clamp without losing events.
        max_page_size: if mode == PullMode::Unpaged {
            cfg.max_page_size
        } else {
            cfg.max_page_size.min(CLAMP)
        },
        empty_id_every: 6,
        token_on_empty: true,
        insert_per_page: if inserts { 1 } else { cfg.insert_per_page },
        insert_age: if inserts {
            Duration::from_secs(60)
        } else {
            cfg.insert_age
        },
        insert_budget: if inserts { 20 } else { cfg.insert_budget },
        ..cfg
    })
    .await
    .unwrap()
}

async fn hook(faults: WebhookFaults) -> WebhookReceiver {
    WebhookReceiver::start(WebhookConfig {
        // The vendor id may be empty: tell events apart by `fake_ref`.
        id_field: "fake_ref".into(),
        faults,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// The source section for `mode`, talking to `fake`.
fn source(fake: &PullFake, mode: PullMode, extra: &str) -> String {
    let paging = match mode {
        PullMode::TokenBody => {
            r#"query = { start_time = "{since}", end_time = "{until}", page_size = "{page_size}", page_token = "{cursor}" }
pagination = { mode = "token", token_path = "next_page_token" }"#
        }
        PullMode::TokenHeader => {
            r#"method = "POST"
body = { start_time = "{since}", end_time = "{until}", page_size = "{page_size}", page_token = "{cursor}" }
pagination = { mode = "token", token_header = "X-Next-Page-Token" }"#
        }
        PullMode::Offset => {
            r#"query = { start_time = "{since}", end_time = "{until}", limit = "{page_size}", offset = "{cursor}" }
pagination = { mode = "offset" }"#
        }
        PullMode::Page => {
            r#"query = { start_time = "{since}", end_time = "{until}", per_page = "{page_size}", page = "{cursor}" }
pagination = { mode = "page", first_page = 1 }"#
        }
        PullMode::Link => {
            r#"query = { start_time = "{since}", end_time = "{until}", limit = "{page_size}" }
pagination = { mode = "link" }"#
        }
        PullMode::Unpaged => {
            r#"query = { start_time = "{since}", end_time = "{until}" }
pagination = { mode = "none" }"#
        }
    };
    format!(
        r#"type = "http_pull"
url = "{url}"
path = "/api/v1/audit/events"
token_file = "{{dir}}/token"
headers = {{ "X-Tenant" = "tnt_7g8h9i0j" }}
{paging}
id_path = "event_id"
time_path = "timestamp"
type_path = "action"
{defaults}
{extra}
"#,
        url = fake.url(),
        defaults = defaults_unless_in(extra),
    )
}

/// Test-friendly timings, minus the keys `extra` sets itself.
fn defaults_unless_in(extra: &str) -> String {
    let set: Vec<&str> = extra
        .lines()
        .filter_map(|l| l.split('=').next())
        .map(str::trim)
        .collect();
    [
        "poll_interval = \"200ms\"",
        "timeout = \"5s\"",
        "auth_retry = \"200ms\"",
        "rate_limit_wait = \"1s\"",
        "rate_limit_jitter = \"50ms\"",
        "retry = { initial = \"20ms\", max = \"200ms\" }",
    ]
    .iter()
    .filter(|l| !set.contains(&l.split('=').next().unwrap_or("").trim()))
    .copied()
    .collect::<Vec<_>>()
    .join("\n")
}

fn minutes(m: i64) -> chrono::Duration {
    chrono::Duration::minutes(m)
}

/// Runs one pagination mode end to end: history, then new events, then a
/// restart; every event exactly once.
async fn mode_delivers_everything_once(mode: PullMode) {
    let fake = fake(mode, PullFakeConfig::default()).await;
    let hook = hook(WebhookFaults::default()).await;
    let now = Utc::now();
    let old = fake.add_spread(20, now - minutes(300), now - minutes(181));
    let mut expected = fake.add_spread(333, now - minutes(170), now - minutes(1));
    let setup = Setup::new(
        "zaita",
        &source(&fake, mode, "page_size = 40\nstart_at = \"-3h\""),
        &hook,
    );
    setup.write("token", TOKEN);
    let mut daemon = setup.spawn();
    wait_for_all(&expected, &hook, &setup).await;
    expected.extend(fake.add_aged(25, Duration::ZERO));
    wait_for_all(&expected, &hook, &setup).await;
    assert!(
        fake.wait_for_requests(fake.stats().requests + 3, Duration::from_secs(30))
            .await
    );
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    // A restart continues from the committed watermark.
    let mut daemon = setup.spawn();
    expected.extend(fake.add_aged(10, Duration::ZERO));
    wait_for_all(&expected, &hook, &setup).await;
    // And the events the server inserted under the walk.
    expected = fake
        .events()
        .into_iter()
        .map(|e| e.id)
        .filter(|id| !old.contains(id))
        .collect();
    wait_for_all(&expected, &hook, &setup).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());

    let stats = fake.stats();
    assert_eq!(duplicates(&hook), 0, "{mode:?}: an event arrived twice");
    assert_eq!(hook.unique_count(), expected.len(), "{mode:?}");
    assert!(stats.inserted_between_pages > 0, "{mode:?}: {stats:?}");
    assert!(
        hook.events().iter().any(|e| e["event_id"] == ""),
        "{mode:?}: no empty ids exercised"
    );
    for id in &old {
        assert_eq!(
            hook.count_of(id),
            0,
            "{mode:?}: {id} is older than start_at"
        );
    }
    assert_eq!(
        stats.bad_request + stats.bad_token + stats.unauthorized,
        0,
        "{stats:?}"
    );
    if mode == PullMode::Unpaged {
        assert_eq!(stats.later_pages, 0);
    } else {
        assert!(stats.later_pages >= 8, "{mode:?} never paged: {stats:?}");
    }
    // The fixed header and the templates reached the API.
    let (method, target) = &stats.targets[0];
    if mode == PullMode::TokenHeader {
        assert_eq!(method, "POST");
        let body = &stats.bodies[0];
        assert_eq!(body["page_size"], 40, "{body}");
        assert!(
            body.get("page_token").is_none(),
            "no token on a first page: {body}"
        );
        assert!(body["start_time"].as_str().unwrap().ends_with('Z'));
    } else {
        assert!(target.contains("start_time="), "{target}");
    }
    assert_eq!(
        stats.with_tenant_header, stats.requests,
        "fixed header missing"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pull_token_in_the_body() {
    mode_delivers_everything_once(PullMode::TokenBody).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pull_token_in_a_header_with_a_post_body_template() {
    mode_delivers_everything_once(PullMode::TokenHeader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pull_offset_pagination() {
    mode_delivers_everything_once(PullMode::Offset).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pull_page_number_pagination() {
    mode_delivers_everything_once(PullMode::Page).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pull_link_header_pagination() {
    mode_delivers_everything_once(PullMode::Link).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pull_without_pagination() {
    mode_delivers_everything_once(PullMode::Unpaged).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pull_expired_page_tokens_restart_the_window_without_duplicates() {
    let fake = fake(PullMode::TokenBody, PullFakeConfig::default()).await;
    let hook = hook(WebhookFaults {
        answer_delay: Some(Duration::from_millis(20)),
        ..Default::default()
    })
    .await;
    let now = Utc::now();
    let expected = fake.add_spread(1200, now - minutes(100), now - minutes(1));
    let setup = Setup::new(
        "zaita",
        &source(
            &fake,
            PullMode::TokenBody,
            "page_size = 20\nstart_at = \"-2h\"",
        ),
        &hook,
    );
    setup.write("token", TOKEN);
    let mut daemon = setup.spawn();
    for n in [200, 600] {
        assert!(hook.wait_for_unique(n, Duration::from_secs(60)).await);
        fake.expire_tokens();
    }
    wait_for_all(&expected, &hook, &setup).await;
    let metrics = setup.metrics().await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    assert!(
        fake.stats().bad_token >= 1,
        "no expired token was presented"
    );
    assert!(
        metric_value(
            &metrics,
            "auditrelay_source_cursor_restarts_total{source=\"zaita\"}"
        ) >= 1.0
    );
    assert_eq!(duplicates(&hook), 0, "the re-walked window was re-sent");
    assert!(setup.log_text().contains("refused the page cursor"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pull_rate_limit_reset_header_is_honoured() {
    // No Retry-After, only X-RateLimit-Reset: with rate_limit_wait = 60s a
    // source ignoring the header could not finish in time.
    let fake = fake(
        PullMode::Offset,
        PullFakeConfig {
            rate_limit: 0.2,
            exhaust_every: Some(4),
            reset_secs: 1,
            seed: 5,
            ..Default::default()
        },
    )
    .await;
    let hook = hook(WebhookFaults::default()).await;
    let now = Utc::now();
    let expected = fake.add_spread(300, now - minutes(50), now - minutes(1));
    let setup = Setup::new(
        "zaita",
        &source(
            &fake,
            PullMode::Offset,
            "page_size = 25\nstart_at = \"-1h\"\nrate_limit_wait = \"60s\"\nrate_limit = { status_codes = [429, 503], reset_header = \"X-RateLimit-Reset\", remaining_header = \"X-RateLimit-Remaining\" }",
        ),
        &hook,
    );
    setup.write("token", TOKEN);
    let mut daemon = setup.spawn();
    wait_for_all(&expected, &hook, &setup).await;
    let metrics = setup.metrics().await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    let stats = fake.stats();
    assert!(
        stats.rate_limited > 0 && stats.exhausted_answers > 0,
        "{stats:?}"
    );
    assert_eq!(
        stats.cooldown_violations, 0,
        "a request was sent before the announced reset"
    );
    assert!(
        metric_value(
            &metrics,
            "auditrelay_rate_limit_waits_total{source=\"zaita\"}"
        ) >= 1.0
    );
    assert_eq!(duplicates(&hook), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pull_sigkill_mid_walk_loses_nothing() {
    let fake = fake(
        PullMode::Link,
        PullFakeConfig {
            server_error: 0.05,
            seed: 8,
            ..Default::default()
        },
    )
    .await;
    let hook = hook(WebhookFaults {
        answer_delay: Some(Duration::from_millis(40)),
        ..Default::default()
    })
    .await;
    let now = Utc::now();
    let mut expected = fake.add_spread(900, now - minutes(200), now - minutes(1));
    let setup = Setup::new(
        "zaita",
        &source(&fake, PullMode::Link, "page_size = 25\nstart_at = \"-4h\""),
        &hook,
    );
    setup.write("token", TOKEN);
    for round in 0..5 {
        let mut daemon = setup.spawn();
        // Each round has at least the 5 events added at the end of the
        // previous one to deliver: one request is progress.
        let before = hook.stats().requests;
        assert!(
            hook.wait_for_requests(before + 1, Duration::from_secs(30))
                .await,
            "no progress in round {round}:\n{}",
            setup.tail(30)
        );
        let pause = rand::rng().random_range(10..300);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        daemon.kill().await;
        expected.extend(fake.add_aged(5, Duration::ZERO));
    }
    let mut daemon = setup.spawn();
    wait_for_all(&expected, &hook, &setup).await;
    // And the events the server inserted under the walk.
    let all: Vec<String> = fake.events().into_iter().map(|e| e.id).collect();
    wait_for_all(&all, &hook, &setup).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    assert!(fake.stats().later_pages > 5);
    eprintln!(
        "duplicates after 5 SIGKILLs: {} of {}",
        duplicates(&hook),
        expected.len()
    );
}
