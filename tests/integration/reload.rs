//! SIGHUP reloads the config of the real binary: sinks and sources added and
//! removed without losing or repeating events, a bad config ignored, keys
//! that need a restart kept, systemd told RELOADING=1 / READY=1.

use crate::support;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use support::daemon::{free_port, http_get, Daemon};
use support::harness::metric_value;
use support::webhook_receiver::{WebhookConfig, WebhookReceiver};

const WAIT: Duration = Duration::from_secs(60);

fn head(dir: &Path, port: u16) -> String {
    format!(
        r#"
state_dir = "{state}"
log_format = "json"
shutdown_timeout = "20s"
[server]
listen = "127.0.0.1:{port}"
[pipeline]
retry = {{ initial = "50ms", max = "200ms" }}
"#,
        state = dir.join("state").display()
    )
}

fn demo(name: &str) -> String {
    format!("[sources.{name}]\ntype = \"demo\"\nrate = 400\nbatch_size = 20\n")
}

fn hook(name: &str, input: &str, to: &WebhookReceiver) -> String {
    format!(
        "[sinks.{name}]\ntype = \"webhook\"\ninputs = [\"{input}\"]\nurl = \"{}\"\nretry = {{ initial = \"20ms\", max = \"200ms\" }}\n",
        to.url()
    )
}

fn write(path: &Path, text: &str) {
    // Write beside, then rename: the daemon never reads half a file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

async fn metrics(port: u16) -> String {
    http_get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .map(|(_, body)| body)
        .unwrap_or_default()
}

/// Waits until a series reaches `at_least` (polls the daemon's /metrics:
/// there is no event to await from outside the process).
async fn wait_metric(port: u16, series: &str, at_least: f64, daemon: &Daemon) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while tokio::time::Instant::now() < deadline {
        if metric_value(&metrics(port).await, series) >= at_least {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "{series} never reached {at_least}\nlog:\n{}",
        daemon.log_text()
    );
}

async fn wait_unique(hook: &WebhookReceiver, n: usize, daemon: &Daemon) {
    assert!(
        hook.wait_for_unique(n, WAIT).await,
        "the receiver never had {n} events (has {})\nlog:\n{}",
        hook.unique_count(),
        daemon.log_text()
    );
}

fn reloads(outcome: &str) -> String {
    format!("auditrelay_config_reloads_total{{outcome=\"{outcome}\"}}")
}

/// Sequence numbers of the demo events a receiver got (ids `demo-<seq>`).
fn seqs(hook: &WebhookReceiver) -> BTreeSet<u64> {
    hook.unique_ids()
        .iter()
        .map(|id| id.trim_start_matches("demo-").parse::<u64>().unwrap())
        .collect()
}

fn duplicates(hook: &WebhookReceiver) -> u64 {
    hook.counts().values().map(|c| c.saturating_sub(1)).sum()
}

/// The committed `next` sequence number of a demo source.
fn committed(config: &Path, source: &str) -> u64 {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditrelay"))
        .args(["checkpoint", "show", "--source", source, "--config"])
        .arg(config)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value = serde_json::from_str(text.trim())
        .unwrap_or_else(|e| panic!("checkpoint of {source}: {e}: {text}"));
    v["next"].as_u64().unwrap()
}

/// Log lines (JSON) whose message contains `message` and that mention `text`.
fn lines_with<'a>(log: &'a str, message: &str, text: &str) -> Vec<&'a str> {
    log.lines()
        .filter(|l| l.contains(message) && l.contains(text))
        .collect()
}

fn contiguous(seqs: &BTreeSet<u64>, from: u64, to: u64) -> bool {
    seqs.len() as u64 == to - from && seqs.iter().copied().eq(from..to)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_added_by_reload_receives_and_the_old_one_loses_and_repeats_nothing() {
    let first = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    let second = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    let other = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("auditrelay.toml");
    // `quiet` and its sink are unchanged by the reload: they keep running.
    let base = head(dir.path(), port)
        + &demo("demo")
        + &demo("quiet")
        + &hook("first", "demo", &first)
        + &hook("other", "quiet", &other);
    write(&cfg, &base);
    let mut daemon = Daemon::spawn(&cfg, &dir.path().join("d.log"));
    wait_unique(&first, 200, &daemon).await;

    write(&cfg, &(base.clone() + &hook("second", "demo", &second)));
    daemon.signal(libc::SIGHUP);
    wait_metric(port, &reloads("ok"), 1.0, &daemon).await;
    wait_unique(&second, 200, &daemon).await;
    let had = first.unique_count();
    wait_unique(&first, had + 200, &daemon).await;
    wait_unique(&other, 400, &daemon).await;
    let status = daemon
        .terminate(Duration::from_secs(30))
        .await
        .expect("exit");
    assert!(status.success(), "{}", daemon.log_text());

    let log = daemon.log_text();
    let next = committed(&cfg, "demo");
    let old = seqs(&first);
    assert_eq!(duplicates(&first), 0, "the old sink got duplicates");
    assert!(
        contiguous(&old, 0, next),
        "the old sink must have exactly 0..{next}: {} events, first {:?}, last {:?}",
        old.len(),
        old.first(),
        old.last()
    );
    let new = seqs(&second);
    let from = *new.first().unwrap();
    assert_eq!(duplicates(&second), 0);
    assert!(from > 0, "the new sink starts at the checkpoint, not at 0");
    assert!(
        contiguous(&new, from, next),
        "the new sink must have {from}..{next} without gaps"
    );
    let applied = lines_with(&log, "config reload: applying", "sinks_added");
    assert_eq!(applied.len(), 1, "{log}");
    assert!(applied[0].contains(r#"\"second\""#), "{}", applied[0]);
    assert!(
        applied[0].contains(r#"sources_kept":"[\"quiet\"]"#),
        "{}",
        applied[0]
    );
    assert_eq!(
        lines_with(&log, "pipeline started", r#""source":"demo""#).len(),
        2,
        "demo is restarted once by the reload"
    );
    assert_eq!(
        lines_with(&log, "pipeline started", r#""source":"quiet""#).len(),
        1,
        "quiet must keep running untouched"
    );
    let quiet = seqs(&other);
    assert_eq!(duplicates(&other), 0);
    assert!(contiguous(&quiet, 0, committed(&cfg, "quiet")));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_config_is_logged_and_ignored_and_restart_only_keys_keep_their_value() {
    let out = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("auditrelay.toml");
    let base = head(dir.path(), port) + &demo("demo") + &hook("out", "demo", &out);
    write(&cfg, &base);
    // Stand in for systemd's notification socket.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    let mut daemon = Daemon::spawn_with_env(
        &cfg,
        &dir.path().join("d.log"),
        &[("NOTIFY_SOCKET", notify_path.as_path())],
    );
    wait_unique(&out, 100, &daemon).await;

    // Three problems in three sections: every one is reported.
    let bad = base.replace("batch_size = 20", "batch_size = 0").replace(
        "retry = { initial = \"20ms\", max = \"200ms\" }",
        "retry = { initial = \"0s\", max = \"200ms\" }",
    ) + "[sinks.extra]\ntype = \"stdout\"\ninputs = [\"demo\"]\nbogus = 1\n";
    write(&cfg, &bad);
    daemon.signal(libc::SIGHUP);
    wait_metric(port, &reloads("error"), 1.0, &daemon).await;
    let log = daemon.log_text();
    for key in [
        "sources.demo.batch_size",
        "sinks.out.retry.initial",
        "sinks.extra.bogus",
    ] {
        let lines = lines_with(&log, "config reload rejected", &format!(r#""key":"{key}""#));
        assert_eq!(lines.len(), 1, "{key} not reported:\n{log}");
        assert!(lines[0].contains(r#""level":"ERROR""#), "{}", lines[0]);
    }
    let text = metrics(port).await;
    assert_eq!(
        metric_value(&text, "auditrelay_config_last_reload_successful"),
        0.0
    );
    assert_eq!(metric_value(&text, &reloads("ok")), 0.0);
    // Still delivering with the old config.
    let had = out.unique_count();
    wait_unique(&out, had + 200, &daemon).await;

    // Valid again, but with a new listen address and state_dir: both need a
    // restart, so both keep their running value (metrics stay on `port`).
    let moved = base
        .replace(
            &format!("127.0.0.1:{port}"),
            &format!("127.0.0.1:{}", free_port()),
        )
        .replace("/state\"", "/elsewhere\"");
    assert_ne!(moved, base);
    write(&cfg, &moved);
    daemon.signal(libc::SIGHUP);
    wait_metric(port, &reloads("ok"), 1.0, &daemon).await;
    let log = daemon.log_text();
    for key in ["server.listen", "state_dir"] {
        let lines = lines_with(
            &log,
            "only changes at a restart",
            &format!(r#""key":"{key}""#),
        );
        assert_eq!(lines.len(), 1, "no warning for {key}:\n{log}");
        assert!(lines[0].contains(r#""level":"WARN""#), "{}", lines[0]);
    }
    assert_eq!(
        lines_with(&log, "no source or sink changed", "").len(),
        1,
        "{log}"
    );
    let text = metrics(port).await;
    assert_eq!(
        metric_value(&text, "auditrelay_config_last_reload_successful"),
        1.0
    );
    let had = out.unique_count();
    wait_unique(&out, had + 200, &daemon).await;

    let status = daemon
        .terminate(Duration::from_secs(30))
        .await
        .expect("exit");
    assert_eq!(status.code(), Some(0), "{}", daemon.log_text());
    assert!(!dir.path().join("elsewhere").exists());
    write(&cfg, &base);
    let next = committed(&cfg, "demo");
    assert_eq!(duplicates(&out), 0);
    assert!(contiguous(&seqs(&out), 0, next));

    // systemd saw: READY, then RELOADING (with MONOTONIC_USEC) and READY
    // around each reload, then STOPPING.
    notify.set_nonblocking(true).unwrap();
    let mut messages = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = notify.recv(&mut buf) {
        messages.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    let kinds: Vec<&str> = messages
        .iter()
        .filter_map(|m| {
            if m.starts_with("RELOADING=1\n") {
                assert!(m.contains("\nMONOTONIC_USEC="), "{m}");
                Some("reloading")
            } else if m.starts_with("READY=1") {
                Some("ready")
            } else if m.starts_with("STOPPING=1") {
                Some("stopping")
            } else {
                None
            }
        })
        .collect();
    assert_eq!(
        kinds,
        [
            "ready",
            "reloading",
            "ready",
            "reloading",
            "ready",
            "stopping"
        ],
        "{messages:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_source_keeps_its_checkpoint_and_resumes_from_it_when_it_comes_back() {
    let to_a = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    let to_b = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let cfg = dir.path().join("auditrelay.toml");
    let only_a = head(dir.path(), port) + &demo("a") + &hook("ha", "a", &to_a);
    let with_b = only_a.clone() + &demo("b") + &hook("hb", "b", &to_b);
    // For `checkpoint show --source b` once the daemon's config lacks b.
    let cfg_with_b: PathBuf = dir.path().join("with_b.toml");
    write(&cfg_with_b, &with_b);
    write(&cfg, &with_b);
    let mut daemon = Daemon::spawn(&cfg, &dir.path().join("d.log"));
    wait_unique(&to_b, 200, &daemon).await;

    write(&cfg, &only_a);
    daemon.signal(libc::SIGHUP);
    wait_metric(port, &reloads("ok"), 1.0, &daemon).await;
    let checkpoint = dir.path().join("state/checkpoints/b.checkpoint");
    assert!(
        checkpoint.exists(),
        "the removed source's checkpoint must stay"
    );
    let stopped_at = committed(&cfg_with_b, "b");
    assert!(stopped_at >= 200);
    // Everything b fetched was delivered and committed before it stopped.
    assert_eq!(duplicates(&to_b), 0);
    assert!(contiguous(&seqs(&to_b), 0, stopped_at));
    let text = metrics(port).await;
    assert!(
        !text.contains("auditrelay_checkpoint_lag_seconds{source=\"b\"}"),
        "a removed source must not keep a growing lag"
    );
    // a goes on, b stays stopped.
    let had = to_a.unique_count();
    wait_unique(&to_a, had + 200, &daemon).await;
    assert_eq!(to_b.unique_count() as u64, stopped_at);
    assert_eq!(committed(&cfg_with_b, "b"), stopped_at);

    write(&cfg, &with_b);
    daemon.signal(libc::SIGHUP);
    wait_metric(port, &reloads("ok"), 2.0, &daemon).await;
    wait_unique(&to_b, stopped_at as usize + 200, &daemon).await;
    let status = daemon
        .terminate(Duration::from_secs(30))
        .await
        .expect("exit");
    assert!(status.success(), "{}", daemon.log_text());

    let log = daemon.log_text();
    let next = committed(&cfg, "b");
    assert_eq!(duplicates(&to_b), 0, "b started again from 0?");
    assert!(
        contiguous(&seqs(&to_b), 0, next),
        "b must resume exactly at its checkpoint ({stopped_at})"
    );
    assert_eq!(
        lines_with(&log, "pipeline started", r#""source":"a""#).len(),
        1,
        "a is untouched by both reloads"
    );
    assert_eq!(
        lines_with(
            &log,
            "source removed; its checkpoint stays",
            r#""source":"b""#
        )
        .len(),
        1
    );
    assert_eq!(duplicates(&to_a), 0);
    assert!(contiguous(&seqs(&to_a), 0, committed(&cfg, "a")));
}

/// A `webhook_in` source changed by a reload gives up its port before the
/// new one listens on it; what was pushed before and after arrives once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_webhook_in_source_listens_again_on_the_same_port() {
    let to = WebhookReceiver::start(WebhookConfig {
        id_field: "id".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = free_port();
    std::fs::write(dir.path().join("bearer"), "push-SECRET").unwrap();
    let cfg = dir.path().join("auditrelay.toml");
    let with_batch = |n: usize| {
        head(dir.path(), port)
            + &format!(
                "[sources.push]\ntype = \"webhook_in\"\nlisten = \"127.0.0.1:{listen}\"\ntoken_file = \"{}\"\nbatch_size = {n}\n",
                dir.path().join("bearer").display()
            )
            + &hook("out", "push", &to)
    };
    write(&cfg, &with_batch(10));
    let mut daemon = Daemon::spawn(&cfg, &dir.path().join("d.log"));
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{listen}/");
    let push = |from: usize| {
        let (client, url) = (client.clone(), url.clone());
        async move {
            let body: String = (from..from + 50)
                .map(|i| format!("{{\"id\":\"e-{i}\"}}\n"))
                .collect();
            // The listener may not be up yet right after a start: bounded retries.
            for _ in 0..100 {
                match client
                    .post(&url)
                    .bearer_auth("push-SECRET")
                    .header("content-type", "application/x-ndjson")
                    .body(body.clone())
                    .send()
                    .await
                {
                    Ok(r) if r.status().is_success() => return,
                    Ok(r) => panic!("push answered {}", r.status()),
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
            panic!("nobody listens on {url}");
        }
    };
    for i in 0..4 {
        push(i * 50).await;
    }
    wait_unique(&to, 200, &daemon).await;

    write(&cfg, &with_batch(7));
    daemon.signal(libc::SIGHUP);
    wait_metric(port, &reloads("ok"), 1.0, &daemon).await;
    for i in 4..8 {
        push(i * 50).await;
    }
    wait_unique(&to, 400, &daemon).await;
    let status = daemon
        .terminate(Duration::from_secs(30))
        .await
        .expect("exit");
    assert!(status.success(), "{}", daemon.log_text());
    let log = daemon.log_text();
    assert_eq!(duplicates(&to), 0);
    assert_eq!(to.unique_count(), 400);
    assert_eq!(
        lines_with(&log, "pipeline started", r#""source":"push""#).len(),
        2,
        "{log}"
    );
    assert!(!log.contains("cannot listen"), "{log}");
}
