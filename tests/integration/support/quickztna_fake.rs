//! A fake of QuickZTNA's audit-log reads, after the seed documents:
//!
//! - `POST /api/export` with `{"action":"audit_logs","org_id","days","format"?}`:
//!   org admins only (a member's token gets `403 FORBIDDEN "Admin required"`);
//!   `days` is read like JavaScript's `parseInt(String(days))`, and anything
//!   that is not a number (absent, null, "abc") means 30; the Loki query is
//!   `created_at >= now - days * 86400000 ms`, newest first, at most 10000
//!   entries. JSON: `{"success":true,"data":{"logs":[...],"count":N}}`; CSV:
//!   `data.csv` with header `id,action,resource_type,resource_id,user_id,created_at,details`,
//!   every cell passed through csvSafe (a `'` before a leading `= + - @ tab CR`)
//!   and csvEscapeField (quoted when it holds a comma, quote, CR or LF).
//! - `GET /api/audit?org_id&mode=recent&limit`: members may read; the last
//!   14 days, newest first, `limit` clamped to 1..=5000 (default 100).
//!
//! `details` is a string holding JSON, `user_id` may be null. Faults (429 with
//! Retry-After, 500) are drawn from a seeded RNG.
//!
//! Behaviours of the real service, as options: the cap keeps the newest
//! entries (Loki's `limit` with descending order); an indexing delay makes
//! entries readable only some time after they were written (late entries);
//! some entries have an empty `id`; and a busy org writes entries between
//! two polls (`inserts_per_export`, just before each export is answered).

use std::io;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde_json::{json, Value};

use super::http1::{Request, Response};
use super::paged::{self, Answer, PagedApi, PagedFake, Params, RateLimitKind};

pub const EXPORT_PATH: &str = "/api/export";
pub const AUDIT_PATH: &str = "/api/audit";
pub const CSV_HEADER: &str = "id,action,resource_type,resource_id,user_id,created_at,details";

#[derive(Clone, Debug)]
pub struct QuickztnaFakeConfig {
    pub admin_token: String,
    pub member_token: String,
    pub org_id: String,
    /// Most entries an export returns.
    pub cap: usize,
    pub seed: u64,
    /// Probability of a 429 (with `Retry-After: retry_after_secs`) and of a 500.
    pub rate_limit: f64,
    pub server_error: f64,
    pub retry_after_secs: u64,
    /// Each entry becomes readable a random time up to this long after its
    /// `created_at` (Loki indexing delay): a poll may see a newer entry
    /// before an older one.
    pub index_delay: Duration,
    /// Share of ordinary entries written with an empty `id`.
    pub empty_ids: f64,
    /// Entries created right before each export is answered.
    pub inserts_per_export: usize,
    /// Pads each ordinary entry's `details` to about this many bytes (real
    /// entries carry whole policy or ACL documents); 0 keeps them short.
    pub details_bytes: usize,
}

impl Default for QuickztnaFakeConfig {
    fn default() -> Self {
        QuickztnaFakeConfig {
            admin_token: "qz-admin-token".into(),
            member_token: "qz-member-token".into(),
            org_id: "3f1c9a52-0000-4000-8000-00000000c0de".into(),
            cap: 10_000,
            seed: 1,
            rate_limit: 0.0,
            server_error: 0.0,
            retry_after_secs: 1,
            index_delay: Duration::ZERO,
            empty_ids: 0.0,
            inserts_per_export: 0,
            details_bytes: 0,
        }
    }
}

/// One audit entry.
#[derive(Clone, Debug, PartialEq)]
pub struct Entry {
    /// The fake's own handle: the id it would have had when `id` is empty.
    pub key: String,
    /// When a query can first see the entry.
    pub visible_at: DateTime<Utc>,
    pub id: String,
    pub action: String,
    pub resource_type: String,
    pub resource_id: String,
    pub user_id: Option<String>,
    pub created_at: DateTime<Utc>,
    /// JSON text.
    pub details: String,
}

impl Entry {
    pub fn created_at_text(&self) -> String {
        self.created_at.to_rfc3339_opts(SecondsFormat::Millis, true)
    }

    /// The entry as the JSON export serves it.
    pub fn to_json(&self) -> Value {
        json!({
            "id": self.id,
            "action": self.action,
            "resource_type": self.resource_type,
            "resource_id": self.resource_id,
            "user_id": self.user_id,
            "created_at": self.created_at_text(),
            "details": self.details,
        })
    }

    fn csv_row(&self) -> String {
        let cells = [
            self.id.as_str(),
            &self.action,
            &self.resource_type,
            &self.resource_id,
            self.user_id.as_deref().unwrap_or(""),
            &self.created_at_text(),
            &self.details,
        ];
        cells
            .iter()
            .map(|c| csv_escape_field(&csv_safe(c)))
            .collect::<Vec<_>>()
            .join(",")
    }
}

/// CSV-injection protection: a cell a spreadsheet would run as a formula
/// gets a leading quote.
pub fn csv_safe(cell: &str) -> String {
    if cell.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{cell}")
    } else {
        cell.to_string()
    }
}

pub fn csv_escape_field(cell: &str) -> String {
    if cell.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", cell.replace('"', "\"\""))
    } else {
        cell.to_string()
    }
}

/// JavaScript's `parseInt(String(v))` for the JSON values a client may send;
/// `None` is NaN.
pub fn js_parse_int(v: Option<&Value>) -> Option<i64> {
    let text = match v? {
        Value::Number(n) => n.to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) => items
            .iter()
            .map(|i| match i {
                Value::Null => String::new(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
        Value::Null | Value::Bool(_) | Value::Object(_) => return None,
    };
    let s = text.trim_start();
    let (neg, s) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let (radix, digits) = match s.get(..2) {
        Some("0x") | Some("0X") => (16, &s[2..]),
        _ => (10, s),
    };
    let end = digits
        .find(|c: char| !c.is_digit(radix))
        .unwrap_or(digits.len());
    if end == 0 {
        return None;
    }
    let n = i64::from_str_radix(&digits[..end.min(15)], radix).ok()?;
    Some(if neg { -n } else { n })
}

/// A snapshot of the fake's counters.
#[derive(Clone, Debug, Default)]
pub struct QuickztnaStats {
    pub requests: u64,
    pub exports: u64,
    pub csv_exports: u64,
    pub audits: u64,
    /// `days` as the handler understood it, per export.
    pub days: Vec<i64>,
    /// Answers that held exactly the cap.
    pub capped: u64,
    pub unauthorized: u64,
    pub forbidden: u64,
    pub bad_request: u64,
    pub rate_limited: u64,
    pub server_error: u64,
}

pub struct QuickztnaState {
    entries: Vec<Entry>,
    next_id: u64,
    rng: StdRng,
    rate_limit: f64,
    server_error: f64,
    stats: QuickztnaStats,
}

/// The export and audit APIs' shape.
pub struct Quickztna {
    cfg: QuickztnaFakeConfig,
}

/// The running fake. Dropping it stops the server.
pub type QuickztnaFake = PagedFake<Quickztna>;

const ACTIONS: &[(&str, &str)] = &[
    ("machine.registered", "machine"),
    ("machine.renamed", "machine"),
    ("acl.rule_created", "acl_rule"),
    ("auth.login", "user"),
    ("auth.login_failed", "user"),
    ("casb.policy_set", "casb_policy"),
    ("auth_key.revoked", "auth_key"),
];

impl QuickztnaFake {
    pub async fn start(cfg: QuickztnaFakeConfig) -> io::Result<QuickztnaFake> {
        let state = QuickztnaState {
            entries: Vec::new(),
            next_id: 1,
            rng: StdRng::seed_from_u64(cfg.seed),
            rate_limit: cfg.rate_limit,
            server_error: cfg.server_error,
            stats: QuickztnaStats::default(),
        };
        PagedFake::serve(Quickztna { cfg }, state)
    }

    pub fn org_id(&self) -> String {
        self.api().cfg.org_id.clone()
    }

    /// Adds `n` ordinary entries with `created_at` spread evenly over
    /// `[from, to]`; returns their keys (their ids, unless `empty_ids`
    /// emptied some).
    pub fn add_spread(&self, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
        let mut st = self.state();
        paged::spread(n, from, to)
            .into_iter()
            .map(|at| st.push_plain(at, &self.api().cfg))
            .collect()
    }

    /// Adds `n` entries created `age` ago (a late, or a fresh, arrival).
    pub fn add_aged(&self, n: usize, age: Duration) -> Vec<String> {
        let at = paged::ago(age);
        self.add_spread(n, at, at)
    }

    /// Adds entries whose cells hold everything that breaks naive CSV:
    /// commas, quotes, CR/LF, formula prefixes, unicode, a null user.
    pub fn add_hostile(&self, at: DateTime<Utc>) -> Vec<Entry> {
        let details = [
            r#"{"old":"a,b","new":"say \"hi\""}"#.to_string(),
            "{\"note\":\"line1\nline2\r\nline3\"}".to_string(),
            r#"{"formula":"=HYPERLINK(\"http://x\",\"y\")"}"#.to_string(),
            "=cmd|' /C calc'!A0".to_string(),
            "{\"emoji\":\"🛡️ ünïcödé\",\"tab\":\"a\tb\"}".to_string(),
            String::new(),
            "\"\"\"".to_string(),
            "-1+2".to_string(),
            "@SUM(A1)".to_string(),
            ",,,\n,,,".to_string(),
        ];
        let mut st = self.state();
        let mut out = Vec::new();
        for (i, d) in details.into_iter().enumerate() {
            let id = st.take_id();
            let entry = Entry {
                key: id.clone(),
                visible_at: Utc::now(),
                id,
                action: [
                    "+machine.renamed",
                    "acl,rule",
                    "quote\"action",
                    "auth.login",
                ][i % 4]
                    .into(),
                resource_type: "machine".into(),
                resource_id: format!("res-{i}, \"x\"\n"),
                user_id: if i % 3 == 0 {
                    None
                } else {
                    Some(format!("usr-{i}"))
                },
                created_at: at + chrono::Duration::milliseconds(i as i64),
                details: d,
            };
            st.entries.push(entry.clone());
            out.push(entry);
        }
        out
    }

    pub fn all_ids(&self) -> Vec<String> {
        self.state().entries.iter().map(|e| e.id.clone()).collect()
    }

    pub fn entries(&self) -> Vec<Entry> {
        self.state().entries.clone()
    }

    /// The `details` text of each entry of `keys` (unique per ordinary
    /// entry: it holds the key), for receivers that cannot count on `id`.
    pub fn details_of(&self, keys: &[String]) -> Vec<String> {
        let st = self.state();
        let by_key: std::collections::HashMap<&str, &str> = st
            .entries
            .iter()
            .map(|e| (e.key.as_str(), e.details.as_str()))
            .collect();
        keys.iter()
            .filter_map(|k| by_key.get(k.as_str()).map(|d| d.to_string()))
            .collect()
    }

    /// Keys of every entry, in the order they were added.
    pub fn all_keys(&self) -> Vec<String> {
        self.state().entries.iter().map(|e| e.key.clone()).collect()
    }

    pub fn stats(&self) -> QuickztnaStats {
        self.state().stats.clone()
    }

    pub fn set_faults(&self, rate_limit: f64, server_error: f64) {
        let mut st = self.state();
        st.rate_limit = rate_limit;
        st.server_error = server_error;
    }
}

impl QuickztnaState {
    fn take_id(&mut self) -> String {
        let n = self.next_id;
        self.next_id += 1;
        format!("qz-{n:07}")
    }

    fn push_plain(&mut self, at: DateTime<Utc>, cfg: &QuickztnaFakeConfig) -> String {
        let id = self.take_id();
        let (action, rtype) = ACTIONS[self.rng.random_range(0..ACTIONS.len())];
        let user = self.rng.random_range(0..20u32);
        let delay_ms = cfg.index_delay.as_millis() as i64;
        let delay = if delay_ms > 0 {
            self.rng.random_range(0..=delay_ms)
        } else {
            0
        };
        let empty = cfg.empty_ids > 0.0 && self.rng.random::<f64>() < cfg.empty_ids;
        let mut details = json!({"seq": id, "ip": "192.0.2.7"});
        if cfg.details_bytes > 0 {
            details["policy"] = json!("x".repeat(cfg.details_bytes));
        }
        let details = details.to_string();
        self.entries.push(Entry {
            key: id.clone(),
            visible_at: at + chrono::Duration::milliseconds(delay),
            id: if empty { String::new() } else { id.clone() },
            action: action.into(),
            resource_type: rtype.into(),
            resource_id: format!("{rtype}-{}", self.rng.random_range(0..500u32)),
            user_id: (user > 0).then(|| format!("usr-{user:03}")),
            created_at: at,
            details,
        });
        id
    }

    /// Entries created at or after `from`, newest first, at most `limit`.
    fn query(&self, from: DateTime<Utc>, limit: usize) -> Vec<Entry> {
        let now = Utc::now();
        let mut hits: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| e.created_at >= from && e.created_at <= now && e.visible_at <= now)
            .collect();
        hits.sort_by(|a, b| b.created_at.cmp(&a.created_at).then(b.key.cmp(&a.key)));
        hits.into_iter().take(limit).cloned().collect()
    }
}

fn fail(status: u16, code: &str, message: &str) -> Response {
    Response::json(
        status,
        json!({"success": false, "error": {"code": code, "message": message}}).to_string(),
    )
}

impl PagedApi for Quickztna {
    type State = QuickztnaState;
    const MAX_BODY: usize = 1024 * 1024;

    fn unreadable(&self, _st: &mut QuickztnaState, status: u16, why: &str) -> Response {
        fail(status, "BAD_REQUEST", why)
    }

    fn answer(&self, st: &mut QuickztnaState, req: &Request) -> Answer {
        st.stats.requests += 1;
        self.decide(st, req).into()
    }
}

impl Quickztna {
    fn decide(&self, st: &mut QuickztnaState, req: &Request) -> Response {
        let bearer = paged::bearer(req);
        let admin = bearer == Some(self.cfg.admin_token.as_str());
        let member = admin || bearer == Some(self.cfg.member_token.as_str());
        if !member {
            st.stats.unauthorized += 1;
            return fail(401, "UNAUTHORIZED", "Invalid or expired token");
        }
        let (p_rl, p_se) = (st.rate_limit, st.server_error);
        if paged::draw(&mut st.rng, p_rl) {
            st.stats.rate_limited += 1;
            let body = json!({"success": false, "error": {"code": "RATE_LIMITED", "message": "Too many requests"}});
            let (resp, _) = RateLimitKind::RetryAfterSeconds.answer(
                self.cfg.retry_after_secs,
                Duration::ZERO,
                &body.to_string(),
                "",
            );
            return resp;
        }
        if paged::draw(&mut st.rng, p_se) {
            st.stats.server_error += 1;
            return fail(500, "INTERNAL", "Loki query failed");
        }
        match (req.method.as_str(), req.path()) {
            ("POST", EXPORT_PATH) => self.export(st, req, admin),
            ("GET", AUDIT_PATH) => self.audit(st, req),
            _ => fail(404, "NOT_FOUND", "Not found"),
        }
    }

    fn export(&self, st: &mut QuickztnaState, req: &Request, admin: bool) -> Response {
        let body: Value = match serde_json::from_slice(&req.body) {
            Ok(v) => v,
            Err(_) => {
                st.stats.bad_request += 1;
                return fail(400, "BAD_REQUEST", "Invalid JSON body");
            }
        };
        if body.get("org_id").and_then(Value::as_str) != Some(self.cfg.org_id.as_str()) {
            st.stats.bad_request += 1;
            return fail(400, "BAD_REQUEST", "org_id required");
        }
        if !admin {
            st.stats.forbidden += 1;
            return fail(403, "FORBIDDEN", "Admin required");
        }
        if body.get("action").and_then(Value::as_str) != Some("audit_logs") {
            st.stats.bad_request += 1;
            return fail(400, "BAD_REQUEST", "Unknown action");
        }
        let days = js_parse_int(body.get("days")).unwrap_or(30);
        for _ in 0..self.cfg.inserts_per_export {
            let ago = st.rng.random_range(0..500);
            st.push_plain(Utc::now() - chrono::Duration::milliseconds(ago), &self.cfg);
        }
        st.stats.exports += 1;
        st.stats.days.push(days);
        let from = Utc::now() - chrono::Duration::milliseconds(days.saturating_mul(86_400_000));
        let logs = st.query(from, self.cfg.cap);
        if logs.len() == self.cfg.cap {
            st.stats.capped += 1;
        }
        let count = logs.len();
        if body.get("format").and_then(Value::as_str) == Some("csv") {
            st.stats.csv_exports += 1;
            let mut csv = String::from(CSV_HEADER);
            for e in &logs {
                csv.push('\n');
                csv.push_str(&e.csv_row());
            }
            return Response::json(
                200,
                json!({"success": true, "data": {"csv": csv, "count": count}}).to_string(),
            );
        }
        let logs: Vec<Value> = logs.iter().map(Entry::to_json).collect();
        Response::json(
            200,
            json!({"success": true, "data": {"logs": logs, "count": count}}).to_string(),
        )
    }

    fn audit(&self, st: &mut QuickztnaState, req: &Request) -> Response {
        let query = Params::of_query(req);
        let get = |k: &str| query.get(k);
        if get("org_id") != Some(self.cfg.org_id.as_str()) {
            st.stats.bad_request += 1;
            return fail(400, "BAD_REQUEST", "org_id required");
        }
        if get("mode") != Some("recent") {
            st.stats.bad_request += 1;
            return fail(400, "BAD_REQUEST", "Unsupported mode");
        }
        let limit = get("limit")
            .and_then(|l| js_parse_int(Some(&Value::String(l.into()))))
            .unwrap_or(100)
            .clamp(1, 5000) as usize;
        st.stats.audits += 1;
        let logs = st.query(Utc::now() - chrono::Duration::days(14), limit);
        let count = logs.len();
        let logs: Vec<Value> = logs.iter().map(Entry::to_json).collect();
        Response::json(
            200,
            json!({"success": true, "data": {"logs": logs, "count": count}}).to_string(),
        )
    }
}
