//! What a coordination engine must offer; etcd and Kubernetes Leases
//! implement it. The conformance tests run against it.

use async_trait::async_trait;
use std::collections::BTreeMap;

/// Proof of owning a source, checked by the engine at every checkpoint
/// write (etcd: the owner key's create revision; Kubernetes: the Lease's
/// `leaseTransitions` at acquisition, with its `resourceVersion` tracked).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    pub token: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// The engine did not answer (in time): nothing is known.
    #[error("cluster engine unreachable: {0}")]
    Unreachable(String),
    /// This instance's lease is gone: every ownership went with it.
    #[error("the lease of this instance expired")]
    Expired,
    /// The write was refused because this instance no longer owns the source.
    #[error("refused: this instance no longer owns the source (fenced)")]
    Fenced,
}

/// The engine's state of a cluster at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct View {
    /// Live members (their leases are current).
    pub members: Vec<String>,
    /// Owned sources and their owners.
    pub owners: BTreeMap<String, String>,
    /// Stored checkpoints.
    pub checkpoints: BTreeMap<String, Vec<u8>>,
}

#[async_trait]
pub trait Engine: Send + Sync + 'static {
    /// Becomes a member with a fresh lease of `ttl` (after an expiry too).
    async fn join(&self) -> Result<(), EngineError>;
    /// Renews the lease once.
    async fn renew(&self) -> Result<(), EngineError>;
    /// Members, owners and checkpoints now.
    async fn view(&self) -> Result<View, EngineError>;
    /// Takes `source` if nobody owns it; `None` when someone does. A source
    /// this instance already owns under its current lease (an acquisition
    /// whose answer was lost) is taken too, with that ownership's fence.
    async fn acquire(&self, source: &str) -> Result<Option<Fence>, EngineError>;
    /// Gives `source` up, if still owned with this fence.
    async fn release(&self, source: &str, fence: &Fence) -> Result<(), EngineError>;
    async fn load(&self, source: &str) -> Result<Option<Vec<u8>>, EngineError>;
    /// Writes the checkpoint only if `fence` still owns `source`.
    async fn save(&self, source: &str, fence: &Fence, state: &[u8]) -> Result<(), EngineError>;
    /// Removes the checkpoint of `source` (an operator's reset).
    async fn reset(&self, source: &str) -> Result<bool, EngineError>;
    /// Ends the membership now (its ownerships go with it).
    async fn leave(&self);
    /// Where `source`'s checkpoint lives, for messages.
    fn describe(&self, source: &str) -> String;
}
