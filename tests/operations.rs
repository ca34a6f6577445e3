//! Operator commands: state lock, checkpoint set, send-test, validate
//! --online, the metrics textfile.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use support::daemon::{free_port, http_get, Daemon};
use support::webhook_receiver::{WebhookConfig, WebhookReceiver};

fn auditrelay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_auditrelay"))
}

fn config(dir: &Path, port: u16, extra: &str) -> PathBuf {
    let path = dir.join("auditrelay.toml");
    std::fs::write(
        &path,
        format!(
            r#"
state_dir = "{state}"
[server]
listen = "127.0.0.1:{port}"
metrics_textfile = "{state}/auditrelay.prom"
metrics_textfile_interval = "100ms"
[sources.demo]
type = "demo"
rate = 200
batch_size = 20
[sinks.out]
type = "file"
inputs = ["demo"]
path = "{state}/events.ndjson"
{extra}
"#,
            state = dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_lock_guards_the_checkpoints_of_a_running_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = config(dir.path(), port, "");
    let mut daemon = Daemon::spawn(&cfg, &dir.path().join("d.log"));
    // Ready once /healthz answers (bounded wait).
    let mut up = false;
    for _ in 0..100 {
        if http_get(&format!("http://127.0.0.1:{port}/healthz"))
            .await
            .is_some()
        {
            up = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(up, "daemon never served /healthz");
    let probe = auditrelay()
        .args(["probe", &format!("http://127.0.0.1:{port}/healthz")])
        .output()
        .unwrap();
    assert!(probe.status.success());
    let probe = auditrelay()
        .args([
            "probe",
            &format!("http://127.0.0.1:{}/healthz", free_port()),
        ])
        .output()
        .unwrap();
    assert_eq!(probe.status.code(), Some(1));

    let second = auditrelay()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(second.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&second.stderr).contains("in use by another auditrelay process")
    );

    let set = auditrelay()
        .args([
            "checkpoint",
            "set",
            "--source",
            "demo",
            "--token",
            "5000",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        set.status.code(),
        Some(1),
        "checkpoint set must be refused while the daemon runs"
    );

    // The textfile collector file appears and parses as metrics.
    let prom = dir.path().join("state/auditrelay.prom");
    let mut text = String::new();
    for _ in 0..100 {
        text = std::fs::read_to_string(&prom).unwrap_or_default();
        if text.contains("auditrelay_events_delivered_total") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(text.contains("auditrelay_build_info"), "{text}");

    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());

    let set = auditrelay()
        .args([
            "checkpoint",
            "set",
            "--source",
            "demo",
            "--token",
            "5000",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    let show = auditrelay()
        .args(["checkpoint", "show", "--source", "demo", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&show.stdout).trim(),
        r#"{"next":5000}"#
    );
    let bad = auditrelay()
        .args([
            "checkpoint",
            "set",
            "--source",
            "demo",
            "--time",
            "2026-01-01T00:00:00Z",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("no time cursor"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn send_test_reports_each_sink_and_validate_online_checks_reachability() {
    let hook = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let dead_port = free_port();
    let cfg = config(
        dir.path(),
        free_port(),
        &format!(
            "[sinks.hook]\ntype = \"webhook\"\ninputs = [\"demo\"]\nurl = \"{}\"\n[sinks.down]\ntype = \"webhook\"\ninputs = [\"demo\"]\nurl = \"http://127.0.0.1:{dead_port}/x?secret=abc123\"\nretry = {{ initial = \"50ms\", max = \"100ms\" }}\n",
            hook.url()
        ),
    );
    let cfg2 = cfg.clone();
    let out = tokio::task::spawn_blocking(move || {
        auditrelay()
            .args(["send-test", "--timeout", "2s", "--config"])
            .arg(&cfg2)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("hook: ok"), "{stdout}");
    assert!(stdout.contains("out: ok"), "{stdout}");
    assert!(
        stdout.contains("down: FAILED: not confirmed within 2s"),
        "{stdout}"
    );
    assert!(!stdout.contains("abc123") && !String::from_utf8_lossy(&out.stderr).contains("abc123"));
    assert_eq!(hook.unique_count(), 1);
    assert!(hook.unique_ids()[0].starts_with("auditrelay-send-test-"));

    let cfg2 = cfg.clone();
    let out = tokio::task::spawn_blocking(move || {
        auditrelay()
            .args(["validate", "--online", "--config"])
            .arg(&cfg2)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("sinks.hook: reachable"), "{stdout}");
    assert!(stdout.contains("sinks.down: UNREACHABLE"), "{stdout}");
    assert!(!stdout.contains("abc123"), "{stdout}");
}

/// The dashboard and alert rules must only use metrics the daemon exports,
/// and the exposition must pass `promtool check metrics`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_pass_promtool_and_match_dashboard_and_alerts() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let hook = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    // A webhook sink too, so sink metrics exist; one rejected id makes a dead letter.
    hook.set_reject_ids(["demo-000000000003"]);
    let cfg = config(
        dir.path(),
        port,
        &format!(
            "[sinks.hook]\ntype = \"webhook\"\ninputs = [\"demo\"]\nurl = \"{}\"\n",
            hook.url()
        ),
    );
    let mut daemon = Daemon::spawn(&cfg, &dir.path().join("d.log"));
    assert!(hook.wait_for_unique(100, Duration::from_secs(30)).await);
    let (_, text) = http_get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics");
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());

    let promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let mut child = promtool
        .expect("promtool not found: install Debian's `prometheus` package (what .ci/run does)");
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );

    let exported: std::collections::HashSet<String> = text
        .lines()
        .filter(|l| l.starts_with("# TYPE "))
        .filter_map(|l| l.split_whitespace().nth(2).map(str::to_string))
        .collect();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    for asset in [
        "deploy/grafana/auditrelay-dashboard.json",
        "deploy/prometheus/alerts.yml",
        "README.md",
    ] {
        let body = std::fs::read_to_string(root.join(asset)).unwrap();
        let mut rest = body.as_str();
        while let Some(i) = rest.find("auditrelay_") {
            let name: String = rest[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            rest = &rest[i + name.len()..];
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            if asset == "README.md" && !name.ends_with(|c: char| c.is_ascii_alphabetic()) {
                continue;
            }
            // Metrics of sinks not configured here are registered lazily.
            // So are those of sources not configured here.
            if base.starts_with("auditrelay_quickztna_")
                || base.starts_with("auditrelay_webhook_in_")
                || base.starts_with("auditrelay_kafka_")
                || base.starts_with("auditrelay_hec_")
                || base.starts_with("auditrelay_syslog_")
            {
                continue;
            }
            assert!(
                exported.contains(base),
                "{asset} uses {name}, which the daemon does not export"
            );
        }
    }
}
