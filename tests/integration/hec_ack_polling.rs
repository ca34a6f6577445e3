//! How the HEC sink asks about indexer acks: the startup probe's question
//! about ack id 0 never takes a real request's ack, polls start soon after
//! a request and back off while acks are slow (a quarter of the ack's age,
//! `ack_poll_interval` the ceiling), one ack query asks about every pending
//! id, and many requests await their acks at once.

use crate::splunk_hec_sink::{build, events, LONG, TOKEN};
use crate::support;

use std::time::Duration;

use support::hec_fake::{HecFake, HecFakeConfig, HecFaults};

async fn ack_fake(faults: HecFaults) -> HecFake {
    HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: true,
        faults,
        ..Default::default()
    })
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_probe_asking_about_ack_id_0_never_takes_the_first_requests_ack() {
    // The probe asks about id 0 to learn whether the token has acks on; HEC
    // answers an ack true only once. If an event request got id 0 while
    // that question was on its way, the probe would take the request's
    // `true`, and the request would wait for ack_timeout and be sent again.
    let fake = ack_fake(HecFaults::default()).await;
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_probe_race",
        &fake.url(),
        TOKEN,
        "indexer_ack = true\nack_poll_interval = \"50ms\"\nack_timeout = \"1h\"\nconcurrency = 2",
    );
    crate::splunk_hec_sink::wait_ready(&b, |ready, _| ready).await;
    // The startup probe's own question about id 0 was answered.
    assert!(fake.wait_until(LONG, |s| s.ack_queries >= 1).await);
    // The indexer now answers ack queries slowly; probe again (as the
    // health loop does while something is wrong, or `validate --online`).
    fake.set_faults(HecFaults {
        ack_query_delay: Duration::from_millis(500),
        ..Default::default()
    });
    let asked = fake.stats().ack_queries_received;
    let sink = b.sink.clone();
    let probe = tokio::spawn(async move { sink.healthcheck().await });
    assert!(
        fake.wait_until(LONG, |s| s.ack_queries_received > asked)
            .await
    );
    // The probe's question about id 0 is on its way: the first event
    // request goes out now.
    tokio::time::timeout(Duration::from_secs(20), b.sink.deliver("veza", &events(5)))
        .await
        .expect("the request's ack was taken by the probe: it waits for ack_timeout")
        .unwrap();
    probe.await.unwrap().unwrap();
    let stats = fake.stats();
    assert_eq!(stats.accepted_requests, 1, "{stats:?}");
    assert_eq!(fake.unique_count(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_requests_await_acks_at_once_and_are_confirmed_soon_after_their_acks_read_true() {
    // Acks read true 1 s after each request; the poll ceiling is an hour.
    // A fixed poll interval would ask first after an hour; polls that start
    // soon after each request and back off confirm all within seconds.
    let fake = ack_fake(HecFaults {
        ack_min_delay: Duration::from_secs(1),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_many_pending",
        &fake.url(),
        TOKEN,
        "indexer_ack = true\nack_poll_interval = \"1h\"\nack_timeout = \"2h\"\n\
         batch = { max_events = 25 }\nconcurrency = 4",
    );
    let requests = 40;
    // 40 pages of one request each in flight at once (the pipeline's
    // byte budget allows that many), 4 event requests on the wire at a time.
    crate::splunk_hec_sink::deliver_concurrently(&b.sink, events(25 * requests), requests).await;
    let stats = fake.stats();
    assert_eq!(fake.unique_count(), 25 * requests);
    assert_eq!(stats.accepted_requests, requests as u64, "{stats:?}");
    assert_eq!(stats.acks_true, requests as u64, "{stats:?}");
    // Batched: one ack query asked about many pending requests, so far
    // more than `concurrency` requests awaited their acks at once.
    assert!(stats.largest_ack_query > 4, "{stats:?}");
    // Backing off while acks are slow: a few queries per request at most,
    // not one every few milliseconds.
    assert!(stats.ack_queries <= 4 * requests as u64, "{stats:?}");
    assert_eq!(
        crate::splunk_hec_sink::metric("auditrelay_hec_acks_pending{sink=\"hec_many_pending\"}"),
        0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_ack_is_asked_about_soon_then_less_and_less_often() {
    // One request whose ack reads true after 2 s, and an hour's ceiling:
    // asked every 0.1 s while young, then every quarter of its age (0.5,
    // 0.63, 0.78, 0.98, 1.22, 1.53, 1.91, 2.38 s): seen by 2.5 s, with a
    // dozen queries. Polling at the first interval throughout would ask
    // 20+ times, a fixed hour never in time, a doubling wait only at 3.1 s.
    let fake = ack_fake(HecFaults {
        ack_min_delay: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_backoff",
        &fake.url(),
        TOKEN,
        "indexer_ack = true\nack_poll_interval = \"1h\"\nack_timeout = \"2h\"",
    );
    crate::splunk_hec_sink::wait_ready(&b, |ready, _| ready).await;
    assert!(fake.wait_until(LONG, |s| s.ack_queries >= 1).await);
    let before = fake.stats().ack_queries;
    let started = std::time::Instant::now();
    tokio::time::timeout(LONG, b.sink.deliver("veza", &events(3)))
        .await
        .expect("the ack was not asked about again before the ceiling")
        .unwrap();
    let took = started.elapsed();
    let asked = fake.stats().ack_queries - before;
    assert!((2..=16).contains(&asked), "{asked} ack queries");
    // Ready at 2 s: seen within a quarter of that (and some slack for a
    // loaded machine), not at the next doubling.
    assert!(
        took < Duration::from_millis(2900),
        "confirmed {took:?} after sending; the ack was ready at 2 s"
    );
    assert!(
        crate::splunk_hec_sink::metric(
            "auditrelay_hec_ack_latency_seconds_count{sink=\"hec_backoff\"}"
        ) >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pending_acks_and_the_age_of_the_oldest_are_metrics() {
    let fake = ack_fake(HecFaults {
        hold_acks: true,
        ..Default::default()
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let b = build(
        dir.path(),
        "hec_ack_age",
        &fake.url(),
        TOKEN,
        "indexer_ack = true\nack_poll_interval = \"40ms\"\nack_timeout = \"1h\"\n\
         batch = { max_events = 10 }",
    );
    let sink = b.sink.clone();
    let task = tokio::spawn(async move { sink.deliver("veza", &events(30)).await });
    assert!(fake.wait_until(LONG, |s| s.largest_ack_query >= 3).await);
    let asked = fake.stats().ack_queries;
    assert!(fake.wait_until(LONG, |s| s.ack_queries >= asked + 2).await);
    let pending = "auditrelay_hec_acks_pending{sink=\"hec_ack_age\"}";
    let age = "auditrelay_hec_oldest_pending_ack_age_seconds{sink=\"hec_ack_age\"}";
    assert_eq!(crate::splunk_hec_sink::metric(pending), 3.0);
    assert!(crate::splunk_hec_sink::metric(age) > 0.0);
    fake.set_hold_acks(false);
    tokio::time::timeout(LONG, task)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(crate::splunk_hec_sink::metric(pending), 0.0);
    assert_eq!(crate::splunk_hec_sink::metric(age), 0.0);
}
