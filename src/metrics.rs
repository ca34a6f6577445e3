//! Prometheus metrics (SPEC §5), one registry for the whole process.
//!
//! Labels carry component names and outcomes only, never URLs with query
//! strings, tokens or event content.

use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

use chrono::{DateTime, Utc};
use prometheus::{
    Encoder, Histogram, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts,
    Registry, TextEncoder,
};

pub struct Metrics {
    registry: Registry,
    pub events_fetched: IntCounterVec,
    pub source_duplicates: IntCounterVec,
    pub events_deduplicated: IntCounterVec,
    /// Read but not delivered, by `reason` (see docs/sources.md).
    pub events_dropped: IntCounterVec,
    pub source_requests: IntCounterVec,
    pub source_retries: IntCounterVec,
    pub rate_limit_waits: IntCounterVec,
    pub token_restarts: IntCounterVec,
    /// Offset pages that did not hold the last entry of the page before.
    pub offset_shifts: IntCounterVec,
    pub source_request_seconds: HistogramVec,
    /// Data gaps a source reported (see `source::gap`).
    pub source_gaps: IntCounterVec,
    pub source_gap_seconds: prometheus::GaugeVec,
    pub events_delivered: IntCounterVec,
    pub events_failed: IntCounterVec,
    pub events_dead_lettered: IntCounterVec,
    pub events_truncated: IntCounterVec,
    pub sink_requests: IntCounterVec,
    pub sink_retries: IntCounterVec,
    pub sink_batch_seconds: HistogramVec,
    pub sink_panics: IntCounterVec,
    pub pipeline_failures: IntCounterVec,
    pub commit_latency_seconds: HistogramVec,
    pub checkpoint_writes: IntCounterVec,
    pub checkpoint_lag_seconds: prometheus::GaugeVec,
    pub in_flight_batches: IntGaugeVec,
    pub build_info: IntGaugeVec,
    pub ready: IntGauge,
    pub config_reloads: IntCounterVec,
    pub config_last_reload_successful: IntGauge,
    pub config_last_reload_success_time: prometheus::Gauge,
    /// Events a refetched batch did not send to a sink that had confirmed
    /// them before a restart (the progress log): duplicates avoided.
    pub events_skipped_confirmed: IntCounterVec,
    /// Events a sink reported pending at a crash (HEC: awaiting their ack)
    /// whose confirmation the restart obtained (not sent again).
    pub events_confirmed_after_restart: IntCounterVec,
    /// Events a sink had sent but not had confirmed at a crash that go to
    /// it again: possible duplicates, counted where the sink told.
    pub events_resent_after_restart: IntCounterVec,
    committed_times: Mutex<HashMap<String, DateTime<Utc>>>,
}

/// What a metric definition that fails to build is: a bug in its literal.
const VALID: &str = "metric definition is valid";

fn counter(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    let c = IntCounterVec::new(Opts::new(format!("auditrelay_{name}"), help), labels)
        .expect("metric definition is valid");
    reg.register(Box::new(c.clone()))
        .expect("metric registered once");
    c
}

fn histogram(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> HistogramVec {
    let buckets = vec![
        0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    ];
    let h = HistogramVec::new(
        HistogramOpts::new(format!("auditrelay_{name}"), help).buckets(buckets),
        labels,
    )
    .expect("metric definition is valid");
    reg.register(Box::new(h.clone()))
        .expect("metric registered once");
    h
}

fn gauge(reg: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    let g = IntGaugeVec::new(Opts::new(format!("auditrelay_{name}"), help), labels)
        .expect("metric definition is valid");
    reg.register(Box::new(g.clone()))
        .expect("metric registered once");
    g
}

impl Metrics {
    fn new() -> Self {
        let r = Registry::new();
        let lag = prometheus::GaugeVec::new(
            Opts::new(
                "auditrelay_checkpoint_lag_seconds",
                "Now minus the newest event time in the committed checkpoint.",
            ),
            &["source"],
        )
        .expect("metric definition is valid");
        r.register(Box::new(lag.clone()))
            .expect("metric registered once");
        let gap_seconds = prometheus::GaugeVec::new(
            Opts::new(
                "auditrelay_source_gap_seconds",
                "Length of the last data gap of a source, in seconds (0 when it never had one).",
            ),
            &["source"],
        )
        .expect("metric definition is valid");
        r.register(Box::new(gap_seconds.clone()))
            .expect("metric registered once");
        let ready = IntGauge::new("auditrelay_ready", "1 when /readyz answers ready, else 0.")
            .expect("metric definition is valid");
        r.register(Box::new(ready.clone()))
            .expect("metric registered once");
        let reload_ok = IntGauge::new(
            "auditrelay_config_last_reload_successful",
            "1 when the last config reload (SIGHUP) was applied, 0 when it was rejected or failed.",
        )
        .expect("metric definition is valid");
        r.register(Box::new(reload_ok.clone()))
            .expect("metric registered once");
        let reload_time = prometheus::Gauge::new(
            "auditrelay_config_last_reload_success_timestamp_seconds",
            "Unix time of the last config load that was applied (startup or SIGHUP).",
        )
        .expect("metric definition is valid");
        r.register(Box::new(reload_time.clone()))
            .expect("metric registered once");
        let m = Metrics {
            events_fetched: counter(&r, "events_fetched_total", "Events read from a source.", &["source"]),
            source_duplicates: counter(
                &r,
                "source_duplicate_events_total",
                "Events whose id the source had already returned recently (passed through: at least once).",
                &["source"],
            ),
            events_deduplicated: counter(
                &r,
                "events_deduplicated_total",
                "Events dropped after a cursor restart because they were delivered before.",
                &["source"],
            ),
            events_dropped: counter(
                &r,
                "source_events_dropped_total",
                "Events a source read but did not deliver, by reason: before_window (older than the window asked for), after_window (newer than a backfill range).",
                &["source", "reason"],
            ),
            offset_shifts: counter(
                &r,
                "source_offset_shifts_total",
                "Offset pages that did not hold the last entry of the page before (entries deleted or purged under the cursor, or an insert burst); the walk restarts from the first page of its window.",
                &["source"],
            ),
            source_requests: counter(&r, "source_requests_total", "Requests to a source API by outcome.", &["source", "outcome"]),
            source_retries: counter(&r, "source_retries_total", "Source requests retried after a transient failure.", &["source"]),
            rate_limit_waits: counter(&r, "rate_limit_waits_total", "ResourceExhausted / 429 answers that paused a source.", &["source"]),
            token_restarts: counter(&r, "source_cursor_restarts_total", "Page tokens rejected by the source, followed by a restart from the newest event time minus the overlap.", &["source"]),
            source_request_seconds: histogram(&r, "source_request_duration_seconds", "Duration of source API requests.", &["source"]),
            source_gaps: counter(
                &r,
                "source_gaps_total",
                "Time ranges a source could not read (the API cut its answer and cannot be asked for the older entries): events there may be lost. The log line \"data gap\" names each range.",
                &["source"],
            ),
            source_gap_seconds: gap_seconds,
            events_delivered: counter(&r, "events_delivered_total", "Events confirmed by a sink.", &["sink", "source"]),
            events_failed: counter(&r, "events_failed_total", "Events in a delivery attempt that failed and will be retried.", &["sink", "source"]),
            events_dead_lettered: counter(&r, "events_dead_lettered_total", "Events a sink rejected permanently, written to its dead-letter file.", &["sink", "source"]),
            events_truncated: counter(
                &r,
                "sink_events_truncated_total",
                "Events a sink shortened to fit its size limit: how = values (longest values cut and marked, the body still parses) or summary (only id, time and type kept).",
                &["sink", "source", "how"],
            ),
            sink_requests: counter(&r, "sink_requests_total", "Requests or writes of a sink by outcome.", &["sink", "outcome"]),
            sink_retries: counter(&r, "sink_retries_total", "Sink deliveries retried after a transient failure.", &["sink"]),
            sink_batch_seconds: histogram(&r, "sink_batch_latency_seconds", "Time from fetching a batch to its confirmation by a sink.", &["sink"]),
            sink_panics: counter(&r, "sink_panics_total", "Deliveries that ended in a panic of the sink (a bug); the batch is delivered again.", &["sink"]),
            pipeline_failures: counter(&r, "pipeline_failures_total", "Pipelines (a source's fetch or commit task) that died; the daemon then stops and exits non-zero.", &["source"]),
            commit_latency_seconds: histogram(&r, "batch_commit_latency_seconds", "Time from fetching a batch to committing its checkpoint.", &["source"]),
            checkpoint_writes: counter(&r, "checkpoint_writes_total", "Checkpoint writes by outcome.", &["source", "outcome"]),
            checkpoint_lag_seconds: lag,
            in_flight_batches: gauge(&r, "in_flight_batches", "Batches fetched but not yet committed.", &["source"]),
            build_info: gauge(&r, "build_info", "Build information; the value is always 1.", &["version"]),
            ready,
            config_reloads: counter(&r, "config_reloads_total", "Config reloads (SIGHUP) by outcome: ok (applied), error (rejected or failed; the running config stays).", &["outcome"]),
            config_last_reload_successful: reload_ok,
            config_last_reload_success_time: reload_time,
            events_skipped_confirmed: counter(&r, "events_skipped_confirmed_total", "Events of batches refetched after a restart that were not sent to a sink again because it had confirmed them before (duplicates avoided).", &["sink", "source"]),
            events_confirmed_after_restart: counter(&r, "events_confirmed_after_restart_total", "Events a sink had sent but not yet confirmed at a crash (HEC: awaiting their indexer ack) that the destination confirmed when asked after the restart (counted also in events_skipped_confirmed_total once skipped).", &["sink", "source"]),
            events_resent_after_restart: counter(&r, "events_resent_after_restart_total", "Events a sink had sent but not had confirmed at a crash (HEC: awaiting their indexer ack) that the destination did not confirm when asked after the restart, so they are sent again: possible duplicates, counted where the sink recorded them as sent.", &["sink", "source"]),
            registry: r,
            committed_times: Mutex::new(HashMap::new()),
        };
        for outcome in ["ok", "error"] {
            m.config_reloads.with_label_values(&[outcome]);
        }
        m.config_last_reload_successful.set(1);
        m.build_info
            .with_label_values(&[env!("CARGO_PKG_VERSION")])
            .set(1);
        // process_resident_memory_bytes, process_cpu_seconds_total, open fds…
        if let Err(e) = m.registry.register(Box::new(
            prometheus::process_collector::ProcessCollector::for_self(),
        )) {
            tracing::warn!(error = %e, "process metrics unavailable");
        }
        m
    }

    /// Registers a component's own metric (a sink's ack latency, say), so the
    /// metric lives next to the code that updates it. Registering the same
    /// name twice returns the first registration's error, which callers treat
    /// as a bug.
    pub fn register<C: prometheus::core::Collector + Clone + 'static>(&self, collector: C) -> C {
        if let Err(e) = self.registry.register(Box::new(collector.clone())) {
            tracing::error!(error = %e, "metric registration failed");
        }
        collector
    }

    /// A component's own counter, registered. `name` is the full name
    /// (`auditrelay_…`), so a search for a metric an alert uses finds it.
    pub fn counter_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        self.register(IntCounterVec::new(Opts::new(name, help), labels).expect(VALID))
    }

    /// A component's own gauge, registered (see [`Metrics::counter_vec`]).
    pub fn gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
        self.register(IntGaugeVec::new(Opts::new(name, help), labels).expect(VALID))
    }

    /// A component's own gauge of a fractional value (seconds, ratios).
    pub fn float_gauge_vec(&self, name: &str, help: &str, labels: &[&str]) -> prometheus::GaugeVec {
        self.register(prometheus::GaugeVec::new(Opts::new(name, help), labels).expect(VALID))
    }

    /// A component's own histogram with buckets fit for what it measures,
    /// registered (see [`Metrics::counter_vec`]).
    pub fn histogram_vec(
        &self,
        name: &str,
        help: &str,
        labels: &[&str],
        buckets: &[f64],
    ) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        self.register(HistogramVec::new(opts, labels).expect(VALID))
    }

    /// Creates a source's series at zero, so dashboards and `increase()`
    /// alerts see them before the first event of their kind.
    pub fn init_source(&self, source: &str) {
        for c in [
            &self.events_fetched,
            &self.source_duplicates,
            &self.events_deduplicated,
            &self.source_retries,
            &self.rate_limit_waits,
            &self.token_restarts,
            &self.offset_shifts,
            &self.source_gaps,
        ] {
            c.with_label_values(&[source]);
        }
        for outcome in ["ok", "error"] {
            self.checkpoint_writes.with_label_values(&[source, outcome]);
        }
        self.in_flight_batches.with_label_values(&[source]);
        self.events_dropped
            .with_label_values(&[source, DROPPED_BEFORE_WINDOW]);
        self.source_requests.with_label_values(&[source, "ok"]);
        self.source_request_seconds.with_label_values(&[source]);
        self.commit_latency_seconds.with_label_values(&[source]);
        self.pipeline_failures.with_label_values(&[source]);
        // Any source may report a data gap; the alert needs the zero series.
        self.source_gap_seconds.with_label_values(&[source]);
    }

    /// Creates the series of one sink fed by one source at zero.
    pub fn init_route(&self, sink: &str, source: &str) {
        for c in [
            &self.events_delivered,
            &self.events_failed,
            &self.events_dead_lettered,
            &self.events_skipped_confirmed,
            &self.events_confirmed_after_restart,
            &self.events_resent_after_restart,
        ] {
            c.with_label_values(&[sink, source]);
        }
        self.sink_retries.with_label_values(&[sink]);
        self.sink_requests.with_label_values(&[sink, "ok"]);
        self.sink_batch_seconds.with_label_values(&[sink]);
        self.sink_panics.with_label_values(&[sink]);
        for how in ["values", "summary"] {
            self.events_truncated
                .with_label_values(&[sink, source, how]);
        }
    }

    /// A source left the config: its lag must not keep growing (and firing
    /// alerts) for a source that no longer runs. Its counters stay.
    pub fn forget_source(&self, source: &str) {
        if let Ok(mut map) = self.committed_times.lock() {
            map.remove(source);
        }
        let _ = self.checkpoint_lag_seconds.remove_label_values(&[source]);
        let _ = self.in_flight_batches.remove_label_values(&[source]);
    }

    /// Records the newest committed event time of a source; the lag gauge is
    /// computed from it at each scrape, so it grows while a source is stuck.
    pub fn set_committed_time(&self, source: &str, time: DateTime<Utc>) {
        if let Ok(mut map) = self.committed_times.lock() {
            map.insert(source.to_string(), time);
        }
    }

    /// The newest committed event time of a source, if any.
    pub fn committed_time(&self, source: &str) -> Option<DateTime<Utc>> {
        self.committed_times.lock().ok()?.get(source).copied()
    }

    /// The Prometheus text exposition.
    pub fn render(&self) -> String {
        let now = Utc::now();
        if let Ok(map) = self.committed_times.lock() {
            for (source, t) in map.iter() {
                let lag = (now - *t).num_milliseconds() as f64 / 1000.0;
                self.checkpoint_lag_seconds
                    .with_label_values(&[source])
                    .set(lag.max(0.0));
            }
        }
        let mut out = Vec::new();
        let families = self.registry.gather();
        if TextEncoder::new().encode(&families, &mut out).is_err() {
            return String::new();
        }
        String::from_utf8(out).unwrap_or_default()
    }
}

/// `reason` of `source_events_dropped_total`: older than the window or
/// range the request asked for.
pub const DROPPED_BEFORE_WINDOW: &str = "before_window";
/// `reason` of `source_events_dropped_total`: newer than a backfill range.
pub const DROPPED_AFTER_WINDOW: &str = "after_window";

/// The process-wide metrics.
pub static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// Shorthand for the process-wide metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// A timer for one observation of a histogram.
pub fn observe_since(h: &Histogram, since: std::time::Instant) {
    h.observe(since.elapsed().as_secs_f64());
}

/// Declares a component's own metrics: a struct with one field per metric
/// and a lazily registered static holding it. Each row is
/// `field: counter | gauge | histogram(full name, help, labels[, buckets])`,
/// so the name an alert uses stays greppable and the registration stays in
/// one place.
macro_rules! component_metrics {
    (
        $(#[$meta:meta])*
        $vis:vis struct $name:ident in $instance:ident {
            $($(#[$field_meta:meta])* $field:ident: $kind:ident($($arg:expr),+ $(,)?)),+ $(,)?
        }
    ) => {
        $(#[$meta])*
        $vis struct $name {
            $($(#[$field_meta])* $vis $field: $crate::metrics::component_metrics!(@type $kind),)+
        }

        $vis static $instance: std::sync::LazyLock<$name> = std::sync::LazyLock::new(|| {
            let m = $crate::metrics::metrics();
            $name {
                $($field: $crate::metrics::component_metrics!(@new m $kind $($arg),+),)+
            }
        });
    };
    (@type counter) => { prometheus::IntCounterVec };
    (@type gauge) => { prometheus::IntGaugeVec };
    (@type histogram) => { prometheus::HistogramVec };
    (@type float_gauge) => { prometheus::GaugeVec };
    (@new $m:ident counter $($arg:expr),+) => { $m.counter_vec($($arg),+) };
    (@new $m:ident gauge $($arg:expr),+) => { $m.gauge_vec($($arg),+) };
    (@new $m:ident histogram $($arg:expr),+) => { $m.histogram_vec($($arg),+) };
    (@new $m:ident float_gauge $($arg:expr),+) => { $m.float_gauge_vec($($arg),+) };
}
pub(crate) use component_metrics;
