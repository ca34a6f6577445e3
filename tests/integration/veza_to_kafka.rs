//! The real binary, Veza fake → Kafka, killed with SIGKILL at random instants
//! while the brokers (librdkafka's mock cluster in this process, and tansu as
//! a separate process) outlive it. No id may be missing.

use crate::support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use rdkafka::mocking::MockCluster;
use support::daemon::{free_port, Daemon};
use support::kafka::{consume_unique, create_topic, ids, Tansu};
use support::veza_fake::{TokenAtEnd, VezaFake, VezaFakeConfig};

fn write_config(dir: &Path, veza: &str, bootstrap: &str) -> PathBuf {
    std::fs::write(dir.join("veza_token"), "test-veza-token").unwrap();
    let cfg = dir.join("auditrelay.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
state_dir = "{state}"
log_format = "json"
[server]
listen = "127.0.0.1:{port}"
[sources.veza]
type = "veza"
url = "{veza}"
token_file = "{dir}/veza_token"
page_size = 50
start_at = "-24h"
poll_interval = "50ms"
retry = {{ initial = "20ms", max = "300ms" }}
[sinks.bus]
type = "kafka"
inputs = ["veza"]
brokers = ["{bootstrap}"]
topic = "audit.veza"
retry = {{ initial = "50ms", max = "500ms" }}
"#,
            state = dir.join("state").display(),
            dir = dir.display(),
            port = free_port(),
        ),
    )
    .unwrap();
    cfg
}

/// Kills the daemon `kills` times at random instants once it is fetching,
/// then lets a last run finish; returns the log path.
async fn crash_and_finish(cfg: &Path, log: &Path, fake: &VezaFake, kills: usize) -> Daemon {
    for _ in 0..kills {
        let mut daemon = Daemon::spawn(cfg, log);
        let before = fake.stats().requests;
        assert!(
            fake.wait_for_requests(before + 2, Duration::from_secs(30))
                .await,
            "daemon made no progress"
        );
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(20..400))).await;
        daemon.kill().await;
    }
    Daemon::spawn(cfg, log)
}

async fn read_all(
    bootstrap: String,
    partitions: i32,
    unique: usize,
) -> Vec<support::kafka::Received> {
    tokio::task::spawn_blocking(move || {
        consume_unique(
            &bootstrap,
            "audit.veza",
            partitions,
            unique,
            Duration::from_secs(60),
        )
    })
    .await
    .unwrap()
}

async fn run_crash_test(bootstrap: &str, partitions: i32, fake: VezaFake, total: usize) {
    let dir = tempfile::tempdir().unwrap();
    let cfg = write_config(dir.path(), &fake.url(), bootstrap);
    let log = dir.path().join("daemon.log");
    let kills = 6;
    let mut last = crash_and_finish(&cfg, &log, &fake, kills).await;
    assert!(fake.wait_for_events(total, Duration::from_secs(60)).await);
    // The last run has everything once the topic holds every id.
    let mut seen = HashSet::new();
    let mut got = Vec::new();
    for _ in 0..3 {
        got = read_all(bootstrap.to_string(), partitions, total).await;
        seen = ids(&got).into_iter().collect();
        if seen.len() >= total {
            break;
        }
    }
    let status = last
        .terminate(Duration::from_secs(30))
        .await
        .expect("exit after SIGTERM");
    assert!(status.success());
    let missing: Vec<String> = fake
        .all_ids()
        .into_iter()
        .filter(|id| !seen.contains(id))
        .collect();
    assert!(
        missing.is_empty(),
        "{} ids missing, e.g. {:?}; log tail:\n{}",
        missing.len(),
        &missing[..missing.len().min(5)],
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .join("\n")
    );
    eprintln!(
        "SIGKILLs: {kills}; ids: {total}; messages: {}; duplicates: {}",
        got.len(),
        got.len() - seen.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_a_mock_cluster_loses_nothing() {
    let total = 2000;
    let fake = VezaFake::start(VezaFakeConfig {
        initial_events: 200,
        append_every: Some(Duration::from_millis(20)),
        append_batch: 10,
        total_events: total,
        // The real API's harsh sides: a clamp below `page_size`, no next
        // token at the end of the log, empty request ids.
        max_page_size: 37,
        token_at_end: TokenAtEnd::Missing,
        empty_id_every: 9,
        ..Default::default()
    })
    .await
    .unwrap();
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("audit.veza", 3, 3).unwrap();
    run_crash_test(&mock.bootstrap_servers(), 3, fake, total).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_tansu_loses_nothing() {
    let total = 1500;
    let fake = VezaFake::start(VezaFakeConfig {
        initial_events: 200,
        append_every: Some(Duration::from_millis(20)),
        append_batch: 10,
        total_events: total,
        seed: 9,
        // The real API's harsh sides: a clamp below `page_size`, no next
        // token at the end of the log, empty request ids.
        max_page_size: 37,
        token_at_end: TokenAtEnd::Missing,
        empty_id_every: 9,
        ..Default::default()
    })
    .await
    .unwrap();
    let tansu = Tansu::start(free_port()).await;
    create_topic(&tansu.bootstrap, "audit.veza", 1).await;
    run_crash_test(&tansu.bootstrap, 1, fake, total).await;
    tansu.stop().await;
}
