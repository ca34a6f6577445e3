//! The membership loop behind a misbehaving link to a real etcd
//! ([`EngineLink`]): an owner cut off from the engine stops its pipelines
//! before the engine may give the source to another instance.

use std::time::Duration;

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
