//! The real binary against the Veza export fake and a webhook receiver, over
//! loopback: faults, kills, restarts, expired tokens, secrets. Every test
//! runs against a harsh server (see `harsh`): `page_size` clamped, pages
//! at the end of the log without a next token, and empty request ids.

use crate::support;

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rand::Rng;
use support::daemon::{free_port, http_get, Daemon};
use support::veza_fake::{Faults, TokenAtEnd, VezaFake, VezaFakeConfig};
use support::webhook_receiver::{WebhookConfig, WebhookFaults, WebhookReceiver};

const VEZA_TOKEN: &str = "test-veza-token";

/// The real API's harsh sides on top of a test's own faults: a clamp
/// below every `page_size` used here, no next token once the log's end is
/// reached, and every 9th event with `"request_id": ""`.
fn harsh(cfg: VezaFakeConfig) -> VezaFakeConfig {
    VezaFakeConfig {
        max_page_size: 37,
        token_at_end: TokenAtEnd::Missing,
        empty_id_every: 9,
        ..cfg
    }
}

/// A receiver telling events apart by the fake's `fake_ref` (the request
/// id may be empty).
fn by_ref(cfg: WebhookConfig) -> WebhookConfig {
    WebhookConfig {
        id_field: "fake_ref".into(),
        ..cfg
    }
}

struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    port: u16,
}

impl Setup {
    fn new(fake: &VezaFake, hook: &WebhookReceiver, extra_source: &str, extra_sink: &str) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("veza_token"), format!("{VEZA_TOKEN}\n")).unwrap();
        let port = free_port();
        let config = dir.path().join("auditrelay.toml");
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
{page_size}
start_at = "-24h"
poll_interval = "50ms"
rate_limit_wait = "1s"
rate_limit_jitter = "100ms"
timeout = "2s"
auth_retry = "200ms"
retry = {{ initial = "20ms", max = "300ms" }}
{extra_source}
[sinks.hook]
type = "webhook"
inputs = ["veza"]
url = "{hook}"
retry = {{ initial = "20ms", max = "300ms" }}
auth_retry = "200ms"
{extra_sink}
"#,
                state = dir.path().join("state").display(),
                page_size = if extra_source.contains("page_size") {
                    ""
                } else {
                    "page_size = 100"
                },
                dir = dir.path().display(),
                veza = fake.url(),
                hook = hook.url_for("/audit"),
            ),
        )
        .unwrap();
        Setup { dir, config, port }
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    fn spawn(&self) -> Daemon {
        Daemon::spawn(&self.config, &self.log())
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }
}

fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn missing(fake: &VezaFake, hook: &WebhookReceiver) -> Vec<String> {
    let got: HashSet<String> = hook.unique_ids().into_iter().collect();
    fake.all_ids()
        .into_iter()
        .filter(|id| !got.contains(id))
        .collect()
}

fn duplicates(hook: &WebhookReceiver) -> u64 {
    hook.counts().values().map(|c| c.saturating_sub(1)).sum()
}

async fn wait_all(fake: &VezaFake, hook: &WebhookReceiver, total: usize, log: &Path) {
    assert!(
        fake.wait_for_events(total, Duration::from_secs(60)).await,
        "fake never reached {total} events"
    );
    if !hook.wait_for_unique(total, Duration::from_secs(120)).await {
        panic!(
            "only {} of {total} ids arrived; missing e.g. {:?}\nlog tail:\n{}",
            hook.unique_count(),
            missing(fake, hook).iter().take(5).collect::<Vec<_>>(),
            tail(log, 30)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_id_arrives_through_every_fault_and_cooldowns_are_respected() {
    let total = 2000;
    let fake = VezaFake::start(harsh(VezaFakeConfig {
        initial_events: 1000,
        append_every: Some(Duration::from_millis(50)),
        append_batch: 25,
        total_events: total,
        seed: 7,
        default_wait: Duration::from_secs(1),
        slow_delay: Duration::from_millis(2500),
        faults: Faults {
            rate_limit: 0.05,
            server_error: 0.05,
            slow: 0.03,
            reset: 0.05,
            truncated: 0.05,
            duplicates: 0.05,
            not_json: 0.03,
        },
        ..Default::default()
    }))
    .await
    .unwrap();
    let hook = WebhookReceiver::start(by_ref(WebhookConfig {
        faults: WebhookFaults {
            server_error: 0.05,
            rate_limit: 0.05,
            ..Default::default()
        },
        ..Default::default()
    }))
    .await
    .unwrap();
    let setup = Setup::new(&fake, &hook, "", r#"compression = "gzip""#);
    let mut daemon = setup.spawn();

    // Expire every page token twice while it runs.
    assert!(
        hook.wait_for_unique(400, Duration::from_secs(60)).await,
        "no progress"
    );
    fake.expire_tokens();
    assert!(
        hook.wait_for_unique(1200, Duration::from_secs(60)).await,
        "no progress after token expiry"
    );
    fake.expire_tokens();
    wait_all(&fake, &hook, total, &setup.log()).await;

    let stats = fake.stats();
    assert_eq!(
        stats.cooldown_violations, 0,
        "requests sent during a ResourceExhausted cool-down"
    );
    assert_eq!(
        stats.filter_with_token, 0,
        "filter sent together with a page token"
    );
    let faults =
        stats.rate_limited + stats.server_error + stats.reset + stats.truncated + stats.not_json;
    assert!(faults > 0, "no fault was exercised: {stats:?}");
    assert!(stats.bad_token >= 1, "expired tokens were never presented");
    assert!(missing(&fake, &hook).is_empty());

    let (status, metrics) = http_get(&format!("http://127.0.0.1:{}/metrics", setup.port))
        .await
        .expect("metrics");
    assert_eq!(status, 200);
    let delivered = metric_value(
        &metrics,
        "auditrelay_events_delivered_total{sink=\"hook\",source=\"veza\"}",
    );
    assert!(delivered >= total as f64, "delivered metric {delivered}");
    assert!(metrics
        .contains("auditrelay_source_requests_total{outcome=\"transient_error\",source=\"veza\"}"));

    let status = daemon
        .terminate(Duration::from_secs(30))
        .await
        .expect("exit after SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    eprintln!(
        "faults: {stats:?}\nreceiver: {:?}\nduplicates at the sink: {}",
        hook.stats(),
        duplicates(&hook)
    );
}

fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .map(|v| v.trim().parse::<f64>().unwrap_or(-1.0))
        })
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_instants_loses_nothing() {
    let total = 3000;
    let fake = VezaFake::start(harsh(VezaFakeConfig {
        initial_events: 300,
        append_every: Some(Duration::from_millis(20)),
        append_batch: 10,
        total_events: total,
        seed: 11,
        ..Default::default()
    }))
    .await
    .unwrap();
    let hook = WebhookReceiver::start(by_ref(WebhookConfig::default()))
        .await
        .unwrap();
    let setup = Setup::new(&fake, &hook, "page_size = 50", "");
    let kills = 7;
    for _ in 0..kills {
        let mut daemon = setup.spawn();
        // Kill only once it is delivering, at a random instant after that.
        let before = hook.stats().requests;
        if !hook
            .wait_for_requests(before + 1, Duration::from_secs(30))
            .await
        {
            panic!("daemon made no progress; log:\n{}", tail(&setup.log(), 30));
        }
        let pause = rand::rng().random_range(20..400);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        daemon.kill().await;
    }
    let mut daemon = setup.spawn();
    wait_all(&fake, &hook, total, &setup.log()).await;
    let status = daemon
        .terminate(Duration::from_secs(30))
        .await
        .expect("exit after SIGTERM");
    assert!(status.success());
    assert!(missing(&fake, &hook).is_empty());
    eprintln!(
        "SIGKILLs: {kills}; ids: {total}; duplicates at the sink: {}",
        duplicates(&hook)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_resumes_without_loss_or_duplicates() {
    let total = 2000;
    let fake = VezaFake::start(harsh(VezaFakeConfig {
        initial_events: total,
        total_events: total,
        seed: 3,
        ..Default::default()
    }))
    .await
    .unwrap();
    let hook = WebhookReceiver::start(by_ref(WebhookConfig::default()))
        .await
        .unwrap();
    let setup = Setup::new(&fake, &hook, "", "");
    for stop_at in [300, 900] {
        let mut daemon = setup.spawn();
        assert!(hook.wait_for_unique(stop_at, Duration::from_secs(60)).await);
        let status = daemon
            .terminate(Duration::from_secs(30))
            .await
            .expect("exit after SIGTERM");
        assert!(status.success(), "{status:?}");
        assert_eq!(duplicates(&hook), 0);
    }
    let mut daemon = setup.spawn();
    wait_all(&fake, &hook, total, &setup.log()).await;
    assert!(daemon
        .terminate(Duration::from_secs(30))
        .await
        .expect("exit")
        .success());
    assert_eq!(duplicates(&hook), 0, "SIGTERM must not cause duplicates");
    assert_eq!(hook.unique_count(), total);
    let log = std::fs::read_to_string(setup.log()).unwrap();
    assert!(log.contains("draining batches in flight"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_token_restarts_from_overlap_without_duplicates() {
    let fake = VezaFake::start(harsh(VezaFakeConfig {
        initial_events: 1500,
        total_events: 1500,
        seed: 5,
        ..Default::default()
    }))
    .await
    .unwrap();
    let hook = WebhookReceiver::start(by_ref(WebhookConfig::default()))
        .await
        .unwrap();
    let setup = Setup::new(&fake, &hook, r#"overlap = "10m""#, "");

    // While running.
    let mut daemon = setup.spawn();
    assert!(hook.wait_for_unique(500, Duration::from_secs(60)).await);
    fake.expire_tokens();
    wait_all(&fake, &hook, 1500, &setup.log()).await;
    assert!(daemon
        .terminate(Duration::from_secs(30))
        .await
        .expect("exit")
        .success());
    assert!(fake.stats().bad_token >= 1);
    assert_eq!(
        duplicates(&hook),
        0,
        "ids inside the overlap must be dropped"
    );

    // At startup: the stored token has expired meanwhile.
    fake.expire_tokens();
    fake.append_now(200);
    let first_calls = fake.stats().first_calls;
    let mut daemon = setup.spawn();
    wait_all(&fake, &hook, 1700, &setup.log()).await;
    assert!(daemon
        .terminate(Duration::from_secs(30))
        .await
        .expect("exit")
        .success());
    assert!(
        fake.stats().first_calls > first_calls,
        "no filter restart after the stored token was rejected"
    );
    assert_eq!(duplicates(&hook), 0);
    let log = std::fs::read_to_string(setup.log()).unwrap();
    assert!(log.contains("page token rejected"), "restart not logged");
    assert_eq!(fake.stats().cooldown_violations, 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_token_is_reread_reported_in_readyz_and_never_logged() {
    const WRONG: &str = "wrong-veza-SECRET-1f2e3d";
    const HOOK_BEARER: &str = "hook-bearer-SECRET-9a8b7c";
    const HMAC_KEY: &str = "hmac-key-SECRET-5d6e7f";
    let fake = VezaFake::start(harsh(VezaFakeConfig {
        initial_events: 300,
        total_events: 300,
        ..Default::default()
    }))
    .await
    .unwrap();
    let hook = WebhookReceiver::start(by_ref(WebhookConfig {
        expect_authorization: Some(format!("Bearer {HOOK_BEARER}")),
        hmac_secret: Some(HMAC_KEY.as_bytes().to_vec()),
        ..Default::default()
    }))
    .await
    .unwrap();
    let dir_extra = tempfile::tempdir().unwrap();
    let bearer = dir_extra.path().join("bearer");
    let hmac = dir_extra.path().join("hmac");
    std::fs::write(&bearer, HOOK_BEARER).unwrap();
    std::fs::write(&hmac, HMAC_KEY).unwrap();
    let setup = Setup::new(
        &fake,
        &hook,
        "",
        &format!(
            "token_file = \"{}\"\nhmac_secret_file = \"{}\"",
            bearer.display(),
            hmac.display()
        ),
    );
    std::fs::write(setup.path("veza_token"), WRONG).unwrap();
    let mut daemon = setup.spawn();

    assert!(fake.wait_for_requests(3, Duration::from_secs(30)).await);
    let readyz = format!("http://127.0.0.1:{}/readyz", setup.port);
    let mut unready = None;
    for _ in 0..100 {
        if let Some((503, body)) = http_get(&readyz).await {
            unready = Some(body);
            break;
        }
        fake.wait_for_requests(fake.stats().requests + 1, Duration::from_secs(5))
            .await;
    }
    let body = unready.expect("/readyz never reported the auth failure");
    assert!(
        body.contains("source.veza") && body.contains("rejected the token"),
        "{body}"
    );
    assert!(fake.stats().unauthorized >= 1);

    // Rotate the secret file: picked up without a restart.
    std::fs::write(setup.path("veza_token"), VEZA_TOKEN).unwrap();
    wait_all(&fake, &hook, 300, &setup.log()).await;
    let (status, _) = http_get(&readyz).await.expect("readyz");
    assert_eq!(status, 200);
    let (_, metrics) = http_get(&format!("http://127.0.0.1:{}/metrics", setup.port))
        .await
        .expect("metrics");
    assert!(daemon
        .terminate(Duration::from_secs(30))
        .await
        .expect("exit")
        .success());
    assert_eq!(hook.stats().hmac_failures, 0);

    let log = std::fs::read_to_string(setup.log()).unwrap();
    assert!(
        log.contains("rejected the token"),
        "auth failure not logged"
    );
    for secret in [WRONG, VEZA_TOKEN, HOOK_BEARER, HMAC_KEY] {
        assert!(!log.contains(secret), "secret {secret} leaked into the log");
        assert!(
            !metrics.contains(secret),
            "secret {secret} leaked into metrics"
        );
    }
}
