//! The metrics of sink spools (`auditrelay_sink_spool_*`), one series per sink.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, IntGaugeVec};

use crate::metrics::metrics;

pub(super) struct SpoolMetrics {
    pub(super) bytes: IntGaugeVec,
    pub(super) full: IntGaugeVec,
    pub(super) spooled: IntCounterVec,
    pub(super) drained: IntCounterVec,
    pub(super) corrupt: IntCounterVec,
}

pub(super) static SPOOL_METRICS: LazyLock<SpoolMetrics> = LazyLock::new(|| {
    let m = metrics();
    let name = |short: &str| format!("auditrelay_sink_spool_{short}");
    let gauge = |short: &str, help: &str| m.gauge_vec(&name(short), help, &["sink"]);
    let counter = |short: &str, help: &str| m.counter_vec(&name(short), help, &["sink"]);
    SpoolMetrics {
        bytes: gauge(
            "bytes",
            "Bytes of a sink's spool segments on disk: batches not yet confirmed, plus delivered ones until their segment (at most 16 MiB) is removed.",
        ),
        full: gauge(
            "full",
            "1 while a sink's spool is at spool_max_bytes and its sources wait.",
        ),
        spooled: counter(
            "batches_written_total",
            "Batches written to a sink's spool because the sink did not confirm in time.",
        ),
        drained: counter(
            "batches_delivered_total",
            "Spooled batches the sink confirmed.",
        ),
        corrupt: counter(
            "corrupt_total",
            "Damaged spool regions or records skipped (logged with file and offset).",
        ),
    }
});
