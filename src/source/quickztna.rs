//! QuickZTNA audit log: `POST /api/export` (`action = "audit_logs"`, JSON or
//! CSV, hard cap of 10000 entries, org admins only) or `GET /api/audit`
//! (`mode = recent`, `limit` ≤ 5000, 14-day window, members may read).
//!
//! Neither has a cursor. Each poll asks for the smallest window that covers
//! the watermark (newest delivered `created_at`) minus `overlap`: a whole
//! number of `days` for the export, the most recent `limit` entries for the
//! audit query. Entries older than that window start, or whose `id` is in the
//! checkpoint's seen-set, were delivered before and are dropped. The new
//! entries are sorted by time and cut into batches; each batch's checkpoint
//! holds the watermark and seen-set as of that batch only.
//!
//! A response holding exactly the cap may be truncated (Loki returns the
//! newest entries): that is logged as a warning and counted in
//! `auditrelay_quickztna_capped_responses_total`, never taken as complete.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};
use prometheus::{IntCounterVec, Opts};
use serde::{Deserialize, Serializer};
use serde_json::value::RawValue;
use tracing::{debug, info, warn};

use super::poll::{
    chrono_of, count_fresh, dedup_key, fresh, snippet, Fetcher, FetcherConfig, RateLimitConfig,
    WindowState,
};
use super::{Paths, Source, SourceContext, StartAt};
use crate::config::{parse_url, require_positive, Problems, RetryConfig, TlsConfig};
use crate::event::{Batch, Event, FieldExtractor, FieldPath};
use crate::metrics::metrics;
use crate::secret::SecretKeys;

/// Most entries `/api/export` returns (the Loki query's hard limit).
pub const EXPORT_CAP: usize = 10_000;
/// Most entries `/api/audit?mode=recent` returns.
pub const AUDIT_MAX_LIMIT: u32 = 5_000;
/// How far back `/api/audit?mode=recent` looks.
const AUDIT_WINDOW_DAYS: i64 = 14;
/// Extra lookback on top of the window, so a server clock somewhat behind
/// ours still covers the window start.
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::minutes(10);

static CAPPED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "auditrelay_quickztna_capped_responses_total",
            "QuickZTNA responses that held exactly the entry cap (10000 for export, limit for audit): older entries of the window may be missing.",
        ),
        &["source"],
    )
    .expect("metric definition is valid");
    metrics().register(c)
});

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /api/export` (admin token; JSON or CSV; up to 10000 entries).
    #[default]
    Export,
    /// `GET /api/audit?mode=recent` (member token; up to 5000 entries).
    Audit,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Json,
    Csv,
}

/// `[sources.NAME]` with `type = "quickztna"`.
#[derive(Clone, Debug, Deserialize)]
pub struct QuickztnaConfig {
    /// e.g. `https://login.quickztna.com`
    pub url: String,
    pub org_id: String,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    #[serde(default)]
    pub endpoint: Endpoint,
    /// Export only: `json` or `csv`.
    #[serde(default)]
    pub format: Format,
    /// Audit only: entries per query (1..=5000).
    #[serde(default = "default_limit")]
    pub limit: u32,
    #[serde(default = "default_start_at")]
    pub start_at: String,
    #[serde(default = "default_poll_interval", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Re-read window behind the watermark (Loki indexing delay).
    #[serde(default = "default_overlap", with = "humantime_serde")]
    pub overlap: Duration,
    /// Most events per batch handed to the sinks.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Bound of the seen-set kept in the checkpoint.
    #[serde(default = "default_recent_ids")]
    pub recent_ids: usize,
    #[serde(default = "default_export_path")]
    pub export_path: String,
    #[serde(default = "default_audit_path")]
    pub audit_path: String,
    #[serde(default = "default_id_path")]
    pub id_path: Paths,
    #[serde(default = "default_time_path")]
    pub time_path: Paths,
    #[serde(default = "default_type_path")]
    pub type_path: Paths,
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

fn default_limit() -> u32 {
    AUDIT_MAX_LIMIT
}
fn default_start_at() -> String {
    "-24h".into()
}
fn default_poll_interval() -> Duration {
    Duration::from_secs(60)
}
fn default_overlap() -> Duration {
    Duration::from_secs(600)
}
fn default_batch_size() -> usize {
    1000
}
fn default_recent_ids() -> usize {
    50_000
}
fn default_export_path() -> String {
    "/api/export".into()
}
fn default_audit_path() -> String {
    "/api/audit".into()
}
fn default_id_path() -> Paths {
    Paths::One("id".into())
}
fn default_time_path() -> Paths {
    Paths::One("created_at".into())
}
fn default_type_path() -> Paths {
    Paths::One("action".into())
}
fn default_rate_limit_wait() -> Duration {
    Duration::from_secs(60)
}
fn default_rate_limit_jitter() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_auth_retry() -> Duration {
    Duration::from_secs(60)
}

impl QuickztnaConfig {
    fn token_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.token_file.clone(),
            env: self.token_env.clone(),
            credential: self.token_credential.clone(),
        }
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        parse_url(&self.url, &format!("{path}.url"), problems);
        if self.org_id.trim().is_empty() {
            problems.push(format!("{path}.org_id"), "must not be empty");
        }
        self.token_keys()
            .validate("token", path, Some("QuickZTNA needs a token (an org admin's for endpoint = \"export\"): set token_file, token_env or token_credential"), problems);
        if self.endpoint == Endpoint::Audit {
            if self.format == Format::Csv {
                problems.push(
                    format!("{path}.format"),
                    "csv is only available with endpoint = \"export\"",
                );
            }
            if !(1..=AUDIT_MAX_LIMIT).contains(&self.limit) {
                problems.push(
                    format!("{path}.limit"),
                    format!(
                        "{} is out of range 1..=5000 (the API's maximum)",
                        self.limit
                    ),
                );
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
        if !(1..=100_000).contains(&self.batch_size) {
            problems.push(format!("{path}.batch_size"), "must be between 1 and 100000");
        }
        if self.recent_ids < EXPORT_CAP {
            problems.push(
                format!("{path}.recent_ids"),
                format!("must be at least {EXPORT_CAP} (one full response)"),
            );
        }
        for (key, p) in [
            ("export_path", &self.export_path),
            ("audit_path", &self.audit_path),
        ] {
            if !p.starts_with('/') {
                problems.push(format!("{path}.{key}"), "must start with /");
            }
        }
        self.id_path.validate(&format!("{path}.id_path"), problems);
        self.time_path
            .validate(&format!("{path}.time_path"), problems);
        self.type_path
            .validate(&format!("{path}.type_path"), problems);
        self.retry.validate(path, problems);
        self.tls.validate(path, problems);
    }
}

/// What a response held.
struct Page {
    events: Vec<Event>,
    /// `data.count`, when sent.
    count: Option<u64>,
}

enum Parsed {
    Page(Page),
    /// `"success": false`: the API refused the request in the body.
    Refused(String),
    /// Not a response this source understands: retry.
    Broken(String),
}

pub struct QuickztnaSource {
    name: Arc<str>,
    cfg: QuickztnaConfig,
    fetcher: Fetcher,
    url: url::Url,
    extractor: FieldExtractor,
    start: DateTime<Utc>,
    state: WindowState,
    pending: VecDeque<Batch>,
    next_poll: Option<Instant>,
}

impl QuickztnaSource {
    pub fn new(cfg: QuickztnaConfig, ctx: SourceContext) -> anyhow::Result<Self> {
        let path = format!("sources.{}", ctx.name);
        let rel = match cfg.endpoint {
            Endpoint::Export => &cfg.export_path,
            Endpoint::Audit => &cfg.audit_path,
        };
        let url = url::Url::parse(&cfg.url)
            .and_then(|base| base.join(rel))
            .map_err(|e| anyhow::anyhow!("{path}.url: {e}"))?;
        let token_source = cfg
            .token_keys()
            .source("token")
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?
            .ok_or_else(|| anyhow::anyhow!("{path}.token_file: no token configured"))?;
        let parse =
            |p: &Paths, key: &str| p.parse().map_err(|e| anyhow::anyhow!("{path}.{key}: {e}"));
        let extractor = FieldExtractor::new(
            parse(&cfg.id_path, "id_path")?,
            parse(&cfg.time_path, "time_path")?,
            parse(&cfg.type_path, "type_path")?,
        );
        let start = StartAt::parse(&cfg.start_at)
            .map_err(|e| anyhow::anyhow!("{path}.start_at: {e}"))?
            .resolve(Utc::now());
        let state = WindowState::load(
            &ctx.name,
            ctx.checkpoint.as_deref(),
            "QuickZTNA",
            cfg.recent_ids,
        )?;
        if let Some(t) = state.watermark {
            metrics().set_committed_time(&ctx.name, t);
        }
        let client = crate::http::client(&cfg.tls, cfg.timeout, &path)?;
        let name: Arc<str> = ctx.name.as_str().into();
        let (org, endpoint) = (cfg.org_id.clone(), cfg.endpoint);
        let fetcher = Fetcher::new(FetcherConfig {
            name: name.clone(),
            client,
            token_source: Some(token_source),
            health: ctx.health,
            retry: cfg.retry,
            auth_retry: cfg.auth_retry,
            rate_limit: RateLimitConfig::default(),
            rate_limit_wait: cfg.rate_limit_wait,
            rate_limit_jitter: cfg.rate_limit_jitter,
            advice: Box::new(move |status, body| advice(status, body, endpoint, &org)),
        })?;
        CAPPED.with_label_values(&[&ctx.name]);
        info!(
            source = %name,
            endpoint = ?cfg.endpoint,
            format = ?cfg.format,
            resume = if state.watermark.is_some() { "watermark minus overlap" } else { "start_at" },
            "quickztna source ready"
        );
        Ok(QuickztnaSource {
            name,
            cfg,
            fetcher,
            url,
            extractor,
            start,
            state,
            pending: VecDeque::new(),
            next_poll: None,
        })
    }

    /// Where the window of the next poll starts.
    fn window_start(&self) -> DateTime<Utc> {
        match (self.state.watermark, self.state.resume_at) {
            (Some(w), _) => w - chrono_of(self.cfg.overlap),
            (None, Some(r)) => r,
            (None, None) => self.start,
        }
    }

    /// The whole number of days that covers `start` from `now`.
    fn days_for(start: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
        let span = (now - start + CLOCK_MARGIN).num_seconds().max(1);
        ((span + 86_399) / 86_400).max(1)
    }

    fn parse(&self, body: &Bytes) -> Parsed {
        let root: &RawValue = match serde_json::from_slice(body) {
            Ok(r) => r,
            Err(e) => {
                return Parsed::Broken(format!(
                    "body is not JSON ({e}, {} bytes): {}",
                    body.len(),
                    snippet(body)
                ))
            }
        };
        let at = |p: &str| FieldPath::parse(p).ok().and_then(|p| p.lookup(root));
        if at("success").is_some_and(|v| v.get() == "false") {
            let why = at("error.message")
                .or_else(|| at("error"))
                .or_else(|| at("message"))
                .map(|v| {
                    serde_json::from_str::<String>(v.get()).unwrap_or_else(|_| v.get().to_string())
                })
                .unwrap_or_else(|| snippet(body));
            return Parsed::Refused(why);
        }
        let count = at("data.count").and_then(|v| v.get().parse::<u64>().ok());
        if self.cfg.endpoint == Endpoint::Export && self.cfg.format == Format::Csv {
            let Some(csv) = at("data.csv") else {
                return Parsed::Broken(format!("no data.csv in the answer: {}", snippet(body)));
            };
            let text: String = match serde_json::from_str(csv.get()) {
                Ok(t) => t,
                Err(e) => return Parsed::Broken(format!("data.csv is not a string: {e}")),
            };
            return match csv_events(&text, &self.extractor) {
                Ok(events) => Parsed::Page(Page { events, count }),
                Err(e) => Parsed::Broken(e),
            };
        }
        // The export's shape is documented; the audit query's is not: accept
        // the plausible ones.
        let candidates: &[&str] = match self.cfg.endpoint {
            Endpoint::Export => &["data.logs"],
            Endpoint::Audit => &["data.logs", "data.entries", "logs", "entries", "data"],
        };
        let items = if root.get().starts_with('[') {
            Some(root)
        } else {
            candidates
                .iter()
                .filter_map(|p| at(p))
                .find(|v| v.get().starts_with('['))
        };
        let Some(items) = items else {
            return Parsed::Broken(format!(
                "no list of entries (looked for {}) in the answer: {}",
                candidates.join(", "),
                snippet(body)
            ));
        };
        let items: Vec<&RawValue> = match serde_json::from_str(items.get()) {
            Ok(v) => v,
            Err(e) => return Parsed::Broken(format!("entries do not parse: {e}")),
        };
        let events = items
            .into_iter()
            .map(|item| self.extractor.event(body, item))
            .collect();
        Parsed::Page(Page { events, count })
    }

    /// One response body through the same parsing as a poll (fuzzing and
    /// the corpus test): its entries, or why it was refused or not understood.
    pub(crate) fn parse_body(&self, body: &Bytes) -> Result<Vec<Event>, String> {
        match self.parse(body) {
            Parsed::Page(page) => Ok(page.events),
            Parsed::Refused(why) | Parsed::Broken(why) => Err(why),
        }
    }

    /// Turns a response into batches, each with the state as of itself.
    fn accept(&mut self, page: Page, window_start: DateTime<Utc>, asked_at: DateTime<Utc>) {
        let returned = page.events.len();
        let cap = match self.cfg.endpoint {
            Endpoint::Export => EXPORT_CAP,
            Endpoint::Audit => self.cfg.limit as usize,
        };
        if let Some(count) = page.count {
            if count != returned as u64 {
                warn!(source = %self.name, count, returned, "data.count differs from the number of entries returned");
            }
        }
        if returned >= cap {
            CAPPED.with_label_values(&[&self.name]).inc();
            let oldest = page.events.iter().filter_map(|e| e.time).min();
            let reaches_back = oldest.is_some_and(|o| o <= window_start);
            warn!(
                source = %self.name,
                returned,
                cap,
                window_start = %window_start.to_rfc3339(),
                oldest_returned = %oldest.map(|o| o.to_rfc3339()).unwrap_or_default(),
                older_entries_may_be_missing = !reaches_back,
                "QuickZTNA answered with exactly its entry cap: the answer may be truncated; poll more often (poll_interval) so fewer entries accumulate between polls"
            );
        }
        let mut found = fresh(&self.state.seen, page.events, Some(window_start));
        count_fresh(&self.name, returned, &found);
        debug!(source = %self.name, returned, new = found.events.len(), repeated = found.repeated, before_window = found.before_window, "poll answered");
        self.fetcher.count_answer(!found.events.is_empty());
        found.events.sort_by_key(|e| e.time);
        let overlap = chrono_of(self.cfg.overlap);
        let mut events = found.events.into_iter().peekable();
        while events.peek().is_some() {
            let chunk: Vec<Event> = events.by_ref().take(self.cfg.batch_size).collect();
            for ev in &chunk {
                self.state.seen.insert(&dedup_key(ev), ev.time);
            }
            if let Some(newest) = chunk.iter().filter_map(|e| e.time).max() {
                let capped = newest.min(asked_at);
                self.state.watermark = Some(self.state.watermark.map_or(capped, |w| w.max(capped)));
            }
            if let Some(w) = self.state.watermark {
                self.state.resume_at = None;
                self.state.seen.prune_before(w - overlap);
            }
            let checkpoint = match serde_json::to_vec(&self.state) {
                Ok(c) => c,
                Err(e) => {
                    // Serializing strings and times cannot fail; keep the
                    // events anyway with the previous state.
                    warn!(source = %self.name, error = %e, "cannot serialize the checkpoint");
                    Vec::new()
                }
            };
            self.pending.push_back(Batch {
                source: self.name.clone(),
                events: chunk,
                checkpoint: checkpoint.into(),
                newest_time: self.state.watermark,
                fetched_at: Instant::now(),
            });
        }
    }
}

/// The request of one poll.
fn build_request(
    cfg: &QuickztnaConfig,
    url: &url::Url,
    client: &reqwest::Client,
    token: Option<&crate::secret::Secret>,
    days: i64,
) -> reqwest::RequestBuilder {
    let req = match cfg.endpoint {
        Endpoint::Export => {
            let mut body = serde_json::json!({
                "action": "audit_logs",
                "org_id": cfg.org_id,
                "days": days,
            });
            if cfg.format == Format::Csv {
                body["format"] = "csv".into();
            }
            client
                .post(url.clone())
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string())
        }
        Endpoint::Audit => client.get(url.clone()).query(&[
            ("org_id", cfg.org_id.as_str()),
            ("mode", "recent"),
            ("limit", &cfg.limit.to_string()),
        ]),
    };
    let req = req.header(reqwest::header::ACCEPT, "application/json");
    match token {
        Some(t) => req.bearer_auth(t.expose()),
        None => req,
    }
}

fn advice(status: u16, body: &str, endpoint: Endpoint, org: &str) -> String {
    match (status, endpoint) {
        (403, Endpoint::Export) => format!(
            "QuickZTNA refused /api/export with HTTP 403 ({body}): the token's user lacks the \
             org admin role (isOrgAdmin) in org {org}, which the export requires; use an org \
             admin's token, or set endpoint = \"audit\" (plain members may read /api/audit)"
        ),
        (403, Endpoint::Audit) => format!(
            "QuickZTNA refused /api/audit with HTTP 403 ({body}): the token's user is not a \
             member of org {org}, or the org's plan does not allow API access to the audit log"
        ),
        _ => format!(
            "QuickZTNA rejected the token with HTTP {status} ({body}): it is invalid or expired"
        ),
    }
}

/// Builds one JSON event per CSV row, keys in header order. Cells are
/// strings; an empty cell is null (CSV cannot tell "" from null). A leading
/// `'` that CSV-injection protection put before `= + - @ tab CR` is removed,
/// so the value is the one the JSON export has.
pub fn csv_events(text: &str, extractor: &FieldExtractor) -> Result<Vec<Event>, String> {
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    if text.trim().is_empty() {
        return Ok(Vec::new());
    }
    let mut reader = csv::ReaderBuilder::new()
        .has_headers(true)
        .from_reader(text.as_bytes());
    let headers = reader
        .headers()
        .map_err(|e| format!("CSV header does not parse: {e}"))?
        .clone();
    for wanted in ["id", "created_at"] {
        if !headers.iter().any(|h| h == wanted) {
            return Err(format!(
                "CSV header has no \"{wanted}\" column (header: {})",
                headers.iter().collect::<Vec<_>>().join(",")
            ));
        }
    }
    let mut buf = Vec::with_capacity(text.len() + text.len() / 4);
    let mut spans = Vec::new();
    for (n, record) in reader.records().enumerate() {
        let record = record.map_err(|e| {
            let line = e.position().map(|p| p.line()).unwrap_or(0);
            format!("CSV row {} (line {line}) does not parse: {e}", n + 1)
        })?;
        let start = buf.len();
        let mut ser = serde_json::Serializer::new(&mut buf);
        ser.collect_map(
            headers
                .iter()
                .zip(record.iter())
                .map(|(k, v)| (k, unguard(v))),
        )
        .map_err(|e| format!("CSV row {}: {e}", n + 1))?;
        spans.push(start..buf.len());
    }
    let page = Bytes::from(buf);
    let mut events = Vec::with_capacity(spans.len());
    for span in spans {
        let item: &RawValue = serde_json::from_slice(&page[span])
            .map_err(|e| format!("internal: row JSON does not parse: {e}"))?;
        events.push(extractor.event(&page, item));
    }
    Ok(events)
}

/// The cell's value: null when empty, without the formula guard.
fn unguard(cell: &str) -> Option<&str> {
    if cell.is_empty() {
        return None;
    }
    let mut chars = cell.chars();
    if chars.next() == Some('\'')
        && matches!(chars.next(), Some('=' | '+' | '-' | '@' | '\t' | '\r'))
    {
        return Some(&cell[1..]);
    }
    Some(cell)
}

#[async_trait]
impl Source for QuickztnaSource {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        loop {
            if let Some(batch) = self.pending.pop_front() {
                return Ok(Some(batch));
            }
            if let Some(at) = self.next_poll {
                tokio::time::sleep_until(at.into()).await;
            }
            let asked_at = Utc::now();
            let window_start = self.window_start();
            let days = Self::days_for(window_start, asked_at);
            if self.cfg.endpoint == Endpoint::Audit
                && asked_at - window_start > chrono::Duration::days(AUDIT_WINDOW_DAYS)
            {
                warn!(source = %self.name, window_start = %window_start.to_rfc3339(), "/api/audit only returns the last 14 days: older entries of the window cannot be read (endpoint = \"export\" can)");
            }
            let (cfg, url) = (self.cfg.clone(), self.url.clone());
            let reply = self
                .fetcher
                .send(move |c, t| build_request(&cfg, &url, c, t, days))
                .await;
            let reply = match reply {
                Ok(r) => r,
                Err(refused) => {
                    self.fetcher
                        .give_up_for_now(&refused, "check url, org_id and endpoint")
                        .await;
                    continue;
                }
            };
            match self.parse(&reply.body) {
                Parsed::Page(page) => {
                    self.next_poll = Some(Instant::now() + self.cfg.poll_interval);
                    self.accept(page, window_start, asked_at);
                }
                Parsed::Refused(why) => {
                    let reply = super::poll::Reply {
                        body: Bytes::from(why),
                        ..reply
                    };
                    self.fetcher
                        .give_up_for_now(&reply, "QuickZTNA answered success=false")
                        .await;
                }
                Parsed::Broken(why) => self.fetcher.retry_later(&why).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extractor() -> FieldExtractor {
        FieldExtractor::new(
            vec![FieldPath::parse("id").unwrap()],
            vec![FieldPath::parse("created_at").unwrap()],
            vec![FieldPath::parse("action").unwrap()],
        )
    }

    #[test]
    fn csv_rows_become_json_objects_in_header_order() {
        let text = "\u{feff}id,action,resource_type,resource_id,user_id,created_at,details\r\n\
            a1,'=cmd,machine,\"m,1\",,2026-03-16T14:22:01.000Z,\"{\"\"k\"\":\"\"v,\n2\"\"}\"\r\n\
            a2,auth.login,user,u1,usr,2026-03-16T14:22:02.000Z,'-x\n";
        let events = csv_events(text, &extractor()).unwrap();
        assert_eq!(events.len(), 2);
        assert_eq!(
            std::str::from_utf8(&events[0].raw).unwrap(),
            r#"{"id":"a1","action":"=cmd","resource_type":"machine","resource_id":"m,1","user_id":null,"created_at":"2026-03-16T14:22:01.000Z","details":"{\"k\":\"v,\n2\"}"}"#
        );
        assert_eq!(events[0].id.as_deref(), Some("a1"));
        assert_eq!(events[0].kind.as_deref(), Some("=cmd"));
        assert!(events[0].time.is_some());
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&events[1].raw).unwrap()["details"],
            "-x"
        );
    }

    #[test]
    fn csv_errors_name_the_row_and_missing_columns() {
        let e = csv_events("id,created_at\n1,2,3\n", &extractor()).unwrap_err();
        assert!(e.contains("row 1") && e.contains("line 2"), "{e}");
        let e = csv_events("action,details\nx,y\n", &extractor()).unwrap_err();
        assert!(e.contains("no \"id\" column"), "{e}");
        assert!(csv_events("", &extractor()).unwrap().is_empty());
        assert!(csv_events(CSV_HEADER_FOR_TESTS, &extractor())
            .unwrap()
            .is_empty());
    }

    const CSV_HEADER_FOR_TESTS: &str =
        "id,action,resource_type,resource_id,user_id,created_at,details";

    #[test]
    fn days_cover_the_window_with_margin() {
        let now = Utc::now();
        let d = |h: i64| QuickztnaSource::days_for(now - chrono::Duration::hours(h), now);
        assert_eq!(d(0), 1);
        assert_eq!(d(23), 1);
        assert_eq!(d(24), 2, "24h plus the clock margin needs 2 days");
        assert_eq!(d(48), 3);
        assert_eq!(
            QuickztnaSource::days_for(now + chrono::Duration::hours(5), now),
            1
        );
    }
}
