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

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tokio::time::sleep;
use tracing::{debug, error, info, warn};

use super::recent_ids::RecentIds;
use super::{Paths, Source, SourceContext, StartAt};
use crate::config::{parse_url, require_positive, Problems, RetryConfig, TlsConfig};
use crate::event::{Batch, FieldExtractor, FieldPath};
use crate::health::Health;
use crate::metrics::metrics;
use crate::retry::{with_jitter, Backoff};
use crate::secret::{Secret, SecretKeys, SecretSource};

/// `[sources.NAME]` with `type = "veza"`.
#[derive(Clone, Debug, Deserialize)]
pub struct VezaConfig {
    /// Base URL of the Veza tenant, e.g. `https://example.vezacloud.com`.
    pub url: String,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    #[serde(default = "default_start_at")]
    pub start_at: String,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(default = "default_rate_limit_wait", with = "humantime_serde")]
    pub rate_limit_wait: Duration,
    /// Random extra wait added to every rate-limit pause.
    #[serde(default = "default_rate_limit_jitter", with = "humantime_serde")]
    pub rate_limit_jitter: Duration,
    #[serde(default = "default_overlap", with = "humantime_serde")]
    pub overlap: Duration,
    #[serde(default = "default_path")]
    pub path: String,
    /// Query parameter that carries the page token (the docs show both).
    #[serde(default = "default_token_param")]
    pub token_param: String,
    #[serde(default = "default_items_path")]
    pub items_path: String,
    #[serde(default = "default_next_token_path")]
    pub next_token_path: String,
    #[serde(default = "default_id_path")]
    pub id_path: Paths,
    #[serde(default = "default_time_path")]
    pub time_path: Paths,
    #[serde(default = "default_type_path")]
    pub type_path: Paths,
    /// How many recent ids the checkpoint keeps for de-duplication.
    #[serde(default = "default_recent_ids")]
    pub recent_ids: usize,
    /// Request timeout.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Least wait between attempts while the API rejects the token.
    #[serde(default = "default_auth_retry", with = "humantime_serde")]
    pub auth_retry: Duration,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub tls: TlsConfig,
}

fn default_page_size() -> u32 {
    1000
}
fn default_start_at() -> String {
    "-24h".into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_rate_limit_wait() -> Duration {
    Duration::from_secs(60)
}
fn default_rate_limit_jitter() -> Duration {
    Duration::from_secs(5)
}
fn default_overlap() -> Duration {
    Duration::from_secs(300)
}
fn default_path() -> String {
    "/api/preview/system/audit/export".into()
}
fn default_token_param() -> String {
    "page_token".into()
}
fn default_items_path() -> String {
    "values".into()
}
fn default_next_token_path() -> String {
    "next_page_token".into()
}
fn default_id_path() -> Paths {
    Paths::of(&["request_id", "id"])
}
fn default_time_path() -> Paths {
    Paths::of(&["persisted_at", "ended_at", "timestamp"])
}
fn default_type_path() -> Paths {
    Paths::of(&["type", "event_type", "intent", "endpoint", "action"])
}
fn default_recent_ids() -> usize {
    5000
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_auth_retry() -> Duration {
    Duration::from_secs(30)
}

impl VezaConfig {
    fn token_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.token_file.clone(),
            env: self.token_env.clone(),
            credential: self.token_credential.clone(),
        }
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        parse_url(&self.url, &format!("{path}.url"), problems);
        self.token_keys().validate(
            "token",
            path,
            Some("the Veza API needs a token: set token_file, token_env or token_credential"),
            problems,
        );
        if !(1..=10_000).contains(&self.page_size) {
            problems.push(
                format!("{path}.page_size"),
                format!(
                    "{} is out of range 1..=10000 (Veza's maximum)",
                    self.page_size
                ),
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
        if !self.path.starts_with('/') {
            problems.push(format!("{path}.path"), "must start with /");
        }
        for (key, value) in [
            ("token_param", &self.token_param),
            ("items_path", &self.items_path),
            ("next_token_path", &self.next_token_path),
        ] {
            if value.is_empty() {
                problems.push(format!("{path}.{key}"), "must not be empty");
            }
        }
        for (key, v) in [
            ("items_path", &self.items_path),
            ("next_token_path", &self.next_token_path),
        ] {
            if let Err(e) = FieldPath::parse(v) {
                problems.push(format!("{path}.{key}"), e);
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
    recent_ids: Vec<String>,
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
    recent_ids: &'a RecentIds,
}

/// How one request ended.
enum Outcome {
    Page {
        body: Bytes,
        next_token: Option<String>,
    },
    RateLimited(Duration),
    Transient(String),
    Unauthorized(u16),
    TokenRejected(String),
    ClientError(u16, String),
}

pub struct VezaSource {
    name: Arc<str>,
    cfg: VezaConfig,
    client: reqwest::Client,
    endpoint: url::Url,
    token_source: SecretSource,
    api_token: Secret,
    extractor: FieldExtractor,
    items_path: FieldPath,
    next_token_path: FieldPath,
    start: DateTime<Utc>,
    health: Health,
    backoff: Backoff,
    /// No request may be sent before this instant (ResourceExhausted).
    cooldown_until: Option<Instant>,
    /// Where the pause is also written, so a restarted daemon keeps it.
    cooldown_file: PathBuf,
    // Cursor state, as of the last page handed to the pipeline.
    token: Option<String>,
    resume_at: Option<DateTime<Utc>>,
    newest_time: Option<DateTime<Utc>>,
    dedup_until: Option<DateTime<Utc>>,
    recent: RecentIds,
    /// No request before this instant: set after a page without a next
    /// token, whose only continuation is the overlap window again.
    next_request_at: Option<Instant>,
    /// The last page had no next token (logged once per streak).
    tokenless: bool,
}

impl VezaSource {
    pub fn new(cfg: VezaConfig, ctx: SourceContext) -> anyhow::Result<Self> {
        let path = format!("sources.{}", ctx.name);
        let endpoint = url::Url::parse(&cfg.url)
            .and_then(|base| base.join(&cfg.path))
            .map_err(|e| anyhow::anyhow!("{path}.url: {e}"))?;
        let token_source = cfg
            .token_keys()
            .source("token")
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?
            .ok_or_else(|| anyhow::anyhow!("{path}.token_file: no token configured"))?;
        let api_token = token_source
            .load()
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        let parse =
            |p: &Paths, key: &str| p.parse().map_err(|e| anyhow::anyhow!("{path}.{key}: {e}"));
        let extractor = FieldExtractor::new(
            parse(&cfg.id_path, "id_path")?,
            parse(&cfg.time_path, "time_path")?,
            parse(&cfg.type_path, "type_path")?,
        );
        let items_path = FieldPath::parse(&cfg.items_path)
            .map_err(|e| anyhow::anyhow!("{path}.items_path: {e}"))?;
        let next_token_path = FieldPath::parse(&cfg.next_token_path)
            .map_err(|e| anyhow::anyhow!("{path}.next_token_path: {e}"))?;
        let start = StartAt::parse(&cfg.start_at)
            .map_err(|e| anyhow::anyhow!("{path}.start_at: {e}"))?
            .resolve(Utc::now());
        let stored: StoredState = match &ctx.checkpoint {
            Some(bytes) => serde_json::from_slice(bytes).map_err(|e| {
                anyhow::anyhow!(
                    "checkpoint of source {} is not a Veza cursor ({e}); reset it with \
                     `auditrelay checkpoint reset --source {}`",
                    ctx.name,
                    ctx.name
                )
            })?,
            None => StoredState::default(),
        };
        let client = crate::http::client(&cfg.tls, cfg.timeout, &path)?;
        ctx.health.register(&format!("source.{}", ctx.name));
        if let Some(t) = stored.newest_time {
            metrics().set_committed_time(&ctx.name, t);
        }
        info!(
            source = %ctx.name,
            resume = if stored.token.is_some() { "page token" } else if stored.newest_time.is_some() { "newest event time minus overlap" } else { "start_at" },
            "veza source ready"
        );
        let cooldown_file = ctx.state_dir.join("cooldown").join(&ctx.name);
        let cooldown_until = read_cooldown(&cooldown_file);
        if let Some(until) = cooldown_until {
            warn!(source = %ctx.name, wait_s = until.saturating_duration_since(Instant::now()).as_secs_f64(), "still inside a ResourceExhausted pause from before the restart; waiting");
        }
        Ok(VezaSource {
            name: ctx.name.as_str().into(),
            cooldown_file,
            backoff: Backoff::new(cfg.retry),
            recent: RecentIds::from_list(cfg.recent_ids, stored.recent_ids),
            client,
            endpoint,
            token_source,
            api_token,
            extractor,
            items_path,
            next_token_path,
            start,
            health: ctx.health,
            cooldown_until,
            token: stored.token,
            resume_at: stored.resume_at,
            newest_time: stored.newest_time,
            dedup_until: stored.dedup_until,
            next_request_at: None,
            tokenless: false,
            cfg,
        })
    }

    fn health_key(&self) -> String {
        format!("source.{}", self.name)
    }

    /// Where the filter of a token-less request starts.
    fn filter_start(&self) -> DateTime<Utc> {
        if let Some(t) = self.resume_at {
            return t;
        }
        match self.newest_time {
            Some(t) => t - chrono::Duration::from_std(self.cfg.overlap).unwrap_or_default(),
            None => self.start,
        }
    }

    async fn request(&self) -> Outcome {
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
        let started = Instant::now();
        let resp = self
            .client
            .get(self.endpoint.clone())
            .query(&query)
            .bearer_auth(self.api_token.expose())
            .header(reqwest::header::ACCEPT, "application/json")
            .send()
            .await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                return Outcome::Transient(format!("{what}: {}", crate::http::describe_error(e)));
            }
        };
        let status = resp.status().as_u16();
        let retry_after = crate::http::retry_after(resp.headers());
        let body = match resp.bytes().await {
            Ok(b) => b,
            Err(e) => {
                return Outcome::Transient(format!(
                    "HTTP {status}: reading the body failed (connection reset?): {}",
                    crate::http::describe_error(e)
                ))
            }
        };
        metrics()
            .source_request_seconds
            .with_label_values(&[&self.name])
            .observe(started.elapsed().as_secs_f64());
        self.classify(status, retry_after, body)
    }

    fn classify(&self, status: u16, retry_after: Option<Duration>, body: Bytes) -> Outcome {
        if status == 429 {
            return Outcome::RateLimited(retry_after.unwrap_or(self.cfg.rate_limit_wait));
        }
        if (200..300).contains(&status) {
            // The common case: a whole JSON page. Anything else in a 2xx is
            // either a gRPC error passed through the gateway or a broken body.
            match serde_json::from_slice::<&RawValue>(&body) {
                Ok(root) => {
                    if self.items_path.lookup(root).is_some() {
                        let next_token = self
                            .next_token_path
                            .lookup(root)
                            .and_then(|v| {
                                serde_json::from_str::<Option<String>>(v.get())
                                    .ok()
                                    .flatten()
                            })
                            .filter(|t| !t.is_empty());
                        return Outcome::Page { body, next_token };
                    }
                }
                Err(e) => {
                    return Outcome::Transient(format!(
                        "HTTP {status}: body is not valid JSON ({e}, {} bytes received)",
                        body.len()
                    ))
                }
            }
        }
        let grpc = GrpcError::sniff(&body);
        if grpc.as_ref().is_some_and(GrpcError::is_resource_exhausted) {
            return Outcome::RateLimited(retry_after.unwrap_or(self.cfg.rate_limit_wait));
        }
        let code = grpc.as_ref().and_then(|g| g.code);
        if status == 401 || status == 403 || code == Some(16) || code == Some(7) {
            return Outcome::Unauthorized(status);
        }
        if status == 400 || code == Some(3) {
            let text = snippet(&body);
            return if self.token.is_some() {
                Outcome::TokenRejected(format!("HTTP {status}: {text}"))
            } else {
                Outcome::ClientError(status, text)
            };
        }
        if status >= 500 || status == 408 || (200..300).contains(&status) {
            // A 2xx lands here when it lacked the items member.
            return Outcome::Transient(format!(
                "HTTP {status}: not a page (no \"{}\" member): {}",
                self.items_path,
                snippet(&body)
            ));
        }
        Outcome::ClientError(status, snippet(&body))
    }

    /// Turns a page into a batch, updating the cursor state.
    fn accept_page(
        &mut self,
        body: Bytes,
        next_token: Option<String>,
    ) -> anyhow::Result<Option<Batch>> {
        let root: &RawValue = serde_json::from_slice(&body)?;
        let items: Vec<&RawValue> = match self.items_path.lookup(root) {
            Some(v) => serde_json::from_str(v.get())
                .map_err(|e| anyhow::anyhow!("\"{}\" is not an array: {e}", self.items_path))?,
            None => Vec::new(),
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
            let ev = self.extractor.event(&body, item);
            if let (Some(until), Some(t)) = (self.dedup_until, ev.time) {
                if t > until {
                    debug!(source = %self.name, "past the overlap window; de-duplication off");
                    self.dedup_until = None;
                }
            }
            // By id, or by content when there is none (an empty id is
            // none): distinct entries without ids are never merged.
            if !self.recent.insert(&super::poll::dedup_key(&ev)) {
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
                    warn!(source = %self.name, wait_s = self.cfg.poll_interval.as_secs_f64(), "page without next_page_token; continuing from the newest event time minus overlap after poll_interval");
                }
                self.tokenless = true;
                self.token = None;
                self.dedup_until = self.newest_time;
                self.next_request_at = Some(Instant::now() + self.cfg.poll_interval);
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
            recent_ids: &self.recent,
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
    pub fn parse_response(&mut self, status: u16, body: Bytes) -> Option<Vec<crate::event::Event>> {
        match self.classify(status, None, body) {
            Outcome::Page { body, next_token } => match self.accept_page(body, next_token) {
                Ok(Some(batch)) => Some(batch.events),
                _ => Some(Vec::new()),
            },
            _ => None,
        }
    }

    fn count(&self, outcome: &str) {
        metrics()
            .source_requests
            .with_label_values(&[&self.name, outcome])
            .inc();
    }
}

#[async_trait]
impl Source for VezaSource {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        loop {
            if let Some(until) = self.cooldown_until {
                tokio::time::sleep_until(until.into()).await;
                self.cooldown_until = None;
            }
            if let Some(at) = self.next_request_at {
                tokio::time::sleep_until(at.into()).await;
                self.next_request_at = None;
            }
            match self.request().await {
                Outcome::Page { body, next_token } => {
                    self.backoff.reset();
                    self.health.set_ready(&self.health_key());
                    match self.accept_page(body, next_token)? {
                        Some(batch) => {
                            self.count("ok");
                            return Ok(Some(batch));
                        }
                        None => {
                            self.count("empty");
                            sleep(self.cfg.poll_interval).await;
                        }
                    }
                }
                Outcome::RateLimited(wait) => {
                    self.count("rate_limited");
                    metrics()
                        .rate_limit_waits
                        .with_label_values(&[&self.name])
                        .inc();
                    let pause = with_jitter(wait, self.cfg.rate_limit_jitter);
                    warn!(source = %self.name, wait_s = pause.as_secs_f64(), "ResourceExhausted: pausing all requests to this source");
                    self.cooldown_until = Some(Instant::now() + pause);
                    write_cooldown(&self.cooldown_file, pause);
                }
                Outcome::Transient(why) => {
                    self.count("transient_error");
                    metrics()
                        .source_retries
                        .with_label_values(&[&self.name])
                        .inc();
                    let delay = self.backoff.next_delay();
                    warn!(source = %self.name, error = %why, retry_in_s = delay.as_secs_f64(), "request failed; retrying the same page");
                    sleep(delay).await;
                }
                Outcome::Unauthorized(status) => {
                    self.count("unauthorized");
                    let reread = self.token_source.load();
                    let rotated = matches!(&reread, Ok(t) if *t != self.api_token);
                    match reread {
                        Ok(t) => self.api_token = t,
                        Err(e) => {
                            error!(source = %self.name, error = %e, "cannot re-read the API token")
                        }
                    }
                    if rotated {
                        info!(source = %self.name, from = %self.token_source.describe(), "API token changed; retrying with the new one");
                        continue;
                    }
                    let reason = format!(
                        "the Veza API rejected the token (HTTP {status}); put a valid API key with audit-log read access in {}",
                        self.token_source.describe()
                    );
                    error!(source = %self.name, "{reason}");
                    self.health.set_unready(&self.health_key(), reason);
                    let delay = self.backoff.next_delay().max(self.cfg.auth_retry);
                    sleep(delay).await;
                }
                Outcome::TokenRejected(why) => {
                    self.count("token_rejected");
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
                Outcome::ClientError(status, text) => {
                    self.count("client_error");
                    let delay = self.backoff.next_delay().max(self.cfg.auth_retry);
                    error!(source = %self.name, status, response = %text, retry_in_s = delay.as_secs_f64(), "the API refused the request; check url, path and page_size");
                    sleep(delay).await;
                }
            }
        }
    }
}

/// Persists the end of a rate-limit pause (wall clock), so a daemon
/// restarted inside the pause does not ask again early. Best effort: a
/// failure is logged and the in-memory pause still holds.
fn write_cooldown(path: &std::path::Path, pause: Duration) {
    let until = Utc::now() + chrono::Duration::from_std(pause).unwrap_or_default();
    let tmp = path.with_extension("tmp");
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| std::fs::write(&tmp, until.to_rfc3339()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        warn!(file = %path.display(), error = %e, "cannot persist the rate-limit pause");
    }
}

/// The rest of a persisted pause, if it has not ended yet.
fn read_cooldown(path: &std::path::Path) -> Option<Instant> {
    let text = std::fs::read_to_string(path).ok()?;
    let until = DateTime::parse_from_rfc3339(text.trim())
        .ok()?
        .with_timezone(&Utc);
    let left = (until - Utc::now()).to_std().ok()?;
    Some(Instant::now() + left)
}

/// The checkpoint `auditrelay checkpoint set` writes: resume from a page
/// token, or from a time (exactly, without overlap).
pub fn manual_checkpoint(
    token: Option<String>,
    time: Option<DateTime<Utc>>,
) -> Result<Vec<u8>, String> {
    let state = StateView {
        token: &token,
        resume_at: &time,
        newest_time: &None,
        dedup_until: &None,
        recent_ids: &RecentIds::new(1),
    };
    serde_json::to_vec(&state).map_err(|e| e.to_string())
}

/// A gRPC-style error body: `{"code":8,"message":...}` and variants.
#[derive(Debug, Default)]
struct GrpcError {
    code: Option<i64>,
    status: Option<String>,
    message: Option<String>,
}

impl GrpcError {
    /// Reads an error body if it is a small JSON object with a code or status.
    fn sniff(body: &[u8]) -> Option<GrpcError> {
        if body.len() > 64 * 1024 || !body.trim_ascii_start().starts_with(b"{") {
            return None;
        }
        #[derive(Deserialize)]
        struct Wire {
            code: Option<serde_json::Value>,
            status: Option<serde_json::Value>,
            message: Option<String>,
            error: Option<Box<Wire>>,
        }
        let wire: Wire = serde_json::from_slice(body).ok()?;
        let wire = match wire.error {
            Some(inner) if wire.code.is_none() => *inner,
            _ => wire,
        };
        let mut out = GrpcError {
            message: wire.message,
            ..Default::default()
        };
        for v in [&wire.code, &wire.status].into_iter().flatten() {
            match v {
                serde_json::Value::Number(n) => out.code = out.code.or(n.as_i64()),
                serde_json::Value::String(s) => out.status = out.status.clone().or(Some(s.clone())),
                _ => {}
            }
        }
        if out.code.is_none() && out.status.is_none() {
            return None;
        }
        Some(out)
    }

    fn is_resource_exhausted(&self) -> bool {
        let named = |s: &str| {
            let s = s.to_ascii_lowercase().replace('_', "");
            s.contains("resourceexhausted") || s.contains("resourceexhaused")
        };
        self.code == Some(8)
            || self.status.as_deref().is_some_and(named)
            || (self.code.is_none() && self.message.as_deref().is_some_and(named))
    }
}

fn snippet(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(&body[..body.len().min(300)]);
    text.replace(['\n', '\r'], " ")
}

impl super::SourceType for VezaConfig {
    const KIND: &'static str = "veza";

    fn validate(&self, path: &str, problems: &mut Problems) {
        VezaConfig::validate(self, path, problems)
    }

    fn manual_checkpoint(
        &self,
        token: Option<String>,
        time: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<u8>, String> {
        manual_checkpoint(token, time)
    }

    fn build(&self, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(VezaSource::new(self.clone(), ctx)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_bodies_are_recognised() {
        let re =
            |b: &str| GrpcError::sniff(b.as_bytes()).is_some_and(|g| g.is_resource_exhausted());
        assert!(re(r#"{"code":8,"message":"slow down"}"#));
        assert!(re(r#"{"code":"RESOURCE_EXHAUSTED"}"#));
        assert!(re(
            r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}"#
        ));
        assert!(re(r#"{"status":"ResourceExhausted","message":"x"}"#));
        assert!(!re(r#"{"code":3,"message":"bad token"}"#));
        assert!(!re(r#"{"values":[],"next_page_token":"x"}"#));
        assert!(!re("<html>"));
    }
}
