//! The Kafka sink's own metrics (the shared ones are in `crate::metrics`).

use std::sync::LazyLock;

use prometheus::{HistogramVec, IntCounterVec, IntGaugeVec};

use crate::metrics::metrics;

pub(super) struct KafkaMetrics {
    pub(super) produced: IntCounterVec,
    pub(super) in_flight: IntGaugeVec,
    pub(super) delivery_seconds: HistogramVec,
    pub(super) rebuilds: IntCounterVec,
}

pub(super) static KAFKA_METRICS: LazyLock<KafkaMetrics> = LazyLock::new(|| {
    let m = metrics();
    KafkaMetrics {
        produced: m.counter_vec(
            "auditrelay_kafka_messages_produced_total",
            "Messages handed to the Kafka producer (resends included).",
            &["sink"],
        ),
        in_flight: m.gauge_vec(
            "auditrelay_kafka_messages_in_flight",
            "Messages awaiting a delivery report.",
            &["sink"],
        ),
        delivery_seconds: m.histogram_vec(
            "auditrelay_kafka_delivery_latency_seconds",
            "Time from producing a message to its delivery report.",
            &["sink"],
            &[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
            ],
        ),
        rebuilds: m.counter_vec(
            "auditrelay_kafka_producer_rebuilds_total",
            "Producers rebuilt after a fatal error.",
            &["sink"],
        ),
    }
});
