//! The webhook sink with an `oauth2` table: its bearer token comes from the
//! token endpoint, a revoked token is replaced at once (one 401, no
//! `auth_retry` wait), and a client the endpoint refuses keeps the batch
//! (never confirmed, never dropped) with the sink's `/readyz` part naming it.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use auditrelay::health::Health;
use auditrelay::sink::{DeadLetters, Sink};
use support::token_endpoint::{ClientAuth, TokenEndpoint, TokenEndpointConfig};
use support::webhook_receiver::{WebhookConfig, WebhookReceiver};

const SECRET: &str = "hook-Client-SECRET-1a2b";

fn build(
    dir: &Path,
    hook: &WebhookReceiver,
    ep: &TokenEndpoint,
) -> (Box<dyn Sink>, DeadLetters, Health) {
    std::fs::write(dir.join("client_secret"), SECRET).unwrap();
    support::sink::build(
        dir,
        "oauth_hook",
        &format!(
            "type = \"webhook\"\nurl = \"{}\"\nretry = {{ initial = \"10ms\", max = \"50ms\" }}\n\
             auth_retry = \"30s\"\n\
             oauth2 = {{ token_url = \"{}\", client_id = \"auditrelay-test\", \
             client_secret_file = \"{}/client_secret\", client_auth = \"body\" }}\n",
            hook.url(),
            ep.token_url(),
            dir.display()
        ),
    )
}

async fn endpoint(secret: &str) -> TokenEndpoint {
    TokenEndpoint::start(TokenEndpointConfig {
        client_secret: secret.into(),
        auth: ClientAuth::Body,
        scopes: vec![],
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test]
async fn a_revoked_token_is_replaced_at_once_and_the_batch_delivered() {
    let ep = endpoint(SECRET).await;
    let hook = WebhookReceiver::start(WebhookConfig {
        access_tokens: Some(ep.issued()),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, _dl, _) = build(dir.path(), &hook, &ep);
    sink.deliver("s", &support::sink::events(0, 10))
        .await
        .unwrap();
    assert_eq!(hook.unique_count(), 10);
    assert_eq!(ep.stats().issued, 1);
    ep.issued().revoke_all();
    let started = Instant::now();
    tokio::time::timeout(
        Duration::from_secs(10),
        sink.deliver("s", &support::sink::events(10, 10)),
    )
    .await
    .expect("the revoked token was not replaced")
    .unwrap();
    // Well under auth_retry (30s): the 401 led to a new token, not a wait.
    assert!(started.elapsed() < Duration::from_secs(5));
    assert_eq!(hook.unique_count(), 20);
    assert_eq!(hook.stats().auth_failures, 1);
    assert_eq!(ep.stats().issued, 2);
}

#[tokio::test]
async fn a_refused_client_keeps_the_batch_and_names_the_sink() {
    let ep = endpoint("the-provider-wants-another").await;
    let hook = WebhookReceiver::start(WebhookConfig {
        access_tokens: Some(ep.issued()),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, dl, health) = build(dir.path(), &hook, &ep);
    let batch = support::sink::events(0, 5);
    let delivery = sink.deliver("s", &batch);
    // Not confirmed while the endpoint refuses the client…
    let reason = tokio::select! {
        _ = delivery => panic!("confirmed without a token"),
        reason = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let (ready, states) = health.snapshot();
                if !ready {
                    if let Some(s) = states.get("sink.oauth_hook.oauth2") {
                        return s.reason.clone();
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }) => reason.expect("the sink never reported the refused client"),
    };
    assert!(reason.contains("sinks.oauth_hook.oauth2"), "{reason}");
    assert!(reason.contains("invalid_client"), "{reason}");
    assert!(!reason.contains(SECRET));
    assert_eq!(hook.stats().requests, 0);
    assert!(!dl.path().exists(), "nothing may be dead-lettered");
}

#[tokio::test]
async fn a_receiver_echoing_the_access_token_does_not_put_it_in_readyz() {
    let ep = endpoint(SECRET).await;
    let hook = WebhookReceiver::start(WebhookConfig {
        access_tokens: Some(ep.issued()),
        faults: support::webhook_receiver::WebhookFaults {
            forbid_echoing_token: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, _dl, health) = build(dir.path(), &hook, &ep);
    let batch = support::sink::events(0, 5);
    let delivery = sink.deliver("s", &batch);
    let reason = tokio::select! {
        _ = delivery => panic!("confirmed though every request was refused"),
        reason = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let (ready, states) = health.snapshot();
                if !ready {
                    if let Some(s) = states.get("sink.oauth_hook") {
                        return s.reason.clone();
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }) => reason.expect("the sink never reported the refusal"),
    };
    assert!(reason.contains("HTTP 403"), "{reason}");
    let tokens = ep.issued().all();
    assert!(!tokens.is_empty());
    for t in tokens {
        assert!(
            !reason.contains(&t),
            "the access token shows in /readyz: {reason}"
        );
    }
}
