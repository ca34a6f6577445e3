//! A fake OAuth2 token endpoint (client-credentials grant, RFC 6749 §4.4)
//! and the access tokens it issued, for the API fakes to check.
//!
//! Like real identity providers it is strict: the client authenticates in
//! exactly the way configured (`Basic` with form-encoded id and secret,
//! form fields, or a JSON body), a wrong secret is `invalid_client` (401
//! with `WWW-Authenticate` when Basic was used, 400 otherwise), a wrong
//! grant is `unsupported_grant_type`, a scope or audience it does not know
//! is `invalid_scope` / `invalid_request`. Tokens live `lifetime`, with no
//! grace after `expires_in` (harsher than most servers). Options: slow
//! answers, every Nth request a 503 with `Retry-After`, `expires_in` as a
//! string or left out.

use std::collections::HashMap;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use base64::Engine as _;
use rand::Rng;
use serde_json::{json, Value};

use super::http1::{Request, Response};
use super::paged::{Answer, PagedApi, PagedFake};

pub const TOKEN_PATH: &str = "/oauth2/token";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ClientAuth {
    Basic,
    Body,
    Json,
}

#[derive(Clone, Debug)]
pub struct TokenEndpointConfig {
    pub client_id: String,
    pub client_secret: String,
    pub auth: ClientAuth,
    pub lifetime: Duration,
    /// Scopes the client may ask for (none asked: all of them granted).
    pub scopes: Vec<String>,
    /// The audience the client must name, when set.
    pub audience: Option<String>,
    /// Every answer this much later.
    pub delay: Option<Duration>,
    /// Every Nth token request is answered 503 with `Retry-After:
    /// unavailable_retry_after`.
    pub unavailable_every: Option<u64>,
    /// The `Retry-After` of those answers (`"1"`; `"0"`, as busy gateways
    /// send, asks for an immediate retry).
    pub unavailable_retry_after: String,
    pub expires_in_as_string: bool,
    pub omit_expires_in: bool,
    /// Error answers are a text page echoing the request as received
    /// (headers, then body), as debugging gateways and some WAFs send.
    pub echo_request_on_error: bool,
}

impl Default for TokenEndpointConfig {
    fn default() -> Self {
        TokenEndpointConfig {
            client_id: "auditrelay-test".into(),
            // Characters Basic auth must form-encode (RFC 6749 §2.3.1).
            client_secret: "s3cr:t/+=%&x".into(),
            auth: ClientAuth::Basic,
            lifetime: Duration::from_secs(3600),
            scopes: vec!["audit.read".into()],
            audience: None,
            delay: None,
            unavailable_every: None,
            unavailable_retry_after: "1".into(),
            expires_in_as_string: false,
            omit_expires_in: false,
            echo_request_on_error: false,
        }
    }
}

/// The access tokens issued and when each expires; APIs check with
/// [`Issued::accepts`].
#[derive(Clone, Debug, Default)]
pub struct Issued(Arc<Mutex<HashMap<String, Instant>>>);

impl Issued {
    pub fn accepts(&self, token: &str) -> bool {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(token).is_some_and(|exp| Instant::now() < *exp)
    }

    /// Every token issued so far becomes invalid (a revocation).
    pub fn revoke_all(&self) {
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        for exp in map.values_mut() {
            *exp = now;
        }
    }

    /// Every token ever issued (to look for them in logs).
    pub fn all(&self) -> Vec<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.keys().cloned().collect()
    }
}

#[derive(Clone, Debug, Default)]
pub struct TokenStats {
    pub requests: u64,
    pub issued: u64,
    pub invalid_client: u64,
    pub bad_request: u64,
    pub unavailable: u64,
    /// How the client authenticated, per request.
    pub auth_seen: Vec<ClientAuth>,
    /// The fields of each request (the secret blanked).
    pub fields: Vec<HashMap<String, String>>,
}

pub struct TokenState {
    pub cfg: TokenEndpointConfig,
    stats: TokenStats,
}

pub struct TokenApi {
    issued: Issued,
}

pub type TokenEndpoint = PagedFake<TokenApi>;

impl TokenEndpoint {
    pub async fn start(cfg: TokenEndpointConfig) -> io::Result<TokenEndpoint> {
        PagedFake::serve(
            TokenApi {
                issued: Issued::default(),
            },
            TokenState {
                cfg,
                stats: TokenStats::default(),
            },
        )
    }

    pub fn token_url(&self) -> String {
        format!("{}{TOKEN_PATH}", self.url())
    }

    pub fn issued(&self) -> Issued {
        self.api().issued.clone()
    }

    pub fn stats(&self) -> TokenStats {
        self.state().stats.clone()
    }

    /// Changes the secret the server expects (a rotation at the provider).
    pub fn set_client_secret(&self, secret: &str) {
        self.state().cfg.client_secret = secret.into();
    }
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    Response::json(
        status,
        json!({"error": error, "error_description": description}).to_string(),
    )
    .with_header("Cache-Control", "no-store")
}

/// The request as a gateway's error page shows it.
fn echo(req: &Request) -> Vec<u8> {
    let mut page = format!("Bad request. You sent:\n{} {}\n", req.method, req.target);
    for (k, v) in &req.headers {
        page.push_str(&format!("{k}: {v}\n"));
    }
    page.push('\n');
    let mut page = page.into_bytes();
    page.extend_from_slice(&req.body);
    page
}

fn form_decode(s: &str) -> String {
    url::form_urlencoded::parse(format!("x={s}").as_bytes())
        .next()
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default()
}

impl PagedApi for TokenApi {
    type State = TokenState;

    fn unreadable(&self, _st: &mut TokenState, status: u16, why: &str) -> Response {
        oauth_error(status, "invalid_request", why)
    }

    fn answer(&self, st: &mut TokenState, req: &Request) -> Answer {
        let mut resp = self.decide(st, req);
        if st.cfg.echo_request_on_error && resp.status >= 400 {
            resp = Response::new(resp.status, "text/plain", echo(req));
        }
        let mut answer: Answer = resp.into();
        answer.delay = st.cfg.delay;
        answer
    }
}

impl TokenApi {
    fn decide(&self, st: &mut TokenState, req: &Request) -> Response {
        st.stats.requests += 1;
        if req.path() != TOKEN_PATH {
            return oauth_error(404, "not_found", "no such endpoint");
        }
        if req.method != "POST" {
            return oauth_error(405, "invalid_request", "the token endpoint takes POST");
        }
        if let Some(n) = st.cfg.unavailable_every {
            if st.stats.requests.is_multiple_of(n) {
                st.stats.unavailable += 1;
                return oauth_error(503, "temporarily_unavailable", "try again")
                    .with_header("Retry-After", st.cfg.unavailable_retry_after.clone());
            }
        }
        let content_type = req.header("content-type").unwrap_or("");
        let mut fields: HashMap<String, String> = HashMap::new();
        if content_type.starts_with("application/x-www-form-urlencoded") {
            for (k, v) in url::form_urlencoded::parse(&req.body) {
                fields.insert(k.into_owned(), v.into_owned());
            }
        } else if content_type.starts_with("application/json") {
            match serde_json::from_slice::<Value>(&req.body) {
                Ok(Value::Object(map)) => {
                    for (k, v) in map {
                        if let Value::String(s) = v {
                            fields.insert(k, s);
                        }
                    }
                }
                _ => {
                    st.stats.bad_request += 1;
                    return oauth_error(400, "invalid_request", "body is not a JSON object");
                }
            }
        } else {
            st.stats.bad_request += 1;
            return oauth_error(400, "invalid_request", "unsupported content type");
        }
        let basic = req
            .header("authorization")
            .and_then(|h| h.strip_prefix("Basic "))
            .and_then(|b| base64::engine::general_purpose::STANDARD.decode(b).ok())
            .and_then(|b| String::from_utf8(b).ok())
            .and_then(|s| {
                let (id, secret) = s.split_once(':')?;
                Some((form_decode(id), form_decode(secret)))
            });
        let seen = match (&basic, content_type.starts_with("application/json")) {
            (Some(_), _) => ClientAuth::Basic,
            (None, true) => ClientAuth::Json,
            (None, false) => ClientAuth::Body,
        };
        st.stats.auth_seen.push(seen);
        let mut logged = fields.clone();
        if logged.contains_key("client_secret") {
            logged.insert("client_secret".into(), "***".into());
        }
        st.stats.fields.push(logged);
        let (id, secret) = match basic {
            Some(pair) => pair,
            None => (
                fields.get("client_id").cloned().unwrap_or_default(),
                fields.get("client_secret").cloned().unwrap_or_default(),
            ),
        };
        let cfg = &st.cfg;
        if seen != cfg.auth || id != cfg.client_id || secret != cfg.client_secret {
            st.stats.invalid_client += 1;
            let resp = oauth_error(
                if seen == ClientAuth::Basic { 401 } else { 400 },
                "invalid_client",
                "Client authentication failed",
            );
            return if seen == ClientAuth::Basic {
                resp.with_header("WWW-Authenticate", "Basic realm=\"token\"")
            } else {
                resp
            };
        }
        if fields.get("grant_type").map(String::as_str) != Some("client_credentials") {
            st.stats.bad_request += 1;
            return oauth_error(
                400,
                "unsupported_grant_type",
                "grant_type must be client_credentials",
            );
        }
        let scope = fields.get("scope").cloned().unwrap_or_default();
        if scope
            .split(' ')
            .filter(|s| !s.is_empty())
            .any(|s| !cfg.scopes.iter().any(|k| k == s))
        {
            st.stats.bad_request += 1;
            return oauth_error(
                400,
                "invalid_scope",
                "the client may not ask for this scope",
            );
        }
        if cfg.audience.is_some() && fields.get("audience") != cfg.audience.as_ref() {
            st.stats.bad_request += 1;
            return oauth_error(400, "invalid_request", "unknown audience");
        }
        let token = format!("at_{:032x}", rand::rng().random::<u128>());
        self.issued
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(token.clone(), Instant::now() + cfg.lifetime);
        st.stats.issued += 1;
        let mut body = json!({"access_token": token, "token_type": "Bearer"});
        if !cfg.omit_expires_in {
            let secs = cfg.lifetime.as_secs();
            body["expires_in"] = if cfg.expires_in_as_string {
                json!(secs.to_string())
            } else {
                json!(secs)
            };
        }
        if !scope.is_empty() {
            body["scope"] = json!(scope);
        }
        Response::json(200, body.to_string()).with_header("Cache-Control", "no-store")
    }
}
