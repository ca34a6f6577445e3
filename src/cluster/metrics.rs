//! The cluster's metrics (registered on first use, next to their code).

crate::metrics::component_metrics! {
    pub struct ClusterMetrics in CLUSTER_METRICS {
        /// 1 for each source this instance owns now, 0 for the others.
        source_owned: gauge(
            "auditrelay_cluster_source_owned",
            "1 while this instance owns the source (runs its pipeline), else 0.",
            &["source"],
        ),
        /// Ownership changes seen by this instance, by what happened.
        leadership_changes: counter(
            "auditrelay_cluster_leadership_changes_total",
            "Ownership changes of this instance: acquired, handed_over, lost (lease or fence).",
            &["source", "change"],
        ),
        /// Checkpoint writes refused because this instance no longer owned the source.
        fenced_commits: counter(
            "auditrelay_cluster_fenced_commits_total",
            "Checkpoint writes refused because this instance no longer owned the source.",
            &["source"],
        ),
        /// 1 while the last engine request succeeded.
        engine_reachable: gauge(
            "auditrelay_cluster_engine_reachable",
            "1 while the cluster's coordination engine answers, else 0.",
            &["backend"],
        ),
    }
}

/// Creates a source's series at zero.
pub fn init_source(source: &str) {
    let m = &*CLUSTER_METRICS;
    m.source_owned.with_label_values(&[source]).set(0);
    m.fenced_commits.with_label_values(&[source]);
    for change in ["acquired", "handed_over", "lost"] {
        m.leadership_changes.with_label_values(&[source, change]);
    }
}

/// Records whether this instance owns `source` now and, when ownership
/// changed, how (`acquired`, `handed_over`, `lost`).
pub fn owned(source: &str, owned: bool, change: Option<&str>) {
    let m = &*CLUSTER_METRICS;
    m.source_owned
        .with_label_values(&[source])
        .set(i64::from(owned));
    if let Some(change) = change {
        m.leadership_changes
            .with_label_values(&[source, change])
            .inc();
    }
}
