//! The Kafka sink against real Kafka-protocol brokers: librdkafka's mock
//! cluster (in process, with injected faults) and tansu (a separate broker
//! implementation, as its own process).

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use rdkafka::mocking::MockCluster;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use support::kafka::{consume, create_topic, ids, Tansu};
use support::sink::{build, events};

fn kafka_toml(bootstrap: &str, extra: &str) -> String {
    format!(
        "type = \"kafka\"\nbrokers = [\"{bootstrap}\"]\ntopic = \"audit.veza\"\nkey_field = \"request_id\"\nretry = {{ initial = \"50ms\", max = \"500ms\" }}\n{extra}"
    )
}

fn expected_ids(n: usize) -> HashSet<String> {
    (0..n).map(|i| format!("ev-{i:04}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_every_event_with_key_and_headers_to_a_mock_cluster() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("audit.veza", 3, 3).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (sink, dl, _) = build(dir.path(), "bus", &kafka_toml(&bootstrap, ""));
    for batch in 0..10 {
        sink.deliver("veza", &events(batch * 100, 100))
            .await
            .unwrap();
    }
    let got = tokio::task::spawn_blocking(move || {
        consume(&bootstrap, "audit.veza", 3, 1000, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(
        got.len(),
        1000,
        "every message once (idempotent producer, no faults)"
    );
    assert_eq!(
        ids(&got).into_iter().collect::<HashSet<_>>(),
        expected_ids(1000)
    );
    for m in &got {
        let v: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        assert_eq!(
            m.key.as_deref(),
            v["request_id"].as_str(),
            "key is the request_id"
        );
        assert_eq!(
            m.headers.get("auditrelay-source").map(String::as_str),
            Some("veza")
        );
        assert_eq!(
            m.headers.get("auditrelay-type").map(String::as_str),
            Some("/api.UserService/Login")
        );
        // The payload is the raw event, byte for byte.
        assert!(String::from_utf8_lossy(&m.payload).contains(r#""note":"line\nbreak""#));
    }
    assert!(!dl.path().exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broker_errors_and_outages_delay_confirmation_but_lose_nothing() {
    let mock = MockCluster::new(3).unwrap();
    mock.create_topic("audit.veza", 3, 3).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (sink, _, health) = build(
        dir.path(),
        "bus",
        &kafka_toml(
            &bootstrap,
            "message_timeout = \"1500ms\"\nhealth_interval = \"200ms\"",
        ),
    );
    let sink: std::sync::Arc<dyn auditrelay::sink::Sink> = sink.into();

    // Retriable produce errors are absorbed.
    mock.request_errors(
        RDKafkaApiKey::Produce,
        &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_NOT_LEADER_FOR_PARTITION; 20],
    );
    sink.deliver("veza", &events(0, 300)).await.unwrap();

    // Every broker down: the batch must not be confirmed while they are.
    for id in 1..=3 {
        mock.broker_down(id).unwrap();
    }
    let batch = events(300, 300);
    let mut task = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.deliver("veza", &batch).await })
    };
    assert!(
        tokio::time::timeout(Duration::from_secs(4), &mut task)
            .await
            .is_err(),
        "a batch was confirmed while every broker was down"
    );
    assert!(!health.snapshot().0, "readiness must show the outage");
    for id in 1..=3 {
        mock.broker_up(id).unwrap();
    }
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("delivered after recovery")
        .unwrap()
        .unwrap();

    let got = tokio::task::spawn_blocking(move || {
        consume(&bootstrap, "audit.veza", 3, 600, Duration::from_secs(30))
    })
    .await
    .unwrap();
    let unique: HashSet<String> = ids(&got).into_iter().collect();
    assert_eq!(unique, expected_ids(600), "no id missing");
    eprintln!(
        "messages read back: {} for 600 ids (resends after timeouts)",
        got.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn message_too_large_is_dead_lettered_and_the_rest_delivered() {
    let mock = MockCluster::new(1).unwrap();
    mock.create_topic("audit.veza", 1, 1).unwrap();
    let bootstrap = mock.bootstrap_servers();
    let dir = tempfile::tempdir().unwrap();
    let (sink, dl, _) = build(
        dir.path(),
        "bus",
        &kafka_toml(
            &bootstrap,
            "[sinks.bus.librdkafka]\n\"message.max.bytes\" = 2000",
        ),
    );
    let mut batch = events(0, 10);
    batch[4].raw = bytes::Bytes::from(format!(
        "{{\"request_id\":\"ev-0004\",\"blob\":\"{}\"}}",
        "x".repeat(5000)
    ));
    sink.deliver("veza", &batch).await.unwrap();
    let got = tokio::task::spawn_blocking(move || {
        consume(&bootstrap, "audit.veza", 1, 9, Duration::from_secs(20))
    })
    .await
    .unwrap();
    let mut want = expected_ids(10);
    want.remove("ev-0004");
    assert_eq!(ids(&got).into_iter().collect::<HashSet<_>>(), want);
    let dead = std::fs::read_to_string(dl.path()).unwrap();
    assert_eq!(dead.lines().count(), 1);
    assert!(
        dead.contains("ev-0004") && dead.contains("Kafka refused the message"),
        "{dead}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn produces_to_tansu_a_separate_broker_implementation() {
    let tansu = Tansu::start(support::daemon::free_port()).await;
    create_topic(&tansu.bootstrap, "audit.veza", 1).await;
    let dir = tempfile::tempdir().unwrap();
    let (sink, _, _) = build(dir.path(), "bus", &kafka_toml(&tansu.bootstrap, ""));
    for batch in 0..5 {
        sink.deliver("veza", &events(batch * 100, 100))
            .await
            .unwrap();
    }
    let bootstrap = tansu.bootstrap.clone();
    let got = tokio::task::spawn_blocking(move || {
        consume(&bootstrap, "audit.veza", 1, 500, Duration::from_secs(30))
    })
    .await
    .unwrap();
    assert_eq!(
        ids(&got).into_iter().collect::<HashSet<_>>(),
        expected_ids(500)
    );
    assert!(got
        .iter()
        .all(|m| m.key.is_some() && m.headers.contains_key("auditrelay-source")));
    tansu.stop().await;
}

#[tokio::test]
async fn unknown_librdkafka_property_is_a_config_error_at_validate() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        "[sources.s]\ntype = \"demo\"\n[sinks.bus]\ntype = \"kafka\"\ninputs = [\"s\"]\nbrokers = [\"127.0.0.1:9\"]\ntopic = \"t\"\n[sinks.bus.librdkafka]\n\"sasl.mechanism\" = \"NOPE\"\n\"linger.msec\" = 5\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_auditrelay"))
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("sinks.bus.librdkafka: librdkafka rejects the settings"),
        "{err}"
    );
}
