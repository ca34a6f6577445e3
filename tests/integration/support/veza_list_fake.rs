//! A fake of Veza's audit-log list (`GET /api/preview/system/audit`), after
//! the seed document: bearer auth; `filter` is required and is
//! `ended_at GE "<RFC 3339>"`, optionally `and ended_at LT "<RFC 3339>"`,
//! at most 90 days back (older is a 400 with gRPC code 3); `page_size` is
//! required (1..=10000); `page_token` continues a listing and must come with
//! the same filter. Answers `{"values":[...],"next_page_token":"…"}` (empty
//! at the end) in order of completion time (`ended_at`).
//!
//! Real-API behaviours, as options: `set_max_page_size` clamps `page_size`
//! silently, and `set_empty_id_every` gives every Nth event added an empty
//! `request_id` (with a `fake_ref` naming it, for tests).

use std::io;

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Value};

use super::http1::{Request, Response};
use super::paged::{self, Answer, PageTokens, PagedApi, PagedFake, Params};

pub const LIST_PATH: &str = "/api/preview/system/audit";

#[derive(Clone, Debug)]
pub struct ListEvent {
    pub request_id: String,
    pub ended_at: DateTime<Utc>,
    pub json: Value,
}

#[derive(Clone, Debug, Default)]
pub struct ListStats {
    pub requests: u64,
    pub pages: u64,
    pub with_token: u64,
    pub too_old: u64,
    pub bad_request: u64,
    pub unauthorized: u64,
    pub filters: Vec<String>,
}

pub struct ListState {
    events: Vec<ListEvent>,
    stats: ListStats,
    max_page_size: usize,
    empty_id_every: u64,
    tokens: PageTokens,
}

/// The list API's shape.
pub struct VezaList {
    token: String,
    /// Serve events past the upper bound too (an API ignoring it).
    ignore_upper_bound: bool,
}

pub type VezaListFake = PagedFake<VezaList>;

impl VezaListFake {
    pub async fn start(token: &str, ignore_upper_bound: bool) -> io::Result<VezaListFake> {
        let api = VezaList {
            token: token.into(),
            ignore_upper_bound,
        };
        let state = ListState {
            events: Vec::new(),
            stats: ListStats::default(),
            max_page_size: 10_000,
            empty_id_every: 0,
            tokens: PageTokens::default(),
        };
        PagedFake::serve(api, state)
    }

    /// Pages hold at most `n` events, whatever `page_size` asked.
    pub fn set_max_page_size(&self, n: usize) {
        self.state().max_page_size = n.max(1);
    }

    /// Every Nth event added from now on has `"request_id": ""`.
    pub fn set_empty_id_every(&self, n: usize) {
        self.state().empty_id_every = n as u64;
    }

    /// `n` events ending evenly over `[from, to]`, Veza-shaped; their ids.
    pub fn add_spread(&self, n: usize, from: DateTime<Utc>, to: DateTime<Utc>) -> Vec<String> {
        let mut st = self.state();
        let first = st.events.len();
        let mut ids = Vec::new();
        for (i, ended) in paged::spread(n, from, to).into_iter().enumerate() {
            let id = format!("{:032x}", first + i + 1);
            let started = ended - chrono::Duration::milliseconds(16);
            let mut json = json!({
                "identity": {"user_id": "aeaa34cf-e97f-4315-b185-249018cf191c", "session_id": "b0ba024d", "api_key_id": "", "email": "cookie@cookie.ai"},
                "status": {"grpc_code": "OK", "http_status": 200, "error_reason": "OK"},
                "client": {"ip": "10.42.1.1", "user_agent": "Mozilla/5.0"},
                "endpoint": "/api_protos.v1.APIKeyService/CreateAPIKey",
                "method": "POST",
                "url": "/api/preview/keys",
                "request_id": id,
                "request": {"name": format!("Key{i}")},
                "response": {"value": {"id": format!("k{i}")}},
                "started_at": started.to_rfc3339_opts(SecondsFormat::Nanos, true),
                "ended_at": ended.to_rfc3339_opts(SecondsFormat::Nanos, true),
            });
            if paged::every_nth(st.empty_id_every, (first + i + 1) as u64) {
                json["request_id"] = json!("");
                json["fake_ref"] = json!(id);
            }
            st.events.push(ListEvent {
                request_id: id.clone(),
                ended_at: ended,
                json,
            });
            ids.push(id);
        }
        st.events.sort_by_key(|e| e.ended_at);
        ids
    }

    pub fn events(&self) -> Vec<ListEvent> {
        self.state().events.clone()
    }

    pub fn stats(&self) -> ListStats {
        self.state().stats.clone()
    }
}

fn grpc_error(status: u16, code: i64, message: &str) -> Response {
    Response::json(
        status,
        json!({"code": code, "message": message}).to_string(),
    )
}

/// `ended_at GE "a"` with an optional `and ended_at LT "b"`.
fn parse_filter(f: &str) -> Option<(DateTime<Utc>, Option<DateTime<Utc>>)> {
    let quoted = |s: &str| -> Option<DateTime<Utc>> {
        let s = s.trim().strip_prefix('"')?.strip_suffix('"')?;
        DateTime::parse_from_rfc3339(s)
            .ok()
            .map(|t| t.with_timezone(&Utc))
    };
    let lower = f.to_ascii_lowercase();
    let (ge, lt) = match lower.find(" and ") {
        Some(i) => (&f[..i], Some(&f[i + 5..])),
        None => (f, None),
    };
    let from = quoted(ge.trim().strip_prefix("ended_at GE ")?)?;
    let to = match lt {
        Some(l) => Some(quoted(l.trim().strip_prefix("ended_at LT ")?)?),
        None => None,
    };
    Some((from, to))
}

impl PagedApi for VezaList {
    type State = ListState;

    fn unreadable(&self, _st: &mut ListState, status: u16, why: &str) -> Response {
        grpc_error(status, 3, why)
    }

    fn answer(&self, st: &mut ListState, req: &Request) -> Answer {
        st.stats.requests += 1;
        self.decide(st, req).into()
    }
}

impl VezaList {
    fn decide(&self, st: &mut ListState, req: &Request) -> Response {
        if paged::bearer(req) != Some(self.token.as_str()) {
            st.stats.unauthorized += 1;
            return grpc_error(401, 16, "unauthenticated");
        }
        if req.method != "GET" || req.path() != LIST_PATH {
            return grpc_error(404, 5, "not found");
        }
        let q = Params::of_query(req);
        let Some(filter) = q.get("filter").map(str::to_string) else {
            st.stats.bad_request += 1;
            return grpc_error(400, 3, "a timestamp filter is required");
        };
        st.stats.filters.push(filter.clone());
        let Some((from, to)) = parse_filter(&filter) else {
            st.stats.bad_request += 1;
            return grpc_error(400, 3, "invalid filter");
        };
        if from < Utc::now() - chrono::Duration::days(90) {
            st.stats.too_old += 1;
            return grpc_error(400, 3, "ended_at must be within the last 90 days");
        }
        let size = match q.get("page_size").map(str::parse::<usize>) {
            Some(Ok(n)) if (1..=10_000).contains(&n) => paged::clamp_page(n, st.max_page_size),
            _ => {
                st.stats.bad_request += 1;
                return grpc_error(400, 3, "page_size must be between 1 and 10000");
            }
        };
        let mut offset = 0;
        if let Some(t) = q.get("page_token").filter(|t| !t.is_empty()) {
            st.stats.with_token += 1;
            match st.tokens.read(t) {
                Some((o, f)) if f == filter => offset = o,
                _ => {
                    st.stats.bad_request += 1;
                    return grpc_error(400, 3, "invalid page token for this filter");
                }
            }
        }
        let to = if self.ignore_upper_bound { None } else { to };
        let hits: Vec<&ListEvent> = st
            .events
            .iter()
            .filter(|e| e.ended_at >= from && to.is_none_or(|t| e.ended_at < t))
            .collect();
        let page: Vec<Value> = paged::slice(&hits, offset, size)
            .into_iter()
            .map(|e| e.json.clone())
            .collect();
        let next = offset + page.len();
        let token = if next < hits.len() {
            st.tokens.issue(next, &filter)
        } else {
            String::new()
        };
        st.stats.pages += 1;
        Response::json(
            200,
            json!({"values": page, "next_page_token": token}).to_string(),
        )
    }
}
