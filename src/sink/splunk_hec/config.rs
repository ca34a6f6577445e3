//! `[sinks.NAME]` with `type = "splunk_hec"`: keys and their checks.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::HeaderValue;
use serde::Deserialize;

use super::ack_table::PollSchedule;
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
    /// OAuth2 client credentials for HEC behind a gateway: `Authorization:
    /// Bearer <access token>` on every request; the HEC token then optional.
    pub oauth2: Option<crate::oauth2::OAuth2Config>,
    /// With `oauth2`: the header carrying `Splunk <HEC token>` for the
    /// gateway to hand to HEC (none: no HEC token sent).
    pub hec_token_header: Option<String>,
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
    #[serde(default = "crate::config::secs::<300>", with = "humantime_serde")]
    pub ack_timeout: Duration,
    /// The longest wait between two questions about a pending ack (the
    /// wait is a quarter of the ack's age, from `ack_first_poll` up).
    #[serde(default = "crate::config::secs::<10>", with = "humantime_serde")]
    pub ack_poll_interval: Duration,
    /// How soon after a request is accepted its ack is first asked about.
    #[serde(default = "default_ack_first_poll", with = "humantime_serde")]
    pub ack_first_poll: Duration,
    #[serde(default)]
    pub compression: Compression,
    /// Event requests in flight at once for this sink.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    #[serde(default = "crate::config::secs::<30>", with = "humantime_serde")]
    pub timeout: Duration,
    /// Least wait between attempts while HEC refuses the token or the
    /// `indexer_ack` setting.
    #[serde(default = "crate::config::secs::<30>", with = "humantime_serde")]
    pub auth_retry: Duration,
    #[serde(default = "crate::config::secs::<30>", with = "humantime_serde")]
    pub health_check_interval: Duration,
    /// Which 307/308 redirects are followed (301/302/303 never are).
    #[serde(default)]
    pub follow_redirects: crate::http::FollowRedirects,
}

crate::serde_defaults::serde_defaults! {
    fn default_ack_first_poll() -> Duration = Duration::from_millis(100);
    /// As `webhook`: a kill re-sends at most the one request HEC may hold
    /// unanswered (with acks, those awaiting theirs are asked about).
    fn default_concurrency() -> usize = 1;
}

impl SplunkHecConfig {
    /// When acks are asked about; a first poll above the ceiling is the
    /// ceiling.
    pub(super) fn poll_schedule(&self) -> PollSchedule {
        PollSchedule {
            first: self.ack_first_poll.min(self.ack_poll_interval),
            ceiling: self.ack_poll_interval,
        }
    }

    pub(super) fn token_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.token_file.clone(),
            env: self.token_env.clone(),
            credential: self.token_credential.clone(),
        }
    }
}

/// `Splunk <token>` as a header value marked sensitive (never printed).
pub(super) fn auth_value(token: &Secret) -> Option<HeaderValue> {
    let mut v = HeaderValue::from_str(&format!("Splunk {}", token.expose())).ok()?;
    v.set_sensitive(true);
    Some(v)
}
