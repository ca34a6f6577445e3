//! Who may push: a bearer token and/or an HMAC-SHA256 signature of the
//! body, both compared in constant time. A secret is re-read when a
//! comparison fails, so a rotated one is picked up without a reload.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::http::{HeaderMap, HeaderName};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tracing::{info, warn};

use super::config::WebhookInConfig;
use crate::secret::{Secret, SecretKeys, SecretSource};

/// The secrets a request is checked against, and where its signature is.
pub(super) struct Auth {
    bearer: Option<Keyed>,
    hmac: Option<Keyed>,
    signature_header: HeaderName,
    /// As configured, for messages (header names are lower-cased).
    signature_header_text: String,
    signature_prefix: String,
}

impl Auth {
    /// Loads the configured secrets of the source at `path`
    /// (`sources.NAME`); at least one is required.
    pub(super) fn load(cfg: &WebhookInConfig, path: &str) -> anyhow::Result<Auth> {
        let keyed = |stem: &str, keys: SecretKeys| -> anyhow::Result<Option<Keyed>> {
            match keys
                .source(stem)
                .map_err(|e| anyhow::anyhow!("{path}: {e}"))?
            {
                Some(src) => Ok(Some(Keyed::load(src, &format!("{path}.{stem}_file"))?)),
                None => Ok(None),
            }
        };
        let bearer = keyed("token", cfg.token_keys())?;
        let hmac = keyed("hmac_secret", cfg.hmac_keys())?;
        if bearer.is_none() && hmac.is_none() {
            anyhow::bail!("{path}: set token_file and/or hmac_secret_file");
        }
        let signature_header = HeaderName::from_bytes(cfg.signature_header.as_bytes())
            .map_err(|e| anyhow::anyhow!("{path}.signature_header: {e}"))?;
        Ok(Auth {
            bearer,
            hmac,
            signature_header,
            signature_header_text: cfg.signature_header.clone(),
            signature_prefix: cfg.signature_prefix.clone(),
        })
    }

    pub(super) fn bearer_ok(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(keyed) = &self.bearer else {
            return Ok(());
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or("missing Authorization: Bearer <token>")?;
        if same(given.as_bytes(), keyed.current().expose().as_bytes()) {
            return Ok(());
        }
        match keyed.reread() {
            Some(new) if same(given.as_bytes(), new.expose().as_bytes()) => Ok(()),
            _ => Err("the bearer token is not the one configured".into()),
        }
    }

    pub(super) fn signature_ok(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
        let Some(keyed) = &self.hmac else {
            return Ok(());
        };
        let header = self.signature_header_text.as_str();
        let given = headers
            .get(&self.signature_header)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("missing {header} header"))?
            .trim();
        let hex_digest = given.strip_prefix(&self.signature_prefix).unwrap_or(given);
        let digest = hex::decode(hex_digest)
            .map_err(|_| format!("{header} is not {}<hex digest>", self.signature_prefix))?;
        let verify = |key: &Secret| {
            Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
                .map(|mut mac| {
                    mac.update(body);
                    mac.verify_slice(&digest).is_ok()
                })
                .unwrap_or(false)
        };
        if verify(&keyed.current()) {
            return Ok(());
        }
        match keyed.reread() {
            Some(new) if verify(&new) => Ok(()),
            _ => Err(format!(
                "{header} does not match the body (HMAC-SHA256 with the configured key)"
            )),
        }
    }
}

/// A secret compared against what senders present, re-read (at most once
/// a second) when a comparison fails, so a rotated secret is picked up.
struct Keyed {
    src: SecretSource,
    value: Mutex<(Secret, Instant)>,
}

impl Keyed {
    fn load(src: SecretSource, path: &str) -> anyhow::Result<Keyed> {
        let value = src.load().map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        Ok(Keyed {
            src,
            value: Mutex::new((value, Instant::now())),
        })
    }

    fn current(&self) -> Secret {
        self.value
            .lock()
            .map(|v| v.0.clone())
            .unwrap_or_else(|p| p.into_inner().0.clone())
    }

    /// The secret re-read from its source when it changed since.
    fn reread(&self) -> Option<Secret> {
        let mut v = self.value.lock().unwrap_or_else(|p| p.into_inner());
        if v.1.elapsed() < Duration::from_secs(1) {
            return None;
        }
        v.1 = Instant::now();
        match self.src.load() {
            Ok(new) if new != v.0 => {
                info!(from = %self.src.describe(), "webhook_in secret changed; using the new one");
                v.0 = new.clone();
                Some(new)
            }
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, "cannot re-read the webhook_in secret");
                None
            }
        }
    }
}

/// Constant-time equality of two byte strings (of any lengths: the digests
/// compared have the same length, so timing reveals neither).
fn same(a: &[u8], b: &[u8]) -> bool {
    bool::from(Sha256::digest(a).ct_eq(&Sha256::digest(b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_compare_in_constant_time_whatever_the_length() {
        assert!(same(b"token", b"token"));
        assert!(!same(b"token", b"tokex"));
        assert!(!same(b"token", b"token-longer"));
    }
}
