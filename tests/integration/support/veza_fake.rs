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
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::json;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use super::http1::{Request, Response};
use super::paged::{self, Answer, Cooldown, Core, Cut, PageTokens, PagedApi, PagedFake, Params};
pub use super::paged::{RateLimitKind, TokenAtEnd};
use super::veza_events::{make_event, mix};

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
    /// Answer a request inside an announced cool-down with another rate
    /// limit, as real gateways do, instead of serving it (it is counted as
    /// a violation either way). A client that never read the announcement
    /// (killed right after it was sent) then learns it at once.
    pub refuse_during_cooldown: bool,
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
            refuse_during_cooldown: false,
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
    refuse_during_cooldown: bool,
}

pub struct VezaState {
    events: Vec<FakeEvent>,
    tokens: PageTokens,
    api_token: String,
    faults: Faults,
    tuning: Tuning,
    rng: StdRng,
    cooldown: Cooldown,
    stats: FakeStats,
}

/// The export API's shape.
pub struct VezaExport {
    path: String,
    token_param: String,
    seed: u64,
    spacing: Duration,
    first_persisted_at: DateTime<Utc>,
    reset_with_rst: bool,
    token_at_end: TokenAtEnd,
    empty_id_every: usize,
    max_page_size: usize,
    events_tx: watch::Sender<usize>,
}

/// The running fake. Dropping it stops the server and the appender.
pub struct VezaFake {
    fake: PagedFake<VezaExport>,
    appender: Option<JoinHandle<()>>,
}

impl VezaFake {
    /// Starts the fake on 127.0.0.1 (a free port) with `cfg.initial_events`
    /// events in its log.
    pub async fn start(cfg: VezaFakeConfig) -> io::Result<VezaFake> {
        let spacing = cfg.event_spacing.max(Duration::from_micros(1));
        let first_persisted_at = cfg.first_persisted_at.unwrap_or_else(|| {
            let span =
                spacing.saturating_mul(u32::try_from(cfg.initial_events).unwrap_or(u32::MAX));
            Utc::now()
                - chrono::Duration::from_std(span + Duration::from_secs(60)).unwrap_or_default()
        });
        let api = VezaExport {
            path: cfg.path.clone(),
            token_param: cfg.token_param.clone(),
            seed: cfg.seed,
            spacing,
            first_persisted_at,
            reset_with_rst: cfg.reset_with_rst,
            token_at_end: cfg.token_at_end,
            empty_id_every: cfg.empty_id_every,
            max_page_size: cfg.max_page_size,
            events_tx: watch::Sender::new(0),
        };
        let mut state = VezaState {
            events: Vec::with_capacity(cfg.initial_events),
            tokens: PageTokens::default(),
            api_token: cfg.api_token.clone(),
            faults: cfg.faults,
            tuning: Tuning {
                rate_limit_kinds: cfg.rate_limit_kinds.clone(),
                retry_after_secs: cfg.retry_after_secs,
                default_wait: cfg.default_wait,
                slow_delay: cfg.slow_delay,
                refuse_during_cooldown: cfg.refuse_during_cooldown,
            },
            rng: StdRng::seed_from_u64(cfg.seed),
            cooldown: Cooldown::default(),
            stats: FakeStats::default(),
        };
        let len = api.append(&mut state, cfg.initial_events, true);
        api.events_tx.send_replace(len);
        let fake = PagedFake::serve(api, state)?;
        let appender = cfg.append_every.map(|every| {
            tokio::spawn(append_loop(
                fake.core().clone(),
                every,
                cfg.append_batch,
                cfg.total_events,
            ))
        });
        Ok(VezaFake { fake, appender })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        self.fake.url()
    }

    /// The full export endpoint URL.
    pub fn endpoint(&self) -> String {
        format!("{}{}", self.url(), self.fake.api().path)
    }

    pub fn addr(&self) -> SocketAddr {
        self.fake.addr()
    }

    /// Ids of every event generated so far, in log order.
    pub fn all_ids(&self) -> Vec<String> {
        self.fake
            .state()
            .events
            .iter()
            .map(|e| e.id.clone())
            .collect()
    }

    /// Ids of the events with `persisted_at >= from`.
    pub fn ids_from(&self, from: DateTime<Utc>) -> Vec<String> {
        self.fake
            .state()
            .events
            .iter()
            .filter(|e| e.persisted_at >= from)
            .map(|e| e.id.clone())
            .collect()
    }

    pub fn events(&self) -> Vec<FakeEvent> {
        self.fake.state().events.clone()
    }

    pub fn event_count(&self) -> usize {
        self.fake.state().events.len()
    }

    /// Appends `n` events now (not limited by `total_events`); returns the
    /// new log length.
    pub fn append_now(&self, n: usize) -> usize {
        append(self.fake.core(), n)
    }

    /// Invalidates every page token issued so far.
    pub fn expire_tokens(&self) {
        self.fake.state().tokens.expire();
    }

    /// A valid token (current epoch) for the page starting at `offset`.
    pub fn token_for_offset(&self, offset: usize) -> String {
        self.fake.state().tokens.issue(offset, "")
    }

    /// Puts a redirect in front of the export API (see `paged`).
    pub fn set_redirect(&self, redirect: Option<super::redirect::Redirect>) {
        self.fake.set_redirect(redirect);
    }

    /// Changes the accepted bearer token.
    pub fn set_token(&self, token: &str) {
        self.fake.state().api_token = token.to_string();
    }

    pub fn set_faults(&self, faults: Faults) {
        self.fake.state().faults = faults;
    }

    pub fn faults(&self) -> Faults {
        self.fake.state().faults
    }

    pub fn set_rate_limit_kinds(&self, kinds: &[RateLimitKind]) {
        self.fake.state().tuning.rate_limit_kinds = kinds.to_vec();
    }

    pub fn set_retry_after_secs(&self, secs: u64) {
        self.fake.state().tuning.retry_after_secs = secs;
    }

    pub fn set_default_wait(&self, wait: Duration) {
        self.fake.state().tuning.default_wait = wait;
    }

    pub fn set_slow_delay(&self, delay: Duration) {
        self.fake.state().tuning.slow_delay = delay;
    }

    /// When the current rate-limit cool-down ends, if one was announced.
    pub fn cooldown_until(&self) -> Option<Instant> {
        self.fake.state().cooldown.until()
    }

    /// Forgets the cool-down (later requests are not violations).
    pub fn clear_cooldown(&self) {
        self.fake.state().cooldown.clear();
    }

    pub fn stats(&self) -> FakeStats {
        let st = self.fake.state();
        FakeStats {
            cooldown_violations: st.cooldown.violations,
            ..st.stats.clone()
        }
    }

    /// Waits until the log holds at least `n` events.
    pub async fn wait_for_events(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.fake.api().events_tx.subscribe();
        let done = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|have| *have >= n)).await,
            Ok(Ok(_))
        );
        done
    }

    /// Waits until at least `n` requests have been answered (decided).
    pub async fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        self.fake.wait_for_requests(n, timeout).await
    }

    /// Stops listening and closes every connection, waiting until done.
    pub async fn shutdown(mut self) {
        if let Some(a) = self.appender.take() {
            a.abort();
        }
        self.fake.stop().await;
    }
}

impl Drop for VezaFake {
    fn drop(&mut self) {
        if let Some(a) = &self.appender {
            a.abort();
        }
        // `fake` aborts its own tasks when dropped.
    }
}

/// Appends `n` events (live ones, stamped now); returns the new length.
fn append(core: &Core<VezaExport>, n: usize) -> usize {
    let len = core.api.append(&mut core.lock(), n, false);
    core.api.events_tx.send_replace(len);
    len
}

async fn append_loop(core: Arc<Core<VezaExport>>, every: Duration, batch: usize, cap: usize) {
    if batch == 0 || every.is_zero() {
        return;
    }
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Each round adds at least one event until the cap: bounded.
    loop {
        let room = cap.saturating_sub(core.lock().events.len());
        if room == 0 {
            return;
        }
        tick.tick().await;
        append(&core, batch.min(room));
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

impl PagedApi for VezaExport {
    type State = VezaState;
    const MAX_BODY: usize = MAX_BODY;

    /// Counts a request the HTTP layer rejected.
    fn unreadable(&self, st: &mut VezaState, status: u16, why: &str) -> Response {
        st.stats.requests += 1;
        st.stats.bad_request += 1;
        let record = RequestRecord {
            status,
            during_cooldown: st.cooldown.check(Instant::now()),
            ..RequestRecord::new(Instant::now())
        };
        if st.stats.log.len() < MAX_LOG {
            st.stats.log.push(record);
        }
        Response::json(status, error_body(3, why))
    }

    fn answer(&self, st: &mut VezaState, req: &Request) -> Answer {
        let arrived = Instant::now();
        st.stats.requests += 1;
        let mut rec = RequestRecord {
            during_cooldown: st.cooldown.check(arrived),
            ..RequestRecord::new(arrived)
        };
        let answer = self.decide(st, req, &mut rec);
        rec.status = answer.response.status;
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
        answer
    }
}

impl RequestRecord {
    /// A request that arrived `at`, not yet decided (a bad request).
    fn new(at: Instant) -> Self {
        RequestRecord {
            at,
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
            during_cooldown: false,
        }
    }
}

impl VezaExport {
    /// Appends `n` events; returns the new length.
    fn append(&self, st: &mut VezaState, n: usize, initial: bool) -> usize {
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
            let empty_id = paged::every_nth(self.empty_id_every as u64, index as u64 + 1);
            let event = make_event(self.seed, index, persisted_at, empty_id);
            st.events.push(event);
        }
        st.events.len()
    }

    /// Decides the answer; sets `rec.outcome` and the other fields.
    fn decide(&self, st: &mut VezaState, req: &Request, rec: &mut RequestRecord) -> Answer {
        if req.path() != self.path {
            rec.outcome = Outcome::NotFound;
            return Response::json(404, error_body(5, "Not Found")).into();
        }
        if req.method != "GET" {
            rec.outcome = Outcome::BadRequest;
            return Response::json(405, error_body(12, "method not allowed"))
                .with_header("Allow", "GET")
                .into();
        }
        let q = Params::of_query(req);
        let (page_sizes, filters, tokens) = (
            q.all("page_size"),
            q.all("filter"),
            q.all(&self.token_param),
        );
        rec.page_size = page_sizes.first().and_then(|p| p.parse().ok());
        rec.had_filter = !filters.is_empty();
        rec.used_token = tokens.first().is_some_and(|t| !t.is_empty());

        // The scheme is case-insensitive here, as RFC 9110 allows.
        let authorized = req
            .header("authorization")
            .and_then(|v| v.split_once(' '))
            .is_some_and(|(scheme, token)| {
                scheme.eq_ignore_ascii_case("bearer") && token.trim() == st.api_token
            });
        if !authorized {
            rec.outcome = Outcome::Unauthorized;
            return Response::json(401, BODY_UNAUTHENTICATED).into();
        }
        for (name, values) in [
            ("page_size", &page_sizes),
            ("filter", &filters),
            (self.token_param.as_str(), &tokens),
        ] {
            if values.len() > 1 {
                rec.outcome = Outcome::BadRequest;
                let msg = format!("parameter {name} given more than once");
                return Response::json(400, error_body(3, &msg)).into();
            }
        }
        let page_size = match rec.page_size {
            Some(n) if (1..=10_000).contains(&n) => n as usize,
            _ => {
                rec.outcome = Outcome::BadRequest;
                return Response::json(400, BODY_BAD_PAGE_SIZE).into();
            }
        };
        let offset = if rec.used_token {
            if rec.had_filter {
                st.stats.filter_with_token += 1;
            }
            let token = tokens.first().copied().unwrap_or("");
            match st.tokens.read(token) {
                Some((offset, bound)) if bound.is_empty() && offset <= st.events.len() => offset,
                _ => {
                    rec.outcome = Outcome::BadToken;
                    return Response::json(400, BODY_BAD_TOKEN).into();
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
                    return Response::json(400, error_body(3, &msg)).into();
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
        let rng = &mut st.rng;
        let (rate_limit, server_error, slow, reset, truncated, duplicates, not_json) = (
            paged::draw(rng, f.rate_limit),
            paged::draw(rng, f.server_error),
            paged::draw(rng, f.slow),
            paged::draw(rng, f.reset),
            paged::draw(rng, f.truncated),
            paged::draw(rng, f.duplicates),
            paged::draw(rng, f.not_json),
        );
        // A rate-limit answer is never slow: the gateway answers at once, and
        // a cool-down announced in an answer the client timed out on (or
        // never read) could not be obeyed.
        let refuse = rec.during_cooldown && st.tuning.refuse_during_cooldown;
        let rate_limit = rate_limit || refuse;
        let slow = slow && !rate_limit;
        rec.slow = slow;
        let delay = slow.then_some(st.tuning.slow_delay);
        let answer = |response: Response| Answer {
            response,
            delay,
            cut: None,
        };

        if rate_limit {
            rec.outcome = Outcome::RateLimited;
            return answer(self.rate_limit(st));
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
            return answer(resp);
        }
        if not_json {
            rec.outcome = Outcome::NotJson;
            return answer(Response::new(200, "text/html", BODY_NOT_JSON));
        }

        let (body, served, next, repeated) =
            self.page(st, offset, page_size.min(self.max_page_size), duplicates);
        if truncated {
            rec.outcome = Outcome::Truncated;
            let cut = body.len() / 2;
            return answer(Response::json(200, body.as_bytes()[..cut].to_vec()));
        }
        if reset {
            rec.outcome = Outcome::Reset;
            return Answer {
                cut: Some(if self.reset_with_rst {
                    Cut::Reset
                } else {
                    Cut::Close
                }),
                ..answer(Response::json(200, body))
            };
        }
        rec.next_offset = Some(next);
        rec.values = served;
        rec.duplicates = repeated;
        rec.outcome = if served == 0 {
            Outcome::Empty
        } else {
            Outcome::Ok
        };
        answer(Response::json(200, body))
    }

    /// A rate-limit answer; records the cool-down it announces.
    fn rate_limit(&self, st: &mut VezaState) -> Response {
        let kinds = &st.tuning.rate_limit_kinds;
        let kind = if kinds.is_empty() {
            RateLimitKind::RetryAfterSeconds
        } else {
            kinds[st.rng.random_range(0..kinds.len())]
        };
        let (resp, until) = kind.answer(
            st.tuning.retry_after_secs,
            st.tuning.default_wait,
            BODY_RATE_LIMITED,
            BODY_RATE_LIMITED_GRPC,
        );
        st.cooldown.announce(until);
        resp
    }

    /// The page at `offset`: (body, events served, next offset, repeats?).
    fn page(
        &self,
        st: &mut VezaState,
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
                body.push_str(&st.tokens.issue(next, ""));
                body.push_str("\"}");
            }
        }
        (body, end - start, next, repeated)
    }
}
