//! Wiring: builds sources, sinks and routes from a config, runs a pipeline
//! per source, talks to systemd, reloads the config on SIGHUP and shuts down
//! cleanly on SIGTERM/SIGINT.
//!
//! A reload changes only what changed: a pipeline whose source section,
//! routed sinks (their sections) and `[pipeline]` settings are the same keeps
//! running untouched. Every other pipeline is drained exactly like at
//! SIGTERM (no new fetches, batches in flight confirmed and committed, within
//! `shutdown_timeout`) and started again from its checkpoint, so a reload
//! neither loses nor repeats events while the sinks are healthy.

mod build;
mod clustered;
mod plan;
mod reload;
mod running;
mod signals;
mod systemd;
#[cfg(test)]
mod tests;
mod textfile;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

use sd_notify::NotifyState;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::cluster::Cluster;
use crate::config_file::Config;
use crate::health::Health;
use crate::metrics::metrics;
pub use build::{
    build, build_pipeline, build_running_sink, build_sink, build_sinks, source_kinds, with_shaping,
    Daemon,
};
use running::{close_sinks, Finished, Running};
pub use signals::hold_signals;
use signals::{Signal, Signals};
use systemd::{notify, Watchdog};
use textfile::write_textfile;

/// Runs the daemon until a signal, or until every source is finished.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Listen for SIGTERM/SIGINT/SIGHUP before anything else, so a stop
    // during startup is a clean stop (exit 0), not death by the default
    // handler, and a reload asked for during startup waits for its end.
    let mut signals = Signals::install()?;
    crate::secret::warn_if_config_exposed(&config.file);
    let health = Health::default();
    let daemon = build(&config, &health)?;
    let stop_server = CancellationToken::new();
    let (addr, server) =
        crate::server::start(config.listen, health.clone(), stop_server.clone()).await?;
    if let Some((path, every)) = &config.metrics_textfile {
        tokio::spawn(write_textfile(
            path.clone(),
            *every,
            health.clone(),
            stop_server.clone(),
        ));
    }
    info!(listen = %addr, summary = %config.summary(), lock = %daemon.lock.path.display(), "auditrelay started");
    metrics().config_last_reload_success_time.set(unix_now());

    let Daemon {
        pipelines,
        sinks,
        mut store,
        lock,
    } = daemon;
    // Under [cluster], pipelines start as the membership loop acquires sources.
    let (cluster, mut changes) = match &config.cluster {
        Some(cfg) => {
            let (cluster, changes) =
                Cluster::start(cfg, config.sources.keys().cloned().collect()).await?;
            store = store.with_remote(cluster.checkpoints());
            info!(member = %cfg.instance_id(), cluster = %cfg.name, "cluster mode: sources run while this instance owns them");
            (Some(cluster), Some(changes))
        }
        None => (None, None),
    };
    let (finished_tx, mut finished_rx) = mpsc::unbounded_channel();
    let mut running = Running {
        config,
        health,
        store,
        sinks,
        pipelines: BTreeMap::new(),
        not_running: BTreeSet::new(),
        generation: 0,
        finished_tx,
    };
    for p in pipelines {
        running.spawn(p);
    }
    notify(&[NotifyState::Ready, NotifyState::Status("delivering")]);
    // WatchdogSec: ping from this loop (and while a reload waits), so a
    // wedged runtime stops the pings and systemd restarts the service.
    let mut watchdog = Watchdog::new();
    let mut died = None;
    // When the stop began: sinks close within what is left of shutdown_timeout.
    let stopping_since: Instant;
    loop {
        tokio::select! {
            Some(Finished { name, generation, failure }) = finished_rx.recv() => {
                let current = running.finished(&name, generation);
                if let Some(why) = failure.filter(|_| current) {
                    // A dead pipeline would leave its source stuck while the
                    // daemon looks healthy: stop everything cleanly and exit
                    // non-zero, so systemd (Restart=on-failure) or Kubernetes
                    // restarts the daemon from the checkpoints, within their
                    // restart limits.
                    metrics().pipeline_failures.with_label_values(&[&name]).inc();
                    let timeout = running.config.shutdown_timeout;
                    stopping_since = Instant::now();
                    error!(source = %name, error = %why, timeout_s = timeout.as_secs_f64(), "pipeline died; stopping the other pipelines and exiting non-zero");
                    notify(&[NotifyState::Stopping, NotifyState::Status("a pipeline died; stopping")]);
                    watchdog.keep_pinging(running.drain_all(timeout)).await;
                    died = Some(anyhow::anyhow!("the pipeline of source {name} died: {why}"));
                    break;
                }
                if current && running.idle() && cluster.is_none() {
                    info!("every source finished");
                    stopping_since = Instant::now();
                    // Spooled batches are confirmed but not yet delivered.
                    let timeout = running.config.shutdown_timeout;
                    let flush = futures_util::future::join_all(running.sinks.values().map(|s| s.flush()));
                    if watchdog.keep_pinging(tokio::time::timeout(timeout, flush)).await.is_err() {
                        warn!(timeout_s = timeout.as_secs_f64(), "shutdown_timeout reached with spooled batches undelivered; they are sent at the next start");
                    }
                    break;
                }
            }
            signal = signals.recv() => match signal {
                Signal::Stop(signal) => {
                    let timeout = running.config.shutdown_timeout;
                    stopping_since = Instant::now();
                    info!(signal, timeout_s = timeout.as_secs_f64(), "stopping: no new fetches; draining batches in flight");
                    notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
                    watchdog.keep_pinging(running.drain_all(timeout)).await;
                    break;
                }
                Signal::Reload if cluster.is_some() => {
                    warn!("SIGHUP ignored under [cluster]: restart the instance to change its config (the others take its sources meanwhile)");
                }
                Signal::Reload => {
                    info!(file = %running.config.file.display(), "SIGHUP: reloading the config");
                    watchdog.keep_pinging(running.reload()).await;
                }
            },
            Some(change) = next_change(&mut changes) => {
                if let Some(cluster) = &cluster {
                    watchdog.keep_pinging(running.follow_cluster(cluster, change)).await;
                }
            }
            _ = watchdog.tick() => notify(&[NotifyState::Watchdog]),
        }
    }
    if let Some(cluster) = &cluster {
        // Pipelines are drained: free the sources for the others at once.
        cluster.leave().await;
    }
    let close_by = stopping_since + running.config.shutdown_timeout;
    watchdog
        .keep_pinging(close_sinks(running.sinks.iter(), close_by))
        .await;
    stop_server.cancel();
    if let Err(e) = server.await {
        error!(error = %e, "server task failed");
    }
    drop(running);
    drop(lock);
    if let Some(e) = died {
        return Err(e);
    }
    info!("auditrelay stopped");
    Ok(())
}

/// The next cluster change, or never when not clustered.
async fn next_change(
    changes: &mut Option<mpsc::UnboundedReceiver<crate::cluster::Change>>,
) -> Option<crate::cluster::Change> {
    match changes {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}
