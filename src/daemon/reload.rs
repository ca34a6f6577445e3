//! SIGHUP: re-reads the config and applies the plan: new sinks first, then
//! the pipelines that change are drained, old sinks closed, and the new
//! pipelines started; on failure the previous config runs again.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use sd_notify::NotifyState;
use tracing::{error, info, warn};

use super::build::{build_pipeline, build_running_sink};
use super::plan::Plan;
use super::running::{close_sinks, Running};
use super::systemd::notify;
use super::unix_now;
use crate::config_file::{self, Config};
use crate::health::Health;
use crate::metrics::metrics;
use crate::sink::Sink;

impl Running {
    /// SIGHUP: re-reads and validates the config file (and the environment)
    /// like `validate`; a config with problems is logged and changes nothing.
    pub(super) async fn reload(&mut self) {
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
        let loaded = tokio::task::spawn_blocking(move || config_file::load(&file)).await;
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
    pub(super) async fn apply(&mut self, mut new: Config) -> bool {
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
        let stopping = plan.stopping();
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
        let starting = plan.starting();
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
    pub(super) async fn start(
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
