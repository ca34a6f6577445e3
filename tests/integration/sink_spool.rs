//! `on_unavailable = "spool"` with the real binary: one webhook down, the
//! other keeps receiving and the checkpoint keeps moving; the down sink's
//! batches wait on disk through a SIGKILL and a torn spool tail, and arrive
//! when it is back.

use crate::support;

use std::collections::HashSet;
use std::path::Path;
use std::time::Duration;

use support::daemon::{free_port, http_get, Daemon};
use support::harness::metric_value;
use support::veza_fake::{VezaFake, VezaFakeConfig};
use support::webhook_receiver::{WebhookConfig, WebhookReceiver};

fn write_config(
    dir: &Path,
    port: u16,
    fake: &VezaFake,
    good: &str,
    late: &str,
) -> std::path::PathBuf {
    std::fs::write(dir.join("veza_token"), "test-veza-token\n").unwrap();
    let config = dir.join("auditrelay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
state_dir = "{state}"
log_format = "json"
shutdown_timeout = "20s"
[server]
listen = "127.0.0.1:{port}"
[pipeline]
max_in_flight = 4
[sources.veza]
type = "veza"
url = "{veza}"
token_file = "{dir}/veza_token"
page_size = 100
start_at = "-24h"
poll_interval = "50ms"
retry = {{ initial = "20ms", max = "300ms" }}
[sinks.good]
type = "webhook"
inputs = ["veza"]
url = "{good}"
retry = {{ initial = "20ms", max = "300ms" }}
[sinks.late]
type = "webhook"
inputs = ["veza"]
url = "{late}"
retry = {{ initial = "20ms", max = "300ms" }}
on_unavailable = "spool"
spool_after = "300ms"
spool_max_bytes = 67108864
"#,
            state = dir.join("state").display(),
            dir = dir.display(),
            veza = fake.url(),
        ),
    )
    .unwrap();
    config
}

fn missing(fake: &VezaFake, hook: &WebhookReceiver) -> Vec<String> {
    let got: HashSet<String> = hook.unique_ids().into_iter().collect();
    fake.all_ids()
        .into_iter()
        .filter(|id| !got.contains(id))
        .collect()
}

async fn metrics(port: u16) -> String {
    http_get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_sink_is_spooled_while_the_other_flows_and_catches_up_after_a_kill() {
    let total = 1500;
    let fake = VezaFake::start(VezaFakeConfig {
        initial_events: total,
        total_events: total + 200,
        ..VezaFakeConfig::default()
    })
    .await
    .unwrap();
    let good = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    let late = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    late.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        port,
        &fake,
        &good.url_for("/audit"),
        &late.url_for("/audit"),
    );
    let log = dir.path().join("daemon.log");
    let mut daemon = Daemon::spawn(&config, &log);

    // With `block` the source would stop after max_in_flight pages; with
    // the spool every page reaches the healthy sink.
    assert!(
        good.wait_for_unique(total, Duration::from_secs(60)).await,
        "the healthy sink got {} of {total}; log:\n{}",
        good.unique_count(),
        daemon.log_text()
    );
    assert_eq!(late.unique_count(), 0);
    let text = metrics(port).await;
    assert!(
        metric_value(
            &text,
            "auditrelay_sink_spool_batches_written_total{sink=\"late\"}"
        ) >= 10.0,
        "{text}"
    );
    assert!(metric_value(&text, "auditrelay_sink_spool_bytes{sink=\"late\"}") > 0.0);
    let (code, body) = http_get(&format!("http://127.0.0.1:{port}/readyz"))
        .await
        .unwrap();
    assert_eq!(code, 503, "the outage must show in /readyz: {body}");
    assert!(body.contains("sink.late"), "{body}");
    let checkpoint = dir.path().join("state/checkpoints/veza.checkpoint");
    assert!(
        checkpoint.exists(),
        "the checkpoint moved on without the dead sink"
    );

    // Killed with the spool full of batches; a crash in the middle of an
    // append would leave half a record at the end.
    daemon.kill().await;
    let spool = dir.path().join("state/sink_spool/late");
    let newest = std::fs::read_dir(&spool)
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "spool"))
        .max()
        .expect("a spool segment");
    let mut torn = std::fs::read(&newest).unwrap();
    torn.extend_from_slice(&[0x40, 0x00, 0x00, 0x00, 0xde, 0xad]);
    std::fs::write(&newest, &torn).unwrap();

    late.set_down(false);
    let mut daemon = Daemon::spawn(&config, &log);
    assert!(
        late.wait_for_unique(total, Duration::from_secs(60)).await,
        "the spooled sink got {} of {total}; missing e.g. {:?}; log:\n{}",
        late.unique_count(),
        missing(&fake, &late).iter().take(5).collect::<Vec<_>>(),
        daemon.log_text()
    );
    let text = daemon.log_text();
    assert!(
        text.contains("torn record"),
        "the cut tail must be reported"
    );
    // Back to direct delivery: new events reach both sinks.
    fake.append_now(200);
    assert!(
        good.wait_for_unique(total + 200, Duration::from_secs(60))
            .await
    );
    assert!(
        late.wait_for_unique(total + 200, Duration::from_secs(60))
            .await
    );
    assert!(missing(&fake, &late).is_empty());
    assert!(missing(&fake, &good).is_empty());
    let duplicates: u64 = late.counts().values().map(|c| c.saturating_sub(1)).sum();
    eprintln!(
        "spooled sink: {} unique, {duplicates} duplicates",
        late.unique_count()
    );
    // The drainer notices the empty spool after the receiver got the last
    // batch (confirmation, position saved): wait for it, bounded.
    let mut left_spool = false;
    for _ in 0..500 {
        if daemon
            .log_text()
            .contains("spool is empty; delivering directly again")
        {
            left_spool = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        left_spool,
        "the sink must leave the spool when it is empty:\n{}",
        daemon.log_text()
    );
    let status = daemon.terminate(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}

/// Polls `/metrics` until `series` reaches `at_least` (bounded).
async fn wait_metric(port: u16, series: &str, at_least: f64) -> bool {
    for _ in 0..600 {
        if metric_value(&metrics(port).await, series) >= at_least {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spooled_sink_changed_by_a_reload_keeps_its_spool() {
    let total = 1000;
    let fake = VezaFake::start(VezaFakeConfig {
        initial_events: total,
        total_events: total,
        ..VezaFakeConfig::default()
    })
    .await
    .unwrap();
    let good = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    let late = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    late.set_down(true);
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let config = write_config(
        dir.path(),
        port,
        &fake,
        &good.url_for("/audit"),
        &late.url_for("/audit"),
    );
    let mut daemon = Daemon::spawn(&config, &dir.path().join("daemon.log"));
    assert!(good.wait_for_unique(total, Duration::from_secs(60)).await);
    assert!(
        wait_metric(
            port,
            "auditrelay_sink_spool_batches_written_total{sink=\"late\"}",
            5.0
        )
        .await
    );

    // Change the spooled sink (its URL path) and reload while its batches
    // wait on disk: the rebuilt sink must take the spool over.
    let text = std::fs::read_to_string(&config).unwrap();
    let changed = text.replace(&late.url_for("/audit"), &late.url_for("/audit2"));
    assert_ne!(text, changed);
    std::fs::write(&config, changed).unwrap();
    daemon.signal(libc::SIGHUP);
    assert!(
        wait_metric(port, "auditrelay_config_reloads_total{outcome=\"ok\"}", 1.0).await,
        "reload never succeeded: {}",
        daemon.log_text()
    );
    late.set_down(false);
    assert!(
        late.wait_for_unique(total, Duration::from_secs(60)).await,
        "the spooled sink got {} of {total} after the reload; missing e.g. {:?}; log:\n{}",
        late.unique_count(),
        missing(&fake, &late).iter().take(5).collect::<Vec<_>>(),
        daemon.log_text()
    );
    assert_eq!(late.last_path().as_deref(), Some("/audit2"));
    let status = daemon.terminate(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
