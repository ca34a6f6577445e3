//! Source checkpoints in the engine, for [`CheckpointStore`]: a save is
//! accepted only while this instance holds the source (locally, then by the
//! engine's fenced transaction); a refused save is counted and reported to
//! the membership loop, which stops that source's pipeline.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::sync::{Arc, Mutex};

use tokio::runtime::Handle;
use tokio::sync::mpsc;

use super::engine::{Engine, EngineError, Fence};
use super::metrics::CLUSTER_METRICS;
use crate::checkpoint::RemoteCheckpoints;

/// The sources this instance owns now, with their fences.
pub type Holdings = Arc<Mutex<BTreeMap<String, Fence>>>;

pub struct EngineCheckpoints {
    engine: Arc<dyn Engine>,
    holdings: Holdings,
    /// Ownerships (source, fence) whose save was fenced, for the
    /// membership loop.
    fenced: mpsc::UnboundedSender<(String, Fence)>,
    runtime: Handle,
}

impl std::fmt::Debug for EngineCheckpoints {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineCheckpoints").finish_non_exhaustive()
    }
}

impl EngineCheckpoints {
    pub fn new(
        engine: Arc<dyn Engine>,
        holdings: Holdings,
        fenced: mpsc::UnboundedSender<(String, Fence)>,
        runtime: Handle,
    ) -> Self {
        EngineCheckpoints {
            engine,
            holdings,
            fenced,
            runtime,
        }
    }

    /// Runs an engine call to its end from synchronous code: a blocking-pool
    /// thread (the committer) or a multi-threaded runtime's worker.
    fn block<F: Future>(&self, f: F) -> F::Output {
        tokio::task::block_in_place(|| self.runtime.block_on(f))
    }

    /// `fence`: the ownership the write was made under, lost now. A write
    /// of an older ownership (a late one, after the source was lost and
    /// taken again) must not end the current one: the loop compares.
    fn refuse(&self, source: &str, fence: Option<Fence>, why: &str) -> io::Error {
        CLUSTER_METRICS
            .fenced_commits
            .with_label_values(&[source])
            .inc();
        if let Some(fence) = fence {
            let _ = self.fenced.send((source.to_string(), fence));
        }
        tracing::error!(source, why, "checkpoint write refused: this instance no longer owns the source; stopping its pipeline");
        io::Error::other(format!(
            "checkpoint of source {source} not written: this instance no longer owns it ({why})"
        ))
    }

    fn fence(&self, source: &str) -> Option<Fence> {
        self.holdings.lock().ok()?.get(source).cloned()
    }
}

impl RemoteCheckpoints for EngineCheckpoints {
    fn load(&self, source: &str) -> Result<Option<Vec<u8>>, String> {
        self.block(self.engine.load(source))
            .map_err(|e| e.to_string())
    }

    fn save(&self, source: &str, state: &[u8]) -> io::Result<()> {
        let Some(fence) = self.fence(source) else {
            return Err(self.refuse(source, None, "lease expired or source handed over"));
        };
        match self.block(self.engine.save(source, &fence, state)) {
            Ok(()) => Ok(()),
            Err(EngineError::Fenced) => {
                Err(self.refuse(source, Some(fence), "the engine rejected the write"))
            }
            Err(e) => Err(io::Error::other(e.to_string())),
        }
    }

    fn reset(&self, source: &str) -> io::Result<bool> {
        self.block(self.engine.reset(source))
            .map_err(|e| io::Error::other(e.to_string()))
    }

    fn describe(&self, source: &str) -> String {
        self.engine.describe(source)
    }
}
