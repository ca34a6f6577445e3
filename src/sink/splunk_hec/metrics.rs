//! The HEC sink's own metrics (the shared ones are in `crate::metrics`).

crate::metrics::component_metrics! {
    pub(super) struct HecMetrics in HEC_METRICS {
        requests: counter(
            "auditrelay_hec_requests_total",
            "Splunk HEC requests by endpoint (event, ack, health) and HEC code \
                     (http_<status> when the answer has none, network when there was no answer).",
            &["sink", "endpoint", "code"],
        ),
        acks_pending: gauge(
            "auditrelay_hec_acks_pending",
            "HEC requests accepted and waiting for their indexer acknowledgment.",
            &["sink"],
        ),
        ack_latency: histogram(
            "auditrelay_hec_ack_latency_seconds",
            "Time from HEC accepting a request to its ack reading true.",
            &["sink"],
            &[0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0],
        ),
        ack_timeouts: counter(
            "auditrelay_hec_ack_timeouts_total",
            "HEC requests not acknowledged within ack_timeout, sent again.",
            &["sink"],
        ),
        acks_expired: counter(
            "auditrelay_hec_acks_expired_total",
            "HEC ack ids given up on: not true within twice ack_timeout, or issued again after an indexer restart.",
            &["sink"],
        ),
        oldest_pending_ack_age: float_gauge(
            "auditrelay_hec_oldest_pending_ack_age_seconds",
            "Age of the oldest HEC ack id still asked about (0 when none is), set at every ack poll.",
            &["sink"],
        ),
    }
}
