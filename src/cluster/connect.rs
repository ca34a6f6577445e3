//! Picks the engine a `[cluster]` section names.

use std::sync::Arc;

use super::config::{ClusterBackend, ClusterConfig};
use super::engine::Engine;

/// Connects to the engine of `cfg` (lazily: an engine down at startup is
/// retried by the membership loop, not a startup error).
pub async fn connect(cfg: &ClusterConfig) -> anyhow::Result<Arc<dyn Engine>> {
    match cfg.backend {
        ClusterBackend::Etcd => Ok(Arc::new(super::etcd::EtcdEngine::connect(cfg).await?)),
        ClusterBackend::Kubernetes => {
            Ok(Arc::new(super::kubernetes::KubernetesEngine::connect(cfg)?))
        }
    }
}
