//! The `oauth2` table of an HTTP source or sink: where the token endpoint
//! is, who the client is, and how it proves it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{parse_url, require_positive, Problems};
use crate::secret::{SecretKeys, SecretSource};

/// How the client authenticates at the token endpoint.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `Authorization: Basic` with the form-encoded id and secret
    /// (RFC 6749 §2.3.1), what every compliant server accepts.
    #[default]
    Basic,
    /// `client_id` and `client_secret` as form fields of the body.
    Body,
    /// Every field as a JSON object, as some machine-account endpoints want.
    Json,
}

/// `[sources.NAME.oauth2]` / `[sinks.NAME.oauth2]`.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    pub token_url: String,
    pub client_id: String,
    pub client_secret_file: Option<PathBuf>,
    pub client_secret_env: Option<String>,
    pub client_secret_credential: Option<String>,
    /// Sent space-separated as `scope`; none: the server's default.
    #[serde(default)]
    pub scopes: Vec<String>,
    pub audience: Option<String>,
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// More fields of the token request (`resource`, `tenant`…).
    #[serde(default)]
    pub extra_params: BTreeMap<String, String>,
    /// How long before `expires_in` runs out a token is replaced (at most
    /// half its lifetime, so short-lived tokens are still used).
    #[serde(default = "default_refresh_margin", with = "humantime_serde")]
    pub refresh_margin: Duration,
}

fn default_refresh_margin() -> Duration {
    Duration::from_secs(60)
}

/// Request fields the client sets itself: an `extra_params` entry may not
/// override them.
const RESERVED: &[&str] = &[
    "grant_type",
    "client_id",
    "client_secret",
    "scope",
    "audience",
];

impl OAuth2Config {
    pub fn secret_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.client_secret_file.clone(),
            env: self.client_secret_env.clone(),
            credential: self.client_secret_credential.clone(),
        }
    }

    /// Where the client secret is; `path` is the table's key path.
    pub fn secret_source(&self, path: &str) -> anyhow::Result<SecretSource> {
        self.secret_keys()
            .source("client_secret")
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?
            .ok_or_else(|| anyhow::anyhow!("{path}.client_secret_file: required"))
    }

    /// Reports what serde accepts but a token request cannot use; `path`
    /// is the table's key path (`sources.zaita.oauth2`).
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        parse_url(&self.token_url, &format!("{path}.token_url"), problems);
        if self.client_id.trim().is_empty() {
            problems.push(format!("{path}.client_id"), "must not be empty");
        }
        self.secret_keys().validate(
            "client_secret",
            path,
            Some("required: the client secret (client_secret_file, client_secret_env or client_secret_credential)"),
            problems,
        );
        for (i, scope) in self.scopes.iter().enumerate() {
            if scope.is_empty() || scope.contains(char::is_whitespace) {
                problems.push(
                    format!("{path}.scopes[{i}]"),
                    "a scope is one non-empty word without spaces",
                );
            }
        }
        if self.audience.as_deref().is_some_and(str::is_empty) {
            problems.push(format!("{path}.audience"), "must not be empty when set");
        }
        for key in self.extra_params.keys() {
            if RESERVED.contains(&key.as_str()) {
                problems.push(
                    format!("{path}.extra_params.{key}"),
                    format!(
                        "set by auditrelay itself (reserved: {}); use the key of its own",
                        RESERVED.join(", ")
                    ),
                );
            }
        }
        require_positive(
            self.refresh_margin,
            &format!("{path}.refresh_margin"),
            problems,
        );
    }
}

/// The check every component with both a static token and an `oauth2`
/// table runs: one of them, not both. `token` holds the component's
/// `token_*` keys; `path` is the component's key path.
pub fn validate_exclusive(
    oauth2: Option<&OAuth2Config>,
    token: &SecretKeys,
    path: &str,
    problems: &mut Problems,
) {
    if let (Some(_), Ok(Some(src))) = (oauth2, token.source("token")) {
        problems.push(
            format!("{path}.{}", src.key("token")),
            "set either a static token or the oauth2 table, not both",
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Toml};

    fn read(toml: &str) -> Result<OAuth2Config, Vec<crate::config::Problem>> {
        let fig = figment::Figment::from(Toml::string(toml));
        fig.extract_inner::<OAuth2Config>("sources.zaita.oauth2")
            .map_err(|e| crate::config::figment_problems(e, "sources.zaita.oauth2"))
    }

    fn problems_of(cfg: &OAuth2Config) -> Vec<(String, String)> {
        let mut problems = Problems::default();
        cfg.validate("sources.zaita.oauth2", &mut problems);
        problems
            .into_vec()
            .into_iter()
            .map(|p| (p.path, p.message))
            .collect()
    }

    #[test]
    fn bad_values_are_reported_with_their_key_paths() {
        let cfg = read(
            "[sources.zaita.oauth2]\ntoken_url = \"ftp://x\"\nclient_id = \" \"\n\
             client_secret_env = \"AUDITRELAY_TEST_UNSET_SECRET\"\nscopes = [\"a b\"]\n\
             extra_params = { grant_type = \"password\", resource = \"r\" }\n",
        )
        .unwrap();
        let paths: Vec<String> = problems_of(&cfg).into_iter().map(|(p, _)| p).collect();
        assert_eq!(
            paths,
            [
                "sources.zaita.oauth2.token_url",
                "sources.zaita.oauth2.client_id",
                "sources.zaita.oauth2.client_secret_env",
                "sources.zaita.oauth2.scopes[0]",
                "sources.zaita.oauth2.extra_params.grant_type",
            ]
        );
    }

    #[test]
    fn unknown_keys_and_bad_client_auth_name_their_path() {
        let errs = read(
            "[sources.zaita.oauth2]\ntoken_url = \"https://t.example/token\"\n\
             client_id = \"c\"\nclient_auth = \"digest\"\n",
        )
        .unwrap_err();
        assert_eq!(errs[0].path, "sources.zaita.oauth2.client_auth");
        assert!(errs[0].message.contains("basic, body, json"), "{errs:?}");
        let errs = read(
            "[sources.zaita.oauth2]\ntoken_url = \"https://t.example/token\"\n\
             client_id = \"c\"\nscope = \"x\"\n",
        )
        .unwrap_err();
        assert_eq!(errs[0].path, "sources.zaita.oauth2.scope");
    }

    #[test]
    fn a_missing_secret_is_reported_at_client_secret_file() {
        let cfg = read(
            "[sources.zaita.oauth2]\ntoken_url = \"https://t.example/token\"\nclient_id = \"c\"\n",
        )
        .unwrap();
        let found = problems_of(&cfg);
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].0, "sources.zaita.oauth2.client_secret_file");
    }

    #[test]
    fn a_static_token_and_oauth2_together_are_refused() {
        let cfg = read(
            "[sources.zaita.oauth2]\ntoken_url = \"https://t.example/token\"\nclient_id = \"c\"\n",
        )
        .unwrap();
        let token = SecretKeys {
            file: Some("/run/t".into()),
            ..Default::default()
        };
        let mut problems = Problems::default();
        validate_exclusive(Some(&cfg), &token, "sources.zaita", &mut problems);
        let found = problems.into_vec();
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].path, "sources.zaita.token_file");
        let mut problems = Problems::default();
        validate_exclusive(None, &token, "sources.zaita", &mut problems);
        assert!(problems.is_empty());
    }
}
