//! The keys of the `veza` source, and the page keys the `veza_list`
//! source shares with it.

use serde::Deserialize;

use crate::config::Problems;
use crate::event::FieldPath;
use crate::serde_defaults::serde_defaults;
use crate::source::pull::PullConfig;

/// `[sources.NAME]` with `type = "veza"`.
pub type VezaConfig = PullConfig<Veza>;

/// The keys of a `veza` source besides [`crate::source::pull::PullCommon`].
#[derive(Clone, Debug, Deserialize)]
pub struct Veza {
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    #[serde(default = "default_path")]
    pub path: String,
    /// Query parameter that carries the page token (the docs show both).
    #[serde(default = "default_token_param")]
    pub token_param: String,
    #[serde(default = "default_items_path")]
    pub items_path: String,
    #[serde(default = "default_next_token_path")]
    pub next_token_path: String,
}

/// What `validate` says when a Veza source has no token.
pub const TOKEN_MISSING: &str =
    "the Veza API needs a token: set token_file, token_env or token_credential";

/// Veza's field names, for the export and the list endpoint alike.
pub const ID_PATH: &[&str] = &["request_id", "id"];
pub const TYPE_PATH: &[&str] = &["type", "event_type", "intent", "endpoint", "action"];

serde_defaults! {
    pub fn default_page_size() -> u32 = 1000;
    fn default_path() -> String = "/api/preview/system/audit/export".into();
    pub fn default_token_param() -> String = "page_token".into();
    pub fn default_items_path() -> String = "values".into();
    pub fn default_next_token_path() -> String = "next_page_token".into();
}

/// Checks the page keys both Veza endpoints take: `page_size`, `path`,
/// and `token_param`, `items_path`, `next_token_path` (in `names`).
pub fn validate_page_keys(
    path: &str,
    page_size: u32,
    rel: &str,
    names: [&String; 3],
    problems: &mut Problems,
) {
    if !(1..=10_000).contains(&page_size) {
        problems.push(
            format!("{path}.page_size"),
            format!("{page_size} is out of range 1..=10000 (Veza's maximum)"),
        );
    }
    if !rel.starts_with('/') {
        problems.push(format!("{path}.path"), "must start with /");
    }
    let [token_param, items_path, next_token_path] = names;
    for (key, value) in [
        ("token_param", token_param),
        ("items_path", items_path),
        ("next_token_path", next_token_path),
    ] {
        if value.is_empty() {
            problems.push(format!("{path}.{key}"), "must not be empty");
        }
    }
    for (key, value) in [
        ("items_path", items_path),
        ("next_token_path", next_token_path),
    ] {
        FieldPath::check(value, &format!("{path}.{key}"), problems);
    }
}
