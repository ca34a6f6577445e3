//! The keys of a `webhook_in` source and their checks.

use std::net::SocketAddr;
use std::path::PathBuf;

use axum::http::HeaderName;
use serde::Deserialize;

use crate::config::{Problems, TlsConfig};
use crate::secret::SecretKeys;
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

fn default_path() -> String {
    "/".into()
}
fn default_signature_header() -> String {
    "X-Auditrelay-Signature".into()
}
fn default_signature_prefix() -> String {
    "sha256=".into()
}
fn default_max_body_bytes() -> usize {
    10 * 1024 * 1024
}
fn default_batch_size() -> usize {
    500
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_spool_bytes() -> u64 {
    1024 * 1024 * 1024
}
fn default_id_path() -> Paths {
    Paths::of(&["id", "event_id", "request_id"])
}
fn default_time_path() -> Paths {
    Paths::of(&["timestamp", "created_at", "time"])
}
fn default_type_path() -> Paths {
    Paths::of(&["event_type", "action", "type"])
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

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if let Err(e) = self.listen.parse::<SocketAddr>() {
            problems.push(
                format!("{path}.listen"),
                format!("not an address:port: {e}"),
            );
        }
        if !self.path.starts_with('/') {
            problems.push(format!("{path}.path"), "must start with /");
        }
        let mut any_auth = false;
        for (stem, keys) in [
            ("token", self.token_keys()),
            ("hmac_secret", self.hmac_keys()),
        ] {
            match keys.source(stem) {
                Ok(Some(src)) => {
                    any_auth = true;
                    if let Err(e) = src.load() {
                        problems.push(format!("{path}.{}", src.key(stem)), e);
                    }
                }
                Ok(None) => {}
                Err(e) => problems.push(path, e),
            }
        }
        if !any_auth {
            problems.push(
                format!("{path}.token_file"),
                "a listener must authenticate its senders: set token_file (bearer) and/or hmac_secret_file (body signature), or their _env/_credential forms",
            );
        }
        if HeaderName::from_bytes(self.signature_header.as_bytes()).is_err() {
            problems.push(
                format!("{path}.signature_header"),
                format!("\"{}\" is not a header name", self.signature_header),
            );
        }
        self.tls.validate(path, problems);
        if self.tls.insecure_skip_verify {
            problems.push(
                format!("{path}.tls.insecure_skip_verify"),
                "does not apply to a listener",
            );
        }
        if self.tls.ca_file.is_some() && self.tls.cert_file.is_none() {
            problems.push(
                format!("{path}.tls.ca_file"),
                "client certificates need HTTPS: set tls.cert_file and tls.key_file too",
            );
        }
        if !(1024..=1 << 30).contains(&self.max_body_bytes) {
            problems.push(
                format!("{path}.max_body_bytes"),
                "must be between 1024 and 1073741824",
            );
        }
        if !(1..=100_000).contains(&self.batch_size) {
            problems.push(format!("{path}.batch_size"), "must be between 1 and 100000");
        }
        if self.segment_bytes < 4096 {
            problems.push(format!("{path}.segment_bytes"), "must be at least 4096");
        }
        if self.max_spool_bytes < 2 * self.max_body_bytes as u64 {
            problems.push(
                format!("{path}.max_spool_bytes"),
                "must be at least twice max_body_bytes",
            );
        } else if self.max_spool_bytes < self.segment_bytes + self.max_body_bytes as u64 {
            problems.push(
                format!("{path}.max_spool_bytes"),
                format!(
                    "must be at least segment_bytes + max_body_bytes ({} bytes): a smaller spool \
                     fills before its segment rotates",
                    self.segment_bytes + self.max_body_bytes as u64
                ),
            );
        }
        self.id_path.validate(&format!("{path}.id_path"), problems);
        self.time_path
            .validate(&format!("{path}.time_path"), problems);
        self.type_path
            .validate(&format!("{path}.type_path"), problems);
    }
}

#[cfg(test)]
mod tests {
    use figment::providers::{Format, Toml};
    use figment::Figment;

    use super::*;
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
