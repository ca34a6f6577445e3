//! Builds sources, sinks and routes from a config: at startup, for one-shot
//! commands, and for what a reload adds.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::checkpoint::{CheckpointStore, StateLock};
use crate::config_file::Config;
use crate::health::Health;
use crate::metrics::metrics;
use crate::pipeline::{RequestSize, Route, SourcePipeline};
use crate::sink::shaping::{Shaper, ShapingSink};
use crate::sink::spooling::{spool_dir, SpoolingSink};
use crate::sink::{DeadLetters, OnUnavailable, Sink, SinkContext};
use crate::source::SourceContext;

/// Everything a running daemon is made of.
pub struct Daemon {
    pub pipelines: Vec<SourcePipeline>,
    pub sinks: BTreeMap<String, Arc<dyn Sink>>,
    /// The checkpoint store the pipelines commit to.
    pub store: CheckpointStore,
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
/// `on_unavailable = "spool"` (one-shot commands talk to the sink itself),
/// and behind its event shaping when a shaping key is set (so the spool and
/// the dead-letter file hold shaped, redacted events).
/// Must run inside the runtime: the spool starts its drainer.
pub fn build_running_sink(
    config: &Config,
    name: &str,
    health: &Health,
) -> anyhow::Result<Arc<dyn Sink>> {
    let sink = build_spooled_sink(config, name, health)?;
    with_shaping(config, name, sink, source_kinds(config))
}

/// Each source's type by name, for the OCSF mapping of its events.
pub fn source_kinds(config: &Config) -> BTreeMap<String, String> {
    config
        .sources
        .iter()
        .map(|(n, s)| (n.clone(), s.kind().to_string()))
        .collect()
}

/// `sink` behind the event shaping of sink `name`, when it has any.
pub fn with_shaping(
    config: &Config,
    name: &str,
    sink: Arc<dyn Sink>,
    source_kinds: BTreeMap<String, String>,
) -> anyhow::Result<Arc<dyn Sink>> {
    let Some(cfg) = config.sinks.get(name) else {
        return Ok(sink);
    };
    Ok(
        match Shaper::new(
            &cfg.common,
            &format!("sinks.{name}"),
            Arc::new(source_kinds),
        )? {
            Some(shaper) => Arc::new(ShapingSink::new(name, sink, shaper)),
            None => sink,
        },
    )
}

fn build_spooled_sink(
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
                request: RequestSize::of(s),
            });
        }
    }
    Ok(SourcePipeline {
        name: name.into(),
        source,
        routes,
        store: store.clone(),
        max_in_flight: config.pipeline.max_in_flight,
        max_in_flight_bytes: config.pipeline.max_in_flight_bytes,
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
    // Under [cluster] a pipeline starts when its source is acquired.
    for name in config.sources.keys().filter(|_| config.cluster.is_none()) {
        pipelines.push(build_pipeline(config, name, &sinks, &store, health)?);
    }
    Ok(Daemon {
        pipelines,
        sinks,
        store,
        lock,
    })
}

fn open_store(config: &Config) -> anyhow::Result<CheckpointStore> {
    CheckpointStore::open(&config.state_dir)
        .map_err(|e| anyhow::anyhow!("state_dir: cannot use {}: {e}", config.state_dir.display()))
}
