//! A generic paginated JSON pull source for audit APIs that have a time
//! filter but no durable cursor (Zaita's REST API is the reference).
//!
//! Each pass asks for the window from the watermark minus `overlap` to the
//! instant the pass began, page by page: the request is built from
//! templates (`query`, `body`, with `{since}`, `{until}`, `{cursor}` and
//! `{page_size}`) and the next page is found by `pagination.mode`: a token
//! in the body or a header, an offset, a page number, an RFC 5988 `Link:
//! rel="next"` header, or none. Ids already delivered inside the overlap are
//! dropped; every page is a batch whose checkpoint holds the pass, so a
//! restart continues the walk, and a cursor the API no longer accepts
//! restarts the walk of the same window. Rate limits are what
//! `rate_limit` says (statuses, `Retry-After`, `X-RateLimit-Reset`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::value::RawValue;
use serde_json::Value;
use tracing::{debug, info, warn};

use super::poll::{
    count_fresh, dedup_key, report_before_window, snippet, Fetcher, FetcherConfig, Next,
    RateLimitConfig, TimeFormat, WindowState,
};
use super::{Paths, Source, SourceContext, StartAt};
use crate::config::{parse_url, require_positive, Problems, RetryConfig, TlsConfig};
use crate::event::{scalar_text, Batch, Event, FieldExtractor, FieldPath};
use crate::metrics::metrics;
use crate::secret::{Secret, SecretKeys};

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The next page's token is in the body (`token_path`) or a header
    /// (`token_header`); it goes into `{cursor}`.
    Token,
    /// `{cursor}` is the number of items read so far in the pass.
    Offset,
    /// `{cursor}` is the page number, from `first_page`.
    Page,
    /// The next page is the URL of `Link: <...>; rel="next"`.
    Link,
    /// One request per pass.
    None,
}

pub use super::poll::Stop;

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PaginationConfig {
    pub mode: Mode,
    /// Token mode: dotted path of the next token in the body.
    pub token_path: Option<String>,
    /// Token mode: response header holding the next token.
    pub token_header: Option<String>,
    /// Page mode: number of the first page.
    #[serde(default = "default_first_page")]
    pub first_page: u64,
    #[serde(default)]
    pub stop: Stop,
    /// Offset and page modes: dotted path of the page size the server
    /// echoes (`limit`), which tells a clamped page from the last one.
    pub limit_path: Option<String>,
}

fn default_first_page() -> u64 {
    1
}

/// `[sources.NAME]` with `type = "http_pull"`.
#[derive(Clone, Debug, Deserialize)]
pub struct HttpPullConfig {
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    pub path: String,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    /// Header carrying the token.
    #[serde(default = "default_auth_header")]
    pub auth_header: String,
    /// Written before the token (`Bearer`); empty = the bare token.
    #[serde(default = "default_auth_scheme")]
    pub auth_scheme: String,
    /// Fixed request headers (not for secrets).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Query parameters; values are templates. A parameter whose template
    /// names an absent value (`{cursor}` on a first page) is left out.
    #[serde(default)]
    pub query: BTreeMap<String, String>,
    /// JSON body (POST), as a table; string values are templates, a value
    /// that is exactly one placeholder keeps its type (`{page_size}` is a
    /// number), and a key whose value is absent is left out.
    pub body: Option<Value>,
    pub pagination: PaginationConfig,
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// How `{since}`/`{until}` are written.
    #[serde(default)]
    pub time_format: TimeFormat,
    /// Where the items are; unset = a top-level array or the first array
    /// among `data`, `items`, `events`, `results`, `entries`, `records`,
    /// `logs`, `values`.
    pub items_path: Option<String>,
    #[serde(default = "default_id_path")]
    pub id_path: Paths,
    #[serde(default = "default_time_path")]
    pub time_path: Paths,
    #[serde(default = "default_type_path")]
    pub type_path: Paths,
    #[serde(default = "default_start_at")]
    pub start_at: String,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    #[serde(default = "default_overlap", with = "humantime_serde")]
    pub overlap: Duration,
    #[serde(default = "default_recent_ids")]
    pub recent_ids: usize,
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
    /// Wait after a rate-limit signal that says nothing about when.
    #[serde(default = "default_rate_limit_wait", with = "humantime_serde")]
    pub rate_limit_wait: Duration,
    #[serde(default = "default_rate_limit_jitter", with = "humantime_serde")]
    pub rate_limit_jitter: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_auth_retry", with = "humantime_serde")]
    pub auth_retry: Duration,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub tls: TlsConfig,
}

fn default_method() -> String {
    "GET".into()
}
fn default_auth_header() -> String {
    "Authorization".into()
}
fn default_auth_scheme() -> String {
    "Bearer".into()
}
fn default_page_size() -> u32 {
    100
}
fn default_id_path() -> Paths {
    Paths::of(&["event_id", "id"])
}
fn default_time_path() -> Paths {
    Paths::of(&["timestamp", "time", "created_at", "event_time"])
}
fn default_type_path() -> Paths {
    Paths::of(&["action", "event_type", "type"])
}
fn default_start_at() -> String {
    "-24h".into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(30)
}
fn default_overlap() -> Duration {
    Duration::from_secs(300)
}
fn default_recent_ids() -> usize {
    50_000
}
fn default_rate_limit_wait() -> Duration {
    Duration::from_secs(60)
}
fn default_rate_limit_jitter() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_auth_retry() -> Duration {
    Duration::from_secs(30)
}

const ITEM_CANDIDATES: &[&str] = &[
    "data", "items", "events", "results", "entries", "records", "logs", "values",
];

/// The placeholders a template may use.
const PLACEHOLDERS: &[&str] = &["since", "until", "cursor", "page_size"];

/// The values of one request's placeholders (`None` = absent).
struct Vars {
    since: String,
    until: String,
    cursor: Option<String>,
    page_size: u32,
    /// Whether `{cursor}` and the times are numbers in a JSON body.
    cursor_is_number: bool,
    times_are_numbers: bool,
}

impl Vars {
    fn get(&self, name: &str) -> Option<String> {
        match name {
            "since" => Some(self.since.clone()),
            "until" => Some(self.until.clone()),
            "cursor" => self.cursor.clone(),
            "page_size" => Some(self.page_size.to_string()),
            _ => None,
        }
    }

    /// A placeholder's value in a JSON body, typed.
    fn json(&self, name: &str) -> Option<Value> {
        let text = self.get(name)?;
        let number = match name {
            "page_size" => true,
            "cursor" => self.cursor_is_number,
            "since" | "until" => self.times_are_numbers,
            _ => false,
        };
        if number {
            if let Ok(n) = text.parse::<i64>() {
                return Some(Value::from(n));
            }
        }
        Some(Value::String(text))
    }
}

/// The `{name}`s of a template (known or not).
fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close)
                if !after[..close].is_empty()
                    && after[..close]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                out.push(&after[..close]);
                rest = &after[close + 1..];
            }
            _ => rest = after,
        }
    }
    out
}

/// Fills a template; `None` when it names an absent value.
fn render(template: &str, vars: &Vars) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if PLACEHOLDERS.contains(&&after[..close]) => {
                out.push_str(&vars.get(&after[..close])?);
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

/// Fills a JSON body template; absent values drop their key.
fn render_json(template: &Value, vars: &Vars) -> Option<Value> {
    match template {
        Value::String(s) => {
            let exact = s
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .filter(|n| PLACEHOLDERS.contains(n));
            match exact {
                Some(name) => vars.json(name),
                None => render(s, vars).map(Value::String),
            }
        }
        Value::Object(map) => Some(Value::Object(
            map.iter()
                .filter_map(|(k, v)| render_json(v, vars).map(|v| (k.clone(), v)))
                .collect(),
        )),
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .map(|v| render_json(v, vars).unwrap_or(Value::Null))
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

/// Every string in a JSON body template.
fn body_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Object(m) => m.values().for_each(|v| body_strings(v, out)),
        Value::Array(a) => a.iter().for_each(|v| body_strings(v, out)),
        _ => {}
    }
}

/// The target of `Link: <...>; rel="next"` (RFC 8288), resolved against `base`.
pub fn link_next(headers: &HeaderMap, base: &url::Url) -> Option<url::Url> {
    for value in headers.get_all(reqwest::header::LINK) {
        let Ok(text) = value.to_str() else { continue };
        let mut rest = text;
        // Each round consumes one link-value: bounded by the header length.
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            let close = after.find('>')?;
            let target = &after[..close];
            let params_end = after[close..].find('<').map_or(after.len(), |i| close + i);
            let params = &after[close + 1..params_end];
            let is_next = params.split(';').any(|p| {
                let p = p.trim().trim_end_matches(',').trim();
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("rel")
                        && v.trim()
                            .trim_matches('"')
                            .split_ascii_whitespace()
                            .any(|r| r.eq_ignore_ascii_case("next"))
                })
            });
            if is_next {
                return base.join(target).ok();
            }
            rest = &after[params_end..];
        }
    }
    None
}

impl HttpPullConfig {
    fn token_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.token_file.clone(),
            env: self.token_env.clone(),
            credential: self.token_credential.clone(),
        }
    }

    fn templates(&self) -> Vec<(String, &str)> {
        let mut out: Vec<(String, &str)> = self
            .query
            .iter()
            .map(|(k, v)| (format!("query.{k}"), v.as_str()))
            .collect();
        if let Some(body) = &self.body {
            let mut strings = Vec::new();
            body_strings(body, &mut strings);
            out.extend(strings.into_iter().map(|s| ("body".to_string(), s)));
        }
        out
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        parse_url(&self.url, &format!("{path}.url"), problems);
        if !self.path.starts_with('/') {
            problems.push(format!("{path}.path"), "must start with /");
        }
        let method = self.method.to_ascii_uppercase();
        if method != "GET" && method != "POST" {
            problems.push(format!("{path}.method"), "must be GET or POST");
        }
        self.token_keys().validate("token", path, None, problems);
        for (key, h) in std::iter::once(("auth_header".to_string(), &self.auth_header))
            .chain(self.headers.keys().map(|k| (format!("headers.{k}"), k)))
        {
            if HeaderName::from_bytes(h.as_bytes()).is_err() {
                problems.push(
                    format!("{path}.{key}"),
                    format!("\"{h}\" is not a header name"),
                );
            }
        }
        for (k, v) in &self.headers {
            if HeaderValue::from_str(v).is_err() {
                problems.push(format!("{path}.headers.{k}"), "not a valid header value");
            }
        }
        if let Some(body) = &self.body {
            if !body.is_object() {
                problems.push(format!("{path}.body"), "must be a table (a JSON object)");
            }
            if method == "GET" {
                problems.push(format!("{path}.body"), "a body needs method = \"POST\"");
            }
        }
        let mut uses_cursor = false;
        for (key, t) in self.templates() {
            for name in placeholders(t) {
                if !PLACEHOLDERS.contains(&name) {
                    problems.push(
                        format!("{path}.{key}"),
                        format!(
                            "unknown placeholder {{{name}}} (known: {{since}}, {{until}}, {{cursor}}, {{page_size}})"
                        ),
                    );
                }
                uses_cursor |= name == "cursor";
            }
        }
        let p = &self.pagination;
        match p.mode {
            Mode::Token | Mode::Offset | Mode::Page if !uses_cursor => problems.push(
                format!("{path}.query"),
                format!(
                    "pagination.mode = \"{}\" needs {{cursor}} in a query or body template",
                    format!("{:?}", p.mode).to_lowercase()
                ),
            ),
            Mode::Token => {
                if p.token_path.is_some() == p.token_header.is_some() {
                    problems.push(
                        format!("{path}.pagination"),
                        "token mode needs exactly one of token_path and token_header",
                    );
                }
                if let Some(tp) = &p.token_path {
                    if let Err(e) = FieldPath::parse(tp) {
                        problems.push(format!("{path}.pagination.token_path"), e);
                    }
                }
                if let Some(h) = &p.token_header {
                    if HeaderName::from_bytes(h.as_bytes()).is_err() {
                        problems.push(
                            format!("{path}.pagination.token_header"),
                            format!("\"{h}\" is not a header name"),
                        );
                    }
                }
            }
            Mode::Link if method != "GET" => problems.push(
                format!("{path}.pagination.mode"),
                "link pagination follows URLs with GET; set method = \"GET\"",
            ),
            _ => {}
        }
        if let Some(lp) = &p.limit_path {
            if let Err(e) = FieldPath::parse(lp) {
                problems.push(format!("{path}.pagination.limit_path"), e);
            }
            if !matches!(p.mode, Mode::Offset | Mode::Page) {
                problems.push(
                    format!("{path}.pagination.limit_path"),
                    "only applies to mode = \"offset\" or \"page\"",
                );
            }
        }
        if p.mode != Mode::Token && (p.token_path.is_some() || p.token_header.is_some()) {
            problems.push(
                format!("{path}.pagination"),
                "token_path/token_header only apply to mode = \"token\"",
            );
        }
        if !(1..=100_000).contains(&self.page_size) {
            problems.push(format!("{path}.page_size"), "must be between 1 and 100000");
        }
        if let Some(ip) = &self.items_path {
            if !ip.is_empty() && ip != "." {
                if let Err(e) = FieldPath::parse(ip) {
                    problems.push(format!("{path}.items_path"), e);
                }
            }
        }
        if let Err(e) = StartAt::parse(&self.start_at) {
            problems.push(format!("{path}.start_at"), e);
        }
        require_positive(
            self.poll_interval,
            &format!("{path}.poll_interval"),
            problems,
        );
        require_positive(self.timeout, &format!("{path}.timeout"), problems);
        self.id_path.validate(&format!("{path}.id_path"), problems);
        self.time_path
            .validate(&format!("{path}.time_path"), problems);
        self.type_path
            .validate(&format!("{path}.type_path"), problems);
        self.rate_limit.validate(path, problems);
        self.retry.validate(path, problems);
        self.tls.validate(path, problems);
    }
}

/// What a request is, once the templates are filled.
#[derive(Clone)]
struct Prepared {
    method: reqwest::Method,
    url: url::Url,
    body: Option<Vec<u8>>,
}

pub struct HttpPullSource {
    name: Arc<str>,
    cfg: HttpPullConfig,
    fetcher: Fetcher,
    endpoint: url::Url,
    headers: HeaderMap,
    auth_header: HeaderName,
    extractor: FieldExtractor,
    items_path: Option<FieldPath>,
    token_path: Option<FieldPath>,
    limit_path: Option<FieldPath>,
    start: DateTime<Utc>,
    state: WindowState,
    next_pass: Option<Instant>,
}

impl HttpPullSource {
    pub fn new(cfg: HttpPullConfig, ctx: SourceContext) -> anyhow::Result<Self> {
        let path = format!("sources.{}", ctx.name);
        let endpoint = url::Url::parse(&cfg.url)
            .and_then(|base| base.join(&cfg.path))
            .map_err(|e| anyhow::anyhow!("{path}.url: {e}"))?;
        let token_source = cfg
            .token_keys()
            .source("token")
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        let mut headers = HeaderMap::new();
        for (k, v) in &cfg.headers {
            let name = HeaderName::from_bytes(k.as_bytes())
                .map_err(|e| anyhow::anyhow!("{path}.headers.{k}: {e}"))?;
            let value =
                HeaderValue::from_str(v).map_err(|e| anyhow::anyhow!("{path}.headers.{k}: {e}"))?;
            headers.insert(name, value);
        }
        let auth_header = HeaderName::from_bytes(cfg.auth_header.as_bytes())
            .map_err(|e| anyhow::anyhow!("{path}.auth_header: {e}"))?;
        let parse =
            |p: &Paths, key: &str| p.parse().map_err(|e| anyhow::anyhow!("{path}.{key}: {e}"));
        let extractor = FieldExtractor::new(
            parse(&cfg.id_path, "id_path")?,
            parse(&cfg.time_path, "time_path")?,
            parse(&cfg.type_path, "type_path")?,
        );
        let items_path = match cfg.items_path.as_deref() {
            None | Some("") | Some(".") => None,
            Some(p) => {
                Some(FieldPath::parse(p).map_err(|e| anyhow::anyhow!("{path}.items_path: {e}"))?)
            }
        };
        let token_path = cfg
            .pagination
            .token_path
            .as_deref()
            .map(FieldPath::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("{path}.pagination.token_path: {e}"))?;
        let limit_path = cfg
            .pagination
            .limit_path
            .as_deref()
            .map(FieldPath::parse)
            .transpose()
            .map_err(|e| anyhow::anyhow!("{path}.pagination.limit_path: {e}"))?;
        let start = StartAt::parse(&cfg.start_at)
            .map_err(|e| anyhow::anyhow!("{path}.start_at: {e}"))?
            .resolve(Utc::now());
        let state = WindowState::load(
            &ctx.name,
            ctx.checkpoint.as_deref(),
            "http_pull",
            cfg.recent_ids,
        )?;
        if let Some(t) = state.watermark {
            metrics().set_committed_time(&ctx.name, t);
        }
        let name: Arc<str> = ctx.name.as_str().into();
        let fetcher = Fetcher::new(FetcherConfig {
            name: name.clone(),
            client: crate::http::client(&cfg.tls, cfg.timeout, &path)?,
            token_source,
            health: ctx.health,
            retry: cfg.retry,
            auth_retry: cfg.auth_retry,
            rate_limit: cfg.rate_limit.clone(),
            rate_limit_wait: cfg.rate_limit_wait,
            rate_limit_jitter: cfg.rate_limit_jitter,
            advice: Box::new(|status, body| {
                format!(
                    "the API refused the credentials with HTTP {status} ({body}): the token is \
                     invalid, expired, or lacks permission to read audit events"
                )
            }),
        })?;
        info!(
            source = %name,
            pagination = ?cfg.pagination.mode,
            resume = if state.pass.is_some() { "the pass in progress" } else if state.watermark.is_some() { "watermark minus overlap" } else { "start_at" },
            "http_pull source ready"
        );
        Ok(HttpPullSource {
            name,
            cfg,
            fetcher,
            endpoint,
            headers,
            auth_header,
            extractor,
            items_path,
            token_path,
            limit_path,
            start,
            state,
            next_pass: None,
        })
    }

    fn prepare(&mut self) -> anyhow::Result<Prepared> {
        let (overlap, start_at) = (self.cfg.overlap, self.start);
        let mode = self.cfg.pagination.mode;
        let first_page = self.cfg.pagination.first_page;
        let pass = self.state.pass(overlap, start_at);
        let method = if self.cfg.method.eq_ignore_ascii_case("POST") {
            reqwest::Method::POST
        } else {
            reqwest::Method::GET
        };
        if mode == Mode::Link {
            if let Some(next) = &pass.cursor {
                let url = url::Url::parse(next)
                    .map_err(|e| anyhow::anyhow!("stored next link does not parse: {e}"))?;
                return Ok(Prepared {
                    method,
                    url,
                    body: None,
                });
            }
        }
        let cursor = match mode {
            Mode::Offset => Some(pass.cursor.clone().unwrap_or_else(|| "0".into())),
            Mode::Page => Some(
                pass.cursor
                    .clone()
                    .unwrap_or_else(|| first_page.to_string()),
            ),
            Mode::Token => pass.cursor.clone(),
            Mode::Link | Mode::None => None,
        };
        let vars = Vars {
            since: self.cfg.time_format.format(pass.start),
            until: self.cfg.time_format.format(pass.end),
            cursor,
            page_size: self.cfg.page_size,
            cursor_is_number: matches!(mode, Mode::Offset | Mode::Page),
            times_are_numbers: matches!(
                self.cfg.time_format,
                TimeFormat::Unix | TimeFormat::UnixMs
            ),
        };
        let mut url = self.endpoint.clone();
        {
            let mut pairs = url.query_pairs_mut();
            for (k, t) in &self.cfg.query {
                if let Some(v) = render(t, &vars) {
                    pairs.append_pair(k, &v);
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let body = match &self.cfg.body {
            Some(t) => Some(serde_json::to_vec(
                &render_json(t, &vars).unwrap_or(Value::Null),
            )?),
            None => None,
        };
        Ok(Prepared { method, url, body })
    }

    fn request(
        client: &reqwest::Client,
        p: &Prepared,
        headers: &HeaderMap,
        auth: (&HeaderName, &str),
        token: Option<&Secret>,
    ) -> reqwest::RequestBuilder {
        let mut req = client
            .request(p.method.clone(), p.url.clone())
            .header(reqwest::header::ACCEPT, "application/json")
            .headers(headers.clone());
        if let Some(body) = &p.body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.clone());
        }
        if let Some(t) = token {
            let value = if auth.1.is_empty() {
                t.expose().to_string()
            } else {
                format!("{} {}", auth.1, t.expose())
            };
            if let Ok(mut v) = HeaderValue::from_str(&value) {
                v.set_sensitive(true);
                req = req.header(auth.0.clone(), v);
            }
        }
        req
    }

    fn items<'a>(&self, root: &'a RawValue) -> Result<Vec<&'a RawValue>, String> {
        let list = match &self.items_path {
            Some(p) => p.lookup(root).ok_or_else(|| format!("no \"{p}\" member"))?,
            None if root.get().starts_with('[') => root,
            None => ITEM_CANDIDATES
                .iter()
                .filter_map(|k| crate::event::get_field(root, k))
                .find(|v| v.get().starts_with('['))
                .ok_or_else(|| {
                    format!(
                        "no list of items (a top-level array or one of {}; set items_path)",
                        ITEM_CANDIDATES.join(", ")
                    )
                })?,
        };
        if list.get() == "null" {
            return Ok(Vec::new());
        }
        serde_json::from_str(list.get()).map_err(|e| format!("items are not a list: {e}"))
    }

    /// The events of one page and where the walk goes next, or why the
    /// page is not understood (also the entry point of fuzzing and the
    /// corpus test). `asked` is the URL the page was requested with.
    pub(crate) fn parse_page(
        &self,
        body: &Bytes,
        headers: &HeaderMap,
        asked: &url::Url,
    ) -> Result<(Vec<Event>, Next), String> {
        let root = serde_json::from_slice::<&RawValue>(body)
            .map_err(|e| format!("body is not JSON ({e}): {}", snippet(body)))?;
        let items = self.items(root)?;
        let next = self.next(root, headers, asked, items.len())?;
        let events = items
            .into_iter()
            .map(|i| self.extractor.event(body, i))
            .collect();
        Ok((events, next))
    }

    /// Where the walk goes after this page.
    fn next(
        &self,
        root: &RawValue,
        headers: &HeaderMap,
        asked: &url::Url,
        returned: usize,
    ) -> Result<Next, String> {
        let p = &self.cfg.pagination;
        let cursor = self.state.pass.as_ref().and_then(|p| p.cursor.clone());
        Ok(match p.mode {
            Mode::None => Next::Done,
            Mode::Offset | Mode::Page => {
                let echoed = self
                    .limit_path
                    .as_ref()
                    .and_then(|lp| lp.lookup(root))
                    .and_then(|v| scalar_text(v)?.parse::<usize>().ok());
                let asked = self.cfg.page_size as usize;
                if super::poll::page_is_last(p.stop, asked, returned, echoed) {
                    Next::Done
                } else if p.mode == Mode::Offset {
                    // By what the server returned: a clamped page must
                    // not make the walk skip the entries after it.
                    let at: u64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
                    Next::Cursor((at + returned as u64).to_string())
                } else {
                    // The server numbers pages by its own (clamped) size.
                    let at: u64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(p.first_page);
                    Next::Cursor((at + 1).to_string())
                }
            }
            // An empty page ends the pass whatever token or link it
            // carries: some APIs hand out a new one on every empty page,
            // and following it would ask again without waiting.
            Mode::Token | Mode::Link if returned == 0 => Next::Done,
            Mode::Token => {
                let token = match (&p.token_header, &self.token_path) {
                    (Some(h), _) => headers
                        .get(h.as_str())
                        .and_then(|v| v.to_str().ok())
                        .map(|s| s.trim().to_string()),
                    (None, Some(tp)) => tp
                        .lookup(root)
                        .and_then(|v| scalar_text(v).map(|t| t.into_owned())),
                    (None, None) => None,
                };
                match token.filter(|t| !t.is_empty()) {
                    Some(t) => Next::Cursor(t),
                    None => Next::Done,
                }
            }
            Mode::Link => match link_next(headers, asked) {
                Some(next) => {
                    if next.origin() != self.endpoint.origin() {
                        return Err(format!(
                            "the next link points to another origin ({}); not following it with the token",
                            next.origin().ascii_serialization()
                        ));
                    }
                    Next::Cursor(next.to_string())
                }
                None => Next::Done,
            },
        })
    }
}

#[async_trait]
impl Source for HttpPullSource {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        loop {
            if self.state.between_passes() {
                if let Some(at) = self.next_pass {
                    tokio::time::sleep_until(at.into()).await;
                }
            }
            let prepared = self.prepare()?;
            let had_cursor = self.state.pass.as_ref().is_some_and(|p| p.cursor.is_some());
            let (headers, auth_header, scheme) = (
                self.headers.clone(),
                self.auth_header.clone(),
                self.cfg.auth_scheme.clone(),
            );
            let sent = prepared.clone();
            let reply = self
                .fetcher
                .send(move |c, t| Self::request(c, &sent, &headers, (&auth_header, &scheme), t))
                .await;
            let reply = match reply {
                Ok(r) => r,
                Err(refused) if had_cursor && refused.status < 500 => {
                    // A stored token or link the API no longer accepts: walk
                    // the same window again from its first page.
                    metrics()
                        .token_restarts
                        .with_label_values(&[&self.name])
                        .inc();
                    warn!(source = %self.name, status = refused.status, response = %snippet(&refused.body), "the API refused the page cursor (expired?); walking this window again from its first page");
                    if let Some(p) = self.state.pass.as_mut() {
                        p.cursor = None;
                    }
                    continue;
                }
                Err(refused) => {
                    self.fetcher
                        .give_up_for_now(&refused, "check url, path, method, query and body")
                        .await;
                    continue;
                }
            };
            let (events, next) = match self.parse_page(&reply.body, &reply.headers, &prepared.url) {
                Ok(x) => x,
                Err(why) => {
                    self.fetcher.retry_later(&why).await;
                    continue;
                }
            };
            let returned = events.len();
            let keys: Vec<String> = events.iter().map(|e| dedup_key(e).into_owned()).collect();
            let found = self.state.fresh(events);
            count_fresh(&self.name, returned, &found);
            report_before_window(&self.name, &found);
            self.fetcher.count_answer(!found.events.is_empty());
            let next = if self.cfg.pagination.mode == Mode::Offset {
                // From the offset of the page's last entry, which the next
                // page must hold (entries deleted under the cursor move).
                self.state
                    .next_offset(&self.name, &keys, matches!(next, Next::Done))
            } else {
                next
            };
            debug!(source = %self.name, returned, new = found.events.len(), repeated = found.repeated, before_window = found.before_window, last_page = matches!(next, Next::Done), "page");
            let checkpoint =
                self.state
                    .record_page(&self.name, &found.events, keys, next, self.cfg.overlap);
            if self.state.between_passes() {
                self.next_pass = Some(Instant::now() + self.cfg.poll_interval);
            }
            if found.events.is_empty() {
                continue;
            }
            return Ok(Some(Batch {
                source: self.name.clone(),
                events: found.events,
                checkpoint,
                newest_time: self.state.newest(),
                fetched_at: Instant::now(),
            }));
        }
    }
}

impl super::SourceType for HttpPullConfig {
    const KIND: &'static str = "http_pull";

    fn validate(&self, path: &str, problems: &mut Problems) {
        HttpPullConfig::validate(self, path, problems)
    }

    fn manual_checkpoint(
        &self,
        token: Option<String>,
        time: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<u8>, String> {
        super::poll::manual_window_checkpoint(token, time)
    }

    fn build(&self, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(HttpPullSource::new(self.clone(), ctx)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(cursor: Option<&str>) -> Vars {
        Vars {
            since: "2026-01-01T00:00:00Z".into(),
            until: "2026-01-01T01:00:00Z".into(),
            cursor: cursor.map(Into::into),
            page_size: 50,
            cursor_is_number: false,
            times_are_numbers: false,
        }
    }

    #[test]
    fn templates_fill_and_drop_absent_values() {
        assert_eq!(
            render("from={since}&n={page_size}", &vars(None)).as_deref(),
            Some("from=2026-01-01T00:00:00Z&n=50")
        );
        assert_eq!(render("{cursor}", &vars(None)), None);
        assert_eq!(render("{cursor}", &vars(Some("t1"))).as_deref(), Some("t1"));
        assert_eq!(
            render("{not_ours}", &vars(None)).as_deref(),
            Some("{not_ours}")
        );
        assert_eq!(placeholders("a{since}b{x_y}{}{ c }"), vec!["since", "x_y"]);
        let body = serde_json::json!({
            "filter": {"from": "{since}", "to": "{until}"},
            "limit": "{page_size}",
            "page_token": "{cursor}",
            "note": "until {until}",
            "fixed": 3
        });
        let out = render_json(&body, &vars(None)).unwrap();
        assert_eq!(
            out,
            serde_json::json!({
                "filter": {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"},
                "limit": 50,
                "note": "until 2026-01-01T01:00:00Z",
                "fixed": 3
            })
        );
        let mut v = vars(Some("40"));
        v.cursor_is_number = true;
        assert_eq!(render_json(&body, &v).unwrap()["page_token"], 40);
    }

    #[test]
    fn link_headers_are_parsed_per_rfc_8288() {
        let base = url::Url::parse("https://api.example/v1/events?page=1").unwrap();
        let mut h = HeaderMap::new();
        h.append(
            reqwest::header::LINK,
            HeaderValue::from_static(
                r#"<https://api.example/v1/events?page=1>; rel="prev first", </v1/events?page=3&x=a,b>; title="x;y"; rel=next"#,
            ),
        );
        assert_eq!(
            link_next(&h, &base).unwrap().as_str(),
            "https://api.example/v1/events?page=3&x=a,b"
        );
        let mut h = HeaderMap::new();
        h.append(
            reqwest::header::LINK,
            HeaderValue::from_static(r#"<https://api.example/a>; rel="last""#),
        );
        assert_eq!(link_next(&h, &base), None);
        h.append(
            reqwest::header::LINK,
            HeaderValue::from_static(r#"<?page=2>; REL="Next""#),
        );
        assert_eq!(
            link_next(&h, &base).unwrap().as_str(),
            "https://api.example/v1/events?page=2"
        );
    }
}
