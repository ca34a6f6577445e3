//! Veza audit-log export (`GET /api/preview/system/audit/export`).
//!
//! The first request filters on `persisted_at GE "<start>"`; every later one
//! sends only the `next_page_token` of the previous page (Veza ignores the
//! filter once a token is sent, so sending both would only mislead). An empty
//! page means caught up: wait `poll_interval` and ask the same token again.
//! ResourceExhausted (HTTP 429 or gRPC code 8 in the body, whatever the
//! status) pauses every request to this source until Retry-After, else
//! `rate_limit_wait`, plus jitter. A rejected token restarts the cursor from
//! the newest delivered event time minus `overlap`, dropping ids delivered
//! inside that window.

mod config;
mod grpc;

pub use config::{
    default_items_path, default_next_token_path, default_page_size, default_token_param,
    validate_page_keys, Veza, VezaConfig, ID_PATH, TOKEN_MISSING, TYPE_PATH,
};

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use tokio::time::sleep;
use tracing::{debug, info, warn};

use super::pull::dedup::KeysOnly;
use super::pull::scan::{scan_page, Items, PageScan};
use super::pull::{
    chrono_of, dedup_key, Fetcher, PullCommon, PullDefaults, PullKind, RateLimitConfig, SeenSet,
};
use super::{read_checkpoint, ManualPosition, Source, SourceContext};
use crate::config::Problems;
use crate::event::{Batch, Event, FieldExtractor, FieldPath};
use crate::metrics::metrics;

/// What the checkpoint of a Veza source holds.
#[derive(Debug, Default, Deserialize)]
struct StoredState {
    /// Token of the page after the last committed one.
    token: Option<String>,
    /// Newest event time committed so far.
    newest_time: Option<DateTime<Utc>>,
    /// While set, ids already seen are dropped until events newer than this
    /// appear (a cursor restart is re-reading the overlap window).
    dedup_until: Option<DateTime<Utc>>,
    #[serde(default)]
    recent_ids: SeenSet,
    /// Set by `auditrelay checkpoint set --time`: the next token-less request
    /// filters from exactly here.
    resume_at: Option<DateTime<Utc>>,
}

#[derive(Serialize)]
struct StateView<'a> {
    token: &'a Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resume_at: &'a Option<DateTime<Utc>>,
    newest_time: &'a Option<DateTime<Utc>>,
    dedup_until: &'a Option<DateTime<Utc>>,
    recent_ids: KeysOnly<'a>,
}

pub struct VezaSource {
    name: Arc<str>,
    cfg: VezaConfig,
    fetcher: Fetcher,
    endpoint: url::Url,
    extractor: FieldExtractor,
    items_path: FieldPath,
    next_token_path: FieldPath,
    start: DateTime<Utc>,
    // Cursor state, as of the last page handed to the pipeline.
    token: Option<String>,
    resume_at: Option<DateTime<Utc>>,
    newest_time: Option<DateTime<Utc>>,
    dedup_until: Option<DateTime<Utc>>,
    recent: SeenSet,
    /// No request before this instant: set after a page without a next
    /// token, whose only continuation is the overlap window again.
    next_request_at: Option<Instant>,
    /// The last page had no next token (logged once per streak).
    tokenless: bool,
}

impl VezaSource {
    pub fn new(cfg: VezaConfig, ctx: SourceContext) -> anyhow::Result<Self> {
        let path = ctx.key_path();
        let common = &cfg.common;
        let endpoint = common.endpoint(&cfg.path, &path)?;
        let items_path = FieldPath::of_key(&cfg.items_path, &format!("{path}.items_path"))?;
        let next_token_path =
            FieldPath::of_key(&cfg.next_token_path, &format!("{path}.next_token_path"))?;
        let stored: StoredState =
            read_checkpoint(&ctx.name, ctx.checkpoint.as_deref(), "a Veza cursor")?
                .unwrap_or_default();
        let advice = |status, _: &str| {
            format!("the Veza API rejected the token (HTTP {status}); put a valid API key with audit-log read access in place")
        };
        let mut fetcher = cfg.fetcher_config(&ctx.name, &ctx.health, &path, advice)?;
        // Veza signals limits by 429 or ResourceExhausted with Retry-After,
        // and punishes early retries: the pause survives a restart.
        fetcher.rate_limit = RateLimitConfig::retry_after_only();
        fetcher.cooldown_file = Some(ctx.state_dir.join("cooldown").join(&ctx.name));
        if let Some(t) = stored.newest_time {
            metrics().set_committed_time(&ctx.name, t);
        }
        info!(
            source = %ctx.name,
            resume = if stored.token.is_some() { "page token" } else if stored.newest_time.is_some() { "newest event time minus overlap" } else { "start_at" },
            "veza source ready"
        );
        Ok(VezaSource {
            name: ctx.name.as_str().into(),
            fetcher: Fetcher::new(fetcher)?,
            recent: stored.recent_ids.with_cap(common.recent_ids),
            endpoint,
            extractor: common.extractor(&path)?,
            items_path,
            next_token_path,
            start: common.start(&path)?,
            token: stored.token,
            resume_at: stored.resume_at,
            newest_time: stored.newest_time,
            dedup_until: stored.dedup_until,
            next_request_at: None,
            tokenless: false,
            cfg,
        })
    }

    /// Where the filter of a token-less request starts.
    fn filter_start(&self) -> DateTime<Utc> {
        if let Some(t) = self.resume_at {
            return t;
        }
        match self.newest_time {
            Some(t) => t - chrono_of(self.cfg.common.overlap),
            None => self.start,
        }
    }

    /// The next page's token, or the filter of a token-less request.
    fn query(&self) -> Vec<(&str, String)> {
        let mut query: Vec<(&str, String)> = Vec::with_capacity(2);
        match &self.token {
            Some(t) => query.push((self.cfg.token_param.as_str(), t.clone())),
            None => query.push((
                "filter",
                format!(
                    "persisted_at GE \"{}\"",
                    self.filter_start()
                        .to_rfc3339_opts(SecondsFormat::AutoSi, true)
                ),
            )),
        }
        query.push(("page_size", self.cfg.page_size.to_string()));
        query
    }

    /// Scans a page once (see [`scan_page`]).
    fn scan(&self, body: &[u8]) -> Result<PageScan, String> {
        scan_page(
            body,
            &self.items_path,
            Some(&self.next_token_path),
            &self.extractor,
        )
    }

    /// Turns a scanned page into a batch, updating the cursor state.
    fn accept_page(&mut self, body: Bytes, page: PageScan) -> anyhow::Result<Option<Batch>> {
        let next_token = page.next_token;
        let items = match page.items {
            Items::List(items) => items,
            Items::Missing => Vec::new(),
            Items::NotArray(e) => {
                anyhow::bail!("\"{}\" is not an array: {e}", self.items_path)
            }
        };
        if items.is_empty() {
            if self.token.is_none() && next_token.is_some() {
                // Caught up on the very first call: keep the cursor the API gave.
                self.token = next_token;
            }
            return Ok(None);
        }
        let m = metrics();
        m.events_fetched
            .with_label_values(&[&self.name])
            .inc_by(items.len() as u64);
        let mut events = Vec::with_capacity(items.len());
        let mut batch_newest: Option<DateTime<Utc>> = None;
        let (mut dups, mut dropped) = (0u64, 0u64);
        for item in items {
            let ev = item.into_event(&body);
            if let (Some(until), Some(t)) = (self.dedup_until, ev.time) {
                if t > until {
                    debug!(source = %self.name, "past the overlap window; de-duplication off");
                    self.dedup_until = None;
                }
            }
            // By id, or by content when there is none (an empty id is
            // none): distinct entries without ids are never merged.
            if !self.recent.insert(&dedup_key(&ev), None) {
                if self.dedup_until.is_some() {
                    dropped += 1;
                    continue;
                }
                dups += 1;
            }
            if let Some(t) = ev.time {
                batch_newest = Some(batch_newest.map_or(t, |b| b.max(t)));
            }
            events.push(ev);
        }
        if dups > 0 {
            m.source_duplicates
                .with_label_values(&[&self.name])
                .inc_by(dups);
            debug!(source = %self.name, duplicates = dups, "page repeats ids seen recently; passing them on");
        }
        if dropped > 0 {
            m.events_deduplicated
                .with_label_values(&[&self.name])
                .inc_by(dropped);
            info!(source = %self.name, dropped, "dropped events already delivered before the cursor restart");
        }
        if let Some(t) = batch_newest {
            self.newest_time = Some(self.newest_time.map_or(t, |n| n.max(t)));
        }
        match next_token {
            Some(t) => {
                self.token = Some(t);
                self.tokenless = false;
            }
            None => {
                // Re-reading the overlap window at once would loop: a
                // request, a checkpoint and this line per iteration.
                if !self.tokenless {
                    warn!(source = %self.name, wait_s = self.cfg.common.poll_interval.as_secs_f64(), "page without next_page_token; continuing from the newest event time minus overlap after poll_interval");
                }
                self.tokenless = true;
                self.token = None;
                self.dedup_until = self.newest_time;
                self.next_request_at = Some(Instant::now() + self.cfg.common.poll_interval);
            }
        }
        if self.token.is_some() {
            self.resume_at = None;
        }
        let checkpoint = serde_json::to_vec(&StateView {
            token: &self.token,
            resume_at: &self.resume_at,
            newest_time: &self.newest_time,
            dedup_until: &self.dedup_until,
            recent_ids: self.recent.keys_only(),
        })?;
        Ok(Some(Batch {
            source: self.name.clone(),
            events,
            checkpoint: checkpoint.into(),
            newest_time: self.newest_time,
            fetched_at: Instant::now(),
        }))
    }

    /// Runs one response body through the same classification and page
    /// parsing as a live request (fuzzing and corpus tests).
    #[doc(hidden)]
    pub fn parse_response(&mut self, status: u16, body: Bytes) -> Option<Vec<Event>> {
        let sent_token = self.token.is_some();
        let scan = (200..300).contains(&status).then(|| self.scan(&body));
        if !(200..300).contains(&status)
            || grpc::verdict(&self.items_path, sent_token, status, &body, scan.as_ref()).is_some()
        {
            return None;
        }
        match scan.and_then(Result::ok).map(|p| self.accept_page(body, p)) {
            Some(Ok(Some(batch))) => Some(batch.events),
            _ => Some(Vec::new()),
        }
    }

    /// The page token was refused (expired or invalid): restart from the
    /// newest delivered event time minus overlap, dropping what comes back.
    fn restart_cursor(&mut self, why: String) {
        metrics()
            .token_restarts
            .with_label_values(&[&self.name])
            .inc();
        let from = self.filter_start();
        warn!(source = %self.name, error = %why, restart_from = %from.to_rfc3339(), "page token rejected (expired or invalid); restarting from the newest delivered event time minus overlap");
        self.token = None;
        self.resume_at = None;
        self.dedup_until = self.newest_time;
    }
}

#[async_trait]
impl Source for VezaSource {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        loop {
            if let Some(at) = self.next_request_at {
                tokio::time::sleep_until(at.into()).await;
                self.next_request_at = None;
            }
            let query: Vec<(String, String)> = self
                .query()
                .into_iter()
                .map(|(k, v)| (k.to_string(), v))
                .collect();
            let sent_token = self.token.is_some();
            // The scan of the 2xx answer that became the reply (each answer
            // is classified before the next request).
            let mut scanned: Option<(usize, PageScan)> = None;
            let (items_path, token_path, extractor) =
                (&self.items_path, &self.next_token_path, &self.extractor);
            let classify = |status: u16, body: &[u8]| {
                let scan = (200..300)
                    .contains(&status)
                    .then(|| scan_page(body, items_path, Some(token_path), extractor));
                let verdict = grpc::verdict(items_path, sent_token, status, body, scan.as_ref());
                scanned = match (&verdict, scan) {
                    (None, Some(Ok(page))) => Some((body.as_ptr() as usize, page)),
                    _ => None,
                };
                verdict
            };
            let reply = self
                .fetcher
                .get_json_classified(&self.endpoint, &query, classify)
                .await;
            match reply {
                Ok(page) => {
                    let scan = match scanned.take() {
                        Some((at, scan)) if at == page.body.as_ptr() as usize => scan,
                        _ => self.scan(&page.body).map_err(|e| anyhow::anyhow!(e))?,
                    };
                    match self.accept_page(page.body, scan)? {
                        Some(batch) => {
                            self.fetcher.count_answer(true);
                            return Ok(Some(batch));
                        }
                        None => {
                            self.fetcher.count_answer(false);
                            sleep(self.cfg.common.poll_interval).await;
                        }
                    }
                }
                Err(refused)
                    if sent_token && grpc::refused_token(refused.status, &refused.body) =>
                {
                    let why = format!(
                        "HTTP {}: {}",
                        refused.status,
                        super::pull::snippet(&refused.body)
                    );
                    self.restart_cursor(why);
                }
                Err(refused) => {
                    let hint = "check url, path and page_size";
                    self.fetcher.give_up_for_now(&refused, hint).await;
                }
            }
        }
    }
}

impl PullKind for Veza {
    const KIND: &'static str = "veza";

    const DEFAULTS: PullDefaults = PullDefaults {
        poll_interval: std::time::Duration::from_secs(5),
        recent_ids: 5000,
        id_path: ID_PATH,
        time_path: &["persisted_at", "ended_at", "timestamp"],
        type_path: TYPE_PATH,
        token_missing: Some(TOKEN_MISSING),
        ..PullDefaults::BASE
    };

    fn validate(&self, path: &str, _common: &PullCommon, problems: &mut Problems) {
        let names = [&self.token_param, &self.items_path, &self.next_token_path];
        validate_page_keys(path, self.page_size, &self.path, names, problems);
    }

    /// Resumes from a page token, or from a time (exactly, without overlap).
    fn manual_checkpoint(&self, at: ManualPosition) -> Result<Vec<u8>, String> {
        let none = SeenSet::new(1);
        let state = StateView {
            token: &at.token().map(str::to_owned),
            resume_at: &at.time(),
            newest_time: &None,
            dedup_until: &None,
            recent_ids: none.keys_only(),
        };
        serde_json::to_vec(&state).map_err(|e| e.to_string())
    }

    fn build(config: &VezaConfig, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(VezaSource::new(config.clone(), ctx)?))
    }
}
