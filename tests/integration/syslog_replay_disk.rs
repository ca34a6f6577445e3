//! The syslog TCP replay window is kept on disk only: after a receiver
//! reset, the frames resent are read back from the replay file. They must
//! be exactly the frames confirmed before, and a window that cannot be
//! read back must fail the send (not confirmed, tried again), never be
//! skipped.

use crate::support;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use auditrelay::event::Event;
use auditrelay::health::Health;
use auditrelay::sink::{DeadLetters, Sink, SinkContext};
use bytes::Bytes;
use support::syslog_receiver::SyslogReceiver;

/// A TCP syslog sink named `replaydisk` with its own state directory.
fn build(dir: &Path, port: u16) -> (Arc<dyn Sink>, Health) {
    build_with(dir, port, "")
}

/// As [`build`], with `extra` lines in the sink's table.
fn build_with(dir: &Path, port: u16, extra: &str) -> (Arc<dyn Sink>, Health) {
    let cfg_path = dir.join("config.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "state_dir = \"{}\"\n[sources.veza]\ntype = \"demo\"\n[sinks.replaydisk]\ntype = \"syslog\"\ninputs = [\"veza\"]\naddress = \"tcp://127.0.0.1:{port}\"\nretry = {{ initial = \"20ms\", max = \"100ms\" }}\ntimeout = \"5s\"\n{extra}",
            dir.display()
        ),
    )
    .unwrap();
    let cfg = auditrelay::config_file::load(&cfg_path).unwrap_or_else(|e| panic!("{e}"));
    let health = Health::default();
    let sink = cfg.sinks["replaydisk"]
        .build(SinkContext {
            name: "replaydisk".into(),
            state_dir: dir.join("state"),
            health: health.clone(),
            dead_letters: DeadLetters::new(dir, "replaydisk"),
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    (sink.into(), health)
}

fn events(prefix: &str, n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let id = format!("{prefix}-{i:04}");
            Event {
                raw: Bytes::from(format!(r#"{{"id":"{id}","pad":"{}"}}"#, "p".repeat(200))),
                id: Some(id.into()),
                time: None,
                kind: None,
            }
        })
        .collect()
}

fn ids(events: &[Event]) -> Vec<String> {
    events
        .iter()
        .map(|e| e.id.as_deref().unwrap().to_string())
        .collect()
}

/// Delivers `batches` into the receiver while it reads and throws away
/// every frame (confirmed: its kernel acknowledged them), then makes it
/// honest again and resets the connection: only the replay window can
/// bring those frames back.
async fn lose(receiver: &SyslogReceiver, sink: &Arc<dyn Sink>, batches: &[Vec<Event>]) {
    receiver.set_losing(true);
    for batch in batches {
        tokio::time::timeout(Duration::from_secs(10), sink.deliver("veza", batch))
            .await
            .expect("confirmed")
            .unwrap();
    }
    let want = batches.iter().map(Vec::len).sum::<usize>();
    assert!(
        receiver
            .wait_until(Duration::from_secs(10), |lost, _| lost.len() >= want)
            .await,
        "the receiver read (and lost) every frame"
    );
    receiver.set_losing(false);
    assert!(
        receiver
            .reset_connections_and_wait(Duration::from_secs(10))
            .await,
        "the receiver's connections did not close"
    );
}

fn replay_file(dir: &Path) -> PathBuf {
    let files: Vec<PathBuf> = std::fs::read_dir(dir.join("state/syslog_replay/replaydisk"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "replay"))
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files[0].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_lost_before_a_reset_are_read_back_from_the_file_exactly() {
    let receiver = SyslogReceiver::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, _) = build(dir.path(), receiver.port);
    let lost: Vec<Vec<Event>> = (0..3).map(|b| events(&format!("lost{b}"), 40)).collect();
    lose(&receiver, &sink, &lost).await;
    let next = events("next", 5);
    tokio::time::timeout(Duration::from_secs(20), sink.deliver("veza", &next))
        .await
        .expect("delivered after the reset")
        .unwrap();
    let mut want: Vec<String> = lost.iter().flat_map(|b| ids(b)).collect();
    want.extend(ids(&next));
    let arrived = receiver
        .wait_until(Duration::from_secs(10), |_, kept| kept.len() >= want.len())
        .await;
    assert!(arrived, "only {} frames arrived", receiver.kept().len());
    assert_eq!(
        receiver.kept(),
        want,
        "the window, in order, then the next batch"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_damaged_on_disk_fails_the_send_until_it_reads_back_whole() {
    let receiver = SyslogReceiver::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, health) = build(dir.path(), receiver.port);
    let lost: Vec<Vec<Event>> = (0..3).map(|b| events(&format!("dmg{b}"), 40)).collect();
    lose(&receiver, &sink, &lost).await;
    // Flip one byte inside the second batch's frames (what a failing
    // disk does); the first batch can still be read and is resent.
    let path = replay_file(dir.path());
    let original = std::fs::read(&path).unwrap();
    let second = original
        .windows(8)
        .position(|w| w == b"dmg1-000")
        .expect("the second batch is in the file");
    let mut damaged = original.clone();
    damaged[second] ^= 0x20;
    std::fs::write(&path, &damaged).unwrap();
    let next = events("after", 5);
    let delivery = {
        let (sink, next) = (sink.clone(), next.clone());
        tokio::spawn(async move { sink.deliver("veza", &next).await })
    };
    // The sink reports the read-back failure and keeps trying (polled:
    // health has no signal, so bounded).
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let reason = loop {
        let (_, parts) = health.snapshot();
        let state = &parts["sink.replaydisk"];
        if !state.ready && state.reason.contains("cannot read the replay window back") {
            break state.reason.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the damaged window was never reported; delivered: {}; sink state: {state:?}",
            delivery.is_finished()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        reason.contains(&path.display().to_string()) && reason.contains("offset"),
        "{reason}"
    );
    assert!(!delivery.is_finished(), "confirmed without its window");
    // Repaired (in life: the operator fixed the disk): resent whole.
    std::fs::write(&path, &original).unwrap();
    tokio::time::timeout(Duration::from_secs(20), delivery)
        .await
        .expect("delivered once the window reads back")
        .unwrap()
        .unwrap();
    let mut want: Vec<String> = lost.iter().flat_map(|b| ids(b)).collect();
    want.extend(ids(&next));
    let arrived = receiver
        .wait_until(Duration::from_secs(10), |_, kept| {
            want.iter().all(|id| kept.contains(id))
        })
        .await;
    let kept = receiver.kept();
    assert!(
        arrived,
        "missing: {:?}",
        want.iter().find(|id| !kept.contains(id))
    );
    // The first batch went out before each failed read: duplicates, in
    // order, and nothing but the window and the new batch.
    let mut first_arrivals: Vec<String> = Vec::new();
    for id in &kept {
        assert!(want.contains(id), "a frame never sent: {id}");
        if !first_arrivals.contains(id) {
            first_arrivals.push(id.clone());
        }
    }
    assert_eq!(first_arrivals, want);
}

/// The window cannot be written (here: a rewrite's temp file cannot be
/// created; in life a full or read-only state_dir): the batch is not
/// confirmed, and the operator must see the sink is stuck, not only a log
/// line per retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_window_that_cannot_be_written_turns_the_sink_unready() {
    let receiver = SyslogReceiver::start(false).await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, health) = build_with(dir.path(), receiver.port, "replay_window = 1000\n");
    tokio::time::timeout(
        Duration::from_secs(20),
        sink.deliver("veza", &events("first", 5)),
    )
    .await
    .expect("confirmed")
    .unwrap();
    assert!(health.snapshot().1["sink.replaydisk"].ready);
    std::fs::create_dir(replay_file(dir.path()).with_extension("tmp")).unwrap();
    // Over 1 MiB of records: an append on the way rewrites the file first.
    let big: Vec<Event> = events("big", 1000)
        .into_iter()
        .map(|mut e| {
            let id = e.id.as_deref().unwrap().to_string();
            e.raw = Bytes::from(format!(r#"{{"id":"{id}","pad":"{}"}}"#, "p".repeat(1200)));
            e
        })
        .collect();
    let failed = tokio::time::timeout(Duration::from_secs(20), sink.deliver("veza", &big))
        .await
        .expect("an answer");
    let e = failed.expect_err("confirmed without its window on disk");
    assert!(format!("{e:#}").contains("replay window"), "{e:#}");
    let (_, parts) = health.snapshot();
    let state = &parts["sink.replaydisk"];
    assert!(
        !state.ready && state.reason.contains("replay window"),
        "{state:?}"
    );
}
