use super::*;

/// Fails fast for the sources in `fail_fast` while closed; otherwise
/// waits for the gate.
struct ScriptSink {
    open: watch::Receiver<bool>,
    fail_fast: Vec<&'static str>,
    got: Mutex<Vec<String>>,
}

#[async_trait]
impl Sink for ScriptSink {
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
        if !*self.open.borrow() && self.fail_fast.contains(&source) {
            anyhow::bail!("down");
        }
        let mut open = self.open.clone();
        open.wait_for(|o| *o).await?;
        self.got.lock().unwrap().extend(
            events
                .iter()
                .map(|e| format!("{source}:{}", e.id.as_deref().unwrap_or("-"))),
        );
        Ok(())
    }
}

fn script(fail_fast: Vec<&'static str>) -> (Arc<ScriptSink>, watch::Sender<bool>) {
    let (tx, rx) = watch::channel(false);
    let sink = Arc::new(ScriptSink {
        open: rx,
        fail_fast,
        got: Mutex::new(Vec::new()),
    });
    (sink, tx)
}

/// Bounded wait until the spool is empty and batches go directly.
async fn wait_direct(sink: &SpoolingSink) {
    for _ in 0..500 {
        if !sink.shared.state().backlog {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the spool never emptied");
}

/// A 16 MiB spool going directly to a closed sink that fails source `s`
/// fast; the guard keeps the spool directory.
async fn spool_of_16_mib() -> (
    tempfile::TempDir,
    Arc<ScriptSink>,
    watch::Sender<bool>,
    SpoolingSink,
) {
    let dir = tempfile::tempdir().unwrap();
    let (inner, gate) = script(vec!["s"]);
    let sink = open(dir.path(), inner.clone(), 16 << 20, &Health::default());
    wait_direct(&sink).await;
    (dir, inner, gate, sink)
}

async fn got_at_least(inner: &ScriptSink, n: usize) -> usize {
    for _ in 0..1000 {
        if inner.got.lock().unwrap().len() >= n {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let got = inner.got.lock().unwrap().len();
    got
}

#[tokio::test]
async fn a_late_attempt_meeting_a_full_spool_does_not_deadlock() {
    let dir = tempfile::tempdir().unwrap();
    let (inner, gate) = script(vec!["b"]);
    let sink = Arc::new(
        SpoolingSink::open(
            "spooled",
            dir.path(),
            inner.clone(),
            Some(Duration::from_secs(2)),
            16 << 20,
            retry(),
            Health::default(),
        )
        .unwrap(),
    );
    wait_direct(&sink).await;
    let a = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.deliver("a", &padded(&["a1"], 1 << 20)).await })
    };
    // Source b fails fast and fills the spool while a's attempt waits.
    let mut blocked = None;
    for i in 0..40 {
        let (sink, batch) = (sink.clone(), padded(&[&format!("b{i}")], 1 << 20));
        let mut t = tokio::spawn(async move { sink.deliver("b", &batch).await });
        if tokio::time::timeout(Duration::from_millis(300), &mut t)
            .await
            .is_err()
        {
            blocked = Some(t);
            break;
        }
    }
    let blocked = blocked.expect("the spool never filled");
    // a reaches spool_after on a full spool, then the sink comes back.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    gate.send(true).unwrap();
    let done = tokio::time::timeout(Duration::from_secs(20), a).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "source a never confirmed");
    let done = tokio::time::timeout(Duration::from_secs(20), blocked).await;
    assert!(matches!(done, Ok(Ok(Ok(())))), "source b never confirmed");
    let got = inner.got.lock().unwrap().clone();
    assert_eq!(got.iter().filter(|g| *g == "a:a1").count(), 1, "{got:?}");
}

#[tokio::test]
async fn delivered_batches_in_the_newest_segment_do_not_keep_the_spool_full() {
    let (_dir, inner, gate, sink) = spool_of_16_mib().await;
    sink.deliver("s", &padded(&["x1"], 900 << 10))
        .await
        .unwrap();
    sink.deliver("s", &padded(&["x2"], 3900 << 10))
        .await
        .unwrap();
    gate.send(true).unwrap();
    assert_eq!(got_at_least(&inner, 2).await, 2);
    wait_direct(&sink).await;
    gate.send(false).unwrap();
    let sink = Arc::new(sink);
    let mut parts = Vec::new();
    for i in 0..3 {
        let sink = sink.clone();
        parts.push(tokio::spawn(async move {
            sink.deliver("s", &padded(&[&format!("y{i}")], 3900 << 10))
                .await
        }));
    }
    gate.send(true).unwrap();
    for t in parts {
        let done = tokio::time::timeout(Duration::from_secs(20), t).await;
        assert!(
            matches!(done, Ok(Ok(Ok(())))),
            "blocked on a spool holding delivered batches ({} bytes on disk)",
            sink.shared.spool.bytes()
        );
    }
}

#[tokio::test]
async fn a_batch_larger_than_the_spool_keeps_its_place_in_line() {
    let (_dir, inner, gate, sink) = spool_of_16_mib().await;
    sink.deliver("s", &events(&["first"])).await.unwrap(); // fails fast: spooled
    gate.send(true).unwrap();
    // 20 events of 1 MiB: cut into records that fit, in order.
    let ids: Vec<String> = (0..20).map(|i| format!("big{i}")).collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    sink.deliver("s", &padded(&refs, 1 << 20)).await.unwrap();
    // One event larger than half the spool: waits for it, then direct.
    sink.deliver("s", &padded(&["huge"], 9 << 20))
        .await
        .unwrap();
    got_at_least(&inner, 22).await;
    let mut want = vec!["s:first".to_string()];
    want.extend(refs.iter().map(|r| format!("s:{r}")));
    want.push("s:huge".into());
    assert_eq!(*inner.got.lock().unwrap(), want);
}

// Reopens the spool: the old instance's drainer must be able to run
// (and let go of the spool's lock) while the new one waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_empty_newest_segment_or_a_bad_position_does_not_stop_the_start() {
    let dir = tempfile::tempdir().unwrap();
    let health = Health::default();
    spool_while_down(dir.path(), &["a", "b"], &health).await;
    let spool = spool_dir(dir.path(), "spooled");
    // A crash between creating a segment and writing its header.
    std::fs::write(spool.join("00000000000000000002.spool"), b"audit").unwrap();
    // A position far past the end.
    CheckpointStore::in_dir(&spool)
        .unwrap()
        .save(POSITION, br#"{"segment":99,"offset":12}"#)
        .unwrap();
    let (inner, _gate) = GatedSink::new(true);
    let sink = open(dir.path(), inner.clone(), 64 << 20, &health);
    assert_eq!(inner.wait_for(2).await, vec!["s:a", "s:b"]);
    sink.deliver("s", &events(&["c"])).await.unwrap();
    assert_eq!(inner.wait_for(3).await, vec!["s:a", "s:b", "s:c"]);
}

// Reopens the spool: the old instance's drainer must be able to run
// (and let go of the spool's lock) while the new one waits for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_switched_back_to_block_still_delivers_its_spool_first() {
    let dir = tempfile::tempdir().unwrap();
    let health = Health::default();
    spool_while_down(dir.path(), &["a"], &health).await;
    let (inner, _gate) = GatedSink::new(true);
    let sink = SpoolingSink::open(
        "spooled",
        dir.path(),
        inner.clone(),
        None,
        64 << 20,
        retry(),
        health,
    )
    .unwrap();
    sink.deliver("s", &events(&["b"])).await.unwrap();
    assert_eq!(inner.wait_for(2).await, vec!["s:a", "s:b"]);
}
