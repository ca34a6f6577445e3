//! `dlq replay` re-sends dead letters and never deletes the lines it cannot
//! read, however often it runs.

use crate::support;

use std::path::Path;
use std::process::Command;

use support::webhook_receiver::{WebhookConfig, WebhookReceiver};

fn replay(cfg: &Path) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_auditrelay"))
        .args(["dlq", "replay", "--sink", "hook", "--config"])
        .arg(cfg)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr),
    )
}

/// Every line of every file left in the dead-letter directory.
fn lines_kept(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        out.extend(text.lines().map(str::to_string));
    }
    out
}

const TORN: &str = "{\"time\":\"2026-01-01T00:00:00.000Z\",\"sink\":\"hook\",\"sou";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replaying_twice_keeps_the_unreadable_lines() {
    let hook = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = dir.path().join("a.toml");
    std::fs::write(
        &cfg,
        format!(
            "state_dir = \"{}\"\n[sources.s]\ntype = \"demo\"\n[sinks.hook]\ntype = \"webhook\"\ninputs = [\"s\"]\nurl = \"{}\"\n",
            state.display(),
            hook.url()
        ),
    )
    .unwrap();
    let dead = state.join("dead_letter");
    std::fs::create_dir_all(&dead).unwrap();
    std::fs::write(
        dead.join("hook.ndjson"),
        format!(
            "{TORN}\n{{\"time\":\"t\",\"sink\":\"hook\",\"source\":\"s\",\"id\":\"ev-1\",\"error\":\"HTTP 400\",\"event\":{{\"id\":\"ev-1\"}}}}\n"
        ),
    )
    .unwrap();

    let (code, text) = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || replay(&cfg)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("replayed 1 dead letters"), "{text}");
    assert_eq!(hook.count_of("ev-1"), 1);
    assert_eq!(lines_kept(&dead), vec![TORN.to_string()], "{text}");

    let (code, text) = tokio::task::spawn_blocking({
        let cfg = cfg.clone();
        move || replay(&cfg)
    })
    .await
    .unwrap();
    assert_eq!(code, Some(0), "{text}");
    assert_eq!(
        lines_kept(&dead),
        vec![TORN.to_string()],
        "a second replay must not delete the unreadable lines: {text}"
    );
    assert_eq!(hook.count_of("ev-1"), 1, "nothing replayed twice");
}
