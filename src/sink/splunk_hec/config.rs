//! `[sinks.NAME]` with `type = "splunk_hec"`: keys and their checks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::Deserialize;

use crate::config::{parse_url, require_positive, Problems};
use crate::event::FieldPath;
use crate::secret::{Secret, SecretKeys};

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    Gzip,
    None,
}

/// `[sinks.NAME]` with `type = "splunk_hec"`.
#[derive(Clone, Debug, Deserialize)]
pub struct SplunkHecConfig {
    /// Base URL of the collector, e.g. `https://splunk.example:8088`.
    pub endpoint: String,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    /// Envelope metadata; unset keys are left to the token's defaults,
    /// except `source`, which defaults to the auditrelay source name.
    pub host: Option<String>,
    pub source: Option<String>,
    pub sourcetype: Option<String>,
    pub index: Option<String>,
    /// Indexed fields: field name → dotted path into the event.
    #[serde(default)]
    pub fields: BTreeMap<String, String>,
    #[serde(default)]
    pub indexer_ack: bool,
    #[serde(default = "default_ack_timeout", with = "humantime_serde")]
    pub ack_timeout: Duration,
    #[serde(default = "default_ack_poll_interval", with = "humantime_serde")]
    pub ack_poll_interval: Duration,
    #[serde(default)]
    pub compression: Compression,
    /// Event requests in flight at once for this sink.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Least wait between attempts while HEC refuses the token or the
    /// `indexer_ack` setting.
    #[serde(default = "default_auth_retry", with = "humantime_serde")]
    pub auth_retry: Duration,
    #[serde(default = "default_health_check_interval", with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// Which 307/308 redirects are followed (301/302/303 never are).
    #[serde(default)]
    pub follow_redirects: crate::http::FollowRedirects,
}

fn default_ack_timeout() -> Duration {
    Duration::from_secs(300)
}
fn default_ack_poll_interval() -> Duration {
    Duration::from_secs(10)
}
fn default_concurrency() -> usize {
    4
}
fn default_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_auth_retry() -> Duration {
    Duration::from_secs(30)
}
fn default_health_check_interval() -> Duration {
    Duration::from_secs(30)
}

impl SplunkHecConfig {
    pub(super) fn token_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.token_file.clone(),
            env: self.token_env.clone(),
            credential: self.token_credential.clone(),
        }
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        let key = format!("{path}.endpoint");
        if let Some(url) = parse_url(&self.endpoint, &key, problems) {
            if url.path().contains("/services/collector") {
                problems.push(
                    &key,
                    "give the collector's base URL (e.g. https://splunk.example:8088); \
                     the sink adds /services/collector/event itself",
                );
            }
            if url.query().is_some() || url.fragment().is_some() {
                problems.push(&key, "must not have a query or fragment");
            }
        }
        let keys = self.token_keys();
        let required = "required: the HEC token (token_file, token_env or token_credential)";
        if let Some(token) = keys.validate("token", path, Some(required), problems) {
            if auth_value(&token).is_none() {
                let key = keys
                    .source("token")
                    .ok()
                    .flatten()
                    .map_or_else(|| "token_file".to_string(), |s| s.key("token"));
                problems.push(
                    format!("{path}.{key}"),
                    "the token holds characters an HTTP header cannot carry",
                );
            }
        }
        for (k, v) in [
            ("host", &self.host),
            ("source", &self.source),
            ("sourcetype", &self.sourcetype),
            ("index", &self.index),
        ] {
            if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                problems.push(
                    format!("{path}.{k}"),
                    "must not be empty (leave it out for the token's default)",
                );
            }
        }
        for (name, field_path) in &self.fields {
            if name.trim().is_empty() {
                problems.push(format!("{path}.fields"), "a field name is empty");
            }
            if let Err(e) = FieldPath::parse(field_path) {
                problems.push(format!("{path}.fields.{name}"), e);
            }
        }
        for (k, d) in [
            ("ack_timeout", self.ack_timeout),
            ("ack_poll_interval", self.ack_poll_interval),
            ("timeout", self.timeout),
            ("auth_retry", self.auth_retry),
            ("health_check_interval", self.health_check_interval),
        ] {
            require_positive(d, &format!("{path}.{k}"), problems);
        }
        if self.indexer_ack && self.ack_poll_interval >= self.ack_timeout {
            problems.push(
                format!("{path}.ack_poll_interval"),
                "must be shorter than ack_timeout, or no ack is ever asked for in time",
            );
        }
        if !(1..=256).contains(&self.concurrency) {
            problems.push(format!("{path}.concurrency"), "must be between 1 and 256");
        }
    }
}

/// `Splunk <token>` as a header value marked sensitive (never printed).
pub(super) fn auth_value(token: &Secret) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Splunk {}", token.expose())).ok()?;
    v.set_sensitive(true);
    Some(v)
}
