//! `validate --online` and `send-test`: one token request per `oauth2`
//! table of the config, and what came of it.

use std::time::Duration;

use figment::value::Dict;
use figment::Figment;

use super::{OAuth2Config, TokenClient, TokenClientOptions};
use crate::config::{RetryConfig, TlsConfig};

/// Key paths of the components (`sources.NAME`, `sinks.NAME`) with an
/// `oauth2` table, `only` the sinks when `sinks_only`.
pub fn components_with_oauth2(fig: &Figment, sinks_only: bool) -> Vec<String> {
    let kinds: &[&str] = if sinks_only {
        &["sinks"]
    } else {
        &["sources", "sinks"]
    };
    let mut found = Vec::new();
    for kind in kinds {
        let Ok(sections) = fig.extract_inner::<Dict>(kind) else {
            continue;
        };
        for (name, section) in sections {
            if section.as_dict().is_some_and(|d| d.contains_key("oauth2")) {
                found.push(format!("{kind}.{name}"));
            }
        }
    }
    found
}

/// One token request for the component at `path` (`sources.zaita`): what
/// to print, `Ok` when a token came back. Never the token itself.
pub async fn probe(fig: &Figment, path: &str) -> Result<String, String> {
    let cfg: OAuth2Config = fig
        .extract_inner(&format!("{path}.oauth2"))
        .map_err(|e| format!("{path}.oauth2: {e}"))?;
    let tls: TlsConfig = fig
        .extract_inner(&format!("{path}.tls"))
        .unwrap_or_default();
    let http =
        crate::http::client(&tls, Duration::from_secs(15), path).map_err(|e| format!("{e:#}"))?;
    let client = TokenClient::new(
        cfg,
        TokenClientOptions {
            component: path.to_string(),
            http,
            health: None,
            retry: RetryConfig::default(),
            auth_retry: Duration::from_secs(30),
        },
    )
    .map_err(|e| format!("{e:#}"))?;
    match client.fetch().await {
        Ok(token) => Ok(match token.expires_in() {
            Some(d) => format!("token fetched (expires in {}s)", d.as_secs()),
            None => "token fetched (no expires_in: kept until the API refuses it)".into(),
        }),
        Err(e) => Err(e.to_string()),
    }
}
