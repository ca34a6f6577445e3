//! Offset paging against a server whose list changes under the walk in the
//! ways real ones do: the clamp on `limit` is lowered mid-walk (load
//! shedding), and retention purges the oldest entries between pages, which
//! moves every later entry to an earlier offset. Nothing still on the
//! server may be missed, and duplicates stay bounded.

use crate::support;

use std::time::Duration;

use chrono::Utc;
use support::certifyclouds_fake::{CertifycloudsFake, CertifycloudsFakeConfig, Echo, Order};
use support::harness::{duplicates, metric_value, wait_for_all, Setup};
use support::webhook_receiver::{WebhookConfig, WebhookReceiver};

const TOKEN: &str = "api-token-SECRET-shift";

/// Tells events apart by the fake's `fake_ref` (the id may be empty).
async fn hook_by_ref() -> WebhookReceiver {
    WebhookReceiver::start(WebhookConfig {
        id_field: "fake_ref".into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

fn certifyclouds(fake: &CertifycloudsFake, extra: &str) -> String {
    format!(
        r#"type = "certifyclouds"
url = "{}"
token_file = "{{dir}}/token"
poll_interval = "200ms"
timeout = "5s"
retry = {{ initial = "20ms", max = "200ms" }}
{extra}
"#,
        fake.url()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_clamp_lowered_mid_walk_does_not_end_a_newest_first_pass() {
    // 60 a page for three pages, then 40, without saying so.
    let fake = CertifycloudsFake::start(CertifycloudsFakeConfig {
        token: TOKEN.into(),
        order: Order::NewestFirst,
        max_limit: 60,
        lower_clamp_after_pages: 3,
        lowered_max_limit: 40,
        echo: Echo::Absent,
        empty_id_every: 7,
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook_by_ref().await;
    let now = Utc::now();
    let expected = fake.add_spread(600, now - chrono::Duration::minutes(230), now);
    let setup = Setup::new(
        "cc",
        &certifyclouds(
            &fake,
            "page_size = 250\nstart_at = \"-4h\"\noverlap = \"1m\"",
        ),
        &hook,
    );
    setup.write("token", TOKEN);
    let mut daemon = setup.spawn();
    wait_for_all(&expected, &hook, &setup).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    assert_eq!(duplicates(&hook), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retention_purge_between_pages_skips_nothing_oldest_first() {
    // After each page the 4 oldest entries are purged (up to 24): every
    // later entry moves 4 offsets back, under the walk's cursor.
    let fake = CertifycloudsFake::start(CertifycloudsFakeConfig {
        token: TOKEN.into(),
        order: Order::OldestFirst,
        max_limit: 50,
        echo: Echo::Clamped,
        purge_oldest_per_page: 4,
        purge_budget: 24,
        empty_id_every: 9,
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook_by_ref().await;
    let now = Utc::now();
    // The first page (50) holds every entry the purge (24) will delete.
    let expected = fake.add_spread(500, now - chrono::Duration::minutes(230), now);
    let setup = Setup::new(
        "cc",
        &certifyclouds(
            &fake,
            "page_size = 100\nstart_at = \"-4h\"\noverlap = \"1m\"",
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
    assert_eq!(fake.stats().purged.len(), 24, "{:?}", fake.stats().purged);
    // Shifts are visible, and the re-walks they cause stay bounded.
    let shifts = metric_value(
        &metrics,
        "auditrelay_source_offset_shifts_total{source=\"cc\"}",
    );
    assert!(shifts >= 1.0, "shifts: {shifts}");
    assert_eq!(duplicates(&hook), 0);
}
