//! Three members, a dozen sources, members joining and leaving, on every
//! backend: never two owners of a source, every source owned again soon after
//! a change, sources spread over the members, and quiet once settled.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use auditrelay::cluster::{Change, Cluster};
use tokio::task::JoinHandle;

use super::conformance::{on_every_backend, Backend, Kind};

const TTL: Duration = Duration::from_secs(3);

struct Member {
    cluster: Arc<Cluster>,
    /// Plays the daemon: hands sources over when asked; counts changes.
    follower: JoinHandle<()>,
    changes: Arc<std::sync::atomic::AtomicUsize>,
}

fn sources() -> Vec<String> {
    (0..12).map(|i| format!("rb-{i}")).collect()
}

async fn member(backend: &Backend, id: &str) -> Member {
    let cfg = backend.config(id, "rebalance", TTL);
    let (cluster, mut rx) = Cluster::start(&cfg, sources()).await.expect("start");
    let changes = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let (c, n) = (cluster.clone(), changes.clone());
    let follower = tokio::spawn(async move {
        while let Some(change) = rx.recv().await {
            n.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            if let Change::Handover(s) = change {
                c.handed_over(&s).await;
            }
        }
    });
    Member {
        cluster,
        follower,
        changes,
    }
}

/// Owners per source now, asserting there is never more than one.
fn owners(members: &BTreeMap<&str, Member>) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for s in sources() {
        let holders: Vec<&str> = members
            .iter()
            .filter(|(_, m)| m.cluster.owns(&s))
            .map(|(id, _)| *id)
            .collect();
        assert!(holders.len() <= 1, "{s} owned by {holders:?} at once");
        if let Some(h) = holders.first() {
            out.insert(s, h.to_string());
        }
    }
    out
}

/// Samples every 20 ms until every source has an owner (bounded).
async fn all_owned(members: &BTreeMap<&str, Member>, within: Duration) -> BTreeMap<String, String> {
    let start = Instant::now();
    loop {
        let now = owners(members);
        if now.len() == 12 {
            return now;
        }
        assert!(
            start.elapsed() < within,
            "only {} of 12 sources owned after {within:?}: {now:?}",
            now.len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Samples for `d`, checking the one-owner rule throughout.
async fn watch(members: &BTreeMap<&str, Member>, d: Duration) {
    let until = Instant::now() + d;
    while Instant::now() < until {
        owners(members);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

on_every_backend!(a_dozen_sources_always_have_exactly_one_owner_as_members_come_and_go);
async fn a_dozen_sources_always_have_exactly_one_owner_as_members_come_and_go(kind: Kind) {
    let backend = Backend::start(kind).await;
    let mut members = BTreeMap::new();
    members.insert("m1", member(&backend, "m1").await);
    members.insert("m2", member(&backend, "m2").await);
    members.insert("m3", member(&backend, "m3").await);
    all_owned(&members, TTL * 2).await;
    // Settle: late members become preferred for their share and get it.
    watch(&members, TTL * 3).await;
    let spread = all_owned(&members, TTL).await;
    let mut per: BTreeMap<&str, usize> = BTreeMap::new();
    for m in spread.values() {
        *per.entry(m.as_str()).or_default() += 1;
    }
    assert_eq!(
        per.len(),
        3,
        "every member owns some of the 12 sources: {per:?}"
    );

    // Quiet once settled: no ownership change in 2 lease periods.
    let before: usize = members
        .values()
        .map(|m| m.changes.load(std::sync::atomic::Ordering::SeqCst))
        .sum();
    watch(&members, TTL * 2).await;
    let after: usize = members
        .values()
        .map(|m| m.changes.load(std::sync::atomic::Ordering::SeqCst))
        .sum();
    assert_eq!(before, after, "ownership flapped while nothing changed");

    // m2 leaves cleanly: its sources are taken at once, the others stay put.
    let left = members.remove("m2").expect("m2");
    left.cluster.leave().await;
    left.follower.abort();
    let taken = Instant::now();
    let now = all_owned(&members, TTL + Duration::from_secs(2)).await;
    assert!(
        taken.elapsed() < TTL,
        "a clean leave frees sources at once: {:?}",
        taken.elapsed()
    );
    for (s, owner) in &spread {
        if owner != "m2" {
            assert_eq!(
                now.get(s),
                Some(owner),
                "{s} moved although its owner stayed"
            );
        }
    }

    // m2 comes back: it gets its share again after settling, one owner throughout.
    members.insert("m2", member(&backend, "m2").await);
    watch(&members, TTL * 3).await;
    let back = all_owned(&members, TTL).await;
    assert!(
        back.values().any(|m| m == "m2"),
        "the returning member owns sources again: {back:?}"
    );
    for m in members.values() {
        m.cluster.leave().await;
        m.follower.abort();
    }
}
