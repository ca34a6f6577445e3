//! QuickZTNA cannot re-read the past: an answer holds the newest entries of
//! "now − days", at most the cap. These tests run the real binary against
//! the fake with its real-API behaviours on (small cap keeping the newest,
//! indexing delay, empty ids, inserts between polls) and check both halves
//! of "never lose an entry to that": the journal keeps polling while the
//! sink is down (across a SIGKILL), and a loss the journal cannot prevent is
//! reported as a data gap with its time range.

use crate::support;

use std::time::Duration;

use auditrelay::checkpoint::CheckpointStore;
use chrono::{DateTime, Utc};
use support::harness::{duplicates, metric_value, problems, wait_for_all, Setup};
use support::quickztna_fake::{QuickztnaFake, QuickztnaFakeConfig};
use support::webhook_receiver::{WebhookConfig, WebhookReceiver};

const ADMIN: &str = "qz-admin-SECRET-5e21";

/// A fake with the behaviours of the real service turned on.
async fn busy_fake(cap: usize, inserts_per_export: usize) -> QuickztnaFake {
    QuickztnaFake::start(QuickztnaFakeConfig {
        admin_token: ADMIN.into(),
        cap,
        index_delay: Duration::from_millis(800),
        empty_ids: 0.05,
        inserts_per_export,
        seed: 7,
        ..Default::default()
    })
    .await
    .unwrap()
}

/// A receiver that tells entries apart by `details` (unique per entry),
/// since some entries have an empty `id`.
async fn hook_by_details() -> WebhookReceiver {
    WebhookReceiver::start(WebhookConfig {
        id_field: "details".into(),
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
start_at = "-1h"
poll_interval = "200ms"
overlap = "10m"
batch_size = 50
timeout = "5s"
retry = {{ initial = "20ms", max = "200ms" }}
{extra}
"#,
        url = fake.url(),
        org = fake.org_id(),
    )
}

fn ago(secs: i64) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::seconds(secs)
}

/// Waits until `/metrics` shows `series` at `at_least` or more; its value.
async fn wait_for_metric(setup: &Setup, series: &str, at_least: f64, within: Duration) -> f64 {
    let deadline = tokio::time::Instant::now() + within;
    // Polls an endpoint of the daemon under test: there is no event to await.
    loop {
        let v = metric_value(&setup.metrics().await, series);
        if v >= at_least || tokio::time::Instant::now() >= deadline {
            return v;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `/readyz` mentions `needle`; its status and body.
async fn wait_readyz_with(setup: &Setup, needle: &str, within: Duration) -> Option<(u16, String)> {
    let deadline = tokio::time::Instant::now() + within;
    // Polls an endpoint of the daemon under test: there is no event to await.
    while tokio::time::Instant::now() < deadline {
        if let Some((status, body)) = setup.readyz().await {
            if body.contains(needle) {
                return Some((status, body));
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_journal_polls_through_a_sink_outage_and_a_sigkill_losing_nothing() {
    let fake = busy_fake(300, 5).await;
    let hook = hook_by_details().await;
    let first = fake.add_spread(100, ago(1800), ago(60));
    let setup = Setup::new("qz", &source(&fake, "export_cap = 300"), &hook);
    setup.write("qz_token", ADMIN);
    let mut daemon = setup.spawn();
    wait_for_all(&fake.details_of(&first), &hook, &setup).await;

    // The sink goes down. Over the outage far more entries than the cap are
    // created; the source must go on polling them into its journal.
    hook.set_down(true);
    for wave in 0..6 {
        if wave == 3 {
            daemon.kill().await;
            daemon = setup.spawn();
        }
        fake.add_spread(150, ago(1), ago(0));
        let asked = fake.stats().requests;
        assert!(
            fake.wait_for_requests(asked + 2, Duration::from_secs(20))
                .await,
            "the source stopped polling while its sink is down (wave {wave}):\n{}",
            setup.tail(20)
        );
    }
    let during = setup.metrics().await;
    assert!(
        metric_value(&during, "auditrelay_quickztna_journal_bytes{source=\"qz\"}") > 0.0,
        "nothing journaled during the outage"
    );
    let created = fake.all_keys();
    assert!(
        created.len() > 3 * 300,
        "the outage saw {} entries",
        created.len()
    );

    hook.set_down(false);
    wait_for_all(&fake.details_of(&created), &hook, &setup).await;
    let metrics = setup.metrics().await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    assert_eq!(
        metric_value(&metrics, "auditrelay_source_gaps_total{source=\"qz\"}"),
        0.0,
        "a data gap was reported:\n{}",
        setup.tail(20)
    );
    assert_eq!(duplicates(&hook), 0, "an entry was delivered twice");
    let stats = hook.stats();
    assert!(
        stats.down > 0,
        "the sink outage was not exercised: {stats:?}"
    );
    assert!(!setup.log_text().contains(ADMIN), "token in the log");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_full_journal_pauses_polling_says_so_and_resumes() {
    let fake = QuickztnaFake::start(QuickztnaFakeConfig {
        admin_token: ADMIN.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook_by_details().await;
    // About 150 KB of entries, the journal takes 64 KiB.
    let keys = fake.add_spread(600, ago(1800), ago(10));
    hook.set_down(true);
    let setup = Setup::new("qz", &source(&fake, "max_journal_bytes = 65536"), &hook);
    setup.write("qz_token", ADMIN);
    let mut daemon = setup.spawn();
    let (status, body) = wait_readyz_with(&setup, "source.qz.journal", Duration::from_secs(30))
        .await
        .expect("/readyz never named the full journal");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("max_journal_bytes"), "{body}");
    let full = setup.metrics().await;
    assert_eq!(
        metric_value(&full, "auditrelay_quickztna_journal_full{source=\"qz\"}"),
        1.0
    );
    assert!(
        metric_value(&full, "auditrelay_quickztna_journal_bytes{source=\"qz\"}") <= 65536.0,
        "the journal grew past its bound"
    );

    hook.set_down(false);
    wait_for_all(&fake.details_of(&keys), &hook, &setup).await;
    assert_eq!(
        wait_for_metric(
            &setup,
            "auditrelay_quickztna_journal_full{source=\"qz\"}",
            0.0,
            Duration::from_secs(5)
        )
        .await,
        0.0
    );
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    let log = setup.log_text();
    assert!(
        log.contains("polling is paused") && log.contains("polling resumes"),
        "the pause was not logged:\n{}",
        setup.tail(20)
    );
    assert_eq!(duplicates(&hook), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_more_entries_than_the_cap_between_two_polls_is_a_reported_gap() {
    let fake = QuickztnaFake::start(QuickztnaFakeConfig {
        admin_token: ADMIN.into(),
        cap: 200,
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = WebhookReceiver::start(WebhookConfig {
        id_field: "id".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let first = fake.add_spread(100, ago(1800), ago(60));
    let newest_first = fake.entries()[99].clone();
    let watermark = newest_first.created_at_text();
    let setup = Setup::new("qz", &source(&fake, "export_cap = 200"), &hook);
    setup.write("qz_token", ADMIN);
    let mut daemon = setup.spawn();
    wait_for_all(&first, &hook, &setup).await;

    // Between two polls the server gets more entries than its cap: the
    // journal cannot help, the oldest 300 are beyond reach.
    let burst = fake.add_spread(500, ago(40), ago(1));
    let gaps = wait_for_metric(
        &setup,
        "auditrelay_source_gaps_total{source=\"qz\"}",
        1.0,
        Duration::from_secs(30),
    )
    .await;
    assert_eq!(gaps, 1.0, "no data gap reported:\n{}", problems(&setup, 20));
    wait_for_all(&burst[300..], &hook, &setup).await;
    let metrics = setup.metrics().await;
    let (status, body) = setup.readyz().await.expect("readyz");
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());

    let oldest = fake
        .entries()
        .into_iter()
        .find(|e| e.key == burst[300])
        .expect("entry");
    let oldest_returned = oldest.created_at_text();
    let expected = (oldest.created_at - newest_first.created_at).num_milliseconds() as f64 / 1000.0;
    let seconds = metric_value(&metrics, "auditrelay_source_gap_seconds{source=\"qz\"}");
    assert!(
        (seconds - expected).abs() < 0.01,
        "gap of {seconds} s, expected {expected} s: from the watermark to the oldest entry returned"
    );
    assert_eq!(
        status, 200,
        "a past gap must not make the daemon unready: {body}"
    );
    assert!(
        body.contains("source.qz.data_gap") && body.contains(&oldest_returned),
        "/readyz does not show the gap: {body}"
    );
    let log = setup.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("data gap"))
        .expect("no data gap log line");
    assert!(line.contains("\"level\":\"ERROR\""), "{line}");
    assert!(
        line.contains(&format!("\"gap_from\":\"{watermark}\""))
            && line.contains(&format!("\"gap_to\":\"{oldest_returned}\"")),
        "{line}"
    );
    // What the gap means: the oldest of the burst never arrived.
    assert_eq!(hook.count_of(&burst[0]), 0);
    assert_eq!(duplicates(&hook), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_checkpoint_without_journal_is_migrated_without_loss_or_repeat() {
    let fake = QuickztnaFake::start(QuickztnaFakeConfig {
        admin_token: ADMIN.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = WebhookReceiver::start(WebhookConfig {
        id_field: "id".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let mut expected = fake.add_spread(80, ago(1800), ago(60));
    // A run in the journal-less mode writes the older checkpoint format.
    let setup = Setup::new("qz", &source(&fake, "journal = false"), &hook);
    setup.write("qz_token", ADMIN);
    let mut daemon = setup.spawn();
    wait_for_all(&expected, &hook, &setup).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    let store = CheckpointStore::open(&setup.state_dir()).unwrap();
    let old = String::from_utf8(store.load("qz").unwrap().expect("checkpoint")).unwrap();
    assert!(
        old.contains("\"watermark\"") && !old.contains("\"journal\""),
        "{old}"
    );

    // The same source with the journal (the default) goes on from there.
    let config = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, config.replace("journal = false", "")).unwrap();
    expected.extend(fake.add_spread(40, ago(30), ago(1)));
    let mut daemon = setup.spawn();
    wait_for_all(&expected, &hook, &setup).await;
    assert!(
        fake.wait_for_requests(fake.stats().requests + 5, Duration::from_secs(30))
            .await
    );
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    let new = String::from_utf8(store.load("qz").unwrap().expect("checkpoint")).unwrap();
    assert!(new.contains("\"journal\""), "not migrated: {new}");
    assert_eq!(
        duplicates(&hook),
        0,
        "the migration re-sent delivered entries"
    );
    assert_eq!(hook.unique_count(), expected.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_small_journal_takes_large_entries_a_few_at_a_time() {
    // 100 entries of about 1.2 KB are more than a 64 KiB journal holds in
    // one append, even empty: appends must be sized by bytes, not entries.
    let fake = QuickztnaFake::start(QuickztnaFakeConfig {
        admin_token: ADMIN.into(),
        details_bytes: 1000,
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook_by_details().await;
    let keys = fake.add_spread(250, ago(1800), ago(10));
    let setup = Setup::new("qz", &source(&fake, "max_journal_bytes = 65536"), &hook);
    setup.write("qz_token", ADMIN);
    let mut daemon = setup.spawn();
    wait_for_all(&fake.details_of(&keys), &hook, &setup).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    assert_eq!(duplicates(&hook), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_journal_removed_by_hand_is_started_afresh_not_read_from_the_old_position() {
    let fake = QuickztnaFake::start(QuickztnaFakeConfig {
        admin_token: ADMIN.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook_by_details().await;
    let first = fake.add_spread(200, ago(1800), ago(60));
    let setup = Setup::new("qz", &source(&fake, ""), &hook);
    setup.write("qz_token", ADMIN);
    let mut daemon = setup.spawn();
    wait_for_all(&fake.details_of(&first), &hook, &setup).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    // An operator wipes the journal (a full disk, a restore of the
    // checkpoints only): the checkpoint points into a journal that is gone.
    std::fs::remove_dir_all(setup.state_dir().join("journal").join("qz")).unwrap();
    let second = fake.add_spread(20, ago(5), ago(1));
    let mut daemon = setup.spawn();
    wait_for_all(&fake.details_of(&second), &hook, &setup).await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    let log = setup.log_text();
    assert!(
        !log.contains("damaged journal data"),
        "the new journal was read from the old position:\n{}",
        setup.tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_damaged_journal_record_is_counted_not_only_logged() {
    let fake = QuickztnaFake::start(QuickztnaFakeConfig {
        admin_token: ADMIN.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook_by_details().await;
    let keys = fake.add_spread(50, ago(1800), ago(60));
    hook.set_down(true);
    let setup = Setup::new("qz", &source(&fake, ""), &hook);
    setup.write("qz_token", ADMIN);
    let mut daemon = setup.spawn();
    assert!(
        wait_for_metric(
            &setup,
            "auditrelay_quickztna_journal_bytes{source=\"qz\"}",
            50.0 * 100.0,
            Duration::from_secs(30)
        )
        .await
            >= 50.0 * 100.0,
        "the entries were not journaled:\n{}",
        setup.tail(20)
    );
    daemon.kill().await;
    // Disk corruption inside the first record's bytes.
    let dir = setup.state_dir().join("journal").join("qz");
    let segment = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .find(|p| std::fs::metadata(p).unwrap().len() > 1000)
        .expect("a segment holding the entries");
    let mut bytes = std::fs::read(&segment).unwrap();
    bytes[20 + 8 + 10] ^= 0x55;
    std::fs::write(&segment, bytes).unwrap();

    hook.set_down(false);
    let mut daemon = setup.spawn();
    assert_eq!(
        wait_for_metric(
            &setup,
            "auditrelay_quickztna_journal_damaged_total{source=\"qz\"}",
            1.0,
            Duration::from_secs(30)
        )
        .await,
        1.0,
        "the skipped record is not counted:\n{}",
        setup.tail(20)
    );
    let expected = fake.details_of(&keys);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // All but the damaged entry arrive (it too, when the crash came before
    // the poller saved its state: then it is polled again).
    while support::harness::missing(&expected, &hook).len() > 1
        && tokio::time::Instant::now() < deadline
    {
        hook.wait_for_unique(hook.unique_count() + 1, Duration::from_secs(1))
            .await;
    }
    assert!(support::harness::missing(&expected, &hook).len() <= 1);
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_journal_off_and_on_again_delivers_no_entry_twice() {
    let fake = QuickztnaFake::start(QuickztnaFakeConfig {
        admin_token: ADMIN.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook_by_details().await;
    let mut keys = fake.add_spread(100, ago(1800), ago(60));
    let setup = Setup::new("qz", &source(&fake, "journal = true"), &hook);
    setup.write("qz_token", ADMIN);
    for (round, journal) in [true, false, true].into_iter().enumerate() {
        let text = std::fs::read_to_string(&setup.config).unwrap();
        let text = text.replace(
            &format!("journal = {}", !journal),
            &format!("journal = {journal}"),
        );
        std::fs::write(&setup.config, text).unwrap();
        if round > 0 {
            keys.extend(fake.add_spread(10, ago(5), ago(1)));
        }
        let mut daemon = setup.spawn();
        wait_for_all(&fake.details_of(&keys), &hook, &setup).await;
        assert!(daemon
            .terminate(Duration::from_secs(20))
            .await
            .expect("exit")
            .success());
    }
    assert_eq!(
        duplicates(&hook),
        0,
        "turning the journal off and on again delivered its delivered entries again"
    );
}
