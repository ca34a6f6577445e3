//! Sinks: where events go.
//!
//! A sink is a [`Sink`] implementation in one file of this directory plus one
//! arm in [`SinkKind`]. The keys every sink shares (`inputs`, `filter`,
//! `batch`, `retry`, `tls`) live in [`SinkCommon`]; a sink's own keys live in
//! its config struct next to its code.

pub mod dead_letter;
pub mod file;
pub mod kafka;
pub mod splunk_hec;
pub mod spooling;
pub mod stdout;
pub mod syslog;
pub mod webhook;

use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use figment::Figment;
use serde::Deserialize;

use crate::config::{
    extract_section, figment_problems, struct_fields, Problem, Problems, RetryConfig, TlsConfig,
};
use crate::event::Event;
use crate::health::Health;
pub use dead_letter::DeadLetters;

/// A destination that confirms what it received.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Delivers `events` (all from `source`), returning only once each one is
    /// confirmed by the destination or written to the dead-letter file.
    /// Transient failures are retried inside, with backoff, for as long as it
    /// takes. An `Err` means no progress is possible for a local reason (the
    /// dead-letter file cannot be written); the pipeline retries the call.
    /// Called concurrently for several batches.
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()>;

    /// Whether batches of a source must reach this sink in fetch order. Then
    /// the pipeline hands it one batch of a source at a time; otherwise up
    /// to `max_in_flight` batches at once (throughput over order).
    fn ordered(&self) -> bool {
        true
    }

    /// Whether the destination is reachable now, without sending an event
    /// (`validate --online`). Sinks without a cheap probe say yes.
    async fn healthcheck(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Waits until what the sink confirmed but still holds locally (a
    /// spool) has reached the destination. Called when every source has
    /// finished, before the daemon exits.
    async fn flush(&self) {}

    /// Ends the sink's connections in order once nothing delivers through
    /// it any more: at a stop, and when a reload drops or replaces it. The
    /// caller bounds how long it may take (a cut-off close must leave
    /// nothing worse than an abrupt one).
    async fn close(&self) {}
}

/// What a sink is given when it is built.
pub struct SinkContext {
    pub name: String,
    pub state_dir: PathBuf,
    pub health: Health,
    pub dead_letters: DeadLetters,
}

/// Keys shared by every sink type.
#[derive(Clone, Debug, Deserialize)]
pub struct SinkCommon {
    /// Names of the sources whose events this sink receives.
    pub inputs: Vec<String>,
    #[serde(default)]
    pub filter: FilterConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    /// Cap of this sink's dead-letter file; when full the sink stops
    /// confirming (nothing is dropped) until it is replayed or moved.
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: u64,
    /// What the sources feeding this sink do while it does not confirm:
    /// wait for it (`block`), or park its batches on disk (`spool`).
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// How long a delivery may go unconfirmed before its batch is spooled.
    #[serde(default = "default_spool_after", with = "humantime_serde")]
    pub spool_after: Duration,
    /// Cap of the on-disk spool; when full the sources wait, as with `block`.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
}

fn default_dead_letter_max_bytes() -> u64 {
    dead_letter::DEFAULT_MAX_BYTES
}

fn default_spool_after() -> Duration {
    Duration::from_secs(30)
}

fn default_spool_max_bytes() -> u64 {
    1 << 30
}

/// `sinks.NAME.on_unavailable`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// The source pauses and its checkpoint waits for this sink: nothing
    /// leaves the source's API until every sink has it.
    #[default]
    Block,
    /// The sink's batches go to `state_dir/sink_spool/NAME/` and are
    /// delivered from there when it is back; the other sinks keep flowing.
    Spool,
}

/// Include/exclude on the event type, with `*` wildcards (`auth.*`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl FilterConfig {
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether an event of this type goes to the sink. Events without a type
    /// pass only when there is no include list.
    pub fn accepts(&self, kind: Option<&str>) -> bool {
        let included = self.include.is_empty()
            || kind.is_some_and(|k| self.include.iter().any(|p| glob(p, k)));
        let excluded = kind.is_some_and(|k| self.exclude.iter().any(|p| glob(p, k)));
        included && !excluded
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// How a sink cuts a page into requests.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_events: Option<usize>,
    pub max_bytes: Option<usize>,
    /// Accepted for every sink; pages are batches already, so this only
    /// bounds how long a sink that merges pages may wait.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl BatchConfig {
    /// Cuts `events` into runs of at most `max_events` events and about
    /// `max_bytes` bytes (a single larger event is a run of its own).
    pub fn chunks<'a>(
        &self,
        events: &'a [Event],
        default_events: usize,
        default_bytes: usize,
    ) -> Vec<&'a [Event]> {
        let max_events = self.max_events.unwrap_or(default_events).max(1);
        let max_bytes = self.max_bytes.unwrap_or(default_bytes).max(1);
        let mut out = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, e) in events.iter().enumerate() {
            let size = e.raw.len() + 1;
            if i > start && (i - start >= max_events || bytes + size > max_bytes) {
                out.push(&events[start..i]);
                start = i;
                bytes = 0;
            }
            bytes += size;
        }
        if start < events.len() {
            out.push(&events[start..]);
        }
        out
    }

    fn validate(&self, path: &str, problems: &mut Problems) {
        if self.max_events == Some(0) {
            problems.push(format!("{path}.batch.max_events"), "must be at least 1");
        }
        if self.max_bytes == Some(0) {
            problems.push(format!("{path}.batch.max_bytes"), "must be at least 1");
        }
    }
}

/// `[sinks.NAME]`: the shared keys plus the keys of its type.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub common: SinkCommon,
    pub kind: SinkKind,
}

#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // built once at startup
pub enum SinkKind {
    Stdout(stdout::StdoutConfig),
    File(file::FileConfig),
    Kafka(kafka::KafkaConfig),
    Webhook(webhook::WebhookConfig),
    SplunkHec(splunk_hec::SplunkHecConfig),
    Syslog(syslog::SyslogConfig),
}

/// Sink types of SPEC §3 that this build does not provide yet.
const PLANNED: &[&str] = &[];
const AVAILABLE: &str = "stdout, file, webhook, kafka, splunk_hec, syslog";

impl SinkConfig {
    pub fn from_figment(fig: &Figment, path: &str) -> Result<Self, Vec<Problem>> {
        let kind: String = fig.extract_inner(&format!("{path}.type")).map_err(|_| {
            vec![Problem {
                path: format!("{path}.type"),
                message: format!("required key is missing or not a string (one of: {AVAILABLE})"),
            }]
        })?;
        let common_keys = struct_fields::<SinkCommon>();
        let type_key: &[&str] = &["type"];
        let kind_result = match kind.as_str() {
            "stdout" => extract_section(fig, path, &[common_keys, type_key]).map(SinkKind::Stdout),
            "file" => extract_section(fig, path, &[common_keys, type_key]).map(SinkKind::File),
            "kafka" => extract_section(fig, path, &[common_keys, type_key]).map(SinkKind::Kafka),
            "webhook" => extract_section(fig, path, &[common_keys, type_key]).map(SinkKind::Webhook),
            "splunk_hec" => {
                extract_section(fig, path, &[common_keys, type_key]).map(SinkKind::SplunkHec)
            }
            "syslog" => extract_section(fig, path, &[common_keys, type_key]).map(SinkKind::Syslog),
            other if PLANNED.contains(&other) => Err(vec![Problem {
                path: format!("{path}.type"),
                message: format!("sink type \"{other}\" is not available in this version (available: {AVAILABLE})"),
            }]),
            other => Err(vec![Problem {
                path: format!("{path}.type"),
                message: format!("unknown sink type \"{other}\" (available: {AVAILABLE})"),
            }]),
        };
        // Shared keys are read without the unknown-key check: the kind's
        // section read above already reported every unknown key once.
        let common = fig.extract_inner::<SinkCommon>(path).map_err(|e| {
            let mut list = figment_problems(e, path);
            for p in &mut list {
                if p.path.ends_with(".inputs") && p.message.starts_with("required key") {
                    p.message =
                        "required key is missing (the names of the sources this sink takes)".into();
                }
            }
            list
        });
        match (common, kind_result) {
            (Ok(common), Ok(kind)) => Ok(SinkConfig { common, kind }),
            (c, k) => {
                let mut all = Vec::new();
                if let Err(e) = k {
                    all.extend(e);
                }
                if let Err(e) = c {
                    for p in e {
                        if !all.contains(&p) {
                            all.push(p);
                        }
                    }
                }
                Err(all)
            }
        }
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if self.common.inputs.is_empty() {
            problems.push(
                format!("{path}.inputs"),
                "lists no source; name at least one",
            );
        }
        self.common.batch.validate(path, problems);
        self.common.retry.validate(path, problems);
        self.common.tls.validate(path, problems);
        if self.common.on_unavailable == OnUnavailable::Spool {
            if self.common.spool_max_bytes < spooling::MIN_MAX_BYTES {
                problems.push(
                    format!("{path}.spool_max_bytes"),
                    format!(
                        "{} bytes is too small for a spool; use at least {} (16 MiB)",
                        self.common.spool_max_bytes,
                        spooling::MIN_MAX_BYTES
                    ),
                );
            }
            if self.common.spool_after.is_zero() {
                problems.push(
                    format!("{path}.spool_after"),
                    "must be longer than 0s (a delivery needs some time to confirm)",
                );
            }
        }
        match &self.kind {
            SinkKind::Stdout(_) => {}
            SinkKind::File(c) => c.validate(path, problems),
            SinkKind::Kafka(c) => c.validate(path, problems),
            SinkKind::Webhook(c) => c.validate(path, problems),
            SinkKind::SplunkHec(c) => c.validate(path, problems),
            SinkKind::Syslog(c) => c.validate(path, &self.common, problems),
        }
    }

    pub fn build(&self, ctx: SinkContext) -> anyhow::Result<Box<dyn Sink>> {
        Ok(match &self.kind {
            SinkKind::Stdout(c) => Box::new(stdout::StdoutSink::new(c.clone(), &self.common, ctx)),
            SinkKind::File(c) => Box::new(file::FileSink::new(c.clone(), &self.common, ctx)?),
            SinkKind::Kafka(c) => Box::new(kafka::KafkaSink::new(c.clone(), &self.common, ctx)?),
            SinkKind::Webhook(c) => {
                Box::new(webhook::WebhookSink::new(c.clone(), &self.common, ctx)?)
            }
            SinkKind::SplunkHec(c) => Box::new(splunk_hec::SplunkHecSink::new(
                c.clone(),
                &self.common,
                ctx,
            )?),
            SinkKind::Syslog(c) => Box::new(syslog::SyslogSink::new(c.clone(), &self.common, ctx)?),
        })
    }
}

impl SinkKind {
    pub fn kind(&self) -> &'static str {
        match self {
            SinkKind::Stdout(_) => "stdout",
            SinkKind::File(_) => "file",
            SinkKind::Kafka(_) => "kafka",
            SinkKind::Webhook(_) => "webhook",
            SinkKind::SplunkHec(_) => "splunk_hec",
            SinkKind::Syslog(_) => "syslog",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn globs() {
        assert!(glob("auth.*", "auth.login"));
        assert!(!glob("auth.*", "user.auth.login"));
        assert!(glob("*Delete*", "/api.UserService/DeleteUser"));
        assert!(glob("a*b*c", "a-b-c"));
        assert!(!glob("a*b*c", "a-c-b"));
        assert!(glob("exact", "exact"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn filter_include_exclude() {
        let f = FilterConfig {
            include: vec!["auth.*".into()],
            exclude: vec!["auth.debug".into()],
        };
        assert!(f.accepts(Some("auth.login")));
        assert!(!f.accepts(Some("auth.debug")));
        assert!(!f.accepts(None));
        assert!(FilterConfig::default().accepts(None));
    }

    #[test]
    fn chunks_respect_both_limits() {
        let ev = |n: usize| Event {
            raw: Bytes::from(vec![b'x'; n]),
            id: None,
            time: None,
            kind: None,
        };
        let events: Vec<Event> = vec![ev(10), ev(10), ev(10), ev(100), ev(10)];
        let b = BatchConfig {
            max_events: Some(2),
            max_bytes: Some(40),
            timeout: None,
        };
        let sizes: Vec<usize> = b.chunks(&events, 0, 0).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![2, 1, 1, 1]);
        assert!(b.chunks(&[], 1, 1).is_empty());
    }
}
