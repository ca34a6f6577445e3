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

mod config;
mod page;
mod template;

pub use config::{HttpPull, HttpPullConfig, Mode, PaginationConfig, Stop};
pub use page::link_next;

use async_trait::async_trait;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::Value;
use tracing::{info, warn};

use super::pull::{
    snippet, After, Fetcher, Next, PullCommon, PullDefaults, PullKind, TimeFormat, Walker,
    WindowState,
};
use super::{Source, SourceContext};
use crate::config::Problems;
use crate::event::{Batch, Event, FieldPath};
use crate::metrics::metrics;
use crate::secret::Secret;
use page::PageReader;
use template::{placeholders, render, render_json, Vars, PLACEHOLDERS};

/// What a request is, once the templates are filled.
#[derive(Clone)]
struct Prepared {
    method: reqwest::Method,
    url: url::Url,
    body: Option<Vec<u8>>,
}

pub struct HttpPullSource {
    cfg: HttpPullConfig,
    walk: Walker,
    endpoint: url::Url,
    headers: HeaderMap,
    auth_header: HeaderName,
    page: PageReader,
}

impl HttpPullSource {
    pub fn new(cfg: HttpPullConfig, ctx: SourceContext) -> anyhow::Result<Self> {
        let path = ctx.key_path();
        let common = &cfg.common;
        let endpoint = common.endpoint(&cfg.path, &path)?;
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
        let page = PageReader::new(&cfg, endpoint.clone(), &path)?;
        let state = WindowState::of_context(&ctx, "http_pull", common.recent_ids)?;
        let advice = |status, body: &str| {
            format!(
                "the API refused the credentials with HTTP {status} ({body}): the token is \
                 invalid, expired, or lacks permission to read audit events"
            )
        };
        let mut fetcher = cfg.fetcher_config(&ctx.name, &ctx.health, &path, advice)?;
        fetcher.rate_limit = cfg.rate_limit.clone();
        let walk = Walker::new(Fetcher::new(fetcher)?, state, common, common.start(&path)?);
        info!(
            source = %walk.name,
            pagination = ?cfg.pagination.mode,
            resume = walk.resume(),
            "http_pull source ready"
        );
        Ok(HttpPullSource {
            cfg,
            walk,
            endpoint,
            headers,
            auth_header,
            page,
        })
    }

    /// The events of one page and where the walk goes next, or why the
    /// page is not understood (also the entry point of fuzzing and the
    /// corpus test). `asked` is the URL the page was requested with.
    pub(crate) fn parse_page(
        &self,
        body: &bytes::Bytes,
        headers: &HeaderMap,
        asked: &url::Url,
    ) -> Result<(Vec<Event>, Next), String> {
        self.page.parse(body, headers, asked, self.walk.cursor())
    }

    /// The request of the current page (waiting for the next pass first).
    async fn prepare(&mut self) -> anyhow::Result<Prepared> {
        let cfg = &self.cfg;
        let mode = cfg.pagination.mode;
        let first_page = cfg.pagination.first_page;
        let pass = self.walk.pass().await;
        let method = if cfg.method.eq_ignore_ascii_case("POST") {
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
            since: cfg.time_format.format(pass.start),
            until: cfg.time_format.format(pass.end),
            cursor,
            page_size: cfg.page_size,
            cursor_is_number: matches!(mode, Mode::Offset | Mode::Page),
            times_are_numbers: matches!(cfg.time_format, TimeFormat::Unix | TimeFormat::UnixMs),
        };
        let mut url = self.endpoint.clone();
        {
            let mut pairs = url.query_pairs_mut();
            for (k, t) in &cfg.query {
                if let Some(v) = render(t, &vars) {
                    pairs.append_pair(k, &v);
                }
            }
        }
        if url.query() == Some("") {
            url.set_query(None);
        }
        let body = match &cfg.body {
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
}

#[async_trait]
impl Source for HttpPullSource {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        loop {
            let prepared = self.prepare().await?;
            let had_cursor = self.walk.cursor().is_some();
            let (headers, auth_header, scheme) = (
                self.headers.clone(),
                self.auth_header.clone(),
                self.cfg.auth_scheme.clone(),
            );
            let sent = prepared.clone();
            let reply = self
                .walk
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
                        .with_label_values(&[&self.walk.name])
                        .inc();
                    warn!(source = %self.walk.name, status = refused.status, response = %snippet(&refused.body), "the API refused the page cursor (expired?); walking this window again from its first page");
                    if let Some(p) = self.walk.state.pass.as_mut() {
                        p.cursor = None;
                    }
                    continue;
                }
                Err(refused) => {
                    let hint = "check url, path, method, query and body";
                    self.walk.fetcher.give_up_for_now(&refused, hint).await;
                    continue;
                }
            };
            let (events, next) = match self.parse_page(&reply.body, &reply.headers, &prepared.url) {
                Ok(x) => x,
                Err(why) => {
                    self.walk.fetcher.retry_later(&why).await;
                    continue;
                }
            };
            let after = if self.cfg.pagination.mode == Mode::Offset {
                // From the offset of the page's last entry, which the next
                // page must hold (entries deleted under the cursor move).
                After::Offset {
                    last: matches!(next, Next::Done),
                }
            } else {
                After::Next(next)
            };
            if let Some(batch) = self.walk.take(events, after) {
                return Ok(Some(batch));
            }
        }
    }
}

impl PullKind for HttpPull {
    const KIND: &'static str = "http_pull";

    const DEFAULTS: PullDefaults = PullDefaults {
        id_path: &["event_id", "id"],
        time_path: &["timestamp", "time", "created_at", "event_time"],
        type_path: &["action", "event_type", "type"],
        ..PullDefaults::BASE
    };

    fn validate(&self, path: &str, _common: &PullCommon, problems: &mut Problems) {
        if !self.path.starts_with('/') {
            problems.push(format!("{path}.path"), "must start with /");
        }
        let method = self.method.to_ascii_uppercase();
        if method != "GET" && method != "POST" {
            problems.push(format!("{path}.method"), "must be GET or POST");
        }
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
                    FieldPath::check(tp, &format!("{path}.pagination.token_path"), problems);
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
            FieldPath::check(lp, &format!("{path}.pagination.limit_path"), problems);
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
                FieldPath::check(ip, &format!("{path}.items_path"), problems);
            }
        }
        self.rate_limit.validate(path, problems);
    }

    fn build(config: &HttpPullConfig, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(HttpPullSource::new(config.clone(), ctx)?))
    }
}
