//! The real binary paging through the CertifyClouds fake into a webhook
//! receiver: offset paging while entries are inserted between pages, both
//! sort orders, filters, rate limits, and SIGKILLs in the middle of a pass.
//! Every test runs against a harsh server: `limit` clamped below
//! `page_size` while the envelope echoes what was asked, every 7th entry
//! with an empty id, and (where a test does not choose its own) entries
//! inserted a minute back after every page.

use crate::support;

use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use support::certifyclouds_fake::{CertifycloudsFake, CertifycloudsFakeConfig, Echo, Order};
use support::harness::{duplicates, metric_value, wait_for_all, Setup};
use support::webhook_receiver::{WebhookConfig, WebhookFaults, WebhookReceiver};

const TOKEN: &str = "cc-token-SECRET-4411";

/// The clamp every test's server applies (its `page_size`s are larger).
const CLAMP: usize = 17;

async fn fake(cfg: CertifycloudsFakeConfig) -> CertifycloudsFake {
    let inserts = cfg.insert_budget == 0;
    CertifycloudsFake::start(CertifycloudsFakeConfig {
        token: TOKEN.into(),
        max_limit: cfg.max_limit.min(CLAMP),
        echo: Echo::Requested,
        empty_id_every: 7,
        insert_per_page: if inserts { 1 } else { cfg.insert_per_page },
        insert_age: if inserts {
            Duration::from_secs(60)
        } else {
            cfg.insert_age
        },
        insert_budget: if inserts { 30 } else { cfg.insert_budget },
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

fn source(fake: &CertifycloudsFake, extra: &str) -> String {
    format!(
        r#"type = "certifyclouds"
url = "{url}"
token_file = "{{dir}}/cc_token"
poll_interval = "200ms"
timeout = "5s"
auth_retry = "200ms"
rate_limit_wait = "1s"
rate_limit_jitter = "50ms"
retry = {{ initial = "20ms", max = "200ms" }}
{extra}
"#,
        url = fake.url(),
    )
}

fn minutes(m: i64) -> chrono::Duration {
    chrono::Duration::minutes(m)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certifyclouds_offset_paging_with_inserts_between_pages_loses_nothing_and_drops_duplicates()
{
    // Newest first: every entry inserted 30 minutes back while the daemon
    // pages shifts all later offsets by one.
    let fake = fake(CertifycloudsFakeConfig {
        order: Order::NewestFirst,
        insert_per_page: 3,
        insert_age: Duration::from_secs(1800),
        insert_budget: 150,
        ..Default::default()
    })
    .await;
    let hook = hook(WebhookFaults::default()).await;
    let now = Utc::now();
    let old = fake.add_spread(30, now - minutes(200), now - minutes(181));
    fake.add_spread(800, now - minutes(170), now - minutes(1));
    let setup = Setup::new(
        "cc",
        &source(
            &fake,
            "page_size = 40\nstart_at = \"-3h\"\noverlap = \"1h\"",
        ),
        &hook,
    );
    setup.write("cc_token", TOKEN);
    let mut daemon = setup.spawn();
    // Wait until the inserts are spent, then for everything in the window.
    assert!(
        fake.wait_for_requests(60, Duration::from_secs(60)).await,
        "{}",
        setup.tail(20)
    );
    let mut expected: Vec<String> = fake
        .all_ids()
        .into_iter()
        .filter(|id| !old.contains(id))
        .collect();
    wait_for_all(&expected, &hook, &setup).await;
    // New entries after the first passes.
    expected.extend(fake.add_aged(20, Duration::ZERO));
    wait_for_all(&expected, &hook, &setup).await;
    let requests = fake.stats().requests;
    assert!(
        fake.wait_for_requests(requests + 4, Duration::from_secs(30))
            .await
    );
    let metrics = setup.metrics().await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());

    let stats = fake.stats();
    assert_eq!(stats.inserted_between_pages, 150, "inserts not exercised");
    assert!(stats.later_pages >= 20, "{stats:?}");
    assert_eq!(stats.with_end_date, stats.pages, "end_date pins each pass");
    assert_eq!(duplicates(&hook), 0, "a shifted entry was delivered twice");
    assert_eq!(hook.unique_count(), expected.len());
    for id in &old {
        assert_eq!(hook.count_of(id), 0, "{id} is older than start_at");
    }
    assert!(
        metric_value(
            &metrics,
            "auditrelay_events_deduplicated_total{source=\"cc\"}"
        ) > 0.0,
        "shifted pages should have repeated entries"
    );
    // Every request is a complete, well-formed query.
    let q = &stats.queries[0];
    for key in ["start_date", "end_date", "limit", "offset"] {
        assert!(q.iter().any(|(k, _)| k == key), "{key} missing in {q:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certifyclouds_oldest_first_bare_arrays_filters_and_rate_limits() {
    let fake = fake(CertifycloudsFakeConfig {
        order: Order::OldestFirst,
        bare_array: true,
        insert_per_page: 2,
        insert_budget: 40,
        rate_limit: 0.15,
        seed: 4,
        ..Default::default()
    })
    .await;
    let hook = hook(WebhookFaults::default()).await;
    let now = Utc::now();
    fake.add_spread(500, now - minutes(100), now - minutes(1));
    let setup = Setup::new(
        "cc",
        &source(
            &fake,
            "page_size = 25\nstart_at = \"-2h\"\nevent_type = \"auth.login.failed\"\ntime_format = \"rfc3339_seconds\"",
        ),
        &hook,
    );
    setup.write("cc_token", TOKEN);
    let mut daemon = setup.spawn();
    let failed = |fake: &CertifycloudsFake| -> Vec<String> {
        fake.entries()
            .into_iter()
            .filter(|e| e.event_type == "auth.login.failed")
            .map(|e| e.id)
            .collect()
    };
    wait_for_all(&failed(&fake), &hook, &setup).await;
    fake.add_aged(30, Duration::ZERO);
    wait_for_all(&failed(&fake), &hook, &setup).await;
    // More polls, so rate limits are surely drawn on some.
    assert!(
        fake.wait_for_requests(fake.stats().requests + 15, Duration::from_secs(60))
            .await
    );
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    let stats = fake.stats();
    assert!(stats.rate_limited > 0, "no rate limit drawn");
    assert_eq!(
        stats.cooldown_violations, 0,
        "request sent during Retry-After"
    );
    assert!(stats.queries.iter().all(|q| q
        .iter()
        .any(|(k, v)| k == "event_type" && v == "auth.login.failed")));
    let start = &stats.queries[0]
        .iter()
        .find(|(k, _)| k == "start_date")
        .unwrap()
        .1;
    assert!(
        start.ends_with('Z') && !start.contains('.'),
        "rfc3339_seconds: {start}"
    );
    assert_eq!(duplicates(&hook), 0);
    assert!(hook
        .events()
        .iter()
        .all(|e| e["event_type"] == "auth.login.failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certifyclouds_sigkill_in_the_middle_of_a_pass_resumes_the_walk() {
    let fake = fake(CertifycloudsFakeConfig {
        order: Order::NewestFirst,
        server_error: 0.05,
        seed: 12,
        ..Default::default()
    })
    .await;
    let hook = hook(WebhookFaults {
        answer_delay: Some(Duration::from_millis(40)),
        ..Default::default()
    })
    .await;
    let now = Utc::now();
    let mut expected = fake.add_spread(1500, now - minutes(300), now - minutes(1));
    let setup = Setup::new(
        "cc",
        &source(&fake, "page_size = 30\nstart_at = \"-6h\""),
        &hook,
    );
    setup.write("cc_token", TOKEN);
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
    // The walk was interrupted in the middle of a pass: the checkpoint says so.
    let show = std::process::Command::new(env!("CARGO_BIN_EXE_auditrelay"))
        .args(["checkpoint", "show", "--source", "cc", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    let state = String::from_utf8_lossy(&show.stdout);
    assert!(state.contains("\"seen\""), "{state}");
    let mut daemon = setup.spawn();
    wait_for_all(&expected, &hook, &setup).await;
    // And the entries the server inserted under the walk.
    wait_for_all(&fake.all_ids(), &hook, &setup).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    assert!(
        fake.stats().inserted_between_pages > 0,
        "{:?}",
        fake.stats()
    );
    assert!(
        hook.events().iter().filter(|e| e["id"] == "").count() > 100,
        "entries with an empty id were not exercised"
    );
    eprintln!(
        "duplicates after 5 SIGKILLs: {} of {}",
        duplicates(&hook),
        expected.len()
    );
}
