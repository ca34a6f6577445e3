//! A webhook receiver for sink tests: accepts `POST /<any path>` with a JSON
//! array of events, NDJSON or a single JSON object (optionally gzip-encoded),
//! optionally checks `Authorization` and an HMAC-SHA256 signature of the raw
//! body, and records every event id with how often it arrived. Faults
//! (server errors, rate limits, too-large answers, rejected ids, an outage
//! switch, stopping and restarting the listener on the same port) are drawn
//! from a seeded RNG and changeable at runtime. A request answered with an
//! error status records none of its events. A `redirect` sends every path
//! elsewhere (see `redirect`): to a login page answering 200 HTML, or to
//! `/moved/<path>`, which records as usual.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io::{self, Read};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use flate2::read::MultiGzDecoder;
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::value::RawValue;
use serde_json::{json, Value};
use sha2::Sha256;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::http1::{self, Conn, ReadError, Request, Response, Server};
use super::redirect::{self, Redirect};

pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Auditrelay-Signature";

/// Faults; the probabilities are drawn per request that passed the checks.
#[derive(Clone, Debug, Default)]
pub struct WebhookFaults {
    /// Probability of a 500 or 503.
    pub server_error: f64,
    /// Probability of a 429 with `Retry-After: <retry_after_secs>`.
    pub rate_limit: f64,
    /// Answer 413 to a request holding more than this many events.
    pub too_large_over: Option<usize>,
    /// Answer 400 to a request holding any of these ids.
    pub reject_ids: HashSet<String>,
    /// Answer 503 to everything.
    pub down: bool,
    /// Hold every answer this long after recording it: widens the window in
    /// which the events have arrived but the sender has no confirmation yet.
    pub answer_delay: Option<Duration>,
    /// Answer every request (but those for the login page and `/moved/…`)
    /// with this redirect.
    pub redirect: Option<Redirect>,
    /// Answer every request 403 naming the bearer token it came with, as
    /// APIs refusing a token for its scope sometimes do.
    pub forbid_echoing_token: bool,
}

#[derive(Clone, Debug)]
pub struct WebhookConfig {
    pub seed: u64,
    /// Field holding an event's id (a dotted path such as `event.id` works
    /// too); `id` is tried when it is missing.
    pub id_field: String,
    /// Exact `Authorization` value required, e.g. `Bearer s3cret` or `Basic ...`.
    pub expect_authorization: Option<String>,
    /// When set, `Authorization: Bearer <token>` with an unexpired access
    /// token of this token endpoint fake (401 `invalid_token` otherwise).
    pub access_tokens: Option<super::token_endpoint::Issued>,
    /// When set, requests must carry `<hmac_header>: sha256=<lowercase hex of
    /// HMAC-SHA256(secret, body as sent, i.e. before gzip decoding)>`.
    pub hmac_secret: Option<Vec<u8>>,
    pub hmac_header: String,
    /// Seconds sent in `Retry-After` with a 429.
    pub retry_after_secs: u64,
    /// Largest body accepted, on the wire and after gzip decoding.
    pub max_body_bytes: usize,
    pub faults: WebhookFaults,
}

impl Default for WebhookConfig {
    fn default() -> Self {
        WebhookConfig {
            seed: 1,
            id_field: "request_id".into(),
            expect_authorization: None,
            access_tokens: None,
            hmac_secret: None,
            hmac_header: DEFAULT_SIGNATURE_HEADER.into(),
            retry_after_secs: 1,
            max_body_bytes: 64 * 1024 * 1024,
            faults: WebhookFaults::default(),
        }
    }
}

/// A snapshot of the receiver's counters.
#[derive(Clone, Debug, Default)]
pub struct ReceiverStats {
    pub requests: u64,
    /// Requests by the status they were answered with.
    pub by_status: BTreeMap<u16, u64>,
    /// Requests whose events were recorded (answered 200).
    pub accepted_requests: u64,
    /// Events recorded, repeats included.
    pub events_recorded: u64,
    pub unique_ids: usize,
    /// Recorded events whose id had been recorded before.
    pub duplicate_events: u64,
    /// Recorded events with no id field.
    pub events_without_id: u64,
    /// 401 for a missing or wrong Authorization.
    pub auth_failures: u64,
    /// 401 for a missing or wrong signature.
    pub hmac_failures: u64,
    /// 400/413/415/431 for a body or request that could not be read.
    pub bad_requests: u64,
    /// 413 from `too_large_over`.
    pub too_large: u64,
    /// 400 from `reject_ids`.
    pub rejected_ids: u64,
    /// 500/503 drawn by the server_error fault.
    pub server_errors: u64,
    /// 429 drawn by the rate_limit fault.
    pub rate_limited: u64,
    /// Requests read and not yet answered, now; and the most there were
    /// at once (how many a sender had on the wire together).
    pub answering: u64,
    pub most_at_once: u64,
    /// 503 while `down`.
    pub down: u64,
    /// Redirects answered (`redirect`).
    pub redirects: u64,
    /// Requests for the login page (answered 200 HTML, nothing recorded).
    pub login_page_hits: u64,
    /// Requests under `/moved/` (served as usual).
    pub moved_requests: u64,
}

struct State {
    faults: WebhookFaults,
    rng: StdRng,
    counts: HashMap<String, u64>,
    /// Ids in the order first recorded.
    order: Vec<String>,
    /// Raw JSON of every recorded event, in arrival order.
    events: Vec<String>,
    last_headers: Vec<(String, String)>,
    last_path: Option<String>,
    stats: ReceiverStats,
}

struct Shared {
    cfg: WebhookConfig,
    state: Mutex<State>,
    /// (unique ids, requests), bumped after every request.
    progress: watch::Sender<(usize, u64)>,
}

/// The running receiver. Dropping it stops the server.
pub struct WebhookReceiver {
    shared: Arc<Shared>,
    port: u16,
    server: Mutex<Option<Server>>,
}

impl WebhookReceiver {
    /// Starts listening on 127.0.0.1 (a free port).
    pub async fn start(cfg: WebhookConfig) -> io::Result<WebhookReceiver> {
        let listener = http1::bind_loopback(0)?;
        let port = listener.local_addr()?.port();
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                faults: cfg.faults.clone(),
                rng: StdRng::seed_from_u64(cfg.seed),
                counts: HashMap::new(),
                order: Vec::new(),
                events: Vec::new(),
                last_headers: Vec::new(),
                last_path: None,
                stats: ReceiverStats::default(),
            }),
            cfg,
            progress: watch::Sender::new((0, 0)),
        });
        let server = spawn_server(&shared, listener)?;
        Ok(WebhookReceiver {
            shared,
            port,
            server: Mutex::new(Some(server)),
        })
    }

    /// `http://127.0.0.1:PORT` (any path is accepted).
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// `http://127.0.0.1:PORT/<path>`
    pub fn url_for(&self, path: &str) -> String {
        format!("{}/{}", self.url(), path.trim_start_matches('/'))
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Stops listening and closes every connection (an outage: clients get
    /// connection refused), waiting until done. Records are kept.
    pub async fn stop(&self) {
        let server = self.lock_server().take();
        if let Some(mut server) = server {
            server.stop().await;
        }
    }

    /// Listens again on the same port after `stop` (no-op when listening).
    pub async fn restart(&self) -> io::Result<()> {
        let mut slot = self.lock_server();
        if slot.is_none() {
            let listener = http1::bind_loopback(self.port)?;
            *slot = Some(spawn_server(&self.shared, listener)?);
        }
        Ok(())
    }

    pub fn is_listening(&self) -> bool {
        self.lock_server().is_some()
    }

    pub fn set_faults(&self, faults: WebhookFaults) {
        self.shared.lock().faults = faults;
    }

    pub fn faults(&self) -> WebhookFaults {
        self.shared.lock().faults.clone()
    }

    /// The outage switch: while set every request gets 503.
    pub fn set_down(&self, down: bool) {
        self.shared.lock().faults.down = down;
    }

    /// Redirects every request (`None`: serves again).
    pub fn set_redirect(&self, redirect: Option<Redirect>) {
        self.shared.lock().faults.redirect = redirect;
    }

    pub fn set_reject_ids<I: IntoIterator<Item = S>, S: Into<String>>(&self, ids: I) {
        self.shared.lock().faults.reject_ids = ids.into_iter().map(Into::into).collect();
    }

    pub fn set_too_large_over(&self, limit: Option<usize>) {
        self.shared.lock().faults.too_large_over = limit;
    }

    pub fn stats(&self) -> ReceiverStats {
        self.shared.lock().stats.clone()
    }

    pub fn requests(&self) -> u64 {
        self.shared.lock().stats.requests
    }

    /// How many times each id was recorded.
    pub fn counts(&self) -> HashMap<String, u64> {
        self.shared.lock().counts.clone()
    }

    pub fn count_of(&self, id: &str) -> u64 {
        self.shared.lock().counts.get(id).copied().unwrap_or(0)
    }

    /// Distinct ids, in the order first recorded.
    pub fn unique_ids(&self) -> Vec<String> {
        self.shared.lock().order.clone()
    }

    pub fn unique_count(&self) -> usize {
        self.shared.lock().order.len()
    }

    /// Raw JSON text of every recorded event, in arrival order.
    pub fn raw_events(&self) -> Vec<String> {
        self.shared.lock().events.clone()
    }

    /// Every recorded event, parsed.
    pub fn events(&self) -> Vec<Value> {
        self.shared
            .lock()
            .events
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect()
    }

    /// Headers (names lower-cased) of the last request, whatever its answer.
    pub fn last_headers(&self) -> Vec<(String, String)> {
        self.shared.lock().last_headers.clone()
    }

    pub fn last_header(&self, name: &str) -> Option<String> {
        self.shared
            .lock()
            .last_headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.clone())
    }

    pub fn last_path(&self) -> Option<String> {
        self.shared.lock().last_path.clone()
    }

    /// Forgets every recorded event and id (counters stay).
    pub fn clear_records(&self) {
        let mut st = self.shared.lock();
        st.counts.clear();
        st.order.clear();
        st.events.clear();
        st.stats.unique_ids = 0;
        let requests = st.stats.requests;
        drop(st);
        self.shared.progress.send_replace((0, requests));
    }

    /// Waits until at least `n` distinct ids have been recorded.
    pub async fn wait_for_unique(&self, n: usize, timeout: Duration) -> bool {
        let mut rx = self.shared.progress.subscribe();
        let done = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|(unique, _)| *unique >= n)).await,
            Ok(Ok(_))
        );
        done
    }

    /// Waits until at least `n` requests have been answered.
    pub async fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.shared.progress.subscribe();
        let done = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|(_, requests)| *requests >= n)).await,
            Ok(Ok(_))
        );
        done
    }

    fn lock_server(&self) -> MutexGuard<'_, Option<Server>> {
        self.server
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

fn spawn_server(shared: &Arc<Shared>, listener: tokio::net::TcpListener) -> io::Result<Server> {
    let shared = shared.clone();
    Server::spawn(listener, move |stream| {
        serve_connection(shared.clone(), stream)
    })
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let mut conn = Conn::new(stream);
    for _ in 0..http1::MAX_REQUESTS_PER_CONNECTION {
        let req = match conn.read_request(shared.cfg.max_body_bytes).await {
            Ok(req) => req,
            Err(ReadError::Bad(status, why)) => {
                shared.record_unreadable(status);
                conn.reject(&error(status, &why)).await;
                return;
            }
            Err(ReadError::Closed | ReadError::Io(_)) => return,
        };
        {
            let mut state = shared.lock();
            state.stats.answering += 1;
            state.stats.most_at_once = state.stats.most_at_once.max(state.stats.answering);
        }
        let resp = shared.handle(&req);
        let delay = shared.lock().faults.answer_delay;
        if let Some(delay) = delay {
            tokio::time::sleep(delay).await;
        }
        let close = !req.keep_alive;
        let written = resp.write(&mut conn.stream, close).await;
        shared.lock().stats.answering -= 1;
        if written.is_err() || close {
            return;
        }
    }
}

fn error(status: u16, message: &str) -> Response {
    Response::json(status, json!({ "error": message }).to_string())
}

/// The body as sent, gzip-decoded when `Content-Encoding: gzip`.
fn decode_body(req: &Request, max: usize) -> Result<Vec<u8>, (u16, String)> {
    let encoding = req
        .header("content-encoding")
        .map(|v| v.trim().to_ascii_lowercase());
    match encoding.as_deref() {
        None | Some("") | Some("identity") => Ok(req.body.clone()),
        Some("gzip") | Some("x-gzip") => {
            let mut out = Vec::new();
            MultiGzDecoder::new(&req.body[..])
                .take(max as u64 + 1)
                .read_to_end(&mut out)
                .map_err(|e| (400, format!("gzip body does not decode: {e}")))?;
            if out.len() > max {
                return Err((413, "decoded body too large".into()));
            }
            Ok(out)
        }
        Some(other) => Err((415, format!("unsupported content-encoding {other:?}"))),
    }
}

/// Events of a JSON array, NDJSON, or a single JSON object.
fn parse_events(body: &[u8]) -> Result<Vec<Box<RawValue>>, String> {
    let body = body.trim_ascii();
    if body.is_empty() {
        return Err("empty body".into());
    }
    let events: Vec<Box<RawValue>> = if body.starts_with(b"[") {
        serde_json::from_slice(body).map_err(|e| format!("JSON array does not parse: {e}"))?
    } else if let Ok(one) = serde_json::from_slice::<Box<RawValue>>(body) {
        vec![one]
    } else {
        let mut out = Vec::new();
        for (n, line) in body.split(|b| *b == b'\n').enumerate() {
            let line = line.trim_ascii();
            if line.is_empty() {
                continue;
            }
            let event =
                serde_json::from_slice(line).map_err(|e| format!("NDJSON line {}: {e}", n + 1))?;
            out.push(event);
        }
        out
    };
    if let Some(i) = events.iter().position(|e| !e.get().starts_with('{')) {
        return Err(format!("event {i} is not a JSON object"));
    }
    Ok(events)
}

fn lookup<'a>(value: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(value, |v, key| v.get(key))
}

/// The id of an event: `id_field`, else `id`; strings and numbers.
fn event_id(raw: &RawValue, id_field: &str) -> Option<String> {
    let value: Value = serde_json::from_str(raw.get()).ok()?;
    [id_field, "id"]
        .iter()
        .find_map(|path| match lookup(&value, path)? {
            Value::String(s) => Some(s.clone()),
            Value::Number(n) => Some(n.to_string()),
            _ => None,
        })
}

/// `sha256=<lowercase hex>` of HMAC-SHA256(secret, body).
pub fn signature(secret: &[u8], body: &[u8]) -> String {
    let mut mac = match Hmac::<Sha256>::new_from_slice(secret) {
        Ok(mac) => mac,
        Err(_) => return String::new(),
    };
    mac.update(body);
    format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
}

/// A request's events and their ids, or the status and reason to refuse it.
type Decoded = Result<(Vec<Box<RawValue>>, Vec<Option<String>>), (u16, String)>;

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn bump(&self, st: MutexGuard<'_, State>) {
        let progress = (st.order.len(), st.stats.requests);
        drop(st);
        self.progress.send_replace(progress);
    }

    /// Counts a request the HTTP layer rejected.
    fn record_unreadable(&self, status: u16) {
        let mut st = self.lock();
        st.stats.requests += 1;
        *st.stats.by_status.entry(status).or_default() += 1;
        st.stats.bad_requests += 1;
        self.bump(st);
    }

    fn handle(&self, req: &Request) -> Response {
        // Decoding and parsing need no state: do them before locking.
        let decoded = decode_body(req, self.cfg.max_body_bytes)
            .and_then(|body| parse_events(&body).map_err(|e| (400, e)))
            .map(|events| {
                let ids: Vec<Option<String>> = events
                    .iter()
                    .map(|e| event_id(e, &self.cfg.id_field))
                    .collect();
                (events, ids)
            });
        let mut st = self.lock();
        st.stats.requests += 1;
        st.last_headers = req.headers.clone();
        st.last_path = Some(req.path().to_string());
        let resp = self.decide(&mut st, req, decoded);
        *st.stats.by_status.entry(resp.status).or_default() += 1;
        self.bump(st);
        resp
    }

    fn decide(&self, st: &mut State, req: &Request, decoded: Decoded) -> Response {
        if redirect::is_login_page(req) {
            st.stats.login_page_hits += 1;
            return redirect::login_page();
        }
        if redirect::strip_moved(req.path()).1 {
            st.stats.moved_requests += 1;
        } else if let Some(to) = &st.faults.redirect {
            st.stats.redirects += 1;
            return to.answer(req);
        }
        if st.faults.down {
            st.stats.down += 1;
            return error(503, "receiver is down");
        }
        if req.method != "POST" {
            st.stats.bad_requests += 1;
            return error(405, "only POST is accepted").with_header("Allow", "POST");
        }
        if st.faults.forbid_echoing_token {
            st.stats.auth_failures += 1;
            let sent = req.header("authorization").unwrap_or("");
            return error(403, &format!("insufficient_scope for {sent}"));
        }
        if let Some(expected) = &self.cfg.expect_authorization {
            if req.header("authorization") != Some(expected.as_str()) {
                st.stats.auth_failures += 1;
                return error(401, "missing or wrong Authorization");
            }
        }
        if let Some(issued) = &self.cfg.access_tokens {
            let bearer = req
                .header("authorization")
                .and_then(|h| h.strip_prefix("Bearer "));
            if !bearer.is_some_and(|t| issued.accepts(t)) {
                st.stats.auth_failures += 1;
                return error(401, "invalid_token")
                    .with_header("WWW-Authenticate", "Bearer error=\"invalid_token\"");
            }
        }
        if let Some(secret) = &self.cfg.hmac_secret {
            let expected = signature(secret, &req.body);
            if req.header(&self.cfg.hmac_header) != Some(expected.as_str()) {
                st.stats.hmac_failures += 1;
                return error(401, "missing or wrong signature");
            }
        }
        let (events, ids) = match decoded {
            Ok(d) => d,
            Err((status, why)) => {
                st.stats.bad_requests += 1;
                return error(status, &why);
            }
        };
        if st
            .faults
            .too_large_over
            .is_some_and(|limit| events.len() > limit)
        {
            st.stats.too_large += 1;
            return error(413, "too many events in one request");
        }
        let rejected: Vec<&str> = ids
            .iter()
            .flatten()
            .filter(|id| st.faults.reject_ids.contains(id.as_str()))
            .map(String::as_str)
            .collect();
        if !rejected.is_empty() {
            st.stats.rejected_ids += 1;
            let msg = format!("rejected event ids: {}", rejected.join(", "));
            return error(400, &msg);
        }
        let (p_server_error, p_rate_limit) = (st.faults.server_error, st.faults.rate_limit);
        let mut draw = |p: f64| p > 0.0 && st.rng.random::<f64>() < p;
        let (server_error, rate_limit) = (draw(p_server_error), draw(p_rate_limit));
        if server_error {
            st.stats.server_errors += 1;
            let status = if st.rng.random::<bool>() { 500 } else { 503 };
            return error(status, "injected server error");
        }
        if rate_limit {
            st.stats.rate_limited += 1;
            return error(429, "rate limited")
                .with_header("Retry-After", self.cfg.retry_after_secs.to_string());
        }
        st.stats.accepted_requests += 1;
        let accepted = events.len();
        for (event, id) in events.into_iter().zip(ids) {
            st.stats.events_recorded += 1;
            match id {
                Some(id) => {
                    let count = st.counts.entry(id.clone()).or_insert(0);
                    *count += 1;
                    if *count == 1 {
                        st.order.push(id);
                    } else {
                        st.stats.duplicate_events += 1;
                    }
                }
                None => st.stats.events_without_id += 1,
            }
            st.events.push(event.get().to_string());
        }
        st.stats.unique_ids = st.order.len();
        Response::json(200, json!({ "accepted": accepted }).to_string())
    }
}
