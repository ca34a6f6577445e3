//! QuickZTNA audit log: `POST /api/export` (`action = "audit_logs"`, JSON or
//! CSV, hard cap of 10000 entries, org admins only) or `GET /api/audit`
//! (`mode = recent`, `limit` ≤ 5000, 14-day window, members may read).
//!
//! Neither has a cursor. Each poll asks for the smallest window that covers
//! the watermark (newest `created_at` taken) minus `overlap`: a whole number
//! of `days` for the export, the most recent `limit` entries for the audit
//! query. Entries older than that window start, or whose `id` is in the
//! seen-set, were taken before and are dropped ([`window`]).
//!
//! Neither can re-read the past either: an answer holds the newest entries,
//! at most the cap. So by default (`journal = true`) a poller polls on its
//! own schedule into a local journal the pipeline drains ([`journal`]): a
//! sink outage cannot stop the polls and turn into entries cut off by the
//! cap. Without the journal each poll happens when the pipeline asks for a
//! page, and each batch's checkpoint holds the watermark and seen-set as of
//! that batch.
//!
//! An answer holding exactly the cap whose oldest entry is newer than what
//! was read before is a data gap (more entries were created between two
//! polls than the cap): reported with its time range ([`crate::source::gap`]),
//! never taken as complete.

pub mod api;
pub mod journal;
mod poller;
pub mod window;

pub use api::{csv_events, AUDIT_MAX_LIMIT, EXPORT_CAP};

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use tracing::{info, warn};

use super::poll::{self, Fetcher, FetcherConfig, RateLimitConfig};
use super::{Paths, Source, SourceContext, StartAt};
use crate::config::{parse_url, require_positive, Problems, RetryConfig, TlsConfig};
use crate::event::{Batch, Event, FieldExtractor};
use crate::metrics::metrics;
use crate::secret::SecretKeys;
use api::Api;
use journal::{Journal, Resume};
use window::Window;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /api/export` (admin token; JSON or CSV; up to 10000 entries).
    #[default]
    Export,
    /// `GET /api/audit?mode=recent` (member token; up to 5000 entries).
    Audit,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Json,
    Csv,
}

/// `[sources.NAME]` with `type = "quickztna"`.
#[derive(Clone, Debug, Deserialize)]
pub struct QuickztnaConfig {
    /// e.g. `https://login.quickztna.com`
    pub url: String,
    pub org_id: String,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    #[serde(default)]
    pub endpoint: Endpoint,
    /// Export only: `json` or `csv`.
    #[serde(default)]
    pub format: Format,
    /// Audit only: entries per query (1..=5000).
    #[serde(default = "default_limit")]
    pub limit: u32,
    /// Export only: the most entries an answer holds (the API's hard
    /// limit); an answer this long may be cut.
    #[serde(default = "default_export_cap")]
    pub export_cap: usize,
    #[serde(default = "default_start_at")]
    pub start_at: String,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Re-read window behind the watermark (Loki indexing delay).
    #[serde(default = "default_overlap", with = "humantime_serde")]
    pub overlap: Duration,
    /// Most events per batch handed to the sinks.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Bound of the seen-set kept in the checkpoint.
    #[serde(default = "default_recent_ids")]
    pub recent_ids: usize,
    #[serde(default = "default_export_path")]
    pub export_path: String,
    #[serde(default = "default_audit_path")]
    pub audit_path: String,
    #[serde(default = "default_id_path")]
    pub id_path: Paths,
    #[serde(default = "default_time_path")]
    pub time_path: Paths,
    #[serde(default = "default_type_path")]
    pub type_path: Paths,
    #[serde(default = "default_rate_limit_wait", with = "humantime_serde")]
    pub rate_limit_wait: Duration,
    #[serde(default = "default_rate_limit_jitter", with = "humantime_serde")]
    pub rate_limit_jitter: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_auth_retry", with = "humantime_serde")]
    pub auth_retry: Duration,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    /// Poll into a local journal whatever the sinks do (see [`journal`]).
    #[serde(default = "default_journal")]
    pub journal: bool,
    /// Size at which the journal stops taking entries and polling pauses.
    #[serde(default = "default_max_journal_bytes")]
    pub max_journal_bytes: u64,
}

/// Smallest `max_journal_bytes`: room for a few appends of entries.
pub const MIN_JOURNAL_BYTES: u64 = 64 << 10;

fn default_journal() -> bool {
    true
}
fn default_max_journal_bytes() -> u64 {
    1 << 30
}

fn default_limit() -> u32 {
    AUDIT_MAX_LIMIT
}
fn default_export_cap() -> usize {
    EXPORT_CAP
}
fn default_start_at() -> String {
    "-24h".into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_overlap() -> Duration {
    Duration::from_secs(600)
}
fn default_batch_size() -> usize {
    1000
}
fn default_recent_ids() -> usize {
    50_000
}
fn default_export_path() -> String {
    "/api/export".into()
}
fn default_audit_path() -> String {
    "/api/audit".into()
}
fn default_id_path() -> Paths {
    Paths::One("id".into())
}
fn default_time_path() -> Paths {
    Paths::One("created_at".into())
}
fn default_type_path() -> Paths {
    Paths::One("action".into())
}
fn default_rate_limit_wait() -> Duration {
    Duration::from_secs(60)
}
fn default_rate_limit_jitter() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_auth_retry() -> Duration {
    Duration::from_secs(60)
}

impl QuickztnaConfig {
    fn token_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.token_file.clone(),
            env: self.token_env.clone(),
            credential: self.token_credential.clone(),
        }
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        parse_url(&self.url, &format!("{path}.url"), problems);
        if self.org_id.trim().is_empty() {
            problems.push(format!("{path}.org_id"), "must not be empty");
        }
        self.token_keys()
            .validate("token", path, Some("QuickZTNA needs a token (an org admin's for endpoint = \"export\"): set token_file, token_env or token_credential"), problems);
        if self.endpoint == Endpoint::Audit {
            if self.format == Format::Csv {
                problems.push(
                    format!("{path}.format"),
                    "csv is only available with endpoint = \"export\"",
                );
            }
            if !(1..=AUDIT_MAX_LIMIT).contains(&self.limit) {
                problems.push(
                    format!("{path}.limit"),
                    format!(
                        "{} is out of range 1..=5000 (the API's maximum)",
                        self.limit
                    ),
                );
            }
        }
        if let Err(e) = StartAt::parse(&self.start_at) {
            problems.push(format!("{path}.start_at"), e);
        }
        require_positive(
            self.poll_interval,
            &format!("{path}.poll_interval"),
            problems,
        );
        require_positive(self.timeout, &format!("{path}.timeout"), problems);
        if !(1..=100_000).contains(&self.batch_size) {
            problems.push(format!("{path}.batch_size"), "must be between 1 and 100000");
        }
        if !(1..=1_000_000).contains(&self.export_cap) {
            problems.push(
                format!("{path}.export_cap"),
                format!("{} is out of range 1..=1000000", self.export_cap),
            );
        }
        if self.recent_ids < self.export_cap {
            problems.push(
                format!("{path}.recent_ids"),
                format!(
                    "must be at least export_cap ({}): one full response",
                    self.export_cap
                ),
            );
        }
        for (key, p) in [
            ("export_path", &self.export_path),
            ("audit_path", &self.audit_path),
        ] {
            if !p.starts_with('/') {
                problems.push(format!("{path}.{key}"), "must start with /");
            }
        }
        self.id_path.validate(&format!("{path}.id_path"), problems);
        self.time_path
            .validate(&format!("{path}.time_path"), problems);
        self.type_path
            .validate(&format!("{path}.type_path"), problems);
        self.retry.validate(path, problems);
        self.tls.validate(path, problems);
        if self.max_journal_bytes < MIN_JOURNAL_BYTES {
            problems.push(
                format!("{path}.max_journal_bytes"),
                format!(
                    "{} is below the minimum of {MIN_JOURNAL_BYTES} bytes",
                    self.max_journal_bytes
                ),
            );
        }
    }
}

pub struct QuickztnaSource {
    /// For [`QuickztnaSource::parse_body`].
    #[cfg(feature = "fuzzing")]
    parser: Api,
    mode: Mode,
}

#[allow(clippy::large_enum_variant)] // one per source, built once
enum Mode {
    /// Polls into the journal on its own; batches come out of the journal.
    Journal(journal::Reader),
    /// Polls when the pipeline asks for a page.
    Direct(Direct),
}

struct Direct {
    api: Api,
    window: Window,
    batch_size: usize,
    poll_interval: Duration,
    pending: VecDeque<Batch>,
    next_poll: Option<Instant>,
}

impl QuickztnaSource {
    pub fn new(cfg: QuickztnaConfig, ctx: SourceContext) -> anyhow::Result<Self> {
        let path = format!("sources.{}", ctx.name);
        let rel = match cfg.endpoint {
            Endpoint::Export => &cfg.export_path,
            Endpoint::Audit => &cfg.audit_path,
        };
        let url = url::Url::parse(&cfg.url)
            .and_then(|base| base.join(rel))
            .map_err(|e| anyhow::anyhow!("{path}.url: {e}"))?;
        let token_source = cfg
            .token_keys()
            .source("token")
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?
            .ok_or_else(|| anyhow::anyhow!("{path}.token_file: no token configured"))?;
        let parse =
            |p: &Paths, key: &str| p.parse().map_err(|e| anyhow::anyhow!("{path}.{key}: {e}"));
        let extractor = FieldExtractor::new(
            parse(&cfg.id_path, "id_path")?,
            parse(&cfg.time_path, "time_path")?,
            parse(&cfg.type_path, "type_path")?,
        );
        let start = StartAt::parse(&cfg.start_at)
            .map_err(|e| anyhow::anyhow!("{path}.start_at: {e}"))?
            .resolve(Utc::now());
        let resume = Resume::parse(&ctx.name, ctx.checkpoint.as_deref(), cfg.recent_ids)?;
        let client = crate::http::client(&cfg.tls, cfg.timeout, &path)?;
        let name: Arc<str> = ctx.name.as_str().into();
        let fetcher = |token_source| {
            let (org, endpoint) = (cfg.org_id.clone(), cfg.endpoint);
            Fetcher::new(FetcherConfig {
                name: name.clone(),
                client: client.clone(),
                token_source,
                health: ctx.health.clone(),
                retry: cfg.retry,
                auth_retry: cfg.auth_retry,
                rate_limit: RateLimitConfig::default(),
                rate_limit_wait: cfg.rate_limit_wait,
                rate_limit_jitter: cfg.rate_limit_jitter,
                advice: Box::new(move |status, body| api::advice(status, body, endpoint, &org)),
            })
        };
        let api = Api {
            cfg: cfg.clone(),
            fetcher: fetcher(Some(token_source))?,
            url: url.clone(),
            extractor: extractor.clone(),
        };
        #[cfg(feature = "fuzzing")]
        let parser = Api {
            cfg: cfg.clone(),
            fetcher: fetcher(None)?,
            url,
            extractor,
        };
        Window::init_metrics(&name);
        let window = Window {
            name: name.clone(),
            health: ctx.health.clone(),
            overlap: cfg.overlap,
            start,
            cap: api.cap(),
            state: Default::default(),
        };
        let journal_dir = journal::dir(&ctx.state_dir, &ctx.name);
        let mode = if cfg.journal {
            let journal = Journal::open(&ctx.state_dir, &ctx.name, cfg.max_journal_bytes)?;
            Mode::Journal(journal::start(journal::Parts {
                api,
                window,
                journal,
                resume,
                batch_size: cfg.batch_size,
                poll_interval: cfg.poll_interval,
                recent_ids: cfg.recent_ids,
                state_dir: ctx.state_dir.clone(),
            })?)
        } else {
            let state = match resume {
                Resume::Window(state) => *state,
                // Back from a journaled run: only once it is drained.
                Resume::Journal(ck) if journal_dir.exists() => {
                    let journal = Journal::open(&ctx.state_dir, &ctx.name, cfg.max_journal_bytes)?;
                    let state = journal.state_after(&ck, cfg.recent_ids)?;
                    journal.remove_delivered()?;
                    state
                }
                Resume::Journal(ck) => poll::WindowState {
                    watermark: ck.newest,
                    ..Default::default()
                },
            };
            if let Some(t) = state.watermark {
                metrics().set_committed_time(&ctx.name, t);
            }
            Mode::Direct(Direct {
                api,
                window: Window { state, ..window },
                batch_size: cfg.batch_size,
                poll_interval: cfg.poll_interval,
                pending: VecDeque::new(),
                next_poll: None,
            })
        };
        info!(
            source = %name,
            endpoint = ?cfg.endpoint,
            format = ?cfg.format,
            journal = cfg.journal,
            "quickztna source ready"
        );
        Ok(QuickztnaSource {
            #[cfg(feature = "fuzzing")]
            parser,
            mode,
        })
    }

    /// One response body through the same parsing as a poll (fuzzing and
    /// the corpus test): its entries, or why it was refused or not understood.
    #[cfg(feature = "fuzzing")]
    pub(crate) fn parse_body(&self, body: &bytes::Bytes) -> Result<Vec<Event>, String> {
        self.parser.parse_body(body)
    }
}

impl Direct {
    /// Turns a poll's new entries into batches, each with the state as of
    /// itself.
    fn accept(&mut self, events: Vec<Event>, asked_at: DateTime<Utc>) {
        let name = self.window.name.clone();
        let mut events = events.into_iter().peekable();
        while events.peek().is_some() {
            let chunk: Vec<Event> = events.by_ref().take(self.batch_size).collect();
            self.window.record(&chunk, asked_at);
            let checkpoint = match serde_json::to_vec(&self.window.state) {
                Ok(c) => c,
                Err(e) => {
                    // Serializing strings and times cannot fail; keep the
                    // events anyway with the previous state.
                    warn!(source = %name, error = %e, "cannot serialize the checkpoint");
                    Vec::new()
                }
            };
            self.pending.push_back(Batch {
                source: name.clone(),
                events: chunk,
                checkpoint: checkpoint.into(),
                newest_time: self.window.state.watermark,
                fetched_at: Instant::now(),
            });
        }
    }

    async fn next_batch(&mut self) -> Batch {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return batch;
            }
            if let Some(at) = self.next_poll {
                tokio::time::sleep_until(at.into()).await;
            }
            let answer = self.api.poll(self.window.next_start()).await;
            self.next_poll = Some(Instant::now() + self.poll_interval);
            let asked_at = answer.asked_at;
            let events = self.window.select(answer, &self.api.fetcher);
            self.accept(events, asked_at);
        }
    }
}

#[async_trait]
impl Source for QuickztnaSource {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        match &mut self.mode {
            Mode::Journal(reader) => reader.next_batch().await.map(Some),
            Mode::Direct(direct) => Ok(Some(direct.next_batch().await)),
        }
    }

    async fn close(&mut self) {
        if let Mode::Journal(reader) = &mut self.mode {
            reader.close().await;
        }
    }
}

#[cfg(test)]
mod tests;
