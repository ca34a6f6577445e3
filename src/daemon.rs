//! Wiring: builds sources, sinks and routes from a config, runs a pipeline
//! per source, talks to systemd, and shuts down cleanly on SIGTERM/SIGINT.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use sd_notify::NotifyState;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checkpoint::{CheckpointStore, StateLock};
use crate::config::Config;
use crate::health::Health;
use crate::metrics::metrics;
use crate::pipeline::{Route, SourcePipeline};
use crate::sink::spool::SpoolingSink;
use crate::sink::{DeadLetters, OnUnavailable, Sink, SinkContext};
use crate::source::SourceContext;

/// Everything a running daemon is made of.
pub struct Daemon {
    pub pipelines: Vec<SourcePipeline>,
    pub sinks: BTreeMap<String, Arc<dyn Sink>>,
    /// Held for the daemon's lifetime.
    pub lock: StateLock,
}

/// Builds every sink of the config.
pub fn build_sinks(
    config: &Config,
    health: &Health,
) -> anyhow::Result<BTreeMap<String, Arc<dyn Sink>>> {
    let mut sinks = BTreeMap::new();
    for name in config.sinks.keys() {
        sinks.insert(name.clone(), build_sink(config, name, health)?);
    }
    Ok(sinks)
}

/// Builds one sink of the config.
pub fn build_sink(config: &Config, name: &str, health: &Health) -> anyhow::Result<Arc<dyn Sink>> {
    let cfg = config
        .sinks
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("no sink named \"{name}\""))?;
    let ctx = SinkContext {
        name: name.to_string(),
        state_dir: config.state_dir.clone(),
        health: health.clone(),
        dead_letters: DeadLetters::new(&config.state_dir, name)
            .with_max_bytes(cfg.common.dead_letter_max_bytes),
    };
    Ok(Arc::from(cfg.build(ctx)?))
}

/// Builds everything; any error here is a startup error (exit non-zero).
/// Must run inside the runtime: spooled sinks start their drainers.
pub fn build(config: &Config, health: &Health) -> anyhow::Result<Daemon> {
    let lock = StateLock::acquire(&config.state_dir)?;
    let store = CheckpointStore::open(&config.state_dir).map_err(|e| {
        anyhow::anyhow!("state_dir: cannot use {}: {e}", config.state_dir.display())
    })?;
    let mut sinks = build_sinks(config, health)?;
    for (name, cfg) in &config.sinks {
        if cfg.common.on_unavailable == OnUnavailable::Spool {
            let spooled = SpoolingSink::open(
                name,
                &config.state_dir,
                sinks[name].clone(),
                cfg.common.spool_after,
                cfg.common.spool_max_bytes,
                cfg.common.retry,
                health.clone(),
            )?;
            sinks.insert(name.clone(), Arc::new(spooled));
        }
    }
    let mut pipelines = Vec::new();
    for (name, cfg) in &config.sources {
        metrics().init_source(name);
        let checkpoint = store.load(name)?;
        let source = cfg.build(SourceContext {
            name: name.clone(),
            checkpoint,
            health: health.clone(),
            state_dir: config.state_dir.clone(),
        })?;
        let mut routes = Vec::new();
        for (sink_name, s) in &config.sinks {
            if s.common.inputs.iter().any(|i| i == name) {
                metrics().init_route(sink_name, name);
                routes.push(Route {
                    sink_name: sink_name.as_str().into(),
                    sink: sinks[sink_name].clone(),
                    filter: s.common.filter.clone(),
                });
            }
        }
        pipelines.push(SourcePipeline {
            name: name.as_str().into(),
            source,
            routes,
            store: store.clone(),
            max_in_flight: config.pipeline.max_in_flight,
            retry: config.pipeline.retry,
        });
    }
    Ok(Daemon {
        pipelines,
        sinks,
        lock,
    })
}

/// Runs the daemon until a signal, or until every source is finished.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Listen for SIGTERM/SIGINT before anything else, so a stop during
    // startup is a clean stop (exit 0), not death by the default handler.
    let mut signals = Signals::install()?;
    crate::secret::warn_if_exposed(&config.file);
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

    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for p in daemon.pipelines {
        tasks.spawn(p.run(stop.clone()));
    }
    notify(&[NotifyState::Ready, NotifyState::Status("delivering")]);
    // WatchdogSec: ping from this loop, so a wedged runtime stops the pings
    // and systemd restarts the service.
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2);
    let mut ping = tokio::time::interval(watchdog.unwrap_or(Duration::from_secs(3600)));
    let all_done = async { while tasks.join_next().await.is_some() {} };
    tokio::pin!(all_done);
    let signal = signals.recv();
    tokio::pin!(signal);
    loop {
        tokio::select! {
            _ = &mut all_done => {
                info!("every source finished");
                break;
            }
            signal = &mut signal => {
                info!(signal, timeout_s = config.shutdown_timeout.as_secs_f64(), "stopping: no new fetches; draining batches in flight");
                notify(&[NotifyState::Stopping, NotifyState::Status("draining")]);
                stop.cancel();
                if tokio::time::timeout(config.shutdown_timeout, &mut all_done).await.is_err() {
                    warn!("shutdown_timeout reached; unconfirmed batches will be sent again at the next start");
                }
                break;
            }
            _ = ping.tick(), if watchdog.is_some() => notify(&[NotifyState::Watchdog]),
        }
    }
    stop_server.cancel();
    if let Err(e) = server.await {
        error!(error = %e, "server task failed");
    }
    drop(daemon.sinks);
    info!("auditrelay stopped");
    Ok(())
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// Writes the metrics for node_exporter's textfile collector: temp file,
/// then rename, so the collector never reads half a file.
async fn write_textfile(path: PathBuf, every: Duration, health: Health, stop: CancellationToken) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        metrics().ready.set(i64::from(health.snapshot().0));
        let text = metrics().render();
        let tmp = path.with_extension("prom.tmp");
        let written = tokio::fs::write(&tmp, text.as_bytes())
            .await
            .and(tokio::fs::rename(&tmp, &path).await);
        if let Err(e) = written {
            warn!(file = %path.display(), error = %e, "cannot write metrics textfile");
        }
    }
}

/// SIGTERM and SIGINT, registered once at startup.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn install() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())
                .map_err(|e| anyhow::anyhow!("cannot handle SIGTERM: {e}"))?,
            int: signal(SignalKind::interrupt())
                .map_err(|e| anyhow::anyhow!("cannot handle SIGINT: {e}"))?,
        })
    }

    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}
