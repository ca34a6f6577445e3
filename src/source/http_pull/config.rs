//! The keys of an `http_pull` source and their checks.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;

use super::template::body_strings;
use crate::serde_defaults::serde_defaults;
use crate::source::pull::{PullConfig, RateLimitConfig, TimeFormat};

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

serde_defaults! {
    fn default_first_page() -> u64 = 1;
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

serde_defaults! {
    fn default_method() -> String = "GET".into();
    fn default_auth_header() -> String = "Authorization".into();
    fn default_auth_scheme() -> String = "Bearer".into();
    fn default_page_size() -> u32 = 100;
}

impl HttpPull {
    /// Every template string, by the key it is written under.
    pub(super) fn templates(&self) -> Vec<(String, &str)> {
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
}
