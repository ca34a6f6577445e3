//! The Kafka sink's own metrics (the shared ones are in `crate::metrics`).

crate::metrics::component_metrics! {
    pub(super) struct KafkaMetrics in KAFKA_METRICS {
        produced: counter(
            "auditrelay_kafka_messages_produced_total",
            "Messages handed to the Kafka producer (resends included).",
            &["sink"],
        ),
        in_flight: gauge(
            "auditrelay_kafka_messages_in_flight",
            "Messages awaiting a delivery report.",
            &["sink"],
        ),
        delivery_seconds: histogram(
            "auditrelay_kafka_delivery_latency_seconds",
            "Time from producing a message to its delivery report.",
            &["sink"],
            &[
                0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0,
            ],
        ),
        rebuilds: counter(
            "auditrelay_kafka_producer_rebuilds_total",
            "Producers rebuilt after a fatal error.",
            &["sink"],
        ),
    }
}
