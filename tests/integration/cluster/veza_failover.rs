//! The issue's "done when": two real daemons with one config and
//! `[cluster] backend = "etcd"`, tailing a harsh Veza fake into one
//! webhook receiver, SIGKILLed and restarted alternately while events keep
//! arriving. Every event arrives, a standby owns the source within
//! `lease_ttl` + 2 s, and duplicates stay within one commit interval (the
//! pages in flight plus the one being committed) per failover.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::support::daemon::{free_port, http_get, Daemon};
use crate::support::etcd::Etcd;
use crate::support::harness::metric_value;
use crate::support::veza_fake::{Faults, TokenAtEnd, VezaFake, VezaFakeConfig};
use crate::support::webhook_receiver::{WebhookConfig, WebhookFaults, WebhookReceiver};

const TTL_S: u64 = 3;
const MAX_IN_FLIGHT: usize = 4;
/// The fake clamps every page to this many events.
const PAGE: usize = 37;
const OWNED: &str = "auditrelay_cluster_source_owned{source=\"veza\"}";

struct Node {
    dir: tempfile::TempDir,
    port: u16,
    daemon: Option<Daemon>,
}

impl Node {
    fn new(id: &str, etcd: &Etcd, veza: &VezaFake, hook: &WebhookReceiver) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        std::fs::write(dir.path().join("veza_token"), "test-veza-token\n").expect("token");
        let toml = format!(
            r#"
state_dir = "{d}/state"
log_format = "json"
shutdown_timeout = "5s"
[server]
listen = "127.0.0.1:{port}"
[pipeline]
max_in_flight = {MAX_IN_FLIGHT}
retry = {{ initial = "50ms", max = "200ms" }}
[cluster]
backend = "etcd"
name = "veza-ha"
instance_id = "{id}"
lease_ttl = "{TTL_S}s"
[cluster.etcd]
endpoints = ["{etcd}"]
prefix = "/auditrelay-test"
[sources.veza]
type = "veza"
url = "{veza}"
token_file = "{d}/veza_token"
page_size = 100
start_at = "-24h"
poll_interval = "50ms"
rate_limit_wait = "1s"
rate_limit_jitter = "100ms"
timeout = "2s"
retry = {{ initial = "20ms", max = "300ms" }}
[sinks.hook]
type = "webhook"
inputs = ["veza"]
url = "{hook}"
retry = {{ initial = "20ms", max = "300ms" }}
"#,
            etcd = etcd.endpoint(),
            veza = veza.url(),
            hook = hook.url_for("/audit"),
        );
        std::fs::write(dir.path().join("auditrelay.toml"), toml).expect("config");
        Node {
            dir,
            port,
            daemon: None,
        }
    }

    fn start(&mut self) {
        let config = self.dir.path().join("auditrelay.toml");
        self.daemon = Some(Daemon::spawn(&config, &self.log_path()));
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    async fn owns(&self) -> bool {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        http_get(&url)
            .await
            .is_some_and(|(_, b)| metric_value(&b, OWNED) == 1.0)
    }
}

/// Polls `cond` every 50 ms until it holds; panics after `within`.
async fn until<F, Fut>(what: &str, within: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn veza_owners_sigkilled_alternately_under_load_deliver_everything_with_bounded_duplicates() {
    let etcd = Etcd::start().await;
    let total = 4000;
    let veza = VezaFake::start(VezaFakeConfig {
        initial_events: 400,
        append_every: Some(Duration::from_millis(50)),
        append_batch: 10,
        total_events: total,
        seed: 20,
        default_wait: Duration::from_secs(1),
        slow_delay: Duration::from_millis(800),
        faults: Faults {
            rate_limit: 0.02,
            server_error: 0.05,
            slow: 0.03,
            reset: 0.05,
            truncated: 0.03,
            duplicates: 0.05,
            not_json: 0.02,
        },
        // The real API's harsh sides: a silent page-size clamp, no next
        // token at the end of the log, empty request ids.
        max_page_size: PAGE,
        token_at_end: TokenAtEnd::Missing,
        empty_id_every: 9,
        ..Default::default()
    })
    .await
    .expect("veza fake");
    let hook = WebhookReceiver::start(WebhookConfig {
        id_field: "fake_ref".into(),
        faults: WebhookFaults {
            server_error: 0.05,
            answer_delay: Some(Duration::from_millis(20)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .expect("webhook receiver");
    let mut nodes = [
        Node::new("a", &etcd, &veza, &hook),
        Node::new("b", &etcd, &veza, &hook),
    ];
    for n in nodes.iter_mut() {
        n.start();
    }
    let kills = 3;
    for round in 0..kills {
        until("an owner", Duration::from_secs(TTL_S + 6), || async {
            nodes[0].owns().await || nodes[1].owns().await
        })
        .await;
        let owner = if nodes[0].owns().await { 0 } else { 1 };
        let have = hook.unique_count();
        assert!(
            hook.wait_for_unique(have + 100, Duration::from_secs(20))
                .await,
            "round {round}: the owner delivers nothing\n{}",
            nodes[owner].log_tail()
        );
        nodes[owner].daemon.as_mut().expect("running").kill().await;
        let standby = 1 - owner;
        let took = until("the standby owning", Duration::from_secs(TTL_S + 6), || {
            nodes[standby].owns()
        })
        .await;
        assert!(
            took <= Duration::from_secs(TTL_S + 2),
            "round {round}: the standby took {took:?} (lease_ttl {TTL_S}s + 2s allowed)\n{}",
            nodes[standby].log_tail()
        );
        eprintln!("failover {round}: the standby owned the source after {took:?}");
        nodes[owner].start();
    }
    assert!(
        veza.wait_for_events(total, Duration::from_secs(30)).await,
        "the fake never reached {total} events"
    );
    if !hook.wait_for_unique(total, Duration::from_secs(30)).await {
        let got: std::collections::HashSet<String> = hook.unique_ids().into_iter().collect();
        let missing: Vec<String> = veza
            .all_ids()
            .into_iter()
            .filter(|id| !got.contains(id))
            .take(5)
            .collect();
        panic!(
            "only {} of {total} events arrived; missing e.g. {missing:?}\na:\n{}\nb:\n{}",
            hook.unique_count(),
            nodes[0].log_tail(),
            nodes[1].log_tail()
        );
    }
    let duplicates: u64 = hook.counts().values().map(|c| c.saturating_sub(1)).sum();
    let per_failover = (MAX_IN_FLIGHT * PAGE + PAGE) as u64;
    eprintln!("{duplicates} duplicates for {kills} failovers");
    assert!(
        duplicates <= kills as u64 * per_failover,
        "{duplicates} duplicates for {kills} failovers (bound {per_failover} each)"
    );
}
