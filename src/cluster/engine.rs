//! What a coordination engine must offer; etcd and Kubernetes Leases
//! implement it. The conformance tests run against it.

use async_trait::async_trait;
use std::collections::BTreeMap;
use std::time::Duration;

use super::config::{request_timeout, ClusterConfig};

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

/// This instance as an engine presents it: its name among the members and
/// how long its leases last unrenewed.
#[derive(Clone, Debug)]
pub struct Instance {
    pub id: String,
    pub ttl: Duration,
}

impl Instance {
    pub fn of(cfg: &ClusterConfig) -> Self {
        Instance {
            id: cfg.instance_id(),
            ttl: cfg.lease_ttl,
        }
    }

    /// The lease duration as etcd and Lease objects take it: whole
    /// seconds, at least one.
    pub fn lease_secs(&self) -> i64 {
        self.ttl.as_secs().max(1) as i64
    }

    /// See [`request_timeout`].
    pub fn request_timeout(&self) -> Duration {
        request_timeout(self.ttl)
    }
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
