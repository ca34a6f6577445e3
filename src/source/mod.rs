//! Sources: where events come from.
//!
//! A source is a [`Source`] implementation in one file of this directory plus
//! one arm in [`SourceConfig`]. It owns its cursor: each batch it returns
//! carries the serialized state to persist once that batch is delivered, and
//! it is built from the last persisted state.

pub mod certifyclouds;
pub mod demo;
pub mod gap;
pub mod http_pull;
pub mod pull;
pub mod quickztna;
pub mod veza;
pub mod veza_list;
pub mod webhook_in;

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use figment::Figment;
use serde::Deserialize;

use crate::config::{extract_section, Problem, Problems};
use crate::event::{Batch, FieldPath};
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

/// `[sources.NAME]`, by `type`.
#[derive(Clone, Debug)]
#[allow(clippy::large_enum_variant)] // built once at startup
pub enum SourceConfig {
    Veza(veza::VezaConfig),
    VezaList(veza_list::VezaListConfig),
    Quickztna(quickztna::QuickztnaConfig),
    Certifyclouds(certifyclouds::CertifycloudsConfig),
    HttpPull(http_pull::HttpPullConfig),
    WebhookIn(webhook_in::WebhookInConfig),
    Demo(demo::DemoConfig),
}

/// Source types this build provides, for error messages.
const AVAILABLE: &str = "veza, veza_list, quickztna, certifyclouds, http_pull, webhook_in, demo";

impl SourceConfig {
    pub fn from_figment(fig: &Figment, path: &str) -> Result<Self, Vec<Problem>> {
        let kind: String = fig.extract_inner(&format!("{path}.type")).map_err(|_| {
            vec![Problem {
                path: format!("{path}.type"),
                message: format!("required key is missing or not a string (one of: {AVAILABLE})"),
            }]
        })?;
        let shared: &[&[&str]] = &[&["type"]];
        match kind.as_str() {
            "veza" => veza::VezaConfig::from_figment(fig, path).map(SourceConfig::Veza),
            "veza_list" => {
                veza_list::VezaListConfig::from_figment(fig, path).map(SourceConfig::VezaList)
            }
            "quickztna" => {
                quickztna::QuickztnaConfig::from_figment(fig, path).map(SourceConfig::Quickztna)
            }
            "certifyclouds" => certifyclouds::CertifycloudsConfig::from_figment(fig, path)
                .map(SourceConfig::Certifyclouds),
            "http_pull" => {
                http_pull::HttpPullConfig::from_figment(fig, path).map(SourceConfig::HttpPull)
            }
            "webhook_in" => extract_section(fig, path, shared).map(SourceConfig::WebhookIn),
            "demo" => extract_section(fig, path, shared).map(SourceConfig::Demo),
            other => Err(vec![Problem {
                path: format!("{path}.type"),
                message: format!("unknown source type \"{other}\" (available: {AVAILABLE})"),
            }]),
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            SourceConfig::Veza(_) => "veza",
            SourceConfig::VezaList(_) => "veza_list",
            SourceConfig::Quickztna(_) => "quickztna",
            SourceConfig::Certifyclouds(_) => "certifyclouds",
            SourceConfig::HttpPull(_) => "http_pull",
            SourceConfig::WebhookIn(_) => "webhook_in",
            SourceConfig::Demo(_) => "demo",
        }
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        match self {
            SourceConfig::Veza(c) => c.validate(path, problems),
            SourceConfig::VezaList(c) => c.validate(path, problems),
            SourceConfig::Quickztna(c) => c.validate(path, problems),
            SourceConfig::Certifyclouds(c) => c.validate(path, problems),
            SourceConfig::HttpPull(c) => c.validate(path, problems),
            SourceConfig::WebhookIn(c) => c.validate(path, problems),
            SourceConfig::Demo(c) => c.validate(path, problems),
        }
    }

    /// The state `auditrelay checkpoint set` writes for this source type.
    pub fn manual_checkpoint(
        &self,
        token: Option<String>,
        time: Option<DateTime<Utc>>,
    ) -> Result<Vec<u8>, String> {
        if token.is_some() == time.is_some() {
            return Err("give exactly one of --token and --time".into());
        }
        match self {
            SourceConfig::Veza(_) => veza::manual_checkpoint(token, time),
            SourceConfig::VezaList(_) => Err(
                "a veza_list source walks a fixed range; use `auditrelay backfill` for another range"
                    .into(),
            ),
            SourceConfig::Quickztna(_)
            | SourceConfig::Certifyclouds(_)
            | SourceConfig::HttpPull(_) => pull::manual_window_checkpoint(token, time),
            SourceConfig::WebhookIn(_) => webhook_in::manual_checkpoint(token, time),
            SourceConfig::Demo(_) => demo::manual_checkpoint(token, time),
        }
    }

    pub fn build(&self, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(match self {
            SourceConfig::Veza(c) => Box::new(veza::VezaSource::new(c.clone(), ctx)?),
            SourceConfig::VezaList(c) => {
                let label = ctx.name.clone();
                Box::new(veza_list::VezaListSource::new(
                    c.clone(),
                    ctx,
                    &label,
                    None,
                )?)
            }
            SourceConfig::Quickztna(c) => {
                Box::new(quickztna::QuickztnaSource::new(c.clone(), ctx)?)
            }
            SourceConfig::Certifyclouds(c) => {
                Box::new(certifyclouds::CertifycloudsSource::new(c.clone(), ctx)?)
            }
            SourceConfig::HttpPull(c) => Box::new(http_pull::HttpPullSource::new(c.clone(), ctx)?),
            SourceConfig::WebhookIn(c) => {
                Box::new(webhook_in::WebhookInSource::new(c.clone(), ctx)?)
            }
            SourceConfig::Demo(c) => Box::new(demo::DemoSource::new(c.clone(), ctx)?),
        })
    }
}

/// One path or a list of paths tried in order.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Paths {
    One(String),
    Many(Vec<String>),
}

impl Paths {
    pub fn of(list: &[&str]) -> Self {
        Paths::Many(list.iter().map(|s| s.to_string()).collect())
    }

    pub fn parse(&self) -> Result<Vec<FieldPath>, String> {
        let list: Vec<&str> = match self {
            Paths::One(p) => vec![p.as_str()],
            Paths::Many(v) => v.iter().map(String::as_str).collect(),
        };
        if list.is_empty() {
            return Err("needs at least one field path".into());
        }
        list.into_iter().map(FieldPath::parse).collect()
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if let Err(e) = self.parse() {
            problems.push(path, e);
        }
    }
}

/// Where a source starts when it has no checkpoint: an RFC 3339 time, `now`,
/// or a negative duration relative to now (`-24h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Time(DateTime<Utc>),
    Now,
    Ago(Duration),
}

impl StartAt {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("now") {
            return Ok(StartAt::Now);
        }
        if let Some(rest) = t.strip_prefix('-') {
            return humantime::parse_duration(rest)
                .map(StartAt::Ago)
                .map_err(|e| format!("\"{text}\" is not a negative duration like -24h: {e}"));
        }
        DateTime::parse_from_rfc3339(t)
            .map(|d| StartAt::Time(d.with_timezone(&Utc)))
            .map_err(|e| {
                format!("\"{text}\" is neither an RFC 3339 time, \"now\", nor a negative duration like -24h: {e}")
            })
    }

    pub fn resolve(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            StartAt::Time(t) => *t,
            StartAt::Now => now,
            StartAt::Ago(d) => {
                now - chrono::Duration::from_std(*d).unwrap_or(chrono::Duration::days(36500))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_at_forms() {
        let now = Utc::now();
        assert_eq!(StartAt::parse("now").unwrap().resolve(now), now);
        assert_eq!(
            StartAt::parse("-24h").unwrap().resolve(now),
            now - chrono::Duration::hours(24)
        );
        assert!(matches!(
            StartAt::parse("2023-08-07T22:11:25.915674671Z").unwrap(),
            StartAt::Time(_)
        ));
        assert!(StartAt::parse("yesterday").is_err());
        assert!(StartAt::parse("-abc").is_err());
    }
}
