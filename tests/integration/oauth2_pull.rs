//! The real binary pulling a paginated API with OAuth2 client credentials:
//! access tokens that expire every 3 s, a token endpoint that sometimes
//! answers 503, revoked tokens (401 mid-walk), SIGKILLs; every event
//! delivered and no secret in any log line at trace level. And a client
//! the token endpoint refuses: `/readyz` names it, and it recovers once
//! the provider accepts the secret.

use crate::support;

use std::path::Path;
use std::time::Duration;

use base64::Engine as _;
use chrono::Utc;
use rand::Rng;
use support::daemon::Daemon;
use support::harness::{metric_value, wait_for_all, wait_unready, Setup};
use support::pull_fake::{PullFake, PullFakeConfig, PullMode};
use support::token_endpoint::{TokenEndpoint, TokenEndpointConfig};
use support::webhook_receiver::{WebhookConfig, WebhookReceiver};

const CLIENT_SECRET: &str = "zaita-Client-SECRET-4b9d:/+";

/// The source section, authenticating at the token endpoint as `client_auth`.
fn source_with(fake: &PullFake, ep: &TokenEndpoint, client_auth: &str) -> String {
    format!(
        r#"type = "http_pull"
url = "{url}"
path = "/api/v1/audit/events"
query = {{ start_time = "{{since}}", end_time = "{{until}}", page_size = "{{page_size}}", page_token = "{{cursor}}" }}
pagination = {{ mode = "token", token_path = "next_page_token" }}
id_path = "event_id"
time_path = "timestamp"
type_path = "action"
page_size = 20
start_at = "-4h"
poll_interval = "200ms"
timeout = "5s"
auth_retry = "300ms"
retry = {{ initial = "20ms", max = "300ms" }}

[sources.zaita.oauth2]
token_url = "{token_url}"
client_id = "auditrelay-test"
client_secret_file = "{{dir}}/client_secret"
scopes = ["audit.read"]
audience = "https://api.zaita.example"
client_auth = "{client_auth}"
"#,
        url = fake.url(),
        token_url = ep.token_url(),
    )
}

fn source(fake: &PullFake, ep: &TokenEndpoint) -> String {
    source_with(fake, ep, "basic")
}

async fn hook() -> WebhookReceiver {
    WebhookReceiver::start(WebhookConfig {
        id_field: "fake_ref".into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// The daemon with every log line down to trace.
fn spawn_traced(setup: &Setup) -> Daemon {
    Daemon::spawn_with_env(
        &setup.config,
        &setup.log(),
        &[("RUST_LOG", Path::new("trace"))],
    )
}

/// What must never be in a log: the client secret (also as Basic
/// credentials) and every access token issued.
fn assert_no_secret(log: &str, ep: &TokenEndpoint) {
    let enc = |s: &str| url::form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let basic = base64::engine::general_purpose::STANDARD
        .encode(format!("auditrelay-test:{}", enc(CLIENT_SECRET)));
    for secret in [CLIENT_SECRET.to_string(), enc(CLIENT_SECRET), basic] {
        assert!(!log.contains(&secret), "the client secret is in the log");
    }
    let tokens = ep.issued().all();
    assert!(!tokens.is_empty());
    for token in tokens {
        assert!(!log.contains(&token), "access token {token} is in the log");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oauth2_tokens_expiring_every_3s_across_sigkills_lose_nothing() {
    let ep = TokenEndpoint::start(TokenEndpointConfig {
        client_secret: CLIENT_SECRET.into(),
        lifetime: Duration::from_secs(3),
        audience: Some("https://api.zaita.example".into()),
        unavailable_every: Some(5),
        ..Default::default()
    })
    .await
    .unwrap();
    let fake = PullFake::start(PullFakeConfig {
        mode: PullMode::TokenBody,
        max_page_size: 13,
        server_error: 0.03,
        empty_id_every: 6,
        access_tokens: Some(ep.issued()),
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook().await;
    let now = Utc::now();
    let mut expected = fake.add_spread(
        700,
        now - chrono::Duration::minutes(200),
        now - chrono::Duration::minutes(1),
    );
    let setup = Setup::new("zaita", &source(&fake, &ep), &hook);
    setup.write("client_secret", CLIENT_SECRET);
    // Rounds long enough for tokens to expire under the walk.
    for round in 0..4 {
        let mut daemon = spawn_traced(&setup);
        let before = hook.stats().requests;
        assert!(
            hook.wait_for_requests(before + 1, Duration::from_secs(30))
                .await,
            "no progress in round {round}:\n{}",
            setup.tail(30)
        );
        let pause = rand::rng().random_range(500..3500);
        tokio::time::sleep(Duration::from_millis(pause)).await;
        if round == 2 {
            // Revoked at the provider: the API answers 401 mid-walk.
            ep.issued().revoke_all();
        }
        daemon.kill().await;
        expected.extend(fake.add_aged(5, Duration::ZERO));
    }
    let mut daemon = spawn_traced(&setup);
    wait_for_all(&expected, &hook, &setup).await;
    // Past at least one more expiry while running.
    let issued = ep.stats().issued;
    tokio::time::sleep(Duration::from_secs(4)).await;
    ep.issued().revoke_all();
    expected.extend(fake.add_aged(30, Duration::ZERO));
    wait_for_all(&expected, &hook, &setup).await;
    let metrics = setup.metrics().await;
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());

    let tokens = ep.stats();
    assert!(
        tokens.issued > issued,
        "no renewal while running: {tokens:?}"
    );
    assert_eq!(tokens.invalid_client, 0, "{tokens:?}");
    assert_eq!(tokens.bad_request, 0, "{tokens:?}");
    assert!(tokens.unavailable > 0, "503s never exercised: {tokens:?}");
    let api = fake.stats();
    assert!(api.unauthorized > 0, "401s never exercised: {api:?}");
    assert!(
        metric_value(
            &metrics,
            "auditrelay_oauth2_token_requests_total{component=\"sources.zaita\",outcome=\"ok\"}"
        ) >= 1.0,
        "{metrics}"
    );
    let log = setup.log_text();
    assert!(log.contains("TRACE"), "the log is not at trace level");
    assert!(log.contains("fetched an OAuth2 access token"));
    assert_no_secret(&log, &ep);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_client_turns_readyz_unready_until_the_provider_accepts_it() {
    let ep = TokenEndpoint::start(TokenEndpointConfig {
        // The provider expects another secret than the file holds, in a
        // JSON body: the secret travels in the body, which must not reach
        // a trace line either.
        client_secret: "rotated-at-the-provider".into(),
        auth: support::token_endpoint::ClientAuth::Json,
        audience: Some("https://api.zaita.example".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let fake = PullFake::start(PullFakeConfig {
        access_tokens: Some(ep.issued()),
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook().await;
    let expected = fake.add_aged(15, Duration::from_secs(60));
    let setup = Setup::new("zaita", &source_with(&fake, &ep, "json"), &hook);
    setup.write("client_secret", CLIENT_SECRET);
    let mut daemon = spawn_traced(&setup);
    let reason = wait_unready(&setup, Duration::from_secs(20))
        .await
        .expect("readyz stays ready while the token endpoint refuses the client");
    assert!(reason.contains("sources.zaita.oauth2"), "{reason}");
    assert!(reason.contains("invalid_client"), "{reason}");
    assert_eq!(hook.unique_count(), 0);
    ep.set_client_secret(CLIENT_SECRET);
    wait_for_all(&expected, &hook, &setup).await;
    let ready = async {
        for _ in 0..100 {
            if setup.readyz().await.is_some_and(|(s, _)| s == 200) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    };
    assert!(ready.await, "{:?}", setup.readyz().await);
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    let log = setup.log_text();
    assert!(log.contains("the OAuth2 token endpoint refused the client"));
    assert_no_secret(&log, &ep);
}

/// `auditrelay validate [--online]` on the config of `setup`.
async fn validate(setup: &Setup, online: bool) -> (bool, String) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_auditrelay"));
    cmd.arg("validate").arg("--config").arg(&setup.config);
    if online {
        cmd.arg("--online");
    }
    let out = tokio::time::timeout(Duration::from_secs(60), cmd.output())
        .await
        .expect("validate finishes")
        .expect("validate runs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_checks_the_oauth2_table_and_online_fetches_a_token() {
    let ep = TokenEndpoint::start(TokenEndpointConfig {
        client_secret: CLIENT_SECRET.into(),
        audience: Some("https://api.zaita.example".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let fake = PullFake::start(PullFakeConfig::default()).await.unwrap();
    let hook = hook().await;
    let setup = Setup::new("zaita", &source(&fake, &ep), &hook);
    setup.write("client_secret", CLIENT_SECRET);
    let (ok, out) = validate(&setup, true).await;
    assert!(ok, "{out}");
    assert!(
        out.contains("sources.zaita.oauth2: token fetched (expires in"),
        "{out}"
    );
    assert!(!out.contains(CLIENT_SECRET));
    for token in ep.issued().all() {
        assert!(!out.contains(&token));
    }

    setup.write("client_secret", "not-the-secret");
    let (ok, out) = validate(&setup, true).await;
    assert!(!ok, "{out}");
    assert!(
        out.contains("sources.zaita.oauth2: TOKEN REQUEST FAILED"),
        "{out}"
    );
    assert!(out.contains("invalid_client"), "{out}");
    assert!(!out.contains("not-the-secret"), "{out}");

    // A static token too, and a bad token_url: both named by key path.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    let text = text
        .replace(
            "type = \"http_pull\"",
            "type = \"http_pull\"\ntoken_file = \"/dev/null\"",
        )
        .replace(&ep.token_url(), "ftp://token.example/");
    std::fs::write(&setup.config, text).unwrap();
    let (ok, out) = validate(&setup, false).await;
    assert!(!ok, "{out}");
    assert!(out.contains("sources.zaita.token_file"), "{out}");
    assert!(out.contains("sources.zaita.oauth2.token_url"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_api_echoing_the_access_token_does_not_put_it_in_readyz_or_the_log() {
    let ep = TokenEndpoint::start(TokenEndpointConfig {
        client_secret: CLIENT_SECRET.into(),
        auth: support::token_endpoint::ClientAuth::Json,
        audience: Some("https://api.zaita.example".into()),
        ..Default::default()
    })
    .await
    .unwrap();
    let fake = PullFake::start(PullFakeConfig {
        access_tokens: Some(ep.issued()),
        forbid_echoing_token: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = hook().await;
    fake.add_aged(5, Duration::from_secs(60));
    let setup = Setup::new("zaita", &source_with(&fake, &ep, "json"), &hook);
    setup.write("client_secret", CLIENT_SECRET);
    let mut daemon = spawn_traced(&setup);
    let reason = wait_unready(&setup, Duration::from_secs(20))
        .await
        .expect("readyz stays ready while the API refuses every token");
    assert!(reason.contains("403"), "{reason}");
    for token in ep.issued().all() {
        assert!(
            !reason.contains(&token),
            "access token in /readyz: {reason}"
        );
    }
    assert!(daemon
        .terminate(Duration::from_secs(20))
        .await
        .expect("exit")
        .success());
    assert_no_secret(&setup.log_text(), &ep);
}
