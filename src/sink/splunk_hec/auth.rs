//! How the sink proves itself. Straight to HEC: `Authorization: Splunk
//! <token>`. Behind an OAuth2 gateway (`[sinks.NAME.oauth2]`): every
//! request, health checks included, carries `Authorization: Bearer <access
//! token>` from the sink's one token client (so the event requests, the
//! ack poller and the health loop share one renewal), and the HEC token,
//! when there is one, travels as `Splunk <token>` in the header
//! `hec_token_header` names, for the gateway to hand to HEC.
//!
//! A 401 with OAuth2 retires the access token and the request goes once
//! more at once with a new one; a second 401 is the caller's to classify
//! (an auth wait), and retires that token too, so the attempt after
//! `auth_retry` starts afresh.

use std::sync::{Arc, RwLock};

use reqwest::header::{HeaderName, HeaderValue, AUTHORIZATION};
use tracing::error;

use super::config::{auth_value, SplunkHecConfig};
use crate::config::Problems;
use crate::oauth2::{AccessToken, TokenClient};
use crate::secret::{Secret, SecretSource};
use crate::sink::delivery::{send_http, Sent};

/// Header names `hec_token_header` may not take: the sink sets them itself.
const RESERVED_HEADERS: &[&str] = &[
    "authorization",
    "content-type",
    "content-encoding",
    "content-length",
    "host",
    "cookie",
    "x-splunk-request-channel",
];

/// Which credentials a request needs.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(super) enum Scope {
    /// Event and ack requests: HEC checks the HEC token.
    Hec,
    /// The health endpoint: HEC wants no token, a gateway its access token.
    Health,
}

/// The HEC token and where it was read from.
struct HecToken {
    source: SecretSource,
    current: RwLock<Secret>,
}

pub(super) struct HecAuth {
    hec_token: Option<HecToken>,
    /// Where the HEC token goes: `Authorization`, or `hec_token_header`.
    hec_header: HeaderName,
    oauth2: Option<Arc<TokenClient>>,
}

impl HecAuth {
    /// `path` is the sink's key path, for errors.
    pub(super) fn new(
        cfg: &SplunkHecConfig,
        path: &str,
        oauth2: Option<TokenClient>,
    ) -> anyhow::Result<Self> {
        let source = cfg
            .token_keys()
            .source("token")
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        let hec_token = match source {
            Some(source) => {
                let token = source
                    .load()
                    .map_err(|e| anyhow::anyhow!("{path}.{}: {e}", source.key("token")))?;
                Some(HecToken {
                    source,
                    current: RwLock::new(token),
                })
            }
            None if oauth2.is_some() => None,
            None => anyhow::bail!("{path}.token_file: required"),
        };
        if oauth2.is_some() && hec_token.is_some() && cfg.hec_token_header.is_none() {
            anyhow::bail!("{path}.hec_token_header: required to send the HEC token with oauth2");
        }
        let hec_header = match &cfg.hec_token_header {
            Some(name) => HeaderName::from_bytes(name.as_bytes())
                .map_err(|_| anyhow::anyhow!("{path}.hec_token_header: not a header name"))?,
            None => AUTHORIZATION,
        };
        Ok(HecAuth {
            hec_token,
            hec_header,
            oauth2: oauth2.map(Arc::new),
        })
    }

    /// Re-reads the HEC token, in case it was rotated.
    pub(super) fn reload(&self, sink: &str) {
        let Some(t) = &self.hec_token else {
            return;
        };
        match t.source.load() {
            Ok(s) => *t.current.write().unwrap_or_else(|p| p.into_inner()) = s,
            Err(e) => error!(sink = %sink, error = %e, "cannot re-read the HEC token"),
        }
    }

    /// Who refuses what, for the log and `/readyz`.
    pub(super) fn refusal(&self) -> &'static str {
        if self.oauth2.is_some() {
            "the OAuth2 gateway or HEC refuses the credentials"
        } else {
            "HEC refuses the token"
        }
    }

    /// Where the credentials come from, for a refusal's advice.
    pub(super) fn describe(&self) -> String {
        let hec = self.hec_token.as_ref().map(|t| t.source.describe());
        match (&self.oauth2, hec) {
            (None, Some(hec)) => format!("the HEC token in {hec}"),
            (None, None) => "the HEC token".into(),
            (Some(c), None) => format!(
                "the OAuth2 client of {}.oauth2 (scopes, audience) and the HEC token the \
                 gateway adds",
                c.component()
            ),
            (Some(c), Some(hec)) => format!(
                "the OAuth2 client of {}.oauth2 (scopes, audience), the HEC token in {hec} \
                 and hec_token_header",
                c.component()
            ),
        }
    }

    /// The HEC token's header, when this request sends one.
    fn hec_header(&self, scope: Scope) -> Result<Option<(HeaderName, HeaderValue)>, String> {
        let (Scope::Hec, Some(t)) = (scope, &self.hec_token) else {
            return Ok(None);
        };
        let token = t.current.read().unwrap_or_else(|p| p.into_inner());
        auth_value(&token)
            .map(|v| Some((self.hec_header.clone(), v)))
            .ok_or_else(|| "the HEC token holds characters an HTTP header cannot carry".into())
    }

    /// Sends the request `build` makes with the credentials `scope` needs;
    /// with OAuth2, a 401 retires the access token and the request goes
    /// once more with a new one. `Err`: a credential no header can carry.
    pub(super) async fn send(
        &self,
        scope: Scope,
        build: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Sent, String> {
        let hec = self.hec_header(scope)?;
        let with_hec = |req: reqwest::RequestBuilder| match &hec {
            Some((name, value)) => req.header(name.clone(), value.clone()),
            None => req,
        };
        let Some(client) = &self.oauth2 else {
            return Ok(send_http(with_hec(build())).await);
        };
        let access = client.token().await;
        let sent =
            send_http(with_hec(build()).header(AUTHORIZATION, bearer(client, &access).await?))
                .await;
        if !refused(&sent) {
            return Ok(sent);
        }
        client.refused(&access).await;
        let access = client.token().await;
        let sent =
            send_http(with_hec(build()).header(AUTHORIZATION, bearer(client, &access).await?))
                .await;
        if refused(&sent) {
            // Refused twice: the attempt after `auth_retry` starts afresh.
            client.refused(&access).await;
        }
        Ok(sent)
    }
}

fn refused(sent: &Sent) -> bool {
    matches!(sent, Sent::Answer { status: 401, .. })
}

/// `Bearer <access token>` marked sensitive; a token no header can carry
/// is retired (the next request fetches another).
async fn bearer(client: &TokenClient, access: &AccessToken) -> Result<HeaderValue, String> {
    match HeaderValue::from_str(&format!("Bearer {}", access.secret.expose())) {
        Ok(mut v) => {
            v.set_sensitive(true);
            Ok(v)
        }
        Err(_) => {
            client.refused(access).await;
            Err("the token endpoint issued an access token an HTTP header cannot carry".into())
        }
    }
}

/// The checks of the HEC token, `oauth2` and `hec_token_header` keys.
pub(super) fn validate(cfg: &SplunkHecConfig, path: &str, problems: &mut Problems) {
    let keys = cfg.token_keys();
    let required = (cfg.oauth2.is_none())
        .then_some("required: the HEC token (token_file, token_env or token_credential)");
    let key_of = || {
        keys.source("token")
            .ok()
            .flatten()
            .map_or_else(|| "token_file".to_string(), |s| s.key("token"))
    };
    let token = keys.validate("token", path, required, problems);
    if token.as_ref().is_some_and(|t| auth_value(t).is_none()) {
        problems.push(
            format!("{path}.{}", key_of()),
            "the token holds characters an HTTP header cannot carry",
        );
    }
    if let Some(o) = &cfg.oauth2 {
        o.validate(&format!("{path}.oauth2"), problems);
    }
    let has_token = matches!(keys.source("token"), Ok(Some(_)));
    let key = format!("{path}.hec_token_header");
    match (&cfg.hec_token_header, &cfg.oauth2) {
        (Some(name), Some(_)) => {
            if HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(&key, format!("\"{name}\" is not a valid header name"));
            } else if RESERVED_HEADERS.contains(&name.to_ascii_lowercase().as_str()) {
                problems.push(
                    &key,
                    format!("\"{name}\" is set by the sink itself; name a header of its own (e.g. X-Splunk-Authorization)"),
                );
            }
            if !has_token {
                problems.push(
                    &key,
                    "set the HEC token (token_file, token_env or token_credential) it carries",
                );
            }
        }
        (Some(_), None) => problems.push(
            &key,
            "only with an oauth2 table: without one the HEC token goes in Authorization",
        ),
        (None, Some(_)) if has_token => problems.push(
            format!("{path}.{}", key_of()),
            "with oauth2, Authorization carries the access token: set hec_token_header to \
             send the HEC token in a header of its own (or leave the token out when the \
             gateway adds it)",
        ),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Toml};

    /// The key paths `validate` reports for `[sinks.hec]` holding `keys`.
    fn problems(keys: &str) -> Vec<String> {
        let toml = format!("[sinks.hec]\nendpoint = \"https://hec.example:8088\"\n{keys}");
        let cfg: SplunkHecConfig = figment::Figment::from(Toml::string(&toml))
            .extract_inner("sinks.hec")
            .unwrap();
        let mut problems = Problems::default();
        validate(&cfg, "sinks.hec", &mut problems);
        problems.into_vec().into_iter().map(|p| p.path).collect()
    }

    const OAUTH2: &str = "[sinks.hec.oauth2]\ntoken_url = \"https://idp.example/token\"\n\
                          client_id = \"c\"\nclient_secret_env = \"PATH\"\n";

    #[test]
    fn oauth2_without_a_hec_token_is_valid_and_without_oauth2_the_token_is_required() {
        assert!(problems(OAUTH2).is_empty(), "{:?}", problems(OAUTH2));
        assert_eq!(problems(""), ["sinks.hec.token_file"]);
    }

    #[test]
    fn hec_token_header_mistakes_name_their_key() {
        let with = |keys: &str| problems(&format!("{keys}\n{OAUTH2}"));
        // A token with oauth2 but nowhere to go would be silently unused.
        assert_eq!(with("token_env = \"PATH\""), ["sinks.hec.token_env"]);
        assert!(
            with("token_env = \"PATH\"\nhec_token_header = \"X-Splunk-Authorization\"").is_empty()
        );
        assert_eq!(
            with("token_env = \"PATH\"\nhec_token_header = \"Authorization\""),
            ["sinks.hec.hec_token_header"]
        );
        assert_eq!(
            with("token_env = \"PATH\"\nhec_token_header = \"bad header\""),
            ["sinks.hec.hec_token_header"]
        );
        assert_eq!(
            with("hec_token_header = \"X-Splunk-Authorization\""),
            ["sinks.hec.hec_token_header"]
        );
        assert_eq!(
            problems("token_env = \"PATH\"\nhec_token_header = \"X-Splunk-Authorization\""),
            ["sinks.hec.hec_token_header"]
        );
    }

    #[test]
    fn bad_oauth2_values_are_reported_under_the_sink() {
        let found = problems(
            "[sinks.hec.oauth2]\ntoken_url = \"ftp://x\"\nclient_id = \"c\"\n\
             client_secret_env = \"PATH\"\n",
        );
        assert_eq!(found, ["sinks.hec.oauth2.token_url"]);
    }
}
