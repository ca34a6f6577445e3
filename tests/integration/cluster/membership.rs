//! The membership loop and the checkpoint store on a real etcd: a source
//! taken away from its owner behind its back ends in a refused, counted
//! commit and a stop of its pipeline.

use std::time::Duration;

use auditrelay::checkpoint::CheckpointStore;
use auditrelay::cluster::{Change, Cluster};

use super::conformance::config;
use crate::support::etcd::Etcd;

async fn next(rx: &mut tokio::sync::mpsc::UnboundedReceiver<Change>) -> Change {
    tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("a change within 10 s")
        .expect("the loop runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_commit_after_the_source_was_taken_is_refused_counted_and_stops_the_pipeline() {
    let etcd = Etcd::start().await;
    let cfg = config(&etcd, "fence-a", "fence", Duration::from_secs(3));
    let (cluster, mut changes) = Cluster::start(&cfg, vec!["fsrc".into()])
        .await
        .expect("start");
    assert_eq!(next(&mut changes).await, Change::Acquired("fsrc".into()));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path())
        .expect("store")
        .with_remote(cluster.checkpoints());
    let save = |state: &'static [u8]| {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.save("fsrc", state))
    };
    save(br#"{"next":10}"#)
        .await
        .expect("join")
        .expect("the owner commits");
    assert_eq!(
        store.load("fsrc").expect("load").as_deref(),
        Some(&br#"{"next":10}"#[..])
    );

    // Another instance owns it now (its key replaced ours, a new revision).
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("etcd");
    let key = "/auditrelay-test/fence/owners/fsrc";
    raw.delete(key, None).await.expect("delete");
    raw.put(key, "fence-b", None).await.expect("put");

    let refused = save(br#"{"next":20}"#).await.expect("join");
    assert!(refused.is_err(), "a stale owner's commit must be refused");
    assert_eq!(
        next(&mut changes).await,
        Change::Lost("fsrc".into()),
        "the pipeline is told to stop"
    );
    assert!(!cluster.owns("fsrc"));
    assert_eq!(
        store.load("fsrc").expect("load").as_deref(),
        Some(&br#"{"next":10}"#[..]),
        "the checkpoint did not move"
    );
    let text = auditrelay::metrics::metrics().render();
    assert!(
        text.lines().any(|l| l
            .starts_with("auditrelay_cluster_fenced_commits_total{source=\"fsrc\"} ")
            && !l.ends_with(" 0")),
        "the refusal is counted"
    );
    cluster.leave().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn cluster_status_lists_members_owners_and_checkpoints() {
    let etcd = Etcd::start().await;
    let cfg = config(&etcd, "status-a", "status", Duration::from_secs(3));
    let (cluster, mut changes) = Cluster::start(&cfg, vec!["demo".into()])
        .await
        .expect("start");
    assert_eq!(next(&mut changes).await, Change::Acquired("demo".into()));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path())
        .expect("store")
        .with_remote(cluster.checkpoints());
    tokio::task::spawn_blocking(move || store.save("demo", br#"{"next":4242}"#))
        .await
        .expect("join")
        .expect("commit");
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        format!(
            r#"
state_dir = "{d}/state"
[cluster]
backend = "etcd"
name = "status"
instance_id = "someone-else"
[cluster.etcd]
endpoints = ["{e}"]
prefix = "/auditrelay-test"
[sources.demo]
type = "demo"
[sources.idle]
type = "demo"
[sinks.out]
type = "stdout"
inputs = ["demo", "idle"]
"#,
            d = dir.path().display(),
            e = etcd.endpoint()
        ),
    )
    .expect("config");
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_auditrelay"))
        .args(["cluster", "status", "--config"])
        .arg(&file)
        .output()
        .await
        .expect("run");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("1 member: status-a"), "{text}");
    let demo = text
        .lines()
        .find(|l| l.starts_with("demo "))
        .expect("a demo line");
    assert!(
        demo.contains("status-a") && demo.contains(r#"{"next":4242}"#),
        "{demo}"
    );
    let idle = text
        .lines()
        .find(|l| l.starts_with("idle "))
        .expect("an idle line");
    assert!(idle.contains(" - ") && idle.contains("(none"), "{idle}");
    cluster.leave().await;
}
