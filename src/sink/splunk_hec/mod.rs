//! Splunk HTTP Event Collector (HEC): events go to
//! `POST {endpoint}/services/collector/event` as concatenated JSON envelopes
//! `{"time","host","source","sourcetype","index","fields","event":<raw>}`,
//! `Authorization: Splunk <token>`, gzip by default, several requests at once.
//!
//! Confirmation: without `indexer_ack` a 200 with HEC code 0 confirms (HEC
//! has the events, not yet indexed). With `indexer_ack` every request is
//! sent on this sink's channel (a GUID in `X-Splunk-Request-Channel`), its
//! `ackId` is recorded, and one poller per sink asks
//! `/services/collector/ack` about every pending id each `ack_poll_interval`.
//! A request counts as confirmed only once its ack reads `true`; one not
//! acknowledged within `ack_timeout` is sent again (an indexer can lose
//! data, and an ack reads true only once, so "no answer" means "resend"),
//! while its earlier ack ids are still asked about until twice
//! `ack_timeout` (see [`acks`]). The client keeps the cookies HEC's load
//! balancer sets, so every request and ack query of the channel reaches the
//! indexer that knows its ack ids.
//!
//! Redirects: 307/308 are followed as `follow_redirects` allows; a
//! 301/302/303 (or one not allowed) is an endpoint error naming the
//! Location, retried every `auth_retry` with the sink not ready.
//!
//! HEC codes: 9 (busy), 8, 18-20, 429, 5xx and network errors retry with
//! backoff (Retry-After honoured). 1-4 (token disabled, missing, malformed,
//! invalid) retry every `auth_retry`, re-reading the token, with the sink not
//! ready: dropping events over a credential would be worse. 10/11/14 mean
//! `indexer_ack` does not match the token's setting: a config error, retried
//! slowly, never dropped. 5, 6, 7, 12, 13, 15 and HTTP 413 reject events: the
//! request is split (straight around `invalid-event-number` when HEC gives
//! it) until the rejected event is alone, which goes to the dead-letter file
//! with the code and text; the rest is delivered. Events HEC took before the
//! rejected one are sent again, so they may be indexed twice (at least once).
//!
//! `GET /services/collector/health` at startup and every
//! `health_check_interval` feeds `/readyz`, and a startup probe (an empty
//! request, which HEC answers with code 5 "No data" once the token and
//! channel are fine) reports a wrong token or `indexer_ack` setting before
//! the first event is sent.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock, Mutex, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts};
use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use serde::Deserialize;
use serde_json::value::RawValue;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::{BatchConfig, DeadLetters, Sink, SinkCommon, SinkContext};
use crate::config::{parse_url, require_positive, Problems, RetryConfig};
use crate::event::{Event, FieldPath};
use crate::health::Health;
use crate::metrics::metrics;
use crate::retry::Backoff;
use crate::secret::{Secret, SecretKeys, SecretSource};

/// Splunk's default `max_content_length` used to be 1 MB (and Splunk Cloud
/// still caps requests near it); envelopes are counted before gzip.
const DEFAULT_MAX_BYTES: usize = 900_000;
const DEFAULT_MAX_EVENTS: usize = 1000;
mod acks;

use acks::{ack_poller, AckTable, PostsInFlight, RequestAcks};
const CHANNEL_HEADER: &str = "X-Splunk-Request-Channel";

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

/// `[sinks.NAME]` with `type = "splunk_hec"`.
#[derive(Clone, Debug, Deserialize)]
pub struct SplunkHecConfig {
    /// Base URL of the collector, e.g. `https://splunk.example:8088`.
    pub endpoint: String,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    /// Envelope metadata; unset keys are left to the token's defaults,
    /// except `source`, which defaults to the auditrelay source name.
    pub host: Option<String>,
    pub source: Option<String>,
    pub sourcetype: Option<String>,
    pub index: Option<String>,
    /// Indexed fields: field name → dotted path into the event.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    #[serde(default)]
    pub indexer_ack: bool,
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    #[serde(default = "default_ack_poll_interval", with = "humantime_serde")]
    pub ack_poll_interval: Duration,
    #[serde(default)]
    pub compression: Compression,
    /// Event requests in flight at once for this sink.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Least wait between attempts while HEC refuses the token or the
    /// `indexer_ack` setting.
    #[serde(default = "default_auth_retry", with = "humantime_serde")]
    pub auth_retry: Duration,
    #[serde(default = "default_health_check_interval", with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// Which 307/308 redirects are followed (301/302/303 never are).
    #[serde(default)]
    pub follow_redirects: crate::http::FollowRedirects,
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_ack_poll_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_concurrency() -> usize {
    4
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_auth_retry() -> Duration {
    Duration::from_secs(30)
}
fn default_health_check_interval() -> Duration {
    Duration::from_secs(30)
}

impl SplunkHecConfig {
    fn token_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.token_file.clone(),
            env: self.token_env.clone(),
            credential: self.token_credential.clone(),
        }
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        let key = format!("{path}.endpoint");
        if let Some(url) = parse_url(&self.endpoint, &key, problems) {
            if url.path().contains("/services/collector") {
                problems.push(
                    &key,
                    "give the collector's base URL (e.g. https://splunk.example:8088); \
                     the sink adds /services/collector/event itself",
                );
            }
            if url.query().is_some() || url.fragment().is_some() {
                problems.push(&key, "must not have a query or fragment");
            }
        }
        let keys = self.token_keys();
        let required = "required: the HEC token (token_file, token_env or token_credential)";
        if let Some(token) = keys.validate("token", path, Some(required), problems) {
            if auth_value(&token).is_none() {
                let key = keys
                    .source("token")
                    .ok()
                    .flatten()
                    .map_or_else(|| "token_file".to_string(), |s| s.key("token"));
                problems.push(
                    format!("{path}.{key}"),
                    "the token holds characters an HTTP header cannot carry",
                );
            }
        }
        for (k, v) in [
            ("host", &self.host),
            ("source", &self.source),
            ("sourcetype", &self.sourcetype),
            ("index", &self.index),
        ] {
            if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                problems.push(
                    format!("{path}.{k}"),
                    "must not be empty (leave it out for the token's default)",
                );
            }
        }
        for (name, field_path) in &self.fields {
            if name.trim().is_empty() {
                problems.push(format!("{path}.fields"), "a field name is empty");
            }
            if let Err(e) = FieldPath::parse(field_path) {
                problems.push(format!("{path}.fields.{name}"), e);
            }
        }
        for (k, d) in [
            ("ack_timeout", self.ack_timeout),
            ("ack_poll_interval", self.ack_poll_interval),
            ("timeout", self.timeout),
            ("auth_retry", self.auth_retry),
            ("health_check_interval", self.health_check_interval),
        ] {
            require_positive(d, &format!("{path}.{k}"), problems);
        }
        if self.indexer_ack && self.ack_poll_interval >= self.ack_timeout {
            problems.push(
                format!("{path}.ack_poll_interval"),
                "must be shorter than ack_timeout, or no ack is ever asked for in time",
            );
        }
        if !(1..=256).contains(&self.concurrency) {
            problems.push(format!("{path}.concurrency"), "must be between 1 and 256");
        }
    }
}

/// `Splunk <token>` as a header value marked sensitive (never printed).
fn auth_value(token: &Secret) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Splunk {}", token.expose())).ok()?;
    v.set_sensitive(true);
    Some(v)
}

struct HecMetrics {
    requests: IntCounterVec,
    acks_pending: IntGaugeVec,
    ack_latency: HistogramVec,
    ack_timeouts: IntCounterVec,
    acks_expired: IntCounterVec,
}

static HEC_METRICS: LazyLock<HecMetrics> = LazyLock::new(|| {
    let m = metrics();
    HecMetrics {
        requests: m.register(
            IntCounterVec::new(
                Opts::new(
                    "auditrelay_hec_requests_total",
                    "Splunk HEC requests by endpoint (event, ack, health) and HEC code \
                     (http_<status> when the answer has none, network when there was no answer).",
                ),
                &["sink", "endpoint", "code"],
            )
            .expect("metric definition is valid"),
        ),
        acks_pending: m.register(
            IntGaugeVec::new(
                Opts::new(
                    "auditrelay_hec_acks_pending",
                    "HEC requests accepted and waiting for their indexer acknowledgment.",
                ),
                &["sink"],
            )
            .expect("metric definition is valid"),
        ),
        ack_latency: m.register(
            HistogramVec::new(
                HistogramOpts::new(
                    "auditrelay_hec_ack_latency_seconds",
                    "Time from HEC accepting a request to its ack reading true.",
                )
                .buckets(vec![
                    0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0,
                ]),
                &["sink"],
            )
            .expect("metric definition is valid"),
        ),
        ack_timeouts: m.register(
            IntCounterVec::new(
                Opts::new(
                    "auditrelay_hec_ack_timeouts_total",
                    "HEC requests not acknowledged within ack_timeout, sent again.",
                ),
                &["sink"],
            )
            .expect("metric definition is valid"),
        ),
        acks_expired: m.register(
            IntCounterVec::new(
                Opts::new(
                    "auditrelay_hec_acks_expired_total",
                    "HEC ack ids given up on: not true within twice ack_timeout, or issued again after an indexer restart.",
                ),
                &["sink"],
            )
            .expect("metric definition is valid"),
        ),
    }
});

/// Why the sink is not ready; each kind is set and cleared by what can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Trouble {
    Health,
    Token,
    /// Codes 10, 11, 14.
    AckSetting,
    /// Accepted without an ackId while `indexer_ack` is on; only an ackId
    /// or a working ack query clears it.
    AckMissing,
    Endpoint,
}

struct Readiness {
    health: Health,
    key: String,
    troubles: Mutex<BTreeMap<Trouble, String>>,
}

impl Readiness {
    fn update(&self, f: impl FnOnce(&mut BTreeMap<Trouble, String>)) {
        let mut map = self.troubles.lock().unwrap_or_else(|p| p.into_inner());
        f(&mut map);
        if map.is_empty() {
            self.health.set_ready(&self.key);
        } else {
            let reason: Vec<&str> = map.values().map(String::as_str).collect();
            self.health.set_unready(&self.key, reason.join("; "));
        }
    }

    fn set(&self, t: Trouble, reason: String) {
        self.update(|m| {
            m.insert(t, reason);
        });
    }

    fn clear(&self, list: &[Trouble]) {
        self.update(|m| {
            for t in list {
                m.remove(t);
            }
        });
    }

    fn has_any(&self, list: &[Trouble]) -> bool {
        let map = self.troubles.lock().unwrap_or_else(|p| p.into_inner());
        list.iter().any(|t| map.contains_key(t))
    }
}

/// HEC's JSON answer to an event or ack request.
#[derive(Debug, Default, Deserialize)]
struct HecReply {
    text: Option<String>,
    code: Option<i64>,
    #[serde(rename = "ackId")]
    ack_id: Option<u64>,
    #[serde(rename = "invalid-event-number")]
    invalid_event: Option<usize>,
    acks: Option<HashMap<String, bool>>,
}

/// How one event request ended.
enum Answer {
    Accepted {
        ack_id: Option<u64>,
    },
    Retry(String, Option<Duration>),
    /// The token is refused (codes 1-4): retry slowly, re-read the token.
    Token(String),
    /// `indexer_ack` does not match the token (codes 10, 11, 14).
    AckSetting(String),
    /// Not HEC's answer, or a wrong path: retry slowly, report not ready.
    Endpoint(String),
    /// Events are unacceptable: split, then dead-letter the lone rejected one.
    Reject(String, Option<usize>),
}

/// Envelope metadata, JSON-encoded once.
struct Envelope {
    host: Option<String>,
    source: Option<String>,
    sourcetype: Option<String>,
    index: Option<String>,
    fields: Vec<(String, FieldPath)>,
}

fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// Epoch seconds with microseconds, HEC's `time` format.
fn epoch(t: DateTime<Utc>) -> String {
    let micros = t.timestamp_micros();
    let sign = if micros < 0 { "-" } else { "" };
    let abs = micros.unsigned_abs();
    format!("{sign}{}.{:06}", abs / 1_000_000, abs % 1_000_000)
}

/// An indexed field's value as HEC takes it: a string or an array of
/// strings. Numbers and booleans become their text, objects their JSON
/// text; null (and nothing) leaves the field out.
fn write_field_value(out: &mut Vec<u8>, v: &RawValue) -> bool {
    let text = v.get();
    match text.as_bytes().first() {
        Some(b'"') => out.extend_from_slice(text.as_bytes()),
        Some(b'n') | None => return false,
        Some(b'[') => {
            let Ok(items) = serde_json::from_str::<Vec<&RawValue>>(text) else {
                return false;
            };
            out.push(b'[');
            let mut first = true;
            for item in items {
                let t = item.get();
                if t == "null" || t.starts_with('[') {
                    continue;
                }
                if !first {
                    out.push(b',');
                }
                first = false;
                if t.starts_with('"') {
                    out.extend_from_slice(t.as_bytes());
                } else {
                    out.extend_from_slice(json_string(t).as_bytes());
                }
            }
            out.push(b']');
        }
        Some(_) => out.extend_from_slice(json_string(text).as_bytes()),
    }
    true
}

impl Envelope {
    fn new(cfg: &SplunkHecConfig) -> anyhow::Result<Self> {
        let mut fields = Vec::new();
        for (name, path) in &cfg.fields {
            let p = FieldPath::parse(path).map_err(|e| anyhow::anyhow!("fields.{name}: {e}"))?;
            fields.push((json_string(name), p));
        }
        Ok(Envelope {
            host: cfg.host.as_deref().map(json_string),
            source: cfg.source.as_deref().map(json_string),
            sourcetype: cfg.sourcetype.as_deref().map(json_string),
            index: cfg.index.as_deref().map(json_string),
            fields,
        })
    }

    /// Appends one event's envelope; `source` is JSON-encoded already.
    fn write(&self, out: &mut Vec<u8>, source: &str, e: &Event) {
        out.push(b'{');
        if let Some(t) = e.time {
            out.extend_from_slice(b"\"time\":");
            out.extend_from_slice(epoch(t).as_bytes());
            out.push(b',');
        }
        let source = self.source.as_deref().unwrap_or(source);
        for (key, value) in [
            ("host", self.host.as_deref()),
            ("source", Some(source)),
            ("sourcetype", self.sourcetype.as_deref()),
            ("index", self.index.as_deref()),
        ] {
            if let Some(v) = value {
                out.push(b'"');
                out.extend_from_slice(key.as_bytes());
                out.extend_from_slice(b"\":");
                out.extend_from_slice(v.as_bytes());
                out.push(b',');
            }
        }
        if !self.fields.is_empty() {
            if let Ok(object) = serde_json::from_slice::<&RawValue>(&e.raw) {
                let start = out.len();
                out.extend_from_slice(b"\"fields\":{");
                let mut any = false;
                for (name, path) in &self.fields {
                    let Some(v) = path.lookup(object) else {
                        continue;
                    };
                    let mark = out.len();
                    if any {
                        out.push(b',');
                    }
                    out.extend_from_slice(name.as_bytes());
                    out.push(b':');
                    if write_field_value(out, v) {
                        any = true;
                    } else {
                        out.truncate(mark);
                    }
                }
                if any {
                    out.extend_from_slice(b"},");
                } else {
                    out.truncate(start);
                }
            }
        }
        out.extend_from_slice(b"\"event\":");
        out.extend_from_slice(&e.raw);
        out.push(b'}');
    }
}

/// The envelopes of one `deliver` call in one buffer; a request's body is a
/// slice of it.
struct Encoded {
    buf: Bytes,
    offsets: Vec<usize>,
}

impl Encoded {
    fn body(&self, r: &Range<usize>) -> Bytes {
        self.buf.slice(self.offsets[r.start]..self.offsets[r.end])
    }

    /// Runs of at most `max_events` events and `max_bytes` envelope bytes
    /// (an event larger than that alone).
    fn runs(&self, batch: &BatchConfig) -> Vec<Range<usize>> {
        let max_events = batch.max_events.unwrap_or(DEFAULT_MAX_EVENTS).max(1);
        let max_bytes = batch.max_bytes.unwrap_or(DEFAULT_MAX_BYTES).max(1);
        let n = self.offsets.len() - 1;
        let mut out = Vec::new();
        let mut start = 0;
        for i in 0..n {
            let bytes = self.offsets[i + 1] - self.offsets[start];
            if i > start && (i - start >= max_events || bytes > max_bytes) {
                out.push(start..i);
                start = i;
            }
        }
        if start < n {
            out.push(start..n);
        }
        out
    }
}

struct Inner {
    name: Arc<str>,
    cfg: SplunkHecConfig,
    retry: RetryConfig,
    batch: BatchConfig,
    client: reqwest::Client,
    event_url: url::Url,
    ack_url: url::Url,
    health_url: url::Url,
    channel: HeaderValue,
    token_source: SecretSource,
    token: RwLock<Secret>,
    envelope: Envelope,
    readiness: Readiness,
    acks: Mutex<AckTable>,
    ack_wake: Notify,
    /// Set once the startup health round has an answer (or gave up): event
    /// requests wait for it, so a load balancer's stickiness cookie is in
    /// the jar before the first event goes out and every request, and its
    /// ack queries, land on the same indexer.
    warmed: tokio::sync::watch::Sender<bool>,
    /// Event requests whose ack id is not known yet.
    posts: PostsInFlight,
    permits: Semaphore,
    /// No event request before this instant: a Retry-After pauses the
    /// whole sink, not only the request that got it.
    paused_until: Mutex<Option<Instant>>,
    /// Whether an event request went out on the channel (the ack probe
    /// asks about id 0, which is only safe before).
    sent_any: AtomicBool,
    dead_letters: DeadLetters,
}

pub struct SplunkHecSink {
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl Drop for SplunkHecSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// Text of an answer for logs: short, on one line.
fn snippet(body: &[u8]) -> String {
    String::from_utf8_lossy(body)
        .chars()
        .take(200)
        .collect::<String>()
        .replace(['\n', '\r'], " ")
}

fn classify(status: u16, retry_after: Option<Duration>, body: &[u8]) -> (String, Answer) {
    let reply: Option<HecReply> = serde_json::from_slice(body).ok();
    let code = reply.as_ref().and_then(|r| r.code);
    let label = match code {
        Some(c) => c.to_string(),
        None => format!("http_{status}"),
    };
    let why = match (&reply, code) {
        (Some(r), Some(c)) => format!(
            "HEC code {c}: {} (HTTP {status})",
            r.text.as_deref().unwrap_or("")
        ),
        _ => format!("HTTP {status}: {}", snippet(body)),
    };
    let invalid = reply.as_ref().and_then(|r| r.invalid_event);
    let answer = match code {
        Some(0) if (200..300).contains(&status) => Answer::Accepted {
            ack_id: reply.and_then(|r| r.ack_id),
        },
        Some(1..=4) => Answer::Token(why),
        Some(5 | 6 | 7 | 12 | 13 | 15) => Answer::Reject(why, invalid),
        Some(8 | 9 | 18..=20) => Answer::Retry(why, retry_after),
        Some(10) => Answer::AckSetting(format!(
            "{why}: the HEC token requires indexer acknowledgment; set indexer_ack = true \
             on this sink (or turn acknowledgment off on the token)"
        )),
        Some(11) => Answer::AckSetting(format!(
            "{why}: HEC refused the request channel; indexer_ack must match the token's \
             indexer acknowledgment setting (toggle indexer_ack)"
        )),
        Some(14) => Answer::AckSetting(format!(
            "{why}: the HEC token has indexer acknowledgment off; set indexer_ack = false \
             on this sink (or turn acknowledgment on for the token)"
        )),
        _ => match status {
            408 | 429 | 500..=599 => Answer::Retry(why, retry_after),
            401 | 403 => Answer::Token(why),
            413 => Answer::Reject(why, None),
            200..=299 => {
                Answer::Endpoint(format!("{why}: the answer is not HEC's; check endpoint"))
            }
            _ => Answer::Endpoint(format!("{why}; check endpoint")),
        },
    };
    (label, answer)
}

impl SplunkHecSink {
    pub fn new(
        cfg: SplunkHecConfig,
        common: &SinkCommon,
        ctx: SinkContext,
    ) -> anyhow::Result<Self> {
        let path = format!("sinks.{}", ctx.name);
        let token_source = cfg
            .token_keys()
            .source("token")
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?
            .ok_or_else(|| anyhow::anyhow!("{path}.token_file: required"))?;
        let token = token_source
            .load()
            .map_err(|e| anyhow::anyhow!("{path}.{}: {e}", token_source.key("token")))?;
        let mut base =
            url::Url::parse(&cfg.endpoint).map_err(|e| anyhow::anyhow!("{path}.endpoint: {e}"))?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let join = |rel: &str| {
            base.join(rel)
                .map_err(|e| anyhow::anyhow!("{path}.endpoint: {e}"))
        };
        let event_url = join("services/collector/event")?;
        let health_url = join("services/collector/health")?;
        let channel = uuid::Uuid::new_v4().to_string();
        let mut ack_url = join("services/collector/ack")?;
        ack_url.query_pairs_mut().append_pair("channel", &channel);
        let client = crate::http::client_with(
            &common.tls,
            cfg.timeout,
            &path,
            crate::http::ClientOptions {
                redirects: cfg.follow_redirects,
                cookies: true,
            },
        )?;
        let envelope = Envelope::new(&cfg).map_err(|e| anyhow::anyhow!("{path}.{e}"))?;
        let key = format!("sink.{}", ctx.name);
        ctx.health.register(&key);
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("{path}: the sink needs a running async runtime"))?;
        let inner = Arc::new(Inner {
            name: ctx.name.as_str().into(),
            retry: common.retry,
            batch: common.batch,
            client,
            event_url,
            ack_url,
            health_url,
            channel: HeaderValue::from_str(&channel)?,
            token_source,
            token: RwLock::new(token),
            envelope,
            readiness: Readiness {
                health: ctx.health,
                key,
                troubles: Mutex::new(BTreeMap::new()),
            },
            acks: Mutex::new(AckTable::default()),
            ack_wake: Notify::new(),
            warmed: tokio::sync::watch::Sender::new(false),
            posts: PostsInFlight::default(),
            permits: Semaphore::new(cfg.concurrency.max(1)),
            paused_until: Mutex::new(None),
            sent_any: AtomicBool::new(false),
            dead_letters: ctx.dead_letters,
            cfg,
        });
        let stop = CancellationToken::new();
        runtime.spawn(health_loop(inner.clone(), stop.clone()));
        if inner.cfg.indexer_ack {
            runtime.spawn(ack_poller(inner.clone(), stop.clone()));
        }
        info!(sink = %inner.name, channel = %channel, indexer_ack = inner.cfg.indexer_ack, "Splunk HEC sink ready to send");
        Ok(SplunkHecSink { inner, stop })
    }
}

impl Inner {
    fn auth(&self) -> Option<HeaderValue> {
        let token = self.token.read().unwrap_or_else(|p| p.into_inner());
        auth_value(&token)
    }

    /// Re-reads the token, in case it was rotated.
    fn reload_token(&self) {
        match self.token_source.load() {
            Ok(t) => *self.token.write().unwrap_or_else(|p| p.into_inner()) = t,
            Err(e) => {
                error!(sink = %self.name, error = %e, "cannot re-read the HEC token")
            }
        }
    }

    fn count(&self, endpoint: &str, code: &str) {
        HEC_METRICS
            .requests
            .with_label_values(&[&self.name, endpoint, code])
            .inc();
    }

    fn encode(&self, source: &str, events: &[Event]) -> Encoded {
        let source = json_string(source);
        let size: usize = events.iter().map(|e| e.raw.len() + 160).sum();
        let mut buf = Vec::with_capacity(size);
        let mut offsets = Vec::with_capacity(events.len() + 1);
        offsets.push(0);
        for e in events {
            self.envelope.write(&mut buf, &source, e);
            offsets.push(buf.len());
        }
        Encoded {
            buf: buf.into(),
            offsets,
        }
    }

    /// One POST of envelopes to the event endpoint.
    async fn post_events(&self, body: Bytes) -> Answer {
        let Some(auth) = self.auth() else {
            return Answer::Token("the token holds characters an HTTP header cannot carry".into());
        };
        let body = if self.cfg.compression == Compression::Gzip {
            match tokio::task::spawn_blocking(move || gzip(&body)).await {
                Ok(Ok(b)) => Bytes::from(b),
                Ok(Err(e)) => return Answer::Retry(format!("gzip failed: {e}"), None),
                Err(e) => return Answer::Retry(format!("gzip task failed: {e}"), None),
            }
        } else {
            body
        };
        let Ok(_permit) = self.permits.acquire().await else {
            return Answer::Retry("sink is shutting down".into(), None);
        };
        // Each round sleeps until the latest pause; bounded by pauses set
        // while sleeping.
        loop {
            let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => break,
            }
        }
        self.sent_any.store(true, Ordering::Relaxed);
        let mut req = self
            .client
            .post(self.event_url.clone())
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json");
        if self.cfg.compression == Compression::Gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        if self.cfg.indexer_ack {
            req = req.header(CHANNEL_HEADER, self.channel.clone());
        }
        let _in_flight = self.posts.begin();
        let sent = req.body(body).send().await;
        if let Some(why) = crate::http::unfollowed_redirect(&sent) {
            self.count("event", &redirect_label(&sent));
            return Answer::Endpoint(why);
        }
        let (status, retry_after, answer) = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let retry_after = crate::http::retry_after(resp.headers());
                match resp.bytes().await {
                    Ok(b) => (status, retry_after, b),
                    Err(e) => {
                        self.count("event", "network");
                        return Answer::Retry(
                            format!(
                                "reading the answer failed: {}",
                                crate::http::describe_error(e)
                            ),
                            None,
                        );
                    }
                }
            }
            Err(e) => {
                self.count("event", "network");
                let what = if e.is_timeout() {
                    "timed out"
                } else if e.is_connect() {
                    "connection failed"
                } else {
                    "request failed"
                };
                return Answer::Retry(format!("{what}: {}", crate::http::describe_error(e)), None);
            }
        };
        let (label, answer) = classify(status, retry_after, &answer);
        self.count("event", &label);
        if let (true, Answer::Accepted { ack_id: Some(id) }) = (self.cfg.indexer_ack, &answer) {
            self.note_issued(*id);
        }
        // Set while the permit is held, so no other request slips in.
        self.pause_for(&answer);
        answer
    }

    /// Honours a Retry-After for every request of the sink.
    fn pause_for(&self, answer: &Answer) {
        if let Answer::Retry(_, Some(after)) = answer {
            let until = Instant::now() + *after;
            let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            *paused = Some(paused.map_or(until, |p| p.max(until)));
        }
    }

    /// Sends the events of `run` until each is confirmed or dead-lettered.
    async fn send_run(
        &self,
        source: &str,
        events: &[Event],
        enc: &Encoded,
        run: Range<usize>,
    ) -> anyhow::Result<()> {
        let m = metrics();
        let mut backoff = Backoff::new(self.retry);
        // A stack: splitting pushes the parts, the first part on top.
        let mut todo = vec![run];
        // The acks of the request on top of `todo`, kept while it is sent
        // again: an earlier send's ack can still confirm it.
        let mut watching: Option<(Range<usize>, RequestAcks)> = None;
        while let Some(r) = todo.pop() {
            let n = r.len() as u64;
            let failed = |outcome: &str| {
                m.sink_requests
                    .with_label_values(&[&self.name, outcome])
                    .inc();
                m.sink_retries.with_label_values(&[&self.name]).inc();
                m.events_failed
                    .with_label_values(&[&self.name, source])
                    .inc_by(n);
            };
            let mut acks = match watching.take() {
                Some((range, acks)) if range == r => acks,
                Some((_, other)) => {
                    self.forget_acks(other);
                    RequestAcks::default()
                }
                None => RequestAcks::default(),
            };
            if acks.confirmed() {
                backoff.reset();
                self.count_confirmed(source, n, true);
                self.forget_acks(acks);
                continue;
            }
            match self.post_events(enc.body(&r)).await {
                Answer::Accepted { ack_id } => {
                    let confirmed = match (self.cfg.indexer_ack, ack_id) {
                        (true, Some(id)) => {
                            self.watch_ack(&mut acks, id);
                            self.wait_for_ack(&acks).await
                        }
                        (true, None) => {
                            // HEC took the events but cannot acknowledge them:
                            // acceptance is all it offers, and sending again
                            // would only duplicate them.
                            let why = "HEC accepted a request without an ackId: indexer \
                                       acknowledgment is off for this token; set \
                                       indexer_ack = false (or turn acknowledgment on for \
                                       the token); events are confirmed on acceptance only";
                            if !self.readiness.has_any(&[Trouble::AckMissing]) {
                                error!(sink = %self.name, "{why}");
                            }
                            self.readiness.set(Trouble::AckMissing, why.into());
                            true
                        }
                        (false, _) => true,
                    };
                    if confirmed {
                        backoff.reset();
                        self.count_confirmed(source, n, !self.cfg.indexer_ack || ack_id.is_some());
                    } else {
                        failed("ack_timeout");
                        warn!(sink = %self.name, events = n, ack_timeout_s = self.cfg.ack_timeout.as_secs_f64(), "no indexer acknowledgment in time; sending the events again");
                        watching = Some((r.clone(), std::mem::take(&mut acks)));
                        todo.push(r);
                    }
                }
                Answer::Retry(why, after) => {
                    failed("retry");
                    let delay = after.unwrap_or_else(|| backoff.next_delay());
                    warn!(sink = %self.name, error = %why, retry_in_s = delay.as_secs_f64(), "HEC request failed; retrying");
                    // A Retry-After pauses the whole sink (in post_events).
                    if after.is_none() {
                        tokio::time::sleep(delay).await;
                    }
                    watching = Some((r.clone(), std::mem::take(&mut acks)));
                    todo.push(r);
                }
                Answer::Token(why) => {
                    failed("refused");
                    let delay = backoff.next_delay().max(self.cfg.auth_retry);
                    let reason = format!(
                        "HEC refuses the token ({why}); put a valid, enabled token in {} \
                         (re-read before every retry)",
                        self.token_source.describe()
                    );
                    error!(sink = %self.name, error = %why, token = %self.token_source.describe(), retry_in_s = delay.as_secs_f64(), "HEC refuses the token; check the token");
                    self.readiness.set(Trouble::Token, reason);
                    tokio::time::sleep(delay).await;
                    self.reload_token();
                    watching = Some((r.clone(), std::mem::take(&mut acks)));
                    todo.push(r);
                }
                Answer::AckSetting(why) => {
                    failed("refused");
                    let delay = backoff.next_delay().max(self.cfg.auth_retry);
                    error!(sink = %self.name, error = %why, retry_in_s = delay.as_secs_f64(), "config error: indexer_ack does not match the HEC token");
                    self.readiness.set(Trouble::AckSetting, why);
                    tokio::time::sleep(delay).await;
                    watching = Some((r.clone(), std::mem::take(&mut acks)));
                    todo.push(r);
                }
                Answer::Endpoint(why) => {
                    failed("refused");
                    let delay = backoff.next_delay().max(self.cfg.auth_retry);
                    error!(sink = %self.name, error = %why, retry_in_s = delay.as_secs_f64(), "HEC endpoint does not answer like HEC; check endpoint");
                    self.readiness.set(Trouble::Endpoint, why);
                    tokio::time::sleep(delay).await;
                    watching = Some((r.clone(), std::mem::take(&mut acks)));
                    todo.push(r);
                }
                Answer::Reject(why, invalid) => {
                    m.sink_requests
                        .with_label_values(&[&self.name, "rejected"])
                        .inc();
                    if r.len() == 1 {
                        self.dead_letters
                            .write_waiting(source, &events[r], &why)
                            .await;
                        continue;
                    }
                    debug!(sink = %self.name, error = %why, events = n, "HEC rejected events; splitting the request");
                    match invalid.filter(|k| *k < r.len()) {
                        Some(k) => {
                            let bad = r.start + k;
                            if bad + 1 < r.end {
                                todo.push(bad + 1..r.end);
                            }
                            todo.push(bad..bad + 1);
                            if bad > r.start {
                                todo.push(r.start..bad);
                            }
                        }
                        None => {
                            let mid = r.start + r.len() / 2;
                            todo.push(mid..r.end);
                            todo.push(r.start..mid);
                        }
                    }
                }
            }
            self.forget_acks(acks);
        }
        Ok(())
    }

    /// Counts a confirmed request; `ack_fine` when it also proves the
    /// `indexer_ack` setting right.
    fn count_confirmed(&self, source: &str, n: u64, ack_fine: bool) {
        let m = metrics();
        let mut fixed = vec![Trouble::Token, Trouble::Endpoint];
        if ack_fine {
            fixed.extend([Trouble::AckSetting, Trouble::AckMissing]);
        }
        if self.readiness.has_any(&fixed) {
            self.readiness.clear(&fixed);
        }
        m.sink_requests.with_label_values(&[&self.name, "ok"]).inc();
        m.events_delivered
            .with_label_values(&[&self.name, source])
            .inc_by(n);
    }

    /// `GET /services/collector/health`: 200 (code 17) healthy; 503 with
    /// codes 18-20 unhealthy; a 404 means the endpoint has no health check
    /// (a proxy, an old Splunk), which is not the sink's problem.
    async fn check_health(&self) {
        let resp = self.client.get(self.health_url.clone()).send().await;
        let resp = match resp {
            Ok(r) => r,
            Err(e) => {
                self.count("health", "network");
                self.readiness.set(
                    Trouble::Health,
                    format!(
                        "HEC health check failed: {}",
                        crate::http::describe_error(e)
                    ),
                );
                return;
            }
        };
        let status = resp.status().as_u16();
        let body = resp.bytes().await.unwrap_or_default();
        let reply: Option<HecReply> = serde_json::from_slice(&body).ok();
        let code = reply.as_ref().and_then(|r| r.code);
        self.count(
            "health",
            &code.map_or_else(|| format!("http_{status}"), |c| c.to_string()),
        );
        if (200..300).contains(&status) || status == 404 {
            if status == 404 {
                debug!(sink = %self.name, "HEC has no health endpoint; relying on requests");
            }
            self.readiness.clear(&[Trouble::Health]);
        } else {
            let text = match &reply {
                Some(HecReply {
                    text: Some(t),
                    code: Some(c),
                    ..
                }) => format!("HEC code {c}: {t}"),
                _ => snippet(&body),
            };
            self.readiness.set(
                Trouble::Health,
                format!("HEC reports unhealthy (HTTP {status}: {text})"),
            );
        }
    }

    /// Checks the token and the `indexer_ack` setting without sending an
    /// event: an empty request is answered with code 5 ("No data") once
    /// both are right. True when the answer was conclusive.
    async fn probe(&self) -> bool {
        // An event-endpoint request like any other: one permit, no request
        // while HEC asked for a pause.
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let paused = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_some_and(|t| t > Instant::now()) {
            return false;
        }
        let Some(auth) = self.auth() else {
            self.readiness.set(
                Trouble::Token,
                "the token holds characters an HTTP header cannot carry".into(),
            );
            return true;
        };
        let mut req = self
            .client
            .post(self.event_url.clone())
            .header(AUTHORIZATION, auth.clone())
            .header(CONTENT_TYPE, "application/json");
        if self.cfg.indexer_ack {
            req = req.header(CHANNEL_HEADER, self.channel.clone());
        }
        let sent = req.body(Vec::new()).send().await;
        if let Some(why) = crate::http::unfollowed_redirect(&sent) {
            self.count("event", &redirect_label(&sent));
            error!(sink = %self.name, error = %why, "HEC endpoint redirects; check endpoint and follow_redirects");
            self.readiness.set(Trouble::Endpoint, why);
            return true;
        }
        let (status, headers, body) = match sent {
            Ok(r) => (
                r.status().as_u16(),
                r.headers().clone(),
                r.bytes().await.unwrap_or_default(),
            ),
            Err(e) => {
                self.count("event", "network");
                debug!(sink = %self.name, error = %crate::http::describe_error(e), "HEC probe got no answer");
                return false;
            }
        };
        let retry_after = crate::http::retry_after(&headers);
        let (label, answer) = classify(status, retry_after, &body);
        self.count("event", &label);
        self.pause_for(&answer);
        match answer {
            Answer::Reject(..) | Answer::Accepted { .. } => {
                // The token is fine; without acks, so is sending no channel.
                // With acks, only the ack endpoint can tell (below).
                self.readiness.clear(&[Trouble::Token, Trouble::Endpoint]);
                if !self.cfg.indexer_ack {
                    self.readiness.clear(&[Trouble::AckSetting]);
                }
            }
            Answer::Token(why) => {
                let reason = format!(
                    "HEC refuses the token ({why}); put a valid, enabled token in {}",
                    self.token_source.describe()
                );
                error!(sink = %self.name, error = %why, token = %self.token_source.describe(), "HEC refuses the token; check the token");
                self.readiness.set(Trouble::Token, reason);
                return true;
            }
            Answer::AckSetting(why) => {
                error!(sink = %self.name, error = %why, "config error: indexer_ack does not match the HEC token");
                self.readiness.set(Trouble::AckSetting, why);
                return true;
            }
            Answer::Endpoint(why) => {
                error!(sink = %self.name, error = %why, "HEC endpoint does not answer like HEC; check endpoint");
                self.readiness.set(Trouble::Endpoint, why);
                return true;
            }
            Answer::Retry(..) => return false,
        }
        // With acknowledgment, also ask the ack endpoint: a token with
        // acknowledgment off answers code 14. Only before the first event
        // request, when id 0 cannot be a real request's.
        if self.cfg.indexer_ack && !self.sent_any.load(Ordering::Relaxed) {
            let sent = self
                .client
                .post(self.ack_url.clone())
                .header(AUTHORIZATION, auth)
                .header(CHANNEL_HEADER, self.channel.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(&b"{\"acks\":[0]}"[..])
                .send()
                .await;
            let (status, body) = match sent {
                Ok(r) => (r.status().as_u16(), r.bytes().await.unwrap_or_default()),
                Err(_) => return false,
            };
            if status == 200 {
                self.count("ack", "0");
                self.readiness
                    .clear(&[Trouble::AckSetting, Trouble::AckMissing]);
            } else {
                let (label, answer) = classify(status, None, &body);
                self.count("ack", &label);
                if let Answer::AckSetting(why) = answer {
                    error!(sink = %self.name, error = %why, "config error: indexer_ack does not match the HEC token");
                    self.readiness.set(Trouble::AckSetting, why);
                }
            }
        }
        true
    }
}

fn gzip(body: &[u8]) -> std::io::Result<Vec<u8>> {
    crate::format::gzip(body)
}

/// The startup check, then a health check every `health_check_interval`;
/// the token/ack probe runs again while it or a request found a problem.
/// The request-counter outcome of a redirected request.
fn redirect_label(sent: &reqwest::Result<reqwest::Response>) -> String {
    match sent {
        Ok(r) => format!("http_{}", r.status().as_u16()),
        Err(_) => "redirect".into(),
    }
}

async fn health_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let mut probe_due = true;
    loop {
        let round = async {
            inner.check_health().await;
            if probe_due
                || inner.readiness.has_any(&[
                    Trouble::Token,
                    Trouble::AckSetting,
                    Trouble::Endpoint,
                ])
            {
                if !probe_due {
                    inner.reload_token();
                }
                probe_due = !inner.probe().await;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = round => {}
        }
        inner.warmed.send_replace(true);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(inner.cfg.health_check_interval) => {}
        }
    }
}

#[async_trait]
impl Sink for SplunkHecSink {
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
        if events.is_empty() {
            return Ok(());
        }
        // Bounded: a collector that never answers its health check must not
        // hold events back longer than one request would take.
        let mut warmed = self.inner.warmed.subscribe();
        let _ = tokio::time::timeout(self.inner.cfg.timeout, warmed.wait_for(|w| *w)).await;
        let enc = self.inner.encode(source, events);
        let runs = enc.runs(&self.inner.batch);
        let results = futures_util::future::join_all(
            runs.into_iter()
                .map(|r| self.inner.send_run(source, events, &enc, r)),
        )
        .await;
        results.into_iter().collect()
    }

    /// Splunk indexes by event time; parallel requests give throughput.
    fn ordered(&self) -> bool {
        false
    }

    /// The health endpoint and the token/`indexer_ack` probe, as at startup.
    async fn healthcheck(&self) -> anyhow::Result<()> {
        self.inner.check_health().await;
        self.inner.probe().await;
        let troubles = self
            .inner
            .readiness
            .troubles
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        if troubles.is_empty() {
            Ok(())
        } else {
            let reasons: Vec<&str> = troubles.values().map(String::as_str).collect();
            anyhow::bail!("{}", reasons.join("; "))
        }
    }
}

impl super::SinkType for SplunkHecConfig {
    const KIND: &'static str = "splunk_hec";

    fn validate(&self, path: &str, _common: &SinkCommon, problems: &mut Problems) {
        SplunkHecConfig::validate(self, path, problems)
    }

    fn build(&self, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(SplunkHecSink::new(self.clone(), common, ctx)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn event(raw: &str, time: Option<DateTime<Utc>>) -> Event {
        Event {
            raw: Bytes::from(raw.to_string()),
            id: None,
            time,
            kind: None,
        }
    }

    fn config(extra: &str) -> SplunkHecConfig {
        let text = format!("endpoint = \"http://127.0.0.1:1\"\ntoken_env = \"X\"\n{extra}");
        use figment::providers::Format;
        figment::Figment::from(figment::providers::Toml::string(&text))
            .extract()
            .unwrap()
    }

    #[test]
    fn epoch_has_microseconds_and_handles_before_1970() {
        let t = Utc.timestamp_opt(1_690_359_797, 151_080_751).unwrap();
        assert_eq!(epoch(t), "1690359797.151080");
        let t = Utc.timestamp_opt(-5, 250_000_000).unwrap();
        assert_eq!(epoch(t), "-4.750000");
        assert_eq!(epoch(Utc.timestamp_opt(0, 0).unwrap()), "0.000000");
    }

    #[test]
    fn envelope_wraps_the_raw_event_with_metadata_and_fields() {
        let cfg = config(
            "host = \"relay-1\"\nsourcetype = \"veza:audit\"\nindex = \"sec\"\n\
             fields = { user = \"identity.email\", code = \"status.http_status\", \
             tags = \"tags\", obj = \"identity\", gone = \"missing\", nul = \"n\" }",
        );
        let env = Envelope::new(&cfg).unwrap();
        let raw = r#"{"identity":{"email":"a\"b@x"},"status":{"http_status":403},"tags":["x",1,true,null],"n":null,
  "note":"line"}"#;
        let t = Utc.timestamp_opt(1_700_000_000, 5_000).unwrap();
        let mut out = Vec::new();
        env.write(&mut out, &json_string("veza"), &event(raw, Some(t)));
        let text = String::from_utf8(out).unwrap();
        assert!(
            text.starts_with(
                r#"{"time":1700000000.000005,"host":"relay-1","source":"veza","sourcetype":"veza:audit","index":"sec","fields":{"#
            ),
            "{text}"
        );
        assert!(text.ends_with(&format!(",\"event\":{raw}}}")), "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["fields"]["user"], "a\"b@x");
        assert_eq!(v["fields"]["code"], "403");
        assert_eq!(v["fields"]["tags"], serde_json::json!(["x", "1", "true"]));
        assert_eq!(v["fields"]["obj"], r#"{"email":"a\"b@x"}"#);
        assert!(v["fields"].get("gone").is_none() && v["fields"].get("nul").is_none());
    }

    #[test]
    fn envelope_without_time_or_fields_and_a_configured_source() {
        let cfg = config("source = \"auditrelay\"\nfields = { user = \"u\" }");
        let env = Envelope::new(&cfg).unwrap();
        let mut out = Vec::new();
        env.write(&mut out, &json_string("veza"), &event("[1,2]", None));
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"source":"auditrelay","event":[1,2]}"#
        );
    }

    #[test]
    fn runs_respect_events_and_envelope_bytes() {
        let enc = Encoded {
            buf: Bytes::new(),
            offsets: vec![0, 100, 200, 300, 1300, 1400],
        };
        let b = BatchConfig {
            max_events: Some(2),
            max_bytes: Some(250),
            timeout: None,
        };
        assert_eq!(enc.runs(&b), vec![0..2, 2..3, 3..4, 4..5]);
        let b = BatchConfig::default();
        assert_eq!(enc.runs(&b), vec![0..5]);
    }

    #[test]
    fn answers_by_hec_code_and_http_status() {
        let c = |status, body: &str| classify(status, None, body.as_bytes());
        assert!(matches!(
            c(200, r#"{"text":"Success","code":0,"ackId":7}"#).1,
            Answer::Accepted { ack_id: Some(7) }
        ));
        assert!(matches!(
            c(200, r#"{"text":"Success","code":0}"#).1,
            Answer::Accepted { ack_id: None }
        ));
        let (label, a) = c(503, r#"{"text":"Server is busy","code":9}"#);
        assert_eq!(label, "9");
        assert!(matches!(a, Answer::Retry(..)));
        assert!(matches!(
            c(403, r#"{"text":"Invalid token","code":4}"#).1,
            Answer::Token(_)
        ));
        match c(
            400,
            r#"{"text":"Invalid data format","code":6,"invalid-event-number":3}"#,
        )
        .1
        {
            Answer::Reject(why, Some(3)) => {
                assert_eq!(why, "HEC code 6: Invalid data format (HTTP 400)")
            }
            _ => panic!("code 6 must reject"),
        }
        match c(400, r#"{"text":"Data channel is missing","code":10}"#).1 {
            Answer::AckSetting(why) => assert!(why.contains("indexer_ack = true")),
            _ => panic!("code 10 is an ack setting problem"),
        }
        match c(400, r#"{"text":"ACK is disabled","code":14}"#).1 {
            Answer::AckSetting(why) => assert!(why.contains("indexer_ack = false")),
            _ => panic!("code 14 is an ack setting problem"),
        }
        let (label, a) = c(502, "<html>bad gateway</html>");
        assert_eq!(label, "http_502");
        assert!(matches!(a, Answer::Retry(..)));
        assert!(matches!(c(413, "too large").1, Answer::Reject(_, None)));
        assert!(matches!(c(200, "<html>ok</html>").1, Answer::Endpoint(_)));
        assert!(matches!(c(404, "not found").1, Answer::Endpoint(_)));
    }
}
