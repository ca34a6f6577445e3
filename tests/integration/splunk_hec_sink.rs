//! The Splunk HEC sink against the HEC fake over loopback: indexer acks
//! (late, lost, held), rejected events, busy and rate-limited answers, token
//! and `indexer_ack` mistakes, health, TLS.

use crate::support;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use auditrelay::event::Event;
use auditrelay::health::Health;
use auditrelay::sink::{DeadLetters, Sink, SinkContext};
use bytes::Bytes;
use chrono::{TimeZone, Utc};
use serde_json::Value;
use support::hec_fake::{HecFake, HecFakeConfig, HecFaults, STICKY_COOKIE};
use support::redirect::Redirect;
use support::tls::{TestPki, TlsFront};

pub(crate) const TOKEN: &str = "7c1e0a52-6a0b-4b8e-9f0d-3c2b1a0f9e8d";
pub(crate) const LONG: Duration = Duration::from_secs(60);

pub(crate) fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| {
            let time = Utc.timestamp_opt(1_767_225_600 + i as i64, 123_456_789).unwrap();
            Event {
                raw: Bytes::from(format!(
                    "{{\"request_id\":\"ev-{i:04}\",\"identity\":{{\"email\":\"user{}@example.com\"}},\
                     \"note\":\"line\\nbreak \\u00e9\",\n  \"n\":{i}}}",
                    i % 7
                )),
                id: Some(format!("ev-{i:04}").into()),
                time: Some(time),
                kind: None,
            }
        })
        .collect()
}

pub(crate) struct Built {
    pub(crate) sink: Arc<dyn Sink>,
    dead_letters: DeadLetters,
    health: Health,
    key: String,
}

impl Built {
    fn ready(&self) -> (bool, String) {
        let (_, map) = self.health.snapshot();
        let state = &map[&self.key];
        (state.ready, state.reason.clone())
    }

    fn dead_lettered(&self) -> Vec<Value> {
        std::fs::read_to_string(self.dead_letters.path())
            .unwrap_or_default()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    }
}

/// Builds sink `name` (names are unique per test: metrics are per process).
pub(crate) fn build(dir: &Path, name: &str, endpoint: &str, token: &str, extra: &str) -> Built {
    std::fs::write(dir.join("hec_token"), format!("{token}\n")).unwrap();
    let cfg_path = dir.join("c.toml");
    std::fs::write(
        &cfg_path,
        format!(
            "state_dir = \"{d}\"\n[sources.veza]\ntype = \"demo\"\n[sinks.{name}]\ntype = \"splunk_hec\"\n\
             inputs = [\"veza\"]\nendpoint = \"{endpoint}\"\ntoken_file = \"{d}/hec_token\"\n\
             retry = {{ initial = \"10ms\", max = \"50ms\" }}\nauth_retry = \"100ms\"\n\
             health_check_interval = \"100ms\"\n{extra}\n",
            d = dir.display()
        ),
    )
    .unwrap();
    let cfg = auditrelay::config_file::load(&cfg_path).unwrap_or_else(|e| panic!("{e}"));
    let health = Health::default();
    let dead_letters = DeadLetters::new(dir, name);
    let sink = cfg.sinks[name]
        .build(SinkContext {
            name: name.into(),
            state_dir: dir.to_path_buf(),
            health: health.clone(),
            dead_letters: dead_letters.clone(),
        })
        .unwrap();
    Built {
        sink: sink.into(),
        dead_letters,
        health,
        key: format!("sink.{name}"),
    }
}

pub(crate) fn metric(name_and_labels: &str) -> f64 {
    auditrelay::metrics::metrics()
        .render()
        .lines()
        .find_map(|l| {
            l.strip_prefix(name_and_labels)
                .and_then(|v| v.trim().parse().ok())
        })
        .unwrap_or(0.0)
}

/// Delivers `events` as `batches` concurrent deliver calls, like the
/// pipeline with several pages in flight.
pub(crate) async fn deliver_concurrently(sink: &Arc<dyn Sink>, events: Vec<Event>, batches: usize) {
    let per = events.len().div_ceil(batches);
    let mut tasks = tokio::task::JoinSet::new();
    for chunk in events.chunks(per) {
        let (sink, chunk) = (sink.clone(), chunk.to_vec());
        tasks.spawn(async move { sink.deliver("veza", &chunk).await });
    }
    let all = async {
        while let Some(r) = tasks.join_next().await {
            r.unwrap().unwrap();
        }
    };
    tokio::time::timeout(LONG, all)
        .await
        .expect("deliveries did not finish");
}

/// Waits (bounded) until the sink's readiness satisfies `f`.
pub(crate) async fn wait_ready(b: &Built, f: impl Fn(bool, &str) -> bool) -> (bool, String) {
    for _ in 0..400 {
        let (ready, reason) = b.ready();
        if f(ready, &reason) {
            return (ready, reason);
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("readiness never matched; last: {:?}", b.ready());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_indexer_ack_every_id_is_indexed_even_when_acks_are_late_or_lost() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: true,
        seed: 3,
        faults: HecFaults {
            ack_delay: Duration::from_millis(150),
            lose: 0.3,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_ack",
        &fake.url(),
        TOKEN,
        "indexer_ack = true\nack_poll_interval = \"50ms\"\nack_timeout = \"700ms\"\n\
         batch = { max_events = 25 }\nconcurrency = 4\nhost = \"relay-1\"\n\
         sourcetype = \"veza:audit\"\nindex = \"security\"\nfields = { user = \"identity.email\" }",
    );
    let evs = events(400);
    deliver_concurrently(&b.sink, evs.clone(), 4).await;

    let stats = fake.stats();
    assert_eq!(fake.unique_count(), 400, "{stats:?}");
    assert!(stats.lost_requests > 0, "no batch was lost: {stats:?}");
    assert!(stats.acks_true > 0);
    // Lost requests were resent after their ack timed out.
    let timeouts = metric("auditrelay_hec_ack_timeouts_total{sink=\"hec_ack\"}");
    assert!(
        timeouts >= stats.lost_requests as f64,
        "{timeouts} {stats:?}"
    );
    assert_eq!(
        metric("auditrelay_events_delivered_total{sink=\"hec_ack\",source=\"veza\"}"),
        400.0
    );
    assert_eq!(metric("auditrelay_hec_acks_pending{sink=\"hec_ack\"}"), 0.0);
    assert!(metric("auditrelay_hec_ack_latency_seconds_count{sink=\"hec_ack\"}") > 0.0);
    // Every event request gzip, but the empty startup probe.
    assert!(stats.gzip_requests > 0 && stats.gzip_requests == stats.requests - stats.no_data);
    assert!(b.ready().0, "{:?}", b.ready());
    assert!(!b.dead_letters.path().exists());

    // The envelope: metadata, time, indexed fields, the event byte for byte.
    let indexed = fake.indexed();
    let one = indexed
        .iter()
        .find(|e| e.id.as_deref() == Some("ev-0009"))
        .unwrap();
    let env = &one.envelope;
    assert_eq!(env["host"], "relay-1");
    assert_eq!(env["source"], "veza");
    assert_eq!(env["sourcetype"], "veza:audit");
    assert_eq!(env["index"], "security");
    assert_eq!(env["fields"]["user"], "user2@example.com");
    assert_eq!(env["time"].as_f64().unwrap(), 1_767_225_609.123456);
    assert_eq!(one.event_raw.as_bytes(), &evs[9].raw[..]);
    let channel = one.channel.clone().expect("sent on a channel");
    assert!(indexed.iter().all(|e| e.channel.as_ref() == Some(&channel)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_confirmed_only_once_its_ack_reads_true() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: true,
        faults: HecFaults {
            hold_acks: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_hold",
        &fake.url(),
        TOKEN,
        "indexer_ack = true\nack_poll_interval = \"30ms\"\nack_timeout = \"1h\"",
    );
    let sink = b.sink.clone();
    let task = tokio::spawn(async move { sink.deliver("veza", &events(50)).await });
    // Indexed, asked about several times, never acked: not confirmed.
    assert!(fake.wait_for_unique(50, LONG).await);
    assert!(fake.wait_until(LONG, |s| s.ack_queries >= 4).await);
    assert!(!task.is_finished(), "confirmed before the ack read true");
    assert_eq!(
        metric("auditrelay_hec_acks_pending{sink=\"hec_hold\"}"),
        1.0
    );
    fake.set_hold_acks(false);
    tokio::time::timeout(LONG, task)
        .await
        .expect("not confirmed after the ack")
        .unwrap()
        .unwrap();
    let stats = fake.stats();
    assert_eq!(stats.acks_true, 1);
    assert_eq!(
        stats.accepted_requests, 1,
        "nothing may be resent: {stats:?}"
    );
    assert_eq!(fake.pending_acks(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ack_code_0_confirms_and_no_channel_is_sent() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_plain",
        &fake.url(),
        TOKEN,
        "compression = \"none\"\nsource = \"auditrelay\"",
    );
    deliver_concurrently(&b.sink, events(120), 3).await;
    assert_eq!(fake.unique_count(), 120);
    let stats = fake.stats();
    assert_eq!(stats.duplicate_events, 0);
    assert_eq!(stats.gzip_requests, 0);
    assert_eq!(stats.ack_queries, 0);
    assert_eq!(fake.last_header("x-splunk-request-channel"), None);
    assert_eq!(fake.last_header("content-encoding"), None);
    assert_eq!(
        fake.last_header("authorization").as_deref(),
        Some(format!("Splunk {TOKEN}").as_str())
    );
    assert!(fake
        .indexed()
        .iter()
        .all(|e| e.envelope["source"] == "auditrelay"));
    // The startup probe (an empty request) found the token fine.
    assert!(fake.wait_until(LONG, |s| s.no_data >= 1).await);
    assert!(b.ready().0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_events_go_to_the_dead_letter_file_and_the_rest_is_indexed() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: true,
        ..Default::default()
    })
    .await
    .unwrap();
    fake.set_reject_ids(["ev-0013"]);
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_reject",
        &fake.url(),
        TOKEN,
        "indexer_ack = true\nack_poll_interval = \"20ms\"\nbatch = { max_events = 20 }",
    );
    let mut evs = events(64);
    // Not JSON at all, and a blank event.
    evs[40].raw = Bytes::from_static(br#"{"request_id":"ev-0040","broken":}"#);
    evs[50].raw = Bytes::from_static(br#""""#);
    b.sink.deliver("veza", &evs).await.unwrap();

    let counts = fake.counts();
    for (i, e) in evs.iter().enumerate() {
        let id = e.id.as_deref().unwrap();
        if [13, 40, 50].contains(&i) {
            assert!(!counts.contains_key(id), "{id} must not be indexed");
        } else {
            assert!(counts.get(id).copied().unwrap_or(0) >= 1, "{id} missing");
        }
    }
    let mut rows = b.dead_lettered();
    rows.sort_by_key(|r| r["id"].as_str().unwrap().to_string());
    let got: Vec<(&str, &str)> = rows
        .iter()
        .map(|r| (r["id"].as_str().unwrap(), r["error"].as_str().unwrap()))
        .collect();
    assert_eq!(
        got,
        [
            ("ev-0013", "HEC code 6: Invalid data format (HTTP 400)"),
            ("ev-0040", "HEC code 6: Invalid data format (HTTP 400)"),
            (
                "ev-0050",
                "HEC code 13: Event field cannot be blank (HTTP 400)"
            ),
        ]
    );
    assert_eq!(rows[0]["event"]["request_id"], "ev-0013");
    assert_eq!(
        rows[1]["event_text"], r#"{"request_id":"ev-0040","broken":}"#,
        "the unparseable event is kept as text"
    );
    assert_eq!(
        metric("auditrelay_events_dead_lettered_total{sink=\"hec_reject\",source=\"veza\"}"),
        3.0
    );
    assert!(b.ready().0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_larger_than_max_content_length_is_dead_lettered_alone() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        max_content_length: 4000,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_large",
        &fake.url(),
        TOKEN,
        "compression = \"none\"",
    );
    let mut evs = events(30);
    evs[7].raw = Bytes::from(format!(
        "{{\"request_id\":\"ev-0007\",\"blob\":\"{}\"}}",
        "x".repeat(5000)
    ));
    b.sink.deliver("veza", &evs).await.unwrap();
    assert_eq!(fake.unique_count(), 29);
    assert!(fake.stats().too_large > 0);
    let rows = b.dead_lettered();
    assert_eq!(rows.len(), 1);
    assert_eq!(rows[0]["id"], "ev-0007");
    assert!(rows[0]["error"].as_str().unwrap().starts_with("HTTP 413"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn busy_and_rate_limited_answers_are_retried_and_retry_after_is_honoured() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        seed: 9,
        faults: HecFaults {
            busy: 0.3,
            rate_limit: 0.15,
            retry_after_secs: 1,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_busy",
        &fake.url(),
        TOKEN,
        "batch = { max_events = 10 }\nconcurrency = 1",
    );
    deliver_concurrently(&b.sink, events(100), 2).await;
    let stats = fake.stats();
    assert_eq!(fake.unique_count(), 100, "{stats:?}");
    assert!(stats.busy > 0 && stats.rate_limited > 0, "{stats:?}");
    assert_eq!(stats.early_retries, 0, "Retry-After not honoured");
    assert!(
        metric("auditrelay_hec_requests_total{code=\"9\",endpoint=\"event\",sink=\"hec_busy\"}")
            > 0.0
    );
    assert!(
        metric(
            "auditrelay_hec_requests_total{code=\"http_429\",endpoint=\"event\",sink=\"hec_busy\"}"
        ) > 0.0
    );
    assert!(!b.dead_letters.path().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_token_keeps_the_sink_unready_until_the_token_file_is_fixed() {
    const WRONG: &str = "wrong-SECRET-token-4f3e";
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(dir.path(), "hec_token", &fake.url(), WRONG, "");
    let (_, reason) = wait_ready(&b, |ready, _| !ready).await;
    assert!(reason.contains("HEC code 4: Invalid token"), "{reason}");
    assert!(
        reason.contains("hec_token"),
        "names the token file: {reason}"
    );
    assert!(!reason.contains(WRONG));

    let sink = b.sink.clone();
    let task = tokio::spawn(async move { sink.deliver("veza", &events(20)).await });
    let failures = fake.stats().auth_failures;
    assert!(
        fake.wait_until(LONG, |s| s.auth_failures >= failures + 3)
            .await
    );
    assert!(!task.is_finished());

    // The right token, but disabled on the HEC side.
    fake.set_token_disabled(true);
    std::fs::write(dir.path().join("hec_token"), TOKEN).unwrap();
    let (_, reason) = wait_ready(&b, |_, r| r.contains("code 1")).await;
    assert!(reason.contains("Token disabled"), "{reason}");
    fake.set_token_disabled(false);
    tokio::time::timeout(LONG, task)
        .await
        .expect("not delivered after the token was fixed")
        .unwrap()
        .unwrap();
    assert_eq!(fake.unique_count(), 20);
    wait_ready(&b, |ready, _| ready).await;
    assert!(!b.dead_letters.path().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_requires_acks_is_a_config_error_naming_indexer_ack() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(dir.path(), "hec_needs_ack", &fake.url(), TOKEN, "");
    let (_, reason) = wait_ready(&b, |ready, _| !ready).await;
    assert!(reason.contains("code 10"), "{reason}");
    assert!(reason.contains("set indexer_ack = true"), "{reason}");
    let sink = b.sink.clone();
    let task = tokio::spawn(async move { sink.deliver("veza", &events(10)).await });
    let errors = fake.stats().channel_errors;
    assert!(
        fake.wait_until(LONG, |s| s.channel_errors >= errors + 2)
            .await
    );
    assert_eq!(fake.unique_count(), 0);
    // Acknowledgment turned off on the token: the held events go through.
    fake.set_ack(false);
    tokio::time::timeout(LONG, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(fake.unique_count(), 10);
    wait_ready(&b, |ready, _| ready).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn indexer_ack_against_a_token_without_acks_is_a_config_error_naming_indexer_ack() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: false,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_no_ack",
        &fake.url(),
        TOKEN,
        "indexer_ack = true\nack_poll_interval = \"20ms\"",
    );
    // The startup probe asks the ack endpoint: code 14.
    let (_, reason) = wait_ready(&b, |ready, _| !ready).await;
    assert!(reason.contains("code 14"), "{reason}");
    assert!(reason.contains("set indexer_ack = false"), "{reason}");
    // HEC takes the events without an ackId: confirmed on acceptance, not
    // resent forever, and the sink stays unready so someone fixes it.
    tokio::time::timeout(LONG, b.sink.deliver("veza", &events(10)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fake.unique_count(), 10);
    assert_eq!(fake.stats().duplicate_events, 0);
    // Still unready after more health rounds (the probe cannot clear it).
    let checks = fake.stats().health_checks;
    assert!(
        fake.wait_until(LONG, |s| s.health_checks >= checks + 3)
            .await
    );
    let (ready, reason) = b.ready();
    assert!(!ready && reason.contains("without an ackId"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_health_endpoint_feeds_readiness() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        faults: HecFaults {
            unhealthy: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(dir.path(), "hec_health", &fake.url(), TOKEN, "");
    let (_, reason) = wait_ready(&b, |ready, _| !ready).await;
    assert!(
        reason.contains("HEC code 18: HEC is unhealthy, queues are full"),
        "{reason}"
    );
    fake.set_unhealthy(false);
    let checks = fake.stats().health_checks;
    assert!(
        fake.wait_until(LONG, |s| s.health_checks >= checks + 2)
            .await
    );
    assert!(b.ready().0, "{:?}", b.ready());

    // Nothing listening: unready with the reason.
    let port = support::daemon::free_port();
    let down = build(
        dir.path(),
        "hec_health_down",
        &format!("http://127.0.0.1:{port}"),
        TOKEN,
        "",
    );
    let (_, reason) = wait_ready(&down, |ready, _| !ready).await;
    assert!(reason.contains("HEC health check failed"), "{reason}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_generated_ca_works_and_a_wrong_ca_fails() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let pki = TestPki::generate("auditrelay test CA");
    let other = TestPki::generate("some other CA");
    let front = TlsFront::start(&pki, fake.addr()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.write_ca(dir.path(), "ca.pem");
    let good = build(
        dir.path(),
        "hec_tls",
        &front.url(),
        TOKEN,
        &format!(
            "indexer_ack = true\nack_poll_interval = \"20ms\"\ntls = {{ ca_file = \"{}\" }}",
            ca.display()
        ),
    );
    tokio::time::timeout(LONG, good.sink.deliver("veza", &events(25)))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(fake.unique_count(), 25);
    wait_ready(&good, |ready, _| ready).await;

    // The good sink's startup probe is its last request.
    assert!(fake.wait_until(LONG, |s| s.no_data >= 1).await);
    let wrong_dir = tempfile::tempdir().unwrap();
    let wrong_ca = other.write_ca(wrong_dir.path(), "other-ca.pem");
    let requests = fake.stats().requests;
    let bad = build(
        wrong_dir.path(),
        "hec_tls_wrong_ca",
        &front.url(),
        TOKEN,
        &format!("tls = {{ ca_file = \"{}\" }}", wrong_ca.display()),
    );
    let sink = bad.sink.clone();
    let task = tokio::spawn(async move { sink.deliver("veza", &events(5)).await });
    let (_, reason) = wait_ready(&bad, |ready, _| !ready).await;
    assert!(
        reason.contains("HEC health check failed") && reason.contains("certificate"),
        "{reason}"
    );
    assert!(!task.is_finished());
    task.abort();
    assert_eq!(
        fake.stats().requests,
        requests,
        "a request passed the wrong CA"
    );
    assert_eq!(fake.unique_count(), 25);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_that_comes_after_ack_timeout_still_confirms_the_request() {
    // Every ack reads true 900 ms after its request; the sink sends again
    // after 600 ms, so only the first ack id can ever confirm in time.
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: true,
        faults: HecFaults {
            ack_min_delay: Duration::from_millis(900),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_late_ack",
        &fake.url(),
        TOKEN,
        "indexer_ack = true\nack_poll_interval = \"50ms\"\nack_timeout = \"600ms\"",
    );
    tokio::time::timeout(Duration::from_secs(15), b.sink.deliver("veza", &events(20)))
        .await
        .expect("a late ack never confirmed the request")
        .unwrap();
    let stats = fake.stats();
    assert_eq!(fake.unique_count(), 20);
    assert!(stats.acks_true >= 1, "{stats:?}");
    // Sent once, sent again at the timeout, confirmed by the first ack.
    assert!(stats.accepted_requests <= 3, "{stats:?}");
    assert_eq!(
        metric("auditrelay_hec_acks_pending{sink=\"hec_late_ack\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_id_issued_again_after_an_indexer_restart_never_confirms_the_earlier_request() {
    // Request A is lost by an indexer that then restarts: ack ids start at
    // 0 again. Request B gets A's old id, is indexed at once, and its
    // answer travels slowly; meanwhile the poller asks about A's id and HEC
    // says true (for B). That must not confirm A, whose events are gone.
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: true,
        faults: HecFaults {
            lose: 1.0,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_restart",
        &fake.url(),
        TOKEN,
        "indexer_ack = true\nack_poll_interval = \"50ms\"\nack_timeout = \"1500ms\"",
    );
    let evs = events(2);
    let sink = b.sink.clone();
    let first = evs[..1].to_vec();
    let a = tokio::spawn(async move { sink.deliver("veza", &first).await });
    assert!(fake.wait_until(LONG, |s| s.lost_requests >= 1).await);
    fake.restart();
    fake.set_faults(HecFaults {
        event_answer_delay: Duration::from_millis(600),
        ..Default::default()
    });
    let sink = b.sink.clone();
    let second = evs[1..].to_vec();
    let b_task = tokio::spawn(async move { sink.deliver("veza", &second).await });
    tokio::time::timeout(Duration::from_secs(20), a)
        .await
        .expect("request A never confirmed")
        .unwrap()
        .unwrap();
    assert_eq!(
        fake.counts().get("ev-0000"),
        Some(&1),
        "request A was confirmed but its events were never indexed: {:?}",
        fake.stats()
    );
    tokio::time::timeout(Duration::from_secs(20), b_task)
        .await
        .expect("request B never confirmed")
        .unwrap()
        .unwrap();
    assert!(fake.counts().get("ev-0001").is_some_and(|n| *n >= 1));
    // The reissued id was noticed and given up on for request A.
    assert!(metric("auditrelay_hec_acks_expired_total{sink=\"hec_restart\"}") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_that_never_come_are_counted_and_the_events_sent_again() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: true,
        faults: HecFaults {
            hold_acks: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_never_acked",
        &fake.url(),
        TOKEN,
        "indexer_ack = true\nack_poll_interval = \"30ms\"\nack_timeout = \"200ms\"",
    );
    let sink = b.sink.clone();
    let task = tokio::spawn(async move { sink.deliver("veza", &events(5)).await });
    // Given up on after twice ack_timeout: counted (and logged).
    let series = "auditrelay_hec_acks_expired_total{sink=\"hec_never_acked\"}";
    let mut expired = 0.0;
    for _ in 0..200 {
        expired = metric(series);
        if expired > 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(expired > 0.0, "no ack id was ever given up on");
    assert!(!task.is_finished());
    assert!(fake.stats().accepted_requests >= 2);
    fake.set_hold_acks(false);
    tokio::time::timeout(LONG, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(fake.unique_count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_behind_a_sticky_load_balancer_are_asked_where_the_request_went() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: true,
        sticky_indexers: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_sticky",
        &fake.url(),
        TOKEN,
        "indexer_ack = true\nack_poll_interval = \"30ms\"\nack_timeout = \"2s\"\n\
         batch = { max_events = 10 }\nconcurrency = 1",
    );
    tokio::time::timeout(
        Duration::from_secs(20),
        deliver_concurrently(&b.sink, events(60), 2),
    )
    .await
    .expect("acks never seen: the load balancer cookie was not sent back");
    let stats = fake.stats();
    assert_eq!(fake.unique_count(), 60);
    assert!(stats.acks_true >= 6, "{stats:?}");
    assert_eq!(
        fake.indexers_used(),
        1,
        "requests left the indexer the {STICKY_COOKIE} cookie pins: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redirecting_collector_never_confirms_and_the_reason_names_the_location() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        faults: HecFaults {
            redirect: Some(Redirect::LoginPage(302)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(dir.path(), "hec_redirect", &fake.url(), TOKEN, "");
    let sink = b.sink.clone();
    let task = tokio::spawn(async move { sink.deliver("veza", &events(10)).await });
    let (_, reason) = wait_ready(&b, |ready, r| !ready && r.contains("/sso/login")).await;
    assert!(reason.contains("302"), "{reason}");
    assert!(fake.wait_until(LONG, |s| s.redirects >= 4).await);
    assert!(!task.is_finished());
    let stats = fake.stats();
    assert_eq!(stats.login_page_hits, 0, "the redirect was followed");
    assert_eq!(fake.unique_count(), 0);
    fake.set_redirect(None);
    tokio::time::timeout(LONG, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(fake.unique_count(), 10);
    wait_ready(&b, |ready, _| ready).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_308_to_the_moved_collector_is_followed_for_events_and_acks() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: true,
        faults: HecFaults {
            redirect: Some(Redirect::Moved(308)),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_moved",
        &fake.url(),
        TOKEN,
        "indexer_ack = true\nack_poll_interval = \"30ms\"",
    );
    tokio::time::timeout(LONG, b.sink.deliver("veza", &events(30)))
        .await
        .unwrap()
        .unwrap();
    let stats = fake.stats();
    assert_eq!(fake.unique_count(), 30);
    assert!(
        stats.acks_true >= 1 && stats.moved_requests > 0,
        "{stats:?}"
    );
    assert!(
        stats.gzip_requests > 0,
        "the body kept its encoding: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_that_is_a_ca_certificate_is_explained() {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let pki = TestPki::ca_as_server_certificate();
    let front = TlsFront::start(&pki, fake.addr()).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ca = pki.write_ca(dir.path(), "server.pem");
    let b = build(
        dir.path(),
        "hec_ca_as_server",
        &front.url(),
        TOKEN,
        &format!("tls = {{ ca_file = \"{}\" }}", ca.display()),
    );
    let (_, reason) = wait_ready(&b, |ready, _| !ready).await;
    assert!(
        reason.contains("presents a CA certificate") && reason.contains("CA:FALSE"),
        "{reason}"
    );
    assert_eq!(fake.stats().requests, 0);
}

#[test]
fn config_problems_name_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("c.toml");
    std::fs::write(
        &path,
        r#"
[sources.veza]
type = "demo"
[sinks.splunk]
type = "splunk_hec"
inputs = ["veza"]
endpoint = "https://splunk.example:8088/services/collector/event"
indexer_ack = true
ack_timeout = "5s"
ack_poll_interval = "10s"
concurrency = 0
compression = "brotli"
fields = { user = "identity..email" }
tokne_file = "/run/secrets/hec"
"#,
    )
    .unwrap();
    let err = auditrelay::config_file::load(&path)
        .unwrap_err()
        .to_string();
    for expected in [
        "sinks.splunk.tokne_file: unknown key",
        "sinks.splunk.compression",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
    std::fs::write(
        &path,
        r#"
[sources.veza]
type = "demo"
[sinks.splunk]
type = "splunk_hec"
inputs = ["veza"]
endpoint = "https://splunk.example:8088/services/collector/event"
indexer_ack = true
ack_timeout = "5s"
ack_poll_interval = "10s"
ack_first_poll = "0s"
concurrency = 0
fields = { user = "identity..email" }
"#,
    )
    .unwrap();
    let err = auditrelay::config_file::load(&path)
        .unwrap_err()
        .to_string();
    for expected in [
        "sinks.splunk.endpoint: give the collector's base URL",
        "sinks.splunk.token_file: required",
        "sinks.splunk.ack_poll_interval: must be shorter than ack_timeout",
        "sinks.splunk.concurrency: must be between 1 and 256",
        "sinks.splunk.ack_first_poll:",
        "sinks.splunk.fields.user:",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}
