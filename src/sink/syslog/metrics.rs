//! The syslog sink's own metrics, labelled by sink.

crate::metrics::component_metrics! {
    /// Sink-specific metrics, labelled by sink.
    pub(super) struct SyslogMetrics in SYSLOG_METRICS {
        frames: counter(
            "auditrelay_syslog_frames_sent_total",
            "Syslog messages confirmed (written and acknowledged as the transport allows).",
            &["sink"],
        ),
        bytes: counter(
            "auditrelay_syslog_bytes_sent_total",
            "Bytes of confirmed syslog frames, framing included.",
            &["sink"],
        ),
        reconnects: counter(
            "auditrelay_syslog_reconnects_total",
            "Syslog connections opened again after a failure or a close by the receiver.",
            &["sink"],
        ),
        truncated: counter(
            "auditrelay_syslog_truncated_total",
            "Syslog messages whose body was cut to max_message_size.",
            &["sink"],
        ),
        restart_window: counter(
            "auditrelay_syslog_restart_window_bytes_total",
            "Bytes of frames in the replay windows of earlier runs found at start: resent, or skipped because their connection closed cleanly (the receiver read them).",
            &["sink", "outcome"],
        ),
        refused: counter(
            "auditrelay_syslog_relp_refused_total",
            "RELP messages the receiver answered with a non-200 rsp.",
            &["sink"],
        ),
    }
}
