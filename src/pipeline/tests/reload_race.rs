//! A reload whose drain timed out aborts the old pipeline while one of its
//! deliveries is still stuck inside a sink. The new pipeline of the source
//! then owns the progress log: nothing the old one does afterwards (its
//! last confirmations, its final compaction) may write to it, or its
//! confirmations of pages the new pipeline has committed since would skip
//! later events with the same keys after the next crash.

use std::sync::Mutex;

use async_trait::async_trait;
use tokio::sync::Notify;

use super::super::*;
use crate::event::{Batch, Event};
use crate::sink::Sink;

/// Confirms its first call; blocks the thread in its second (a sink stuck
/// in a long synchronous step, which an abort cannot interrupt) until
/// `release` is sent; records what it received.
struct StuckSink {
    release: Mutex<Option<std::sync::mpsc::Receiver<()>>>,
    stuck: Notify,
    returned: Notify,
    received: Mutex<Vec<String>>,
}

#[async_trait]
impl Sink for StuckSink {
    async fn deliver(&self, _source: &str, events: &[Event]) -> anyhow::Result<()> {
        let first = self.received.lock().expect("not poisoned").is_empty();
        if !first {
            let release = self.release.lock().expect("not poisoned").take();
            if let Some(release) = release {
                self.stuck.notify_one();
                let _ = release.recv();
            }
        }
        let ids = events
            .iter()
            .map(|e| e.id.as_deref().unwrap_or_default().to_string());
        self.received.lock().expect("not poisoned").extend(ids);
        self.returned.notify_one();
        Ok(())
    }
}

fn pipeline(store: &CheckpointStore, pages: Vec<Batch>, sink: Arc<dyn Sink>) -> SourcePipeline {
    super::paged_pipeline(store, pages, "out", sink)
}

fn recording() -> Arc<StuckSink> {
    Arc::new(StuckSink {
        release: Mutex::new(None),
        stuck: Notify::new(),
        returned: Notify::new(),
        received: Mutex::new(Vec::new()),
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_aborted_pipeline_never_writes_the_progress_log_of_its_successor() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path()).expect("store");

    // The old pipeline: e0 e1 confirmed, stuck delivering e2 e3.
    let (release, blocked) = std::sync::mpsc::channel();
    let old = recording();
    *old.release.lock().expect("not poisoned") = Some(blocked);
    let stuck = old.stuck.notified();
    let run = tokio::spawn(
        pipeline(&store, vec![super::numbered_page(0, 4, 1)], old.clone())
            .run(CancellationToken::new()),
    );
    tokio::time::timeout(Duration::from_secs(10), stuck)
        .await
        .expect("the old pipeline gets stuck in its second run");
    super::wait_until("the first run's confirmation reaches the log", || {
        !store.load_progress("src").expect("readable").is_empty()
    })
    .await;
    // The drain timed out: aborted, as `Running::drain` does.
    run.abort();
    let _ = run.await;

    // The new pipeline refetches the page, skips e0 e1, commits, stops.
    let new = recording();
    super::run_to_end(
        pipeline(&store, vec![super::numbered_page(0, 4, 1)], new.clone()),
        "the new pipeline",
    )
    .await;
    assert_eq!(
        *new.received.lock().expect("not poisoned"),
        vec!["e2", "e3"]
    );
    assert!(store.load_progress("src").expect("readable").is_empty());

    // The old pipeline's stuck delivery returns; the aborted task ends.
    let returned = old.returned.notified();
    release.send(()).expect("the old sink waits");
    tokio::time::timeout(Duration::from_secs(10), returned)
        .await
        .expect("the old delivery returns");
    // Whatever the old writer would do, it does within this (bounded) wait.
    let deadline = std::time::Instant::now() + Duration::from_millis(500);
    while std::time::Instant::now() < deadline {
        assert!(
            store.load_progress("src").expect("readable").is_empty(),
            "the aborted pipeline wrote its records into its successor's log: {:?}",
            store.load_progress("src")
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    // So a later page holding events with the same keys goes out whole.
    let later = recording();
    super::run_to_end(
        pipeline(&store, vec![super::numbered_page(0, 4, 2)], later.clone()),
        "the later pipeline",
    )
    .await;
    assert_eq!(later.received.lock().expect("not poisoned").len(), 4);
}
