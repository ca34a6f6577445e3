//! Duplicates per SIGKILL (issue 19): the real binary tails a 60,000-event
//! Veza backlog in 1,000-event pages to three sinks with every batching
//! and concurrency key at its default: HEC with indexer acks, a webhook,
//! syslog over TCP to rsyslog. It is killed 20 times while delivering.
//! Nothing may be lost, and a kill re-sends about the one request each
//! sink had at its receiver unanswered, not the pages in flight (before:
//! ~2,500 events per kill per sink), nor syslog's replay window (before:
//! ~5,500).

use crate::support;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use rand::Rng;
use support::daemon::{free_port, Daemon};
use support::hec_fake::{HecFake, HecFakeConfig, HecFaults};
use support::rsyslog::Rsyslog;
use support::veza_fake::{VezaFake, VezaFakeConfig};
use support::webhook_receiver::{WebhookConfig, WebhookFaults, WebhookReceiver};

const KILLS: u64 = 20;
const TOTAL: usize = 60_000;
const PAGE: usize = 1000;
/// The issue's target: at most one request of the default batching.
const TARGET: f64 = 1000.0;

fn duplicates(counts: &HashMap<String, u64>) -> u64 {
    counts.values().map(|c| c.saturating_sub(1)).sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_resends_about_one_request_per_sink() {
    let fake = VezaFake::start(VezaFakeConfig {
        initial_events: TOTAL,
        total_events: TOTAL,
        seed: 19,
        max_page_size: PAGE,
        ..Default::default()
    })
    .await
    .unwrap();
    let hec = HecFake::start(HecFakeConfig {
        ack: true,
        id_field: "fake_ref".into(),
        faults: HecFaults {
            ack_delay: Duration::from_millis(150),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = WebhookReceiver::start(WebhookConfig {
        id_field: "fake_ref".into(),
        faults: WebhookFaults {
            // Received but not yet confirmed: the window a kill hits.
            answer_delay: Some(Duration::from_millis(20)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let rsyslog_dir = dir.path().join("rsyslog");
    std::fs::create_dir_all(&rsyslog_dir).unwrap();
    let rsyslog = Rsyslog::start(&rsyslog_dir).await;
    support::harness::write_default_tokens(dir.path());
    let cfg = dir.path().join("auditrelay.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
state_dir = "{d}/state"
log_format = "json"
[server]
listen = "127.0.0.1:{port}"
[pipeline]
retry = {{ initial = "50ms", max = "300ms" }}
[sources.veza]
type = "veza"
url = "{veza}"
token_file = "{d}/veza_token"
page_size = {PAGE}
start_at = "-24h"
poll_interval = "50ms"
retry = {{ initial = "20ms", max = "200ms" }}
[sinks.hec]
type = "splunk_hec"
inputs = ["veza"]
endpoint = "{hec}"
token_file = "{d}/hec_token"
indexer_ack = true
ack_poll_interval = "50ms"
retry = {{ initial = "20ms", max = "200ms" }}
[sinks.hook]
type = "webhook"
inputs = ["veza"]
url = "{hook}"
retry = {{ initial = "20ms", max = "200ms" }}
[sinks.siem]
type = "syslog"
inputs = ["veza"]
address = "tcp://127.0.0.1:{tcp}"
retry = {{ initial = "50ms", max = "300ms" }}
"#,
            d = dir.path().display(),
            port = free_port(),
            veza = fake.url(),
            hec = hec.url(),
            hook = hook.url_for("/audit"),
            tcp = rsyslog.tcp_port,
        ),
    )
    .unwrap();
    let log = dir.path().join("daemon.log");

    for kill in 0..KILLS {
        let mut daemon = Daemon::spawn(&cfg, &log);
        // Killed while delivering: once the webhook has had a few more
        // requests, at a random instant after.
        let before = hook.requests();
        assert!(
            hook.wait_for_requests(before + 2, Duration::from_secs(30))
                .await,
            "daemon delivered nothing after {kill} kills"
        );
        tokio::time::sleep(Duration::from_millis(rand::rng().random_range(0..300))).await;
        daemon.kill().await;
    }
    let mut daemon = Daemon::spawn(&cfg, &log);
    let all: HashSet<String> = fake.all_ids().into_iter().collect();
    assert_eq!(all.len(), TOTAL);
    assert!(
        hook.wait_for_unique(TOTAL, Duration::from_secs(120)).await,
        "webhook: {} of {TOTAL}",
        hook.unique_count()
    );
    assert!(
        hec.wait_for_unique(TOTAL, Duration::from_secs(120)).await,
        "hec: {} of {TOTAL}",
        hec.counts().len()
    );
    let syslog = rsyslog
        .wait_for_ids("tcp", &all, Duration::from_secs(120))
        .await;
    let status = daemon
        .terminate(Duration::from_secs(30))
        .await
        .expect("exit after SIGTERM");
    assert!(status.success());

    // What the restarts asked HEC about (requests awaiting their ack at a
    // kill) and how many of those read true (not sent again).
    let (mut asked, mut acknowledged) = (0u64, 0u64);
    for line in std::fs::read_to_string(&log).unwrap_or_default().lines() {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(line) {
            if v["message"]
                .as_str()
                .is_some_and(|m| m.starts_with("acks pending before the restart"))
            {
                asked += v["asked"].as_u64().unwrap_or(0);
                acknowledged += v["acknowledged"].as_u64().unwrap_or(0);
            }
        }
    }
    eprintln!(
        "kill_duplicates: splunk_hec: {asked} requests awaited their ack at a kill, \
         {acknowledged} of them read true when asked after the restart (not sent again)"
    );
    let mut syslog_counts: HashMap<String, u64> = HashMap::new();
    for r in &syslog {
        if let Some(id) = r.event_ref().or_else(|| r.sd_param("id")) {
            *syslog_counts.entry(id).or_default() += 1;
        }
    }
    let mut per_kill = Vec::new();
    // Default requests: HEC 1000 events, webhook 500, syslog 1000.
    for (sink, counts, request) in [
        ("splunk_hec (ack)", hec.counts(), 1000.0),
        ("webhook", hook.counts(), 500.0),
        ("syslog TCP", syslog_counts, 1000.0),
    ] {
        let missing = all.iter().filter(|id| !counts.contains_key(*id)).count();
        assert_eq!(missing, 0, "{sink}: {missing} ids missing");
        let dups = duplicates(&counts) as f64 / KILLS as f64;
        eprintln!(
            "kill_duplicates: {sink}: 0 of {TOTAL} lost, {dups:.0} duplicates per SIGKILL \
             ({:.2} default requests; a page is {PAGE}) over {KILLS} kills",
            dups / request,
        );
        per_kill.push((sink, dups));
    }
    // Measured (debug build, 2 shared cores, 10 kills): HEC 594-694,
    // webhook 500-550, syslog TCP 200-453 per kill. Before: HEC 2,887 and
    // webhook 1,350 (4 requests at once), syslog TCP 5,465 (the whole
    // replay window resent). What is left is the request the receiver
    // held unanswered at the kill, which no restart can know it kept. The
    // bound leaves room for a loaded machine, where a confirmation more is
    // not yet synced at the kill.
    for (sink, dups) in per_kill {
        let bound = 1.5 * TARGET;
        assert!(
            dups <= bound,
            "{sink}: {dups:.0} duplicates per kill, more than {bound:.0}"
        );
    }
}
