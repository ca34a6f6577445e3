//! CertifyClouds audit trail: `GET /audit/entries?start_date&end_date&limit&offset`
//! (optional `event_type` and `actor` filters).
//!
//! Each pass asks for the window from the watermark (newest delivered
//! `timestamp`) minus `overlap` to the instant the pass began, page by page
//! with `offset +=` the entries returned, until a page is provably the last:
//! empty, or shorter than the `limit` the answer echoes when that is below
//! what was asked (servers clamp `limit` silently and may change the clamp,
//! so neither `page_size` nor earlier pages prove anything). Entries inserted
//! while paging shift the offsets, so a page can repeat entries of the one
//! before: those, and everything delivered in an earlier pass, are dropped
//! by `id`. Every page is a batch whose checkpoint holds the pass (window
//! and next offset), so a restart continues the walk; the watermark moves
//! only when a pass is complete, since the order of the pages is not
//! documented.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{debug, info};

use super::poll::{
    count_fresh, dedup_key, page_is_last, report_before_window, snippet, Fetcher, FetcherConfig,
    RateLimitConfig, Stop, TimeFormat, WindowState,
};
use super::{Paths, Source, SourceContext, StartAt};
use crate::config::{parse_url, require_positive, Problems, RetryConfig, TlsConfig};
use crate::event::{Batch, Event, FieldExtractor, FieldPath};
use crate::metrics::metrics;
use crate::secret::SecretKeys;

/// `[sources.NAME]` with `type = "certifyclouds"`.
#[derive(Clone, Debug, Deserialize)]
pub struct CertifycloudsConfig {
    /// e.g. `https://certifyclouds.example.com`
    pub url: String,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    #[serde(default = "default_path")]
    pub path: String,
    /// `limit` of each page.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Which page ends a pass: `short_page` or `empty_page`.
    #[serde(default)]
    pub stop: Stop,
    /// Only entries of this event type (`event_type` parameter).
    pub event_type: Option<String>,
    /// Only entries of this actor (`actor` parameter).
    pub actor: Option<String>,
    #[serde(default = "default_start_at")]
    pub start_at: String,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(default = "default_overlap", with = "humantime_serde")]
    pub overlap: Duration,
    /// How `start_date`/`end_date` are written; with `date` (whole days)
    /// `end_date` is not sent, so today's entries are not cut off.
    #[serde(default)]
    pub time_format: TimeFormat,
    /// Send `end_date` (the instant the pass began) so entries newer than
    /// the pass do not shift its pages.
    #[serde(default = "default_true")]
    pub send_end_date: bool,
    /// Where the entries are in the answer; unset = a top-level array, or
    /// the first array among `entries`, `items`, `data`, `results`.
    pub items_path: Option<String>,
    #[serde(default = "default_id_path")]
    pub id_path: Paths,
    #[serde(default = "default_time_path")]
    pub time_path: Paths,
    #[serde(default = "default_type_path")]
    pub type_path: Paths,
    #[serde(default = "default_recent_ids")]
    pub recent_ids: usize,
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
}

fn default_path() -> String {
    "/audit/entries".into()
}
fn default_page_size() -> u32 {
    500
}
fn default_start_at() -> String {
    "-24h".into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_overlap() -> Duration {
    Duration::from_secs(300)
}
fn default_true() -> bool {
    true
}
fn default_id_path() -> Paths {
    Paths::One("id".into())
}
fn default_time_path() -> Paths {
    Paths::One("timestamp".into())
}
fn default_type_path() -> Paths {
    Paths::One("event_type".into())
}
fn default_recent_ids() -> usize {
    50_000
}
fn default_rate_limit_wait() -> Duration {
    Duration::from_secs(60)
}
fn default_rate_limit_jitter() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_auth_retry() -> Duration {
    Duration::from_secs(30)
}

/// Where the entries may be when `items_path` is not set.
const ITEM_CANDIDATES: &[&str] = &["entries", "items", "data", "results", "audit_entries"];

impl CertifycloudsConfig {
    fn token_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.token_file.clone(),
            env: self.token_env.clone(),
            credential: self.token_credential.clone(),
        }
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        parse_url(&self.url, &format!("{path}.url"), problems);
        self.token_keys()
            .validate("token", path, Some("the CertifyClouds API needs a bearer token: set token_file, token_env or token_credential"), problems);
        if !self.path.starts_with('/') {
            problems.push(format!("{path}.path"), "must start with /");
        }
        if !(1..=10_000).contains(&self.page_size) {
            problems.push(format!("{path}.page_size"), "must be between 1 and 10000");
        }
        if matches!(self.time_format, TimeFormat::Unix | TimeFormat::UnixMs) {
            problems.push(
                format!("{path}.time_format"),
                "start_date/end_date are ISO 8601: use rfc3339, rfc3339_seconds or date",
            );
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
        if let Some(p) = &self.items_path {
            if let Err(e) = FieldPath::parse(p) {
                problems.push(format!("{path}.items_path"), e);
            }
        }
        self.id_path.validate(&format!("{path}.id_path"), problems);
        self.time_path
            .validate(&format!("{path}.time_path"), problems);
        self.type_path
            .validate(&format!("{path}.type_path"), problems);
        self.retry.validate(path, problems);
        self.tls.validate(path, problems);
    }
}

pub struct CertifycloudsSource {
    name: Arc<str>,
    cfg: CertifycloudsConfig,
    fetcher: Fetcher,
    url: url::Url,
    extractor: FieldExtractor,
    items_path: Option<FieldPath>,
    start: chrono::DateTime<chrono::Utc>,
    state: WindowState,
    next_pass: Option<Instant>,
}

impl CertifycloudsSource {
    pub fn new(cfg: CertifycloudsConfig, ctx: SourceContext) -> anyhow::Result<Self> {
        let path = format!("sources.{}", ctx.name);
        let url = url::Url::parse(&cfg.url)
            .and_then(|base| base.join(&cfg.path))
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
        let items_path = cfg
            .items_path
            .as_deref()
            .map(FieldPath::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("{path}.items_path: {e}"))?;
        let start = StartAt::parse(&cfg.start_at)
            .map_err(|e| anyhow::anyhow!("{path}.start_at: {e}"))?
            .resolve(chrono::Utc::now());
        let state = WindowState::load(
            &ctx.name,
            ctx.checkpoint.as_deref(),
            "CertifyClouds",
            cfg.recent_ids,
        )?;
        if let Some(t) = state.watermark {
            metrics().set_committed_time(&ctx.name, t);
        }
        let name: Arc<str> = ctx.name.as_str().into();
        let fetcher = Fetcher::new(FetcherConfig {
            name: name.clone(),
            client: crate::http::client(&cfg.tls, cfg.timeout, &path)?,
            token_source: Some(token_source),
            health: ctx.health,
            retry: cfg.retry,
            auth_retry: cfg.auth_retry,
            rate_limit: RateLimitConfig::default(),
            rate_limit_wait: cfg.rate_limit_wait,
            rate_limit_jitter: cfg.rate_limit_jitter,
            advice: Box::new(|status, body| {
                format!(
                    "CertifyClouds refused the token with HTTP {status} ({body}): it is invalid, \
                     expired, or lacks permission to read the audit log"
                )
            }),
        })?;
        info!(
            source = %name,
            resume = if state.pass.is_some() { "the pass in progress" } else if state.watermark.is_some() { "watermark minus overlap" } else { "start_at" },
            "certifyclouds source ready"
        );
        Ok(CertifycloudsSource {
            name,
            cfg,
            fetcher,
            url,
            extractor,
            items_path,
            start,
            state,
            next_pass: None,
        })
    }

    fn query(&mut self) -> Vec<(&'static str, String)> {
        let (overlap, start_at) = (self.cfg.overlap, self.start);
        let pass = self.state.pass(overlap, start_at);
        let offset = pass.cursor.clone().unwrap_or_else(|| "0".into());
        let mut q = vec![("start_date", self.cfg.time_format.format(pass.start))];
        if self.cfg.send_end_date && self.cfg.time_format != TimeFormat::Date {
            q.push(("end_date", self.cfg.time_format.format(pass.end)));
        }
        if let Some(t) = &self.cfg.event_type {
            q.push(("event_type", t.clone()));
        }
        if let Some(a) = &self.cfg.actor {
            q.push(("actor", a.clone()));
        }
        q.push(("limit", self.cfg.page_size.to_string()));
        q.push(("offset", offset));
        q
    }

    /// The entries of an answer, or why it is not one.
    fn items<'a>(&self, root: &'a RawValue) -> Result<Vec<&'a RawValue>, String> {
        let list = match &self.items_path {
            Some(p) => p.lookup(root).ok_or_else(|| format!("no \"{p}\" member"))?,
            None if root.get().starts_with('[') => root,
            None => ITEM_CANDIDATES
                .iter()
                .filter_map(|k| crate::event::get_field(root, k))
                .find(|v| v.get().starts_with('['))
                .ok_or_else(|| {
                    format!(
                        "no list of entries (a top-level array or one of {}; set items_path)",
                        ITEM_CANDIDATES.join(", ")
                    )
                })?,
        };
        serde_json::from_str(list.get()).map_err(|e| format!("entries are not a list: {e}"))
    }

    /// The events of one page, or why it is not one (also the entry point
    /// of fuzzing and the corpus test).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn parse_page(&self, body: &Bytes) -> Result<Vec<Event>, String> {
        self.parse_page_and_limit(body).map(|(events, _)| events)
    }

    /// The events of one page and the `limit` the envelope echoes, if any.
    fn parse_page_and_limit(&self, body: &Bytes) -> Result<(Vec<Event>, Option<usize>), String> {
        let root = serde_json::from_slice::<&RawValue>(body)
            .map_err(|e| format!("body is not JSON ({e}): {}", snippet(body)))?;
        let echoed = if root.get().starts_with('{') {
            crate::event::get_field(root, "limit").and_then(|v| v.get().parse::<usize>().ok())
        } else {
            None
        };
        let events = self
            .items(root)?
            .into_iter()
            .map(|i| self.extractor.event(body, i))
            .collect();
        Ok((events, echoed))
    }
}

#[async_trait]
impl Source for CertifycloudsSource {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        loop {
            if self.state.between_passes() {
                if let Some(at) = self.next_pass {
                    tokio::time::sleep_until(at.into()).await;
                }
            }
            let query = self.query();
            let reply = self.fetcher.get_json(&self.url, &query).await;
            let reply = match reply {
                Ok(r) => r,
                Err(refused) => {
                    self.fetcher
                        .give_up_for_now(&refused, "check url, path, filters and page_size")
                        .await;
                    continue;
                }
            };
            let (events, echoed) = match self.parse_page_and_limit(&reply.body) {
                Ok(events) => events,
                Err(why) => {
                    self.fetcher.retry_later(&why).await;
                    continue;
                }
            };
            let returned = events.len();
            let keys: Vec<String> = events.iter().map(|e| dedup_key(e).into_owned()).collect();
            let found = self.state.fresh(events);
            count_fresh(&self.name, returned, &found);
            report_before_window(&self.name, &found);
            self.fetcher.count_answer(!found.events.is_empty());
            let offset: u64 = self
                .state
                .pass
                .as_ref()
                .and_then(|p| p.cursor.as_deref())
                .and_then(|c| c.parse().ok())
                .unwrap_or(0);
            let last = page_is_last(self.cfg.stop, self.cfg.page_size as usize, returned, echoed);
            // From the offset of this page's last entry, which the next
            // page must hold: advances by what the server returned (a
            // clamped page skips nothing) and notices entries moving back.
            let next = self.state.next_offset(&self.name, &keys, last);
            debug!(source = %self.name, offset, returned, echoed_limit = ?echoed, new = found.events.len(), repeated = found.repeated, last_page = last, "page");
            let checkpoint =
                self.state
                    .record_page(&self.name, &found.events, keys, next, self.cfg.overlap);
            if self.state.between_passes() {
                self.next_pass = Some(Instant::now() + self.cfg.poll_interval);
            }
            if found.events.is_empty() {
                continue;
            }
            return Ok(Some(Batch {
                source: self.name.clone(),
                events: found.events,
                checkpoint,
                newest_time: self.state.newest(),
                fetched_at: Instant::now(),
            }));
        }
    }
}
