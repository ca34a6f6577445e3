//! The cluster's metrics (registered on first use, next to their code).

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGaugeVec};

use crate::metrics::metrics;

/// 1 for each source this instance owns now, 0 for the others.
pub static SOURCE_OWNED: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics().gauge_vec(
        "auditrelay_cluster_source_owned",
        "1 while this instance owns the source (runs its pipeline), else 0.",
        &["source"],
    )
});

/// Ownership changes seen by this instance, by what happened.
pub static LEADERSHIP_CHANGES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics().counter_vec(
        "auditrelay_cluster_leadership_changes_total",
        "Ownership changes of this instance: acquired, handed_over, lost (lease or fence).",
        &["source", "change"],
    )
});

/// Checkpoint writes refused because this instance no longer owned the source.
pub static FENCED_COMMITS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics().counter_vec(
        "auditrelay_cluster_fenced_commits_total",
        "Checkpoint writes refused because this instance no longer owned the source.",
        &["source"],
    )
});

/// 1 while the last engine request succeeded.
pub static ENGINE_REACHABLE: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics().gauge_vec(
        "auditrelay_cluster_engine_reachable",
        "1 while the cluster's coordination engine answers, else 0.",
        &["backend"],
    )
});

/// Creates a source's series at zero.
pub fn init_source(source: &str) {
    SOURCE_OWNED.with_label_values(&[source]).set(0);
    FENCED_COMMITS.with_label_values(&[source]);
    for change in ["acquired", "handed_over", "lost"] {
        LEADERSHIP_CHANGES.with_label_values(&[source, change]);
    }
}
