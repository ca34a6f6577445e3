//! The syslog sink's own metrics, labelled by sink.

use std::sync::LazyLock;

use prometheus::{IntCounterVec, Opts};

use crate::metrics::metrics;

/// Sink-specific metrics, labelled by sink.
pub(super) struct SyslogMetrics {
    pub(super) frames: IntCounterVec,
    pub(super) bytes: IntCounterVec,
    pub(super) reconnects: IntCounterVec,
    pub(super) truncated: IntCounterVec,
    pub(super) refused: IntCounterVec,
}

pub(super) static SYSLOG_METRICS: LazyLock<SyslogMetrics> = LazyLock::new(|| {
    let c = |name: &str, help: &str| {
        metrics().register(
            IntCounterVec::new(
                Opts::new(format!("auditrelay_syslog_{name}"), help),
                &["sink"],
            )
            .expect("metric definition is valid"),
        )
    };
    SyslogMetrics {
        frames: c(
            "frames_sent_total",
            "Syslog messages confirmed (written and acknowledged as the transport allows).",
        ),
        bytes: c(
            "bytes_sent_total",
            "Bytes of confirmed syslog frames, framing included.",
        ),
        reconnects: c(
            "reconnects_total",
            "Syslog connections opened again after a failure or a close by the receiver.",
        ),
        truncated: c(
            "truncated_total",
            "Syslog messages whose body was cut to max_message_size.",
        ),
        refused: c(
            "relp_refused_total",
            "RELP messages the receiver answered with a non-200 rsp.",
        ),
    }
});
