//! A fake paginated JSON audit API in the shape of Zaita's REST API (events
//! `{event_id,timestamp,tenant_id,actor,action,resource,outcome,metadata,source_ip}`,
//! time-range filter, bearer auth), serving one pagination style at a time:
//!
//! | mode | request | answer |
//! |---|---|---|
//! | `TokenBody` | `GET ?start_time&end_time&page_size&page_token` | `{"data":[...],"next_page_token":"…"\|null}` |
//! | `TokenHeader` | `POST` `{"start_time","end_time","page_size","page_token"?}` | `{"events":[...]}` + `X-Next-Page-Token` |
//! | `Offset` | `GET ?start_time&end_time&limit&offset` | `{"items":[...],"total":N}` |
//! | `Page` | `GET ?start_time&end_time&per_page&page` (from 1) | `{"results":[...],"page":P}` |
//! | `Link` | `GET ?start_time&end_time&limit`, then the `Link: <…>; rel="next"` URL | a bare array |
//! | `Unpaged` | `GET ?start_time&end_time` | `{"data":[...]}` with everything |
//!
//! Events are sorted by time (oldest first); `start_time` and `end_time`
//! are inclusive RFC 3339 bounds. Page tokens and link cursors are opaque,
//! and `expire_tokens()` makes every one issued so far a 400. Rate limiting
//! answers 429 with `X-RateLimit-Reset: <epoch seconds>` and no
//! Retry-After; `exhaust_every` marks every Nth successful answer with
//! `X-RateLimit-Remaining: 0`. A request before the announced reset is a
//! cool-down violation.
//!
//! Real-API behaviours, as options: `max_page_size` clamps the page size
//! silently; `newest_first` sorts the other way; `insert_per_page` adds
//! entries (aged `insert_age`, so inside the window) after each page
//! served, shifting later offsets; every `empty_id_every`th event has
//! `"event_id": ""`; and `token_on_empty` hands out a fresh token (or next
//! link) with every page, even an empty one at the end. Every event carries
//! `fake_ref`, a unique reference for tests.

use std::io;
use std::time::{Duration, Instant};

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::http1::{Request, Response};
use super::paged::{
    self, Answer, Cooldown, Ids, LateInserts, PageTokens, PagedApi, PagedFake, Params,
    RateLimitKind,
};

pub const EVENTS_PATH: &str = "/api/v1/audit/events";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullMode {
    TokenBody,
    TokenHeader,
    Offset,
    Page,
    Link,
    Unpaged,
}

#[derive(Clone, Debug)]
pub struct PullFakeConfig {
    pub token: String,
    pub mode: PullMode,
    /// Largest page served; larger requests are cut to it.
    pub max_page_size: usize,
    pub seed: u64,
    pub rate_limit: f64,
    /// Seconds until the reset announced with a 429 or an exhausted answer.
    pub reset_secs: u64,
    /// Every Nth successful answer says no requests are left.
    pub exhaust_every: Option<u64>,
    pub server_error: f64,
    pub newest_first: bool,
    /// After each non-empty page, add this many events…
    pub insert_per_page: usize,
    /// …this long ago…
    pub insert_age: Duration,
    /// …until this many were added.
    pub insert_budget: usize,
    /// Every Nth event created has `"event_id": ""` (0: none).
    pub empty_id_every: u64,
    /// A next token / link on every page, also past the end.
    pub token_on_empty: bool,
    /// Accept the OAuth2 access tokens of a token endpoint fake (while
    /// unexpired) instead of `token`.
    pub access_tokens: Option<super::token_endpoint::Issued>,
    /// Answer every request 403 naming the bearer token it came with, as
    /// APIs refusing a token for its scope sometimes do.
    pub forbid_echoing_token: bool,
}

impl Default for PullFakeConfig {
    fn default() -> Self {
        PullFakeConfig {
            token: "zaita-token".into(),
            mode: PullMode::TokenBody,
            max_page_size: 200,
            seed: 1,
            rate_limit: 0.0,
            reset_secs: 1,
            exhaust_every: None,
            server_error: 0.0,
            newest_first: false,
            insert_per_page: 0,
            insert_age: Duration::ZERO,
            insert_budget: 0,
            empty_id_every: 0,
            token_on_empty: false,
            access_tokens: None,
            forbid_echoing_token: false,
        }
    }
}

#[derive(Clone, Debug, Default)]
pub struct PullStats {
    pub requests: u64,
    pub pages: u64,
    /// Pages after the first of a walk (a token, offset > 0, page > 1, a link).
    pub later_pages: u64,
    pub rate_limited: u64,
    pub exhausted_answers: u64,
    pub cooldown_violations: u64,
    pub inserted_between_pages: u64,
    /// Pages answered with no events.
    pub empty_pages: u64,
    pub bad_token: u64,
    pub bad_request: u64,
    pub unauthorized: u64,
    pub server_error: u64,
    /// Requests carrying an `X-Tenant` header.
    pub with_tenant_header: u64,
    /// Methods and targets as received.
    pub targets: Vec<(String, String)>,
    pub bodies: Vec<Value>,
}

#[derive(Clone, Debug)]
pub struct PullEvent {
    /// The `fake_ref` (unique even when the `event_id` is empty).
    pub id: String,
    pub at: DateTime<Utc>,
    pub json: Value,
}

pub struct PullState {
    events: Vec<PullEvent>,
    ids: Ids,
    tokens: PageTokens,
    rng: StdRng,
    rate_limit: f64,
    /// The reset announced by a 429 or an exhausted answer.
    cooldown: Cooldown,
    successes: u64,
    inserts: LateInserts,
    stats: PullStats,
}

/// The Zaita-shaped API in one pagination mode.
pub struct Pull {
    cfg: PullFakeConfig,
}

pub type PullFake = PagedFake<Pull>;

const ACTIONS: &[&str] = &[
    "certificate.issue",
    "certificate.renew",
    "certificate.revoke",
    "user.login",
    "user.login_failed",
    "pki.ca_created",
    "bridge.job_completed",
];

impl PullFake {
    pub async fn start(cfg: PullFakeConfig) -> io::Result<PullFake> {
        let state = PullState {
            events: Vec::new(),
            ids: Ids::new(cfg.empty_id_every),
            tokens: PageTokens::default(),
            rng: StdRng::seed_from_u64(cfg.seed),
            rate_limit: cfg.rate_limit,
            cooldown: Cooldown::default(),
            successes: 0,
            inserts: LateInserts {
                per_page: cfg.insert_per_page,
                age: cfg.insert_age,
                budget: cfg.insert_budget,
                done: 0,
            },
            stats: PullStats::default(),
        };
        PagedFake::serve(Pull { cfg }, state)
    }

    pub fn add_spread(&self, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
        let mut st = self.state();
        paged::spread(n, from, to)
            .into_iter()
            .map(|at| st.push(at))
            .collect()
    }

    pub fn add_aged(&self, n: usize, age: Duration) -> Vec<String> {
        let at = paged::ago(age);
        self.add_spread(n, at, at)
    }

    pub fn events(&self) -> Vec<PullEvent> {
        self.state().events.clone()
    }

    /// Every page token and link cursor issued so far becomes invalid.
    pub fn expire_tokens(&self) {
        self.state().tokens.expire();
    }

    pub fn set_rate_limit(&self, p: f64) {
        self.state().rate_limit = p;
    }

    pub fn stats(&self) -> PullStats {
        let st = self.state();
        PullStats {
            cooldown_violations: st.cooldown.violations,
            ..st.stats.clone()
        }
    }
}

impl PullState {
    fn push(&mut self, at: DateTime<Utc>) -> String {
        let (n, fake_ref, id) = self.ids.take(|n| format!("evt_{n:08x}"));
        let action = ACTIONS[self.rng.random_range(0..ACTIONS.len())];
        let outcome = ["success", "failure", "denied"][self.rng.random_range(0..3usize)];
        let json = json!({
            "event_id": id,
            "timestamp": at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "tenant_id": "tnt_7g8h9i0j",
            "actor": {"type": "user", "id": format!("usr_{}", self.rng.random_range(100..999u32)), "email": "ops@example.com"},
            "action": action,
            "resource": {"type": "certificate", "id": format!("crt_{n}"), "name": "api.example.com"},
            "outcome": outcome,
            "metadata": {"ca_id": "ca_s9t0u1v2", "algorithm": "ECDSA-P384", "validity_days": 365},
            "source_ip": "203.0.113.42",
            "fake_ref": fake_ref,
        });
        self.events.push(PullEvent {
            id: fake_ref.clone(),
            at,
            json,
        });
        fake_ref
    }
}

fn error(status: u16, message: &str) -> Response {
    Response::json(status, json!({"error": message}).to_string())
}

/// The parameters of one request, whatever the mode carries them in.
struct Walk {
    start: Option<DateTime<Utc>>,
    end: Option<DateTime<Utc>>,
    size: Option<usize>,
    offset: usize,
    later: bool,
}

impl PagedApi for Pull {
    type State = PullState;

    fn unreadable(&self, _st: &mut PullState, status: u16, why: &str) -> Response {
        error(status, why)
    }

    fn answer(&self, st: &mut PullState, req: &Request) -> Answer {
        st.stats.requests += 1;
        if req.header("x-tenant").is_some() {
            st.stats.with_tenant_header += 1;
        }
        st.stats
            .targets
            .push((req.method.clone(), req.target.clone()));
        self.decide(st, req).into()
    }
}

impl Pull {
    /// A token for the page at `offset` of the walk over `[start, end]`.
    fn token(&self, st: &PullState, offset: usize, start: &str, end: &str) -> String {
        st.tokens.issue(offset, &format!("{start}|{end}"))
    }

    /// (offset, start, end) of a valid token.
    fn untoken(&self, st: &PullState, token: &str) -> Option<(usize, String, String)> {
        // A nonce after the dot keeps `token_on_empty` tokens fresh.
        let token = token.split('.').next()?;
        let (offset, binding) = st.tokens.read(token)?;
        let (start, end) = binding.split_once('|')?;
        Some((offset, start.to_string(), end.to_string()))
    }

    fn decide(&self, st: &mut PullState, req: &Request) -> Response {
        if self.cfg.forbid_echoing_token {
            st.stats.unauthorized += 1;
            let sent = req.header("authorization").unwrap_or("");
            return error(403, &format!("insufficient_scope for {sent}"));
        }
        if let Some(issued) = &self.cfg.access_tokens {
            if !paged::bearer(req).is_some_and(|t| issued.accepts(t)) {
                st.stats.unauthorized += 1;
                return error(401, "invalid_token").with_header(
                    "WWW-Authenticate",
                    "Bearer error=\"invalid_token\", error_description=\"expired or unknown\"",
                );
            }
        } else if paged::bearer(req) != Some(self.cfg.token.as_str()) {
            st.stats.unauthorized += 1;
            return error(401, "machine account authentication failed");
        }
        st.cooldown.check(Instant::now());
        let p_rl = st.rate_limit;
        if paged::draw(&mut st.rng, p_rl) {
            st.stats.rate_limited += 1;
            let (resp, reset) = RateLimitKind::ResetHeader.answer(
                self.cfg.reset_secs,
                Duration::ZERO,
                &json!({"error": "rate limit exceeded"}).to_string(),
                "",
            );
            st.cooldown.announce(reset);
            return resp;
        }
        if paged::draw(&mut st.rng, self.cfg.server_error) {
            st.stats.server_error += 1;
            return error(502, "upstream unavailable");
        }
        let mode = self.cfg.mode;
        let post = mode == PullMode::TokenHeader;
        if req.path() != EVENTS_PATH || req.method != if post { "POST" } else { "GET" } {
            return error(404, "not found");
        }
        let mut kv = Params::of_query(req);
        if post {
            let body: Value = match serde_json::from_slice(&req.body) {
                Ok(v) => v,
                Err(_) => {
                    st.stats.bad_request += 1;
                    return error(400, "body must be JSON");
                }
            };
            st.stats.bodies.push(body.clone());
            if let Some(obj) = body.as_object() {
                for (k, v) in obj {
                    let text = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    kv.0.push((k.clone(), text));
                }
            }
        }
        let get = |k: &str| kv.get(k).map(str::to_string);
        // A token or link cursor carries the walk's filter and offset.
        let cursor = match mode {
            PullMode::TokenBody | PullMode::TokenHeader => get("page_token"),
            PullMode::Link => get("cursor"),
            _ => None,
        };
        let (mut start_s, mut end_s) = (get("start_time"), get("end_time"));
        let mut offset = 0;
        if let Some(c) = &cursor {
            match self.untoken(st, c) {
                Some((o, s, e)) => {
                    offset = o;
                    start_s = Some(s).filter(|s| !s.is_empty());
                    end_s = Some(e).filter(|e| !e.is_empty());
                }
                None => {
                    st.stats.bad_token += 1;
                    return error(400, "invalid or expired page token");
                }
            }
        }
        let time = |s: &Option<String>| -> Result<Option<DateTime<Utc>>, ()> {
            match s {
                None => Ok(None),
                Some(t) => DateTime::parse_from_rfc3339(t)
                    .map(|t| Some(t.with_timezone(&Utc)))
                    .map_err(|_| ()),
            }
        };
        let (Ok(start), Ok(end)) = (time(&start_s), time(&end_s)) else {
            st.stats.bad_request += 1;
            return error(400, "start_time and end_time must be RFC 3339");
        };
        let num = |k: &str| get(k).map(|v| v.parse::<usize>());
        let size_key = match mode {
            PullMode::Offset | PullMode::Link => "limit",
            PullMode::Page => "per_page",
            _ => "page_size",
        };
        let size = match num(size_key) {
            Some(Ok(n)) => Some(paged::clamp_page(n, self.cfg.max_page_size)),
            Some(Err(_)) => {
                st.stats.bad_request += 1;
                return error(400, "page size must be a number");
            }
            None => None,
        };
        match mode {
            PullMode::Offset => match num("offset") {
                Some(Ok(o)) => offset = o,
                Some(Err(_)) => {
                    st.stats.bad_request += 1;
                    return error(400, "offset must be a number");
                }
                None => {}
            },
            PullMode::Page => match num("page") {
                Some(Ok(p)) if p >= 1 => offset = (p - 1) * size.unwrap_or(50),
                Some(_) => {
                    st.stats.bad_request += 1;
                    return error(400, "page starts at 1");
                }
                None => {}
            },
            _ => {}
        }
        let walk = Walk {
            start,
            end,
            size,
            offset,
            later: offset > 0 || cursor.is_some(),
        };
        self.page(
            st,
            req,
            walk,
            start_s.unwrap_or_default(),
            end_s.unwrap_or_default(),
        )
    }

    fn page(
        &self,
        st: &mut PullState,
        req: &Request,
        p: Walk,
        start_s: String,
        end_s: String,
    ) -> Response {
        let mut hits: Vec<&PullEvent> = st
            .events
            .iter()
            .filter(|e| p.start.is_none_or(|s| e.at >= s) && p.end.is_none_or(|x| e.at <= x))
            .collect();
        hits.sort_by(|a, b| a.at.cmp(&b.at).then(a.id.cmp(&b.id)));
        if self.cfg.newest_first {
            hits.reverse();
        }
        let total = hits.len();
        let mode = self.cfg.mode;
        let size = if mode == PullMode::Unpaged {
            total
        } else {
            p.size.unwrap_or(50)
        };
        let page: Vec<Value> = paged::slice(&hits, p.offset, size)
            .into_iter()
            .map(|e| e.json.clone())
            .collect();
        let next_offset = p.offset + page.len();
        let more = next_offset < total || self.cfg.token_on_empty;
        st.stats.pages += 1;
        if p.later {
            st.stats.later_pages += 1;
        }
        if page.is_empty() {
            st.stats.empty_pages += 1;
        } else {
            let (n, at) = st.inserts.take();
            for _ in 0..n {
                st.push(at);
            }
            st.stats.inserted_between_pages += n as u64;
        }
        st.successes += 1;
        // A fresh token each time: the same offset, a new nonce.
        let nonce = st.successes;
        let next_token = more.then(|| {
            let t = self.token(st, next_offset, &start_s, &end_s);
            if self.cfg.token_on_empty {
                format!("{t}.{nonce}")
            } else {
                t
            }
        });
        let host = req.header("host").unwrap_or("127.0.0.1");
        let first = format!("<http://{host}{EVENTS_PATH}?limit={size}>; rel=\"first\"");
        let resp = match mode {
            PullMode::TokenBody => Response::json(
                200,
                json!({"data": page, "next_page_token": next_token}).to_string(),
            ),
            PullMode::TokenHeader => {
                let r = Response::json(200, json!({"events": page}).to_string());
                match next_token {
                    Some(t) => r.with_header("X-Next-Page-Token", t),
                    None => r,
                }
            }
            PullMode::Offset => {
                Response::json(200, json!({"items": page, "total": total}).to_string())
            }
            PullMode::Page => Response::json(
                200,
                json!({"results": page, "page": p.offset / size.max(1) + 1}).to_string(),
            ),
            PullMode::Link => {
                let r = Response::json(200, Value::Array(page).to_string());
                match next_token {
                    Some(t) => r.with_header(
                        "Link",
                        format!(
                            "{first}, <http://{host}{EVENTS_PATH}?limit={size}&cursor={t}>; rel=\"next\""
                        ),
                    ),
                    None => r.with_header("Link", first),
                }
            }
            PullMode::Unpaged => Response::json(200, json!({"data": page}).to_string()),
        };
        if self
            .cfg
            .exhaust_every
            .is_some_and(|n| n > 0 && st.successes.is_multiple_of(n))
        {
            st.stats.exhausted_answers += 1;
            let (resp, reset) = paged::exhausted(resp, self.cfg.reset_secs);
            st.cooldown.announce(reset);
            resp
        } else {
            resp.with_header("X-RateLimit-Remaining", "42")
        }
    }
}
