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
mod config;
pub mod journal;
mod poller;
mod reader;
pub mod window;

pub use api::csv_events;
pub use config::{
    Endpoint, Format, Quickztna, QuickztnaConfig, AUDIT_MAX_LIMIT, EXPORT_CAP, MIN_JOURNAL_BYTES,
};

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tracing::{info, warn};

use super::pull::{Fetcher, PullCommon, PullDefaults, PullKind, WindowState};
use super::{Source, SourceContext};
use crate::config::Problems;
use crate::event::{Batch, Event};
use crate::metrics::metrics;
use api::Api;
use journal::{Journal, Resume};
use window::Window;

pub struct QuickztnaSource {
    /// For [`QuickztnaSource::parse_body`].
    #[cfg(feature = "fuzzing")]
    parser: Api,
    mode: Mode,
}

#[allow(clippy::large_enum_variant)] // one per source, built once
enum Mode {
    /// Polls into the journal on its own; batches come out of the journal.
    Journal(reader::Reader),
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
        let path = ctx.key_path();
        let rel = match cfg.endpoint {
            Endpoint::Export => &cfg.export_path,
            Endpoint::Audit => &cfg.audit_path,
        };
        let common = &cfg.common;
        let url = common.endpoint(rel, &path)?;
        let extractor = common.extractor(&path)?;
        let start = common.start(&path)?;
        let resume = Resume::parse(&ctx.name, ctx.checkpoint.as_deref(), common.recent_ids)?;
        let name: Arc<str> = ctx.name.as_str().into();
        let fetcher = |with_token: bool| {
            let (org, endpoint) = (cfg.org_id.clone(), cfg.endpoint);
            let advice = move |status, body: &str| api::advice(status, body, endpoint, &org);
            let mut fetcher = cfg.fetcher_config(&name, &ctx.health, &path, advice)?;
            if !with_token {
                fetcher.token_source = None;
                fetcher.oauth2 = None;
            }
            Fetcher::new(fetcher)
        };
        let api = Api {
            cfg: cfg.clone(),
            fetcher: fetcher(true)?,
            url: url.clone(),
            extractor: extractor.clone(),
        };
        #[cfg(feature = "fuzzing")]
        let parser = Api {
            cfg: cfg.clone(),
            fetcher: fetcher(false)?,
            url,
            extractor,
        };
        Window::init_metrics(&name);
        let window = Window {
            name: name.clone(),
            health: ctx.health.clone(),
            overlap: common.overlap,
            start,
            cap: api.cap(),
            state: Default::default(),
        };
        let journal_dir = journal::dir(&ctx.state_dir, &ctx.name);
        let mode = if cfg.journal {
            let journal = Journal::open(&ctx.state_dir, &ctx.name, cfg.max_journal_bytes)?;
            Mode::Journal(reader::start(reader::Parts {
                api,
                window,
                journal,
                resume,
                batch_size: cfg.batch_size,
                poll_interval: common.poll_interval,
                recent_ids: common.recent_ids,
                state_dir: ctx.state_dir.clone(),
            })?)
        } else {
            let state = match resume {
                Resume::Window(state) => *state,
                // Back from a journaled run: only once it is drained.
                Resume::Journal(ck) if journal_dir.exists() => {
                    let journal = Journal::open(&ctx.state_dir, &ctx.name, cfg.max_journal_bytes)?;
                    let state = journal.state_after(&ck, common.recent_ids)?;
                    journal.remove_delivered()?;
                    state
                }
                Resume::Journal(ck) => WindowState {
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
                poll_interval: common.poll_interval,
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

impl PullKind for Quickztna {
    const KIND: &'static str = "quickztna";

    const DEFAULTS: PullDefaults = PullDefaults {
        timeout: Duration::from_secs(120),
        auth_retry: Duration::from_secs(60),
        poll_interval: Duration::from_secs(60),
        overlap: Duration::from_secs(600),
        time_path: &["created_at"],
        type_path: &["action"],
        token_missing: Some("QuickZTNA needs a token (an org admin's for endpoint = \"export\"): set token_file, token_env or token_credential"),
        ..PullDefaults::BASE
    };

    fn validate(&self, path: &str, common: &PullCommon, problems: &mut Problems) {
        if self.org_id.trim().is_empty() {
            problems.push(format!("{path}.org_id"), "must not be empty");
        }
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
        if !(1..=100_000).contains(&self.batch_size) {
            problems.push(format!("{path}.batch_size"), "must be between 1 and 100000");
        }
        if !(1..=1_000_000).contains(&self.export_cap) {
            problems.push(
                format!("{path}.export_cap"),
                format!("{} is out of range 1..=1000000", self.export_cap),
            );
        }
        if common.recent_ids < self.export_cap {
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

    fn build(config: &QuickztnaConfig, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(QuickztnaSource::new(config.clone(), ctx)?))
    }
}

#[cfg(test)]
mod tests;
