//! The real binary tailing the QuickZTNA fake into a webhook receiver:
//! window polls with overlap and de-duplication, CSV with hostile cells, the
//! 10000-entry cap (a data gap), a member's token refused with 403, the audit endpoint,
//! and SIGKILLs.

use crate::support;

use std::collections::HashMap;
use std::time::Duration;

use chrono::Utc;
use rand::Rng;
use serde_json::Value;
use support::harness::{duplicates, metric_value, wait_for_all, wait_unready, Setup};
use support::quickztna_fake::{QuickztnaFake, QuickztnaFakeConfig};
use support::webhook_receiver::{WebhookConfig, WebhookFaults, WebhookReceiver};

const ADMIN: &str = "qz-admin-SECRET-31d7";
const MEMBER: &str = "qz-member-SECRET-88af";

async fn fake() -> QuickztnaFake {
    QuickztnaFake::start(QuickztnaFakeConfig {
        admin_token: ADMIN.into(),
        member_token: MEMBER.into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

async fn hook() -> WebhookReceiver {
    WebhookReceiver::start(WebhookConfig {
        id_field: "id".into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn source(fake: &QuickztnaFake, extra: &str) -> String {
    format!(
        r#"type = "quickztna"
url = "{url}"
org_id = "{org}"
token_file = "{{dir}}/qz_token"
{poll}
overlap = "10m"
timeout = "5s"
auth_retry = "200ms"
rate_limit_wait = "1s"
rate_limit_jitter = "50ms"
retry = {{ initial = "20ms", max = "200ms" }}
{extra}
"#,
        url = fake.url(),
        org = fake.org_id(),
        poll = if extra.contains("poll_interval") {
            ""
        } else {
            "poll_interval = \"200ms\""
        },
    )
}

fn hours(h: i64) -> chrono::Duration {
    chrono::Duration::hours(h)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_export_delivers_each_entry_once_across_polls_and_late_arrivals() {
    let fake = fake().await;
    let hook = hook().await;
    let now = Utc::now();
    // Before start_at (-2d): never delivered. After it: delivered once.
    let old = fake.add_spread(40, now - hours(72), now - hours(49));
    let mut expected = fake.add_spread(260, now - hours(47), now - chrono::Duration::minutes(1));
    let setup = Setup::new(
        "qz",
        &source(&fake, "start_at = \"-2d\"\nbatch_size = 50"),
        &hook,
    );
    setup.write("qz_token", ADMIN);
    let mut daemon = setup.spawn();
    wait_for_all(&expected, &hook, &setup).await;

    // New entries, and late ones (indexed after a later entry was read)
    // that are still inside the overlap.
    let polls = fake.stats().exports;
    expected.extend(fake.add_aged(25, Duration::ZERO));
    expected.extend(fake.add_aged(10, Duration::from_secs(180)));
    wait_for_all(&expected, &hook, &setup).await;
    // A few more polls see the same window again: nothing is re-sent.
    assert!(
        fake.wait_for_requests(fake.stats().requests + 5, Duration::from_secs(30))
            .await
    );
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());

    assert_eq!(duplicates(&hook), 0, "an entry was delivered twice");
    assert_eq!(hook.unique_count(), expected.len());
    for id in &old {
        assert_eq!(hook.count_of(id), 0, "{id} is older than start_at");
    }
    let stats = fake.stats();
    assert!(stats.exports > polls + 5);
    assert_eq!(stats.days[0], 3, "2 days back needs days = 3 (with margin)");
    assert_eq!(
        *stats.days.last().unwrap(),
        1,
        "once caught up the smallest window is one day: {:?}",
        stats.days
    );
    assert_eq!(stats.csv_exports, 0);
    // Batches of at most 50: the first 260 entries came in several requests.
    assert!(hook.stats().accepted_requests >= 6);

    // Restart: the committed watermark and seen-set keep it exactly once.
    let mut daemon = setup.spawn();
    expected.extend(fake.add_aged(5, Duration::ZERO));
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
    assert_eq!(duplicates(&hook), 0, "restart re-sent delivered entries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_csv_export_with_hostile_cells_delivers_the_exact_values() {
    let fake = fake().await;
    let hook = hook().await;
    let now = Utc::now();
    let hostile = fake.add_hostile(now - hours(2));
    let plain = fake.add_spread(30, now - hours(3), now - hours(1));
    let setup = Setup::new(
        "qz",
        &source(&fake, "format = \"csv\"\nstart_at = \"-1d\""),
        &hook,
    );
    setup.write("qz_token", ADMIN);
    let mut daemon = setup.spawn();
    let mut expected: Vec<String> = hostile.iter().map(|e| e.id.clone()).collect();
    expected.extend(plain);
    wait_for_all(&expected, &hook, &setup).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    assert!(fake.stats().csv_exports >= 1);

    let got: HashMap<String, Value> = hook
        .events()
        .into_iter()
        .map(|e| (e["id"].as_str().unwrap_or_default().to_string(), e))
        .collect();
    for entry in fake.entries() {
        // CSV cannot tell an empty string from null: empty cells are null.
        let mut want = entry.to_json();
        for v in want.as_object_mut().unwrap().values_mut() {
            if v.as_str() == Some("") {
                *v = Value::Null;
            }
        }
        assert_eq!(got.get(&entry.id), Some(&want), "entry {}", entry.id);
    }
    // Keys keep the CSV header's order.
    let raw = hook.raw_events();
    assert!(
        raw[0].starts_with(r#"{"id":"#) && raw[0].contains(r#""created_at":"#),
        "{}",
        raw[0]
    );
    assert_eq!(duplicates(&hook), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_full_cap_above_the_window_start_is_a_reported_data_gap() {
    let fake = fake().await;
    let hook = hook().await;
    let now = Utc::now();
    let ids = fake.add_spread(10_400, now - hours(3), now - chrono::Duration::minutes(1));
    let setup = Setup::new(
        "qz",
        &source(
            &fake,
            "start_at = \"-4h\"\nbatch_size = 2000\npoll_interval = \"1s\"",
        ),
        &hook,
    );
    setup.write("qz_token", ADMIN);
    let mut daemon = setup.spawn();
    // The export returns the newest 10000: those arrive, the 400 oldest cannot.
    let newest: Vec<String> = ids[400..].to_vec();
    wait_for_all(&newest, &hook, &setup).await;
    let metrics = setup.metrics().await;
    let ready = setup.readyz().await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    assert!(fake.stats().capped >= 1);
    assert!(
        metric_value(
            &metrics,
            "auditrelay_quickztna_capped_responses_total{source=\"qz\"}"
        ) >= 1.0,
        "cap not counted"
    );
    assert_eq!(
        metric_value(&metrics, "auditrelay_source_gaps_total{source=\"qz\"}"),
        1.0,
        "the gap between start_at and the oldest entry returned is not counted"
    );
    // From start_at (-4h) to the oldest entry returned (-2h53m): 67 min.
    let seconds = metric_value(&metrics, "auditrelay_source_gap_seconds{source=\"qz\"}");
    assert!((3900.0..4100.0).contains(&seconds), "gap of {seconds} s");
    let (status, body) = ready.expect("readyz");
    assert!(
        status == 200 && body.contains("source.qz.data_gap"),
        "{status} {body}"
    );
    let log = setup.log_text();
    assert!(
        log.lines()
            .any(|l| l.contains("data gap") && l.contains("\"level\":\"ERROR\"")),
        "gap not logged as an error:\n{}",
        setup.tail(20)
    );
    assert_eq!(hook.count_of(&ids[0]), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_member_token_gets_an_actionable_403_then_recovers() {
    let fake = fake().await;
    let hook = hook().await;
    let now = Utc::now();
    let expected = fake.add_spread(20, now - hours(1), now - chrono::Duration::minutes(5));
    let setup = Setup::new("qz", &source(&fake, ""), &hook);
    setup.write("qz_token", MEMBER);
    let mut daemon = setup.spawn();
    let body = wait_unready(&setup, Duration::from_secs(30))
        .await
        .expect("/readyz never reported the refused token");
    assert!(
        body.contains("source.qz")
            && body.contains("org admin role")
            && body.contains("Admin required"),
        "{body}"
    );
    assert!(fake.stats().forbidden >= 1);
    assert_eq!(hook.unique_count(), 0);

    // An admin's token in the same file is picked up without a restart.
    setup.write("qz_token", ADMIN);
    wait_for_all(&expected, &hook, &setup).await;
    let (status, _) = setup.readyz().await.expect("readyz");
    assert_eq!(status, 200);
    let metrics = setup.metrics().await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    let log = setup.log_text();
    assert!(log.contains("endpoint = \\\"audit\\\""), "advice missing");
    for secret in [ADMIN, MEMBER] {
        assert!(!log.contains(secret), "token leaked into the log");
        assert!(!metrics.contains(secret), "token leaked into metrics");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_audit_endpoint_reads_recent_entries_with_a_member_token() {
    let fake = fake().await;
    let hook = hook().await;
    let now = Utc::now();
    let mut expected = fake.add_spread(120, now - hours(5), now - chrono::Duration::minutes(2));
    let setup = Setup::new(
        "qz",
        &source(
            &fake,
            "endpoint = \"audit\"\nlimit = 500\nstart_at = \"-1d\"",
        ),
        &hook,
    );
    setup.write("qz_token", MEMBER);
    let mut daemon = setup.spawn();
    wait_for_all(&expected, &hook, &setup).await;
    expected.extend(fake.add_aged(30, Duration::ZERO));
    expected.extend(fake.add_aged(5, Duration::from_secs(120)));
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
    let stats = fake.stats();
    assert!(stats.audits >= 3 && stats.exports == 0 && stats.forbidden == 0);
    assert_eq!(duplicates(&hook), 0);
    assert_eq!(hook.unique_count(), expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_sigkill_and_api_faults_lose_nothing() {
    let fake = QuickztnaFake::start(QuickztnaFakeConfig {
        admin_token: ADMIN.into(),
        rate_limit: 0.2,
        server_error: 0.2,
        seed: 9,
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = WebhookReceiver::start(WebhookConfig {
        id_field: "id".into(),
        faults: WebhookFaults {
            answer_delay: Some(Duration::from_millis(30)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let now = Utc::now();
    let mut expected = fake.add_spread(600, now - hours(6), now - chrono::Duration::minutes(1));
    let setup = Setup::new(
        "qz",
        &source(&fake, "start_at = \"-1d\"\nbatch_size = 20"),
        &hook,
    );
    setup.write("qz_token", ADMIN);
    for round in 0..4 {
        let mut daemon = setup.spawn();
        let before = hook.stats().requests;
        assert!(
            hook.wait_for_requests(before + 1, Duration::from_secs(30))
                .await,
            "no progress in round {round}:\n{}",
            setup.tail(30)
        );
        let pause = rand::rng().random_range(10..200);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        daemon.kill().await;
        expected.extend(fake.add_aged(10, Duration::ZERO));
    }
    let mut daemon = setup.spawn();
    wait_for_all(&expected, &hook, &setup).await;
    // Some more polls, so the faults surely hit a few of them.
    assert!(
        fake.wait_for_requests(fake.stats().requests + 10, Duration::from_secs(60))
            .await
    );
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    let stats = fake.stats();
    assert!(
        stats.rate_limited + stats.server_error > 0,
        "no fault exercised: {stats:?}"
    );
    eprintln!(
        "duplicates after 4 SIGKILLs: {} of {}",
        duplicates(&hook),
        expected.len()
    );
}
