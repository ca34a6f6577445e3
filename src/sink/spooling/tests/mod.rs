mod edge_cases;

use super::*;
use bytes::Bytes;
use chrono::DateTime;
use tokio::sync::watch;

/// A sink that takes nothing until its gate opens, and records what it
/// took.
struct GatedSink {
    open: watch::Receiver<bool>,
    got: Mutex<Vec<String>>,
    took: Notify,
}

impl GatedSink {
    fn new(open: bool) -> (Arc<GatedSink>, watch::Sender<bool>) {
        let (tx, rx) = watch::channel(open);
        let sink = Arc::new(GatedSink {
            open: rx,
            got: Mutex::new(Vec::new()),
            took: Notify::new(),
        });
        (sink, tx)
    }

    fn got(&self) -> Vec<String> {
        self.got.lock().unwrap().clone()
    }

    /// Waits until `n` events were taken (bounded).
    /// Bounded at 30 s: generous, so a loaded CI machine (the reopen
    /// waits for the old instance's lock) does not fail it.
    async fn wait_for(&self, n: usize) -> Vec<String> {
        for _ in 0..1500 {
            let took = self.took.notified();
            if self.got().len() >= n {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(20), took).await;
        }
        self.got()
    }
}

#[async_trait]
impl Sink for GatedSink {
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
        let mut open = self.open.clone();
        open.wait_for(|o| *o).await?;
        let mut got = self.got.lock().unwrap();
        got.extend(
            events
                .iter()
                .map(|e| format!("{source}:{}", e.id.as_deref().unwrap_or("-"))),
        );
        drop(got);
        self.took.notify_waiters();
        Ok(())
    }
}

fn events(ids: &[&str]) -> Vec<Event> {
    padded(ids, 100)
}

fn padded(ids: &[&str], pad: usize) -> Vec<Event> {
    ids.iter()
        .map(|id| Event {
            raw: Bytes::from(format!(
                "{{\"id\":\"{id}\",\"pad\":\"{}\"}}",
                "x".repeat(pad)
            )),
            id: Some((*id).into()),
            time: DateTime::from_timestamp(1_700_000_000, 123_456_789),
            kind: Some("auth.login".into()),
        })
        .collect()
}

fn retry() -> RetryConfig {
    RetryConfig {
        initial: Duration::from_millis(10),
        max: Duration::from_millis(50),
    }
}

fn open(dir: &Path, inner: Arc<dyn Sink>, max_bytes: u64, health: &Health) -> SpoolingSink {
    SpoolingSink::open(
        "spooled",
        dir,
        inner,
        Some(Duration::from_millis(50)),
        max_bytes,
        retry(),
        health.clone(),
    )
    .unwrap()
}

/// Spools `ids` (one batch each) while the inner sink never confirms, then
/// drops that instance: what a restart finds in the spool.
async fn spool_while_down(dir: &Path, ids: &[&str], health: &Health) {
    let (dead, _gate) = GatedSink::new(false);
    let sink = open(dir, dead, 64 << 20, health);
    for id in ids {
        sink.deliver("s", &events(&[id])).await.unwrap();
    }
    drop(sink);
    wait_until_released(dir).await;
}

/// Waits (bounded) until the dropped instance's drainer has let go of the
/// spool's lock, so a test may tamper with its files.
async fn wait_until_released(dir: &Path) {
    let lock = spool_dir(dir, "spooled").join(".lock");
    let file = std::fs::File::open(&lock).unwrap();
    for _ in 0..1000 {
        if file.try_lock().is_ok() {
            file.unlock().unwrap();
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the dropped instance never let go of {}", lock.display());
}

/// A sink whose delivery never ends (e.g. waiting for room in its full
/// dead-letter file); says when a delivery of it is given up.
struct StuckSink {
    given_up: tokio::sync::mpsc::UnboundedSender<()>,
}

struct SaysWhenDropped(tokio::sync::mpsc::UnboundedSender<()>);

impl Drop for SaysWhenDropped {
    fn drop(&mut self) {
        let _ = self.0.send(());
    }
}

#[async_trait]
impl Sink for StuckSink {
    async fn deliver(&self, _: &str, _: &[Event]) -> anyhow::Result<()> {
        let _guard = SaysWhenDropped(self.given_up.clone());
        std::future::pending().await
    }
}

#[tokio::test]
async fn a_late_delivery_ends_with_the_sink_that_started_it() {
    let dir = tempfile::tempdir().unwrap();
    let (given_up, mut given_up_rx) = tokio::sync::mpsc::unbounded_channel();
    let inner = Arc::new(StuckSink { given_up });
    let sink = open(dir.path(), inner.clone(), 1 << 20, &Health::default());
    // Outlives spool_after: spooled, and the attempt goes on late.
    sink.deliver("s", &events(&["a"])).await.unwrap();
    // A reload drops the sink: its replacement delivers the spool, so
    // the old attempt must not linger (and write dead letters) forever.
    drop(sink);
    tokio::time::timeout(Duration::from_secs(5), given_up_rx.recv())
        .await
        .expect("the late attempt is given up when its sink is dropped");
}

#[tokio::test]
async fn a_dropped_delivery_takes_its_attempt_with_it() {
    let dir = tempfile::tempdir().unwrap();
    let (given_up, mut given_up_rx) = tokio::sync::mpsc::unbounded_channel();
    let inner = Arc::new(StuckSink { given_up });
    let sink = SpoolingSink::open(
        "spooled",
        dir.path(),
        inner.clone(),
        Some(Duration::from_secs(3600)),
        1 << 20,
        retry(),
        Health::default(),
    )
    .unwrap();
    // A drain that timed out aborts the pipeline's delivery mid-attempt:
    // the attempt must not go on and deliver after the replacement
    // pipeline started again from the checkpoint.
    let batch = events(&["a"]);
    let delivery = sink.deliver("s", &batch);
    assert!(
        tokio::time::timeout(Duration::from_millis(100), delivery)
            .await
            .is_err(),
        "still waiting for the stuck sink"
    );
    tokio::time::timeout(Duration::from_secs(5), given_up_rx.recv())
        .await
        .expect("the attempt is given up with the delivery");
    drop(sink);
}

#[tokio::test]
async fn a_late_sink_is_spooled_then_drained_in_order_without_duplicates() {
    let dir = tempfile::tempdir().unwrap();
    let (inner, gate) = GatedSink::new(false);
    let health = Health::default();
    let sink = open(dir.path(), inner.clone(), 64 << 20, &health);
    // The first batch waits spool_after, then is parked; the next ones
    // go straight to the spool.
    sink.deliver("s", &events(&["a1", "a2"])).await.unwrap();
    sink.deliver("s", &events(&["b1"])).await.unwrap();
    sink.deliver("t", &events(&["c1"])).await.unwrap();
    assert!(inner.got().is_empty());
    assert!(spool_dir(dir.path(), "spooled")
        .join("00000000000000000001.spool")
        .exists());
    gate.send(true).unwrap();
    let got = inner.wait_for(4).await;
    assert_eq!(got, vec!["s:a1", "s:a2", "s:b1", "t:c1"]);
    // Empty again: the next batch is delivered directly.
    for _ in 0..500 {
        if !sink.shared.state().backlog {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!sink.shared.state().backlog, "the spool never emptied");
    let direct =
        tokio::time::timeout(Duration::from_secs(5), sink.deliver("s", &events(&["d1"]))).await;
    assert!(matches!(direct, Ok(Ok(()))));
    assert_eq!(inner.wait_for(5).await.len(), 5, "{:?}", inner.got());
    assert!(
        !sink.shared.state().backlog,
        "the last batch must have gone directly"
    );

    assert_eq!(inner.got().iter().filter(|g| *g == "s:a1").count(), 1);
}

// Reopens the spool: the old instance's drainer must be able to run
// (and let go of the spool's lock) while the new one waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spooled_batches_survive_a_restart_and_a_torn_tail() {
    let dir = tempfile::tempdir().unwrap();
    let health = Health::default();
    spool_while_down(dir.path(), &["a", "b"], &health).await;
    // A crash in the middle of an append leaves half a record.
    let segment = spool_dir(dir.path(), "spooled").join("00000000000000000001.spool");
    let mut data = std::fs::read(&segment).unwrap();
    let whole = data.len();
    data.extend_from_slice(&[200, 0, 0, 0, 1, 2, 3]);
    std::fs::write(&segment, &data).unwrap();

    let (inner, _gate) = GatedSink::new(true);
    let sink = open(dir.path(), inner.clone(), 64 << 20, &health);
    assert_eq!(inner.wait_for(2).await, vec!["s:a", "s:b"]);
    assert_eq!(std::fs::metadata(&segment).unwrap().len() as usize, whole);
    // The position is recorded after the sink confirmed.
    for _ in 0..500 {
        if !sink.shared.state().backlog {
            break;
        }
        let _ = tokio::time::timeout(Duration::from_millis(20), sink.shared.space.notified()).await;
    }
    assert!(!sink.shared.state().backlog, "the spool never emptied");
    drop(sink);

    // Delivered batches are not delivered again after another restart.
    let (again, _gate) = GatedSink::new(true);
    let sink = open(dir.path(), again.clone(), 64 << 20, &health);
    sink.deliver("s", &events(&["c"])).await.unwrap();
    assert_eq!(again.wait_for(1).await, vec!["s:c"]);
}

#[tokio::test]
async fn a_full_spool_blocks_instead_of_dropping() {
    let dir = tempfile::tempdir().unwrap();
    let (inner, gate) = GatedSink::new(false);
    let health = Health::default();
    // 1 MiB segments under a 2 MiB cap: a ~260 KiB batch fits a few times.
    let sink = Arc::new(open(dir.path(), inner.clone(), 2 << 20, &health));
    let ids: Vec<String> = (0..5000).map(|i| format!("e{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    let mut blocked = None;
    for (n, chunk) in refs.chunks(250).enumerate() {
        let (sink, batch) = (sink.clone(), padded(chunk, 1000));
        let mut task = tokio::spawn(async move { sink.deliver("s", &batch).await });
        // Blocked = the spool reports itself full while this one waits.
        let full = async {
            for _ in 0..1000 {
                if !health.snapshot().0 {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        };
        tokio::select! {
            done = &mut task => assert!(matches!(done, Ok(Ok(()))), "{done:?}"),
            _ = full => {
                blocked = Some((n, task));
                break;
            }
        }
    }
    let (n, task) = blocked.expect("a 2 MiB spool cannot take 5 MB");
    assert!(n >= 3, "blocked after {n} batches");
    let (ready, components) = health.snapshot();
    assert!(!ready, "{components:?}");
    gate.send(true).unwrap();
    assert!(matches!(
        tokio::time::timeout(Duration::from_secs(10), task).await,
        Ok(Ok(Ok(())))
    ));
    let got = inner.wait_for((n + 1) * 250).await;
    let want: Vec<String> = refs[..(n + 1) * 250]
        .iter()
        .map(|i| format!("s:{i}"))
        .collect();
    assert_eq!(got, want);
    assert!(health.snapshot().0);
}
