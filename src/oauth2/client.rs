//! The token client of one component: fetches an access token with the
//! client-credentials grant (RFC 6749 §4.4), keeps it in memory only, and
//! replaces it before it expires or once the API refuses it.
//!
//! Written on reqwest rather than the `oauth2` crate: that crate pins its
//! own reqwest, has no JSON client authentication, and would hide the
//! Retry-After and error-body handling every other request here has.
//!
//! One async mutex guards the token: the first request that finds it stale
//! fetches a new one while the others wait for it, so a fleet of requests
//! hitting an expiry at once makes one token request, not one each.

use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::Deserialize;
use tokio::sync::Mutex;
use tracing::{debug, error, info, warn};

use super::config::{ClientAuth, OAuth2Config};
use super::metrics::OAUTH2_METRICS;
use crate::config::RetryConfig;
use crate::health::Health;
use crate::retry::Backoff;
use crate::secret::{Secret, SecretSource};

/// An access token and when to stop using it.
#[derive(Clone, Debug)]
pub struct AccessToken {
    pub secret: Secret,
    /// Which fetch this token came from: a 401 retires a token only if no
    /// newer one replaced it meanwhile.
    generation: u64,
    /// When a new one is fetched; `None`: the server gave no `expires_in`,
    /// the token is kept until the API refuses it.
    refresh_at: Option<Instant>,
    expires_at: Option<Instant>,
}

impl AccessToken {
    fn fresh(&self, now: Instant) -> bool {
        self.refresh_at.is_none_or(|at| now < at)
    }

    fn usable(&self, now: Instant) -> bool {
        self.expires_at.is_none_or(|at| now < at)
    }

    /// Seconds left, for the log and `validate --online`.
    pub fn expires_in(&self) -> Option<Duration> {
        self.expires_at
            .map(|at| at.saturating_duration_since(Instant::now()))
    }
}

/// Why one token request did not give a token.
#[derive(Debug, PartialEq, Eq)]
pub enum Failure {
    /// Worth retrying: no answer, 5xx, 429 (with the server's wait).
    Transient {
        why: String,
        after: Option<Duration>,
    },
    /// The endpoint refused the client or answered nonsense: an operator
    /// must act. The text says what to check.
    Refused(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Transient { why, .. } => f.write_str(why),
            Failure::Refused(why) => f.write_str(why),
        }
    }
}

struct Slot {
    current: Option<AccessToken>,
    generation: u64,
    /// While a refresh keeps failing but the token still works: no new
    /// attempt before this instant.
    retry_at: Option<Instant>,
    /// Kept across calls: each request finding the refresh due must not
    /// start the backoff over (and make a token request of its own).
    backoff: Backoff,
}

/// What a component hands its token client besides the `oauth2` table.
pub struct TokenClientOptions {
    /// Key path of the component (`sources.zaita`), in logs, errors and the
    /// metric label.
    pub component: String,
    pub http: reqwest::Client,
    pub health: Option<Health>,
    pub retry: RetryConfig,
    /// Least wait between token requests while the endpoint refuses.
    pub auth_retry: Duration,
}

/// The token client of one source or sink.
pub struct TokenClient {
    cfg: OAuth2Config,
    secret_source: SecretSource,
    opts: TokenClientOptions,
    slot: Mutex<Slot>,
}

/// The answer of a token endpoint (RFC 6749 §5.1). No `Debug`: it holds
/// the token.
#[derive(Deserialize)]
struct TokenAnswer {
    access_token: Option<String>,
    token_type: Option<String>,
    /// Seconds; some servers send a string.
    expires_in: Option<serde_json::Value>,
}

/// An error answer (RFC 6749 §5.2).
#[derive(Deserialize)]
struct ErrorAnswer {
    error: Option<String>,
    error_description: Option<String>,
}

impl TokenClient {
    /// `path` is the key path of the `oauth2` table, for errors.
    pub fn new(cfg: OAuth2Config, opts: TokenClientOptions) -> anyhow::Result<Self> {
        let path = format!("{}.oauth2", opts.component);
        url::Url::parse(&cfg.token_url).map_err(|e| anyhow::anyhow!("{path}.token_url: {e}"))?;
        let secret_source = cfg.secret_source(&path)?;
        // Read now so a missing secret stops the start, as a token file does.
        secret_source
            .load()
            .map_err(|e| anyhow::anyhow!("{path}.{}: {e}", secret_source.key("client_secret")))?;
        if let Some(h) = &opts.health {
            h.register(&health_key(&opts.component));
        }
        OAUTH2_METRICS
            .expires_in
            .with_label_values(&[&opts.component])
            .set(0);
        let backoff = Backoff::new(opts.retry);
        Ok(TokenClient {
            cfg,
            secret_source,
            opts,
            slot: Mutex::new(Slot {
                current: None,
                generation: 0,
                retry_at: None,
                backoff,
            }),
        })
    }

    pub fn component(&self) -> &str {
        &self.opts.component
    }

    /// A token to send now: the current one while fresh, else a new one.
    /// Waits (retrying with backoff, and at least `auth_retry` while the
    /// endpoint refuses the client) until there is one; cancel-safe.
    pub async fn token(&self) -> AccessToken {
        let mut slot = self.slot.lock().await;
        loop {
            let now = Instant::now();
            if let Some(t) = &slot.current {
                let waiting = slot.retry_at.is_some_and(|at| now < at);
                if t.fresh(now) || (t.usable(now) && waiting) {
                    self.gauge(t);
                    return t.clone();
                }
            }
            match self.fetch().await {
                Ok(mut token) => {
                    slot.generation += 1;
                    token.generation = slot.generation;
                    slot.current = Some(token.clone());
                    slot.retry_at = None;
                    slot.backoff.reset();
                    self.gauge(&token);
                    return token;
                }
                Err(failure) => {
                    // Never less than the backoff: `Retry-After: 0` from a
                    // busy endpoint must not make a loop of requests.
                    let least = slot.backoff.next_delay();
                    let delay = match &failure {
                        Failure::Transient { after, .. } => {
                            after.map_or(least, |a| a.min(self.opts.retry.max).max(least))
                        }
                        Failure::Refused(_) => least.max(self.opts.auth_retry),
                    };
                    // The request took time: the wait starts now.
                    let now = Instant::now();
                    let usable = slot.current.as_ref().is_some_and(|t| t.usable(now));
                    if usable {
                        // The old token still works: keep using it and try
                        // again later instead of holding every request.
                        warn!(component = %self.opts.component, error = %failure, retry_in_s = delay.as_secs_f64(), "cannot refresh the OAuth2 access token; using the current one until it expires");
                        slot.retry_at = Some(now + delay);
                        continue;
                    }
                    slot.current = None;
                    OAUTH2_METRICS
                        .expires_in
                        .with_label_values(&[&self.opts.component])
                        .set(0);
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    /// The API refused `used`: unless a newer token replaced it already,
    /// the next [`Self::token`] fetches a new one.
    pub async fn refused(&self, used: &AccessToken) {
        let mut slot = self.slot.lock().await;
        if slot
            .current
            .as_ref()
            .is_some_and(|t| t.generation == used.generation)
        {
            info!(component = %self.opts.component, "the API refused the OAuth2 access token; fetching a new one");
            slot.current = None;
            slot.retry_at = None;
        }
    }

    /// One token request, counted, logged and reflected in `/readyz`.
    pub async fn fetch(&self) -> Result<AccessToken, Failure> {
        let result = self.request().await;
        let outcome = match &result {
            Ok(t) => {
                debug!(component = %self.opts.component, expires_in_s = t.expires_in().map(|d| d.as_secs()), "fetched an OAuth2 access token");
                if let Some(h) = &self.opts.health {
                    h.set_ready(&health_key(&self.opts.component));
                }
                "ok"
            }
            Err(Failure::Transient { why, after }) => {
                warn!(component = %self.opts.component, error = %why, retry_after_s = after.map(|a| a.as_secs_f64()), "OAuth2 token request failed; retrying");
                "transient_error"
            }
            Err(Failure::Refused(why)) => {
                let reason = format!("{}.oauth2: {why}", self.opts.component);
                error!(component = %self.opts.component, error = %why, "the OAuth2 token endpoint refused the client");
                if let Some(h) = &self.opts.health {
                    h.set_unready(&health_key(&self.opts.component), reason);
                }
                "refused"
            }
        };
        OAUTH2_METRICS
            .token_requests
            .with_label_values(&[&self.opts.component, outcome])
            .inc();
        result
    }

    fn gauge(&self, token: &AccessToken) {
        let left = token.expires_in().map_or(-1, |d| d.as_secs() as i64);
        OAUTH2_METRICS
            .expires_in
            .with_label_values(&[&self.opts.component])
            .set(left);
    }

    async fn request(&self) -> Result<AccessToken, Failure> {
        let secret = self
            .secret_source
            .load()
            .map_err(|e| Failure::Refused(format!("cannot read the client secret: {e}")))?;
        let req = self.build(&secret);
        let started = Instant::now();
        let resp = req.send().await.map_err(|e| Failure::Transient {
            why: format!("token endpoint: {}", crate::http::no_answer(e)),
            after: None,
        })?;
        let status = resp.status().as_u16();
        let after = crate::http::retry_after(resp.headers());
        let body = resp.bytes().await.map_err(|e| Failure::Transient {
            why: format!(
                "token endpoint: HTTP {status}, reading the body failed: {}",
                crate::http::describe_error(e)
            ),
            after: None,
        })?;
        match status {
            200..=299 => self.accept(status, &body, started),
            408 | 429 | 500.. => Err(Failure::Transient {
                why: format!(
                    "token endpoint answered HTTP {status}: {}",
                    self.summary(&body, &secret)
                ),
                after,
            }),
            _ => Err(Failure::Refused(self.advice(status, &body, &secret))),
        }
    }

    /// The token request: grant, scope, audience, extra fields and the
    /// client's credentials as `client_auth` says.
    fn build(&self, secret: &Secret) -> reqwest::RequestBuilder {
        let cfg = &self.cfg;
        let mut fields: Vec<(&str, &str)> = vec![("grant_type", "client_credentials")];
        let scope = cfg.scopes.join(" ");
        if !scope.is_empty() {
            fields.push(("scope", &scope));
        }
        if let Some(aud) = &cfg.audience {
            fields.push(("audience", aud));
        }
        for (k, v) in &cfg.extra_params {
            fields.push((k, v));
        }
        let req = self
            .opts
            .http
            .post(&cfg.token_url)
            .header(reqwest::header::ACCEPT, "application/json");
        match cfg.client_auth {
            ClientAuth::Basic => {
                // RFC 6749 §2.3.1: both form-encoded before Base64.
                let enc = |s: &str| {
                    url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>()
                };
                form(
                    req.basic_auth(enc(&cfg.client_id), Some(enc(secret.expose()))),
                    &fields,
                )
            }
            ClientAuth::Body => {
                fields.push(("client_id", &cfg.client_id));
                fields.push(("client_secret", secret.expose()));
                form(req, &fields)
            }
            ClientAuth::Json => {
                fields.push(("client_id", &cfg.client_id));
                fields.push(("client_secret", secret.expose()));
                let object: serde_json::Map<String, serde_json::Value> = fields
                    .into_iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::String(v.to_string())))
                    .collect();
                req.header(reqwest::header::CONTENT_TYPE, "application/json")
                    .body(serde_json::Value::Object(object).to_string())
            }
        }
    }

    /// A 2xx: the token, or why it is not one (never the body itself,
    /// which may hold a token).
    fn accept(&self, status: u16, body: &Bytes, started: Instant) -> Result<AccessToken, Failure> {
        let answer: TokenAnswer = serde_json::from_slice(body).map_err(|_| {
            Failure::Refused(format!(
                "the token endpoint answered HTTP {status} with {} bytes that are not a JSON \
                 token response; check token_url",
                body.len()
            ))
        })?;
        let token = match answer.access_token {
            Some(t) if !t.trim().is_empty() => Secret::new(t),
            _ => {
                return Err(Failure::Refused(format!(
                    "the token endpoint answered HTTP {status} without an access_token; check token_url"
                )))
            }
        };
        if let Some(kind) = answer.token_type.as_deref() {
            if !kind.eq_ignore_ascii_case("bearer") {
                warn!(component = %self.opts.component, token_type = %kind, "the token endpoint issued a token that is not a bearer token; sending it as one");
            }
        }
        let lifetime = answer.expires_in.as_ref().and_then(seconds);
        // Counted from when the request left: the server's clock started
        // no later than that.
        let expires_at = lifetime.and_then(|l| started.checked_add(l));
        let refresh_at = lifetime.and_then(|l| {
            let margin = self.cfg.refresh_margin.min(l / 2);
            started.checked_add(l - margin)
        });
        Ok(AccessToken {
            secret: token,
            generation: 0,
            refresh_at,
            expires_at,
        })
    }

    /// `error` and `error_description` of an error answer, else its start;
    /// the client secret blanked out in case the server echoes the request.
    fn summary(&self, body: &[u8], secret: &Secret) -> String {
        let text = match serde_json::from_slice::<ErrorAnswer>(body) {
            Ok(ErrorAnswer {
                error: Some(error),
                error_description,
            }) => match error_description {
                Some(d) => format!("{error}: {d}"),
                None => error,
            },
            _ => String::from_utf8_lossy(body).replace(['\n', '\r'], " "),
        };
        // Blanked before the text is cut, so no piece of it is left.
        let mut text = self
            .secret_forms(secret)
            .iter()
            .fold(text, |t, form| t.replace(form.as_str(), "***"));
        if let Some((cut, _)) = text.char_indices().nth(300) {
            text.truncate(cut);
        }
        text
    }

    /// Every form the secret takes in a token request (as is, form-encoded,
    /// JSON-escaped, inside the Basic credentials): an endpoint echoing the
    /// request back shows one of them.
    fn secret_forms(&self, secret: &Secret) -> Vec<String> {
        use base64::Engine as _;
        let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
        let raw = secret.expose();
        let json = serde_json::to_string(raw).unwrap_or_default();
        let basic = base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(&self.cfg.client_id),
            enc(raw)
        ));
        let mut forms = vec![
            basic,
            enc(raw),
            json.trim_matches('"').to_string(),
            raw.to_string(),
        ];
        forms.retain(|f| !f.is_empty());
        forms
    }

    /// What a refusal means and what to check.
    fn advice(&self, status: u16, body: &[u8], secret: &Secret) -> String {
        let summary = self.summary(body, secret);
        let code = serde_json::from_slice::<ErrorAnswer>(body)
            .ok()
            .and_then(|e| e.error)
            .unwrap_or_default();
        let check = match code.as_str() {
            "invalid_client" => format!(
                "check client_id and the client secret in {} (and client_auth: the server may want basic, body or json)",
                self.secret_source.describe()
            ),
            "unauthorized_client" => {
                "this client may not use the client_credentials grant; allow it at the identity provider".into()
            }
            "invalid_scope" => "check scopes: the client may not ask for them".into(),
            "invalid_grant" | "unsupported_grant_type" => {
                "the server does not offer the client_credentials grant at token_url".into()
            }
            _ => "check token_url, client_id, the client secret, client_auth, audience and extra_params".into(),
        };
        format!("the token endpoint refused the client with HTTP {status} ({summary}); {check}")
    }
}

/// `fields` as an `application/x-www-form-urlencoded` body.
fn form(req: reqwest::RequestBuilder, fields: &[(&str, &str)]) -> reqwest::RequestBuilder {
    let body = url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(fields)
        .finish();
    req.header(
        reqwest::header::CONTENT_TYPE,
        "application/x-www-form-urlencoded",
    )
    .body(body)
}

/// The `/readyz` component of a token client.
fn health_key(component: &str) -> String {
    // `sources.zaita` → `source.zaita.oauth2`, next to the component's own.
    let singular = component
        .strip_prefix("sources.")
        .map(|n| format!("source.{n}"))
        .or_else(|| {
            component
                .strip_prefix("sinks.")
                .map(|n| format!("sink.{n}"))
        })
        .unwrap_or_else(|| component.to_string());
    format!("{singular}.oauth2")
}

/// `expires_in` as a duration: a number or a numeric string of seconds.
fn seconds(v: &serde_json::Value) -> Option<Duration> {
    let secs = match v {
        serde_json::Value::Number(n) => n.as_f64()?,
        serde_json::Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (secs.is_finite() && secs > 0.0).then(|| Duration::from_secs_f64(secs.min(1e9)))
}
