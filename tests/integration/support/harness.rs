//! A config and state directory for running the real binary with one source
//! (given as TOML) feeding a webhook receiver, plus the helpers the source
//! end-to-end tests share.

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::daemon::{free_port, http_get, Daemon};
use super::hec_fake::HecFakeConfig;
use super::veza_fake::VezaFakeConfig;
use super::webhook_receiver::WebhookReceiver;

pub struct Setup {
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    /// Port of `/metrics`, `/healthz`, `/readyz`.
    pub port: u16,
}

impl Setup {
    /// `[sources.<name>]` is `source_toml` (which must set `type`); the sink
    /// `hook` posts it to `hook`. `{dir}` in `source_toml` is replaced by the
    /// temp directory.
    pub fn new(name: &str, source_toml: &str, hook: &WebhookReceiver) -> Setup {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let config = dir.path().join("auditrelay.toml");
        let source_toml = source_toml.replace("{dir}", &dir.path().display().to_string());
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
[sources.{name}]
{source_toml}
[sinks.hook]
type = "webhook"
inputs = ["{name}"]
url = "{hook}"
retry = {{ initial = "20ms", max = "300ms" }}
auth_retry = "200ms"
"#,
                state = dir.path().join("state").display(),
                hook = hook.url_for("/audit"),
            ),
        )
        .expect("write config");
        Setup { dir, config, port }
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    pub fn spawn(&self) -> Daemon {
        Daemon::spawn(&self.config, &self.log())
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn write(&self, rel: &str, text: &str) -> PathBuf {
        let p = self.path(rel);
        std::fs::write(&p, text).expect("write file");
        p
    }

    pub fn state_dir(&self) -> PathBuf {
        self.dir.path().join("state")
    }

    pub async fn metrics(&self) -> String {
        http_get(&format!("http://127.0.0.1:{}/metrics", self.port))
            .await
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    pub async fn readyz(&self) -> Option<(u16, String)> {
        http_get(&format!("http://127.0.0.1:{}/readyz", self.port)).await
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    pub fn tail(&self, n: usize) -> String {
        tail(&self.log(), n)
    }
}

pub fn tail(log: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The value of one series in a Prometheus text exposition (-1 if absent).
pub fn metric_value(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)
                .filter(|rest| rest.starts_with(' '))
                .map(|v| v.trim().parse::<f64>().unwrap_or(-1.0))
        })
        .unwrap_or(-1.0)
}

/// Events the receiver recorded more than once.
pub fn duplicates(hook: &WebhookReceiver) -> u64 {
    hook.counts().values().map(|c| c.saturating_sub(1)).sum()
}

/// Ids of `expected` the receiver has not recorded.
pub fn missing(expected: &[String], hook: &WebhookReceiver) -> Vec<String> {
    let counts = hook.counts();
    expected
        .iter()
        .filter(|id| !counts.contains_key(id.as_str()))
        .cloned()
        .collect()
}

/// Waits until every id of `expected` arrived; panics with the log tail.
pub async fn wait_for_all(expected: &[String], hook: &WebhookReceiver, setup: &Setup) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
    // Each round waits for one more unique id or the deadline: bounded.
    loop {
        // Read the count first: an id arriving after it wakes the wait below.
        let have = hook.unique_count();
        let absent = missing(expected, hook);
        if absent.is_empty() {
            return;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() || !hook.wait_for_unique(have + 1, left).await {
            panic!(
                "{} of {} ids never arrived, e.g. {:?}\nreceived but not expected, e.g. {:?}\nreceiver: {:?}\nproblems logged:\n{}\nlog tail:\n{}",
                absent.len(),
                expected.len(),
                absent.iter().take(5).collect::<Vec<_>>(),
                hook.unique_ids()
                    .into_iter()
                    .filter(|id| !expected.contains(id))
                    .take(5)
                    .collect::<Vec<_>>(),
                hook.stats(),
                problems(setup, 30),
                setup.tail(40)
            );
        }
    }
}

/// The first `n` WARN and ERROR lines of the daemon log.
pub fn problems(setup: &Setup, n: usize) -> String {
    setup
        .log_text()
        .lines()
        .filter(|l| l.contains("\"level\":\"WARN\"") || l.contains("\"level\":\"ERROR\""))
        .take(n)
        .collect::<Vec<_>>()
        .join("\n")
}

/// Waits until `/readyz` answers 503; returns its body.
pub async fn wait_unready(setup: &Setup, within: Duration) -> Option<String> {
    let deadline = tokio::time::Instant::now() + within;
    // Polls an endpoint of the daemon under test: there is no event to await.
    while tokio::time::Instant::now() < deadline {
        if let Some((503, body)) = setup.readyz().await {
            return Some(body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// Writes `dir/veza_token` and `dir/hec_token`, the tokens the Veza and HEC
/// fakes accept by default.
pub fn write_default_tokens(dir: &Path) {
    std::fs::write(dir.join("veza_token"), VezaFakeConfig::default().api_token)
        .expect("write veza_token");
    std::fs::write(dir.join("hec_token"), HecFakeConfig::default().token).expect("write hec_token");
}
