//! The keys of an `http_pull` source and their checks.

use std::collections::BTreeMap;

use reqwest::header::{HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::Value;

use super::template::{body_strings, placeholders, PLACEHOLDERS};
use crate::config::Problems;
use crate::event::FieldPath;
use crate::source::pull::{PullConfig, PullDefaults, PullKind, RateLimitConfig, TimeFormat};

pub use crate::source::pull::Stop;

/// `[sources.NAME]` with `type = "http_pull"`.
pub type HttpPullConfig = PullConfig<HttpPull>;

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

/// The keys of an `http_pull` source besides
/// [`PullCommon`](crate::source::pull::PullCommon).
#[derive(Clone, Debug, Deserialize)]
pub struct HttpPull {
    #[serde(default = "default_method")]
    pub method: String,
    pub path: String,
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
    #[serde(default)]
    pub rate_limit: RateLimitConfig,
}

impl PullKind for HttpPull {
    const DEFAULTS: PullDefaults = PullDefaults {
        id_path: &["event_id", "id"],
        time_path: &["timestamp", "time", "created_at", "event_time"],
        type_path: &["action", "event_type", "type"],
        ..PullDefaults::BASE
    };
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

impl HttpPullConfig {
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
        self.validate_common(path, problems);
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
        self.rate_limit.validate(path, problems);
    }
}
