//! The byte budget of fetch-ahead, and the progress log: a restart sends a
//! sink only the runs it had not confirmed.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;
use tokio::sync::{Notify, Semaphore};

use super::super::*;
use super::{page, run_to_end, wait_until};
use crate::event::{Batch, Event};
use crate::health::Health;
use crate::sink::{FilterConfig, Sink};

/// Records the ids it confirms (`-` for an event without one). Holds calls
/// past `confirm_up_to` events until `gate` gives them permits.
struct RecordingSink {
    ordered: bool,
    confirm_up_to: usize,
    gate: Semaphore,
    received: Mutex<Vec<String>>,
    calls: AtomicUsize,
    called: Notify,
}

impl RecordingSink {
    fn new(ordered: bool, confirm_up_to: usize) -> Arc<Self> {
        Arc::new(RecordingSink {
            ordered,
            confirm_up_to,
            gate: Semaphore::new(0),
            received: Mutex::new(Vec::new()),
            calls: AtomicUsize::new(0),
            called: Notify::new(),
        })
    }

    fn received(&self) -> Vec<String> {
        self.received.lock().expect("not poisoned").clone()
    }
}

#[async_trait]
impl Sink for RecordingSink {
    async fn deliver(&self, _source: &str, events: &[Event]) -> anyhow::Result<()> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        self.called.notify_waiters();
        let over =
            self.received.lock().expect("not poisoned").len() + events.len() > self.confirm_up_to;
        if over {
            // Forever, unless the test opens the gate.
            self.gate.acquire().await?.forget();
        }
        self.received.lock().expect("not poisoned").extend(
            events
                .iter()
                .map(|e| e.id.as_deref().unwrap_or("-").to_string()),
        );
        Ok(())
    }

    fn ordered(&self) -> bool {
        self.ordered
    }
}

/// Hands out its pages, then is finished; counts the pages asked for.
struct Pages {
    pages: VecDeque<Batch>,
    fetched: Arc<AtomicUsize>,
}

#[async_trait]
impl Source for Pages {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        let page = self.pages.pop_front();
        if page.is_some() {
            self.fetched.fetch_add(1, Ordering::SeqCst);
        }
        Ok(page)
    }
}

fn event(id: Option<&str>, n: usize, size: usize) -> Event {
    let body = format!("{{\"id\":{id:?},\"n\":{n},\"pad\":\"");
    let pad = size.saturating_sub(body.len() + 2);
    Event {
        raw: Bytes::from(format!("{body}{}\"}}", "x".repeat(pad))),
        id: id.map(Into::into),
        time: None,
        kind: None,
    }
}

/// `pages` pages of `per_page` events of `size` bytes, ids `PAGE-I`.
fn numbered_pages(pages: usize, per_page: usize, size: usize) -> impl Iterator<Item = Batch> {
    (0..pages).map(move |p| {
        let events = (0..per_page).map(|i| event(Some(&format!("{p}-{i}")), i, size));
        page(events.collect(), p)
    })
}

fn route(name: &str, sink: Arc<RecordingSink>, run_events: usize) -> Route {
    Route {
        sink_name: name.into(),
        sink,
        filter: FilterConfig::default(),
        health: Health::default(),
        request: RequestSize {
            max_events: run_events,
            max_bytes: usize::MAX,
        },
    }
}

fn pipeline(
    store: &CheckpointStore,
    pages: Vec<Batch>,
    routes: Vec<Route>,
    max_in_flight_bytes: u64,
) -> (SourcePipeline, Arc<AtomicUsize>) {
    let fetched = Arc::new(AtomicUsize::new(0));
    let p = SourcePipeline {
        name: "src".into(),
        source: Box::new(Pages {
            pages: pages.into(),
            fetched: fetched.clone(),
        }),
        routes,
        store: store.clone(),
        max_in_flight: 64,
        max_in_flight_bytes,
        retry: RetryConfig {
            initial: Duration::from_millis(5),
            max: Duration::from_millis(20),
        },
    };
    (p, fetched)
}

async fn wait_for_calls(sink: &RecordingSink, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let called = sink.called.notified();
            if sink.calls.load(Ordering::SeqCst) >= n {
                return;
            }
            called.await;
        }
    })
    .await
    .expect("the sink is called");
}

#[tokio::test]
async fn fetch_ahead_stops_at_the_byte_budget_and_a_page_larger_than_it_still_goes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path()).expect("store");
    // Ten pages of 1,000 bytes, a budget of 2,500: two in flight at most
    // (a third, as large as the last, would not fit: the pages held stay
    // under the budget, not the budget plus one page), although
    // max_in_flight is 64.
    let pages = numbered_pages(10, 10, 100).collect();
    let sink = RecordingSink::new(false, 0);
    let (p, fetched) = pipeline(&store, pages, vec![route("held", sink.clone(), 100)], 2_500);
    let run = tokio::spawn(p.run(CancellationToken::new()));
    wait_for_calls(&sink, 2).await;
    // Not a synchronisation: time for a third fetch that must not come.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        fetched.load(Ordering::SeqCst),
        2,
        "fetch-ahead stays within the byte budget"
    );
    sink.gate.add_permits(1_000);
    tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("the pipeline finishes once the sink confirms")
        .expect("no panic")
        .expect("no failure");
    assert_eq!(sink.received().len(), 100);
    assert_eq!(
        store.load("src").expect("readable").as_deref(),
        Some(&b"{\"after\":9}"[..])
    );

    // One page five times the budget goes alone: no deadlock.
    let big = vec![page(
        (0..50)
            .map(|i| event(Some(&format!("big-{i}")), i, 100))
            .collect(),
        10,
    )];
    let sink = RecordingSink::new(true, usize::MAX);
    let (p, _) = pipeline(&store, big, vec![route("big", sink.clone(), 7)], 1_000);
    run_to_end(p, "a page larger than the budget").await;
    assert_eq!(sink.received().len(), 50);
    assert_eq!(
        sink.calls.load(Ordering::SeqCst),
        8,
        "runs of at most 7 events"
    );
}

/// The page both runs fetch: ids with a repeat (`x` twice) and events
/// without an id, told apart by their bytes.
fn the_page() -> Batch {
    let ids = [
        Some("a"),
        Some("x"),
        None,
        Some("b"),
        Some("c"),
        Some("d"),
        Some("x"),
        None,
        Some("e"),
        Some(""),
    ];
    page(
        ids.iter()
            .enumerate()
            .map(|(n, id)| event(*id, n, 60))
            .collect(),
        1,
    )
}

/// [`the_page`] to the sinks `ordered` (in runs of two) and `unordered`
/// (in runs of three): both runs of the restart test, before and after.
fn the_page_to(
    store: &CheckpointStore,
    ordered: &Arc<RecordingSink>,
    unordered: &Arc<RecordingSink>,
) -> SourcePipeline {
    let routes = vec![
        route("ordered", ordered.clone(), 2),
        route("unordered", unordered.clone(), 3),
    ];
    pipeline(store, vec![the_page()], routes, 1 << 20).0
}

fn confirmed_by(store: &CheckpointStore, sink: &str) -> usize {
    store
        .load_progress("src")
        .expect("readable")
        .iter()
        .filter(|r| r.sink == sink)
        .map(|r| r.keys.len())
        .sum()
}

#[tokio::test]
async fn a_restart_sends_each_sink_only_the_runs_it_had_not_confirmed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path()).expect("store");

    // First run: the ordered sink confirms two runs of two (a x, - b) and
    // hangs on the third; the unordered one confirms everything. The page
    // is never committed: then the process is killed.
    let ordered = RecordingSink::new(true, 4);
    let unordered = RecordingSink::new(false, usize::MAX);
    let p = the_page_to(&store, &ordered, &unordered);
    let run = tokio::spawn(p.run(CancellationToken::new()));
    wait_for_calls(&ordered, 3).await;
    // The log is written off the delivery path: wait for it to be durable.
    wait_until("the confirmed runs reach the progress log", || {
        confirmed_by(&store, "ordered") >= 4 && confirmed_by(&store, "unordered") >= 10
    })
    .await;
    run.abort();
    let _ = run.await;
    assert_eq!(
        store.load("src").expect("readable"),
        None,
        "nothing committed"
    );
    assert_eq!(unordered.received().len(), 10);

    // Second run, from the same checkpoint: the page comes again.
    let skipped = |sink: &str| {
        metrics()
            .events_skipped_confirmed
            .with_label_values(&[sink, "src"])
            .get()
    };
    let (before_o, before_u) = (skipped("ordered"), skipped("unordered"));
    let ordered = RecordingSink::new(true, usize::MAX);
    let unordered = RecordingSink::new(false, usize::MAX);
    run_to_end(the_page_to(&store, &ordered, &unordered), "the second run").await;
    assert_eq!(
        ordered.received(),
        vec!["c", "d", "x", "-", "e", ""],
        "the second x is another event than the confirmed one: it is sent"
    );
    assert!(
        unordered.received().is_empty(),
        "{:?}",
        unordered.received()
    );
    assert_eq!(skipped("ordered") - before_o, 4);
    assert_eq!(skipped("unordered") - before_u, 10);
    assert_eq!(
        store.load("src").expect("readable").as_deref(),
        Some(&b"{\"after\":1}"[..]),
        "skipped events count as delivered for the commit"
    );
    assert!(
        store.load_progress("src").expect("readable").is_empty(),
        "a committed page leaves nothing in the progress log"
    );
}

/// Notes the size of the progress log at every call, then confirms.
struct LogWatchingSink {
    log: std::path::PathBuf,
    largest: AtomicUsize,
}

#[async_trait]
impl Sink for LogWatchingSink {
    async fn deliver(&self, _source: &str, _events: &[Event]) -> anyhow::Result<()> {
        let len = std::fs::metadata(&self.log).map_or(0, |m| m.len() as usize);
        self.largest.fetch_max(len, Ordering::SeqCst);
        Ok(())
    }
}

#[tokio::test]
async fn the_progress_log_is_compacted_as_checkpoints_move() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path()).expect("store");
    // 1,500 pages of 100 events, one record of ~1.6 KB each: ~2.4 MB of
    // confirmations in all, far more than what is ever uncommitted.
    let pages = numbered_pages(1500, 100, 40).collect();
    let sink = Arc::new(LogWatchingSink {
        log: store.progress_path("src"),
        largest: AtomicUsize::new(0),
    });
    let (mut p, _) = pipeline(&store, pages, Vec::new(), 1 << 20);
    p.routes = vec![Route {
        sink_name: "watched".into(),
        sink: sink.clone(),
        filter: FilterConfig::default(),
        health: Health::default(),
        request: RequestSize::WHOLE,
    }];
    tokio::time::timeout(Duration::from_secs(60), p.run(CancellationToken::new()))
        .await
        .expect("finishes")
        .expect("no failure");
    let largest = sink.largest.load(Ordering::SeqCst);
    assert!(largest > 0, "the log exists while pages are in flight");
    assert!(
        largest < 1 << 20,
        "the log holds uncommitted pages only, not all confirmations: {largest} bytes"
    );
    assert!(store.load_progress("src").expect("readable").is_empty());
}

/// Unordered; confirms every call at once, except those holding an event
/// whose bytes contain `hold`: those hang forever.
struct HoldingSink {
    hold: &'static str,
    received: Mutex<Vec<Bytes>>,
}

#[async_trait]
impl Sink for HoldingSink {
    async fn deliver(&self, _source: &str, events: &[Event]) -> anyhow::Result<()> {
        let held = events
            .iter()
            .any(|e| String::from_utf8_lossy(&e.raw).contains(self.hold));
        if held {
            std::future::pending::<()>().await;
        }
        self.received
            .lock()
            .expect("not poisoned")
            .extend(events.iter().map(|e| e.raw.clone()));
        Ok(())
    }

    /// As a webhook sink: runs go at once, confirmed in any order.
    fn ordered(&self) -> bool {
        false
    }
}

fn holding_route(sink: Arc<HoldingSink>) -> Route {
    Route {
        sink_name: "hook".into(),
        sink,
        filter: FilterConfig::default(),
        health: Health::default(),
        request: RequestSize {
            max_events: 1,
            max_bytes: usize::MAX,
        },
    }
}

#[tokio::test]
async fn an_unconfirmed_event_sharing_its_id_with_a_confirmed_one_is_sent_again() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path()).expect("store");
    // Two different events with the same id (an id_path naming a field
    // that is not unique): the sink confirms the second, never the first.
    let the_page = || {
        let mut first = event(Some("dup"), 0, 60);
        first.raw = Bytes::from_static(b"{\"id\":\"dup\",\"what\":\"hold: login failed\"}");
        let second = event(Some("dup"), 1, 60);
        page(vec![first, second], 1)
    };
    let sink = Arc::new(HoldingSink {
        hold: "hold",
        received: Mutex::new(Vec::new()),
    });
    let (p, _) = pipeline(&store, vec![the_page()], Vec::new(), 1 << 20);
    let mut p = p;
    p.routes = vec![holding_route(sink.clone())];
    let run = tokio::spawn(p.run(CancellationToken::new()));
    tokio::time::timeout(Duration::from_secs(10), async {
        while confirmed_by(&store, "hook") < 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "no confirmation in the progress log: {:?} received",
            sink.received.lock().map(|r| r.len())
        )
    });
    run.abort();
    let _ = run.await;
    assert_eq!(store.load("src").expect("readable"), None);

    let sink = Arc::new(HoldingSink {
        hold: "never",
        received: Mutex::new(Vec::new()),
    });
    let (mut p, _) = pipeline(&store, vec![the_page()], Vec::new(), 1 << 20);
    p.routes = vec![holding_route(sink.clone())];
    run_to_end(p, "the second run").await;
    let received = sink.received.lock().expect("not poisoned").clone();
    assert!(
        received
            .iter()
            .any(|r| String::from_utf8_lossy(r).contains("login failed")),
        "the event the sink never confirmed is sent after the restart: {received:?}"
    );
}

/// Hands out its pages, then waits forever (a source still tailing).
struct PagesThenWait(VecDeque<Batch>);

#[async_trait]
impl Source for PagesThenWait {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        match self.0.pop_front() {
            Some(page) => Ok(Some(page)),
            None => std::future::pending().await,
        }
    }
}

#[tokio::test]
async fn confirmations_of_a_committed_page_never_skip_a_later_identical_event() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path()).expect("store");
    // An event without an id, the same bytes twice in the stream: two
    // occurrences (two identical failed logins), in pages 1 and 2.
    let heartbeat = || Event {
        raw: Bytes::from_static(b"{\"action\":\"login\",\"outcome\":\"failure\",\"user\":\"bob\"}"),
        id: None,
        time: None,
        kind: None,
    };
    let sink = Arc::new(HoldingSink {
        hold: "never",
        received: Mutex::new(Vec::new()),
    });
    let (mut p, _) = pipeline(&store, Vec::new(), Vec::new(), 1 << 20);
    p.source = Box::new(PagesThenWait(vec![page(vec![heartbeat()], 1)].into()));
    p.routes = vec![holding_route(sink.clone())];
    let run = tokio::spawn(p.run(CancellationToken::new()));
    let progress = store.progress_path("src");
    // Committed, and the confirmation appended (a header and a record).
    let appended = || {
        std::fs::metadata(&progress).map_or(0, |m| m.len())
            > crate::checkpoint::record_len("hook", 1)
    };
    wait_until("page 1 is confirmed and committed", || {
        store.load("src").expect("readable").is_some() && appended()
    })
    .await;
    // What a SIGKILL now leaves on disk: page 1 committed, its confirmation
    // still in the log (compaction waits for the log to grow).
    let on_disk = std::fs::read(&progress).expect("the progress log exists");
    run.abort();
    let _ = run.await;
    std::fs::write(&progress, on_disk).expect("restore the killed state");

    let sink = Arc::new(HoldingSink {
        hold: "never",
        received: Mutex::new(Vec::new()),
    });
    let (mut p, _) = pipeline(
        &store,
        vec![page(vec![heartbeat()], 2)],
        Vec::new(),
        1 << 20,
    );
    p.routes = vec![holding_route(sink.clone())];
    run_to_end(p, "the second run").await;
    assert_eq!(
        sink.received.lock().expect("not poisoned").len(),
        1,
        "the second occurrence (page 2) was never sent: it must not be skipped"
    );
}
