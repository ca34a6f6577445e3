//! HTTP webhook: POSTs events as a JSON array, NDJSON, or one event per
//! request, with optional bearer/basic auth, an HMAC-SHA256 signature of the
//! body as sent, and gzip.
//!
//! Answers: 2xx confirms. 429 waits for Retry-After; 408, 5xx and network
//! errors retry with backoff; 401/403/404/405/407 mean the endpoint or the
//! credentials are wrong, so the sink keeps retrying slowly and reports not
//! ready (dropping events because of a typo would be worse). 413 and other
//! 4xx split the request in halves until the rejected events are isolated;
//! those go to the dead-letter file and the rest is delivered.
//!
//! Redirects: a 307/308 is followed as `follow_redirects` allows (method,
//! body and signature kept); a 301/302/303, or a redirect not allowed, is a
//! configuration error like a 404: the sink is not ready, names the
//! Location and tries again every `auth_retry`. Its answer never confirms.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use async_trait::async_trait;
use hmac::{Hmac, Mac};
use serde::Deserialize;
use sha2::Sha256;
use tracing::error;

use super::delivery::{send_http, snippet, Delivery, Readiness, RetryLogic, Run, Sent, Verdict};
use super::{Sink, SinkCommon, SinkContext};
use crate::config::{parse_url, require_positive, Problems};
use crate::event::Event;
use crate::format::ndjson;
use crate::secret::{Secret, SecretKeys, SecretSource};

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Encoding {
    #[default]
    JsonArray,
    Ndjson,
    /// One event per request, the body being the event itself.
    Single,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    #[default]
    None,
    Gzip,
}

#[derive(Clone, Debug, Deserialize)]
pub struct WebhookConfig {
    pub url: String,
    #[serde(default = "default_method")]
    pub method: String,
    #[serde(default)]
    pub encoding: Encoding,
    #[serde(default)]
    pub compression: Compression,
    /// Extra request headers (not for secrets: use the *_file keys).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Bearer token.
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    /// OAuth2 client credentials: a bearer token fetched and renewed.
    pub oauth2: Option<crate::oauth2::OAuth2Config>,
    /// Basic auth user; the password comes from `password_file`/`_env`.
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
    pub password_env: Option<String>,
    pub password_credential: Option<String>,
    /// Key of the HMAC-SHA256 body signature.
    pub hmac_secret_file: Option<PathBuf>,
    pub hmac_secret_env: Option<String>,
    pub hmac_secret_credential: Option<String>,
    #[serde(default = "default_hmac_header")]
    pub hmac_header: String,
    #[serde(default = "crate::config::secs::<30>", with = "humantime_serde")]
    pub timeout: Duration,
    /// Least wait between attempts while the endpoint refuses the credentials.
    #[serde(default = "crate::config::secs::<30>", with = "humantime_serde")]
    pub auth_retry: Duration,
    /// Which 307/308 redirects are followed (301/302/303 never are).
    #[serde(default)]
    pub follow_redirects: crate::http::FollowRedirects,
    /// Requests on the wire at once; a request's body is built only once
    /// it holds a slot, so this also bounds the bodies in memory.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
}

crate::serde_defaults::serde_defaults! {
    /// One request at the receiver at a time: a kill re-sends what the
    /// receiver holds unanswered, so at most one request (see
    /// docs/sinks.md, "Requests at once"); raise it for a far receiver.
    fn default_concurrency() -> usize = 1;
    fn default_method() -> String = "POST".into();
    fn default_hmac_header() -> String = "X-Auditrelay-Signature".into();
}

impl WebhookConfig {
    fn secret_keys(&self) -> [(&'static str, SecretKeys); 3] {
        [
            (
                "token",
                SecretKeys {
                    file: self.token_file.clone(),
                    env: self.token_env.clone(),
                    credential: self.token_credential.clone(),
                },
            ),
            (
                "password",
                SecretKeys {
                    file: self.password_file.clone(),
                    env: self.password_env.clone(),
                    credential: self.password_credential.clone(),
                },
            ),
            (
                "hmac_secret",
                SecretKeys {
                    file: self.hmac_secret_file.clone(),
                    env: self.hmac_secret_env.clone(),
                    credential: self.hmac_secret_credential.clone(),
                },
            ),
        ]
    }
}

impl super::SinkType for WebhookConfig {
    const KIND: &'static str = "webhook";

    fn validate(&self, path: &str, _common: &SinkCommon, problems: &mut Problems) {
        parse_url(&self.url, &format!("{path}.url"), problems);
        if !(1..=256).contains(&self.concurrency) {
            problems.push(format!("{path}.concurrency"), "must be between 1 and 256");
        }
        if reqwest::Method::from_bytes(self.method.as_bytes()).is_err() {
            problems.push(
                format!("{path}.method"),
                format!("\"{}\" is not an HTTP method", self.method),
            );
        }
        for (name, value) in &self.headers {
            if reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_err() {
                problems.push(format!("{path}.headers.{name}"), "not a valid header name");
            }
            if reqwest::header::HeaderValue::from_str(value).is_err() {
                problems.push(format!("{path}.headers.{name}"), "not a valid header value");
            }
        }
        if reqwest::header::HeaderName::from_bytes(self.hmac_header.as_bytes()).is_err() {
            problems.push(format!("{path}.hmac_header"), "not a valid header name");
        }
        let mut have = BTreeMap::new();
        for (stem, keys) in self.secret_keys() {
            keys.validate(stem, path, None, problems);
            if matches!(keys.source(stem), Ok(Some(_))) {
                have.insert(stem, true);
            }
        }
        if have.contains_key("password") != self.username.is_some() {
            problems.push(
                format!("{path}.username"),
                "basic auth needs both username and password_file (or password_env)",
            );
        }
        let [(_, token_keys), ..] = self.secret_keys();
        crate::oauth2::validate_exclusive(self.oauth2.as_ref(), &token_keys, path, problems);
        if let Some(o) = &self.oauth2 {
            o.validate(&format!("{path}.oauth2"), problems);
            if self.username.is_some() {
                problems.push(
                    format!("{path}.username"),
                    "choose oauth2 or basic (username/password_*), not both",
                );
            }
        }
        if have.contains_key("token") && self.username.is_some() {
            problems.push(
                format!("{path}.token_file"),
                "choose bearer (token_*) or basic (username/password_*), not both",
            );
        }
        require_positive(self.timeout, &format!("{path}.timeout"), problems);
    }

    fn build(&self, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(WebhookSink::new(self.clone(), common, ctx)?))
    }
}

enum Auth {
    None,
    Bearer(SecretSource, Secret),
    Basic(String, Secret),
    OAuth2(std::sync::Arc<crate::oauth2::TokenClient>),
}

pub struct WebhookSink {
    cfg: WebhookConfig,
    common: SinkCommon,
    client: reqwest::Client,
    url: url::Url,
    method: reqwest::Method,
    auth: tokio::sync::RwLock<Auth>,
    hmac_key: Option<Secret>,
    delivery: Delivery<Trouble>,
    /// One per request on the wire (`concurrency`).
    slots: tokio::sync::Semaphore,
}

/// One kind of trouble: the latest failure is what `/readyz` shows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Trouble {
    Delivery,
}

const REDIRECT_ADVICE: &str = "check url and follow_redirects";

impl WebhookSink {
    pub fn new(cfg: WebhookConfig, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Self> {
        let path = format!("sinks.{}", ctx.name);
        let load =
            |stem: &str, keys: &SecretKeys| -> anyhow::Result<Option<(SecretSource, Secret)>> {
                match keys
                    .source(stem)
                    .map_err(|e| anyhow::anyhow!("{path}: {e}"))?
                {
                    Some(src) => {
                        let s = src
                            .load()
                            .map_err(|e| anyhow::anyhow!("{path}.{stem}_file: {e}"))?;
                        Ok(Some((src, s)))
                    }
                    None => Ok(None),
                }
            };
        let [(_, token_keys), (_, password_keys), (_, hmac_keys)] = cfg.secret_keys();
        let bearer = load("token", &token_keys)?;
        if bearer.is_some() && cfg.oauth2.is_some() {
            anyhow::bail!("{path}: set either token_* or the oauth2 table, not both");
        }
        let timeouts = (cfg.timeout, cfg.auth_retry);
        let oauth2 = common.oauth2_client(cfg.oauth2.as_ref(), &path, &ctx.health, timeouts)?;
        let auth = if let Some(client) = oauth2 {
            Auth::OAuth2(std::sync::Arc::new(client))
        } else if let Some((src, s)) = bearer {
            Auth::Bearer(src, s)
        } else if let (Some(user), Some((_, pw))) =
            (&cfg.username, load("password", &password_keys)?)
        {
            Auth::Basic(user.clone(), pw)
        } else {
            Auth::None
        };
        let hmac_key = load("hmac_secret", &hmac_keys)?.map(|(_, s)| s);
        let url = url::Url::parse(&cfg.url).map_err(|e| anyhow::anyhow!("{path}.url: {e}"))?;
        let method = reqwest::Method::from_bytes(cfg.method.as_bytes())
            .map_err(|_| anyhow::anyhow!("{path}.method: not an HTTP method"))?;
        let options = crate::http::ClientOptions {
            redirects: cfg.follow_redirects,
            cookies: false,
        };
        let client = crate::http::client_with(&common.tls, cfg.timeout, &path, options)?;
        let delivery = Delivery {
            name: ctx.name.as_str().into(),
            retry: common.retry,
            auth_retry: cfg.auth_retry,
            readiness: Readiness::new(ctx.health, &ctx.name),
            dead_letters: ctx.dead_letters,
            failing: Some(Trouble::Delivery),
        };
        Ok(WebhookSink {
            client,
            url,
            method,
            auth: tokio::sync::RwLock::new(auth),
            hmac_key,
            delivery,
            slots: tokio::sync::Semaphore::new(cfg.concurrency.max(1)),
            common: common.clone(),
            cfg,
        })
    }

    fn encode(&self, events: &[Event]) -> anyhow::Result<Body> {
        let (body, content_type) = match self.cfg.encoding {
            Encoding::JsonArray => (ndjson::array(events), "application/json"),
            Encoding::Ndjson => (ndjson::lines(events), "application/x-ndjson"),
            Encoding::Single => (
                events.first().map(|e| e.raw.to_vec()).unwrap_or_default(),
                "application/json",
            ),
        };
        let body = if self.cfg.compression == Compression::Gzip {
            crate::format::gzip(&body)?
        } else {
            body
        };
        Ok((body.into(), content_type))
    }

    /// One request with a run's encoded body, its answer classified; with
    /// OAuth2, a refused access token is replaced and the request sent
    /// once more at once.
    async fn post(&self, body: &Body) -> anyhow::Result<Verdict<Trouble>> {
        let oauth2 = match &*self.auth.read().await {
            Auth::OAuth2(client) => Some(client.clone()),
            _ => None,
        };
        let Some(client) = oauth2 else {
            return self.post_with(body, None).await;
        };
        let access = client.token().await;
        let verdict = self.post_with(body, Some(&access.secret)).await?;
        if !matches!(&verdict, Verdict::AuthWait { why, .. } if why.starts_with("HTTP 401")) {
            return Ok(verdict);
        }
        client.refused(&access).await;
        let access = client.token().await;
        let verdict = self.post_with(body, Some(&access.secret)).await?;
        if matches!(&verdict, Verdict::AuthWait { why, .. } if why.starts_with("HTTP 401")) {
            // Refused twice: the attempt after `auth_retry` starts afresh.
            client.refused(&access).await;
        }
        Ok(verdict)
    }

    /// [`Self::post`] with `access` as the bearer token when given.
    async fn post_with(
        &self,
        (body, content_type): &Body,
        access: Option<&Secret>,
    ) -> anyhow::Result<Verdict<Trouble>> {
        let mut req = self
            .client
            .request(self.method.clone(), self.url.clone())
            .header(reqwest::header::CONTENT_TYPE, *content_type);
        if self.cfg.compression == Compression::Gzip {
            req = req.header(reqwest::header::CONTENT_ENCODING, "gzip");
        }
        for (k, v) in &self.cfg.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        match &*self.auth.read().await {
            Auth::None => {}
            Auth::Bearer(_, t) => req = req.bearer_auth(t.expose()),
            Auth::Basic(u, p) => req = req.basic_auth(u, Some(p.expose())),
            Auth::OAuth2(_) => {}
        }
        if let Some(t) = access {
            req = req.bearer_auth(t.expose());
        }
        if let Some(key) = &self.hmac_key {
            let mut mac = Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
                .map_err(|e| anyhow::anyhow!("HMAC key: {e}"))?;
            mac.update(body);
            let sig = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            req = req.header(self.cfg.hmac_header.as_str(), sig);
        }
        let (status, retry_after, body) = match send_http(req.body(body.clone())).await {
            Sent::Answer {
                status,
                retry_after,
                body,
            } => (status, retry_after, body.unwrap_or_default()),
            Sent::Redirect { why, .. } => return Ok(refused(why, REDIRECT_ADVICE)),
            Sent::NoAnswer(why) => return Ok(Verdict::Retry { why, after: None }),
        };
        // A refusal may echo the credentials sent: blanked before the text
        // is cut and reaches the log and `/readyz`.
        let mut text = String::from_utf8_lossy(&body).into_owned();
        let sent = match &*self.auth.read().await {
            Auth::Bearer(_, t) => Some(t.expose().to_string()),
            Auth::Basic(_, p) => Some(p.expose().to_string()),
            Auth::None | Auth::OAuth2(_) => None,
        };
        for secret in sent
            .iter()
            .map(String::as_str)
            .chain(access.map(Secret::expose))
        {
            if !secret.is_empty() {
                text = text.replace(secret, "***");
            }
        }
        let why = format!("HTTP {status}: {}", snippet(text.as_bytes(), 300));
        Ok(match status {
            200..=299 => Verdict::Confirmed {
                fixed: &[Trouble::Delivery],
            },
            429 | 503 => Verdict::Retry {
                why,
                after: retry_after,
            },
            408 | 500..=599 => Verdict::Retry { why, after: None },
            401 | 403 | 404 | 405 | 407 => refused(why, "check url and credentials"),
            _ => Verdict::Refused { why, bad: None },
        })
    }

    /// Re-reads a bearer token from its file, in case it was rotated.
    async fn reload_token(&self) {
        let mut auth = self.auth.write().await;
        if let Auth::Bearer(src, current) = &mut *auth {
            match src.load() {
                Ok(t) => *current = t,
                Err(e) => {
                    error!(sink = %self.delivery.name, error = %e, "cannot re-read the token")
                }
            }
        }
    }
}

/// Wrong endpoint, credentials or redirect: retry slowly, report not ready,
/// with advice on what to check.
fn refused(why: String, advice: &str) -> Verdict<Trouble> {
    Verdict::AuthWait {
        trouble: Trouble::Delivery,
        reason: format!("endpoint refuses the requests ({why}); {advice}"),
        log: format!("endpoint refuses the requests; {advice}"),
        why,
    }
}

/// A run's request body (encoded and compressed) and its content type.
type Body = (bytes::Bytes, &'static str);

#[async_trait]
impl RetryLogic for WebhookSink {
    type Trouble = Trouble;
    type Memory = ();

    /// The body is built once a `concurrency` slot is held and dropped
    /// with it: bodies in memory are those of the requests on the wire,
    /// not of every run waiting (or backing off) for its turn. A retry
    /// encodes the same bytes again.
    async fn attempt(&self, events: &[Event], run: Run, _: &mut ()) -> Verdict<Trouble> {
        let Ok(_slot) = self.slots.acquire().await else {
            return Verdict::Retry {
                why: "sink is shutting down".into(),
                after: None,
            };
        };
        let body = match self.encode(&events[run]) {
            Ok(b) => b,
            Err(e) => return Verdict::Fatal(e),
        };
        self.post(&body).await.unwrap_or_else(Verdict::Fatal)
    }

    async fn after_auth_wait(&self, _: Trouble) {
        self.reload_token().await;
    }
}

#[async_trait]
impl Sink for WebhookSink {
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
        // A `single` request's body is one event, whatever `batch` says: a
        // longer run would be confirmed with only its first event sent.
        if self.cfg.encoding == Encoding::Single {
            let runs = (0..events.len()).map(|i| i..i + 1).collect();
            return self.delivery.deliver(self, source, events, runs).await;
        }
        let mut start = 0;
        let runs = self
            .common
            .batch
            .chunks(events, 500, 4 * 1024 * 1024)
            .into_iter()
            .map(|chunk| {
                start += chunk.len();
                start - chunk.len()..start
            })
            .collect();
        self.delivery.deliver(self, source, events, runs).await
    }

    /// Receivers index by event time; parallel requests give throughput.
    fn ordered(&self) -> bool {
        false
    }

    /// Any HTTP answer to a HEAD proves the endpoint reachable (many
    /// webhooks answer 405 to anything but POST); only a network error fails.
    async fn healthcheck(&self) -> anyhow::Result<()> {
        self.client
            .head(self.url.clone())
            .send()
            .await
            .map(|_| ())
            .map_err(|e| anyhow::anyhow!("{}", crate::http::describe_error(e)))
    }
}
