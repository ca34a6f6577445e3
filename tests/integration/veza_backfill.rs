//! `auditrelay backfill` and the `veza_list` source, through the real binary,
//! against a fake of Veza's audit list and a webhook receiver.

use crate::support;

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use chrono::Utc;
use support::harness::duplicates;
use support::veza_list_fake::VezaListFake;
use support::webhook_receiver::{WebhookConfig, WebhookFaults, WebhookReceiver};

const TOKEN: &str = "veza-list-SECRET-55aa";

fn days(d: i64) -> chrono::Duration {
    chrono::Duration::days(d)
}

/// A config with source `veza` (`kind` = veza or veza_list) → webhook.
fn config(
    dir: &Path,
    fake: &VezaListFake,
    hook: &WebhookReceiver,
    kind: &str,
    extra: &str,
) -> PathBuf {
    std::fs::write(dir.join("token"), TOKEN).unwrap();
    let path = dir.join("auditrelay.toml");
    std::fs::write(
        &path,
        format!(
            r#"
state_dir = "{state}"
log_format = "json"
shutdown_timeout = "20s"
[server]
listen = "127.0.0.1:0"
[sources.veza]
type = "{kind}"
url = "{url}"
token_file = "{dir}/token"
page_size = 40
timeout = "5s"
retry = {{ initial = "20ms", max = "200ms" }}
{extra}
[sinks.hook]
type = "webhook"
inputs = ["veza"]
url = "{hook}"
retry = {{ initial = "20ms", max = "200ms" }}
"#,
            state = dir.join("state").display(),
            url = fake.url(),
            dir = dir.display(),
            hook = hook.url_for("/audit"),
        ),
    )
    .unwrap();
    path
}

fn backfill(config: &Path, args: &[&str]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_auditrelay"));
    cmd.arg("backfill")
        .arg("--config")
        .arg(config)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

async fn hook(delay: Option<Duration>) -> WebhookReceiver {
    WebhookReceiver::start(WebhookConfig {
        faults: WebhookFaults {
            answer_delay: delay,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_delivers_exactly_the_range_through_the_sinks_and_exits() {
    let fake = VezaListFake::start(TOKEN, true).await.unwrap();
    let hook = hook(None).await;
    let now = Utc::now();
    let before = fake.add_spread(30, now - days(9), now - days(6));
    let inside = fake.add_spread(
        300,
        now - days(5) + days(0) + chrono::Duration::hours(1),
        now - days(2) - chrono::Duration::hours(1),
    );
    let after = fake.add_spread(30, now - days(2) + chrono::Duration::hours(1), now);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake, &hook, "veza", "");
    let from = (now - days(5)).to_rfc3339();
    let to = (now - days(2)).to_rfc3339();
    let out = backfill(&cfg, &["--source", "veza", "--from", &from, "--to", &to])
        .output()
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("complete: 300 events delivered"),
        "{stdout}"
    );
    for id in &inside {
        assert_eq!(hook.count_of(id), 1, "{id}");
    }
    for id in before.iter().chain(&after) {
        assert_eq!(hook.count_of(id), 0, "{id} is outside the range");
    }
    let stats = fake.stats();
    assert!(stats.with_token >= 7, "{stats:?}");
    assert!(
        stats
            .filters
            .iter()
            .all(|f| f.starts_with("ended_at GE \"") && f.contains(" and ended_at LT \"")),
        "{:?}",
        stats.filters
    );
    // Complete: nothing left to resume.
    assert!(!dir
        .path()
        .join("state/checkpoints/backfill-veza.checkpoint")
        .exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_refuses_more_than_90_days_and_other_sources_before_any_request() {
    let fake = VezaListFake::start(TOKEN, false).await.unwrap();
    let hook = hook(None).await;
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake, &hook, "veza", "");
    let out = backfill(&cfg, &["--source", "veza", "--from", "-100d"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("100 days ago") && err.contains("last 90 days"),
        "{err}"
    );
    let out = backfill(&cfg, &["--source", "nope", "--from", "-1d"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no source named \"nope\""));
    let out = backfill(&cfg, &["--source", "veza", "--from", "-1d", "--to", "-2d"])
        .output()
        .await
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("is not before"));
    assert_eq!(fake.stats().requests, 0, "a request was sent");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_interrupted_by_sigterm_resumes_the_same_range() {
    let fake = VezaListFake::start(TOKEN, false).await.unwrap();
    let hook = hook(Some(Duration::from_millis(100))).await;
    let now = Utc::now();
    let ids = fake.add_spread(3000, now - days(3), now - days(1));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake, &hook, "veza_list", "");
    let from = (now - days(4)).to_rfc3339();
    let to = now.to_rfc3339();
    let args = [
        "--source",
        "veza",
        "--from",
        from.as_str(),
        "--to",
        to.as_str(),
    ];
    let child = backfill(&cfg, &args).spawn().unwrap();
    assert!(hook.wait_for_unique(200, Duration::from_secs(60)).await);
    // SAFETY: kill(2) on our own child.
    unsafe {
        libc::kill(child.id().unwrap() as i32, libc::SIGTERM);
    }
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(
        out.status.code(),
        Some(130),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("run the same command again to resume"));
    assert!(dir
        .path()
        .join("state/checkpoints/backfill-veza.checkpoint")
        .exists());
    let got = hook.unique_count();
    assert!(got < ids.len(), "finished before the signal");
    let pages_before = fake.stats().pages;

    let out = backfill(&cfg, &args).output().await.unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for id in &ids {
        assert!(hook.count_of(id) >= 1, "{id} missing");
    }
    // Resumed at its page token: far fewer pages than starting over.
    let resumed_pages = fake.stats().pages - pages_before;
    assert!(
        (resumed_pages as usize) < ids.len() / 40,
        "the second run walked {resumed_pages} pages"
    );
    assert!(
        duplicates(&hook) <= 4 * 40,
        "more than the in-flight pages repeated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veza_list_source_in_the_daemon_delivers_its_range_once_and_finishes() {
    let fake = VezaListFake::start(TOKEN, false).await.unwrap();
    let hook = hook(None).await;
    let now = Utc::now();
    fake.add_spread(20, now - days(20), now - days(11));
    let ids = fake.add_spread(150, now - days(9), now - days(1));
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake, &hook, "veza_list", "from = \"-10d\"");
    let log = dir.path().join("d.log");
    let mut daemon = support::daemon::Daemon::spawn(&cfg, &log);
    let status = daemon
        .wait(Duration::from_secs(60))
        .await
        .expect("the daemon should exit once its only source is finished");
    assert!(status.success(), "{}", daemon.log_text());
    for id in &ids {
        assert_eq!(hook.count_of(id), 1, "{id}");
    }
    assert_eq!(hook.unique_count(), ids.len());
    assert!(daemon.log_text().contains("source finished"));
    // Started again: the stored range is complete, nothing is re-sent.
    let mut daemon = support::daemon::Daemon::spawn(&cfg, &log);
    assert!(daemon
        .wait(Duration::from_secs(60))
        .await
        .expect("exit")
        .success());
    assert_eq!(duplicates(&hook), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_honours_the_dead_letter_cap_of_its_sinks() {
    use tokio::io::{AsyncBufReadExt, BufReader};

    let fake = VezaListFake::start(TOKEN, true).await.unwrap();
    let hook = hook(None).await;
    let now = Utc::now();
    let ids = fake.add_spread(40, now - days(3), now - days(2));
    hook.set_reject_ids([ids[5].clone()]);
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path(), &fake, &hook, "veza", "");
    // The last section is [sinks.hook]: a cap no dead letter fits in.
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text.push_str("dead_letter_max_bytes = 10\n");
    std::fs::write(&cfg, text).unwrap();
    let from = (now - days(4)).to_rfc3339();
    let to = now.to_rfc3339();
    let mut child = backfill(&cfg, &["--source", "veza", "--from", &from, "--to", &to])
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap()).lines();
    let full = tokio::time::timeout(Duration::from_secs(30), async {
        while let Ok(Some(line)) = stderr.next_line().await {
            if line.contains("dead-letter file") && line.contains("is full") {
                return Some(line);
            }
        }
        None
    })
    .await;
    let status = child.try_wait().unwrap();
    let _ = child.kill().await;
    assert!(
        matches!(full, Ok(Some(_))),
        "the backfill did not stop at the 10-byte dead-letter cap (exited: {status:?})"
    );
    assert!(
        status.is_none(),
        "a refused event it cannot dead-letter holds the backfill"
    );
    let dead = dir.path().join("state/dead_letter/hook.ndjson");
    let kept = std::fs::read_to_string(&dead).unwrap_or_default();
    assert!(!kept.contains(&ids[5]), "over the cap: {kept}");
}
