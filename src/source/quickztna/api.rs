//! The QuickZTNA requests and answers: building a poll, retrying it until
//! the API answers, and reading the entries out of JSON or CSV.

use bytes::Bytes;
use chrono::{DateTime, Utc};
use serde::Serializer;
use serde_json::value::RawValue;
use tracing::warn;

use super::config::{Endpoint, Format, QuickztnaConfig};
use crate::event::{Event, FieldExtractor, FieldPath};
use crate::source::pull::{snippet, Fetcher, Reply};

/// How far back `/api/audit?mode=recent` looks.
const AUDIT_WINDOW_DAYS: i64 = 14;
/// Extra lookback on top of the window, so a server clock somewhat behind
/// ours still covers the window start.
const CLOCK_MARGIN: chrono::Duration = chrono::Duration::minutes(10);

/// One answered poll.
pub struct Answer {
    pub events: Vec<Event>,
    /// `data.count`, when sent.
    pub count: Option<u64>,
    /// Where the window asked for starts (ours, not the server's day boundary).
    pub window_start: DateTime<Utc>,
    pub asked_at: DateTime<Utc>,
}

enum Parsed {
    Page(Vec<Event>, Option<u64>),
    /// `"success": false`: the API refused the request in the body.
    Refused(String),
    /// Not a response this source understands: retry.
    Broken(String),
}

/// The request side of a QuickZTNA source.
pub struct Api {
    pub cfg: QuickztnaConfig,
    pub fetcher: Fetcher,
    pub url: url::Url,
    pub extractor: FieldExtractor,
}

impl Api {
    /// The most entries one answer can hold.
    pub fn cap(&self) -> usize {
        match self.cfg.endpoint {
            Endpoint::Export => self.cfg.export_cap,
            Endpoint::Audit => self.cfg.limit as usize,
        }
    }

    /// The whole number of days that covers `start` from `now`.
    pub fn days_for(start: DateTime<Utc>, now: DateTime<Utc>) -> i64 {
        let span = (now - start + CLOCK_MARGIN).num_seconds().max(1);
        ((span + 86_399) / 86_400).max(1)
    }

    /// Asks for the window from `window_start` until the API answers with
    /// entries (retrying failures as the fetcher paces them). Cancel-safe.
    pub async fn poll(&mut self, window_start: DateTime<Utc>) -> Answer {
        loop {
            let asked_at = Utc::now();
            let days = Self::days_for(window_start, asked_at);
            if self.cfg.endpoint == Endpoint::Audit
                && asked_at - window_start > chrono::Duration::days(AUDIT_WINDOW_DAYS)
            {
                warn!(source = %self.fetcher.name(), window_start = %window_start.to_rfc3339(), "/api/audit only returns the last 14 days: older entries of the window cannot be read (endpoint = \"export\" can)");
            }
            let (cfg, url) = (self.cfg.clone(), self.url.clone());
            let reply = self
                .fetcher
                .send(move |c, t| build_request(&cfg, &url, c, t, days))
                .await;
            let hint = "check url, org_id and endpoint";
            let Some(reply) = self.fetcher.accepted(reply, hint).await else {
                continue;
            };
            match self.parse(&reply.body) {
                Parsed::Page(events, count) => {
                    return Answer {
                        events,
                        count,
                        window_start,
                        asked_at,
                    }
                }
                Parsed::Refused(why) => {
                    let reply = Reply {
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
                Ok(events) => Parsed::Page(events, count),
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
        Parsed::Page(events, count)
    }

    /// One response body through the same parsing as a poll (fuzzing and
    /// the corpus test): its entries, or why it was refused or not understood.
    pub fn parse_body(&self, body: &Bytes) -> Result<Vec<Event>, String> {
        match self.parse(body) {
            Parsed::Page(events, _) => Ok(events),
            Parsed::Refused(why) | Parsed::Broken(why) => Err(why),
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

pub fn advice(status: u16, body: &str, endpoint: Endpoint, org: &str) -> String {
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
        let d = |h: i64| Api::days_for(now - chrono::Duration::hours(h), now);
        assert_eq!(d(0), 1);
        assert_eq!(d(23), 1);
        assert_eq!(d(24), 2, "24h plus the clock margin needs 2 days");
        assert_eq!(d(48), 3);
        assert_eq!(Api::days_for(now + chrono::Duration::hours(5), now), 1);
    }
}
