//! Several instances, one config: each source has one owner at a time,
//! chosen on a coordination engine (etcd or Kubernetes Leases), and its checkpoint lives in the
//! engine, written only while the writer still owns the source (fencing).
//!
//! ```text
//!  instance ── lease (renewed every lease_ttl/3) ── members/<id>
//!           ── owners/<source> (on the same lease: dies with it)
//!           ── checkpoints/<source>: written in a transaction that
//!              compares owners/<source> (value + create revision)
//! ```
//!
//! An instance that cannot renew its lease before `lease_ttl − lease_ttl/4`
//! stops its pipelines by itself, before the engine lets another instance
//! take them; an instance that could not even notice (paused, partitioned)
//! is fenced: its late checkpoint write is rejected by the engine.

mod assign;
mod config;
mod connect;
mod engine;
mod etcd;
mod kubernetes;
mod lease_api;
mod manager;
mod metrics;
mod store;

use std::collections::BTreeMap;

use figment::Figment;

pub use assign::{rank, Decision};
pub use config::{host_name, ClusterBackend, ClusterConfig, EtcdConfig, KubernetesConfig};
pub use connect::connect;
pub use engine::{Engine, EngineError, Fence, View};
pub use manager::{Change, Cluster};
pub use store::EngineCheckpoints;

use crate::config::{extract_section, Problems};
use crate::sink::{OnUnavailable, SinkConfig};
use crate::source::SourceConfig;

/// Reads and validates `[cluster]` when the file has one.
pub fn read_config(fig: &Figment, present: bool, problems: &mut Problems) -> Option<ClusterConfig> {
    if !present {
        return None;
    }
    match extract_section::<ClusterConfig>(fig, "cluster", &[]) {
        Ok(cfg) => {
            cfg.validate("cluster", problems);
            Some(cfg)
        }
        Err(list) => {
            problems.extend(list);
            None
        }
    }
}

/// State a host keeps on its own disk cannot follow a source to another
/// instance: a checkpoint in the engine would pass batches only that host
/// holds. So these combinations are refused rather than half-supported.
pub fn check_shareable(
    sources: &BTreeMap<String, SourceConfig>,
    sinks: &BTreeMap<String, SinkConfig>,
    problems: &mut Problems,
) {
    for (name, sink) in sinks {
        if sink.common.on_unavailable == OnUnavailable::Spool {
            problems.push(
                format!("sinks.{name}.on_unavailable"),
                "\"spool\" keeps batches on this host only, which a shared checkpoint would pass; \
                 use \"block\" with [cluster] (the source pauses; the standby resumes from the \
                 checkpoint)",
            );
        }
    }
    for (name, source) in sources {
        match source {
            SourceConfig::WebhookIn(_) => problems.push(
                format!("sources.{name}.type"),
                "webhook_in receives pushes into a spool on this host; it cannot move to \
                 another instance: run it outside [cluster] (one instance per receiver address)",
            ),
            SourceConfig::Quickztna(q) if q.journal => problems.push(
                format!("sources.{name}.journal"),
                "the journal lives on this host; with [cluster] set journal = false",
            ),
            _ => {}
        }
    }
}
