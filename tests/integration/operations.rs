//! Operator commands: state lock, checkpoint set, send-test, validate
//! --online, the metrics textfile.

use crate::support;

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

/// The test event is shaped as the sink's real events are: mapped to OCSF
/// and redacted, so an operator sees what the SIEM will get.
#[test]
fn send_test_shapes_the_event_like_the_daemon() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("state/shaped.ndjson");
    let cfg = config(
        dir.path(),
        free_port(),
        &format!(
            "[sinks.shaped]\ntype = \"file\"\ninputs = [\"demo\"]\npath = \"{}\"\nschema = \"ocsf\"\nredact = [\"identity.email\"]\n",
            out.display()
        ),
    );
    let (code, stdout) = cli(&cfg, &["send-test", "--sink", "shaped", "--timeout", "5s"]);
    assert_eq!(code, Some(0), "{stdout}");
    let written = std::fs::read_to_string(&out).unwrap();
    let event: serde_json::Value = serde_json::from_str(written.trim()).unwrap();
    assert_eq!(
        event["class_uid"], 6003,
        "an OCSF API Activity event: {event}"
    );
    assert!(
        !written.contains("auditrelay@localhost"),
        "the redacted field left the daemon: {written}"
    );
    assert!(written.contains("[REDACTED]"), "{written}");
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
    // A webhook sink too, so sink metrics exist; one rejected id makes a
    // dead letter. Spooled, so the spool's metrics exist too.
    hook.set_reject_ids(["demo-000000000003"]);
    let cfg = config(
        dir.path(),
        port,
        &format!(
            "[sinks.hook]\ntype = \"webhook\"\ninputs = [\"demo\"]\nurl = \"{}\"\non_unavailable = \"spool\"\n",
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
            // So are those of sources not configured here, and the
            // cluster's without [cluster].
            if base.starts_with("auditrelay_quickztna_")
                || base.starts_with("auditrelay_cluster_")
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

/// Runs the CLI with `--config cfg`; exit code and all output.
fn cli(cfg: &Path, args: &[&str]) -> (Option<i32>, String) {
    let out = auditrelay()
        .args(args)
        .arg("--config")
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

fn bounded_demo(dir: &Path, limit: u64, extra: &str) -> PathBuf {
    let path = dir.join("bounded.toml");
    std::fs::write(
        &path,
        format!(
            r#"
state_dir = "{state}"
[server]
listen = "127.0.0.1:0"
[pipeline]
retry = {{ initial = "50ms", max = "200ms" }}
[sources.demo]
type = "demo"
rate = 0
batch_size = 10
limit = {limit}
{extra}
"#,
            state = dir.join("state").display()
        ),
    )
    .unwrap();
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_listed_and_replayed() {
    let hook = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    hook.set_reject_ids(["demo-000000000003", "demo-000000000042"]);
    let dir = tempfile::tempdir().unwrap();
    // Spooled: a bounded run must also deliver what went through the spool
    // before it exits, and dead letters work behind a spool.
    let cfg = bounded_demo(
        dir.path(),
        100,
        &format!(
            "[sinks.hook]\ntype = \"webhook\"\ninputs = [\"demo\"]\nurl = \"{}\"\non_unavailable = \"spool\"\n",
            hook.url()
        ),
    );
    let cfg_run = cfg.clone();
    let out = tokio::task::spawn_blocking(move || {
        auditrelay()
            .args(["run", "--config"])
            .arg(&cfg_run)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(hook.unique_count(), 98);

    let (code, text) = cli(&cfg, &["dlq", "list", "--sink", "hook"]);
    assert_eq!(code, Some(0));
    assert!(text.contains("2 dead letters"), "{text}");
    assert!(text.contains("HTTP 400"), "{text}");

    hook.set_reject_ids(Vec::<String>::new());
    let cfg_replay = cfg.clone();
    let (code, text) =
        tokio::task::spawn_blocking(move || cli(&cfg_replay, &["dlq", "replay", "--sink", "hook"]))
            .await
            .unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert!(
        text.contains("replayed 2 dead letters to hook; 0 refused again"),
        "{text}"
    );
    assert_eq!(hook.unique_count(), 100);
    assert_eq!(hook.count_of("demo-000000000042"), 1);
    let out = auditrelay()
        .args(["dlq", "list", "--sink", "hook", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("no dead letters"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_checkpoint_write_is_retried_and_the_old_checkpoint_stays() {
    let dir = tempfile::tempdir().unwrap();
    let sink = format!(
        "[sinks.out]\ntype = \"file\"\ninputs = [\"demo\"]\npath = \"{}/events.ndjson\"\n",
        dir.path().display()
    );
    let cfg = bounded_demo(dir.path(), 100, &sink);
    assert!(auditrelay()
        .args(["run", "--config"])
        .arg(&cfg)
        .status()
        .unwrap()
        .success());
    let checkpoint = dir.path().join("state/checkpoints/demo.checkpoint");
    let before = std::fs::read(&checkpoint).unwrap();

    // A file where the directory of the temp files must be: every write
    // fails (even as root).
    let blocker = dir.path().join("state/checkpoints/.tmp");
    let _ = std::fs::remove_dir_all(&blocker);
    std::fs::write(&blocker, b"").unwrap();
    let cfg = bounded_demo(dir.path(), 300, &sink);
    let log = dir.path().join("d.log");
    let mut daemon = Daemon::spawn(&cfg, &log);
    let mut failing = false;
    for _ in 0..200 {
        if std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("cannot write checkpoint")
        {
            failing = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(failing, "the write failure was not logged");
    assert!(
        daemon.wait(Duration::from_millis(500)).await.is_none(),
        "it must not finish while commits fail"
    );
    assert_eq!(
        std::fs::read(&checkpoint).unwrap(),
        before,
        "the old checkpoint must stay intact"
    );

    std::fs::remove_file(&blocker).unwrap();
    let status = daemon
        .wait(Duration::from_secs(30))
        .await
        .expect("finishes once writes succeed");
    assert!(status.success());
    let show = auditrelay()
        .args(["checkpoint", "show", "--source", "demo", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&show.stdout).trim(),
        r#"{"next":300}"#
    );
    let lines = std::fs::read_to_string(dir.path().join("events.ndjson"))
        .unwrap()
        .lines()
        .count();
    assert!(lines >= 300, "{lines}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_online_probes_splunk_hec_token_and_health() {
    use support::hec_fake::{HecFake, HecFakeConfig};
    let hec = HecFake::start(HecFakeConfig::default()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("hec_token");
    std::fs::write(&token, "wrong-token").unwrap();
    let cfg = config(
        dir.path(),
        free_port(),
        &format!(
            "[sinks.splunk]\ntype = \"splunk_hec\"\ninputs = [\"demo\"]\nendpoint = \"{}\"\ntoken_file = \"{}\"\n",
            hec.url(),
            token.display()
        ),
    );
    let check = |cfg: PathBuf| async move {
        tokio::task::spawn_blocking(move || cli(&cfg, &["validate", "--online"]))
            .await
            .unwrap()
    };
    let (code, text) = check(cfg.clone()).await;
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("sinks.splunk: UNREACHABLE"), "{text}");
    assert!(!text.contains("wrong-token"), "the token leaked: {text}");
    std::fs::write(&token, "00000000-0000-0000-0000-000000000000").unwrap();
    let (code, text) = check(cfg).await;
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("sinks.splunk: reachable"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_online_connects_to_syslog_receivers() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let up = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(
        dir.path(),
        free_port(),
        &format!(
            "[sinks.up]\ntype = \"syslog\"\ninputs = [\"demo\"]\naddress = \"tcp://{up}\"\n[sinks.down]\ntype = \"syslog\"\ninputs = [\"demo\"]\naddress = \"tcp://127.0.0.1:{}\"\n",
            free_port()
        ),
    );
    let (code, text) = tokio::task::spawn_blocking(move || cli(&cfg, &["validate", "--online"]))
        .await
        .unwrap();
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("sinks.up: reachable"), "{text}");
    assert!(text.contains("sinks.down: UNREACHABLE"), "{text}");
    drop(listener);
}
