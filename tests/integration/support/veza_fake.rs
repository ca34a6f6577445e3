//! A fake of Veza's audit-log export API
//! (`GET /api/preview/system/audit/export`), on a hand-written HTTP/1.1
//! server so it can also break the HTTP layer (a body cut short by a reset).
//!
//! Protocol: the first call sends `filter=persisted_at GE "<RFC3339>"` and
//! `page_size`; every later call sends the previous `next_page_token` (in the
//! configurable `token_param`) and no filter. Pages come from an append-only
//! event log; tokens are opaque, carry an epoch, and `expire_tokens()`
//! invalidates every token issued so far. Faults (rate limiting with a
//! cool-down the client must honour, server errors, slow answers, mid-body
//! resets, truncated or non-JSON bodies, overlapping pages) are drawn from a
//! seeded RNG with per-fault probabilities changeable at runtime.
//!
//! Real-API behaviours, as options: `token_at_end` serves the page that
//! reaches the end of the log (and the empty pages after it) without a
//! `next_page_token`, or with `""`; every `empty_id_every`th event has
//! `"request_id": ""`; `max_page_size` clamps `page_size` silently. Every
//! event carries `fake_ref`, its unique reference for tests (the
//! `request_id` may be empty).

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use sha2::Sha256;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::http1::{self, Conn, ReadError, Request, Response, Server};

/// The export endpoint's path.
pub const EXPORT_PATH: &str = "/api/preview/system/audit/export";
/// Largest request body read (and ignored).
const MAX_BODY: usize = 1024 * 1024;
/// Request records kept in `FakeStats::log` (counters go on regardless).
const MAX_LOG: usize = 200_000;

pub const BODY_UNAUTHENTICATED: &str = r#"{"code":16,"message":"unauthenticated"}"#;
pub const BODY_BAD_TOKEN: &str = r#"{"code":3,"message":"page token expired or invalid"}"#;
pub const BODY_BAD_PAGE_SIZE: &str =
    r#"{"code":3,"message":"page_size must be between 1 and 10000"}"#;
pub const BODY_RATE_LIMITED: &str =
    r#"{"code":8,"message":"ResourceExhausted: too many requests"}"#;
pub const BODY_RATE_LIMITED_GRPC: &str =
    r#"{"code":8,"message":"rate limit exceeded, retry later","status":"RESOURCE_EXHAUSTED"}"#;
pub const BODY_NOT_JSON: &str = "<html>gateway</html>";

/// Probability (0.0–1.0) of each fault, drawn independently per request
/// that passed authentication and validation. When several are drawn at
/// once, the first of rate_limit, server_error, not_json, truncated, reset
/// decides the answer; `slow` delays whatever answer is sent and
/// `duplicates` alters the page served.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    pub rate_limit: f64,
    pub server_error: f64,
    pub slow: f64,
    pub reset: f64,
    pub truncated: f64,
    pub duplicates: f64,
    pub not_json: f64,
}

impl Faults {
    pub fn none() -> Self {
        Self::default()
    }
}

/// The ways a rate limit is answered; one is drawn among the enabled ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateLimitKind {
    /// 429, `{"code":8,...}`, `Retry-After: <retry_after_secs>`.
    RetryAfterSeconds,
    /// 429, `{"code":8,...}`, `Retry-After: <HTTP date>` (rounded up to a
    /// whole second at least `retry_after_secs` away).
    RetryAfterDate,
    /// 429, `{"code":8,...}`, no Retry-After: the client must wait its own
    /// `rate_limit_wait` (the fake's `default_wait`).
    NoRetryAfter,
    /// 503 with `{"code":8,...,"status":"RESOURCE_EXHAUSTED"}`, no Retry-After.
    Grpc503,
    /// 200 with `{"code":8,...,"status":"RESOURCE_EXHAUSTED"}`, no Retry-After.
    Grpc200,
}

impl RateLimitKind {
    pub const ALL: [RateLimitKind; 5] = [
        RateLimitKind::RetryAfterSeconds,
        RateLimitKind::RetryAfterDate,
        RateLimitKind::NoRetryAfter,
        RateLimitKind::Grpc503,
        RateLimitKind::Grpc200,
    ];
}

/// The `next_page_token` of a page that reaches the end of the log.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenAtEnd {
    /// A token to ask again with (Veza's documented behaviour).
    Token,
    /// No `next_page_token` member.
    Missing,
    /// `"next_page_token": ""`.
    Empty,
}

#[derive(Clone, Debug)]
pub struct VezaFakeConfig {
    /// The bearer token accepted (changeable with `set_token`).
    pub api_token: String,
    /// Query parameter carrying the page token.
    pub token_param: String,
    /// Path of the export endpoint.
    pub path: String,
    /// Events in the log at start.
    pub initial_events: usize,
    /// Append `append_batch` events every this long, until the log holds
    /// `total_events`.
    pub append_every: Option<Duration>,
    pub append_batch: usize,
    pub total_events: usize,
    /// `persisted_at` of the first event; by default the initial events end
    /// about a minute before the fake starts.
    pub first_persisted_at: Option<DateTime<Utc>>,
    /// Gap between the `persisted_at` of initial events (at least 1µs).
    /// Appended events get max(now, previous + 1µs).
    pub event_spacing: Duration,
    /// Seeds the fault RNG and the event contents.
    pub seed: u64,
    pub faults: Faults,
    /// Rate-limit answers to draw from (empty = `RetryAfterSeconds`).
    pub rate_limit_kinds: Vec<RateLimitKind>,
    /// Seconds sent in `Retry-After`.
    pub retry_after_secs: u64,
    /// The cool-down assumed when no Retry-After is sent: must equal the
    /// daemon's `rate_limit_wait`.
    pub default_wait: Duration,
    /// Delay of a `slow` answer.
    pub slow_delay: Duration,
    /// `reset`: end with a TCP RST (true) or a FIN (false) after the partial body.
    pub reset_with_rst: bool,
    pub token_at_end: TokenAtEnd,
    /// Every Nth event (1-based) has an empty `request_id` (0: none).
    pub empty_id_every: usize,
    /// Largest page served; a larger `page_size` is cut to it silently.
    pub max_page_size: usize,
}

impl Default for VezaFakeConfig {
    fn default() -> Self {
        VezaFakeConfig {
            api_token: "test-veza-token".into(),
            token_param: "page_token".into(),
            path: EXPORT_PATH.into(),
            initial_events: 100,
            append_every: None,
            append_batch: 10,
            total_events: 10_000,
            first_persisted_at: None,
            event_spacing: Duration::from_millis(250),
            seed: 1,
            faults: Faults::none(),
            rate_limit_kinds: RateLimitKind::ALL.to_vec(),
            retry_after_secs: 1,
            default_wait: Duration::from_secs(60),
            slow_delay: Duration::from_secs(2),
            reset_with_rst: true,
            token_at_end: TokenAtEnd::Token,
            empty_id_every: 0,
            max_page_size: 10_000,
        }
    }
}

/// How a request was answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// 200 with a non-empty page.
    Ok,
    /// 200 with `"values":[]` (caught up).
    Empty,
    RateLimited,
    ServerError,
    Reset,
    Truncated,
    NotJson,
    /// 401: missing or wrong bearer.
    Unauthorized,
    /// 400: expired, forged or undecodable page token.
    BadToken,
    /// 400 (or 405/413/431/...): bad page_size, filter, parameters or HTTP.
    BadRequest,
    /// 404: another path.
    NotFound,
}

/// One request as the fake saw it.
#[derive(Clone, Debug)]
pub struct RequestRecord {
    pub at: Instant,
    pub outcome: Outcome,
    pub status: u16,
    /// `page_size` as sent, if numeric.
    pub page_size: Option<u64>,
    /// A non-empty page token was sent.
    pub used_token: bool,
    /// A `filter` parameter was sent.
    pub had_filter: bool,
    /// Offset in the log the page started at, once resolved.
    pub offset: Option<usize>,
    /// Offset the `next_page_token` served points at (Ok/Empty only).
    pub next_offset: Option<usize>,
    /// Events in the page served (0 unless Ok).
    pub values: usize,
    pub slow: bool,
    /// The page served repeats events (duplicates fault).
    pub duplicates: bool,
    /// Arrived before the cool-down deadline of an earlier rate limit.
    pub during_cooldown: bool,
}

/// A snapshot of the fake's counters.
#[derive(Clone, Debug, Default)]
pub struct FakeStats {
    pub requests: u64,
    pub ok: u64,
    pub empty: u64,
    pub rate_limited: u64,
    pub server_error: u64,
    pub reset: u64,
    pub truncated: u64,
    pub not_json: u64,
    pub unauthorized: u64,
    pub bad_token: u64,
    pub bad_request: u64,
    pub not_found: u64,
    /// Answers delayed by the slow fault (counted with their outcome too).
    pub slow: u64,
    /// Pages served with repeated events.
    pub duplicates: u64,
    /// Requests that arrived before a rate-limit cool-down had ended.
    pub cooldown_violations: u64,
    /// Requests that sent both a page token and a filter.
    pub filter_with_token: u64,
    /// Token-less requests with a valid filter.
    pub first_calls: u64,
    /// Requests with neither token nor filter (served from the start).
    pub unfiltered_calls: u64,
    /// Per-request records (the first `MAX_LOG`).
    pub log: Vec<RequestRecord>,
}

/// One event of the log.
#[derive(Clone, Debug)]
pub struct FakeEvent {
    pub id: String,
    pub persisted_at: DateTime<Utc>,
    /// The event as served, one JSON object.
    pub json: String,
}

struct Tuning {
    rate_limit_kinds: Vec<RateLimitKind>,
    retry_after_secs: u64,
    default_wait: Duration,
    slow_delay: Duration,
}

struct State {
    events: Vec<FakeEvent>,
    epoch: u64,
    api_token: String,
    faults: Faults,
    tuning: Tuning,
    rng: StdRng,
    cooldown_until: Option<Instant>,
    stats: FakeStats,
}

struct Shared {
    path: String,
    token_param: String,
    seed: u64,
    spacing: Duration,
    first_persisted_at: DateTime<Utc>,
    reset_with_rst: bool,
    token_at_end: TokenAtEnd,
    empty_id_every: usize,
    max_page_size: usize,
    secret: [u8; 32],
    state: Mutex<State>,
    events_tx: watch::Sender<usize>,
    requests_tx: watch::Sender<u64>,
}

/// What to send back.
enum Reply {
    Full(Response),
    /// Head with the full Content-Length, half the body, then close.
    Partial(Response),
}

struct Decision {
    reply: Reply,
    delay: Option<Duration>,
}

/// The running fake. Dropping it stops the server and the appender.
pub struct VezaFake {
    shared: Arc<Shared>,
    server: Server,
    appender: Option<JoinHandle<()>>,
}

impl VezaFake {
    /// Starts the fake on 127.0.0.1 (a free port) with `cfg.initial_events`
    /// events in its log.
    pub async fn start(cfg: VezaFakeConfig) -> io::Result<VezaFake> {
        let listener = http1::bind_loopback(0)?;
        let spacing = cfg.event_spacing.max(Duration::from_micros(1));
        let first_persisted_at = cfg.first_persisted_at.unwrap_or_else(|| {
            let span =
                spacing.saturating_mul(u32::try_from(cfg.initial_events).unwrap_or(u32::MAX));
            Utc::now()
                - chrono::Duration::from_std(span + Duration::from_secs(60)).unwrap_or_default()
        });
        let shared = Arc::new(Shared {
            path: cfg.path.clone(),
            token_param: cfg.token_param.clone(),
            seed: cfg.seed,
            spacing,
            first_persisted_at,
            reset_with_rst: cfg.reset_with_rst,
            token_at_end: cfg.token_at_end,
            empty_id_every: cfg.empty_id_every,
            max_page_size: cfg.max_page_size,
            secret: rand::random(),
            state: Mutex::new(State {
                events: Vec::with_capacity(cfg.initial_events),
                epoch: 1,
                api_token: cfg.api_token.clone(),
                faults: cfg.faults,
                tuning: Tuning {
                    rate_limit_kinds: cfg.rate_limit_kinds.clone(),
                    retry_after_secs: cfg.retry_after_secs,
                    default_wait: cfg.default_wait,
                    slow_delay: cfg.slow_delay,
                },
                rng: StdRng::seed_from_u64(cfg.seed),
                cooldown_until: None,
                stats: FakeStats::default(),
            }),
            events_tx: watch::Sender::new(0),
            requests_tx: watch::Sender::new(0),
        });
        shared.append(cfg.initial_events, true);
        let conn_shared = shared.clone();
        let server = Server::spawn(listener, move |stream| {
            serve_connection(conn_shared.clone(), stream)
        })?;
        let appender = cfg.append_every.map(|every| {
            tokio::spawn(append_loop(
                shared.clone(),
                every,
                cfg.append_batch,
                cfg.total_events,
            ))
        });
        Ok(VezaFake {
            shared,
            server,
            appender,
        })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// The full export endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("{}{}", self.url(), self.shared.path)
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Ids of every event generated so far, in log order.
    pub fn all_ids(&self) -> Vec<String> {
        self.shared
            .lock()
            .events
            .iter()
            .map(|e| e.id.clone())
            .collect()
    }

    /// Ids of the events with `persisted_at >= from`.
    pub fn ids_from(&self, from: DateTime<Utc>) -> Vec<String> {
        self.shared
            .lock()
            .events
            .iter()
            .filter(|e| e.persisted_at >= from)
            .map(|e| e.id.clone())
            .collect()
    }

    pub fn events(&self) -> Vec<FakeEvent> {
        self.shared.lock().events.clone()
    }

    pub fn event_count(&self) -> usize {
        self.shared.lock().events.len()
    }

    /// Appends `n` events now (not limited by `total_events`); returns the
    /// new log length.
    pub fn append_now(&self, n: usize) -> usize {
        self.shared.append(n, false)
    }

    /// Invalidates every page token issued so far.
    pub fn expire_tokens(&self) {
        self.shared.lock().epoch += 1;
    }

    /// A valid token (current epoch) for the page starting at `offset`.
    pub fn token_for_offset(&self, offset: usize) -> String {
        let epoch = self.shared.lock().epoch;
        self.shared.make_token(epoch, offset)
    }

    /// Changes the accepted bearer token.
    pub fn set_token(&self, token: &str) {
        self.shared.lock().api_token = token.to_string();
    }

    pub fn set_faults(&self, faults: Faults) {
        self.shared.lock().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.shared.lock().faults
    }

    pub fn set_rate_limit_kinds(&self, kinds: &[RateLimitKind]) {
        self.shared.lock().tuning.rate_limit_kinds = kinds.to_vec();
    }

    pub fn set_retry_after_secs(&self, secs: u64) {
        self.shared.lock().tuning.retry_after_secs = secs;
    }

    pub fn set_default_wait(&self, wait: Duration) {
        self.shared.lock().tuning.default_wait = wait;
    }

    pub fn set_slow_delay(&self, delay: Duration) {
        self.shared.lock().tuning.slow_delay = delay;
    }

    /// When the current rate-limit cool-down ends, if one was announced.
    pub fn cooldown_until(&self) -> Option<Instant> {
        self.shared.lock().cooldown_until
    }

    /// Forgets the cool-down (later requests are not violations).
    pub fn clear_cooldown(&self) {
        self.shared.lock().cooldown_until = None;
    }

    pub fn stats(&self) -> FakeStats {
        self.shared.lock().stats.clone()
    }

    /// Waits until the log holds at least `n` events.
    pub async fn wait_for_events(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.shared.events_tx.subscribe();
        let done = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|have| *have >= n)).await,
            Ok(Ok(_))
        );
        done
    }

    /// Waits until at least `n` requests have been answered (decided).
    pub async fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.shared.requests_tx.subscribe();
        let done = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|have| *have >= n)).await,
            Ok(Ok(_))
        );
        done
    }

    /// Stops listening and closes every connection, waiting until done.
    pub async fn shutdown(mut self) {
        if let Some(a) = self.appender.take() {
            a.abort();
        }
        self.server.stop().await;
    }
}

impl Drop for VezaFake {
    fn drop(&mut self) {
        if let Some(a) = &self.appender {
            a.abort();
        }
        // `server` aborts its own tasks when dropped.
    }
}

async fn append_loop(shared: Arc<Shared>, every: Duration, batch: usize, cap: usize) {
    if batch == 0 || every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Each round adds at least one event until the cap: bounded.
    loop {
        let room = cap.saturating_sub(shared.lock().events.len());
        if room == 0 {
            return;
        }
        tick.tick().await;
        shared.append(batch.min(room), false);
    }
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let mut conn = Conn::new(stream);
    for _ in 0..http1::MAX_REQUESTS_PER_CONNECTION {
        let req = match conn.read_request(MAX_BODY).await {
            Ok(req) => req,
            Err(ReadError::Bad(status, why)) => {
                shared.record_http_error(status);
                let body = json!({"code": 3, "message": why}).to_string();
                conn.reject(&Response::json(status, body)).await;
                return;
            }
            Err(ReadError::Closed | ReadError::Io(_)) => return,
        };
        let decision = shared.decide(&req);
        if let Some(delay) = decision.delay {
            tokio::time::sleep(delay).await;
        }
        match decision.reply {
            Reply::Full(resp) => {
                let close = !req.keep_alive;
                if resp.write(&mut conn.stream, close).await.is_err() || close {
                    return;
                }
            }
            Reply::Partial(resp) => {
                let mut bytes = resp.head(resp.body.len(), false);
                bytes.extend_from_slice(&resp.body[..resp.body.len() / 2]);
                let _ = conn.stream.write_all(&bytes).await;
                let _ = conn.stream.flush().await;
                if shared.reset_with_rst {
                    // FIN after the data, then RST when the socket is dropped.
                    let _ = conn.stream.shutdown().await;
                    let _ = conn.stream.set_zero_linger();
                } else {
                    let _ = conn.stream.shutdown().await;
                }
                return;
            }
        }
    }
}

fn error_body(code: u32, message: &str) -> String {
    json!({"code": code, "message": message}).to_string()
}

/// Parses `persisted_at GE "<RFC3339>"`.
fn parse_filter(filter: &str) -> Result<DateTime<Utc>, String> {
    let inner = filter
        .strip_prefix("persisted_at GE \"")
        .and_then(|rest| rest.strip_suffix('"'))
        .ok_or_else(|| {
            format!("invalid filter {filter:?}: expected persisted_at GE \"<RFC3339>\"")
        })?;
    DateTime::parse_from_rfc3339(inner)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("invalid filter timestamp {inner:?}: {e}"))
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn mac(&self, epoch: u64, offset: usize) -> String {
        let mut mac = match Hmac::<Sha256>::new_from_slice(&self.secret) {
            Ok(m) => m,
            Err(_) => return String::new(),
        };
        mac.update(format!("{epoch}:{offset}").as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..12])
    }

    fn make_token(&self, epoch: u64, offset: usize) -> String {
        URL_SAFE_NO_PAD.encode(format!("{epoch}:{offset}:{}", self.mac(epoch, offset)))
    }

    /// (epoch, offset) of a token this fake issued, whatever its epoch.
    fn read_token(&self, token: &str) -> Option<(u64, usize)> {
        let raw = URL_SAFE_NO_PAD.decode(token.as_bytes()).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let mut parts = text.split(':');
        let epoch: u64 = parts.next()?.parse().ok()?;
        let offset: usize = parts.next()?.parse().ok()?;
        let mac = parts.next()?;
        if parts.next().is_some() || mac != self.mac(epoch, offset) {
            return None;
        }
        Some((epoch, offset))
    }

    /// Appends `n` events; returns the new length.
    fn append(&self, n: usize, initial: bool) -> usize {
        let mut st = self.lock();
        let now = Utc::now();
        for _ in 0..n {
            let index = st.events.len();
            let persisted_at = if initial {
                let base = self
                    .spacing
                    .saturating_mul(u32::try_from(index).unwrap_or(u32::MAX));
                // Jitter below half the spacing keeps the order strict.
                let jitter_ns = (mix(self.seed, index as u64)
                    % (self.spacing.as_nanos() as u64 / 2).max(1))
                    as i64;
                self.first_persisted_at
                    + chrono::Duration::from_std(base).unwrap_or_default()
                    + chrono::Duration::nanoseconds(jitter_ns)
            } else {
                let after = st
                    .events
                    .last()
                    .map(|e| e.persisted_at + chrono::Duration::microseconds(1));
                match after {
                    Some(after) if after > now => after,
                    _ => now,
                }
            };
            let persisted_at = match st.events.last() {
                Some(prev) if persisted_at <= prev.persisted_at => {
                    prev.persisted_at + chrono::Duration::microseconds(1)
                }
                _ => persisted_at,
            };
            let empty_id =
                self.empty_id_every > 0 && (index + 1).is_multiple_of(self.empty_id_every);
            let event = make_event(self.seed, index, persisted_at, empty_id);
            st.events.push(event);
        }
        let len = st.events.len();
        drop(st);
        self.events_tx.send_replace(len);
        len
    }

    /// Counts a request the HTTP layer already rejected.
    fn record_http_error(&self, status: u16) {
        let mut st = self.lock();
        st.stats.requests += 1;
        st.stats.bad_request += 1;
        let during_cooldown = st.cooldown_until.is_some_and(|d| Instant::now() < d);
        if during_cooldown {
            st.stats.cooldown_violations += 1;
        }
        let record = RequestRecord {
            at: Instant::now(),
            outcome: Outcome::BadRequest,
            status,
            page_size: None,
            used_token: false,
            had_filter: false,
            offset: None,
            next_offset: None,
            values: 0,
            slow: false,
            duplicates: false,
            during_cooldown,
        };
        if st.stats.log.len() < MAX_LOG {
            st.stats.log.push(record);
        }
        let total = st.stats.requests;
        drop(st);
        self.requests_tx.send_replace(total);
    }

    fn decide(&self, req: &Request) -> Decision {
        let arrived = Instant::now();
        let mut guard = self.lock();
        let st = &mut *guard;
        st.stats.requests += 1;
        let during_cooldown = st.cooldown_until.is_some_and(|d| arrived < d);
        if during_cooldown {
            st.stats.cooldown_violations += 1;
        }
        let mut rec = RequestRecord {
            at: arrived,
            outcome: Outcome::BadRequest,
            status: 400,
            page_size: None,
            used_token: false,
            had_filter: false,
            offset: None,
            next_offset: None,
            values: 0,
            slow: false,
            duplicates: false,
            during_cooldown,
        };
        let (decision, status) = self.decide_inner(st, req, &mut rec);
        rec.status = status;
        let stats = &mut st.stats;
        match rec.outcome {
            Outcome::Ok => stats.ok += 1,
            Outcome::Empty => stats.empty += 1,
            Outcome::RateLimited => stats.rate_limited += 1,
            Outcome::ServerError => stats.server_error += 1,
            Outcome::Reset => stats.reset += 1,
            Outcome::Truncated => stats.truncated += 1,
            Outcome::NotJson => stats.not_json += 1,
            Outcome::Unauthorized => stats.unauthorized += 1,
            Outcome::BadToken => stats.bad_token += 1,
            Outcome::BadRequest => stats.bad_request += 1,
            Outcome::NotFound => stats.not_found += 1,
        }
        if rec.slow {
            stats.slow += 1;
        }
        if rec.duplicates {
            stats.duplicates += 1;
        }
        if stats.log.len() < MAX_LOG {
            stats.log.push(rec);
        }
        let total = stats.requests;
        drop(guard);
        self.requests_tx.send_replace(total);
        decision
    }

    /// Decides the answer; sets `rec.outcome` and the other fields. Returns
    /// the decision and its status code.
    fn decide_inner(
        &self,
        st: &mut State,
        req: &Request,
        rec: &mut RequestRecord,
    ) -> (Decision, u16) {
        let full = |status: u16, resp: Response| {
            (
                Decision {
                    reply: Reply::Full(resp),
                    delay: None,
                },
                status,
            )
        };
        if req.path() != self.path {
            rec.outcome = Outcome::NotFound;
            return full(404, Response::json(404, error_body(5, "Not Found")));
        }
        if req.method != "GET" {
            rec.outcome = Outcome::BadRequest;
            return full(
                405,
                Response::json(405, error_body(12, "method not allowed"))
                    .with_header("Allow", "GET"),
            );
        }
        let mut page_sizes = Vec::new();
        let mut filters = Vec::new();
        let mut tokens = Vec::new();
        for (k, v) in url::form_urlencoded::parse(req.query().as_bytes()) {
            if k == "page_size" {
                page_sizes.push(v.into_owned());
            } else if k == "filter" {
                filters.push(v.into_owned());
            } else if k == self.token_param {
                tokens.push(v.into_owned());
            }
        }
        rec.page_size = page_sizes.first().and_then(|p| p.parse().ok());
        rec.had_filter = !filters.is_empty();
        rec.used_token = tokens.first().is_some_and(|t| !t.is_empty());

        let authorized = req
            .header("authorization")
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, token)| {
                scheme.eq_ignore_ascii_case("bearer") && token.trim() == st.api_token
            });
        if !authorized {
            rec.outcome = Outcome::Unauthorized;
            return full(401, Response::json(401, BODY_UNAUTHENTICATED));
        }
        for (name, values) in [
            ("page_size", &page_sizes),
            ("filter", &filters),
            (self.token_param.as_str(), &tokens),
        ] {
            if values.len() > 1 {
                rec.outcome = Outcome::BadRequest;
                let msg = format!("parameter {name} given more than once");
                return full(400, Response::json(400, error_body(3, &msg)));
            }
        }
        let page_size = match rec.page_size {
            Some(n) if (1..=10_000).contains(&n) => n as usize,
            _ => {
                rec.outcome = Outcome::BadRequest;
                return full(400, Response::json(400, BODY_BAD_PAGE_SIZE));
            }
        };
        let offset = if rec.used_token {
            if rec.had_filter {
                st.stats.filter_with_token += 1;
            }
            let token = tokens.first().map(String::as_str).unwrap_or("");
            match self.read_token(token) {
                Some((epoch, offset)) if epoch == st.epoch && offset <= st.events.len() => offset,
                _ => {
                    rec.outcome = Outcome::BadToken;
                    return full(400, Response::json(400, BODY_BAD_TOKEN));
                }
            }
        } else if let Some(filter) = filters.first() {
            match parse_filter(filter) {
                Ok(from) => {
                    st.stats.first_calls += 1;
                    st.events.partition_point(|e| e.persisted_at < from)
                }
                Err(msg) => {
                    rec.outcome = Outcome::BadRequest;
                    return full(400, Response::json(400, error_body(3, &msg)));
                }
            }
        } else {
            st.stats.unfiltered_calls += 1;
            0
        };
        rec.offset = Some(offset);

        // Draw every fault on every request so the RNG stream does not
        // depend on which ones apply.
        let f = st.faults;
        let mut draw = |p: f64| p > 0.0 && st.rng.random::<f64>() < p;
        let (rate_limit, server_error, slow, reset, truncated, duplicates, not_json) = (
            draw(f.rate_limit),
            draw(f.server_error),
            draw(f.slow),
            draw(f.reset),
            draw(f.truncated),
            draw(f.duplicates),
            draw(f.not_json),
        );
        // A rate-limit answer is never slow: the gateway answers at once, and
        // a cool-down announced in an answer the client timed out on (or
        // never read) could not be obeyed.
        let slow = slow && !rate_limit;
        let delay = slow.then_some(st.tuning.slow_delay);
        rec.slow = slow;
        let decision = |reply: Reply| Decision { reply, delay };

        if rate_limit {
            rec.outcome = Outcome::RateLimited;
            let resp = self.rate_limit(st);
            let status = resp.status;
            return (decision(Reply::Full(resp)), status);
        }
        if server_error {
            rec.outcome = Outcome::ServerError;
            let resp = match st.rng.random_range(0..4u8) {
                0 => Response::json(500, error_body(13, "internal error")),
                1 => Response::new(
                    502,
                    "text/html",
                    "<html><body><h1>502 Bad Gateway</h1></body></html>",
                ),
                2 => Response::new(
                    503,
                    "text/plain",
                    "upstream connect error or disconnect/reset before headers",
                ),
                _ => Response::json(503, error_body(14, "service unavailable")),
            };
            let status = resp.status;
            return (decision(Reply::Full(resp)), status);
        }
        if not_json {
            rec.outcome = Outcome::NotJson;
            return (
                decision(Reply::Full(Response::new(200, "text/html", BODY_NOT_JSON))),
                200,
            );
        }

        let (body, served, next, repeated) =
            self.page(st, offset, page_size.min(self.max_page_size), duplicates);
        if truncated {
            rec.outcome = Outcome::Truncated;
            let cut = body.len() / 2;
            let resp = Response::json(200, body.as_bytes()[..cut].to_vec());
            return (decision(Reply::Full(resp)), 200);
        }
        if reset {
            rec.outcome = Outcome::Reset;
            return (decision(Reply::Partial(Response::json(200, body))), 200);
        }
        rec.next_offset = Some(next);
        rec.values = served;
        rec.duplicates = repeated;
        rec.outcome = if served == 0 {
            Outcome::Empty
        } else {
            Outcome::Ok
        };
        (decision(Reply::Full(Response::json(200, body))), 200)
    }

    /// A rate-limit answer; records the cool-down it announces.
    fn rate_limit(&self, st: &mut State) -> Response {
        let kinds = &st.tuning.rate_limit_kinds;
        let kind = if kinds.is_empty() {
            RateLimitKind::RetryAfterSeconds
        } else {
            kinds[st.rng.random_range(0..kinds.len())]
        };
        let secs = st.tuning.retry_after_secs;
        // Instant first, then the wall clock: the deadline derived from the
        // HTTP date then errs early, never late.
        let now = Instant::now();
        let (resp, deadline) = match kind {
            RateLimitKind::RetryAfterSeconds => (
                Response::json(429, BODY_RATE_LIMITED).with_header("Retry-After", secs.to_string()),
                now + Duration::from_secs(secs),
            ),
            RateLimitKind::RetryAfterDate => {
                let wall = SystemTime::now();
                let target = wall + Duration::from_secs(secs);
                let since_epoch = target.duration_since(UNIX_EPOCH).unwrap_or_default();
                let whole = since_epoch.as_secs() + u64::from(since_epoch.subsec_nanos() > 0);
                let date = UNIX_EPOCH + Duration::from_secs(whole);
                let wait = date.duration_since(wall).unwrap_or_default();
                (
                    Response::json(429, BODY_RATE_LIMITED)
                        .with_header("Retry-After", httpdate::fmt_http_date(date)),
                    now + wait,
                )
            }
            RateLimitKind::NoRetryAfter => (
                Response::json(429, BODY_RATE_LIMITED),
                now + st.tuning.default_wait,
            ),
            RateLimitKind::Grpc503 => (
                Response::json(503, BODY_RATE_LIMITED_GRPC),
                now + st.tuning.default_wait,
            ),
            RateLimitKind::Grpc200 => (
                Response::json(200, BODY_RATE_LIMITED_GRPC),
                now + st.tuning.default_wait,
            ),
        };
        st.cooldown_until = Some(st.cooldown_until.map_or(deadline, |d| d.max(deadline)));
        resp
    }

    /// The page at `offset`: (body, events served, next offset, repeats?).
    fn page(
        &self,
        st: &mut State,
        offset: usize,
        page_size: usize,
        duplicates: bool,
    ) -> (String, usize, usize, bool) {
        let len = st.events.len();
        let offset = offset.min(len);
        let n = page_size.min(len - offset);
        let (mut start, mut end, mut next, mut repeated) = (offset, offset + n, offset + n, false);
        if duplicates && n > 0 {
            let k = st.rng.random_range(1..=3usize);
            let prefer_prefix = st.rng.random::<bool>();
            // Re-include up to k events before `offset`, keeping progress.
            let prefix = k.min(offset).min(page_size.saturating_sub(1));
            // Or advance the token k events less than the page.
            let overlap = k.min(n - 1);
            if prefix > 0 && (prefer_prefix || overlap == 0) {
                let fresh = (page_size - prefix).min(n);
                start = offset - prefix;
                end = offset + fresh;
                next = end;
                repeated = true;
            } else if overlap > 0 {
                next = offset + n - overlap;
                repeated = true;
            }
        }
        let mut body = String::from("{\"values\":[");
        for (i, e) in st.events[start..end].iter().enumerate() {
            if i > 0 {
                body.push(',');
            }
            body.push_str(&e.json);
        }
        match (next >= len, self.token_at_end) {
            (true, TokenAtEnd::Missing) => body.push_str("]}"),
            (true, TokenAtEnd::Empty) => body.push_str("],\"next_page_token\":\"\"}"),
            _ => {
                body.push_str("],\"next_page_token\":\"");
                body.push_str(&self.make_token(st.epoch, next));
                body.push_str("\"}");
            }
        }
        (body, end - start, next, repeated)
    }
}

/// A cheap deterministic 64-bit mix (splitmix64) of seed and index.
fn mix(seed: u64, index: u64) -> u64 {
    let mut z = seed
        ^ index
            .wrapping_mul(0x9E37_79B9_7F4A_7C15)
            .wrapping_add(0x632B_E59B_D9B4_E019);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

const EMAILS: [&str; 7] = [
    "alice@example.com",
    "bob.o'neil@example.com",
    "zoë.müller@exämple.de",
    "\"chief\"@example.com",
    "李雷@example.cn",
    "ops+audit@example.org",
    "back\\slash@example.net",
];

const USER_AGENTS: [&str; 6] = [
    "Mozilla/5.0 (X11; Linux x86_64) AppleWebKit/537.36 (KHTML, like Gecko)",
    "curl/8.5.0",
    "veza-cli/1.4 (\"nightly\"; C:\\tools\\veza)",
    "python-requests/2.31.0",
    "terraform-provider-veza/0.9 ✓ 日本語",
    "Go-http-client/1.1",
];

const ENDPOINTS: [(&str, &str, &str); 6] = [
    (
        "/api_protos.v1.APIKeyService/CreateAPIKey",
        "POST",
        "/api/preview/keys",
    ),
    (
        "/api_protos.v1.UserService/ListUsers",
        "GET",
        "/api/v1/users",
    ),
    (
        "/api_protos.v1.QueryService/DeleteQuery",
        "DELETE",
        "/api/v1/assessments/queries/{}",
    ),
    (
        "/api_protos.v1.PolicyService/UpdatePolicy",
        "PUT",
        "/api/v1/providers/policies/{}",
    ),
    (
        "/api_protos.v1.AuthService/Login",
        "POST",
        "/api/v1/auth/login",
    ),
    (
        "/api_protos.v1.ReportService/ExportReport",
        "GET",
        "/api/v1/reports/{}/export",
    ),
];

fn uuid(rng: &mut StdRng) -> String {
    let v: u128 = rng.random();
    let h = format!("{v:032x}");
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Nanos, true)
}

/// Event number `index` (0-based; id `req-{index+1:06}`), deterministic in
/// (seed, index) apart from `persisted_at`.
fn make_event(seed: u64, index: usize, persisted_at: DateTime<Utc>, empty_id: bool) -> FakeEvent {
    let mut rng = StdRng::seed_from_u64(mix(seed, index as u64));
    let id = format!("req-{:06}", index + 1);
    let (endpoint, method, url) = ENDPOINTS[rng.random_range(0..ENDPOINTS.len())];
    let url = url.replace("{}", &uuid(&mut rng));
    let (grpc_code, http_status, reason) = match rng.random_range(0..20u8) {
        0 => (
            "PermissionDenied",
            403,
            "permission denied for \"CreateAPIKey\"",
        ),
        1 => (
            "InvalidArgument",
            400,
            "invalid argument: name\nmust not be empty",
        ),
        2 => ("NotFound", 404, "not found: C:\\data\\q"),
        _ => ("OK", 200, "OK"),
    };
    let request = match rng.random_range(0..5u8) {
        0 => json!({"name": "deploy key \"prod\"", "description": "line one\nline two"}),
        1 => json!({"query": {"name": "Tëst ✓ – 日本語", "path": "C:\\Users\\admin\\report.csv"}}),
        2 => json!({}),
        3 => json!({"login": "user", "note": "tab\tseparated, emoji 🚀, nul-free \u{7f}"}),
        _ => json!({"ids": [1, 2, 3], "filter": "name eq \"x\" and path co \"\\\\share\""}),
    };
    let ip = if rng.random_range(0..4u8) == 0 {
        format!("2001:db8::{:x}", rng.random::<u16>())
    } else {
        format!(
            "10.{}.{}.{}",
            rng.random::<u8>(),
            rng.random::<u8>(),
            rng.random_range(1..255u8)
        )
    };
    let api_key_id = if rng.random::<bool>() {
        String::new()
    } else {
        format!("key-{}", uuid(&mut rng))
    };
    let duration_ns = rng.random_range(1_000_000..500_000_000i64);
    let lag_ns = rng.random_range(20_000_000..2_000_000_000i64);
    let ended_at = persisted_at - chrono::Duration::nanoseconds(lag_ns);
    let started_at = ended_at - chrono::Duration::nanoseconds(duration_ns);
    let value = json!({
        "identity": {
            "user_id": uuid(&mut rng),
            "session_id": uuid(&mut rng),
            "api_key_id": api_key_id,
            "email": EMAILS[rng.random_range(0..EMAILS.len())],
        },
        "status": {"grpc_code": grpc_code, "http_status": http_status, "error_reason": reason},
        "client": {"ip": ip, "user_agent": USER_AGENTS[rng.random_range(0..USER_AGENTS.len())]},
        "endpoint": endpoint,
        "method": method,
        "url": url,
        "request_id": id,
        "request": request,
        "started_at": rfc3339(started_at),
        "ended_at": rfc3339(ended_at),
        "persisted_at": rfc3339(persisted_at),
    });
    let mut value = value;
    value["fake_ref"] = json!(id);
    if empty_id {
        value["request_id"] = json!("");
    }
    FakeEvent {
        id,
        persisted_at,
        json: value.to_string(),
    }
}
