//! The keys of a `quickztna` source and their checks.

use std::time::Duration;

use serde::Deserialize;

use crate::config::Problems;
use crate::source::pull::{PullConfig, PullDefaults, PullKind};

/// Most entries `/api/export` returns (the Loki query's hard limit).
pub const EXPORT_CAP: usize = 10_000;
/// Most entries `/api/audit?mode=recent` returns.
pub const AUDIT_MAX_LIMIT: u32 = 5_000;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Endpoint {
    /// `POST /api/export` (admin token; JSON or CSV; up to 10000 entries).
    #[default]
    Export,
    /// `GET /api/audit?mode=recent` (member token; up to 5000 entries).
    Audit,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Json,
    Csv,
}

/// `[sources.NAME]` with `type = "quickztna"`.
pub type QuickztnaConfig = PullConfig<Quickztna>;

/// The keys of a `quickztna` source besides [`PullCommon`](crate::source::pull::PullCommon).
#[derive(Clone, Debug, Deserialize)]
pub struct Quickztna {
    pub org_id: String,
    #[serde(default)]
    pub endpoint: Endpoint,
    /// Export only: `json` or `csv`.
    #[serde(default)]
    pub format: Format,
    /// Audit only: entries per query (1..=5000).
    #[serde(default = "default_limit")]
    pub limit: u32,
    /// Export only: the most entries an answer holds (the API's hard
    /// limit); an answer this long may be cut.
    #[serde(default = "default_export_cap")]
    pub export_cap: usize,
    /// Most events per batch handed to the sinks.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_export_path")]
    pub export_path: String,
    #[serde(default = "default_audit_path")]
    pub audit_path: String,
    /// Poll into a local journal whatever the sinks do (see [`super::journal`]).
    #[serde(default = "default_journal")]
    pub journal: bool,
    /// Size at which the journal stops taking entries and polling pauses.
    #[serde(default = "default_max_journal_bytes")]
    pub max_journal_bytes: u64,
}

impl PullKind for Quickztna {
    const DEFAULTS: PullDefaults = PullDefaults {
        timeout: Duration::from_secs(120),
        auth_retry: Duration::from_secs(60),
        poll_interval: Duration::from_secs(60),
        overlap: Duration::from_secs(600),
        time_path: &["created_at"],
        type_path: &["action"],
        token_missing: Some("QuickZTNA needs a token (an org admin's for endpoint = \"export\"): set token_file, token_env or token_credential"),
        ..PullDefaults::BASE
    };
}

/// Smallest `max_journal_bytes`: room for a few appends of entries.
pub const MIN_JOURNAL_BYTES: u64 = 64 << 10;

fn default_journal() -> bool {
    true
}
fn default_max_journal_bytes() -> u64 {
    1 << 30
}

fn default_limit() -> u32 {
    AUDIT_MAX_LIMIT
}
fn default_export_cap() -> usize {
    EXPORT_CAP
}
fn default_batch_size() -> usize {
    1000
}
fn default_export_path() -> String {
    "/api/export".into()
}
fn default_audit_path() -> String {
    "/api/audit".into()
}

impl QuickztnaConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        self.validate_common(path, problems);
        if self.org_id.trim().is_empty() {
            problems.push(format!("{path}.org_id"), "must not be empty");
        }
        if self.endpoint == Endpoint::Audit {
            if self.format == Format::Csv {
                problems.push(
                    format!("{path}.format"),
                    "csv is only available with endpoint = \"export\"",
                );
            }
            if !(1..=AUDIT_MAX_LIMIT).contains(&self.limit) {
                problems.push(
                    format!("{path}.limit"),
                    format!(
                        "{} is out of range 1..=5000 (the API's maximum)",
                        self.limit
                    ),
                );
            }
        }
        if !(1..=100_000).contains(&self.batch_size) {
            problems.push(format!("{path}.batch_size"), "must be between 1 and 100000");
        }
        if !(1..=1_000_000).contains(&self.export_cap) {
            problems.push(
                format!("{path}.export_cap"),
                format!("{} is out of range 1..=1000000", self.export_cap),
            );
        }
        if self.common.recent_ids < self.export_cap {
            problems.push(
                format!("{path}.recent_ids"),
                format!(
                    "must be at least export_cap ({}): one full response",
                    self.export_cap
                ),
            );
        }
        for (key, p) in [
            ("export_path", &self.export_path),
            ("audit_path", &self.audit_path),
        ] {
            if !p.starts_with('/') {
                problems.push(format!("{path}.{key}"), "must start with /");
            }
        }
        if self.max_journal_bytes < MIN_JOURNAL_BYTES {
            problems.push(
                format!("{path}.max_journal_bytes"),
                format!(
                    "{} is below the minimum of {MIN_JOURNAL_BYTES} bytes",
                    self.max_journal_bytes
                ),
            );
        }
    }
}
