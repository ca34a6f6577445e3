//! When an API says "slow down", and how long to wait: statuses, headers,
//! and a pause persisted across restarts.

use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use reqwest::header::HeaderMap;
use serde::Deserialize;
use tracing::warn;

use crate::config::Problems;
use crate::serde_defaults::serde_defaults;

/// `rate_limit` (http_pull): what an answer says about the API's limit.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// Statuses that mean "rate limited" (the answer is not an error).
    #[serde(default = "default_rl_statuses")]
    pub status_codes: Vec<u16>,
    /// Honour `Retry-After` (seconds or an HTTP date).
    #[serde(default = "crate::config::yes")]
    pub retry_after: bool,
    /// Header with the time the limit resets: epoch seconds, or seconds from
    /// now when small (`reset_format`).
    #[serde(default = "default_reset_header")]
    pub reset_header: Option<String>,
    #[serde(default)]
    pub reset_format: ResetFormat,
    /// Header with the requests left; 0 on a successful answer pauses the
    /// source until the reset instead of provoking a refusal.
    #[serde(default = "default_remaining_header")]
    pub remaining_header: Option<String>,
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        RateLimitConfig {
            status_codes: default_rl_statuses(),
            retry_after: true,
            reset_header: default_reset_header(),
            reset_format: ResetFormat::default(),
            remaining_header: default_remaining_header(),
        }
    }
}

serde_defaults! {
    fn default_rl_statuses() -> Vec<u16> = vec![429];
    fn default_reset_header() -> Option<String> = Some("X-RateLimit-Reset".into());
    fn default_remaining_header() -> Option<String> = Some("X-RateLimit-Remaining".into());
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ResetFormat {
    /// Epoch seconds when the value is larger than a year of seconds, else
    /// seconds from now.
    #[default]
    Auto,
    /// Epoch seconds.
    Unix,
    /// Seconds from now.
    Seconds,
}

impl RateLimitConfig {
    /// 429 and `Retry-After` only: for APIs that document no other signal.
    pub fn retry_after_only() -> Self {
        RateLimitConfig {
            reset_header: None,
            remaining_header: None,
            ..Default::default()
        }
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        for (i, s) in self.status_codes.iter().enumerate() {
            if !(400..=599).contains(s) {
                problems.push(
                    format!("{path}.rate_limit.status_codes[{i}]"),
                    format!("{s} is not an HTTP error status (400..599)"),
                );
            }
            if *s == 401 || *s == 403 {
                problems.push(
                    format!("{path}.rate_limit.status_codes[{i}]"),
                    format!("{s} means the token was refused; it cannot be a rate-limit signal"),
                );
            }
        }
        for (key, v) in [
            ("reset_header", &self.reset_header),
            ("remaining_header", &self.remaining_header),
        ] {
            if let Some(h) = v {
                if reqwest::header::HeaderName::from_bytes(h.as_bytes()).is_err() {
                    problems.push(
                        format!("{path}.rate_limit.{key}"),
                        format!("\"{h}\" is not a header name"),
                    );
                }
            }
        }
    }

    /// The wait the headers of an answer ask for, if any.
    pub(super) fn announced_wait(&self, headers: &HeaderMap) -> Option<Duration> {
        if self.retry_after {
            if let Some(d) = crate::http::retry_after(headers) {
                return Some(d);
            }
        }
        self.reset_wait(headers)
    }

    pub(super) fn reset_wait(&self, headers: &HeaderMap) -> Option<Duration> {
        let name = self.reset_header.as_deref()?;
        let raw = headers.get(name)?.to_str().ok()?.trim();
        let value: f64 = raw.parse().ok()?;
        if !value.is_finite() || value < 0.0 {
            return None;
        }
        let epoch = match self.reset_format {
            ResetFormat::Unix => true,
            ResetFormat::Seconds => false,
            ResetFormat::Auto => value > 366.0 * 86400.0,
        };
        if epoch {
            let now = Utc::now().timestamp_millis() as f64 / 1000.0;
            Some(Duration::from_secs_f64((value - now).max(0.0)))
        } else {
            Some(Duration::from_secs_f64(value.min(86400.0)))
        }
    }

    pub(super) fn exhausted(&self, headers: &HeaderMap) -> bool {
        let Some(name) = self.remaining_header.as_deref() else {
            return false;
        };
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<f64>().ok())
            .is_some_and(|n| n <= 0.0)
    }
}

/// Persists the end of a rate-limit pause (wall clock), so a daemon
/// restarted inside the pause does not ask again early. Best effort: a
/// failure is logged and the in-memory pause still holds.
pub(super) fn write_cooldown(path: &Path, pause: Duration) {
    let until = Utc::now() + chrono::Duration::from_std(pause).unwrap_or_default();
    let tmp = path.with_extension("tmp");
    let written = path
        .parent()
        .map_or(Ok(()), std::fs::create_dir_all)
        .and_then(|_| std::fs::write(&tmp, until.to_rfc3339()))
        .and_then(|_| std::fs::rename(&tmp, path));
    if let Err(e) = written {
        warn!(file = %path.display(), error = %e, "cannot persist the rate-limit pause");
    }
}

/// The rest of a persisted pause, if it has not ended yet.
pub(super) fn read_cooldown(path: &Path) -> Option<Instant> {
    let text = std::fs::read_to_string(path).ok()?;
    let until = DateTime::parse_from_rfc3339(text.trim())
        .ok()?
        .with_timezone(&Utc);
    let left = (until - Utc::now()).to_std().ok()?;
    Some(Instant::now() + left)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn rate_limit_waits_from_headers() {
        let rl = RateLimitConfig::default();
        let mut h = HeaderMap::new();
        assert_eq!(rl.announced_wait(&h), None);
        h.insert("x-ratelimit-reset", HeaderValue::from_static("30"));
        assert_eq!(rl.announced_wait(&h), Some(Duration::from_secs(30)));
        let at = Utc::now().timestamp() + 90;
        h.insert(
            "x-ratelimit-reset",
            HeaderValue::from_str(&at.to_string()).unwrap(),
        );
        let d = rl.announced_wait(&h).unwrap();
        assert!(
            d > Duration::from_secs(85) && d <= Duration::from_secs(90),
            "{d:?}"
        );
        h.insert("retry-after", HeaderValue::from_static("7"));
        assert_eq!(rl.announced_wait(&h), Some(Duration::from_secs(7)));
        assert!(!rl.exhausted(&h));
        h.insert("x-ratelimit-remaining", HeaderValue::from_static("0"));
        assert!(rl.exhausted(&h));
        let only = RateLimitConfig::retry_after_only();
        assert!(!only.exhausted(&h), "no remaining header configured");
        h.remove("retry-after");
        assert_eq!(only.announced_wait(&h), None, "reset header ignored");
    }

    #[test]
    fn a_persisted_pause_survives_and_expires() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cooldown").join("src");
        assert!(read_cooldown(&file).is_none());
        write_cooldown(&file, Duration::from_secs(60));
        let until = read_cooldown(&file).expect("pause read back");
        assert!(until > Instant::now() + Duration::from_secs(50));
        write_cooldown(&file, Duration::ZERO);
        assert!(read_cooldown(&file).is_none(), "an ended pause is no pause");
    }
}
