//! How the HEC sink asks about indexer acks: the startup probe's question
//! about ack id 0 never takes a real request's ack, polls start soon after
//! a request and back off while acks are slow (`ack_poll_interval` is the
//! ceiling), one ack query asks about every pending id, and many requests
//! await their acks at once.

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
