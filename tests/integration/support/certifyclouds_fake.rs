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
use std::time::{Duration, Instant};

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::http1::{Request, Response};
use super::paged::{
    self, Answer, Cooldown, Ids, LateInserts, PagedApi, PagedFake, Params, RateLimitKind,
};

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

pub struct CertifycloudsState {
    entries: Vec<Entry>,
    ids: Ids,
    rng: StdRng,
    inserts: LateInserts,
    cooldown: Cooldown,
    stats: CertifycloudsStats,
}

/// The entries API's shape.
pub struct Certifyclouds {
    cfg: CertifycloudsFakeConfig,
}

pub type CertifycloudsFake = PagedFake<Certifyclouds>;

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
        let state = CertifycloudsState {
            entries: Vec::new(),
            ids: Ids::new(cfg.empty_id_every),
            rng: StdRng::seed_from_u64(cfg.seed),
            inserts: LateInserts {
                per_page: cfg.insert_per_page,
                age: cfg.insert_age,
                budget: cfg.insert_budget,
                done: 0,
            },
            cooldown: Cooldown::default(),
            stats: CertifycloudsStats::default(),
        };
        PagedFake::serve(Certifyclouds { cfg }, state)
    }

    /// Adds `n` entries spread evenly over `[from, to]`; returns their ids.
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

    /// `n` entries added now with timestamps `age` ago (indexed late).
    pub fn add_late(&self, n: usize, age: Duration) -> Vec<String> {
        self.add_aged(n, age)
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.state().entries.clone()
    }

    pub fn all_ids(&self) -> Vec<String> {
        self.state().entries.iter().map(|e| e.id.clone()).collect()
    }

    pub fn stats(&self) -> CertifycloudsStats {
        let st = self.state();
        CertifycloudsStats {
            cooldown_violations: st.cooldown.violations,
            ..st.stats.clone()
        }
    }
}

impl CertifycloudsState {
    fn push(&mut self, at: DateTime<Utc>) -> String {
        let (_, fake_ref, id) = self.ids.take(|n| format!("audit-{n}"));
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

    /// Retention: deletes up to `n` of the oldest entries.
    fn purge_oldest(&mut self, n: usize) {
        for _ in 0..n {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| (e.timestamp, e.id.clone()))
                .map(|(i, _)| i);
            if let Some(i) = oldest {
                let gone = self.entries.remove(i);
                self.stats.purged.push(gone.id);
            }
        }
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

impl PagedApi for Certifyclouds {
    type State = CertifycloudsState;

    fn unreadable(&self, _st: &mut CertifycloudsState, status: u16, why: &str) -> Response {
        error(status, why)
    }

    fn answer(&self, st: &mut CertifycloudsState, req: &Request) -> Answer {
        st.stats.requests += 1;
        self.decide(st, req).into()
    }
}

impl Certifyclouds {
    fn decide(&self, st: &mut CertifycloudsState, req: &Request) -> Response {
        if paged::bearer(req) != Some(self.cfg.token.as_str()) {
            st.stats.unauthorized += 1;
            return error(401, "invalid token");
        }
        st.cooldown.check(Instant::now());
        if paged::draw(&mut st.rng, self.cfg.rate_limit) {
            st.stats.rate_limited += 1;
            let (resp, until) = RateLimitKind::RetryAfterSeconds.answer(
                self.cfg.retry_after_secs,
                Duration::ZERO,
                &json!({"error": "rate limit exceeded"}).to_string(),
                "",
            );
            st.cooldown.announce(until);
            return resp;
        }
        if paged::draw(&mut st.rng, self.cfg.server_error) {
            st.stats.server_error += 1;
            return error(503, "database unavailable");
        }
        if req.method != "GET" || req.path() != ENTRIES_PATH {
            return error(404, "not found");
        }
        let query = Params::of_query(req);
        st.stats.queries.push(query.0.clone());
        let get = |k: &str| query.get(k);
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
        let (Ok(asked), Ok(offset)) = (number("limit", 100), number("offset", 0)) else {
            st.stats.bad_request += 1;
            return error(400, "limit and offset must be non-negative integers");
        };
        let lowered = self.cfg.lower_clamp_after_pages > 0
            && st.stats.pages >= self.cfg.lower_clamp_after_pages;
        let max = if lowered {
            self.cfg.lowered_max_limit
        } else {
            self.cfg.max_limit
        };
        let limit = paged::clamp_page(asked, max);
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
        let page: Vec<Value> = paged::slice(&hits, offset, limit)
            .into_iter()
            .map(|e| e.json.clone())
            .collect();
        st.stats.pages += 1;
        if offset > 0 {
            st.stats.later_pages += 1;
        }
        if !page.is_empty() {
            let (n, at) = st.inserts.take();
            for _ in 0..n {
                st.push(at);
            }
            st.stats.inserted_between_pages += n as u64;
            let room = self.cfg.purge_budget.saturating_sub(st.stats.purged.len());
            st.purge_oldest(self.cfg.purge_oldest_per_page.min(room));
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
