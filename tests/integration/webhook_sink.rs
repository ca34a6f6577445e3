//! The webhook sink against a real HTTP receiver on loopback: encodings,
//! splitting on 413, dead letters for rejected events, auth, retries.

use crate::support;

use std::path::Path;
use std::time::Duration;

use auditrelay::event::Event;
use auditrelay::health::Health;
use auditrelay::sink::{DeadLetters, Sink};
use support::redirect::Redirect;
use support::webhook_receiver::{WebhookConfig, WebhookFaults, WebhookReceiver};

fn events(n: usize) -> Vec<Event> {
    support::sink::events(0, n)
}

fn build(dir: &Path, sink_toml: &str) -> (Box<dyn Sink>, DeadLetters, Health) {
    support::sink::build(
        dir,
        "hook",
        &format!("type = \"webhook\"\nretry = {{ initial = \"10ms\", max = \"50ms\" }}\nauth_retry = \"50ms\"\n{sink_toml}"),
    )
}

#[tokio::test]
async fn ndjson_gzip_signed_and_split_on_413() {
    let hook = WebhookReceiver::start(WebhookConfig {
        hmac_secret: Some(b"k3y".to_vec()),
        faults: WebhookFaults {
            too_large_over: Some(7),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("key"), "k3y").unwrap();
    let (sink, dl, _) = build(
        dir.path(),
        &format!(
            "url = \"{}\"\nencoding = \"ndjson\"\ncompression = \"gzip\"\nhmac_secret_file = \"{}/key\"\nbatch = {{ max_events = 50 }}\nheaders = {{ \"X-Tenant\" = \"t1\" }}",
            hook.url(),
            dir.path().display()
        ),
    );
    sink.deliver("s", &events(100)).await.unwrap();
    assert_eq!(hook.unique_count(), 100);
    assert!(hook.counts().values().all(|c| *c == 1));
    let stats = hook.stats();
    assert!(stats.too_large > 0, "413 never triggered a split");
    assert_eq!(stats.hmac_failures, 0);
    assert_eq!(hook.last_header("x-tenant").as_deref(), Some("t1"));
    assert_eq!(
        hook.last_header("content-encoding").as_deref(),
        Some("gzip")
    );
    // Events keep their content, newlines inside strings included.
    assert_eq!(hook.events()[0]["note"], "line\nbreak");
    assert!(!dl.path().exists(), "nothing should be dead-lettered");
}

#[tokio::test]
async fn rejected_events_are_isolated_and_dead_lettered_the_rest_delivered() {
    let hook = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    hook.set_reject_ids(["ev-0013", "ev-0042"]);
    let dir = tempfile::tempdir().unwrap();
    let (sink, dl, _) = build(dir.path(), &format!("url = \"{}\"", hook.url()));
    sink.deliver("s", &events(64)).await.unwrap();
    assert_eq!(hook.unique_count(), 62);
    let text = std::fs::read_to_string(dl.path()).unwrap();
    let rows: Vec<serde_json::Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let ids: Vec<&str> = rows.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(ids, ["ev-0013", "ev-0042"]);
    assert!(rows[0]["error"].as_str().unwrap().starts_with("HTTP 400"));
    assert_eq!(rows[0]["event"]["request_id"], "ev-0013");
}

#[tokio::test]
async fn transient_failures_and_wrong_credentials_are_retried_never_dropped() {
    let hook = WebhookReceiver::start(WebhookConfig {
        expect_authorization: Some("Bearer right".into()),
        faults: WebhookFaults {
            server_error: 0.3,
            rate_limit: 0.0,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("bearer");
    std::fs::write(&token, "wrong").unwrap();
    let (sink, dl, health) = build(
        dir.path(),
        &format!(
            "url = \"{}\"\ntoken_file = \"{}\"\nencoding = \"single\"",
            hook.url(),
            token.display()
        ),
    );
    let sink: std::sync::Arc<dyn Sink> = sink.into();
    let evs = events(20);
    let task = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.deliver("s", &evs).await })
    };
    // 401s: the sink waits and reports not ready; nothing is dropped.
    assert!(hook.wait_for_requests(3, Duration::from_secs(10)).await);
    let (ready, components) = health.snapshot();
    assert!(!ready, "{components:?}");
    assert!(components["sink.hook"].reason.contains("HTTP 401"));
    std::fs::write(&token, "right").unwrap();
    tokio::time::timeout(Duration::from_secs(30), task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(hook.unique_count(), 20);
    assert!(health.snapshot().0);
    assert!(hook.stats().server_errors > 0);
    assert!(!dl.path().exists());
}

#[tokio::test]
async fn an_outage_shows_in_readiness_and_nothing_is_lost_when_it_ends() {
    let hook = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    hook.stop().await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, _, health) = build(dir.path(), &format!("url = \"{}\"", hook.url()));
    let sink: std::sync::Arc<dyn Sink> = sink.into();
    let evs = events(50);
    let mut task = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.deliver("s", &evs).await })
    };
    // Bounded wait for the outage to show.
    let mut shown = false;
    for _ in 0..200 {
        let (ready, states) = health.snapshot();
        if !ready && states["sink.hook"].reason.contains("keep failing") {
            shown = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(shown, "the outage never showed in readiness");
    assert!(
        !task.is_finished(),
        "nothing may be confirmed while the receiver is down"
    );
    hook.restart()
        .await
        .expect("restart the receiver on its port");
    tokio::time::timeout(Duration::from_secs(30), &mut task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(hook.unique_count(), 50);
    assert!(health.snapshot().0, "ready again after the outage");
}

/// Waits (bounded) until the sink's readiness reason contains `text`.
async fn wait_unready_with(health: &Health, text: &str) -> String {
    let mut last = String::new();
    for _ in 0..400 {
        let (ready, states) = health.snapshot();
        last = states["sink.hook"].reason.clone();
        if !ready && last.contains(text) {
            return last;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("readiness never named {text:?}; last reason: {last:?}");
}

#[tokio::test]
async fn a_301_302_or_303_to_a_login_page_never_confirms_the_batch() {
    for status in [301, 302, 303] {
        let hook = WebhookReceiver::start(WebhookConfig {
            faults: WebhookFaults {
                redirect: Some(Redirect::LoginPage(status)),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let (sink, dl, health) = build(dir.path(), &format!("url = \"{}\"", hook.url_for("/in")));
        let sink: std::sync::Arc<dyn Sink> = sink.into();
        let evs = events(10);
        let task = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.deliver("s", &evs).await })
        };
        // Asked again every auth_retry, never confirmed, and the reason
        // names the status and where the receiver pointed.
        assert!(
            hook.wait_for_requests(3, Duration::from_secs(10)).await,
            "HTTP {status}: the batch was not sent again: {:?}",
            hook.stats()
        );
        assert!(
            !task.is_finished(),
            "HTTP {status} to a login page confirmed the batch"
        );
        let reason = wait_unready_with(&health, "/sso/login").await;
        assert!(reason.contains(&status.to_string()), "{reason}");
        let stats = hook.stats();
        assert_eq!(stats.login_page_hits, 0, "the redirect was followed");
        assert_eq!(hook.unique_count(), 0);
        // The receiver stops redirecting: everything arrives.
        hook.set_redirect(None);
        tokio::time::timeout(Duration::from_secs(30), task)
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        assert_eq!(hook.unique_count(), 10);
        assert!(health.snapshot().0, "ready again");
        assert!(!dl.path().exists());
    }
}

#[tokio::test]
async fn a_307_or_308_on_the_same_origin_is_followed_with_method_body_and_signature() {
    for status in [307, 308] {
        let hook = WebhookReceiver::start(WebhookConfig {
            hmac_secret: Some(b"k3y".to_vec()),
            expect_authorization: Some("Bearer t0k".into()),
            faults: WebhookFaults {
                redirect: Some(Redirect::Moved(status)),
                ..Default::default()
            },
            ..Default::default()
        })
        .await
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), "k3y").unwrap();
        std::fs::write(dir.path().join("token"), "t0k").unwrap();
        let (sink, _, _) = build(
            dir.path(),
            &format!(
                "url = \"{}\"\ncompression = \"gzip\"\nhmac_secret_file = \"{d}/key\"\ntoken_file = \"{d}/token\"",
                hook.url_for("/in"),
                d = dir.path().display()
            ),
        );
        tokio::time::timeout(Duration::from_secs(30), sink.deliver("s", &events(30)))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(hook.unique_count(), 30, "HTTP {status}: {:?}", hook.stats());
        let stats = hook.stats();
        assert!(stats.redirects > 0 && stats.moved_requests > 0, "{stats:?}");
        assert_eq!(stats.hmac_failures + stats.auth_failures, 0, "{stats:?}");
        assert_eq!(hook.last_path().as_deref(), Some("/moved/in"));
    }
}

#[tokio::test]
async fn a_307_to_another_origin_is_refused_unless_follow_redirects_allows_it() {
    let elsewhere = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    let hook = WebhookReceiver::start(WebhookConfig {
        faults: WebhookFaults {
            redirect: Some(Redirect::Url(307, elsewhere.url_for("/other"))),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, _, health) = build(dir.path(), &format!("url = \"{}\"", hook.url_for("/in")));
    let sink: std::sync::Arc<dyn Sink> = sink.into();
    let evs = events(5);
    let task = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.deliver("s", &evs).await })
    };
    assert!(hook.wait_for_requests(2, Duration::from_secs(10)).await);
    let reason = wait_unready_with(&health, "follow_redirects").await;
    assert!(
        reason.contains(&format!("127.0.0.1:{}/other", elsewhere.port())),
        "{reason}"
    );
    assert!(!task.is_finished());
    assert_eq!(elsewhere.requests(), 0, "followed to another origin");
    task.abort();

    // Allowed by the operator: delivered to where the receiver points.
    let dir = tempfile::tempdir().unwrap();
    let (sink, _, _) = build(
        dir.path(),
        &format!(
            "url = \"{}\"\nfollow_redirects = \"any_origin\"",
            hook.url_for("/in")
        ),
    );
    tokio::time::timeout(Duration::from_secs(30), sink.deliver("s", &events(5)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(elsewhere.unique_count(), 5);
    assert_eq!(elsewhere.last_path().as_deref(), Some("/other"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_demo_run_never_finishes_while_the_receiver_redirects() {
    const LIMIT: usize = 50;
    let hook = WebhookReceiver::start(WebhookConfig {
        faults: WebhookFaults {
            redirect: Some(Redirect::LoginPage(302)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bounded.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
state_dir = "{state}"
log_format = "json"
[server]
listen = "127.0.0.1:0"
[pipeline]
retry = {{ initial = "20ms", max = "100ms" }}
[sources.demo]
type = "demo"
rate = 0
batch_size = 10
limit = {LIMIT}
[sinks.hook]
type = "webhook"
inputs = ["demo"]
url = "{url}"
auth_retry = "50ms"
retry = {{ initial = "20ms", max = "100ms" }}
"#,
            state = dir.path().join("state").display(),
            url = hook.url_for("/in"),
        ),
    )
    .unwrap();
    let mut daemon = support::daemon::Daemon::spawn(&cfg, &dir.path().join("d.log"));
    // The daemon must keep asking, not finish: 20 redirected requests
    // take about a second at auth_retry = 50ms.
    let exited_early = tokio::select! {
        status = daemon.wait(Duration::from_secs(60)) => Some(status),
        asked = hook.wait_for_requests(20, Duration::from_secs(60)) => {
            assert!(asked, "the daemon stopped sending: {:?}", hook.stats());
            None
        }
    };
    assert!(
        exited_early.is_none(),
        "the run finished while the receiver held {} of {LIMIT} events: {:?}\n{}",
        hook.unique_count(),
        hook.stats(),
        daemon.log_text()
    );
    assert_eq!(hook.unique_count(), 0);
    assert!(
        daemon.log_text().contains("/sso/login"),
        "{}",
        daemon.log_text()
    );
    hook.set_redirect(None);
    let status = daemon.wait(Duration::from_secs(60)).await;
    assert!(
        status.is_some_and(|s| s.success()),
        "{status:?}\n{}",
        daemon.log_text()
    );
    assert_eq!(hook.unique_count(), LIMIT);
}

/// `encoding = "single"` sends one event per request whatever `batch` says:
/// a run of several events must never be confirmed by a request that
/// carried only its first one.
#[tokio::test]
async fn single_encoding_sends_every_event_even_with_a_larger_batch() {
    let hook = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, dl, _) = build(
        dir.path(),
        &format!(
            "url = \"{}\"\nencoding = \"single\"\nbatch = {{ max_events = 10 }}",
            hook.url()
        ),
    );
    sink.deliver("s", &events(25)).await.unwrap();
    assert_eq!(hook.unique_count(), 25, "confirmed events never sent");
    assert_eq!(hook.stats().requests, 25);
    assert!(!dl.path().exists());
}

#[tokio::test]
async fn concurrency_bounds_the_requests_on_the_wire_across_deliveries() {
    // The pipeline hands a sink several runs at once (pages in flight ×
    // runs per page): `concurrency` is what bounds the requests, and so
    // the request bodies held, whatever the number of callers.
    let hook = WebhookReceiver::start(WebhookConfig {
        faults: WebhookFaults {
            answer_delay: Some(Duration::from_millis(50)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (sink, _, _) = build(
        dir.path(),
        &format!(
            "url = \"{}\"\nconcurrency = 2\nbatch = {{ max_events = 10 }}",
            hook.url()
        ),
    );
    let all = events(120);
    let calls = all.chunks(20).map(|run| sink.deliver("s", run));
    for done in futures_util::future::join_all(calls).await {
        done.unwrap();
    }
    assert_eq!(hook.unique_count(), 120);
    let stats = hook.stats();
    assert_eq!(stats.answering, 0);
    assert!(
        stats.most_at_once == 2,
        "six deliveries at once, concurrency 2: {} requests were on the wire together",
        stats.most_at_once
    );
}
