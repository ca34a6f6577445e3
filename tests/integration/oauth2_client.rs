//! The OAuth2 token client against the token endpoint fake: each client
//! authentication, renewal before expiry, one shared refresh under
//! concurrency, a 401 retiring a token once, Retry-After, and refusals
//! that name the component without leaking the secret.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use auditrelay::config::RetryConfig;
use auditrelay::health::Health;
use auditrelay::oauth2::{Failure, OAuth2Config, TokenClient, TokenClientOptions};
use support::token_endpoint::{ClientAuth, TokenEndpoint, TokenEndpointConfig};

struct Client {
    client: Arc<TokenClient>,
    health: Health,
    _dir: tempfile::TempDir,
}

/// A token client for `endpoint` authenticating as `auth`, its secret in a
/// file holding `secret`.
fn client(endpoint: &TokenEndpoint, auth: &str, secret: &str, component: &str) -> Client {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("client_secret");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    let toml = format!(
        "token_url = \"{}\"\nclient_id = \"auditrelay-test\"\nclient_secret_file = \"{}\"\n\
         scopes = [\"audit.read\"]\nclient_auth = \"{auth}\"\nextra_params = {{ resource = \"audit\" }}\n",
        endpoint.token_url(),
        file.display()
    );
    use figment::providers::{Format, Toml};
    let cfg: OAuth2Config = figment::Figment::from(Toml::string(&toml))
        .extract()
        .unwrap();
    let health = Health::default();
    let client = TokenClient::new(
        cfg,
        TokenClientOptions {
            component: component.into(),
            http: reqwest::Client::new(),
            health: Some(health.clone()),
            retry: RetryConfig {
                initial: Duration::from_millis(20),
                max: Duration::from_millis(200),
            },
            auth_retry: Duration::from_millis(100),
        },
    )
    .unwrap();
    Client {
        client: Arc::new(client),
        health,
        _dir: dir,
    }
}

async fn endpoint(cfg: TokenEndpointConfig) -> TokenEndpoint {
    TokenEndpoint::start(cfg).await.unwrap()
}

#[tokio::test]
async fn each_client_auth_gets_a_token_the_way_the_server_wants_it() {
    for (auth, mode) in [
        ("basic", ClientAuth::Basic),
        ("body", ClientAuth::Body),
        ("json", ClientAuth::Json),
    ] {
        let ep = endpoint(TokenEndpointConfig {
            auth: mode,
            ..Default::default()
        })
        .await;
        let secret = TokenEndpointConfig::default().client_secret;
        let c = client(&ep, auth, &secret, &format!("sources.auth_{auth}"));
        let token = c
            .client
            .fetch()
            .await
            .unwrap_or_else(|e| panic!("{auth}: {e}"));
        assert!(ep.issued().accepts(token.secret.expose()), "{auth}");
        let stats = ep.stats();
        assert_eq!(stats.auth_seen, [mode], "{auth}");
        let fields = &stats.fields[0];
        assert_eq!(fields["grant_type"], "client_credentials");
        assert_eq!(fields["scope"], "audit.read");
        assert_eq!(fields["resource"], "audit");
        assert!(token
            .expires_in()
            .is_some_and(|d| d > Duration::from_secs(3500)));
    }
}

#[tokio::test]
async fn concurrent_requests_share_one_refresh() {
    let ep = endpoint(TokenEndpointConfig {
        delay: Some(Duration::from_millis(200)),
        ..Default::default()
    })
    .await;
    let c = client(
        &ep,
        "basic",
        &TokenEndpointConfig::default().client_secret,
        "sources.crowd",
    );
    let tokens = futures_util::future::join_all((0..20).map(|_| c.client.token())).await;
    assert_eq!(ep.stats().requests, 1, "a stampede on the token endpoint");
    assert!(tokens.iter().all(|t| t.secret == tokens[0].secret));
    // 20 requests refused with the same token: still one refresh.
    futures_util::future::join_all(tokens.iter().map(|t| c.client.refused(t))).await;
    let renewed = futures_util::future::join_all((0..20).map(|_| c.client.token())).await;
    assert_eq!(ep.stats().requests, 2);
    assert!(renewed.iter().all(|t| t.secret != tokens[0].secret));
    // A late 401 for the old token does not retire the new one.
    c.client.refused(&tokens[0]).await;
    let again = c.client.token().await;
    assert_eq!(again.secret, renewed[0].secret);
    assert_eq!(ep.stats().requests, 2);
}

#[tokio::test]
async fn a_token_is_renewed_before_it_expires() {
    let ep = endpoint(TokenEndpointConfig {
        lifetime: Duration::from_secs(2),
        expires_in_as_string: true,
        ..Default::default()
    })
    .await;
    let c = client(
        &ep,
        "basic",
        &TokenEndpointConfig::default().client_secret,
        "sources.short",
    );
    let first = c.client.token().await;
    assert_eq!(c.client.token().await.secret, first.secret);
    // Half the lifetime is the largest margin: renewed after 1 s, while
    // the first token still works.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert!(ep.issued().accepts(first.secret.expose()));
    let second = c.client.token().await;
    assert_ne!(second.secret, first.secret);
    assert_eq!(ep.stats().issued, 2);
}

#[tokio::test]
async fn unavailable_answers_are_retried_after_retry_after() {
    let ep = endpoint(TokenEndpointConfig {
        unavailable_every: Some(1),
        ..Default::default()
    })
    .await;
    let c = client(
        &ep,
        "basic",
        &TokenEndpointConfig::default().client_secret,
        "sources.busy",
    );
    match c.client.fetch().await {
        Err(Failure::Transient { after, why }) => {
            assert_eq!(after, Some(Duration::from_secs(1)));
            assert!(why.contains("503"), "{why}");
        }
        other => panic!("not transient: {other:?}"),
    }
    // Every second request fails: token() gets through by retrying.
    ep.state().cfg.unavailable_every = Some(2);
    let started = std::time::Instant::now();
    let token = tokio::time::timeout(Duration::from_secs(10), c.client.token())
        .await
        .expect("token despite 503s");
    assert!(ep.issued().accepts(token.secret.expose()));
    // Retry-After: 1 (capped at retry.max = 200ms here) was waited.
    assert!(started.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn a_wrong_secret_is_an_actionable_error_without_the_secret() {
    let ep = endpoint(TokenEndpointConfig::default()).await;
    let wrong = "wrong-Secret-9f8e7d";
    for auth in ["basic", "body", "json"] {
        let component = format!("sources.wrong_{auth}");
        let c = client(&ep, auth, wrong, &component);
        let err = c.client.fetch().await.unwrap_err();
        let Failure::Refused(text) = &err else {
            panic!("{auth}: not a refusal: {err:?}");
        };
        assert!(text.contains("invalid_client"), "{text}");
        assert!(text.contains("client_id"), "{text}");
        assert!(!text.contains(wrong), "{text}");
        let (ready, states) = c.health.snapshot();
        assert!(!ready);
        let state = &states[&format!("source.wrong_{auth}.oauth2")];
        assert!(state.reason.contains(&component), "{}", state.reason);
        assert!(!state.reason.contains(wrong));
    }
    // Basic refusals are 401 with a challenge, the others 400: both refused.
    assert_eq!(ep.stats().invalid_client, 3);
}

#[tokio::test]
async fn a_token_without_expires_in_is_kept_until_refused() {
    let ep = endpoint(TokenEndpointConfig {
        omit_expires_in: true,
        ..Default::default()
    })
    .await;
    let c = client(
        &ep,
        "basic",
        &TokenEndpointConfig::default().client_secret,
        "sources.forever",
    );
    let first = c.client.token().await;
    assert!(first.expires_in().is_none());
    assert_eq!(c.client.token().await.secret, first.secret);
    c.client.refused(&first).await;
    assert_ne!(c.client.token().await.secret, first.secret);
    assert_eq!(ep.stats().issued, 2);
}

/// Every way the secret travels in a token request (raw, form-encoded,
/// JSON-escaped, inside the Basic credentials); `text` holds none of them,
/// not even a 10-character piece of one.
fn assert_no_secret(text: &str, client_id: &str, secret: &str, what: &str) {
    use base64::Engine as _;
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let json = serde_json::to_string(secret).unwrap();
    let forms = [
        secret.to_string(),
        enc(secret),
        json.trim_matches('"').to_string(),
        base64::engine::general_purpose::STANDARD.encode(format!(
            "{}:{}",
            enc(client_id),
            enc(secret)
        )),
    ];
    for form in &forms {
        let chars: Vec<char> = form.chars().collect();
        for piece in chars.windows(10) {
            let piece: String = piece.iter().collect();
            assert!(
                !text.contains(&piece),
                "{what}: the secret (as {form}) shows in: {text}"
            );
        }
    }
}

#[tokio::test]
async fn a_token_endpoint_echoing_the_request_does_not_leak_the_secret() {
    let ep = endpoint(TokenEndpointConfig {
        echo_request_on_error: true,
        ..Default::default()
    })
    .await;
    // Characters each client authentication encodes its own way.
    let wrong = "wr0ng+Secret/9=\"x&y%z-0123456789";
    for auth in ["basic", "body", "json"] {
        let component = format!("sources.echo_{auth}");
        let c = client(&ep, auth, wrong, &component);
        let err = c.client.fetch().await.unwrap_err();
        let Failure::Refused(text) = &err else {
            panic!("{auth}: not a refusal: {err:?}");
        };
        assert!(text.contains("HTTP 40"), "{auth}: {text}");
        assert_no_secret(text, "auditrelay-test", wrong, auth);
        let (_, states) = c.health.snapshot();
        let reason = &states[&format!("source.echo_{auth}.oauth2")].reason;
        assert_no_secret(reason, "auditrelay-test", wrong, auth);
    }
}

#[tokio::test]
async fn retry_after_zero_does_not_make_a_hot_loop_of_token_requests() {
    let ep = endpoint(TokenEndpointConfig {
        unavailable_every: Some(1),
        unavailable_retry_after: "0".into(),
        ..Default::default()
    })
    .await;
    let c = client(
        &ep,
        "basic",
        &TokenEndpointConfig::default().client_secret,
        "sources.retry_after_zero",
    );
    let waited = tokio::time::timeout(Duration::from_millis(600), c.client.token()).await;
    assert!(waited.is_err(), "no token from an endpoint that is down");
    // Backoff 20ms doubling to 200ms: about 6 requests in 600ms; without
    // it, one request per round trip (hundreds).
    let requests = ep.stats().requests;
    assert!(requests <= 12, "{requests} token requests in 600 ms");
}

#[tokio::test]
async fn a_failing_refresh_keeps_the_usable_token_without_hammering_the_endpoint() {
    let ep = endpoint(TokenEndpointConfig {
        lifetime: Duration::from_secs(4),
        ..Default::default()
    })
    .await;
    let c = client(
        &ep,
        "basic",
        &TokenEndpointConfig::default().client_secret,
        "sources.refresh_down",
    );
    let first = c.client.token().await;
    // Past half its life (the refresh margin is capped at half), the
    // endpoint goes down asking for an immediate retry.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    {
        let mut st = ep.state();
        st.cfg.unavailable_every = Some(1);
        st.cfg.unavailable_retry_after = "0".into();
    }
    let before = ep.stats().requests;
    for _ in 0..20 {
        let t = tokio::time::timeout(Duration::from_millis(500), c.client.token())
            .await
            .expect("the usable token is handed out while the refresh fails");
        assert_eq!(t.secret, first.secret);
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    let requests = ep.stats().requests - before;
    assert!(requests <= 8, "{requests} token requests in about 0.5 s");
}
