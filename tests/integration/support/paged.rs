//! The core every paged-JSON API fake shares: the HTTP/1 serving loop (one
//! request at a time per connection, answers that may be delayed or cut
//! short by a reset), the count of answered requests tests wait on, and the
//! behaviours real paged APIs have in common (bearer auth, page-size clamps,
//! page slicing, opaque page tokens that expire, empty ids, late entries,
//! rate-limit answers and the cool-downs they announce, redirects by an SSO
//! proxy or to where the endpoint moved).
//!
//! A vendor fake is a [`PagedApi`]: its state, how it reads a request and
//! how it shapes an answer. Its harsh behaviours are options of its own
//! config, built from the pieces here.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use hmac::{Hmac, Mac};
use rand::rngs::StdRng;
use rand::Rng;
use sha2::Sha256;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::http1::{self, Conn, ReadError, Request, Response, Server};
use super::redirect::{self, Redirect, MOVED_PREFIX};

/// One vendor's API: its state and its request/response shape.
pub trait PagedApi: Send + Sync + 'static {
    type State: Send + 'static;
    /// Largest request body read.
    const MAX_BODY: usize = 64 * 1024;
    /// The answer to a request the HTTP layer could not read (the
    /// connection is closed after it).
    fn unreadable(&self, st: &mut Self::State, status: u16, why: &str) -> Response;
    /// Decides the answer to one request.
    fn answer(&self, st: &mut Self::State, req: &Request) -> Answer;
}

/// How an answer's connection ends when its body is cut short.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cut {
    /// FIN after half the body, then a TCP RST.
    Reset,
    /// FIN after half the body.
    Close,
}

/// What to send back, when, and whether whole.
pub struct Answer {
    pub response: Response,
    /// Sent this much later (a slow server).
    pub delay: Option<Duration>,
    /// The head announces the whole body, half of it is sent, then the
    /// connection ends.
    pub cut: Option<Cut>,
}

impl From<Response> for Answer {
    fn from(response: Response) -> Self {
        Answer {
            response,
            delay: None,
            cut: None,
        }
    }
}

/// Shared between the handle and the connection tasks.
pub struct Core<A: PagedApi> {
    pub api: A,
    state: Mutex<A::State>,
    /// Requests answered so far (also the unreadable ones).
    answered: watch::Sender<u64>,
    front: Mutex<Front>,
}

/// A redirect in front of the API, and how often it answered.
#[derive(Default)]
struct Front {
    redirect: Option<Redirect>,
    redirects: u64,
}

impl<A: PagedApi> Core<A> {
    pub fn lock(&self) -> MutexGuard<'_, A::State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn count_answer(&self) {
        self.answered.send_modify(|n| *n += 1);
    }

    /// The answer of the redirect in front, if one is set and `req` is not
    /// for where it leads: the login page (200 HTML), or the moved
    /// endpoint, whose request goes on to the API without the prefix.
    fn front(&self, req: &mut Request) -> Option<Response> {
        let mut front = self.front.lock().unwrap_or_else(|p| p.into_inner());
        let to = front.redirect.clone()?;
        if redirect::is_login_page(req) {
            return Some(redirect::login_page());
        }
        if redirect::strip_moved(req.path()).1 {
            req.target.drain(..MOVED_PREFIX.len());
            return None;
        }
        front.redirects += 1;
        Some(to.answer(req))
    }
}

/// A running fake on 127.0.0.1. Dropping it stops the server.
pub struct PagedFake<A: PagedApi> {
    core: Arc<Core<A>>,
    server: Server,
}

impl<A: PagedApi> PagedFake<A> {
    /// Serves `api` on a free loopback port.
    pub fn serve(api: A, state: A::State) -> io::Result<Self> {
        let listener = http1::bind_loopback(0)?;
        let core = Arc::new(Core {
            api,
            state: Mutex::new(state),
            answered: watch::Sender::new(0),
            front: Mutex::default(),
        });
        let conn_core = core.clone();
        let server = Server::spawn(listener, move |stream| {
            serve_connection(conn_core.clone(), stream)
        })?;
        Ok(PagedFake { core, server })
    }

    /// `http://127.0.0.1:PORT`
    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    pub fn core(&self) -> &Arc<Core<A>> {
        &self.core
    }

    pub fn api(&self) -> &A {
        &self.core.api
    }

    pub fn state(&self) -> MutexGuard<'_, A::State> {
        self.core.lock()
    }

    /// Puts a redirect in front of the API (`None`: none), as an SSO proxy
    /// or a moved endpoint answers; see `redirect`.
    pub fn set_redirect(&self, redirect: Option<Redirect>) {
        self.core
            .front
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .redirect = redirect;
    }

    /// Requests answered by the redirect in front.
    pub fn redirects(&self) -> u64 {
        self.core
            .front
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .redirects
    }

    /// Waits until at least `n` requests have been answered.
    pub async fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.core.answered.subscribe();
        let done = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|have| *have >= n)).await,
            Ok(Ok(_))
        );
        done
    }

    /// Stops listening and closes every connection, waiting until done.
    pub async fn stop(&mut self) {
        self.server.stop().await;
    }
}

async fn serve_connection<A: PagedApi>(core: Arc<Core<A>>, stream: TcpStream) {
    let mut conn = Conn::new(stream);
    for _ in 0..http1::MAX_REQUESTS_PER_CONNECTION {
        let mut req = match conn.read_request(A::MAX_BODY).await {
            Ok(r) => r,
            Err(ReadError::Bad(status, why)) => {
                let resp = core.api.unreadable(&mut core.lock(), status, &why);
                core.count_answer();
                conn.reject(&resp).await;
                return;
            }
            Err(ReadError::Closed | ReadError::Io(_)) => return,
        };
        let answer = match core.front(&mut req) {
            Some(redirected) => redirected.into(),
            None => core.api.answer(&mut core.lock(), &req),
        };
        core.count_answer();
        if let Some(delay) = answer.delay {
            tokio::time::sleep(delay).await;
        }
        let resp = answer.response;
        let Some(cut) = answer.cut else {
            let close = !req.keep_alive;
            if resp.write(&mut conn.stream, close).await.is_err() || close {
                return;
            }
            continue;
        };
        let mut bytes = resp.head(resp.body.len(), false);
        bytes.extend_from_slice(&resp.body[..resp.body.len() / 2]);
        let _ = conn.stream.write_all(&bytes).await;
        let _ = conn.stream.flush().await;
        let _ = conn.stream.shutdown().await;
        if cut == Cut::Reset {
            // RST when the socket is dropped.
            let _ = conn.stream.set_zero_linger();
        }
        return;
    }
}

// ------------------------------------------------------------- requests

/// The token of an `Authorization: Bearer <token>` header (scheme spelt
/// exactly so, as most gateways demand).
pub fn bearer(req: &Request) -> Option<&str> {
    req.header("authorization")?.strip_prefix("Bearer ")
}

/// A request's query (or form) parameters, in order.
#[derive(Clone, Debug, Default)]
pub struct Params(pub Vec<(String, String)>);

impl Params {
    pub fn of_query(req: &Request) -> Self {
        Params(
            url::form_urlencoded::parse(req.query().as_bytes())
                .into_owned()
                .collect(),
        )
    }

    /// The first value of `key`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Every value of `key`.
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

// ---------------------------------------------------------------- pages

/// A page size as served: at least one, at most the server's `max`,
/// whatever was asked (real APIs clamp silently).
pub fn clamp_page(asked: usize, max: usize) -> usize {
    asked.clamp(1, max.max(1))
}

/// Up to `size` of `hits` from `offset` on.
pub fn slice<T: Clone>(hits: &[T], offset: usize, size: usize) -> Vec<T> {
    hits.iter().skip(offset).take(size).cloned().collect()
}

/// `n` times spread evenly over `[from, to]` (ms resolution).
pub fn spread(n: usize, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<DateTime<Utc>> {
    let span = (to - from).num_milliseconds().max(0);
    (0..n)
        .map(|i| {
            let off = if n > 1 {
                span * i as i64 / (n as i64 - 1)
            } else {
                0
            };
            from + chrono::Duration::milliseconds(off)
        })
        .collect()
}

/// The time `age` ago.
pub fn ago(age: Duration) -> DateTime<Utc> {
    Utc::now() - chrono::Duration::from_std(age).unwrap_or_default()
}

/// Whether the `n`th (1-based) entry is one of every `every`th (0: none),
/// e.g. those served with an empty id.
pub fn every_nth(every: u64, n: u64) -> bool {
    every > 0 && n.is_multiple_of(every)
}

/// Numbers the entries a fake creates: each gets a unique reference for
/// tests (`fake_ref`) and an id, empty for every `empty_every`th one (0:
/// none), as some real APIs serve.
#[derive(Clone, Copy, Debug)]
pub struct Ids {
    next: u64,
    pub empty_every: u64,
}

impl Ids {
    pub fn new(empty_every: u64) -> Self {
        Ids {
            next: 1,
            empty_every,
        }
    }

    /// The next entry's (number, reference, id), the reference named by
    /// `name` from the number.
    pub fn take(&mut self, name: impl Fn(u64) -> String) -> (u64, String, String) {
        let n = self.next;
        self.next += 1;
        let fake_ref = name(n);
        let id = if every_nth(self.empty_every, n) {
            String::new()
        } else {
            fake_ref.clone()
        };
        (n, fake_ref, id)
    }
}

/// A fault of probability `p` drawn from `rng` (no draw when `p` is 0, so
/// turning a fault off does not shift the others).
pub fn draw(rng: &mut StdRng, p: f64) -> bool {
    p > 0.0 && rng.random::<f64>() < p
}

/// Entries a busy tenant writes between two pages a client reads:
/// `per_page` after each non-empty page, dated `age` ago, `budget` in all.
#[derive(Clone, Copy, Debug, Default)]
pub struct LateInserts {
    pub per_page: usize,
    pub age: Duration,
    pub budget: usize,
    pub done: usize,
}

impl LateInserts {
    /// How many to insert after this page, and their time.
    pub fn take(&mut self) -> (usize, DateTime<Utc>) {
        let n = self.per_page.min(self.budget.saturating_sub(self.done));
        self.done += n;
        (n, ago(self.age))
    }
}

/// What `next_page_token` says on the page that reaches the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TokenAtEnd {
    /// A token to ask again with.
    Token,
    /// No `next_page_token` member.
    Missing,
    /// `"next_page_token": ""`.
    Empty,
}

/// Opaque page tokens: an epoch, an offset and what the walk is bound to
/// (its filter), signed so a forged or edited token is refused, and
/// expired all at once by `expire`.
pub struct PageTokens {
    secret: [u8; 32],
    epoch: u64,
}

impl Default for PageTokens {
    fn default() -> Self {
        PageTokens {
            secret: rand::random(),
            epoch: 1,
        }
    }
}

impl PageTokens {
    /// Makes every token issued so far invalid.
    pub fn expire(&mut self) {
        self.epoch += 1;
    }

    fn mac(&self, epoch: u64, offset: usize, binding: &str) -> String {
        let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(&self.secret) else {
            return String::new();
        };
        mac.update(format!("{epoch}:{offset}:{binding}").as_bytes());
        hex::encode(&mac.finalize().into_bytes()[..12])
    }

    /// A token for the page at `offset` of the walk bound to `binding`.
    pub fn issue(&self, offset: usize, binding: &str) -> String {
        let (epoch, mac) = (self.epoch, self.mac(self.epoch, offset, binding));
        URL_SAFE_NO_PAD.encode(format!("{epoch}:{offset}:{mac}:{binding}"))
    }

    /// (offset, binding) of a token this fake issued in the current epoch.
    pub fn read(&self, token: &str) -> Option<(usize, String)> {
        let raw = URL_SAFE_NO_PAD.decode(token.as_bytes()).ok()?;
        let text = String::from_utf8(raw).ok()?;
        let mut parts = text.splitn(4, ':');
        let epoch: u64 = parts.next()?.parse().ok()?;
        let offset: usize = parts.next()?.parse().ok()?;
        let (mac, binding) = (parts.next()?, parts.next()?);
        (epoch == self.epoch && mac == self.mac(epoch, offset, binding))
            .then(|| (offset, binding.to_string()))
    }
}

// ----------------------------------------------------------- rate limits

/// The ways real gateways answer "too many requests".
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum RateLimitKind {
    /// 429, `Retry-After: <secs>`.
    RetryAfterSeconds,
    /// 429, `Retry-After: <HTTP date>` (rounded up to a whole second at
    /// least `secs` away).
    RetryAfterDate,
    /// 429 without Retry-After: the client must wait its own default.
    NoRetryAfter,
    /// 503 with a gRPC RESOURCE_EXHAUSTED body, no Retry-After.
    Grpc503,
    /// 200 with a gRPC RESOURCE_EXHAUSTED body, no Retry-After.
    Grpc200,
    /// 429 with `X-RateLimit-Remaining: 0` and `X-RateLimit-Reset: <epoch
    /// seconds>` (at least one second away), no Retry-After.
    ResetHeader,
}

impl RateLimitKind {
    /// The kinds of a gRPC-gateway API (Veza); `ResetHeader` is not one.
    pub const ALL: [RateLimitKind; 5] = [
        RateLimitKind::RetryAfterSeconds,
        RateLimitKind::RetryAfterDate,
        RateLimitKind::NoRetryAfter,
        RateLimitKind::Grpc503,
        RateLimitKind::Grpc200,
    ];

    /// The answer, and when the cool-down it announces ends. `body` is the
    /// 429 body, `grpc_body` the RESOURCE_EXHAUSTED one, `default_wait` the
    /// cool-down when none is announced.
    pub fn answer(
        self,
        secs: u64,
        default_wait: Duration,
        body: &str,
        grpc_body: &str,
    ) -> (Response, Instant) {
        // Instant first, then the wall clock: a deadline derived from a
        // wall-clock time then errs early, never late.
        let now = Instant::now();
        match self {
            RateLimitKind::RetryAfterSeconds => (
                Response::json(429, body).with_header("Retry-After", secs.to_string()),
                now + Duration::from_secs(secs),
            ),
            RateLimitKind::RetryAfterDate => {
                let (date, wait) = whole_second_after(Duration::from_secs(secs));
                (
                    Response::json(429, body)
                        .with_header("Retry-After", httpdate::fmt_http_date(date)),
                    now + wait,
                )
            }
            RateLimitKind::NoRetryAfter => (Response::json(429, body), now + default_wait),
            RateLimitKind::Grpc503 => (Response::json(503, grpc_body), now + default_wait),
            RateLimitKind::Grpc200 => (Response::json(200, grpc_body), now + default_wait),
            RateLimitKind::ResetHeader => {
                let (reset, wait) = reset_after(secs);
                (
                    Response::json(429, body)
                        .with_header("X-RateLimit-Limit", "100")
                        .with_header("X-RateLimit-Remaining", "0")
                        .with_header("X-RateLimit-Reset", reset.to_string()),
                    now + wait,
                )
            }
        }
    }
}

/// Marks a successful answer as the last one allowed before a reset
/// `secs` (at least one) away; returns when that reset comes.
pub fn exhausted(resp: Response, secs: u64) -> (Response, Instant) {
    let now = Instant::now();
    let (reset, wait) = reset_after(secs);
    (
        resp.with_header("X-RateLimit-Remaining", "0")
            .with_header("X-RateLimit-Reset", reset.to_string()),
        now + wait,
    )
}

/// The first whole epoch second at least `secs` (at least one) from now,
/// and how long until it.
fn reset_after(secs: u64) -> (u64, Duration) {
    let wall = SystemTime::now();
    let since_epoch = wall.duration_since(UNIX_EPOCH).unwrap_or_default();
    let reset = since_epoch.as_secs() + secs.max(1);
    let wait = (UNIX_EPOCH + Duration::from_secs(reset))
        .duration_since(wall)
        .unwrap_or_default();
    (reset, wait)
}

/// The first whole second at least `after` from now, and how long until it.
fn whole_second_after(after: Duration) -> (SystemTime, Duration) {
    let wall = SystemTime::now();
    let since_epoch = (wall + after)
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    let whole = since_epoch.as_secs() + u64::from(since_epoch.subsec_nanos() > 0);
    let date = UNIX_EPOCH + Duration::from_secs(whole);
    (date, date.duration_since(wall).unwrap_or_default())
}

/// The cool-down a rate-limit answer announced; requests before its end
/// are violations the tests count.
#[derive(Clone, Copy, Debug, Default)]
pub struct Cooldown {
    until: Option<Instant>,
    pub violations: u64,
}

impl Cooldown {
    /// Whether a request arriving `at` breaks the cool-down (counted).
    pub fn check(&mut self, at: Instant) -> bool {
        let violated = self.until.is_some_and(|u| at < u);
        self.violations += u64::from(violated);
        violated
    }

    /// Announces a cool-down ending at `deadline` (a later one wins).
    pub fn announce(&mut self, deadline: Instant) {
        self.until = Some(self.until.map_or(deadline, |d| d.max(deadline)));
    }

    pub fn until(&self) -> Option<Instant> {
        self.until
    }

    pub fn clear(&mut self) {
        self.until = None;
    }
}
