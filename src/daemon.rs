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

use std::collections::{BTreeMap, BTreeSet};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use sd_notify::NotifyState;
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checkpoint::{CheckpointStore, StateLock};
use crate::config::{self, Config};
use crate::health::Health;
use crate::metrics::metrics;
use crate::pipeline::{panic_message, Route, SourcePipeline};
use crate::sink::spooling::{spool_dir, SpoolingSink};
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
            .with_max_bytes(cfg.common.dead_letter_max_bytes)
            .with_health(health.clone()),
    };
    Ok(Arc::from(cfg.build(ctx)?))
}

/// Builds one sink for the daemon: as [`build_sink`], behind its spool when
/// `on_unavailable = "spool"` (one-shot commands talk to the sink itself).
/// Must run inside the runtime: the spool starts its drainer.
pub fn build_running_sink(
    config: &Config,
    name: &str,
    health: &Health,
) -> anyhow::Result<Arc<dyn Sink>> {
    let sink = build_sink(config, name, health)?;
    let Some(cfg) = config.sinks.get(name) else {
        return Ok(sink);
    };
    let spool_after = match cfg.common.on_unavailable {
        OnUnavailable::Spool => Some(cfg.common.spool_after),
        // Switched back to `block` with batches still spooled: they go out
        // first, so nothing the checkpoint already passed is stranded.
        OnUnavailable::Block if spool_dir(&config.state_dir, name).exists() => None,
        OnUnavailable::Block => return Ok(sink),
    };
    Ok(Arc::new(SpoolingSink::open(
        name,
        &config.state_dir,
        sink,
        spool_after,
        cfg.common.spool_max_bytes,
        cfg.common.retry,
        health.clone(),
    )?))
}

/// Builds the pipeline of one source of the config, routed to the sinks
/// that take it as input (`sinks` must hold every one of them).
pub fn build_pipeline(
    config: &Config,
    name: &str,
    sinks: &BTreeMap<String, Arc<dyn Sink>>,
    store: &CheckpointStore,
    health: &Health,
) -> anyhow::Result<SourcePipeline> {
    let cfg = config
        .sources
        .get(name)
        .ok_or_else(|| anyhow::anyhow!("no source named \"{name}\""))?;
    metrics().init_source(name);
    let checkpoint = store.load(name)?;
    let source = cfg.build(SourceContext {
        name: name.to_string(),
        checkpoint,
        health: health.clone(),
        state_dir: config.state_dir.clone(),
    })?;
    let mut routes = Vec::new();
    for (sink_name, s) in &config.sinks {
        if s.common.inputs.iter().any(|i| i == name) {
            let sink = sinks
                .get(sink_name)
                .ok_or_else(|| anyhow::anyhow!("sink \"{sink_name}\" was not built"))?;
            metrics().init_route(sink_name, name);
            routes.push(Route {
                sink_name: sink_name.as_str().into(),
                sink: sink.clone(),
                filter: s.common.filter.clone(),
                health: health.clone(),
            });
        }
    }
    Ok(SourcePipeline {
        name: name.into(),
        source,
        routes,
        store: store.clone(),
        max_in_flight: config.pipeline.max_in_flight,
        retry: config.pipeline.retry,
    })
}

/// Builds everything; any error here is a startup error (exit non-zero).
/// Must run inside the runtime: spooled sinks start their drainers.
pub fn build(config: &Config, health: &Health) -> anyhow::Result<Daemon> {
    let lock = StateLock::acquire(&config.state_dir)?;
    let store = open_store(config)?;
    let mut sinks = BTreeMap::new();
    for name in config.sinks.keys() {
        sinks.insert(name.clone(), build_running_sink(config, name, health)?);
    }
    let mut pipelines = Vec::new();
    for name in config.sources.keys() {
        pipelines.push(build_pipeline(config, name, &sinks, &store, health)?);
    }
    Ok(Daemon {
        pipelines,
        sinks,
        lock,
    })
}

fn open_store(config: &Config) -> anyhow::Result<CheckpointStore> {
    CheckpointStore::open(&config.state_dir)
        .map_err(|e| anyhow::anyhow!("state_dir: cannot use {}: {e}", config.state_dir.display()))
}

/// Runs the daemon until a signal, or until every source is finished.
pub async fn run(config: Config) -> anyhow::Result<()> {
    // Listen for SIGTERM/SIGINT/SIGHUP before anything else, so a stop
    // during startup is a clean stop (exit 0), not death by the default
    // handler, and a reload asked for during startup waits for its end.
    let mut signals = Signals::install()?;
    crate::secret::warn_if_config_exposed(&config.file);
    let health = Health::default();
    let daemon = build(&config, &health)?;
    let store = open_store(&config)?;
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
        lock,
    } = daemon;
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
                    let all: Vec<String> = running.pipelines.keys().cloned().collect();
                    let aborted = watchdog.keep_pinging(running.drain(&all, timeout)).await;
                    if !aborted.is_empty() {
                        warn!(sources = ?aborted, "shutdown_timeout reached; unconfirmed batches will be sent again at the next start");
                    }
                    died = Some(anyhow::anyhow!("the pipeline of source {name} died: {why}"));
                    break;
                }
                if current && running.idle() {
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
                    let all: Vec<String> = running.pipelines.keys().cloned().collect();
                    let aborted = watchdog.keep_pinging(running.drain(&all, timeout)).await;
                    if !aborted.is_empty() {
                        warn!(sources = ?aborted, "shutdown_timeout reached; unconfirmed batches will be sent again at the next start");
                    }
                    break;
                }
                Signal::Reload => {
                    info!(file = %running.config.file.display(), "SIGHUP: reloading the config");
                    watchdog.keep_pinging(running.reload()).await;
                }
            },
            _ = watchdog.tick() => notify(&[NotifyState::Watchdog]),
        }
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

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

/// A pipeline task's end, reported to the daemon's loop.
struct Finished {
    name: String,
    generation: u64,
    /// Why it died, when it did not end by itself or by a stop.
    failure: Option<String>,
}

/// The pipeline task of one source.
struct Task {
    stop: CancellationToken,
    handle: JoinHandle<()>,
    generation: u64,
}

/// What runs now, and the config it was built from.
struct Running {
    config: Config,
    health: Health,
    store: CheckpointStore,
    sinks: BTreeMap<String, Arc<dyn Sink>>,
    pipelines: BTreeMap<String, Task>,
    /// Sources of `config` that should run but could not be started (a
    /// reload failed and so did going back); the next reload retries them.
    not_running: BTreeSet<String>,
    generation: u64,
    /// Each pipeline task reports its end here.
    finished_tx: mpsc::UnboundedSender<Finished>,
}

/// What a reload changes.
#[derive(Debug, Default)]
struct Plan {
    sinks_added: Vec<String>,
    sinks_changed: Vec<String>,
    sinks_removed: Vec<String>,
    sources_added: Vec<String>,
    sources_restarted: Vec<String>,
    sources_removed: Vec<String>,
    sources_kept: Vec<String>,
}

impl Plan {
    fn new(old: &Config, new: &Config, not_running: &BTreeSet<String>) -> Plan {
        let mut plan = Plan::default();
        for name in new.sinks.keys() {
            match old.sections.sinks.get(name) {
                None => plan.sinks_added.push(name.clone()),
                Some(section) if new.sections.sinks.get(name) != Some(section) => {
                    plan.sinks_changed.push(name.clone())
                }
                Some(_) => {}
            }
        }
        plan.sinks_removed = old
            .sinks
            .keys()
            .filter(|n| !new.sinks.contains_key(*n))
            .cloned()
            .collect();
        for name in new.sources.keys() {
            if !old.sources.contains_key(name) {
                plan.sources_added.push(name.clone());
            } else if old.sections.sources.get(name) != new.sections.sources.get(name)
                || routes(old, name) != routes(new, name)
                || old.pipeline != new.pipeline
                || not_running.contains(name)
            {
                plan.sources_restarted.push(name.clone());
            } else {
                plan.sources_kept.push(name.clone());
            }
        }
        plan.sources_removed = old
            .sources
            .keys()
            .filter(|n| !new.sources.contains_key(*n))
            .cloned()
            .collect();
        plan
    }

    fn is_empty(&self) -> bool {
        self.sinks_added.is_empty()
            && self.sinks_changed.is_empty()
            && self.sinks_removed.is_empty()
            && self.sources_added.is_empty()
            && self.sources_restarted.is_empty()
            && self.sources_removed.is_empty()
    }
}

/// The sinks a source feeds, with their sections: a pipeline is kept only
/// when this is unchanged.
fn routes<'a>(
    config: &'a Config,
    source: &str,
) -> Vec<(&'a str, Option<&'a figment::value::Value>)> {
    config
        .sinks
        .iter()
        .filter(|(_, s)| s.common.inputs.iter().any(|i| i == source))
        .map(|(name, _)| (name.as_str(), config.sections.sinks.get(name)))
        .collect()
}

impl Running {
    fn spawn(&mut self, pipeline: SourcePipeline) {
        self.generation += 1;
        let generation = self.generation;
        let name = pipeline.name.to_string();
        let stop = CancellationToken::new();
        let (token, tx, reported) = (stop.clone(), self.finished_tx.clone(), name.clone());
        let handle = tokio::spawn(async move {
            // A panic of the source (or anything else in the pipeline task)
            // must reach the daemon, not end the task silently.
            let failure = match AssertUnwindSafe(pipeline.run(token)).catch_unwind().await {
                Ok(Ok(())) => None,
                Ok(Err(e)) => Some(format!("{e:#}")),
                Err(payload) => Some(format!("panic: {}", panic_message(payload.as_ref()))),
            };
            if let Some(why) = &failure {
                error!(source = %reported, error = %why, "pipeline task failed");
            }
            let _ = tx.send(Finished {
                name: reported,
                generation,
                failure,
            });
        });
        info!(source = %name, "pipeline started");
        self.not_running.remove(&name);
        self.pipelines.insert(
            name,
            Task {
                stop,
                handle,
                generation,
            },
        );
    }

    /// A pipeline ended by itself; true when it was a current one.
    fn finished(&mut self, name: &str, generation: u64) -> bool {
        if self
            .pipelines
            .get(name)
            .is_some_and(|t| t.generation == generation)
        {
            self.pipelines.remove(name);
            return true;
        }
        false
    }

    fn idle(&self) -> bool {
        self.pipelines.is_empty() && self.not_running.is_empty()
    }

    /// Stops the named pipelines like SIGTERM does: no new fetches, batches
    /// in flight delivered and committed, all within `timeout`; what is still
    /// running then is aborted (its unconfirmed batches are fetched again by
    /// whatever starts from the checkpoint). Returns the aborted ones.
    async fn drain(&mut self, names: &[String], timeout: Duration) -> Vec<String> {
        let tasks: Vec<(String, Task)> = names
            .iter()
            .filter_map(|n| self.pipelines.remove(n).map(|t| (n.clone(), t)))
            .collect();
        for (_, task) in &tasks {
            task.stop.cancel();
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let mut aborted = Vec::new();
        for (name, mut task) in tasks {
            if tokio::time::timeout_at(deadline, &mut task.handle)
                .await
                .is_err()
            {
                task.handle.abort();
                let _ = task.handle.await;
                metrics()
                    .in_flight_batches
                    .with_label_values(&[&name])
                    .set(0);
                aborted.push(name);
            } else {
                info!(source = %name, "pipeline stopped; its checkpoint is committed");
            }
        }
        aborted
    }

    /// SIGHUP: re-reads and validates the config file (and the environment)
    /// like `validate`; a config with problems is logged and changes nothing.
    async fn reload(&mut self) {
        let reloading = NotifyState::monotonic_usec_now().ok();
        if let Some(usec) = &reloading {
            notify(&[
                NotifyState::Reloading,
                usec.clone(),
                NotifyState::Status("reloading the config"),
            ]);
        }
        let started = Instant::now();
        let file = self.config.file.clone();
        let loaded = tokio::task::spawn_blocking(move || config::load(&file)).await;
        let applied = match loaded {
            Ok(Ok(new)) => self.apply(new).await,
            Ok(Err(e)) => {
                for p in &e.problems {
                    error!(file = %e.file.display(), key = %p.path, "config reload rejected: {p}");
                }
                error!(file = %e.file.display(), problems = e.problems.len(), "config reload rejected; the running config stays as it was");
                false
            }
            Err(e) => {
                error!(error = %e, "config reload failed; the running config stays as it was");
                false
            }
        };
        let m = metrics();
        if applied {
            m.config_reloads.with_label_values(&["ok"]).inc();
            m.config_last_reload_successful.set(1);
            m.config_last_reload_success_time.set(unix_now());
            info!(took_ms = started.elapsed().as_millis() as u64, summary = %self.config.summary(), "config reloaded");
        } else {
            m.config_reloads.with_label_values(&["error"]).inc();
            m.config_last_reload_successful.set(0);
        }
        notify(&[NotifyState::Ready, NotifyState::Status("delivering")]);
    }

    /// Keys read once at startup keep their running value.
    fn keep_restart_only(&self, new: &mut Config) {
        let old = &self.config;
        let kept = |key: &str, running: String, configured: String| {
            warn!(key, running = %running, configured = %configured, "this key only changes at a restart; keeping the running value");
        };
        if new.state_dir != old.state_dir {
            kept(
                "state_dir",
                old.state_dir.display().to_string(),
                new.state_dir.display().to_string(),
            );
            new.state_dir = old.state_dir.clone();
        }
        if new.listen != old.listen {
            kept(
                "server.listen",
                old.listen.to_string(),
                new.listen.to_string(),
            );
            new.listen = old.listen;
        }
        if new.metrics_textfile != old.metrics_textfile {
            let show = |t: &Option<(PathBuf, Duration)>| match t {
                Some((p, every)) => format!(
                    "{} every {}",
                    p.display(),
                    humantime::format_duration(*every)
                ),
                None => "none".to_string(),
            };
            kept(
                "server.metrics_textfile",
                show(&old.metrics_textfile),
                show(&new.metrics_textfile),
            );
            new.metrics_textfile = old.metrics_textfile.clone();
        }
        if new.log_format != old.log_format {
            kept(
                "log_format",
                format!("{:?}", old.log_format).to_lowercase(),
                format!("{:?}", new.log_format).to_lowercase(),
            );
            new.log_format = old.log_format;
        }
        if new.log_level != old.log_level {
            kept("log_level", old.log_level.clone(), new.log_level.clone());
            new.log_level = old.log_level.clone();
        }
    }

    /// Applies a valid config; false when it could not be applied (then the
    /// previous one runs again).
    async fn apply(&mut self, mut new: Config) -> bool {
        self.keep_restart_only(&mut new);
        let plan = Plan::new(&self.config, &new, &self.not_running);
        if plan.is_empty() {
            info!("config reload: no source or sink changed");
            self.config = new;
            return true;
        }
        info!(
            sources_added = ?plan.sources_added,
            sources_restarted = ?plan.sources_restarted,
            sources_removed = ?plan.sources_removed,
            sources_kept = ?plan.sources_kept,
            sinks_added = ?plan.sinks_added,
            sinks_changed = ?plan.sinks_changed,
            sinks_removed = ?plan.sinks_removed,
            "config reload: applying"
        );
        // New sinks first: if one cannot be built, nothing has stopped yet.
        let mut fresh = BTreeMap::new();
        for name in &plan.sinks_added {
            match build_off_runtime(&new, name, &self.health).await {
                Ok(sink) => {
                    fresh.insert(name.clone(), sink);
                }
                Err(e) => {
                    error!(sink = %name, error = %format!("{e:#}"), "config reload failed: cannot build the new sink; the running config stays as it was");
                    drop(fresh);
                    for name in &plan.sinks_added {
                        self.health.remove(&format!("sink.{name}"));
                    }
                    return false;
                }
            }
        }
        let stopping: Vec<String> = plan
            .sources_restarted
            .iter()
            .chain(&plan.sources_removed)
            .cloned()
            .collect();
        if !stopping.is_empty() {
            info!(sources = ?stopping, timeout_s = new.shutdown_timeout.as_secs_f64(), "config reload: draining the pipelines that change");
        }
        let close_by = Instant::now() + new.shutdown_timeout;
        let aborted = self.drain(&stopping, new.shutdown_timeout).await;
        if !aborted.is_empty() {
            warn!(sources = ?aborted, "shutdown_timeout reached while draining for the reload; their unconfirmed batches will be sent again");
        }
        // Old sinks go once the pipelines that used them have drained.
        let going: Vec<&String> = plan
            .sinks_changed
            .iter()
            .chain(&plan.sinks_removed)
            .collect();
        close_sinks(
            self.sinks.iter().filter(|(n, _)| going.contains(n)),
            close_by,
        )
        .await;
        for name in going {
            if let Some(sink) = self.sinks.remove(name) {
                let gone = Arc::downgrade(&sink);
                drop(sink);
                wait_dropped(name, gone).await;
            }
            if plan.sinks_removed.contains(name) {
                self.health.remove_with_parts(&format!("sink.{name}"));
            } else {
                // Its replacement registered its own parts already.
                self.health.remove(&format!("sink.{name}"));
                self.health.remove(&format!("sink.{name}.delivery"));
            }
        }
        for name in &plan.sources_removed {
            self.health.remove_with_parts(&format!("source.{name}"));
            metrics().forget_source(name);
            self.not_running.remove(name);
            info!(source = %name, checkpoint = %self.store.path(name).display(), "source removed; its checkpoint stays for when it comes back");
        }
        let starting: Vec<String> = plan
            .sources_restarted
            .iter()
            .chain(&plan.sources_added)
            .cloned()
            .collect();
        match self.start(&new, fresh, &starting).await {
            Ok(()) => {
                self.health.remove("config");
                self.config = new;
                true
            }
            Err(e) => {
                error!(error = %format!("{e:#}"), "config reload failed while starting the new pipelines; going back to the previous config");
                for name in &plan.sinks_added {
                    self.health.remove(&format!("sink.{name}"));
                }
                for name in &plan.sources_added {
                    self.health.remove(&format!("source.{name}"));
                }
                // `stopping` are sources of the previous config.
                let old = std::mem::replace(&mut self.config, new);
                let restored = self.start(&old, BTreeMap::new(), &stopping).await;
                self.config = old;
                if let Err(e) = restored {
                    error!(error = %format!("{e:#}"), sources = ?stopping, "cannot restart the previous pipelines either; they stay stopped until the next reload");
                    self.not_running.extend(stopping);
                    self.health.set_unready(
                        "config",
                        format!(
                            "a reload failed and sources {} could not be restarted: {e:#}",
                            self.not_running
                                .iter()
                                .cloned()
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                    );
                }
                false
            }
        }
    }

    /// Builds the sinks of `cfg` that are not running yet and the pipelines
    /// of `sources`, then starts them; all or nothing.
    async fn start(
        &mut self,
        cfg: &Config,
        mut fresh: BTreeMap<String, Arc<dyn Sink>>,
        sources: &[String],
    ) -> anyhow::Result<()> {
        for name in cfg.sinks.keys() {
            if !self.sinks.contains_key(name) && !fresh.contains_key(name) {
                fresh.insert(
                    name.clone(),
                    build_off_runtime(cfg, name, &self.health).await?,
                );
            }
        }
        let mut all = self.sinks.clone();
        all.extend(fresh.iter().map(|(n, s)| (n.clone(), s.clone())));
        let mut built = Vec::new();
        for name in sources {
            let (c, n, sinks, store, health) = (
                cfg.clone(),
                name.clone(),
                all.clone(),
                self.store.clone(),
                self.health.clone(),
            );
            let pipeline = off_runtime(format!("sources.{name}"), move || {
                build_pipeline(&c, &n, &sinks, &store, &health)
            });
            match pipeline.await {
                Ok(p) => built.push(p),
                Err(e) => {
                    // Let go of listening sockets before anything else binds.
                    for mut p in built {
                        p.source.close().await;
                    }
                    return Err(e.context(format!("sources.{name}")));
                }
            }
        }
        self.sinks.extend(fresh);
        for p in built {
            self.spawn(p);
        }
        Ok(())
    }
}

/// [`build_running_sink`] on a blocking thread: a reopened spool (of a sink,
/// or of a `webhook_in` source) waits for the instance a reload replaces,
/// whose tasks need the runtime to let go of it.
async fn build_off_runtime(
    config: &Config,
    name: &str,
    health: &Health,
) -> anyhow::Result<Arc<dyn Sink>> {
    let (c, n, h) = (config.clone(), name.to_string(), health.clone());
    off_runtime(format!("sinks.{name}"), move || {
        build_running_sink(&c, &n, &h)
    })
    .await
}

/// Runs `build` on a blocking thread (it may wait for a spool's lock).
async fn off_runtime<T: Send + 'static>(
    what: String,
    build: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    tokio::task::spawn_blocking(build)
        .await
        .map_err(|e| anyhow::anyhow!("{what}: building failed: {e}"))?
}

/// Longest wait for sinks to close their connections at a stop or reload.
const CLOSE_MAX: Duration = Duration::from_secs(5);

/// Lets `sinks` end their connections in order (a syslog sink that sees its
/// receiver close cleanly need not resend anything at the next start),
/// within `CLOSE_MAX` and what is left until `by`.
async fn close_sinks<'a>(
    sinks: impl Iterator<Item = (&'a String, &'a Arc<dyn Sink>)>,
    by: Instant,
) {
    let within = by.saturating_duration_since(Instant::now()).min(CLOSE_MAX);
    let (names, closing): (Vec<&String>, Vec<_>) = sinks.map(|(n, s)| (n, s.close())).unzip();
    let all = futures_util::future::join_all(closing);
    if tokio::time::timeout(within, all).await.is_err() {
        warn!(sinks = ?names, timeout_s = within.as_secs_f64(), "sinks did not close their connections in time; what they could not prove delivered is sent again");
    }
}

/// Waits (a little) until nothing holds the old instance of a sink any more,
/// so its replacement never works next to it.
async fn wait_dropped(name: &str, sink: Weak<dyn Sink>) {
    let until = Instant::now() + Duration::from_secs(5);
    while sink.strong_count() > 0 {
        if Instant::now() >= until {
            warn!(sink = %name, "the previous instance of the sink is still in use; building the new one anyway");
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// WATCHDOG=1 every `WatchdogSec/2` when systemd asks for it.
struct Watchdog {
    interval: Option<tokio::time::Interval>,
}

impl Watchdog {
    fn new() -> Self {
        Watchdog {
            interval: sd_notify::watchdog_enabled().map(|d| tokio::time::interval(d / 2)),
        }
    }

    /// The next ping is due; never when the watchdog is off.
    async fn tick(&mut self) {
        match &mut self.interval {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Runs `work` (a drain, a reload) and keeps pinging meanwhile.
    async fn keep_pinging<F: std::future::Future>(&mut self, work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = self.tick() => notify(&[NotifyState::Watchdog]),
            }
        }
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

enum Signal {
    Stop(&'static str),
    Reload,
}

/// SIGTERM, SIGINT and SIGHUP, registered once at startup.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and in every
/// thread it starts afterwards (the runtime's). Called first thing by
/// `auditrelay run`: a signal that arrives while the config loads and the
/// runtime starts stays pending until [`run`] handles it, instead of the
/// default action killing the process.
pub fn hold_signals() {
    set_signal_mask(libc::SIG_BLOCK);
}

fn set_signal_mask(how: libc::c_int) {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; the calls
    // only change this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

impl Signals {
    /// Registers the handlers, then lets held signals through to this
    /// thread (the one that runs `run`), which delivers any pending one.
    fn install() -> anyhow::Result<Self> {
        let signals = Self::register()?;
        set_signal_mask(libc::SIG_UNBLOCK);
        Ok(signals)
    }

    fn register() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())
                .map_err(|e| anyhow::anyhow!("cannot handle SIGTERM: {e}"))?,
            int: signal(SignalKind::interrupt())
                .map_err(|e| anyhow::anyhow!("cannot handle SIGINT: {e}"))?,
            hup: signal(SignalKind::hangup())
                .map_err(|e| anyhow::anyhow!("cannot handle SIGHUP: {e}"))?,
        })
    }

    /// Cancel-safe: a signal that arrives while nobody waits is kept.
    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}

#[cfg(test)]
mod tests;
