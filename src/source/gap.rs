//! Data gaps: time ranges a source knows it could not read and never will
//! (an API that answers with its newest N entries and cannot be asked for
//! the older ones). A gap is never silent: an error log line with the range,
//! `auditrelay_source_gaps_total`, the last gap's length in
//! `auditrelay_source_gap_seconds`, and a `/readyz` component
//! `source.NAME.data_gap` that stays ready (a gap is history, not a state
//! to recover from: readiness must not take down the daemon's listeners)
//! but names the last range for whoever looks.

use chrono::{DateTime, SecondsFormat, Utc};
use tracing::error;

use crate::health::Health;
use crate::metrics::metrics;

/// The `/readyz` component of a source's last gap.
pub fn health_key(source: &str) -> String {
    format!("source.{source}.data_gap")
}

/// Reports events between `from` and `to` as possibly lost; `why` says how
/// the source knows and what would have prevented it.
pub fn report(health: &Health, source: &str, from: DateTime<Utc>, to: DateTime<Utc>, why: &str) {
    let seconds = (to - from).num_milliseconds().max(0) as f64 / 1000.0;
    let (from, to) = (
        from.to_rfc3339_opts(SecondsFormat::Millis, true),
        to.to_rfc3339_opts(SecondsFormat::Millis, true),
    );
    metrics().source_gaps.with_label_values(&[source]).inc();
    metrics()
        .source_gap_seconds
        .with_label_values(&[source])
        .set(seconds);
    error!(source, gap_from = %from, gap_to = %to, gap_seconds = seconds, "data gap: events created in this range may be lost; {why}");
    health.note(
        &health_key(source),
        format!(
            "last data gap: events created from {from} to {to} ({seconds} s) may be lost; {why}"
        ),
    );
}
