//! A pipeline that dies must reach the daemon's loop, never end silently.

use async_trait::async_trait;

use super::*;
use crate::event::Batch;
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
    let config = config::load_str(&format!(
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
