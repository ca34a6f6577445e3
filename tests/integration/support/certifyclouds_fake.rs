//! A fake of CertifyClouds' `GET /audit/entries`, after the seed document:
//! bearer auth; `start_date`/`end_date` (ISO 8601: an RFC 3339 time or a
//! date, inclusive), `event_type`, `actor` (an actor's id or name), `limit`
//! (default 100, at most 1000) and `offset` (default 0) filters; entries
//! `{id,timestamp,event_type,actor{type,id,name},resource{type,id},description,details,severity,ip_address,user_agent}`
//! sorted newest first (or oldest first), wrapped in
//! `{"entries":[...],"total","limit","offset"}` or served as a bare array.
//!
//! To test offset paging under change, it can insert entries after every
//! page it serves (new ones, or back-dated ones that shift later offsets).
//! A 429 announces `Retry-After`; a request before it ends is counted as a
//! cool-down violation.
//!
//! Real-API behaviours, as options: `max_limit` clamps `limit` silently (the
//! echoed `limit` is the clamped one, the requested one, or absent, per
//! `echo`); every `empty_id_every`th entry has `"id": ""`; and with
//! `filter_on_added` the date filters apply to when an entry was added, not
//! its `timestamp`, so `add_late` entries (old timestamps, added now) are
//! returned although older than the window. `lower_clamp_after_pages`
//! lowers the clamp to `lowered_max_limit` after that many pages (load
//! shedding); `purge_oldest_per_page` deletes the oldest entries after each
//! page (retention), which moves later entries to earlier offsets. Every
//! entry carries `fake_ref`,
//! a unique reference for tests (the id may be empty).

use std::io;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio::sync::watch;

use super::http1::{self, Conn, ReadError, Request, Response, Server};

pub const ENTRIES_PATH: &str = "/audit/entries";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    NewestFirst,
    OldestFirst,
}

/// What the envelope's `limit` says when `limit` was clamped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Echo {
    /// The limit actually applied.
    Clamped,
    /// The limit asked for (a server that clamps without saying so).
    Requested,
    /// No `limit` member.
    Absent,
}

#[derive(Clone, Debug)]
pub struct CertifycloudsFakeConfig {
    pub token: String,
    pub order: Order,
    /// Serve a bare JSON array instead of the `entries` envelope.
    pub bare_array: bool,
    pub max_limit: usize,
    pub echo: Echo,
    /// After this many pages served (0: never)…
    pub lower_clamp_after_pages: u64,
    /// …`limit` is clamped to this instead of `max_limit`.
    pub lowered_max_limit: usize,
    /// After each page served, delete this many of the oldest entries…
    pub purge_oldest_per_page: usize,
    /// …up to this many in total.
    pub purge_budget: usize,
    /// Every Nth entry created has `"id": ""` (0: none).
    pub empty_id_every: u64,
    /// Filter `start_date`/`end_date` on when an entry was added.
    pub filter_on_added: bool,
    pub seed: u64,
    /// After each page served, insert this many entries…
    pub insert_per_page: usize,
    /// …created this long ago (zero: now, i.e. after the pass's end).
    pub insert_age: Duration,
    /// Stop inserting after this many in total.
    pub insert_budget: usize,
    pub rate_limit: f64,
    pub server_error: f64,
    pub retry_after_secs: u64,
}

impl Default for CertifycloudsFakeConfig {
    fn default() -> Self {
        CertifycloudsFakeConfig {
            token: "cc-token".into(),
            order: Order::NewestFirst,
            bare_array: false,
            max_limit: 1000,
            echo: Echo::Clamped,
            lower_clamp_after_pages: 0,
            lowered_max_limit: 1000,
            purge_oldest_per_page: 0,
            purge_budget: 0,
            empty_id_every: 0,
            filter_on_added: false,
            seed: 1,
            insert_per_page: 0,
            insert_age: Duration::ZERO,
            insert_budget: 0,
            rate_limit: 0.0,
            server_error: 0.0,
            retry_after_secs: 1,
        }
    }
}

#[derive(Clone, Debug)]
pub struct Entry {
    /// The `fake_ref` (unique even when the `id` is empty).
    pub id: String,
    pub timestamp: DateTime<Utc>,
    pub added: DateTime<Utc>,
    pub event_type: String,
    pub actor_id: String,
    pub json: Value,
}

#[derive(Clone, Debug, Default)]
pub struct CertifycloudsStats {
    pub requests: u64,
    pub pages: u64,
    /// Pages asked for with offset > 0.
    pub later_pages: u64,
    pub with_end_date: u64,
    pub inserted_between_pages: u64,
    /// Entries deleted by the retention purge (`fake_ref`s).
    pub purged: Vec<String>,
    pub unauthorized: u64,
    pub bad_request: u64,
    pub rate_limited: u64,
    pub server_error: u64,
    pub cooldown_violations: u64,
    /// (start_date, end_date, event_type, actor, limit, offset) as sent.
    pub queries: Vec<Vec<(String, String)>>,
}

struct State {
    entries: Vec<Entry>,
    next_id: u64,
    empty_id_every: u64,
    rng: StdRng,
    inserted: usize,
    cooldown_until: Option<Instant>,
    stats: CertifycloudsStats,
}

struct Shared {
    cfg: CertifycloudsFakeConfig,
    state: Mutex<State>,
    requests_tx: watch::Sender<u64>,
}

pub struct CertifycloudsFake {
    shared: Arc<Shared>,
    server: Server,
}

const TYPES: &[&str] = &[
    "auth.login.success",
    "auth.login.failed",
    "discovery.scan.completed",
    "rotation.completed",
    "settings.updated",
    "sync.failed",
];

impl CertifycloudsFake {
    pub async fn start(cfg: CertifycloudsFakeConfig) -> io::Result<CertifycloudsFake> {
        let listener = http1::bind_loopback(0)?;
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                entries: Vec::new(),
                next_id: 1,
                empty_id_every: cfg.empty_id_every,
                rng: StdRng::seed_from_u64(cfg.seed),
                inserted: 0,
                cooldown_until: None,
                stats: CertifycloudsStats::default(),
            }),
            cfg,
            requests_tx: watch::Sender::new(0),
        });
        let conn_shared = shared.clone();
        let server = Server::spawn(listener, move |stream| {
            serve_connection(conn_shared.clone(), stream)
        })?;
        Ok(CertifycloudsFake { shared, server })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Adds `n` entries spread evenly over `[from, to]`; returns their ids.
    pub fn add_spread(&self, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
        let mut st = self.shared.lock();
        let span = (to - from).num_milliseconds().max(0);
        (0..n)
            .map(|i| {
                let off = if n > 1 {
                    span * i as i64 / (n as i64 - 1)
                } else {
                    0
                };
                st.push(from + chrono::Duration::milliseconds(off))
            })
            .collect()
    }

    pub fn add_aged(&self, n: usize, age: Duration) -> Vec<String> {
        let at = Utc::now() - chrono::Duration::from_std(age).unwrap_or_default();
        self.add_spread(n, at, at)
    }

    /// `n` entries added now with timestamps `age` ago (indexed late).
    pub fn add_late(&self, n: usize, age: Duration) -> Vec<String> {
        self.add_aged(n, age)
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.shared.lock().entries.clone()
    }

    pub fn all_ids(&self) -> Vec<String> {
        self.shared
            .lock()
            .entries
            .iter()
            .map(|e| e.id.clone())
            .collect()
    }

    pub fn stats(&self) -> CertifycloudsStats {
        self.shared.lock().stats.clone()
    }

    pub async fn wait_for_requests(&self, n: u64, timeout: Duration) -> bool {
        let mut rx = self.shared.requests_tx.subscribe();
        let done = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|have| *have >= n)).await,
            Ok(Ok(_))
        );
        done
    }
}

impl State {
    fn push(&mut self, at: DateTime<Utc>) -> String {
        let n = self.next_id;
        self.next_id += 1;
        let fake_ref = format!("audit-{n}");
        let empty = self.empty_id_every > 0 && n.is_multiple_of(self.empty_id_every);
        let id = if empty {
            String::new()
        } else {
            fake_ref.clone()
        };
        let event_type = TYPES[self.rng.random_range(0..TYPES.len())];
        let user = self.rng.random_range(1..8u32);
        let actor_id = if user == 7 {
            "system".to_string()
        } else {
            format!("user-{user}")
        };
        let severity = ["info", "warning", "error"][self.rng.random_range(0..3usize)];
        let json = json!({
            "id": id,
            "timestamp": at.to_rfc3339_opts(SecondsFormat::Millis, true),
            "event_type": event_type,
            "actor": {"type": if user == 7 { "system" } else { "user" }, "id": actor_id, "name": format!("{actor_id}@company.com")},
            "resource": {"type": "scan", "id": format!("scan-{}", self.rng.random_range(0..999u32))},
            "description": format!("{event_type} by {actor_id}"),
            "details": {"mode": "full", "duration_seconds": self.rng.random_range(1..90u32), "note": "a,b \"quoted\"\nline"},
            "severity": severity,
            "ip_address": "192.0.2.50",
            "user_agent": "Mozilla/5.0",
            "fake_ref": fake_ref,
        });
        self.entries.push(Entry {
            id: fake_ref.clone(),
            timestamp: at,
            added: Utc::now(),
            event_type: event_type.into(),
            actor_id,
            json,
        });
        fake_ref
    }
}

fn error(status: u16, message: &str) -> Response {
    Response::json(status, json!({"error": message}).to_string())
}

/// An ISO 8601 bound: a time, or a date (its start, or its end when `end`).
fn parse_bound(text: &str, end: bool) -> Option<DateTime<Utc>> {
    if let Ok(t) = DateTime::parse_from_rfc3339(text) {
        return Some(t.with_timezone(&Utc));
    }
    let d = NaiveDate::parse_from_str(text, "%Y-%m-%d").ok()?;
    let t = if end {
        d.and_hms_milli_opt(23, 59, 59, 999)?
    } else {
        d.and_hms_opt(0, 0, 0)?
    };
    Some(t.and_utc())
}

async fn serve_connection(shared: Arc<Shared>, stream: TcpStream) {
    let mut conn = Conn::new(stream);
    for _ in 0..http1::MAX_REQUESTS_PER_CONNECTION {
        let req = match conn.read_request(64 * 1024).await {
            Ok(r) => r,
            Err(ReadError::Bad(status, why)) => {
                conn.reject(&error(status, &why)).await;
                return;
            }
            Err(_) => return,
        };
        let resp = shared.handle(&req);
        let close = !req.keep_alive;
        if resp.write(&mut conn.stream, close).await.is_err() || close {
            return;
        }
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn handle(&self, req: &Request) -> Response {
        let mut st = self.lock();
        st.stats.requests += 1;
        let resp = self.decide(&mut st, req);
        let n = st.stats.requests;
        drop(st);
        self.requests_tx.send_replace(n);
        resp
    }

    fn decide(&self, st: &mut State, req: &Request) -> Response {
        if req.header("authorization") != Some(format!("Bearer {}", self.cfg.token).as_str()) {
            st.stats.unauthorized += 1;
            return error(401, "invalid token");
        }
        if st.cooldown_until.is_some_and(|u| Instant::now() < u) {
            st.stats.cooldown_violations += 1;
        }
        let (p_rl, p_se) = (self.cfg.rate_limit, self.cfg.server_error);
        if p_rl > 0.0 && st.rng.random::<f64>() < p_rl {
            st.stats.rate_limited += 1;
            st.cooldown_until =
                Some(Instant::now() + Duration::from_secs(self.cfg.retry_after_secs));
            return error(429, "rate limit exceeded")
                .with_header("Retry-After", self.cfg.retry_after_secs.to_string());
        }
        if p_se > 0.0 && st.rng.random::<f64>() < p_se {
            st.stats.server_error += 1;
            return error(503, "database unavailable");
        }
        if req.method != "GET" || req.path() != ENTRIES_PATH {
            return error(404, "not found");
        }
        let query: Vec<(String, String)> = url::form_urlencoded::parse(req.query().as_bytes())
            .into_owned()
            .collect();
        st.stats.queries.push(query.clone());
        let get = |k: &str| query.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
        let start = match get("start_date").map(|s| parse_bound(s, false)) {
            Some(None) => {
                st.stats.bad_request += 1;
                return error(400, "start_date is not ISO 8601");
            }
            other => other.flatten(),
        };
        let end = match get("end_date").map(|s| parse_bound(s, true)) {
            Some(None) => {
                st.stats.bad_request += 1;
                return error(400, "end_date is not ISO 8601");
            }
            other => other.flatten(),
        };
        if end.is_some() {
            st.stats.with_end_date += 1;
        }
        let number = |k: &str, default: usize| -> Result<usize, ()> {
            get(k).map_or(Ok(default), |v| v.parse().map_err(|_| ()))
        };
        let (Ok(limit), Ok(offset)) = (number("limit", 100), number("offset", 0)) else {
            st.stats.bad_request += 1;
            return error(400, "limit and offset must be non-negative integers");
        };
        let asked = limit;
        let lowered = self.cfg.lower_clamp_after_pages > 0
            && st.stats.pages >= self.cfg.lower_clamp_after_pages;
        let max = if lowered {
            self.cfg.lowered_max_limit
        } else {
            self.cfg.max_limit
        };
        let limit = limit.clamp(1, max);
        let (event_type, actor) = (get("event_type"), get("actor"));
        let on_added = self.cfg.filter_on_added;
        let filter_time = |e: &Entry| if on_added { e.added } else { e.timestamp };
        let mut hits: Vec<&Entry> = st
            .entries
            .iter()
            .filter(|e| start.is_none_or(|s| filter_time(e) >= s))
            .filter(|e| end.is_none_or(|x| filter_time(e) <= x))
            .filter(|e| event_type.is_none_or(|t| e.event_type == t))
            .filter(|e| actor.is_none_or(|a| e.actor_id == a || e.json["actor"]["name"] == a))
            .collect();
        hits.sort_by(|a, b| {
            filter_time(a)
                .cmp(&filter_time(b))
                .then(a.timestamp.cmp(&b.timestamp))
                .then(a.id.cmp(&b.id))
        });
        if self.cfg.order == Order::NewestFirst {
            hits.reverse();
        }
        let total = hits.len();
        let page: Vec<Value> = hits
            .into_iter()
            .skip(offset)
            .take(limit)
            .map(|e| e.json.clone())
            .collect();
        st.stats.pages += 1;
        if offset > 0 {
            st.stats.later_pages += 1;
        }
        if !page.is_empty() {
            let room = self.cfg.insert_budget.saturating_sub(st.inserted);
            let n = self.cfg.insert_per_page.min(room);
            let at =
                Utc::now() - chrono::Duration::from_std(self.cfg.insert_age).unwrap_or_default();
            for _ in 0..n {
                st.push(at);
            }
            st.inserted += n;
            st.stats.inserted_between_pages += n as u64;
            let room = self.cfg.purge_budget.saturating_sub(st.stats.purged.len());
            for _ in 0..self.cfg.purge_oldest_per_page.min(room) {
                let oldest = st
                    .entries
                    .iter()
                    .enumerate()
                    .min_by_key(|(_, e)| (e.timestamp, e.id.clone()))
                    .map(|(i, _)| i);
                if let Some(i) = oldest {
                    let gone = st.entries.remove(i);
                    st.stats.purged.push(gone.id);
                }
            }
        }
        let body = match (self.cfg.bare_array, self.cfg.echo) {
            (true, _) => Value::Array(page),
            (false, Echo::Absent) => json!({"entries": page, "total": total, "offset": offset}),
            (false, echo) => {
                let said = if echo == Echo::Requested {
                    asked
                } else {
                    limit
                };
                json!({"entries": page, "total": total, "limit": said, "offset": offset})
            }
        };
        Response::json(200, body.to_string())
    }
}
