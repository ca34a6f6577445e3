//! The keys every sink shares (`inputs`, `filter`, `batch`, `retry`, `tls`,
//! dead-letter and spool bounds), read beside the keys of its type.

use std::time::Duration;

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::Deserialize;

use super::dead_letter;
use crate::config::{Problems, RetryConfig, TlsConfig};
use crate::event::Event;

/// Keys shared by every sink type.
#[derive(Clone, Debug, Deserialize)]
pub struct SinkCommon {
    /// Names of the sources whose events this sink receives.
    pub inputs: Vec<String>,
    #[serde(default)]
    pub filter: FilterConfig,
    #[serde(default)]
    pub batch: BatchConfig,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub tls: TlsConfig,
    /// Cap of this sink's dead-letter file; when full the sink stops
    /// confirming (nothing is dropped) until it is replayed or moved.
    #[serde(default = "default_dead_letter_max_bytes")]
    pub dead_letter_max_bytes: u64,
    /// What the sources feeding this sink do while it does not confirm:
    /// wait for it (`block`), or park its batches on disk (`spool`).
    #[serde(default)]
    pub on_unavailable: OnUnavailable,
    /// How long a delivery may go unconfirmed before its batch is spooled.
    #[serde(default = "crate::config::secs::<30>", with = "humantime_serde")]
    pub spool_after: Duration,
    /// Cap of the on-disk spool; when full the sources wait, as with `block`.
    #[serde(default = "default_spool_max_bytes")]
    pub spool_max_bytes: u64,
    /// What each event is turned into before encoding: itself (`raw`,
    /// byte for byte) or an OCSF event (`ocsf`).
    #[serde(default)]
    pub schema: Schema,
    /// Where an OCSF event keeps the original (`schema = "ocsf"` only).
    #[serde(default)]
    pub ocsf_raw: OcsfRaw,
    /// Dotted paths whose values are replaced before the event leaves.
    #[serde(default)]
    pub redact: Vec<String>,
    /// `mask` (`"[REDACTED]"`) or `hmac` (HMAC-SHA256 hex, for correlation).
    #[serde(default)]
    pub redact_mode: RedactMode,
    /// The HMAC key of `redact_mode = "hmac"` (a secret).
    #[serde(default)]
    pub redact_key_file: Option<PathBuf>,
    /// Dotted paths removed before the event leaves.
    #[serde(default)]
    pub drop_fields: Vec<String>,
    /// Static fields added to every event (tenant, environment).
    #[serde(default)]
    pub add_fields: BTreeMap<String, serde_json::Value>,
}

impl SinkCommon {
    /// Whether any key asks for events to be reshaped; when none does the
    /// sink is handed the events as received, at no cost.
    pub fn shapes_events(&self) -> bool {
        self.schema != Schema::Raw
            || !self.redact.is_empty()
            || !self.drop_fields.is_empty()
            || !self.add_fields.is_empty()
    }
}

/// `sinks.NAME.schema`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Schema {
    /// The event as the API sent it.
    #[default]
    Raw,
    /// The event mapped by its source's OCSF mapping.
    Ocsf,
}

/// `sinks.NAME.ocsf_raw`: where the original goes in an OCSF event.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OcsfRaw {
    /// `raw_data`, the original's JSON text.
    #[default]
    RawData,
    /// `unmapped`, the original as an object.
    Unmapped,
    /// Not kept.
    None,
}

/// `sinks.NAME.redact_mode`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RedactMode {
    #[default]
    Mask,
    Hmac,
}

crate::serde_defaults::serde_defaults! {
    fn default_dead_letter_max_bytes() -> u64 = dead_letter::DEFAULT_MAX_BYTES;
    fn default_spool_max_bytes() -> u64 = 1 << 30;
}

/// `sinks.NAME.on_unavailable`.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum OnUnavailable {
    /// The source pauses and its checkpoint waits for this sink: nothing
    /// leaves the source's API until every sink has it.
    #[default]
    Block,
    /// The sink's batches go to `state_dir/sink_spool/NAME/` and are
    /// delivered from there when it is back; the other sinks keep flowing.
    Spool,
}

/// Include/exclude on the event type, with `*` wildcards (`auth.*`).
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FilterConfig {
    #[serde(default)]
    pub include: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
}

impl FilterConfig {
    pub fn is_empty(&self) -> bool {
        self.include.is_empty() && self.exclude.is_empty()
    }

    /// Whether an event of this type goes to the sink. Events without a type
    /// pass only when there is no include list.
    pub fn accepts(&self, kind: Option<&str>) -> bool {
        let included = self.include.is_empty()
            || kind.is_some_and(|k| self.include.iter().any(|p| glob(p, k)));
        let excluded = kind.is_some_and(|k| self.exclude.iter().any(|p| glob(p, k)));
        included && !excluded
    }
}

/// `*` matches any run of characters; everything else matches itself.
fn glob(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for mid in &parts[1..parts.len() - 1] {
        match rest.find(mid) {
            Some(i) => rest = &rest[i + mid.len()..],
            None => return false,
        }
    }
    true
}

/// How a sink cuts a page into requests.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    pub max_events: Option<usize>,
    pub max_bytes: Option<usize>,
    /// Accepted for every sink; pages are batches already, so this only
    /// bounds how long a sink that merges pages may wait.
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
}

impl BatchConfig {
    /// Cuts `events` into runs of at most `max_events` events and about
    /// `max_bytes` bytes (a single larger event is a run of its own).
    pub fn chunks<'a>(
        &self,
        events: &'a [Event],
        default_events: usize,
        default_bytes: usize,
    ) -> Vec<&'a [Event]> {
        let max_events = self.max_events.unwrap_or(default_events).max(1);
        let max_bytes = self.max_bytes.unwrap_or(default_bytes).max(1);
        let mut out = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, e) in events.iter().enumerate() {
            let size = e.raw.len() + 1;
            if i > start && (i - start >= max_events || bytes + size > max_bytes) {
                out.push(&events[start..i]);
                start = i;
                bytes = 0;
            }
            bytes += size;
        }
        if start < events.len() {
            out.push(&events[start..]);
        }
        out
    }

    pub(super) fn validate(&self, path: &str, problems: &mut Problems) {
        if self.max_events == Some(0) {
            problems.push(format!("{path}.batch.max_events"), "must be at least 1");
        }
        if self.max_bytes == Some(0) {
            problems.push(format!("{path}.batch.max_bytes"), "must be at least 1");
        }
    }
}

impl SinkCommon {
    /// The token client of a sink's `oauth2` table (none without one),
    /// speaking through the sink's `tls` keys and `retry` bounds.
    pub fn oauth2_client(
        &self,
        table: Option<&crate::oauth2::OAuth2Config>,
        path: &str,
        health: &crate::health::Health,
        timeouts: (Duration, Duration),
    ) -> anyhow::Result<Option<crate::oauth2::TokenClient>> {
        let Some(table) = table else {
            return Ok(None);
        };
        let (timeout, auth_retry) = timeouts;
        let options = crate::oauth2::TokenClientOptions {
            component: path.to_owned(),
            http: crate::http::client(&self.tls, timeout, path)?,
            health: Some(health.clone()),
            retry: self.retry,
            auth_retry,
        };
        crate::oauth2::TokenClient::new(table.clone(), options).map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn globs() {
        assert!(glob("auth.*", "auth.login"));
        assert!(!glob("auth.*", "user.auth.login"));
        assert!(glob("*Delete*", "/api.UserService/DeleteUser"));
        assert!(glob("a*b*c", "a-b-c"));
        assert!(!glob("a*b*c", "a-c-b"));
        assert!(glob("exact", "exact"));
        assert!(!glob("ab*ba", "aba"));
    }

    #[test]
    fn filter_include_exclude() {
        let f = FilterConfig {
            include: vec!["auth.*".into()],
            exclude: vec!["auth.debug".into()],
        };
        assert!(f.accepts(Some("auth.login")));
        assert!(!f.accepts(Some("auth.debug")));
        assert!(!f.accepts(None));
        assert!(FilterConfig::default().accepts(None));
    }

    #[test]
    fn chunks_respect_both_limits() {
        let ev = |n: usize| Event {
            raw: Bytes::from(vec![b'x'; n]),
            id: None,
            time: None,
            kind: None,
        };
        let events: Vec<Event> = vec![ev(10), ev(10), ev(10), ev(100), ev(10)];
        let b = BatchConfig {
            max_events: Some(2),
            max_bytes: Some(40),
            timeout: None,
        };
        let sizes: Vec<usize> = b.chunks(&events, 0, 0).iter().map(|c| c.len()).collect();
        assert_eq!(sizes, vec![2, 1, 1, 1]);
        assert!(b.chunks(&[], 1, 1).is_empty());
    }
}
