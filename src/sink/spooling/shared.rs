//! What the spooling sink, its appends and its drainer share: the queue on
//! disk and the state that orders direct and spooled deliveries.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Mutex, MutexGuard};

use tokio::sync::{watch, Notify};

use super::metrics::SPOOL_METRICS;
use crate::disk_queue::DiskQueue;
use crate::health::Health;

/// Name of the checkpoint that holds the delivered position.
pub(super) const POSITION: &str = "delivered";

pub(super) struct Shared {
    pub(super) name: String,
    pub(super) spool: DiskQueue,
    pub(super) state: Mutex<State>,
    /// Wakes the drainer: something was appended, or a late direct
    /// delivery finished.
    pub(super) changed: Notify,
    /// Wakes appenders waiting for room.
    pub(super) space: Notify,
    /// Wakes those waiting for the spool to be empty.
    pub(super) emptied: Notify,
    pub(super) health: Health,
    pub(super) max_bytes: u64,
    pub(super) next_id: AtomicU64,
}

#[derive(Default)]
pub(super) struct State {
    /// The spool may hold batches the sink has not confirmed; while it does,
    /// new batches queue behind them.
    pub(super) backlog: bool,
    /// Appends under way (they hold `backlog` up).
    pub(super) appending: usize,
    /// Spooled batches whose direct delivery outlived `spool_after` and may
    /// still get through: the drainer waits for the outcome (true = it did)
    /// before sending such a batch itself.
    pub(super) late: HashMap<u64, watch::Receiver<Option<bool>>>,
}

impl Shared {
    pub(super) fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) fn health_key(&self) -> String {
        format!("sink.{}.spool", self.name)
    }

    pub(super) fn update_bytes(&self) {
        SPOOL_METRICS
            .bytes
            .with_label_values(&[&self.name])
            .set(i64::try_from(self.spool.bytes()).unwrap_or(i64::MAX));
    }
}
