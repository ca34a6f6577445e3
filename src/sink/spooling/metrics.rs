//! The metrics of sink spools (`auditrelay_sink_spool_*`), one series per sink.

crate::metrics::component_metrics! {
    pub(super) struct SpoolMetrics in SPOOL_METRICS {
        bytes: gauge(
            "auditrelay_sink_spool_bytes",
            "Bytes of a sink's spool segments on disk: batches not yet confirmed, plus delivered ones until their segment (at most 16 MiB) is removed.",
            &["sink"],
        ),
        full: gauge(
            "auditrelay_sink_spool_full",
            "1 while a sink's spool is at spool_max_bytes and its sources wait.",
            &["sink"],
        ),
        spooled: counter(
            "auditrelay_sink_spool_batches_written_total",
            "Batches written to a sink's spool because the sink did not confirm in time.",
            &["sink"],
        ),
        drained: counter(
            "auditrelay_sink_spool_batches_delivered_total",
            "Spooled batches the sink confirmed.",
            &["sink"],
        ),
        corrupt: counter(
            "auditrelay_sink_spool_corrupt_total",
            "Damaged spool regions or records skipped (logged with file and offset).",
            &["sink"],
        ),
    }
}
