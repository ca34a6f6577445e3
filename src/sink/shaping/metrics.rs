//! The metrics of event shaping (`auditrelay_ocsf_*`).

crate::metrics::component_metrics! {
    pub(super) struct ShapingMetrics in SHAPING_METRICS {
        ocsf_events: counter(
            "auditrelay_ocsf_events_total",
            "Events a sink with schema = \"ocsf\" sent, by OCSF class (class=\"base_event\": no mapping recognised the event; it went out as a Base Event with the original kept).",
            &["sink", "source", "class"],
        ),
    }
}
