//! The real binary against fakes that behave the way real APIs do (issue
//! 13): servers that clamp the page size without saying so while entries
//! are inserted newest first, empty pages that come with a fresh token,
//! pages without a next token, empty ids, and entries indexed later than
//! the overlap allows. Nothing may be lost, and what is dropped is counted.

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use support::certifyclouds_fake::{CertifycloudsFake, CertifycloudsFakeConfig, Echo, Order};
use support::harness::{metric_value, wait_for_all, Setup};
use support::pull_fake::{PullFake, PullFakeConfig, PullMode};
use support::veza_fake::{TokenAtEnd, VezaFake, VezaFakeConfig};
use support::webhook_receiver::{WebhookConfig, WebhookFaults, WebhookReceiver};

const TOKEN: &str = "api-token-SECRET-13";

/// A receiver that tells events apart by the fakes' `fake_ref`, since the
/// vendor id may be empty.
async fn hook_by_ref() -> WebhookReceiver {
    WebhookReceiver::start(WebhookConfig {
        id_field: "fake_ref".into(),
        faults: WebhookFaults {
            answer_delay: Some(Duration::from_millis(20)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap()
}

fn minutes(m: i64) -> chrono::Duration {
    chrono::Duration::minutes(m)
}

const TIMINGS: &str = r#"poll_interval = "200ms"
timeout = "5s"
auth_retry = "200ms"
rate_limit_wait = "1s"
rate_limit_jitter = "50ms"
retry = { initial = "20ms", max = "200ms" }"#;

fn certifyclouds(fake: &CertifycloudsFake, extra: &str) -> String {
    format!(
        "type = \"certifyclouds\"\nurl = \"{}\"\ntoken_file = \"{{dir}}/token\"\n{TIMINGS}\n{extra}\n",
        fake.url()
    )
}

fn http_pull(fake: &PullFake, paging: &str, extra: &str) -> String {
    format!(
        r#"type = "http_pull"
url = "{url}"
path = "/api/v1/audit/events"
token_file = "{{dir}}/token"
{paging}
id_path = "event_id"
time_path = "timestamp"
{TIMINGS}
{extra}
"#,
        url = fake.url()
    )
}

/// Runs the daemon, SIGKILLs it `kills` times at random instants while it
/// works, adds entries after each kill, then starts the last run (which the
/// caller stops once everything arrived) and waits for `expected`.
async fn kill_and_finish(
    setup: &Setup,
    hook: &WebhookReceiver,
    kills: usize,
    mut add: impl FnMut() -> Vec<String>,
    expected: &mut Vec<String>,
) -> support::daemon::Daemon {
    for round in 0..kills {
        let mut daemon = setup.spawn();
        let before = hook.stats().requests;
        assert!(
            hook.wait_for_requests(before + 1, Duration::from_secs(30))
                .await,
            "no progress in round {round}:\n{}",
            setup.tail(30)
        );
        let pause = rand::rng().random_range(10..400);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        daemon.kill().await;
        expected.extend(add());
    }
    let daemon = setup.spawn();
    wait_for_all(expected, hook, setup).await;
    daemon
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certifyclouds_clamping_server_newest_first_with_inserts_loses_nothing_across_sigkills() {
    // Asked for 250, served 60 while the envelope claims 250; entries a
    // minute old (inside the pass's window, newer than where the walk is)
    // are inserted after every page, shifting later offsets.
    let fake = CertifycloudsFake::start(CertifycloudsFakeConfig {
        token: TOKEN.into(),
        order: Order::NewestFirst,
        max_limit: 60,
        echo: Echo::Requested,
        empty_id_every: 9,
        insert_per_page: 4,
        insert_age: Duration::from_secs(60),
        insert_budget: 400,
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook_by_ref().await;
    let now = Utc::now();
    let mut expected = fake.add_spread(2500, now - minutes(290), now - minutes(1));
    let setup = Setup::new(
        "cc",
        &certifyclouds(
            &fake,
            "page_size = 250\nstart_at = \"-5h\"\noverlap = \"5m\"",
        ),
        &hook,
    );
    setup.write("token", TOKEN);
    let mut daemon = kill_and_finish(
        &setup,
        &hook,
        4,
        || fake.add_aged(5, Duration::ZERO),
        &mut expected,
    )
    .await;
    // Everything the fake ever held, inserts included.
    wait_for_all(&fake.all_ids(), &hook, &setup).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    let stats = fake.stats();
    assert!(stats.inserted_between_pages > 100, "{stats:?}");
    let empty_ids = hook
        .events()
        .iter()
        .filter(|e| e["id"] == "")
        .map(|e| e["fake_ref"].to_string())
        .collect::<HashSet<_>>()
        .len();
    assert!(empty_ids > 250, "entries with an empty id: {empty_ids}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certifyclouds_learns_a_clamp_from_a_bare_array() {
    // No envelope at all: the clamp can only be learned from full pages.
    let fake = CertifycloudsFake::start(CertifycloudsFakeConfig {
        token: TOKEN.into(),
        order: Order::NewestFirst,
        bare_array: true,
        max_limit: 45,
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook_by_ref().await;
    let now = Utc::now();
    let mut expected = fake.add_spread(700, now - minutes(100), now - minutes(1));
    let setup = Setup::new(
        "cc",
        &certifyclouds(
            &fake,
            "page_size = 100\nstart_at = \"-2h\"\noverlap = \"1m\"",
        ),
        &hook,
    );
    setup.write("token", TOKEN);
    let mut daemon = setup.spawn();
    wait_for_all(&expected, &hook, &setup).await;
    expected.extend(fake.add_spread(130, now - minutes(0), Utc::now()));
    wait_for_all(&expected, &hook, &setup).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
}

async fn http_pull_clamped_newest_first(mode: PullMode, paging: &str) {
    let fake = PullFake::start(PullFakeConfig {
        token: TOKEN.into(),
        mode,
        max_page_size: 35,
        newest_first: true,
        insert_per_page: 3,
        insert_age: Duration::from_secs(60),
        insert_budget: 200,
        empty_id_every: 11,
        seed: 5,
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook_by_ref().await;
    let now = Utc::now();
    let mut expected = fake.add_spread(1200, now - minutes(230), now - minutes(1));
    let setup = Setup::new(
        "zaita",
        &http_pull(
            &fake,
            paging,
            "page_size = 100\nstart_at = \"-4h\"\noverlap = \"5m\"",
        ),
        &hook,
    );
    setup.write("token", TOKEN);
    let mut daemon = kill_and_finish(
        &setup,
        &hook,
        3,
        || fake.add_aged(5, Duration::ZERO),
        &mut expected,
    )
    .await;
    let all: Vec<String> = fake.events().into_iter().map(|e| e.id).collect();
    wait_for_all(&all, &hook, &setup).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    assert!(
        fake.stats().inserted_between_pages > 50,
        "{:?}",
        fake.stats()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pull_offset_clamping_server_newest_first_loses_nothing() {
    http_pull_clamped_newest_first(
        PullMode::Offset,
        r#"query = { start_time = "{since}", end_time = "{until}", limit = "{page_size}", offset = "{cursor}" }
pagination = { mode = "offset" }"#,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pull_page_clamping_server_newest_first_loses_nothing() {
    http_pull_clamped_newest_first(
        PullMode::Page,
        r#"query = { start_time = "{since}", end_time = "{until}", per_page = "{page_size}", page = "{cursor}" }
pagination = { mode = "page", first_page = 1 }"#,
    )
    .await;
}

/// Requests an idle source sends in `window` after everything arrived.
async fn idle_requests(requests: impl Fn() -> u64, window: Duration) -> u64 {
    let before = requests();
    tokio::time::sleep(window).await;
    requests() - before
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pull_token_mode_waits_when_every_empty_page_has_a_new_token() {
    let fake = PullFake::start(PullFakeConfig {
        token: TOKEN.into(),
        mode: PullMode::TokenBody,
        token_on_empty: true,
        empty_id_every: 4,
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook_by_ref().await;
    let now = Utc::now();
    let expected = fake.add_spread(150, now - minutes(50), now - minutes(1));
    let setup = Setup::new(
        "zaita",
        &http_pull(
            &fake,
            r#"query = { start_time = "{since}", end_time = "{until}", page_size = "{page_size}", page_token = "{cursor}" }
pagination = { mode = "token", token_path = "next_page_token" }"#,
            "page_size = 40\nstart_at = \"-1h\"\npoll_interval = \"1s\"",
        )
        .replace("poll_interval = \"200ms\"\n", ""),
        &hook,
    );
    setup.write("token", TOKEN);
    let mut daemon = setup.spawn();
    wait_for_all(&expected, &hook, &setup).await;
    // Caught up: one pass (a page and its empty follower) per second at most.
    let sent = idle_requests(|| fake.stats().requests, Duration::from_secs(3)).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    assert!(sent <= 10, "{sent} requests in 3 s while idle");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veza_pages_without_a_next_token_wait_poll_interval_and_empty_ids_are_delivered() {
    for at_end in [TokenAtEnd::Missing, TokenAtEnd::Empty] {
        let fake = VezaFake::start(VezaFakeConfig {
            initial_events: 120,
            token_at_end: at_end,
            empty_id_every: 6,
            ..Default::default()
        })
        .await
        .unwrap();
        let hook = WebhookReceiver::start(WebhookConfig::default())
            .await
            .unwrap();
        let setup = Setup::new(
            "veza",
            &format!(
                r#"type = "veza"
url = "{}"
token_file = "{{dir}}/token"
page_size = 50
start_at = "-24h"
poll_interval = "1s"
timeout = "5s"
retry = {{ initial = "20ms", max = "200ms" }}
"#,
                fake.url()
            ),
            &hook,
        );
        setup.write("token", "test-veza-token");
        let mut daemon = setup.spawn();
        let ids: Vec<String> = fake
            .all_ids()
            .into_iter()
            .enumerate()
            .filter(|(i, _)| (i + 1) % 6 != 0)
            .map(|(_, id)| id)
            .collect();
        wait_for_all(&ids, &hook, &setup).await;
        let sent = idle_requests(|| fake.stats().requests, Duration::from_secs(3)).await;
        let metrics = setup.metrics().await;
        assert!(daemon
            .terminate(Duration::from_secs(20))
            .await
            .expect("exit")
            .success());
        // Each poll re-reads the overlap: 3 pages of 50. Polls start more
        // than poll_interval (1 s) apart, so a 3 s window holds at most
        // three polls plus the last two pages of one begun before it:
        // 11. The old code asked without pause: 90 in 3 s.
        assert!(sent <= 11, "{at_end:?}: {sent} requests in 3 s while idle");
        let empty: HashSet<String> = hook
            .events()
            .iter()
            .filter(|e| e["request_id"] == "")
            .map(|e| e["fake_ref"].to_string())
            .collect();
        assert_eq!(empty.len(), 20, "{at_end:?}: events with an empty id");
        let writes = metric_value(
            &metrics,
            "auditrelay_checkpoint_writes_total{outcome=\"ok\",source=\"veza\"}",
        );
        assert!(
            (1.0..20.0).contains(&writes),
            "{at_end:?}: {writes} checkpoint writes (one per idle request?)"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_indexed_later_than_the_overlap_are_counted_and_logged() {
    // The date filter applies to when an entry was indexed, so entries
    // stamped two hours ago but indexed now are returned: older than the
    // window start, they are dropped, and that must show.
    let fake = CertifycloudsFake::start(CertifycloudsFakeConfig {
        token: TOKEN.into(),
        filter_on_added: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook_by_ref().await;
    let expected = fake.add_aged(30, Duration::from_secs(60));
    let setup = Setup::new(
        "cc",
        &certifyclouds(
            &fake,
            "page_size = 50\nstart_at = \"-10m\"\noverlap = \"5m\"",
        ),
        &hook,
    );
    setup.write("token", TOKEN);
    let mut daemon = setup.spawn();
    wait_for_all(&expected, &hook, &setup).await;
    fake.add_late(3, Duration::from_secs(7200));
    let before = fake.stats().requests;
    assert!(
        fake.wait_for_requests(before + 4, Duration::from_secs(30))
            .await
    );
    let metrics = setup.metrics().await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    // Each pass that reads them again discards (and counts) them again.
    let dropped = metric_value(
        &metrics,
        "auditrelay_source_events_dropped_total{reason=\"before_window\",source=\"cc\"}",
    );
    assert!(
        dropped >= 3.0 && dropped % 3.0 == 0.0,
        "{dropped}: {}",
        metrics
            .lines()
            .filter(|l| l.contains("dropped"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    assert_eq!(hook.unique_count(), expected.len(), "nothing else dropped");
    let log = setup.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN") && l.contains("older than the window start")),
        "{}",
        setup.tail(20)
    );
}
