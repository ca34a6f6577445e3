//! The keys of a `quickztna` source and their checks.

use serde::Deserialize;

use crate::serde_defaults::serde_defaults;
use crate::source::pull::PullConfig;

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
    #[serde(default = "crate::config::yes")]
    pub journal: bool,
    /// Size at which the journal stops taking entries and polling pauses.
    #[serde(default = "default_max_journal_bytes")]
    pub max_journal_bytes: u64,
}

/// Smallest `max_journal_bytes`: room for a few appends of entries.
pub const MIN_JOURNAL_BYTES: u64 = 64 << 10;

serde_defaults! {
    fn default_max_journal_bytes() -> u64 = 1 << 30;
    fn default_limit() -> u32 = AUDIT_MAX_LIMIT;
    fn default_export_cap() -> usize = EXPORT_CAP;
    fn default_batch_size() -> usize = 1000;
    fn default_export_path() -> String = "/api/export".into();
    fn default_audit_path() -> String = "/api/audit".into();
}
