//! The config file: figment layers (defaults ← TOML file ← `AUDITRELAY_…`
//! environment, nested with `__`), in the shape of SPEC §6.
//!
//! Loading never stops at the first mistake: every source and sink section is
//! read on its own and every problem is reported with its key path, because an
//! operator fixing a config wants the whole list at once.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::Figment;
use serde::de::IgnoredAny;
use serde::Deserialize;

use crate::config::{extract_section, figment_problems, Problem, Problems, RetryConfig};
use crate::sink::SinkConfig;
use crate::source::SourceConfig;

/// Default config path when `--config` is not given.
pub const DEFAULT_CONFIG_PATH: &str = "/etc/auditrelay/auditrelay.toml";

/// Every problem of a config that cannot be used.
#[derive(Debug)]
pub struct ConfigError {
    pub file: PathBuf,
    pub problems: Vec<Problem>,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.problems.len();
        writeln!(
            f,
            "config {} has {n} problem{}:",
            self.file.display(),
            if n == 1 { "" } else { "s" }
        )?;
        for p in &self.problems {
            writeln!(f, "  {p}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    Json,
    #[default]
    Pretty,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    #[serde(default = "default_listen")]
    pub listen: String,
    /// Also write the metrics to this file (node_exporter's textfile
    /// collector), for hosts where no scrape port may be opened.
    pub metrics_textfile: Option<PathBuf>,
    #[serde(default = "crate::config::secs::<15>", with = "humantime_serde")]
    pub metrics_textfile_interval: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: default_listen(),
            metrics_textfile: None,
            metrics_textfile_interval: crate::config::secs::<15>(),
        }
    }
}

fn default_listen() -> String {
    "127.0.0.1:9464".to_string()
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PipelineConfig {
    /// Pages of one source that may be on their way to the sinks at once.
    /// Memory is bounded by `max_in_flight_bytes`; this count only caps the
    /// bookkeeping, so it is high enough that confirmation latency (HEC
    /// acks) does not become a throughput ceiling.
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Bytes of events (raw JSON) of one source on their way to the sinks
    /// at once: the source fetches ahead only while less is in flight, so
    /// memory stays bounded whatever the page size. One page larger than
    /// the budget still goes alone.
    #[serde(default = "default_max_in_flight_bytes")]
    pub max_in_flight_bytes: u64,
    /// Backoff for local failures: checkpoint writes, a sink that cannot
    /// make progress.
    #[serde(default)]
    pub retry: RetryConfig,
}

impl Default for PipelineConfig {
    fn default() -> Self {
        PipelineConfig {
            max_in_flight: default_max_in_flight(),
            max_in_flight_bytes: default_max_in_flight_bytes(),
            retry: RetryConfig::default(),
        }
    }
}

fn default_max_in_flight() -> usize {
    64
}

/// 32 MiB of events: a 10,000-event page run (~1.2 KiB an event, ~12 MiB
/// a page) stays under 64 MiB of RSS with the copies sinks make.
fn default_max_in_flight_bytes() -> u64 {
    32 << 20
}

/// The least `pipeline.max_in_flight_bytes`: below it every page waits for
/// the one before, which is what `max_in_flight = 1` is for.
pub const MIN_IN_FLIGHT_BYTES: u64 = 64 << 10;

/// The whole daemon configuration, validated.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub state_dir: PathBuf,
    pub listen: SocketAddr,
    pub metrics_textfile: Option<(PathBuf, Duration)>,
    pub log_format: LogFormat,
    pub log_level: String,
    pub shutdown_timeout: Duration,
    pub pipeline: PipelineConfig,
    pub sources: BTreeMap<String, SourceConfig>,
    pub sinks: BTreeMap<String, SinkConfig>,
    /// `[cluster]`: sources shared with other instances (None = all here).
    pub cluster: Option<crate::cluster::ClusterConfig>,
    /// Each section as written (file and environment merged), to tell on a
    /// reload which sources and sinks changed.
    pub sections: Sections,
}

/// The raw value of every `[sources.NAME]` and `[sinks.NAME]` section. Sink
/// sections leave out `inputs`: which sources feed a sink is a property of
/// the routes, and changing it needs no new sink.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Sections {
    pub sources: BTreeMap<String, figment::value::Value>,
    pub sinks: BTreeMap<String, figment::value::Value>,
}

impl Sections {
    fn read(
        fig: &Figment,
        sources: &BTreeMap<String, SourceConfig>,
        sinks: &BTreeMap<String, SinkConfig>,
    ) -> Self {
        let raw = |path: String, drop_key: Option<&str>| {
            let mut value = fig.find_value(&path).ok();
            if let (Some(figment::value::Value::Dict(_, dict)), Some(key)) = (&mut value, drop_key)
            {
                dict.remove(key);
            }
            value.unwrap_or_else(|| figment::value::Value::from(path))
        };
        Sections {
            sources: sources
                .keys()
                .map(|n| (n.clone(), raw(format!("sources.{n}"), None)))
                .collect(),
            sinks: sinks
                .keys()
                .map(|n| (n.clone(), raw(format!("sinks.{n}"), Some("inputs"))))
                .collect(),
        }
    }
}

/// Top-level keys; sources and sinks are read one by one afterwards.
#[derive(Deserialize)]
pub struct TopLevel {
    #[serde(default = "default_state_dir")]
    state_dir: PathBuf,
    #[serde(default)]
    server: ServerConfig,
    #[serde(default)]
    log_format: LogFormat,
    #[serde(default = "default_log_level")]
    log_level: String,
    #[serde(default = "crate::config::secs::<30>", with = "humantime_serde")]
    shutdown_timeout: Duration,
    #[serde(default)]
    pipeline: PipelineConfig,
    #[serde(default)]
    sources: BTreeMap<String, IgnoredAny>,
    #[serde(default)]
    sinks: BTreeMap<String, IgnoredAny>,
    #[serde(default)]
    cluster: Option<IgnoredAny>,
}

fn default_state_dir() -> PathBuf {
    PathBuf::from("/var/lib/auditrelay")
}

fn default_log_level() -> String {
    "info".to_string()
}

/// The figment layers for a config file.
pub fn figment(path: &Path) -> Figment {
    Figment::new()
        .merge(Toml::file_exact(path))
        .merge(Env::prefixed("AUDITRELAY_").split("__"))
}

/// Loads, parses and validates a config file with its environment overrides.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let fail = |problems: Vec<Problem>| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    if let Err(e) = std::fs::metadata(path) {
        return Err(fail(vec![Problem {
            path: String::new(),
            message: format!("cannot read config file {}: {e}", path.display()),
        }]));
    }
    from_figment(figment(path), path)
}

/// Parses and validates config text (no environment layer): for tests and
/// fuzzing of the loader.
pub fn load_str(text: &str) -> Result<Config, ConfigError> {
    from_figment(
        Figment::new().merge(Toml::string(text)),
        Path::new("<string>"),
    )
}

fn from_figment(fig: Figment, path: &Path) -> Result<Config, ConfigError> {
    let fail = |problems: Vec<Problem>| ConfigError {
        file: path.to_path_buf(),
        problems,
    };
    // A file that does not parse has no sections to check further.
    if let Err(e) = fig.extract::<figment::value::Dict>() {
        return Err(fail(figment_problems(e, "")));
    }
    let mut problems = Problems::default();
    let top: TopLevel = match extract_section(&fig, "", &[]) {
        Ok(t) => t,
        Err(list) => {
            problems.extend(list);
            // Keep going with whatever sections can be read, so one bad
            // top-level key does not hide the problems of every sink.
            let names = |key: &str| {
                fig.extract_inner::<BTreeMap<String, IgnoredAny>>(key)
                    .unwrap_or_default()
            };
            TopLevel {
                state_dir: default_state_dir(),
                server: ServerConfig::default(),
                log_format: LogFormat::default(),
                log_level: default_log_level(),
                shutdown_timeout: crate::config::secs::<30>(),
                pipeline: PipelineConfig::default(),
                sources: names("sources"),
                sinks: names("sinks"),
                cluster: fig.find_value("cluster").ok().map(|_| IgnoredAny),
            }
        }
    };
    let listen = match top.server.listen.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(e) => {
            problems.push("server.listen", format!("not an address:port: {e}"));
            None
        }
    };
    if top.server.metrics_textfile_interval.is_zero() {
        problems.push("server.metrics_textfile_interval", "must be greater than 0");
    }
    if top.pipeline.max_in_flight == 0 {
        problems.push("pipeline.max_in_flight", "must be at least 1");
    }
    if top.pipeline.max_in_flight_bytes < MIN_IN_FLIGHT_BYTES {
        problems.push(
            "pipeline.max_in_flight_bytes",
            format!(
                "{} bytes is too small; use at least {MIN_IN_FLIGHT_BYTES} (64 KiB)",
                top.pipeline.max_in_flight_bytes
            ),
        );
    }
    top.pipeline.retry.validate("pipeline", &mut problems);
    if top.shutdown_timeout.is_zero() {
        problems.push("shutdown_timeout", "must be greater than 0");
    }
    if top.sources.is_empty() {
        problems.push(
            "sources",
            "no source configured (add a [sources.NAME] section)",
        );
    }
    if top.sinks.is_empty() {
        problems.push("sinks", "no sink configured (add a [sinks.NAME] section)");
    }

    let sources = read_sections(
        &fig,
        "sources",
        &top.sources,
        &mut problems,
        SourceConfig::from_figment,
    );
    for (name, cfg) in &sources {
        cfg.validate(&format!("sources.{name}"), &mut problems);
    }
    let sinks = read_sections(
        &fig,
        "sinks",
        &top.sinks,
        &mut problems,
        SinkConfig::from_figment,
    );
    for (name, cfg) in &sinks {
        let path = format!("sinks.{name}");
        cfg.validate(&path, &mut problems);
        for (i, input) in cfg.common.inputs.iter().enumerate() {
            if !top.sources.contains_key(input) {
                let known: Vec<&str> = top.sources.keys().map(String::as_str).collect();
                let known = if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                };
                problems.push(
                    format!("{path}.inputs[{i}]"),
                    format!("\"{input}\" names no source (sources: {known})"),
                );
            }
        }
    }
    for name in top.sources.keys() {
        if !sinks.values().any(|s| s.common.inputs.contains(name)) && !sinks.is_empty() {
            problems.push(
                format!("sources.{name}"),
                "no sink takes this source as input; its events would go nowhere",
            );
        }
    }

    let cluster = crate::cluster::read_config(&fig, top.cluster.is_some(), &mut problems);
    if cluster.is_some() {
        crate::cluster::check_shareable(&sources, &sinks, &mut problems);
    }

    if !problems.is_empty() {
        return Err(fail(problems.into_vec()));
    }
    let sections = Sections::read(&fig, &sources, &sinks);
    Ok(Config {
        sections,
        file: path.to_path_buf(),
        state_dir: top.state_dir,
        listen: listen.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9464))),
        metrics_textfile: top
            .server
            .metrics_textfile
            .map(|p| (p, top.server.metrics_textfile_interval)),
        log_format: top.log_format,
        log_level: top.log_level,
        shutdown_timeout: top.shutdown_timeout,
        pipeline: top.pipeline,
        sources,
        sinks,
        cluster,
    })
}

impl Config {
    /// One line for `validate` and the startup log.
    pub fn summary(&self) -> String {
        let sources: Vec<String> = self
            .sources
            .iter()
            .map(|(n, s)| format!("{n} ({})", s.kind()))
            .collect();
        let sinks: Vec<String> = self
            .sinks
            .iter()
            .map(|(n, s)| format!("{n} ({})", s.kind.kind()))
            .collect();
        format!(
            "{} source{} [{}] -> {} sink{} [{}], state_dir {}",
            sources.len(),
            if sources.len() == 1 { "" } else { "s" },
            sources.join(", "),
            sinks.len(),
            if sinks.len() == 1 { "" } else { "s" },
            sinks.join(", "),
            self.state_dir.display()
        )
    }
}

/// Every `[table.NAME]` section with its name checked, read by `read`;
/// the ones that could be read, by name.
fn read_sections<T, V>(
    fig: &Figment,
    table: &str,
    names: &BTreeMap<String, V>,
    problems: &mut Problems,
    read: fn(&Figment, &str) -> Result<T, Vec<Problem>>,
) -> BTreeMap<String, T> {
    let mut sections = BTreeMap::new();
    for name in names.keys() {
        let path = format!("{table}.{name}");
        check_name(name, &path, problems);
        match read(fig, &path) {
            Ok(cfg) => {
                sections.insert(name.clone(), cfg);
            }
            Err(list) => problems.extend(list),
        }
    }
    sections
}

/// Component names become file names and metric labels: keep them plain.
fn check_name(name: &str, path: &str, problems: &mut Problems) {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
    if !ok {
        problems.push(
            path,
            "name must be 1-64 characters of letters, digits, '_' or '-'",
        );
    }
}
