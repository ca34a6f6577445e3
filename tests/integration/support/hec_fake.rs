//! A fake Splunk HTTP Event Collector, faithful to the documented protocol
//! where the tests look:
//!
//! - `POST /services/collector/event` (also `/services/collector` and
//!   `/event/1.0`): `Authorization: Splunk <token>` (missing → 401 code 2,
//!   another scheme → 401 code 3, unknown token → 403 code 4, disabled token
//!   → 403 code 1, `?token=` → 400 code 16); a body of concatenated JSON
//!   objects, optionally gzip; per object `event` required (code 12), not
//!   blank (13), `time` a number (6), `index` allowed (7), `fields` a flat
//!   object of strings or string arrays (15). An unparseable object answers
//!   code 6. Every rejection carries `invalid-event-number` (0-based), and the
//!   objects before it are indexed, as Splunk does. Empty body → code 5.
//!   Bodies over `max_content_length` → 413.
//! - Channels and indexer acknowledgment: with `ack` on, a channel GUID is
//!   required (header `X-Splunk-Request-Channel` or `?channel=`; missing →
//!   code 10, not a GUID → 11); each accepted request gets the channel's
//!   next `ackId`. `POST /services/collector/ack` with `{"acks":[...]}`
//!   answers `{"acks":{"id":bool}}`: an ack reads true once its delay has
//!   passed, exactly once, then it is unknown (false). With `ack` off the
//!   ack endpoint answers code 14. A fraction `lose` of acknowledged
//!   requests is lost like an indexer that crashed: their events are never
//!   indexed and their ack never reads true.
//! - `GET /services/collector/health`: code 17, or 503 code 18 when set
//!   unhealthy.
//! - Faults: busy (503 code 9), rate limited by a load balancer (429 with
//!   Retry-After), events treated as unparseable by id (code 6), acks that
//!   read true only after `ack_min_delay` (later than a client's timeout),
//!   ack queries answered only after `ack_query_delay`,
//!   redirects of every collector path (see `redirect`: 301/302/303 to a
//!   login page answering 200 HTML, 307/308 to `/moved/...`, served as usual).
//! - [`HecFake::restart`]: the indexer restarts; every channel forgets its
//!   acks and issues ack ids from 0 again, as Splunk does.
//! - `sticky_indexers`: the collector behind a load balancer in front of
//!   many indexers, pinning a session with the cookie [`STICKY_COOKIE`]
//!   (set on every answer). A request without it (or with an unknown value)
//!   goes to an indexer of its own; ack ids live on the indexer that issued
//!   them, so a client that does not send the cookie back never sees its
//!   acks read true.
//!
//! - `gateway`: the collector behind an OAuth2 gateway (API gateway, proxy)
//!   that lets a request (any path, health included) through only with
//!   `Authorization: Bearer <access token>` issued by the token-endpoint
//!   fake and not yet expired or revoked; else 401 with
//!   `WWW-Authenticate: Bearer error="invalid_token"` and the gateway's own
//!   JSON (no HEC code). The gateway hands HEC the token from the header
//!   `hec_token_header` names (as `Authorization`), or, when none, adds
//!   the right HEC token itself.
//!
//! The "index" records every event with its envelope, so tests can check
//! that each id arrived and what arrived with it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use flate2::read::MultiGzDecoder;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::http1::{self, Conn, ReadError, Request, Response, Server};
use super::redirect::{self, Redirect};

/// The load balancer's stickiness cookie (`sticky_indexers`).
pub const STICKY_COOKIE: &str = "splunkd_8088";

#[derive(Clone, Debug, Default)]
pub struct HecFaults {
    /// Probability of 503 `{"text":"Server is busy","code":9}`.
    pub busy: f64,
    /// Probability of a load balancer's 429 with `Retry-After`.
    pub rate_limit: f64,
    /// Seconds in `Retry-After` with a 429.
    pub retry_after_secs: u64,
    /// Each ack reads true only after a delay drawn from `0..=ack_delay`.
    pub ack_delay: Duration,
    /// Added to every ack's delay: acks that come late.
    pub ack_min_delay: Duration,
    /// Answer every collector path (but `/moved/...`) with this redirect.
    pub redirect: Option<Redirect>,
    /// Probability that an acknowledged request is lost: its events are
    /// discarded and its ack never reads true.
    pub lose: f64,
    /// While set, no ack reads true (indexing stalled); they do once cleared.
    pub hold_acks: bool,
    /// Events whose id is listed are unparseable for this indexer (code 6).
    pub reject_ids: HashSet<String>,
    /// Health answers 503 code 18 (queues full).
    pub unhealthy: bool,
    /// Event-endpoint answers leave this long after the request was
    /// handled (indexed, ack id issued): a slow path back to the client,
    /// during which ack queries on other connections are answered.
    pub event_answer_delay: Duration,
    /// Ack queries are answered (and their acks read) only this long after
    /// they arrived: an indexer slow to answer, while event requests on
    /// other connections go on.
    pub ack_query_delay: Duration,
    /// An ack query about a channel this indexer does not know (no event
    /// request came on it since the indexer started, as after a
    /// [`HecFake::restart`]) is answered 400 code 11 "Invalid data
    /// channel", as Splunk answers for an unknown or expired channel.
    pub unknown_channel_error: bool,
}

/// An OAuth2 gateway in front of the collector (see the module doc).
#[derive(Clone, Debug)]
pub struct Gateway {
    pub access_tokens: super::token_endpoint::Issued,
    /// Header whose value (`Splunk <token>`) the gateway passes to HEC as
    /// `Authorization`; `None`: the gateway adds the HEC token itself.
    pub hec_token_header: Option<String>,
}

#[derive(Clone, Debug)]
pub struct HecFakeConfig {
    pub token: String,
    pub token_disabled: bool,
    /// Indexer acknowledgment on the token (`useACK`).
    pub ack: bool,
    /// Indexes the token may write to; `None` = any.
    pub allowed_indexes: Option<Vec<String>>,
    /// Largest request body (as sent) accepted.
    pub max_content_length: usize,
    /// Field of the event holding its id.
    pub id_field: String,
    pub seed: u64,
    pub faults: HecFaults,
    /// Behind a load balancer pinning sessions by cookie (see above).
    pub sticky_indexers: bool,
    /// Behind an OAuth2 gateway (see above).
    pub gateway: Option<Gateway>,
}

impl Default for HecFakeConfig {
    fn default() -> Self {
        HecFakeConfig {
            token: "00000000-0000-0000-0000-000000000000".into(),
            token_disabled: false,
            ack: false,
            allowed_indexes: None,
            max_content_length: 1_000_000,
            id_field: "request_id".into(),
            seed: 1,
            faults: HecFaults::default(),
            sticky_indexers: false,
            gateway: None,
        }
    }
}

/// One indexed event: its envelope (without `event`) and the event's raw text.
#[derive(Clone, Debug)]
pub struct Indexed {
    pub id: Option<String>,
    pub envelope: Value,
    pub event_raw: String,
    pub channel: Option<String>,
}

#[derive(Clone, Debug, Default)]
pub struct HecStats {
    /// Event-endpoint requests (the health and ack endpoints not included).
    pub requests: u64,
    /// Event-endpoint answers by HEC code (HTTP status for non-HEC answers).
    pub by_code: BTreeMap<i64, u64>,
    pub gzip_requests: u64,
    pub accepted_requests: u64,
    pub events_indexed: u64,
    pub unique_ids: usize,
    pub duplicate_events: u64,
    /// Acknowledged requests that were lost (events discarded, never acked).
    pub lost_requests: u64,
    pub lost_events: u64,
    pub ack_queries: u64,
    /// Ack queries that arrived (counted before `ack_query_delay`).
    pub ack_queries_received: u64,
    /// Most ack ids asked about in one ack query.
    pub largest_ack_query: usize,
    /// Ack ids answered true.
    pub acks_true: u64,
    /// Ack ids asked about that were unknown (never issued or already true).
    pub acks_unknown: u64,
    pub busy: u64,
    pub rate_limited: u64,
    /// Requests that arrived before the Retry-After the fake last announced.
    pub early_retries: u64,
    pub auth_failures: u64,
    pub channel_errors: u64,
    pub rejected_events: u64,
    pub too_large: u64,
    pub health_checks: u64,
    /// Empty-body requests (probes), answered code 5.
    pub no_data: u64,
    /// Redirects answered (`redirect`).
    pub redirects: u64,
    /// Requests for the login page (nothing indexed).
    pub login_page_hits: u64,
    /// Requests under `/moved/` (served as usual).
    pub moved_requests: u64,
    /// With `sticky_indexers`: requests that came without a known cookie
    /// (each went to an indexer of its own).
    pub unpinned_requests: u64,
    /// Requests the OAuth2 gateway let through, by endpoint (`event`,
    /// `ack`, `health`).
    pub gateway_passed: BTreeMap<&'static str, u64>,
    /// Requests the gateway refused (401) for a missing, unknown, expired
    /// or revoked access token, by endpoint.
    pub gateway_refused: BTreeMap<&'static str, u64>,
    /// Ack queries by the channel they asked about.
    pub ack_query_channels: BTreeMap<String, u64>,
    /// Ack queries answered code 11 for an unknown channel.
    pub unknown_channel_queries: u64,
}

struct PendingAck {
    ready_at: Instant,
    lost: bool,
}

#[derive(Default)]
struct Channel {
    next_ack: u64,
    pending: HashMap<u64, PendingAck>,
}

struct State {
    cfg: HecFakeConfig,
    rng: StdRng,
    /// By (indexer, channel): ack ids are only known where they were issued.
    channels: HashMap<(u64, String), Channel>,
    /// Indexers a request was sent to so far (`sticky_indexers`).
    indexers: u64,
    index: Vec<Indexed>,
    counts: HashMap<String, u64>,
    order: Vec<String>,
    last_headers: Vec<(String, String)>,
    not_before: Option<Instant>,
    stats: HecStats,
}

struct Shared {
    state: Mutex<State>,
    /// Bumped after every request, whatever the endpoint.
    progress: watch::Sender<u64>,
}

/// The running fake. Dropping it stops the server.
pub struct HecFake {
    shared: Arc<Shared>,
    port: u16,
    server: Mutex<Option<Server>>,
}

impl HecFake {
    pub async fn start(cfg: HecFakeConfig) -> io::Result<HecFake> {
        let listener = http1::bind_loopback(0)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                rng: StdRng::seed_from_u64(cfg.seed),
                cfg,
                channels: HashMap::new(),
                indexers: 0,
                index: Vec::new(),
                counts: HashMap::new(),
                order: Vec::new(),
                last_headers: Vec::new(),
                not_before: None,
                stats: HecStats::default(),
            }),
            progress: watch::Sender::new(0),
        });
        let s = shared.clone();
        let server = Server::spawn(listener, move |stream| serve(s.clone(), stream))?;
        Ok(HecFake {
            shared,
            port,
            server: Mutex::new(Some(server)),
        })
    }

    /// `http://127.0.0.1:PORT`, the collector's base URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn addr(&self) -> std::net::SocketAddr {
        std::net::SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub async fn stop(&self) {
        let server = self.server.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(mut s) = server {
            s.stop().await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.lock()
    }

    pub fn set_faults(&self, faults: HecFaults) {
        self.lock().cfg.faults = faults;
    }

    pub fn set_reject_ids<I: IntoIterator<Item = S>, S: Into<String>>(&self, ids: I) {
        self.lock().cfg.faults.reject_ids = ids.into_iter().map(Into::into).collect();
    }

    pub fn set_hold_acks(&self, hold: bool) {
        self.lock().cfg.faults.hold_acks = hold;
    }

    pub fn set_unhealthy(&self, unhealthy: bool) {
        self.lock().cfg.faults.unhealthy = unhealthy;
    }

    pub fn set_redirect(&self, redirect: Option<Redirect>) {
        self.lock().cfg.faults.redirect = redirect;
    }

    /// Indexers that served a request (1 when every request was pinned).
    pub fn indexers_used(&self) -> u64 {
        self.lock().indexers
    }

    pub fn set_ack(&self, ack: bool) {
        self.lock().cfg.ack = ack;
    }

    pub fn set_token(&self, token: &str) {
        self.lock().cfg.token = token.into();
    }

    pub fn set_token_disabled(&self, disabled: bool) {
        self.lock().cfg.token_disabled = disabled;
    }

    pub fn stats(&self) -> HecStats {
        self.lock().stats.clone()
    }

    pub fn indexed(&self) -> Vec<Indexed> {
        self.lock().index.clone()
    }

    /// How many times each id was indexed.
    pub fn counts(&self) -> HashMap<String, u64> {
        self.lock().counts.clone()
    }

    pub fn unique_ids(&self) -> Vec<String> {
        self.lock().order.clone()
    }

    pub fn unique_count(&self) -> usize {
        self.lock().order.len()
    }

    /// Headers (lower-cased names) of the last event-endpoint request.
    pub fn last_header(&self, name: &str) -> Option<String> {
        self.lock()
            .last_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    /// The indexer restarts: channels and their pending acks are gone, so
    /// ack ids start again at 0 (events of lost requests stay lost).
    pub fn restart(&self) {
        self.lock().channels.clear();
    }

    /// Acks issued and not yet read true (lost ones included).
    pub fn pending_acks(&self) -> usize {
        self.lock().channels.values().map(|c| c.pending.len()).sum()
    }

    /// Waits until `done` holds for the counters (checked after every
    /// request the fake answers); false on timeout.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&HecStats) -> bool) -> bool {
        let mut rx = self.shared.progress.subscribe();
        let shared = self.shared.clone();
        let waited =
            tokio::time::timeout(timeout, rx.wait_for(|_| done(&shared.lock().stats))).await;
        matches!(waited, Ok(Ok(_)))
    }

    /// Waits until `n` distinct ids are indexed.
    pub async fn wait_for_unique(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.unique_ids >= n).await
    }

    /// Waits until `n` event-endpoint requests were answered.
    pub async fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| s.requests >= n).await
    }
}

async fn serve(shared: Arc<Shared>, stream: TcpStream) {
    let mut conn = Conn::new(stream);
    for _ in 0..http1::MAX_REQUESTS_PER_CONNECTION {
        let req = match conn.read_request(64 * 1024 * 1024).await {
            Ok(r) => r,
            Err(ReadError::Bad(status, why)) => {
                conn.reject(&reply(status, json!({ "text": why, "code": 6 })))
                    .await;
                return;
            }
            Err(_) => return,
        };
        if req.path().contains("/collector/ack") {
            let delay = {
                let mut st = shared.lock();
                st.stats.ack_queries_received += 1;
                st.cfg.faults.ack_query_delay
            };
            shared.progress.send_modify(|n| *n += 1);
            if !delay.is_zero() {
                tokio::time::sleep(delay).await;
            }
        }
        let resp = shared.handle(&req);
        let delay = shared.lock().cfg.faults.event_answer_delay;
        if !delay.is_zero() && req.path().contains("/collector/event") {
            tokio::time::sleep(delay).await;
        }
        shared.progress.send_modify(|n| *n += 1);
        let close = !req.keep_alive;
        if resp.write(&mut conn.stream, close).await.is_err() || close {
            return;
        }
    }
}

fn reply(status: u16, body: Value) -> Response {
    Response::json(status, body.to_string())
}

fn hec(status: u16, code: i64, text: &str) -> Response {
    reply(status, json!({ "text": text, "code": code }))
}

/// 8-4-4-4-12 hex digits, as Splunk requires of a channel.
fn is_guid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.len() == 5
        && parts
            .iter()
            .zip([8, 4, 4, 4, 12])
            .all(|(p, n)| p.len() == n && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

fn query_param<'a>(req: &'a Request, name: &str) -> Option<&'a str> {
    req.query()
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// Why one envelope is unacceptable: (code, text).
type Invalid = (i64, &'static str);

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The indexer serving `req`, and whether the answer must pin it.
    fn route(&self, req: &Request) -> (u64, bool) {
        let mut st = self.lock();
        if !st.cfg.sticky_indexers {
            return (0, false);
        }
        let known = st.indexers;
        let pinned = req
            .header_all("cookie")
            .flat_map(|h| h.split(';'))
            .filter_map(|kv| kv.trim().split_once('='))
            .find(|(k, _)| *k == STICKY_COOKIE)
            .and_then(|(_, v)| v.parse::<u64>().ok())
            .filter(|n| *n < known);
        match pinned {
            Some(n) => (n, false),
            None => {
                st.stats.unpinned_requests += 1;
                st.indexers += 1;
                (known, true)
            }
        }
    }

    fn handle(&self, req: &Request) -> Response {
        let (indexer, pin) = self.route(req);
        let resp = self.handle_on(req, indexer);
        if pin {
            resp.with_header(
                "Set-Cookie",
                format!("{STICKY_COOKIE}={indexer}; Path=/; HttpOnly"),
            )
        } else {
            resp
        }
    }

    fn handle_on(&self, req: &Request, indexer: u64) -> Response {
        if redirect::is_login_page(req) {
            self.lock().stats.login_page_hits += 1;
            return redirect::login_page();
        }
        let (path, moved) = redirect::strip_moved(req.path());
        let path = path.trim_end_matches('/');
        if moved {
            self.lock().stats.moved_requests += 1;
        } else if path.starts_with("/services/collector") {
            let mut st = self.lock();
            if let Some(to) = st.cfg.faults.redirect.clone() {
                st.stats.redirects += 1;
                return to.answer(req);
            }
        }
        if let Some(refused) = self.gateway(req, path) {
            return refused;
        }
        match path {
            "/services/collector/health" | "/services/collector/health/1.0" => {
                let mut st = self.lock();
                st.stats.health_checks += 1;
                if st.cfg.faults.unhealthy {
                    hec(503, 18, "HEC is unhealthy, queues are full")
                } else {
                    hec(200, 17, "HEC is healthy")
                }
            }
            "/services/collector/ack" => self.ack(req, indexer),
            "/services/collector"
            | "/services/collector/event"
            | "/services/collector/event/1.0" => {
                let resp = self.event(req, indexer);
                let mut st = self.lock();
                st.stats.requests += 1;
                st.last_headers = req.headers.clone();
                let code = serde_json::from_slice::<Value>(&resp.body)
                    .ok()
                    .and_then(|v| v["code"].as_i64())
                    .unwrap_or(resp.status as i64);
                *st.stats.by_code.entry(code).or_default() += 1;
                resp
            }
            _ => hec(404, 404, "The requested URL was not found on this server."),
        }
    }

    /// The OAuth2 gateway's check: `Some(401)` unless the request carries
    /// an access token the token endpoint issued and that is still valid.
    fn gateway(&self, req: &Request, path: &str) -> Option<Response> {
        let mut st = self.lock();
        let gateway = st.cfg.gateway.as_ref()?;
        let endpoint = if path.starts_with("/services/collector/health") {
            "health"
        } else if path.starts_with("/services/collector/ack") {
            "ack"
        } else {
            "event"
        };
        let valid = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Bearer "))
            .is_some_and(|t| gateway.access_tokens.accepts(t));
        let counts = if valid {
            &mut st.stats.gateway_passed
        } else {
            &mut st.stats.gateway_refused
        };
        *counts.entry(endpoint).or_default() += 1;
        (!valid).then(|| {
            reply(
                401,
                json!({"error": "invalid_token",
                       "error_description": "The access token is missing, invalid or expired"}),
            )
            .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\"")
        })
    }

    /// Token and channel checks shared by the event and ack endpoints.
    fn authorize(&self, st: &mut State, req: &Request) -> Result<Option<String>, Response> {
        if query_param(req, "token").is_some() {
            st.stats.auth_failures += 1;
            return Err(hec(400, 16, "Query string authorization is not enabled"));
        }
        // Behind the gateway HEC sees what the gateway hands it.
        let auth = match &st.cfg.gateway {
            None => req.header("authorization").map(str::to_string),
            Some(Gateway {
                hec_token_header: Some(h),
                ..
            }) => req.header(h).map(str::to_string),
            Some(Gateway {
                hec_token_header: None,
                ..
            }) => Some(format!("Splunk {}", st.cfg.token)),
        };
        let Some(auth) = auth else {
            st.stats.auth_failures += 1;
            return Err(hec(401, 2, "Token is required"));
        };
        let Some(token) = auth.strip_prefix("Splunk ") else {
            st.stats.auth_failures += 1;
            return Err(hec(401, 3, "Invalid authorization"));
        };
        if token.trim() != st.cfg.token {
            st.stats.auth_failures += 1;
            return Err(hec(403, 4, "Invalid token"));
        }
        if st.cfg.token_disabled {
            st.stats.auth_failures += 1;
            return Err(hec(403, 1, "Token disabled"));
        }
        let channel = req
            .header("x-splunk-request-channel")
            .or_else(|| query_param(req, "channel"))
            .map(str::to_string);
        match &channel {
            Some(c) if !is_guid(c) => {
                st.stats.channel_errors += 1;
                return Err(hec(400, 11, "Invalid data channel"));
            }
            None if st.cfg.ack => {
                st.stats.channel_errors += 1;
                return Err(hec(400, 10, "Data channel is missing"));
            }
            _ => {}
        }
        Ok(channel)
    }

    fn event(&self, req: &Request, indexer: u64) -> Response {
        if req.method != "POST" {
            return hec(405, 405, "Method not allowed");
        }
        let gzip = req
            .header("content-encoding")
            .is_some_and(|v| v.eq_ignore_ascii_case("gzip"));
        // Decoding needs no state: do it before locking.
        let body = if gzip {
            let mut out = Vec::new();
            MultiGzDecoder::new(&req.body[..])
                .take(256 * 1024 * 1024)
                .read_to_end(&mut out)
                .map(|_| out)
        } else {
            Ok(req.body.clone())
        };
        let mut st = self.lock();
        if gzip {
            st.stats.gzip_requests += 1;
        }
        let channel = match self.authorize(&mut st, req) {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        if let Some(ch) = &channel {
            // Any request on a channel makes it known to this indexer.
            st.channels.entry((indexer, ch.clone())).or_default();
        }
        if let Some(not_before) = st.not_before {
            if Instant::now() < not_before {
                st.stats.early_retries += 1;
            }
        }
        if req.body.len() > st.cfg.max_content_length {
            st.stats.too_large += 1;
            let msg = format!(
                "Content-Length of {} too large (maximum is {})",
                req.body.len(),
                st.cfg.max_content_length
            );
            return Response::new(413, "text/plain", msg);
        }
        let Ok(body) = body else {
            return hec(400, 6, "Invalid data format");
        };
        let (p_busy, p_rate) = (st.cfg.faults.busy, st.cfg.faults.rate_limit);
        if p_busy > 0.0 && st.rng.random::<f64>() < p_busy {
            st.stats.busy += 1;
            return hec(503, 9, "Server is busy");
        }
        if p_rate > 0.0 && st.rng.random::<f64>() < p_rate {
            st.stats.rate_limited += 1;
            let secs = st.cfg.faults.retry_after_secs;
            st.not_before = Some(Instant::now() + Duration::from_secs(secs));
            return Response::new(429, "text/html", "<html>Too Many Requests</html>")
                .with_header("Retry-After", secs.to_string());
        }
        if body.trim_ascii().is_empty() {
            st.stats.no_data += 1;
            return hec(400, 5, "No data");
        }
        // Parse object by object; stop at the first bad one.
        let mut good: Vec<Indexed> = Vec::new();
        let mut invalid: Option<Invalid> = None;
        let stream = serde_json::Deserializer::from_slice(&body).into_iter::<Box<RawValue>>();
        for item in stream {
            let checked = match item {
                Ok(raw) => check_envelope(&st.cfg, &raw),
                Err(_) => Err((6, "Invalid data format")),
            };
            match checked {
                Ok(mut ev) => {
                    ev.channel = channel.clone();
                    good.push(ev);
                }
                Err(e) => {
                    invalid = Some(e);
                    break;
                }
            }
        }
        if let Some((code, text)) = invalid {
            st.stats.rejected_events += 1;
            let n = good.len();
            // Splunk indexes what it parsed before the bad event.
            for ev in good {
                st.index_event(ev);
            }
            return reply(
                400,
                json!({ "text": text, "code": code, "invalid-event-number": n }),
            );
        }
        st.stats.accepted_requests += 1;
        if st.cfg.ack {
            let channel = channel.unwrap_or_default();
            let lose = st.cfg.faults.lose;
            let lost = lose > 0.0 && st.rng.random::<f64>() < lose;
            let max_delay = st.cfg.faults.ack_delay.as_millis() as u64;
            let delay = if max_delay > 0 {
                st.rng.random_range(0..=max_delay)
            } else {
                0
            } + st.cfg.faults.ack_min_delay.as_millis() as u64;
            let ch = st.channels.entry((indexer, channel)).or_default();
            let ack_id = ch.next_ack;
            ch.next_ack += 1;
            ch.pending.insert(
                ack_id,
                PendingAck {
                    ready_at: Instant::now() + Duration::from_millis(delay),
                    lost,
                },
            );
            if lost {
                st.stats.lost_requests += 1;
                st.stats.lost_events += good.len() as u64;
            } else {
                for ev in good {
                    st.index_event(ev);
                }
            }
            reply(
                200,
                json!({ "text": "Success", "code": 0, "ackId": ack_id }),
            )
        } else {
            for ev in good {
                st.index_event(ev);
            }
            hec(200, 0, "Success")
        }
    }

    fn ack(&self, req: &Request, indexer: u64) -> Response {
        let mut st = self.lock();
        st.stats.ack_queries += 1;
        if req.method != "POST" {
            return hec(405, 405, "Method not allowed");
        }
        let channel = match self.authorize(&mut st, req) {
            Ok(c) => c,
            Err(resp) => return resp,
        };
        if !st.cfg.ack {
            return hec(400, 14, "ACK is disabled");
        }
        let Some(ids) = serde_json::from_slice::<Value>(&req.body)
            .ok()
            .and_then(|v| v.get("acks").cloned())
            .and_then(|a| serde_json::from_value::<Vec<u64>>(a).ok())
        else {
            return hec(400, 6, "Invalid data format");
        };
        st.stats.largest_ack_query = st.stats.largest_ack_query.max(ids.len());
        let now = Instant::now();
        let channel = channel.unwrap_or_default();
        *st.stats
            .ack_query_channels
            .entry(channel.clone())
            .or_default() += 1;
        if st.cfg.faults.unknown_channel_error
            && !st.channels.contains_key(&(indexer, channel.clone()))
        {
            st.stats.unknown_channel_queries += 1;
            return hec(400, 11, "Invalid data channel");
        }
        let hold = st.cfg.faults.hold_acks;
        let mut answers = serde_json::Map::new();
        let (mut yes, mut unknown) = (0, 0);
        let ch = st.channels.entry((indexer, channel)).or_default();
        for id in ids {
            let state = match ch.pending.get(&id) {
                None => {
                    unknown += 1;
                    false
                }
                Some(p) if !p.lost && !hold && now >= p.ready_at => {
                    ch.pending.remove(&id);
                    yes += 1;
                    true
                }
                Some(_) => false,
            };
            answers.insert(id.to_string(), Value::Bool(state));
        }
        st.stats.acks_true += yes;
        st.stats.acks_unknown += unknown;
        reply(200, json!({ "acks": answers }))
    }
}

impl State {
    fn index_event(&mut self, ev: Indexed) {
        self.stats.events_indexed += 1;
        if let Some(id) = &ev.id {
            let n = self.counts.entry(id.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                self.order.push(id.clone());
            } else {
                self.stats.duplicate_events += 1;
            }
        }
        self.stats.unique_ids = self.order.len();
        self.index.push(ev);
    }
}

/// Checks one envelope as HEC does; the event's id for the index.
fn check_envelope(cfg: &HecFakeConfig, raw: &RawValue) -> Result<Indexed, Invalid> {
    let Ok(fields) = serde_json::from_str::<serde_json::Map<String, Value>>(raw.get()) else {
        return Err((6, "Invalid data format"));
    };
    let Some(event) = fields.get("event") else {
        return Err((12, "Event field is required"));
    };
    if event.as_str().is_some_and(|s| s.trim().is_empty()) || event.is_null() {
        return Err((13, "Event field cannot be blank"));
    }
    if let Some(t) = fields.get("time") {
        let numeric = t.is_number() || t.as_str().is_some_and(|s| s.parse::<f64>().is_ok());
        if !numeric {
            return Err((6, "Invalid data format"));
        }
    }
    if let (Some(allowed), Some(index)) = (&cfg.allowed_indexes, fields.get("index")) {
        if !index
            .as_str()
            .is_some_and(|i| allowed.iter().any(|a| a == i))
        {
            return Err((7, "Incorrect index"));
        }
    }
    if let Some(f) = fields.get("fields") {
        let flat = f.as_object().is_some_and(|o| {
            o.values().all(|v| {
                v.is_string() || v.as_array().is_some_and(|a| a.iter().all(Value::is_string))
            })
        });
        if !flat {
            return Err((15, "Error in handling indexed fields"));
        }
    }
    let id = cfg
        .id_field
        .split('.')
        .try_fold(event, |v, k| v.get(k))
        .and_then(|v| match v {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        });
    if id
        .as_ref()
        .is_some_and(|id| cfg.faults.reject_ids.contains(id))
    {
        return Err((6, "Invalid data format"));
    }
    // The event's text exactly as sent, for byte-for-byte checks.
    let event_raw = serde_json::from_str::<HashMap<String, &RawValue>>(raw.get())
        .ok()
        .and_then(|m| m.get("event").map(|r| r.get().to_string()))
        .unwrap_or_default();
    let mut envelope = fields;
    envelope.remove("event");
    Ok(Indexed {
        id,
        envelope: Value::Object(envelope),
        event_raw,
        channel: None,
    })
}
