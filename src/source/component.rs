//! What a source is: the [`Source`] stream the pipeline pulls from, and the
//! [`SourceType`] its config implements to be registered in one line.

use std::fmt::Debug;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use figment::Figment;
use serde::de::DeserializeOwned;

use crate::config::{extract_section, Problem, Problems};
use crate::event::Batch;
use crate::health::Health;

/// A stream of pages from one API.
#[async_trait]
pub trait Source: Send {
    /// The next page of events, waiting as long as needed (poll interval when
    /// caught up, backoff on failures, rate-limit pauses). `None` means the
    /// source is finished (a bounded run). Must be cancel-safe: dropping the
    /// future before it completes loses no state.
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>>;

    /// Releases what the source holds outside its cursor (a listening
    /// socket) before a replacement is built by a reload. Dropping does the
    /// same, but not necessarily before this returns.
    async fn close(&mut self) {}
}

/// What a source is given when it is built.
pub struct SourceContext {
    pub name: String,
    /// The state of the last committed batch, if any.
    pub checkpoint: Option<Vec<u8>>,
    pub health: Health,
    /// The daemon's state directory, for state that is not a cursor (a
    /// rate-limit pause that must survive a restart).
    pub state_dir: std::path::PathBuf,
}

impl SourceContext {
    /// The source's config key path (`sources.NAME`), for error messages.
    pub fn key_path(&self) -> String {
        format!("sources.{}", self.name)
    }
}

/// A source's stored checkpoint (`None` without one), or an error that
/// says how to reset it. `what` names what it should be ("a Veza cursor").
pub fn read_checkpoint<T: DeserializeOwned>(
    name: &str,
    bytes: Option<&[u8]>,
    what: &str,
) -> anyhow::Result<Option<T>> {
    bytes
        .map(|b| {
            serde_json::from_slice(b).map_err(|e| {
                anyhow::anyhow!(
                    "checkpoint of source {name} is not {what} ({e}); reset it with \
                     `auditrelay checkpoint reset --source {name}`"
                )
            })
        })
        .transpose()
}

/// Where `auditrelay checkpoint set` puts a source: `--token` or `--time`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ManualPosition {
    Token(String),
    Time(DateTime<Utc>),
}

impl ManualPosition {
    pub fn token(&self) -> Option<&str> {
        match self {
            ManualPosition::Token(t) => Some(t),
            ManualPosition::Time(_) => None,
        }
    }

    pub fn time(&self) -> Option<DateTime<Utc>> {
        match self {
            ManualPosition::Token(_) => None,
            ManualPosition::Time(t) => Some(*t),
        }
    }
}

/// The config of one source type (`[sources.NAME]` with `type = KIND`).
/// Implementing it and adding one line to `register_sources!` in
/// `source/mod.rs` is all a new source needs outside its own file.
pub trait SourceType: DeserializeOwned + Clone + Debug + Send + Sync + 'static {
    /// The value of `type` that selects this source.
    const KIND: &'static str;

    /// Reads the section at `path` (`sources.NAME`), reporting every
    /// unknown key and bad value with its key path. Override it when the
    /// section is read as more than one struct.
    fn read(fig: &Figment, path: &str) -> Result<Self, Vec<Problem>> {
        extract_section(fig, path, &[&["type"]])
    }

    /// Reports the values serde accepts but this source cannot use.
    fn validate(&self, path: &str, problems: &mut Problems);

    /// The state `auditrelay checkpoint set` writes for this source type.
    fn manual_checkpoint(&self, at: ManualPosition) -> Result<Vec<u8>, String>;

    /// The running source, resuming from `ctx.checkpoint`.
    fn build(&self, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>>;
}

/// The methods of [`SourceType`] that need no `Self` type, callable on a
/// config of any registered type (`SourceConfig::component()`).
pub trait AnySource {
    fn validate(&self, path: &str, problems: &mut Problems);
    fn manual_checkpoint(&self, at: ManualPosition) -> Result<Vec<u8>, String>;
    fn build(&self, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>>;
}

impl<T: SourceType> AnySource for T {
    fn validate(&self, path: &str, problems: &mut Problems) {
        SourceType::validate(self, path, problems)
    }
    fn manual_checkpoint(&self, at: ManualPosition) -> Result<Vec<u8>, String> {
        SourceType::manual_checkpoint(self, at)
    }
    fn build(&self, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        SourceType::build(self, ctx)
    }
}
