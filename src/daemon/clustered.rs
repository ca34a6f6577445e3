//! The daemon under `[cluster]`: a source's pipeline runs only while this
//! instance owns the source; the membership loop says when.

use std::sync::Arc;
use std::time::Duration;

use tracing::{error, info, warn};

use super::build::build_pipeline;
use super::running::Running;
use crate::cluster::{Change, Cluster};

impl Running {
    /// Starts, stops or hands over a pipeline as the cluster decided.
    pub(super) async fn follow_cluster(&mut self, cluster: &Arc<Cluster>, change: Change) {
        match change {
            Change::Acquired(name) => {
                if self.pipelines.contains_key(&name) {
                    // A stop not yet seen: never two pipelines of one source.
                    self.drain(std::slice::from_ref(&name), Duration::ZERO)
                        .await;
                }
                if !cluster.owns(&name) {
                    return;
                }
                match build_pipeline(&self.config, &name, &self.sinks, &self.store, &self.health) {
                    Ok(p) => self.spawn(p),
                    Err(e) => {
                        // Its checkpoint could not be read (engine down, say):
                        // give the source back rather than start from nothing.
                        error!(source = %name, error = %format!("{e:#}"), "cannot start the pipeline of an acquired source; giving it back");
                        cluster.handed_over(&name).await;
                    }
                }
            }
            Change::Lost(name) => {
                // Not a drain: its commits are refused already, and whatever
                // it still sends the new owner sends again.
                let aborted = self
                    .drain(std::slice::from_ref(&name), Duration::ZERO)
                    .await;
                if !aborted.is_empty() {
                    warn!(source = %name, "pipeline stopped: this instance no longer owns the source");
                }
            }
            Change::Handover(name) => {
                let timeout = self.config.shutdown_timeout;
                let aborted = self.drain(std::slice::from_ref(&name), timeout).await;
                if !aborted.is_empty() {
                    warn!(source = %name, "shutdown_timeout reached while handing over; the new owner sends the unconfirmed batches again");
                }
                cluster.handed_over(&name).await;
                info!(source = %name, "pipeline handed over");
            }
        }
    }
}
