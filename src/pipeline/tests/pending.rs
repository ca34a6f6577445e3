//! Requests a sink reported pending at a crash: the restart asks the sink
//! about them before the refetched page is planned; what it confirms is
//! skipped, the rest is sent again, and nothing of it outlives the commit.

use std::collections::HashSet;
use std::sync::Mutex;

use async_trait::async_trait;

use super::super::*;
use crate::event::Event;
use crate::sink::{PendingRequest, Sink, Tracked};

/// Reports each call pending (token: the id of its first event); hangs
/// (never confirms) when `hang`, else confirms. Confirms on restart the
/// tokens in `acked`, once each (as HEC forgets an ack it reported).
struct AckingSink {
    hang: bool,
    acked: Mutex<HashSet<Vec<u8>>>,
    asked: Mutex<Vec<PendingRequest>>,
    received: Mutex<Vec<String>>,
}

impl AckingSink {
    fn new(hang: bool, acked: &[&str]) -> Arc<Self> {
        Arc::new(AckingSink {
            hang,
            acked: Mutex::new(acked.iter().map(|t| t.as_bytes().to_vec()).collect()),
            asked: Mutex::new(Vec::new()),
            received: Mutex::new(Vec::new()),
        })
    }
}

#[async_trait]
impl Sink for AckingSink {
    async fn deliver(&self, _source: &str, events: &[Event]) -> anyhow::Result<()> {
        if self.hang {
            std::future::pending::<()>().await;
        }
        let ids = events
            .iter()
            .map(|e| e.id.as_deref().unwrap_or_default().to_string());
        self.received.lock().expect("not poisoned").extend(ids);
        Ok(())
    }

    /// Reports the call pending before delivering it, as HEC does once the
    /// request is accepted with an ack id.
    async fn deliver_tracked(&self, call: Tracked<'_>) -> anyhow::Result<()> {
        let token = call
            .events
            .first()
            .and_then(|e| e.id.as_deref())
            .unwrap_or_default();
        (call.pending)(0..call.events.len(), token.as_bytes().to_vec());
        self.deliver(call.source, call.events).await
    }

    async fn resolve_pending(&self, requests: &[PendingRequest]) -> Vec<bool> {
        self.asked
            .lock()
            .expect("not poisoned")
            .extend(requests.iter().cloned());
        let mut acked = self.acked.lock().expect("not poisoned");
        requests.iter().map(|r| acked.remove(&r.token)).collect()
    }

    fn ordered(&self) -> bool {
        false
    }
}

/// Runs of two of one page `e0`..`e5`: e0 e1 | e2 e3 | e4 e5.
fn pipeline(store: &CheckpointStore, sink: Arc<AckingSink>) -> SourcePipeline {
    super::paged_pipeline(store, vec![super::numbered_page(0, 6, 1)], "hec", sink)
}

fn received(sink: &AckingSink) -> Vec<String> {
    let mut r = sink.received.lock().expect("not poisoned").clone();
    r.sort();
    r
}

#[tokio::test]
async fn a_restart_skips_the_pending_runs_the_sink_confirms_and_sends_the_rest() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path()).expect("store");

    // First run: three requests sent, all awaiting their acks; then a crash.
    let first = AckingSink::new(true, &[]);
    let run = tokio::spawn(pipeline(&store, first).run(CancellationToken::new()));
    let pending = || store.load_progress_all("src").expect("readable").pending;
    super::wait_until("the pending requests reach the progress log", || {
        pending().len() >= 3
    })
    .await;
    run.abort();
    let _ = run.await;
    let loaded = store.load_progress_all("src").expect("readable");
    assert!(loaded.confirmed.is_empty(), "pending is not confirmed");

    // Second run: the destination acknowledges e0's and e4's requests.
    let counted = |c: &prometheus::IntCounterVec| c.with_label_values(&["hec", "src"]).get();
    let m = crate::metrics::metrics();
    let before = (
        counted(&m.events_confirmed_after_restart),
        counted(&m.events_resent_after_restart),
    );
    let second = AckingSink::new(false, &["e0", "e4"]);
    super::run_to_end(pipeline(&store, second.clone()), "the second run").await;
    assert_eq!(
        (
            counted(&m.events_confirmed_after_restart) - before.0,
            counted(&m.events_resent_after_restart) - before.1
        ),
        (4, 2),
        "e0, e1, e4, e5 found acknowledged; e2, e3 sent again"
    );
    let mut asked: Vec<Vec<u8>> = second
        .asked
        .lock()
        .expect("not poisoned")
        .iter()
        .map(|r| r.token.clone())
        .collect();
    asked.sort();
    assert_eq!(asked, vec![b"e0".to_vec(), b"e2".to_vec(), b"e4".to_vec()]);
    assert_eq!(
        received(&second),
        vec!["e2", "e3"],
        "only the unacknowledged run is sent again"
    );
    assert_eq!(
        store.load("src").expect("readable").as_deref(),
        Some(&b"{\"after\":1}"[..])
    );
    let left = store.load_progress_all("src").expect("readable");
    assert!(
        left.confirmed.is_empty() && left.pending.is_empty(),
        "a committed page leaves nothing in the log: {left:?}"
    );

    // A third start asks nothing (and the page, were it refetched, would
    // go out whole: nothing of the committed one may skip it).
    let third = AckingSink::new(false, &["e2"]);
    super::run_to_end(pipeline(&store, third.clone()), "the third run").await;
    assert!(third.asked.lock().expect("not poisoned").is_empty());
    assert_eq!(received(&third).len(), 6);
}
