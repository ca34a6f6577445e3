//! A sink that panics has not delivered: the pipeline must deliver again,
//! count it, name the sink, and never commit past it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::Notify;

use super::*;
use crate::event::{Batch, Event};
use crate::health::Health;
use crate::sink::{FilterConfig, Sink};

/// Panics on its first `panics` deliveries (`usize::MAX`: always), then
/// records what it receives.
struct PanickingSink {
    panics: usize,
    calls: AtomicUsize,
    received: Mutex<Vec<String>>,
    called: Notify,
}

#[async_trait]
impl Sink for PanickingSink {
    async fn deliver(&self, _source: &str, events: &[Event]) -> anyhow::Result<()> {
        let call = self.calls.fetch_add(1, Ordering::SeqCst);
        self.called.notify_one();
        if call < self.panics {
            panic!("test sink bug #{call}");
        }
        let mut got = self.received.lock().expect("not poisoned");
        got.extend(
            events
                .iter()
                .filter_map(|e| e.id.as_deref().map(str::to_string)),
        );
        Ok(())
    }
}

/// One batch of two events, then finished.
struct OneBatch(Option<Batch>);

#[async_trait]
impl Source for OneBatch {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        Ok(self.0.take())
    }
}

fn one_batch() -> OneBatch {
    let ev = |id: &str| Event {
        raw: Bytes::from(format!("{{\"id\":\"{id}\"}}")),
        id: Some(id.into()),
        time: None,
        kind: None,
    };
    OneBatch(Some(Batch {
        source: "src".into(),
        events: vec![ev("a"), ev("b")],
        checkpoint: Bytes::from_static(b"{\"after\":\"b\"}"),
        newest_time: None,
        fetched_at: std::time::Instant::now(),
    }))
}

fn pipeline(
    dir: &std::path::Path,
    sink_name: &str,
    sink: Arc<PanickingSink>,
    health: &Health,
) -> (SourcePipeline, CheckpointStore) {
    let store = CheckpointStore::open(dir).expect("checkpoint dir");
    let p = SourcePipeline {
        name: "src".into(),
        source: Box::new(one_batch()),
        routes: vec![Route {
            sink_name: sink_name.into(),
            sink,
            filter: FilterConfig::default(),
            health: health.clone(),
            request: RequestSize::WHOLE,
        }],
        store: store.clone(),
        max_in_flight: 2,
        max_in_flight_bytes: 1 << 20,
        retry: RetryConfig {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
    };
    (p, store)
}

#[tokio::test]
async fn a_panicking_sink_gets_the_batch_again_before_the_checkpoint_moves() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(PanickingSink {
        panics: 2,
        calls: AtomicUsize::new(0),
        received: Mutex::new(Vec::new()),
        called: Notify::new(),
    });
    let health = Health::default();
    let (p, store) = pipeline(dir.path(), "panics-twice", sink.clone(), &health);
    let panics = metrics().sink_panics.with_label_values(&["panics-twice"]);
    let before = panics.get();
    run_to_end(p, "the pipeline whose sink stops panicking").await;
    assert_eq!(
        *sink.received.lock().expect("not poisoned"),
        vec!["a".to_string(), "b".to_string()],
        "the batch must reach the sink after its panics"
    );
    assert_eq!(sink.calls.load(Ordering::SeqCst), 3);
    assert_eq!(panics.get() - before, 2);
    assert_eq!(
        store.load("src").expect("readable").as_deref(),
        Some(&b"{\"after\":\"b\"}"[..])
    );
    assert!(
        health.snapshot().0,
        "ready again once the sink delivered: {:?}",
        health.snapshot().1
    );
}

#[tokio::test]
async fn a_sink_that_always_panics_is_unready_backs_off_and_is_never_committed_past() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sink = Arc::new(PanickingSink {
        panics: usize::MAX,
        calls: AtomicUsize::new(0),
        received: Mutex::new(Vec::new()),
        called: Notify::new(),
    });
    let health = Health::default();
    let (p, store) = pipeline(dir.path(), "panicky", sink.clone(), &health);
    let started = std::time::Instant::now();
    let run = tokio::spawn(p.run(CancellationToken::new()));
    for _ in 0..4 {
        tokio::time::timeout(Duration::from_secs(10), sink.called.notified())
            .await
            .expect("the batch is delivered again after each panic");
    }
    // Backoff 5, 10, 20 ms between the four attempts: not a hot loop.
    assert!(
        started.elapsed() >= Duration::from_millis(30),
        "{:?}",
        started.elapsed()
    );
    let (ready, components) = health.snapshot();
    assert!(!ready);
    let why = &components["sink.panicky.delivery"].reason;
    assert!(
        why.contains("panicky") && why.contains("test sink bug"),
        "{why}"
    );
    assert!(
        !run.is_finished(),
        "a batch that never reached the sink is not done"
    );
    run.abort();
    assert_eq!(
        store.load("src").expect("readable"),
        None,
        "never committed past"
    );
}

/// A source serving the given pages, then nothing.
struct Pages(std::collections::VecDeque<Batch>);

#[async_trait]
impl crate::source::Source for Pages {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        Ok(self.0.pop_front())
    }
}

/// Events `e{from}`..`e{to}` (an event's bytes depend only on its id),
/// committed as `{"after":after}`.
fn numbered_page(from: usize, to: usize, after: usize) -> Batch {
    let events = (from..to)
        .map(|i| Event {
            raw: Bytes::from(format!("{{\"id\":\"e{i}\"}}")),
            id: Some(format!("e{i}").into()),
            time: None,
            kind: None,
        })
        .collect();
    page(events, after)
}

/// A page of `events` of source `src`, committed as `{"after":after}`.
fn page(events: Vec<Event>, after: usize) -> Batch {
    Batch {
        source: "src".into(),
        events,
        checkpoint: Bytes::from(format!("{{\"after\":{after}}}")),
        newest_time: None,
        fetched_at: std::time::Instant::now(),
    }
}

/// Source `src` serving `pages` to one sink in runs of two events.
fn paged_pipeline(
    store: &CheckpointStore,
    pages: Vec<Batch>,
    sink_name: &str,
    sink: Arc<dyn Sink>,
) -> SourcePipeline {
    SourcePipeline {
        name: "src".into(),
        source: Box::new(Pages(pages.into())),
        routes: vec![Route {
            sink_name: sink_name.into(),
            sink,
            filter: FilterConfig::default(),
            health: Health::default(),
            request: RequestSize {
                max_events: 2,
                max_bytes: usize::MAX,
            },
        }],
        store: store.clone(),
        max_in_flight: 4,
        max_in_flight_bytes: 1 << 20,
        retry: RetryConfig {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
    }
}

/// Runs `p` until its source is finished and everything is committed.
async fn run_to_end(p: SourcePipeline, what: &str) {
    tokio::time::timeout(Duration::from_secs(10), p.run(CancellationToken::new()))
        .await
        .unwrap_or_else(|_| panic!("{what} did not finish within 10 s"))
        .expect("no failure");
}

/// Waits until `done` holds, looking every 5 ms: the progress log is
/// written off the delivery path, with no signal a test could await.
async fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while !done() {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("not within 10 s: {what}"));
}

mod pending;
mod reload_race;
mod resume;
