//! What the window-polled HTTP sources (`quickztna`, `certifyclouds`,
//! `http_pull`) share: a request loop that honours rate limits, retries
//! transient failures and re-reads a rejected token, and the de-duplication
//! state of a time window re-read with an overlap.
//!
//! These APIs have no durable cursor, so a source asks again for
//! "everything since the watermark minus the overlap" and drops what it has
//! already delivered. The watermark only moves over events handed to the
//! pipeline, and each batch carries a snapshot of the state as of that
//! batch, so a committed checkpoint never claims an unconfirmed event.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use serde::de::{Deserializer, SeqAccess, Visitor};
use serde::ser::SerializeSeq;
use serde::{Deserialize, Serialize, Serializer};
use sha2::{Digest, Sha256};
use tokio::time::sleep;
use tracing::{error, info, warn};

use crate::config::{Problems, RetryConfig};
use crate::event::Event;
use crate::health::Health;
use crate::metrics::{metrics, DROPPED_BEFORE_WINDOW};
use crate::retry::{with_jitter, Backoff};
use crate::secret::{Secret, SecretSource};

/// The key an event is de-duplicated by: its id, else a digest of its bytes
/// (an event without an id must not be re-sent on every poll of its window).
/// Borrowed when there is an id: no allocation per event on a hot page.
pub fn dedup_key(ev: &Event) -> std::borrow::Cow<'_, str> {
    match ev.id.as_deref().filter(|id| !id.trim().is_empty()) {
        Some(id) => id.into(),
        None => {
            let digest = Sha256::digest(&ev.raw);
            format!("sha256:{}", hex::encode(&digest[..16])).into()
        }
    }
}

/// The ids delivered inside the current overlap window, with their event
/// times, bounded in count. Entries older than the window are pruned, so the
/// set (and the checkpoint) stays as small as the window.
#[derive(Clone, Debug)]
pub struct SeenSet {
    order: VecDeque<(Box<str>, Option<DateTime<Utc>>)>,
    set: HashSet<Box<str>>,
    cap: usize,
}

/// A set built without a configured bound (a fresh checkpoint) holds this
/// many; sources set theirs with [`SeenSet::with_cap`].
const DEFAULT_SEEN_CAP: usize = 100_000;

impl Default for SeenSet {
    fn default() -> Self {
        SeenSet::new(DEFAULT_SEEN_CAP)
    }
}

impl SeenSet {
    pub fn new(cap: usize) -> Self {
        SeenSet {
            order: VecDeque::new(),
            set: HashSet::new(),
            cap: cap.max(1),
        }
    }

    /// Rebuilds a set from a checkpoint, under a possibly new cap.
    pub fn with_cap(mut self, cap: usize) -> Self {
        self.cap = cap.max(1);
        self.evict();
        self
    }

    pub fn contains(&self, key: &str) -> bool {
        self.set.contains(key)
    }

    /// Records `key`; false when it was already present.
    pub fn insert(&mut self, key: &str, time: Option<DateTime<Utc>>) -> bool {
        if self.set.contains(key) {
            return false;
        }
        let key: Box<str> = key.into();
        self.set.insert(key.clone());
        self.order.push_back((key, time));
        self.evict();
        true
    }

    fn evict(&mut self) {
        while self.order.len() > self.cap {
            if let Some((old, _)) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    /// Forgets entries whose event time is before `cutoff`: a query from
    /// `cutoff` cannot return them again.
    pub fn prune_before(&mut self, cutoff: DateTime<Utc>) {
        let before = self.order.len();
        self.order.retain(|(_, t)| t.is_none_or(|t| t >= cutoff));
        if self.order.len() != before {
            self.set = self.order.iter().map(|(k, _)| k.clone()).collect();
        }
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Serialized as `[[key, time|null], ...]`, oldest first.
impl Serialize for SeenSet {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.order.len()))?;
        for (k, t) in &self.order {
            seq.serialize_element(&(k, t))?;
        }
        seq.end()
    }
}

impl<'de> Deserialize<'de> for SeenSet {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = SeenSet;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of [id, time] pairs")
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<SeenSet, A::Error> {
                let mut out = SeenSet::new(usize::MAX);
                while let Some((k, t)) = seq.next_element::<(String, Option<DateTime<Utc>>)>()? {
                    out.insert(&k, t);
                }
                Ok(out)
            }
        }
        d.deserialize_seq(V)
    }
}

/// Events of one response that are new: not seen before (nor twice in the
/// response), and not older than the window's start.
pub struct Fresh {
    pub events: Vec<Event>,
    /// Ids already delivered (the overlap doing its job).
    pub repeated: u64,
    /// Events older than the window start (delivered before, or later than
    /// the overlap allows: make `overlap` longer if the API indexes late).
    pub before_window: u64,
    /// The oldest of those, and the window start, for the log line.
    pub oldest_before_window: Option<DateTime<Utc>>,
    pub window_start: Option<DateTime<Utc>>,
}

/// Picks the new events of a response without recording them yet: the
/// caller records each batch's ids as it builds that batch's checkpoint.
pub fn fresh(seen: &SeenSet, events: Vec<Event>, window_start: Option<DateTime<Utc>>) -> Fresh {
    let mut out = Fresh {
        events: Vec::with_capacity(events.len()),
        repeated: 0,
        before_window: 0,
        oldest_before_window: None,
        window_start,
    };
    let mut here: HashSet<String> = HashSet::new();
    for ev in events {
        if let (Some(start), Some(t)) = (window_start, ev.time) {
            if t < start {
                out.before_window += 1;
                out.oldest_before_window = Some(out.oldest_before_window.map_or(t, |o| o.min(t)));
                continue;
            }
        }
        let key = dedup_key(&ev);
        if seen.contains(&key) || !here.insert(key.into_owned()) {
            out.repeated += 1;
            continue;
        }
        out.events.push(ev);
    }
    out
}

/// Counts the outcome of [`fresh`] in the shared metrics.
pub fn count_fresh(source: &str, fetched: usize, f: &Fresh) {
    let m = metrics();
    m.events_fetched
        .with_label_values(&[source])
        .inc_by(fetched as u64);
    if f.repeated > 0 {
        m.events_deduplicated
            .with_label_values(&[source])
            .inc_by(f.repeated);
    }
}

/// Counts and logs the entries of [`fresh`] older than the window: for an
/// API asked for exactly the window (a time filter), each one is an entry
/// not delivered. (Not for QuickZTNA, whose answers cover whole days or the
/// newest N entries: older entries there are re-reads, every poll.)
pub fn report_before_window(source: &str, f: &Fresh) {
    let m = metrics();
    if f.before_window > 0 {
        m.events_dropped
            .with_label_values(&[source, DROPPED_BEFORE_WINDOW])
            .inc_by(f.before_window);
        let fmt = |t: Option<DateTime<Utc>>| t.map(|t| t.to_rfc3339()).unwrap_or_default();
        warn!(
            source,
            dropped = f.before_window,
            oldest = %fmt(f.oldest_before_window),
            window_start = %fmt(f.window_start),
            "entries older than the window start were not delivered: delivered by an earlier pass, or indexed later than `overlap` allows (then raise overlap)"
        );
    }
}

/// When a page ends a pass in offset and page pagination.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Stop {
    /// A page shorter than the limit the server echoes (when below
    /// `page_size`) is the last; any other short page is confirmed by one
    /// more request (servers clamp silently, and may change the clamp).
    #[default]
    ShortPage,
    /// Only an empty page is the last (for APIs whose page size varies,
    /// e.g. pages cut by bytes).
    EmptyPage,
}

/// Whether a page of `returned` items is provably the last one, when
/// `asked` were asked for and the answer echoed `echoed` as its limit.
/// Only this answer's own word counts: an echo below `asked` is the server
/// stating its size. Page sizes seen before prove nothing (a server may
/// lower its clamp mid-walk, or cut pages by bytes), and neither does an
/// echo of `asked` (servers echo what they were sent): such a short page
/// costs one more request, which comes back empty at the end.
pub fn page_is_last(stop: Stop, asked: usize, returned: usize, echoed: Option<usize>) -> bool {
    match stop {
        _ if returned == 0 => true,
        Stop::EmptyPage => false,
        Stop::ShortPage => echoed.is_some_and(|e| e < asked && returned < e),
    }
}

/// A time as the query wants it.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum TimeFormat {
    /// `2026-03-15T08:42:17.003Z`
    #[default]
    Rfc3339,
    /// `2026-03-15T08:42:17Z` (whole seconds, rounded down)
    Rfc3339Seconds,
    /// `2026-03-15` (the day, rounded down)
    Date,
    /// Seconds since the epoch.
    Unix,
    /// Milliseconds since the epoch.
    UnixMs,
}

impl TimeFormat {
    pub fn format(self, t: DateTime<Utc>) -> String {
        use chrono::SecondsFormat;
        match self {
            TimeFormat::Rfc3339 => t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            TimeFormat::Rfc3339Seconds => t.to_rfc3339_opts(SecondsFormat::Secs, true),
            TimeFormat::Date => t.format("%Y-%m-%d").to_string(),
            TimeFormat::Unix => t.timestamp().to_string(),
            TimeFormat::UnixMs => t.timestamp_millis().to_string(),
        }
    }
}

/// A duration as a chrono duration (saturating).
pub fn chrono_of(d: Duration) -> chrono::Duration {
    chrono::Duration::from_std(d).unwrap_or(chrono::Duration::days(36500))
}

/// When the API says "slow down", and how long to wait.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Statuses that mean "rate limited" (the answer is not an error).
    #[serde(default = "default_rl_statuses")]
    pub status_codes: Vec<u16>,
    /// Honour `Retry-After` (seconds or an HTTP date).
    #[serde(default = "default_true")]
    pub retry_after: bool,
    /// Header with the time the limit resets: epoch seconds, or seconds from
    /// now when small (`reset_format`).
    #[serde(default = "default_reset_header")]
    pub reset_header: Option<String>,
    #[serde(default)]
    pub reset_format: ResetFormat,
    /// Header with the requests left; 0 on a successful answer pauses the
    /// source until the reset instead of provoking a refusal.
    #[serde(default = "default_remaining_header")]
    pub remaining_header: Option<String>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            status_codes: default_rl_statuses(),
            retry_after: true,
            reset_header: default_reset_header(),
            reset_format: ResetFormat::default(),
            remaining_header: default_remaining_header(),
        }
    }
}

fn default_rl_statuses() -> Vec<u16> {
    vec![429]
}
fn default_true() -> bool {
    true
}
fn default_reset_header() -> Option<String> {
    Some("X-RateLimit-Reset".into())
}
fn default_remaining_header() -> Option<String> {
    Some("X-RateLimit-Remaining".into())
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResetFormat {
    /// Epoch seconds when the value is larger than a year of seconds, else
    /// seconds from now.
    #[default]
    Auto,
    /// Epoch seconds.
    Unix,
    /// Seconds from now.
    Seconds,
}

impl RateLimitConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        for (i, s) in self.status_codes.iter().enumerate() {
            if !(400..=599).contains(s) {
                problems.push(
                    format!("{path}.rate_limit.status_codes[{i}]"),
                    format!("{s} is not an HTTP error status (400..599)"),
                );
            }
            if *s == 401 || *s == 403 {
                problems.push(
                    format!("{path}.rate_limit.status_codes[{i}]"),
                    format!("{s} means the token was refused; it cannot be a rate-limit signal"),
                );
            }
        }
        for (key, v) in [
            ("reset_header", &self.reset_header),
            ("remaining_header", &self.remaining_header),
        ] {
            if let Some(h) = v {
                if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    problems.push(
                        format!("{path}.rate_limit.{key}"),
                        format!("\"{h}\" is not a header name"),
                    );
                }
            }
        }
    }

    /// The wait the headers of an answer ask for, if any.
    fn announced_wait(&self, headers: &HeaderMap) -> Option<Duration> {
        if self.retry_after {
            if let Some(d) = crate::http::retry_after(headers) {
                return Some(d);
            }
        }
        self.reset_wait(headers)
    }

    fn reset_wait(&self, headers: &HeaderMap) -> Option<Duration> {
        let name = self.reset_header.as_deref()?;
        let raw = headers.get(name)?.to_str().ok()?.trim();
        let value: f64 = raw.parse().ok()?;
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        let epoch = match self.reset_format {
            ResetFormat::Unix => true,
            ResetFormat::Seconds => false,
            ResetFormat::Auto => value > 366.0 * 86400.0,
        };
        if epoch {
            let now = Utc::now().timestamp_millis() as f64 / 1000.0;
            Some(Duration::from_secs_f64((value - now).max(0.0)))
        } else {
            Some(Duration::from_secs_f64(value.min(86400.0)))
        }
    }

    fn exhausted(&self, headers: &HeaderMap) -> bool {
        let Some(name) = self.remaining_header.as_deref() else {
            return false;
        };
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|n| n <= 0.0)
    }
}

/// A response the caller gets to see: a 2xx, or a refusal the request loop
/// cannot resolve by waiting (400, 404, 422…).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How to tell the operator what a refused token means for this API.
pub type AuthAdvice = Box<dyn Fn(u16, &str) -> String + Send + Sync>;

/// Everything a request loop needs besides the request itself.
pub struct FetcherConfig {
    pub name: Arc<str>,
    pub client: reqwest::Client,
    pub token_source: Option<SecretSource>,
    pub health: Health,
    pub retry: RetryConfig,
    pub auth_retry: Duration,
    pub rate_limit: RateLimitConfig,
    pub rate_limit_wait: Duration,
    pub rate_limit_jitter: Duration,
    pub advice: AuthAdvice,
}

/// The request loop of one source.
pub struct Fetcher {
    cfg: FetcherConfig,
    token: Option<Secret>,
    backoff: Backoff,
    /// No request may be sent before this instant.
    cooldown_until: Option<Instant>,
}

impl Fetcher {
    pub fn new(cfg: FetcherConfig) -> anyhow::Result<Self> {
        let token = match &cfg.token_source {
            Some(src) => Some(
                src.load()
                    .map_err(|e| anyhow::anyhow!("sources.{}: {e}", cfg.name))?,
            ),
            None => None,
        };
        cfg.health.register(&format!("source.{}", cfg.name));
        Ok(Fetcher {
            backoff: Backoff::new(cfg.retry),
            token,
            cooldown_until: None,
            cfg,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    fn health_key(&self) -> String {
        format!("source.{}", self.cfg.name)
    }

    fn count(&self, outcome: &str) {
        metrics()
            .source_requests
            .with_label_values(&[&self.cfg.name, outcome])
            .inc();
    }

    /// Counts a 2xx answer by what it held (`ok` or `empty`).
    pub fn count_answer(&self, had_events: bool) {
        self.count(if had_events { "ok" } else { "empty" });
    }

    /// [`Fetcher::send`] for the common request: `GET url?query`, JSON
    /// accepted, the token as a bearer.
    pub async fn get_json<K: AsRef<str>>(
        &mut self,
        url: &url::Url,
        query: &[(K, String)],
    ) -> Result<Reply, Reply> {
        let pairs: Vec<(&str, &str)> = query
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_str()))
            .collect();
        self.send(|c, t| {
            let req = c
                .get(url.clone())
                .query(&pairs)
                .header(reqwest::header::ACCEPT, "application/json");
            match t {
                Some(t) => req.bearer_auth(t.expose()),
                None => req,
            }
        })
        .await
    }

    /// Sends the request `build` makes until the API answers 2xx, or refuses
    /// it in a way waiting cannot fix (returned as `Err`). Rate limits pause
    /// every request of this source; 5xx, timeouts and broken connections
    /// are retried with backoff; a refused token is re-read and reported.
    /// Cancel-safe: only the pacing state changes.
    pub async fn send<F>(&mut self, build: F) -> Result<Reply, Reply>
    where
        F: Fn(&reqwest::Client, Option<&Secret>) -> reqwest::RequestBuilder,
    {
        loop {
            if let Some(until) = self.cooldown_until {
                tokio::time::sleep_until(until.into()).await;
                self.cooldown_until = None;
            }
            let started = Instant::now();
            let sent = build(&self.cfg.client, self.token.as_ref()).send().await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    let what = if e.is_timeout() {
                        "timed out"
                    } else if e.is_connect() {
                        "connection failed"
                    } else {
                        "request failed"
                    };
                    self.retry_later(&format!("{what}: {}", crate::http::describe_error(e)))
                        .await;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => {
                    self.retry_later(&format!(
                        "HTTP {status}: reading the body failed (connection reset?): {}",
                        crate::http::describe_error(e)
                    ))
                    .await;
                    continue;
                }
            };
            metrics()
                .source_request_seconds
                .with_label_values(&[&self.cfg.name])
                .observe(started.elapsed().as_secs_f64());
            if self.cfg.rate_limit.status_codes.contains(&status) {
                let wait = self
                    .cfg
                    .rate_limit
                    .announced_wait(&headers)
                    .unwrap_or(self.cfg.rate_limit_wait);
                self.pause(wait, status);
                continue;
            }
            if (200..300).contains(&status) {
                self.backoff.reset();
                self.cfg.health.set_ready(&self.health_key());
                if self.cfg.rate_limit.exhausted(&headers) {
                    if let Some(wait) = self.cfg.rate_limit.reset_wait(&headers) {
                        info!(source = %self.cfg.name, wait_s = wait.as_secs_f64(), "no requests left until the rate limit resets; pausing");
                        self.cooldown_until = Some(Instant::now() + wait);
                    }
                }
                return Ok(Reply {
                    status,
                    headers,
                    body,
                });
            }
            if status == 401 || status == 403 {
                self.refused_token(status, &body).await;
                continue;
            }
            if status == 408 || status >= 500 {
                self.retry_later(&format!("HTTP {status}: {}", snippet(&body)))
                    .await;
                continue;
            }
            self.count("client_error");
            return Err(Reply {
                status,
                headers,
                body,
            });
        }
    }

    fn pause(&mut self, wait: Duration, status: u16) {
        self.count("rate_limited");
        metrics()
            .rate_limit_waits
            .with_label_values(&[&self.cfg.name])
            .inc();
        let pause = with_jitter(wait, self.cfg.rate_limit_jitter);
        warn!(source = %self.cfg.name, status, wait_s = pause.as_secs_f64(), "rate limited: pausing all requests to this source");
        self.cooldown_until = Some(Instant::now() + pause);
    }

    /// A transient failure: count it, log it, wait the next backoff delay.
    pub async fn retry_later(&mut self, why: &str) {
        self.count("transient_error");
        metrics()
            .source_retries
            .with_label_values(&[&self.cfg.name])
            .inc();
        let delay = self.backoff.next_delay();
        warn!(source = %self.cfg.name, error = %why, retry_in_s = delay.as_secs_f64(), "request failed; retrying");
        sleep(delay).await;
    }

    /// A refusal waiting will not fix: log what the API said with `hint`,
    /// then wait at least `auth_retry` (the operator must act).
    pub async fn give_up_for_now(&mut self, reply: &Reply, hint: &str) {
        let delay = self.backoff.next_delay().max(self.cfg.auth_retry);
        error!(source = %self.cfg.name, status = reply.status, response = %snippet(&reply.body), retry_in_s = delay.as_secs_f64(), "the API refused the request; {hint}");
        sleep(delay).await;
    }

    async fn refused_token(&mut self, status: u16, body: &[u8]) {
        self.count("unauthorized");
        let Some(src) = self.cfg.token_source.clone() else {
            let reason = format!(
                "the API answered HTTP {status} ({}) and no token is configured; set token_file, token_env or token_credential",
                snippet(body)
            );
            error!(source = %self.cfg.name, "{reason}");
            self.cfg.health.set_unready(&self.health_key(), reason);
            sleep(self.backoff.next_delay().max(self.cfg.auth_retry)).await;
            return;
        };
        let reread = src.load();
        let rotated = matches!((&reread, &self.token), (Ok(new), Some(old)) if new != old);
        match reread {
            Ok(t) => self.token = Some(t),
            Err(e) => error!(source = %self.cfg.name, error = %e, "cannot re-read the API token"),
        }
        if rotated {
            info!(source = %self.cfg.name, from = %src.describe(), "API token changed; retrying with the new one");
            return;
        }
        let reason = format!(
            "{} (token from {})",
            (self.cfg.advice)(status, &snippet(body)),
            src.describe()
        );
        error!(source = %self.cfg.name, "{reason}");
        self.cfg.health.set_unready(&self.health_key(), reason);
        sleep(self.backoff.next_delay().max(self.cfg.auth_retry)).await;
    }
}

/// One walk through the pages of a time window. Kept in the checkpoint so a
/// restart continues the walk instead of skipping what it had not reached.
#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct Pass {
    /// The window: from the watermark minus the overlap…
    pub start: DateTime<Utc>,
    /// …to when the walk began (later events wait for the next pass).
    pub end: DateTime<Utc>,
    /// Where the next page starts (an offset, page number, token or link);
    /// `None` before the first page.
    pub cursor: Option<String>,
    /// Newest event time delivered in this pass.
    pub newest: Option<DateTime<Utc>>,
    /// Ids of the last two pages: entries inserted while paging shift the
    /// offsets, so a page may repeat the end of the previous one.
    #[serde(default)]
    pub recent: Vec<String>,
    /// Where the keys of the current page start in `recent`.
    #[serde(default)]
    pub recent_split: usize,
    /// Pages in a row holding nothing beyond the two before (an API
    /// ignoring the cursor, or inserting ahead of it faster than it is read).
    #[serde(default)]
    pub same_pages: u32,
    /// Offset pagination: the key of the last entry read, which the next
    /// page (asked from that entry's offset) must hold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub anchor: Option<String>,
    /// Walks of this pass restarted because the anchor had moved.
    #[serde(default)]
    pub offset_restarts: u32,
}

/// Restarts of one pass's walk after its offsets shifted backwards; past
/// this the walk goes on (a server purging faster than a walk completes).
pub const OFFSET_RESTART_LIMIT: u32 = 3;

/// Pages in a row without progress after which a pass is ended: asking
/// again would loop forever.
pub const SAME_PAGE_LIMIT: u32 = 3;

/// The checkpoint of a source that walks time windows page by page.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
pub struct WindowState {
    /// Newest event time of the completed passes (never later than the
    /// pass's end).
    pub watermark: Option<DateTime<Utc>>,
    /// Set by `auditrelay checkpoint set --time`: where the first window
    /// starts, exactly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume_at: Option<DateTime<Utc>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pass: Option<Pass>,
    #[serde(default)]
    pub seen: SeenSet,
}

/// How a page ends its pass.
pub enum Next {
    /// More pages: continue at this cursor.
    Cursor(String),
    /// The window is exhausted.
    Done,
}

impl WindowState {
    /// Reads a checkpoint; `kind` names the source type in the error.
    pub fn load(
        ctx_name: &str,
        bytes: Option<&[u8]>,
        kind: &str,
        cap: usize,
    ) -> anyhow::Result<Self> {
        let mut state: WindowState = match bytes {
            Some(b) => serde_json::from_slice(b).map_err(|e| {
                anyhow::anyhow!(
                    "checkpoint of source {ctx_name} is not a {kind} window state ({e}); reset it \
                     with `auditrelay checkpoint reset --source {ctx_name}`"
                )
            })?,
            None => WindowState::default(),
        };
        state.seen = std::mem::take(&mut state.seen).with_cap(cap);
        if let Some(p) = &mut state.pass {
            p.recent_split = p.recent_split.min(p.recent.len());
        }
        Ok(state)
    }

    /// The pass in progress, or a new one over `[watermark - overlap, now]`.
    pub fn pass(&mut self, overlap: Duration, start_at: DateTime<Utc>) -> &mut Pass {
        let start = match (self.watermark, self.resume_at) {
            (Some(w), _) => w - chrono_of(overlap),
            (None, Some(r)) => r,
            (None, None) => start_at,
        };
        self.pass.get_or_insert_with(|| Pass {
            start,
            end: Utc::now(),
            cursor: None,
            newest: None,
            recent: Vec::new(),
            recent_split: 0,
            same_pages: 0,
            anchor: None,
            offset_restarts: 0,
        })
    }

    /// Where an offset walk goes after a page holding `keys`, asked at the
    /// pass's cursor; `last` when the page is provably the last. Each page
    /// is asked from the offset of the previous page's last entry, so it
    /// must hold that entry: when it does not, entries before the cursor
    /// were deleted (retention purges the oldest) and later ones moved to
    /// offsets already read, so the walk restarts at the window's first
    /// page (what it re-reads is dropped by key). Call before `record_page`.
    pub fn next_offset(&mut self, source: &str, keys: &[String], last: bool) -> Next {
        let Some(pass) = self.pass.as_mut() else {
            return Next::Done;
        };
        let at: u64 = pass
            .cursor
            .as_deref()
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        let anchor = pass.anchor.take();
        let found = anchor.as_ref().map(|a| keys.iter().position(|k| k == a));
        if let Some(None) = found {
            metrics().offset_shifts.with_label_values(&[source]).inc();
            if pass.offset_restarts < OFFSET_RESTART_LIMIT {
                pass.offset_restarts += 1;
                warn!(source, offset = at, restarts = pass.offset_restarts, "the page lacks the last entry of the page before: entries were deleted or purged under the cursor (or an insert burst moved it); walking this window again from its first page");
                // The re-read pages are expected, not a stuck API.
                pass.recent.clear();
                pass.recent_split = 0;
                pass.same_pages = 0;
                return Next::Cursor("0".into());
            }
            error!(source, offset = at, "the page lacks the last entry of the page before again; going on, so entries deleted under the cursor may have moved past it (retention purging faster than a pass completes: shorten the window with start_at, or page newest first)");
        }
        let after_anchor = match found {
            Some(Some(p)) => keys.len() - p - 1,
            _ => keys.len(),
        };
        match keys.last() {
            Some(key) if !last && after_anchor > 0 => {
                pass.anchor = Some(key.clone());
                Next::Cursor((at + keys.len() as u64 - 1).to_string())
            }
            _ => Next::Done,
        }
    }

    /// The new events of a page of the current pass.
    pub fn fresh(&self, events: Vec<Event>) -> Fresh {
        let Some(pass) = &self.pass else {
            return fresh(&self.seen, events, None);
        };
        let mut f = fresh(&self.seen, events, Some(pass.start));
        if !pass.recent.is_empty() {
            let before = f.events.len();
            f.events
                .retain(|e| !pass.recent.iter().any(|r| *r == dedup_key(e)));
            f.repeated += (before - f.events.len()) as u64;
        }
        f
    }

    /// Records a page's new events as delivered and moves the cursor; the
    /// returned checkpoint describes everything up to this page.
    /// `returned_keys` are the keys of every item the page held.
    pub fn record_page(
        &mut self,
        source: &str,
        delivered: &[Event],
        returned_keys: Vec<String>,
        next: Next,
        overlap: Duration,
    ) -> Bytes {
        let overlap = chrono_of(overlap);
        let mut finished = matches!(next, Next::Done);
        if let Some(pass) = &mut self.pass {
            for ev in delivered {
                if let Some(t) = ev.time {
                    pass.newest = Some(pass.newest.map_or(t, |n| n.max(t)));
                }
            }
            // A page holding nothing beyond the last two pages: the API
            // ignores the cursor, or inserts ahead of it as fast as the
            // walk reads. Either way the walk is not advancing.
            let before: HashSet<&str> = pass.recent.iter().map(String::as_str).collect();
            let stalled = !returned_keys.is_empty()
                && returned_keys.iter().all(|k| before.contains(k.as_str()));
            pass.same_pages = if stalled { pass.same_pages + 1 } else { 0 };
            // Keep the keys of the last two pages.
            pass.recent
                .drain(..pass.recent_split.min(pass.recent.len()));
            pass.recent_split = pass.recent.len();
            pass.recent.extend(returned_keys);
            if let Next::Cursor(c) = next {
                pass.cursor = Some(c);
            }
            if pass.same_pages >= SAME_PAGE_LIMIT && !finished {
                error!(source, pages = pass.same_pages + 1, "the API returned the same entries page after page: it ignores the pagination parameter (check the pagination settings) or inserts ahead of the cursor faster than pages are read; ending this pass");
                finished = true;
            }
        }
        for ev in delivered {
            self.seen.insert(&dedup_key(ev), ev.time);
        }
        if let Some(pass) = &self.pass {
            // Until the pass ends, any entry of its window may come back (the
            // order of the pages is unknown): keep every id from its start.
            let mut cutoff = pass.start;
            if finished {
                if let Some(r) = pass.newest.map(|n| n.min(pass.end)) {
                    let w = self.watermark.map_or(r, |w| w.max(r));
                    self.watermark = Some(w);
                    self.resume_at = None;
                    cutoff = cutoff.max(w - overlap);
                }
                self.pass = None;
            }
            self.seen.prune_before(cutoff);
        }
        Bytes::from(serde_json::to_vec(self).unwrap_or_default())
    }

    /// Whether the current pass is over (after `record_page`).
    pub fn between_passes(&self) -> bool {
        self.pass.is_none()
    }

    /// Newest event time delivered so far, for the checkpoint-lag metric.
    pub fn newest(&self) -> Option<DateTime<Utc>> {
        let in_pass = self.pass.as_ref().and_then(|p| p.newest);
        match (self.watermark, in_pass) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        }
    }
}

/// `auditrelay checkpoint set --time T` for a window-polled source.
pub fn manual_window_checkpoint(
    token: Option<String>,
    time: Option<DateTime<Utc>>,
) -> Result<Vec<u8>, String> {
    if token.is_some() {
        return Err("this source has no durable page token; use --time <RFC 3339>".into());
    }
    let state = WindowState {
        resume_at: time,
        ..Default::default()
    };
    serde_json::to_vec(&state).map_err(|e| e.to_string())
}

/// The start of a response body for a log line, on one line.
pub fn snippet(body: &[u8]) -> String {
    let end = body.len().min(300);
    let text = String::from_utf8_lossy(&body[..end]);
    text.replace(['\n', '\r'], " ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    fn t(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn ev(id: Option<&str>, time: &str, raw: &str) -> Event {
        Event {
            raw: Bytes::from(raw.to_string()),
            id: id.map(Into::into),
            time: Some(t(time)),
            kind: None,
        }
    }

    #[test]
    fn seen_set_prunes_by_time_and_round_trips() {
        let mut s = SeenSet::new(3);
        assert!(s.insert("a", Some(t("2026-01-01T00:00:00Z"))));
        assert!(!s.insert("a", None));
        s.insert("b", Some(t("2026-01-01T00:05:00Z")));
        s.insert("c", None);
        s.prune_before(t("2026-01-01T00:01:00Z"));
        assert!(!s.contains("a") && s.contains("b") && s.contains("c"));
        s.insert("d", None);
        s.insert("e", None);
        assert!(!s.contains("b"), "cap evicts the oldest");
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, r#"[["c",null],["d",null],["e",null]]"#);
        let back: SeenSet = serde_json::from_str(&json).unwrap();
        let back = back.with_cap(2);
        assert_eq!(back.len(), 2);
        assert!(back.contains("e") && !back.contains("c"));
    }

    #[test]
    fn fresh_drops_seen_repeated_and_old_and_keys_idless_events_by_content() {
        let mut seen = SeenSet::new(10);
        seen.insert("x", None);
        let events = vec![
            ev(Some("x"), "2026-01-01T00:10:00Z", "{}"),
            ev(Some("y"), "2026-01-01T00:10:00Z", "{}"),
            ev(Some("y"), "2026-01-01T00:10:00Z", "{}"),
            ev(Some("old"), "2026-01-01T00:00:00Z", "{}"),
            ev(None, "2026-01-01T00:10:00Z", r#"{"a":1}"#),
            ev(None, "2026-01-01T00:10:00Z", r#"{"a":1}"#),
            ev(None, "2026-01-01T00:10:00Z", r#"{"a":2}"#),
        ];
        let f = fresh(&seen, events, Some(t("2026-01-01T00:05:00Z")));
        assert_eq!(f.events.len(), 3);
        assert_eq!(f.repeated, 3);
        assert_eq!(f.before_window, 1);
        assert!(dedup_key(&f.events[1]).starts_with("sha256:"));
    }

    #[test]
    fn window_state_moves_the_watermark_only_when_a_pass_ends() {
        let overlap = Duration::from_secs(600);
        let start_at = t("2026-01-01T00:00:00Z");
        let mut st = WindowState::default();
        // Pass 1, newest first, two pages.
        st.pass(overlap, start_at);
        let p1 = vec![ev(Some("c"), "2026-01-01T00:30:00Z", "{}")];
        let f = st.fresh(p1.clone());
        let cp = st.record_page(
            "s",
            &f.events,
            vec!["c".into()],
            Next::Cursor("1".into()),
            overlap,
        );
        let mid: WindowState = serde_json::from_slice(&cp).unwrap();
        assert_eq!(
            mid.watermark, None,
            "mid-pass checkpoints keep the old watermark"
        );
        assert_eq!(mid.pass.as_ref().unwrap().cursor.as_deref(), Some("1"));
        assert!(mid.seen.contains("c"));
        // The next page repeats "c" (an insert shifted the offsets) and adds "b".
        let p2 = vec![
            ev(Some("c"), "2026-01-01T00:30:00Z", "{}"),
            ev(Some("b"), "2026-01-01T00:10:00Z", "{}"),
        ];
        let f = st.fresh(p2);
        assert_eq!(f.events.len(), 1);
        assert_eq!(f.repeated, 1);
        st.record_page(
            "s",
            &f.events,
            vec!["c".into(), "b".into()],
            Next::Done,
            overlap,
        );
        assert!(st.between_passes());
        assert_eq!(st.watermark, Some(t("2026-01-01T00:30:00Z")));
        assert!(!st.seen.contains("b"), "older than watermark minus overlap");
        // Pass 2 starts at watermark - overlap; a new event far newer does not
        // drop "c" from the seen-set while the pass may still return it.
        assert_eq!(st.pass(overlap, start_at).start, t("2026-01-01T00:20:00Z"));
        let f = st.fresh(vec![ev(Some("z"), "2026-01-01T05:00:00Z", "{}")]);
        st.record_page(
            "s",
            &f.events,
            vec!["z".into()],
            Next::Cursor("1".into()),
            overlap,
        );
        assert!(st.seen.contains("c"));
        let f = st.fresh(vec![ev(Some("c"), "2026-01-01T00:30:00Z", "{}")]);
        assert!(f.events.is_empty(), "c was delivered in pass 1");
    }

    #[test]
    fn a_pass_ends_when_the_api_ignores_the_cursor() {
        let overlap = Duration::from_secs(60);
        let mut st = WindowState::default();
        st.pass(overlap, t("2026-01-01T00:00:00Z"));
        for i in 0..SAME_PAGE_LIMIT + 1 {
            assert!(!st.between_passes(), "ended early at page {i}");
            st.record_page(
                "s",
                &[],
                vec!["a".into(), "b".into()],
                Next::Cursor(i.to_string()),
                overlap,
            );
        }
        assert!(st.between_passes());
    }

    #[test]
    fn empty_ids_are_no_ids() {
        let events = vec![
            ev(Some(""), "2026-01-01T00:10:00Z", r#"{"id":"","n":1}"#),
            ev(Some(""), "2026-01-01T00:10:00Z", r#"{"id":"","n":2}"#),
            ev(Some(" "), "2026-01-01T00:10:00Z", r#"{"id":" ","n":3}"#),
        ];
        let f = fresh(&SeenSet::new(10), events, None);
        assert_eq!(f.events.len(), 3, "distinct entries with empty ids merged");
        assert!(dedup_key(&f.events[0]).starts_with("sha256:"));
    }

    #[test]
    fn a_clamped_page_is_not_the_last_one() {
        let last = |returned, echoed| page_is_last(Stop::ShortPage, 500, returned, echoed);
        // Asked for 500, the server serves 300 and echoes nothing.
        assert!(!last(300, None), "unknown size");
        assert!(!last(120, None), "no proof without the server's word");
        assert!(
            !last(300, Some(500)),
            "an echo of what was asked proves nothing"
        );
        assert!(last(0, None));
        // An echo below what was asked is the server's own size.
        assert!(!last(300, Some(300)));
        assert!(last(299, Some(300)));
        // empty_page trusts nothing but an empty page.
        assert!(!page_is_last(Stop::EmptyPage, 50, 1, Some(10)));
        assert!(page_is_last(Stop::EmptyPage, 50, 0, None));
    }

    #[test]
    fn a_lowered_clamp_does_not_end_the_pass() {
        // The server served 60 a page, then lowers its clamp to 40 (load
        // shedding, pages cut by bytes): a page of 40 is not the last.
        let last = |returned, echoed| page_is_last(Stop::ShortPage, 250, returned, echoed);
        assert!(!last(60, None));
        assert!(
            !last(40, None),
            "a page smaller than the largest served ended the pass"
        );
        assert!(!last(40, Some(250)));
    }

    #[test]
    fn an_offset_walk_restarts_when_entries_move_back() {
        let overlap = Duration::from_secs(60);
        let keys = |r: std::ops::Range<u32>| r.map(|i| i.to_string()).collect::<Vec<_>>();
        let mut st = WindowState::default();
        st.pass(overlap, t("2026-01-01T00:00:00Z"));
        let page = |st: &mut WindowState, k: Vec<String>, last: bool| {
            let next = st.next_offset("s", &k, last);
            let cursor = match &next {
                Next::Cursor(c) => Some(c.clone()),
                Next::Done => None,
            };
            st.record_page("s", &[], k, next, overlap);
            cursor
        };
        // Oldest first: 0..5 at offset 0, then from offset 4 (entry 4).
        assert_eq!(page(&mut st, keys(0..5), false).as_deref(), Some("4"));
        assert_eq!(page(&mut st, keys(4..9), false).as_deref(), Some("8"));
        // Two oldest purged: offset 8 now starts at entry 10; 8 is gone
        // from view and 9 would be skipped.
        assert_eq!(
            page(&mut st, keys(10..15), false).as_deref(),
            Some("0"),
            "a backward shift must restart the walk"
        );
        assert_eq!(page(&mut st, keys(2..7), false).as_deref(), Some("4"));
        // Inserts ahead of the cursor (anchor found further in) are fine.
        assert_eq!(page(&mut st, keys(5..10), false).as_deref(), Some("8"));
        // Only the anchor left: the end.
        assert_eq!(page(&mut st, keys(9..10), false), None);
        assert!(st.between_passes());
    }

    #[test]
    fn a_pass_ends_when_inserts_outrun_the_walk() {
        // Each page holds only entries of the two pages before it: the API
        // inserts a page's worth ahead of the cursor per request.
        let overlap = Duration::from_secs(60);
        let mut st = WindowState::default();
        st.pass(overlap, t("2026-01-01T00:00:00Z"));
        let keys = |r: std::ops::Range<u32>| r.map(|i| i.to_string()).collect::<Vec<_>>();
        st.record_page("s", &[], keys(0..4), Next::Cursor("4".into()), overlap);
        st.record_page("s", &[], keys(4..8), Next::Cursor("8".into()), overlap);
        for i in 0..SAME_PAGE_LIMIT {
            assert!(!st.between_passes(), "ended early at page {i}");
            let shifted = if i % 2 == 0 { keys(2..6) } else { keys(4..8) };
            st.record_page("s", &[], shifted, Next::Cursor("12".into()), overlap);
        }
        assert!(st.between_passes());
    }

    #[test]
    fn rate_limit_waits_from_headers() {
        let rl = RateLimitConfig::default();
        let mut h = HeaderMap::new();
        assert_eq!(rl.announced_wait(&h), None);
        h.insert("x-ratelimit-reset", HeaderValue::from_static("30"));
        assert_eq!(rl.announced_wait(&h), Some(Duration::from_secs(30)));
        let at = Utc::now().timestamp() + 90;
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&at.to_string()).unwrap(),
        );
        let d = rl.announced_wait(&h).unwrap();
        assert!(
            d > Duration::from_secs(85) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(rl.announced_wait(&h), Some(Duration::from_secs(7)));
        assert!(!rl.exhausted(&h));
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        assert!(rl.exhausted(&h));
    }

    #[test]
    fn time_formats() {
        let x = t("2026-03-15T08:42:17.003Z");
        assert_eq!(TimeFormat::Rfc3339.format(x), "2026-03-15T08:42:17.003Z");
        assert_eq!(TimeFormat::Rfc3339Seconds.format(x), "2026-03-15T08:42:17Z");
        assert_eq!(TimeFormat::Date.format(x), "2026-03-15");
        assert_eq!(TimeFormat::Unix.format(x), "1773564137");
        assert_eq!(TimeFormat::UnixMs.format(x), "1773564137003");
    }
}
