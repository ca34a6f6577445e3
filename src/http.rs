//! The HTTP client every HTTP source and sink uses: rustls, the shared
//! `tls` keys, a request timeout, and a user agent naming auditrelay.

use std::time::Duration;

use crate::config::TlsConfig;

/// Builds a client for the component at `path` (used in error messages).
pub fn client(tls: &TlsConfig, timeout: Duration, path: &str) -> anyhow::Result<reqwest::Client> {
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("auditrelay/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(50));
    if let Some(ca) = &tls.ca_file {
        let pem = std::fs::read(ca).map_err(|e| {
            anyhow::anyhow!("{path}.tls.ca_file: cannot read {}: {e}", ca.display())
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            anyhow::anyhow!(
                "{path}.tls.ca_file: {} holds no usable PEM certificate: {e}",
                ca.display()
            )
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let mut pem = std::fs::read(cert).map_err(|e| {
            anyhow::anyhow!("{path}.tls.cert_file: cannot read {}: {e}", cert.display())
        })?;
        let key_pem = std::fs::read(key).map_err(|e| {
            anyhow::anyhow!("{path}.tls.key_file: cannot read {}: {e}", key.display())
        })?;
        pem.push(b'\n');
        pem.extend_from_slice(&key_pem);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            anyhow::anyhow!("{path}.tls: client certificate/key are not usable PEM: {e}")
        })?;
        builder = builder.identity(identity);
    }
    if tls.insecure_skip_verify {
        tracing::warn!(
            component = path,
            "TLS certificate verification is OFF (tls.insecure_skip_verify = true): \
             anyone on the network path can read and alter this traffic"
        );
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| anyhow::anyhow!("{path}: cannot build HTTP client: {e}"))
}

/// A reqwest error with its causes, without the URL: URLs can carry
/// secrets (webhook paths, query tokens) and must not reach a log line.
pub fn describe_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    let mut out = e.to_string();
    let mut cur = std::error::Error::source(&e);
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    out
}

/// Parses `Retry-After` (delay seconds or an HTTP date) into a wait from now.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(115) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }
}
