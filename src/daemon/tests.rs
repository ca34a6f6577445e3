//! A pipeline that dies must reach the daemon's loop, never end silently.

use std::time::Duration;

use async_trait::async_trait;

use super::*;
use crate::checkpoint::CheckpointStore;
use crate::config_file;
use crate::event::Batch;
use crate::pipeline::SourcePipeline;
use crate::source::Source;

/// A source with a bug: its first fetch panics.
struct PanickingSource;

#[async_trait]
impl Source for PanickingSource {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        panic!("source bug while parsing a page");
    }
}

#[tokio::test]
async fn a_pipeline_that_panics_is_reported_as_failed() {
    let dir = tempfile::tempdir().expect("tempdir");
    let config = config_file::load_str(&format!(
        "state_dir = \"{}\"\n[sources.s]\ntype = \"demo\"\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"s\"]\n",
        dir.path().display()
    ))
    .expect("valid config");
    let store = CheckpointStore::open(dir.path()).expect("checkpoint dir");
    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel();
    let mut running = Running {
        config,
        health: Health::default(),
        store: store.clone(),
        sinks: BTreeMap::new(),
        pipelines: BTreeMap::new(),
        not_running: BTreeSet::new(),
        generation: 0,
        finished_tx,
    };
    running.spawn(SourcePipeline {
        name: "s".into(),
        source: Box::new(PanickingSource),
        routes: Vec::new(),
        store,
        max_in_flight: 1,
        max_in_flight_bytes: 1 << 20,
        retry: Default::default(),
    });
    let finished = tokio::time::timeout(Duration::from_secs(10), finished_rx.recv())
        .await
        .expect("a dead pipeline is reported")
        .expect("channel open");
    assert_eq!(finished.name, "s");
    assert!(running.finished(&finished.name, finished.generation));
    let why = finished
        .failure
        .expect("reported as a failure, not as finished");
    assert!(why.contains("source bug while parsing a page"), "{why}");
}

/// A config with one demo source feeding a file sink behind its spool.
fn spooled_config(dir: &std::path::Path, rotate_bytes: u64) -> Config {
    config_file::load_str(&format!(
        "state_dir = \"{0}\"\n[sources.s]\ntype = \"demo\"\n\
         [sinks.out]\ntype = \"file\"\npath = \"{0}/out.ndjson\"\nrotate_bytes = {rotate_bytes}\n\
         inputs = [\"s\"]\non_unavailable = \"spool\"\n",
        dir.display()
    ))
    .expect("valid config")
}

// The reload runs on the runtime's only thread: the spool of the changed
// sink is reopened while the old instance's drainer still holds it, and that
// drainer can only let go if the reload does not block this thread.
#[tokio::test(flavor = "current_thread")]
async fn a_reload_replacing_a_spooled_sink_does_not_block_the_runtime() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path()).expect("checkpoint dir");
    let (finished_tx, _finished_rx) = mpsc::unbounded_channel();
    let mut running = Running {
        config: spooled_config(dir.path(), 1 << 20),
        health: Health::default(),
        store,
        sinks: BTreeMap::new(),
        pipelines: BTreeMap::new(),
        not_running: BTreeSet::new(),
        generation: 0,
        finished_tx,
    };
    let first = spooled_config(dir.path(), 1 << 20);
    running
        .start(&first, BTreeMap::new(), &["s".to_string()])
        .await
        .expect("starts");
    let started = Instant::now();
    let applied = running.apply(spooled_config(dir.path(), 2 << 20)).await;
    let took = started.elapsed();
    assert!(applied, "the reload is applied");
    assert!(
        took < Duration::from_secs(5),
        "the reload waited {took:?} for the old spool instance"
    );
    assert!(running.pipelines.contains_key("s"));
    let all: Vec<String> = running.pipelines.keys().cloned().collect();
    running.drain(&all, Duration::from_secs(5)).await;
}
