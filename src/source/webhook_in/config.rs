//! The keys of a `webhook_in` source (checked by its `SourceType` impl).

use std::path::PathBuf;

use serde::Deserialize;

use crate::config::TlsConfig;
use crate::secret::SecretKeys;
use crate::serde_defaults::serde_defaults;
use crate::source::Paths;

/// `[sources.NAME]` with `type = "webhook_in"`.
#[derive(Clone, Debug, Deserialize)]
pub struct WebhookInConfig {
    /// Address to listen on, e.g. `0.0.0.0:8443`.
    pub listen: String,
    /// Path events are POSTed to.
    #[serde(default = "default_path")]
    pub path: String,
    /// Bearer token senders must present (`Authorization: Bearer …`).
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    /// Key of the HMAC-SHA256 signature of the body senders must present.
    pub hmac_secret_file: Option<PathBuf>,
    pub hmac_secret_env: Option<String>,
    pub hmac_secret_credential: Option<String>,
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// Text before the hex digest in the signature header.
    #[serde(default = "default_signature_prefix")]
    pub signature_prefix: String,
    /// `cert_file` + `key_file` serve HTTPS; `ca_file` also requires client
    /// certificates signed by it (mTLS).
    #[serde(default)]
    pub tls: TlsConfig,
    /// Largest request body, on the wire and after gzip decoding.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most events per batch drained from the spool.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Beyond this the listener answers 503 (Retry-After) until the sinks
    /// catch up: a bounded disk instead of a full one.
    #[serde(default = "default_max_spool_bytes")]
    pub max_spool_bytes: u64,
    #[serde(default = "default_id_path")]
    pub id_path: Paths,
    #[serde(default = "default_time_path")]
    pub time_path: Paths,
    #[serde(default = "default_type_path")]
    pub type_path: Paths,
}

serde_defaults! {
    fn default_path() -> String = "/".into();
    fn default_signature_header() -> String = "X-Auditrelay-Signature".into();
    fn default_signature_prefix() -> String = "sha256=".into();
    fn default_max_body_bytes() -> usize = 10 * 1024 * 1024;
    fn default_batch_size() -> usize = 500;
    fn default_segment_bytes() -> u64 = 64 * 1024 * 1024;
    fn default_max_spool_bytes() -> u64 = 1024 * 1024 * 1024;
    fn default_id_path() -> Paths = Paths::of(&["id", "event_id", "request_id"]);
    fn default_time_path() -> Paths = Paths::of(&["timestamp", "created_at", "time"]);
    fn default_type_path() -> Paths = Paths::of(&["event_type", "action", "type"]);
}

impl WebhookInConfig {
    pub(super) fn token_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.token_file.clone(),
            env: self.token_env.clone(),
            credential: self.token_credential.clone(),
        }
    }

    pub(super) fn hmac_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.hmac_secret_file.clone(),
            env: self.hmac_secret_env.clone(),
            credential: self.hmac_secret_credential.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::{Format, Toml};
    use figment::Figment;

    use super::*;
    use crate::config::Problems;
    use crate::source::SourceType;

    #[test]
    fn a_spool_smaller_than_a_segment_plus_a_body_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret").unwrap();
        let problems = |spool: &str| {
            let fig = Figment::new().merge(Toml::string(&format!(
                "[sources.push]\ntype = \"webhook_in\"\nlisten = \"127.0.0.1:0\"\n\
                 token_file = \"{}\"\n\
                 max_body_bytes = 1048576\nsegment_bytes = 4194304\nmax_spool_bytes = {spool}\n",
                token.display()
            )));
            let cfg =
                WebhookInConfig::read(&fig, "sources.push").unwrap_or_else(|e| panic!("{e:?}"));
            let mut problems = Problems::default();
            SourceType::validate(&cfg, "sources.push", &mut problems);
            problems.into_vec()
        };
        let found = problems("4194304");
        let p = found
            .iter()
            .find(|p| p.path == "sources.push.max_spool_bytes")
            .unwrap_or_else(|| panic!("{found:?}"));
        assert!(
            p.message.contains("segment_bytes + max_body_bytes"),
            "{}",
            p.message
        );
        assert_eq!(problems("5242880"), vec![]);
    }
}
