//! The membership loop behind a misbehaving link to a real etcd
//! ([`EngineLink`]): an owner cut off from the engine stops its pipelines
//! before the engine may give the source to another instance, and a
//! checkpoint write that arrives late with an old fence does not cost the
//! ownership taken since.

use std::time::Duration;

use auditrelay::checkpoint::CheckpointStore;
use auditrelay::cluster::{connect, Change, Cluster};
use tokio::sync::mpsc::UnboundedReceiver;

use super::conformance::config;
use crate::support::engine_link::EngineLink;
use crate::support::etcd::Etcd;

async fn next(rx: &mut UnboundedReceiver<Change>, within: Duration) -> Change {
    tokio::time::timeout(within, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no change within {within:?}"))
        .expect("the loop runs")
}

#[tokio::test(flavor = "multi_thread")]
async fn a_cut_off_owner_stops_its_pipelines_before_its_lease_can_expire() {
    let etcd = Etcd::start().await;
    // The default lease: renewals every ttl/3, each hanging up to ttl/3.
    let ttl = Duration::from_secs(10);
    let cfg = config(&etcd, "cut-a", "cut", ttl);
    let link = EngineLink::new(connect(&cfg).await.expect("connect"), ttl / 3);
    let (cluster, mut changes) = Cluster::with_engine(link.clone(), &cfg, vec!["csrc".into()]);
    assert_eq!(
        next(&mut changes, ttl).await,
        Change::Acquired("csrc".into())
    );
    // The partition starts as a renewal is sent: that renewal hangs, and the
    // engine may expire the lease from the last renewal that got through
    // + ttl on. The owner must have stopped before.
    link.cut_at_next_renewal();
    let renewals = link.renewals();
    assert_eq!(
        next(&mut changes, 2 * ttl).await,
        Change::Lost("csrc".into())
    );
    let renewed = renewals.borrow().expect("a renewal got through");
    let stopped_after = renewed.elapsed();
    assert!(
        stopped_after <= ttl * 3 / 4 + Duration::from_millis(300),
        "the cut-off owner stopped {stopped_after:?} after its last renewal; \
         the engine may expire its {ttl:?} lease from then on"
    );
    assert!(!cluster.owns("csrc"));
    link.set_cut(false);
    assert_eq!(
        next(&mut changes, 2 * ttl).await,
        Change::Acquired("csrc".into()),
        "the link is back: the source is owned again"
    );
    cluster.leave().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_late_refusal_of_an_old_fence_does_not_cost_the_ownership_taken_since() {
    let etcd = Etcd::start().await;
    let ttl = Duration::from_secs(3);
    let cfg = config(&etcd, "late-a", "late", ttl);
    let link = EngineLink::new(connect(&cfg).await.expect("connect"), ttl / 3);
    let (cluster, mut changes) = Cluster::with_engine(link.clone(), &cfg, vec!["lsrc".into()]);
    assert_eq!(
        next(&mut changes, ttl).await,
        Change::Acquired("lsrc".into())
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path())
        .expect("store")
        .with_remote(cluster.checkpoints());
    let save = |state: &'static [u8]| {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.save("lsrc", state))
    };
    save(br#"{"next":10}"#)
        .await
        .expect("join")
        .expect("the owner commits");

    // A commit of the first ownership is slow to arrive...
    link.hold_writes();
    let late = save(br#"{"next":20}"#);
    let mut waiting = link.writes_waiting();
    tokio::time::timeout(ttl, waiting.wait_for(|n| *n == 1))
        .await
        .expect("the write reaches the link")
        .expect("link alive");
    // ...while the source is lost (its key gone, as at a lease expiry) and
    // taken again: a new owner key, a new fence.
    let mut raw = etcd_client::Client::connect([etcd.endpoint()], None)
        .await
        .expect("etcd");
    raw.delete("/auditrelay-test/late/owners/lsrc", None)
        .await
        .expect("delete");
    assert_eq!(next(&mut changes, ttl).await, Change::Lost("lsrc".into()));
    assert_eq!(
        next(&mut changes, ttl).await,
        Change::Acquired("lsrc".into())
    );
    link.release_writes();
    assert!(
        late.await.expect("join").is_err(),
        "the write of the old ownership is refused"
    );

    // The refusal was about the old ownership; the current one goes on.
    let after = tokio::time::timeout(2 * ttl, changes.recv()).await;
    assert!(
        after.is_err(),
        "the late refusal changed the current ownership: {after:?}"
    );
    assert!(cluster.owns("lsrc"), "the source is still owned here");
    save(br#"{"next":30}"#)
        .await
        .expect("join")
        .expect("the current owner commits");
    cluster.leave().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_acquisition_whose_answer_was_lost_is_not_an_orphan_for_ever() {
    let etcd = Etcd::start().await;
    let ttl = Duration::from_secs(3);
    let cfg = config(&etcd, "lost-answer-a", "lost-answer", ttl);
    let link = EngineLink::new(connect(&cfg).await.expect("connect"), ttl / 3);
    // The engine takes the source for this instance, but the answer times
    // out: the owner key is on this instance's live lease, renewed on.
    link.lose_acquire_answers(1);
    let (cluster, mut changes) = Cluster::with_engine(link.clone(), &cfg, vec!["osrc".into()]);
    assert_eq!(
        next(&mut changes, 3 * ttl).await,
        Change::Acquired("osrc".into()),
        "the source runs somewhere: here, the only member"
    );
    assert!(cluster.owns("osrc"));
    let dir = tempfile::tempdir().expect("tempdir");
    let store = CheckpointStore::open(dir.path())
        .expect("store")
        .with_remote(cluster.checkpoints());
    tokio::task::spawn_blocking(move || store.save("osrc", br#"{"next":1}"#))
        .await
        .expect("join")
        .expect("the owner commits with the adopted key");
    cluster.leave().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn leaving_with_the_engine_unreachable_waits_one_request_timeout_not_one_per_source() {
    let etcd = Etcd::start().await;
    let ttl = Duration::from_secs(3);
    let cfg = config(&etcd, "leave-a", "leave", ttl);
    let link = EngineLink::new(connect(&cfg).await.expect("connect"), ttl / 3);
    let sources: Vec<String> = (0..6).map(|i| format!("s{i}")).collect();
    let (cluster, mut changes) = Cluster::with_engine(link.clone(), &cfg, sources.clone());
    for _ in &sources {
        assert!(matches!(
            next(&mut changes, 2 * ttl).await,
            Change::Acquired(_)
        ));
    }
    // A stop while etcd is unreachable (the pipelines are drained already):
    // the releases and the revocation each hang for the request timeout.
    link.set_cut(true);
    let started = std::time::Instant::now();
    cluster.leave().await;
    let took = started.elapsed();
    assert!(
        took <= ttl / 3 + Duration::from_millis(500),
        "leaving took {took:?} for {} sources; a stop must not wait one request \
         timeout ({:?}) per source",
        sources.len(),
        ttl / 3
    );
}
