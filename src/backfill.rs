//! `auditrelay backfill --source NAME --from TS --to TS`: a one-shot pull of
//! a time range from Veza's audit list, delivered through the sinks that
//! take NAME as input, with the same at-least-once commit as the daemon.
//!
//! NAME is a `veza_list` source, or a `veza` source whose URL, token and
//! TLS settings are reused. The 90-day limit of the list API is checked
//! before anything is sent. Progress is checkpointed under
//! `backfill-NAME`: an interrupted backfill of the same range resumes where
//! it stopped, and the checkpoint is removed once the range is complete.

use chrono::{DateTime, SecondsFormat, Utc};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::checkpoint::{CheckpointStore, StateLock};
use crate::config::RetryConfig;
use crate::config_file::Config;
use crate::health::Health;
use crate::metrics::metrics;
use crate::pipeline::{RequestSize, Route, SourcePipeline};
use crate::source::veza_list::{Range, VezaListConfig, VezaListSource};
use crate::source::{SourceConfig, SourceContext};

/// How a backfill ended.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Every event of the range was confirmed by every sink.
    Complete { events: u64 },
    /// Stopped by a signal; the same command resumes it.
    Interrupted,
}

/// The list-endpoint settings of source `name`, or why it cannot backfill.
pub fn list_config(config: &Config, name: &str) -> Result<VezaListConfig, String> {
    let Some(source) = config.sources.get(name) else {
        let known: Vec<&str> = config.sources.keys().map(String::as_str).collect();
        return Err(format!(
            "no source named \"{name}\" in {} (sources: {})",
            config.file.display(),
            known.join(", ")
        ));
    };
    match source {
        SourceConfig::VezaList(c) => Ok(c.clone()),
        SourceConfig::Veza(v) => Ok(VezaListConfig::from_export(v)),
        other => Err(format!(
            "source \"{name}\" is of type {}; backfill reads Veza's audit list and works with veza and veza_list sources",
            other.kind()
        )),
    }
}

/// Parses `--from`/`--to` (RFC 3339, `now`, or a negative duration) and
/// checks the range against the 90-day limit.
pub fn range(from: &str, to: Option<&str>, now: DateTime<Utc>) -> Result<Range, String> {
    let from =
        crate::source::veza_list::parse_bound(from, now).map_err(|e| format!("--from: {e}"))?;
    let to = match to {
        Some(t) => {
            crate::source::veza_list::parse_bound(t, now).map_err(|e| format!("--to: {e}"))?
        }
        None => now,
    };
    Range::check(from, to, now)
}

/// Runs the backfill until the range is done or `stop` is cancelled.
pub async fn run(
    config: &Config,
    name: &str,
    range: Range,
    stop: CancellationToken,
) -> anyhow::Result<Outcome> {
    let list = list_config(config, name).map_err(|e| anyhow::anyhow!(e))?;
    let _lock = StateLock::acquire(&config.state_dir).map_err(|e| {
        anyhow::anyhow!(
            "{e:#} (to backfill while the daemon runs, give the backfill its own state \
             directory: AUDITRELAY_STATE_DIR=/var/lib/auditrelay-backfill auditrelay backfill …)"
        )
    })?;
    let store = CheckpointStore::open(&config.state_dir).map_err(|e| {
        anyhow::anyhow!("state_dir: cannot use {}: {e}", config.state_dir.display())
    })?;
    let key = format!("backfill-{name}");
    let health = Health::default();
    let mut routes = Vec::new();
    for (sink_name, s) in &config.sinks {
        if !s.common.inputs.iter().any(|i| i == name) {
            continue;
        }
        // Exactly as the daemon builds it (dead-letter cap included), but
        // never behind a spool: a backfill waits for its sinks. Its events
        // are shaped as the daemon's are (they come from the list API).
        let mut kinds = crate::daemon::source_kinds(config);
        kinds.insert(key.clone(), "veza_list".into());
        let sink = crate::daemon::build_sink(config, sink_name, &health)?;
        let sink = crate::daemon::with_shaping(config, sink_name, sink, kinds)?;
        metrics().init_route(sink_name, name);
        routes.push(Route {
            sink_name: sink_name.as_str().into(),
            sink,
            filter: s.common.filter.clone(),
            health: health.clone(),
            request: RequestSize::of(s),
        });
    }
    if routes.is_empty() {
        anyhow::bail!("no sink takes source \"{name}\" as input; its events would go nowhere");
    }
    let checkpoint = store.load(&key)?;
    let source = VezaListSource::new(
        list,
        SourceContext {
            name: key.clone(),
            checkpoint,
            health,
            state_dir: config.state_dir.clone(),
        },
        name,
        Some(range),
    )?;
    metrics().init_source(name);
    let fmt = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
    info!(source = name, from = %fmt(range.from), to = %fmt(range.to), sinks = routes.len(), checkpoint = %store.path(&key).display(), "backfill started");
    let pipeline = SourcePipeline {
        name: key.as_str().into(),
        source: Box::new(source),
        routes,
        store: store.clone(),
        max_in_flight: config.pipeline.max_in_flight,
        max_in_flight_bytes: config.pipeline.max_in_flight_bytes,
        retry: RetryConfig::default(),
    };
    // Events of the range handed to the sinks: read minus repeats dropped.
    let fetched = metrics().events_fetched.with_label_values(&[name]);
    let dropped = metrics().events_deduplicated.with_label_values(&[name]);
    let before = fetched.get() - dropped.get();
    let stopped = stop.clone();
    let progress = tokio::spawn(show_progress(
        key.clone(),
        range.from,
        range.to,
        fetched.clone(),
    ));
    let task = tokio::spawn(pipeline.run(stop.clone()));
    tokio::pin!(task);
    let interrupted = tokio::select! {
        r = &mut task => {
            r.map_err(|e| anyhow::anyhow!("backfill task failed: {e}"))??;
            stopped.is_cancelled()
        }
        _ = stop.cancelled() => {
            if tokio::time::timeout(config.shutdown_timeout, &mut task).await.is_err() {
                warn!("shutdown_timeout reached; unconfirmed pages are fetched again when the backfill resumes");
            }
            true
        }
    };
    progress.abort();
    if interrupted {
        info!(source = name, checkpoint = %store.path(&key).display(), "backfill interrupted; run the same command again to resume");
        return Ok(Outcome::Interrupted);
    }
    store.reset(&key).map_err(|e| {
        anyhow::anyhow!(
            "backfill complete, but its checkpoint {} could not be removed: {e}",
            store.path(&key).display()
        )
    })?;
    let events = fetched.get() - dropped.get() - before;
    info!(source = name, events, "backfill complete");
    Ok(Outcome::Complete { events })
}

/// Progress of a backfill, measured by how far the committed event time has
/// moved through the range: a bar with events/s and ETA on a terminal,
/// a log line every 10 s otherwise (systemd, CI, pipes).
async fn show_progress(
    key: String,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    fetched: prometheus::IntCounter,
) {
    use std::io::IsTerminal;
    let span = (to - from).num_seconds().max(1) as u64;
    let bar = std::io::stderr().is_terminal().then(|| {
        let pb = indicatif::ProgressBar::new(span);
        if let Ok(style) = indicatif::ProgressStyle::with_template(
            "{bar:40.cyan/blue} {percent:>3}%  {msg}  ETA {eta}",
        ) {
            pb.set_style(style);
        }
        pb
    });
    let started = std::time::Instant::now();
    let first = fetched.get();
    let mut tick = tokio::time::interval(if bar.is_some() {
        std::time::Duration::from_millis(500)
    } else {
        std::time::Duration::from_secs(10)
    });
    tick.tick().await;
    loop {
        tick.tick().await;
        let done = metrics()
            .committed_time(&key)
            .map(|t| (t - from).num_seconds().clamp(0, span as i64) as u64)
            .unwrap_or(0);
        let events = fetched.get() - first;
        let rate = events as f64 / started.elapsed().as_secs_f64().max(0.001);
        match &bar {
            Some(pb) => {
                pb.set_position(done);
                pb.set_message(format!("{events} events, {rate:.0}/s"));
            }
            None => info!(
                source = %key,
                percent = done * 100 / span,
                events,
                events_per_s = rate.round(),
                "backfill progress"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_accept_relative_bounds_and_refuse_more_than_90_days() {
        let now = Utc::now();
        let r = range("-2d", Some("-1d"), now).unwrap();
        assert_eq!(r.to - r.from, chrono::Duration::days(1));
        assert_eq!(range("-1h", None, now).unwrap().to, now);
        let e = range("-100d", None, now).unwrap_err();
        assert!(e.contains("100 days ago") && e.contains("90"), "{e}");
        assert!(range("yesterday", None, now)
            .unwrap_err()
            .starts_with("--from"));
    }
}
