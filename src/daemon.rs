//! Wiring: builds sources, sinks and routes from a config, runs a pipeline
//! per source, and shuts down cleanly on SIGTERM/SIGINT.

use std::collections::BTreeMap;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use crate::checkpoint::CheckpointStore;
use crate::config::{Config, RetryConfig};
use crate::health::Health;
use crate::pipeline::{Route, SourcePipeline};
use crate::sink::{DeadLetters, Sink, SinkContext};
use crate::source::SourceContext;

/// Builds everything; any error here is a startup error (exit non-zero).
pub fn build(config: &Config, health: &Health) -> anyhow::Result<Vec<SourcePipeline>> {
    std::fs::create_dir_all(&config.state_dir).map_err(|e| {
        anyhow::anyhow!(
            "state_dir: cannot create {}: {e}",
            config.state_dir.display()
        )
    })?;
    let store = CheckpointStore::open(&config.state_dir).map_err(|e| {
        anyhow::anyhow!("state_dir: cannot use {}: {e}", config.state_dir.display())
    })?;
    let mut sinks: BTreeMap<&str, Arc<dyn Sink>> = BTreeMap::new();
    for (name, cfg) in &config.sinks {
        let ctx = SinkContext {
            name: name.clone(),
            state_dir: config.state_dir.clone(),
            health: health.clone(),
            dead_letters: DeadLetters::new(&config.state_dir, name),
        };
        sinks.insert(name, Arc::from(cfg.build(ctx)?));
    }
    let mut pipelines = Vec::new();
    for (name, cfg) in &config.sources {
        let checkpoint = store.load(name)?;
        let source = cfg.build(SourceContext {
            name: name.clone(),
            checkpoint,
            health: health.clone(),
        })?;
        let routes = config
            .sinks
            .iter()
            .filter(|(_, s)| s.common.inputs.iter().any(|i| i == name))
            .map(|(sink_name, s)| Route {
                sink_name: sink_name.as_str().into(),
                sink: sinks[sink_name.as_str()].clone(),
                filter: s.common.filter.clone(),
            })
            .collect();
        pipelines.push(SourcePipeline {
            name: name.as_str().into(),
            source,
            routes,
            store: store.clone(),
            max_in_flight: config.pipeline.max_in_flight,
            retry: RetryConfig::default(),
        });
    }
    Ok(pipelines)
}

/// Runs the daemon until a signal, or until every source is finished.
pub async fn run(config: Config) -> anyhow::Result<()> {
    let health = Health::default();
    let pipelines = build(&config, &health)?;
    let stop_server = CancellationToken::new();
    let (addr, server) =
        crate::server::start(config.listen, health.clone(), stop_server.clone()).await?;
    info!(listen = %addr, summary = %config.summary(), "auditrelay started");

    let stop = CancellationToken::new();
    let mut tasks = tokio::task::JoinSet::new();
    for p in pipelines {
        tasks.spawn(p.run(stop.clone()));
    }
    let all_done = async { while tasks.join_next().await.is_some() {} };
    tokio::pin!(all_done);
    tokio::select! {
        _ = &mut all_done => info!("every source finished"),
        signal = shutdown_signal() => {
            info!(signal, timeout_s = config.shutdown_timeout.as_secs_f64(), "stopping: no new fetches; draining batches in flight");
            stop.cancel();
            if tokio::time::timeout(config.shutdown_timeout, &mut all_done).await.is_err() {
                warn!("shutdown_timeout reached; unconfirmed batches will be sent again at the next start");
            }
        }
    }
    stop_server.cancel();
    if let Err(e) = server.await {
        error!(error = %e, "server task failed");
    }
    info!("auditrelay stopped");
    Ok(())
}

async fn shutdown_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let term = signal(SignalKind::terminate());
    let int = signal(SignalKind::interrupt());
    match (term, int) {
        (Ok(mut term), Ok(mut int)) => tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        },
        _ => {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}
