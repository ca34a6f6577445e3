//! The request loop of a pull source: sends a request until the API answers
//! with something the source can use, honouring rate limits, retrying
//! transient failures with backoff, and re-reading a refused token.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use reqwest::header::HeaderMap;
use tokio::time::sleep;
use tracing::{error, info, warn};

use super::rate_limit::{read_cooldown, write_cooldown, RateLimitConfig};
use crate::config::RetryConfig;
use crate::health::Health;
use crate::metrics::metrics;
use crate::oauth2::{AccessToken, TokenClient};
use crate::retry::{with_jitter, Backoff};
use crate::secret::{Secret, SecretSource};

/// A response the caller gets to see: a 2xx, or a refusal the request loop
/// cannot resolve by waiting (400, 404, 422…).
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// How to tell the operator what a refused token means for this API.
pub type AuthAdvice = Box<dyn Fn(u16, &str) -> String + Send + Sync>;

/// What a source reads in an answer beyond its status (an error in a 2xx
/// body, a rate limit announced in the body), for
/// [`Fetcher::send_classified`].
pub enum Verdict {
    /// Pause every request (Retry-After, else `rate_limit_wait`).
    RateLimited,
    /// The token was refused.
    Unauthorized,
    /// Hand the answer to the caller as a refusal, counted as `outcome`.
    Refused(&'static str),
    /// A transient failure: retry with backoff.
    Retry(String),
}

/// Everything a request loop needs besides the request itself.
pub struct FetcherConfig {
    pub name: Arc<str>,
    pub client: reqwest::Client,
    pub token_source: Option<SecretSource>,
    /// Fetches the bearer token instead of `token_source`.
    pub oauth2: Option<Arc<TokenClient>>,
    pub health: Health,
    pub retry: RetryConfig,
    pub auth_retry: Duration,
    pub rate_limit: RateLimitConfig,
    pub rate_limit_wait: Duration,
    pub rate_limit_jitter: Duration,
    pub advice: AuthAdvice,
    /// Where a rate-limit pause is also written, so a restarted daemon
    /// keeps it (for APIs that punish early retries).
    pub cooldown_file: Option<PathBuf>,
}

/// The request loop of one source.
pub struct Fetcher {
    cfg: FetcherConfig,
    token: Option<Secret>,
    /// The OAuth2 token `token` holds, to retire it when refused.
    access: Option<AccessToken>,
    backoff: Backoff,
    /// No request may be sent before this instant.
    cooldown_until: Option<Instant>,
}

impl Fetcher {
    pub fn new(cfg: FetcherConfig) -> anyhow::Result<Self> {
        let token = match &cfg.token_source {
            Some(src) => Some(
                src.load()
                    .map_err(|e| anyhow::anyhow!("sources.{}: {e}", cfg.name))?,
            ),
            None => None,
        };
        cfg.health.register(&format!("source.{}", cfg.name));
        let cooldown_until = cfg.cooldown_file.as_deref().and_then(read_cooldown);
        if let Some(until) = cooldown_until {
            warn!(source = %cfg.name, wait_s = until.saturating_duration_since(Instant::now()).as_secs_f64(), "still inside a rate-limit pause from before the restart; waiting");
        }
        Ok(Fetcher {
            backoff: Backoff::new(cfg.retry),
            token,
            access: None,
            cooldown_until,
            cfg,
        })
    }

    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    fn health_key(&self) -> String {
        format!("source.{}", self.cfg.name)
    }

    /// Counts a request in `auditrelay_source_requests_total` by outcome.
    pub fn count(&self, outcome: &str) {
        metrics()
            .source_requests
            .with_label_values(&[&self.cfg.name, outcome])
            .inc();
    }

    /// Counts a 2xx answer by what it held (`ok` or `empty`).
    pub fn count_answer(&self, had_events: bool) {
        self.count(if had_events { "ok" } else { "empty" });
    }

    /// [`Fetcher::send`] for the common request: `GET url?query`, JSON
    /// accepted, the token as a bearer.
    pub async fn get_json<K: AsRef<str>>(
        &mut self,
        url: &url::Url,
        query: &[(K, String)],
    ) -> Result<Reply, Reply> {
        self.get_json_classified(url, query, |_, _| None).await
    }

    /// [`Fetcher::get_json`] with the answers read by `classify` first.
    pub async fn get_json_classified<K: AsRef<str>>(
        &mut self,
        url: &url::Url,
        query: &[(K, String)],
        classify: impl FnMut(u16, &[u8]) -> Option<Verdict>,
    ) -> Result<Reply, Reply> {
        let pairs: Vec<(&str, &str)> = query
            .iter()
            .map(|(k, v)| (k.as_ref(), v.as_str()))
            .collect();
        let build = |c: &reqwest::Client, t: Option<&Secret>| {
            let req = c
                .get(url.clone())
                .query(&pairs)
                .header(reqwest::header::ACCEPT, "application/json");
            match t {
                Some(t) => req.bearer_auth(t.expose()),
                None => req,
            }
        };
        self.send_classified(build, classify).await
    }

    /// Sends the request `build` makes until the API answers 2xx, or refuses
    /// it in a way waiting cannot fix (returned as `Err`). Rate limits pause
    /// every request of this source; 5xx, timeouts and broken connections
    /// are retried with backoff; a refused token is re-read and reported.
    /// Cancel-safe: only the pacing state changes.
    pub async fn send<F>(&mut self, build: F) -> Result<Reply, Reply>
    where
        F: Fn(&reqwest::Client, Option<&Secret>) -> reqwest::RequestBuilder,
    {
        self.send_classified(build, |_, _| None).await
    }

    /// [`Fetcher::send`], with each answer first read by `classify`: its
    /// verdict, when it has one, overrides what the status says.
    pub async fn send_classified<F, C>(&mut self, build: F, mut classify: C) -> Result<Reply, Reply>
    where
        F: Fn(&reqwest::Client, Option<&Secret>) -> reqwest::RequestBuilder,
        C: FnMut(u16, &[u8]) -> Option<Verdict>,
    {
        // A refused OAuth2 token is replaced once at once; refused again,
        // the client itself is the problem.
        let mut renewed = false;
        loop {
            if let Some(until) = self.cooldown_until {
                tokio::time::sleep_until(until.into()).await;
                self.cooldown_until = None;
            }
            if let Some(client) = &self.cfg.oauth2 {
                let access = client.token().await;
                self.token = Some(access.secret.clone());
                self.access = Some(access);
            }
            let started = Instant::now();
            let sent = build(&self.cfg.client, self.token.as_ref()).send().await;
            let resp = match sent {
                Ok(r) => r,
                Err(e) => {
                    self.retry_later(&crate::http::no_answer(e)).await;
                    continue;
                }
            };
            let status = resp.status().as_u16();
            let headers = resp.headers().clone();
            let body = match read_body(resp).await {
                Ok(b) => b,
                Err(e) => {
                    self.retry_later(&format!(
                        "HTTP {status}: reading the body failed (connection reset?): {}",
                        crate::http::describe_error(e)
                    ))
                    .await;
                    continue;
                }
            };
            metrics()
                .source_request_seconds
                .with_label_values(&[&self.cfg.name])
                .observe(started.elapsed().as_secs_f64());
            let verdict = classify(status, &body).or_else(|| self.by_status(status, &body));
            let reply = Reply {
                status,
                headers,
                body,
            };
            match verdict {
                None => {
                    self.answered(&reply.headers);
                    return Ok(reply);
                }
                Some(Verdict::RateLimited) => self.pause(&reply),
                Some(Verdict::Unauthorized) if self.cfg.oauth2.is_some() => {
                    renewed = self.refused_access(status, &reply.body, renewed).await;
                }
                Some(Verdict::Unauthorized) => self.refused_token(status, &reply.body).await,
                Some(Verdict::Retry(why)) => self.retry_later(&why).await,
                Some(Verdict::Refused(outcome)) => {
                    self.count(outcome);
                    return Err(reply);
                }
            }
        }
    }

    /// What the status alone says; `None` for a 2xx.
    fn by_status(&self, status: u16, body: &[u8]) -> Option<Verdict> {
        if self.cfg.rate_limit.status_codes.contains(&status) {
            return Some(Verdict::RateLimited);
        }
        match status {
            200..=299 => None,
            401 | 403 => Some(Verdict::Unauthorized),
            408 | 500.. => Some(Verdict::Retry(format!(
                "HTTP {status}: {}",
                self.shown(body)
            ))),
            _ => Some(Verdict::Refused("client_error")),
        }
    }

    /// A 2xx: the source is healthy; pause early if no requests are left.
    fn answered(&mut self, headers: &HeaderMap) {
        self.backoff.reset();
        self.cfg.health.set_ready(&self.health_key());
        if self.cfg.rate_limit.exhausted(headers) {
            if let Some(wait) = self.cfg.rate_limit.reset_wait(headers) {
                info!(source = %self.cfg.name, wait_s = wait.as_secs_f64(), "no requests left until the rate limit resets; pausing");
                self.cooldown_until = Some(Instant::now() + wait);
            }
        }
    }

    fn pause(&mut self, reply: &Reply) {
        let wait = self
            .cfg
            .rate_limit
            .announced_wait(&reply.headers)
            .unwrap_or(self.cfg.rate_limit_wait);
        self.count("rate_limited");
        metrics()
            .rate_limit_waits
            .with_label_values(&[&self.cfg.name])
            .inc();
        let pause = with_jitter(wait, self.cfg.rate_limit_jitter);
        warn!(source = %self.cfg.name, status = reply.status, wait_s = pause.as_secs_f64(), "rate limited: pausing all requests to this source");
        self.cooldown_until = Some(Instant::now() + pause);
        if let Some(file) = &self.cfg.cooldown_file {
            write_cooldown(file, pause);
        }
    }

    /// A transient failure: count it, log it, wait the next backoff delay.
    pub async fn retry_later(&mut self, why: &str) {
        self.count("transient_error");
        metrics()
            .source_retries
            .with_label_values(&[&self.cfg.name])
            .inc();
        let delay = self.backoff.next_delay();
        warn!(source = %self.cfg.name, error = %why, retry_in_s = delay.as_secs_f64(), "request failed; retrying");
        sleep(delay).await;
    }

    /// A refusal waiting will not fix: log what the API said with `hint`,
    /// then wait at least `auth_retry` (the operator must act).
    pub async fn give_up_for_now(&mut self, reply: &Reply, hint: &str) {
        let delay = self.backoff.next_delay().max(self.cfg.auth_retry);
        error!(source = %self.cfg.name, status = reply.status, response = %self.shown(&reply.body), retry_in_s = delay.as_secs_f64(), "the API refused the request; {hint}");
        sleep(delay).await;
    }

    /// The reply of an accepted request; after a refusal, `None` once
    /// [`Self::give_up_for_now`] has waited (the caller asks again).
    pub async fn accepted(&mut self, reply: Result<Reply, Reply>, hint: &str) -> Option<Reply> {
        match reply {
            Ok(reply) => Some(reply),
            Err(refused) => {
                self.give_up_for_now(&refused, hint).await;
                None
            }
        }
    }

    /// The API refused the OAuth2 access token: retire it; the first time
    /// retry at once with a new one, after that report and wait
    /// `auth_retry`. Returns whether the next refusal is a repeat.
    async fn refused_access(&mut self, status: u16, body: &[u8], renewed: bool) -> bool {
        self.count("unauthorized");
        let shown = self.shown(body);
        if let (Some(client), Some(used)) = (&self.cfg.oauth2, self.access.take()) {
            client.refused(&used).await;
        }
        self.token = None;
        if !renewed {
            return true;
        }
        let reason = format!(
            "{} (with an OAuth2 access token just issued by the oauth2.token_url of sources.{}: \
             check the client's scopes, audience and permissions)",
            (self.cfg.advice)(status, &shown),
            self.cfg.name
        );
        error!(source = %self.cfg.name, "{reason}");
        self.cfg.health.set_unready(&self.health_key(), reason);
        sleep(self.backoff.next_delay().max(self.cfg.auth_retry)).await;
        false
    }

    async fn refused_token(&mut self, status: u16, body: &[u8]) {
        self.count("unauthorized");
        let shown = self.shown(body);
        let Some(src) = self.cfg.token_source.clone() else {
            let reason = format!(
                "the API answered HTTP {status} ({shown}) and no token is configured; set token_file, token_env or token_credential",
            );
            error!(source = %self.cfg.name, "{reason}");
            self.cfg.health.set_unready(&self.health_key(), reason);
            sleep(self.backoff.next_delay().max(self.cfg.auth_retry)).await;
            return;
        };
        let reread = src.load();
        let rotated = matches!((&reread, &self.token), (Ok(new), Some(old)) if new != old);
        match reread {
            Ok(t) => self.token = Some(t),
            Err(e) => error!(source = %self.cfg.name, error = %e, "cannot re-read the API token"),
        }
        if rotated {
            info!(source = %self.cfg.name, from = %src.describe(), "API token changed; retrying with the new one");
            return;
        }
        let reason = format!(
            "{} (token from {})",
            (self.cfg.advice)(status, &shown),
            src.describe()
        );
        error!(source = %self.cfg.name, "{reason}");
        self.cfg.health.set_unready(&self.health_key(), reason);
        sleep(self.backoff.next_delay().max(self.cfg.auth_retry)).await;
    }
}

impl Fetcher {
    /// [`snippet`] of an answer, the token sent blanked out first: an API
    /// refusing a token may echo it.
    fn shown(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        match self.token.as_ref().map(Secret::expose) {
            Some(t) if !t.is_empty() => snippet(text.replace(t, "***").as_bytes()),
            _ => snippet(body),
        }
    }
}

/// The most a Content-Length may pre-size a body buffer: a larger (or
/// lying) one grows the buffer as the bytes arrive instead.
const MAX_PRESIZED_BODY: u64 = 64 << 20;

/// Reads a response body into one buffer, pre-sized from Content-Length:
/// a page is held once while it is read (`Response::bytes` holds the
/// received chunks and then their concatenation, twice a 10 MB page).
async fn read_body(mut resp: reqwest::Response) -> reqwest::Result<Bytes> {
    let hint = resp.content_length().unwrap_or(0).min(MAX_PRESIZED_BODY);
    let mut body = Vec::with_capacity(hint as usize);
    crate::huge_pages::advise(&body);
    while let Some(chunk) = resp.chunk().await? {
        body.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(body))
}

#[cfg(test)]
#[path = "fetch_body_tests.rs"]
mod body_tests;

/// The start of a response body for a log line, on one line.
pub fn snippet(body: &[u8]) -> String {
    let end = body.len().min(300);
    let text = String::from_utf8_lossy(&body[..end]);
    text.replace(['\n', '\r'], " ")
}
