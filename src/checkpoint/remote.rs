//! A checkpoint backend other than local files (the cluster's engine):
//! the store keeps its API and hands loads and saves to it.

use std::io;

/// Where a clustered daemon keeps its source checkpoints. Calls block: the
/// store's callers already run them off the async workers.
pub trait RemoteCheckpoints: Send + Sync + std::fmt::Debug {
    fn load(&self, source: &str) -> Result<Option<Vec<u8>>, String>;
    /// Fails (and stops the pipeline through the cluster) when this instance
    /// no longer owns `source`.
    fn save(&self, source: &str, state: &[u8]) -> io::Result<()>;
    fn reset(&self, source: &str) -> io::Result<bool>;
    /// Where `source`'s checkpoint lives, for messages.
    fn describe(&self, source: &str) -> String;
}
