//! Two real daemons with one config shape and `[cluster] backend = "etcd"`:
//! a demo source (events are a pure function of their sequence number)
//! delivered to a file sink per instance. Nothing may be missing from the
//! union of the files, whatever happens to the owner or to etcd.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use auditrelay::cluster::Engine;

use super::conformance::config;
use crate::support::daemon::{free_port, http_get, Daemon};
use crate::support::etcd::Etcd;
use crate::support::harness::metric_value;

const TTL_S: u64 = 3;
const OWNED: &str = "auditrelay_cluster_source_owned{source=\"demo\"}";

struct Node {
    id: &'static str,
    dir: tempfile::TempDir,
    port: u16,
    daemon: Option<Daemon>,
}

impl Node {
    fn new(id: &'static str, etcd: &Etcd, cluster: &str, limit: u64) -> Node {
        let dir = tempfile::tempdir().expect("tempdir");
        let port = free_port();
        let d = dir.path().display();
        let toml = format!(
            r#"
state_dir = "{d}/state"
log_format = "json"
shutdown_timeout = "5s"
[server]
listen = "127.0.0.1:{port}"
[pipeline]
retry = {{ initial = "50ms", max = "200ms" }}
[cluster]
backend = "etcd"
name = "{cluster}"
instance_id = "{id}"
lease_ttl = "{TTL_S}s"
[cluster.etcd]
endpoints = ["{etcd}"]
prefix = "/auditrelay-test"
[sources.demo]
type = "demo"
rate = 400
batch_size = 40
limit = {limit}
[sinks.out]
type = "file"
inputs = ["demo"]
path = "{d}/out.ndjson"
"#,
            etcd = etcd.endpoint()
        );
        std::fs::write(dir.path().join("auditrelay.toml"), toml).expect("config");
        Node {
            id,
            dir,
            port,
            daemon: None,
        }
    }

    fn start(&mut self) {
        let config = self.dir.path().join("auditrelay.toml");
        let log = self.dir.path().join("daemon.log");
        self.daemon = Some(Daemon::spawn(&config, &log));
    }

    fn out(&self) -> PathBuf {
        self.dir.path().join("out.ndjson")
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("daemon.log")).unwrap_or_default()
    }

    async fn metric(&self, series: &str) -> f64 {
        let url = format!("http://127.0.0.1:{}/metrics", self.port);
        http_get(&url)
            .await
            .map(|(_, b)| metric_value(&b, series))
            .unwrap_or(-1.0)
    }

    async fn owns(&self) -> bool {
        self.metric(OWNED).await == 1.0
    }

    fn signal(&self, sig: i32) {
        if let Some(d) = &self.daemon {
            d.signal(sig);
        }
    }
}

/// The demo sequence numbers in a file sink's output.
fn seqs(path: &PathBuf) -> BTreeSet<u64> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| {
            let at = l.find("\"demo-")? + 6;
            l.get(at..at + 12)?.parse().ok()
        })
        .collect()
}

/// Waits (bounded) until `cond` holds, polling every 50 ms.
async fn until<F, Fut>(what: &str, within: Duration, mut cond: F) -> Duration
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < within,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    start.elapsed()
}

fn missing(nodes: &[&Node], limit: u64) -> Vec<u64> {
    let mut all = BTreeSet::new();
    for n in nodes {
        all.extend(seqs(&n.out()));
    }
    (0..limit).filter(|s| !all.contains(s)).collect()
}

/// The committed `next` of the demo source, read from etcd.
async fn committed(engine: &dyn Engine) -> Option<u64> {
    let state = engine.load("demo").await.ok()??;
    let v: serde_json::Value = serde_json::from_slice(&state).ok()?;
    v.get("next")?.as_u64()
}

async fn owner_and_standby<'a>(a: &'a mut Node, b: &'a mut Node) -> (&'a mut Node, &'a mut Node) {
    until("one owner", Duration::from_secs(15), || async {
        a.owns().await || b.owns().await
    })
    .await;
    assert!(
        !(a.owns().await && b.owns().await),
        "two owners of one source"
    );
    if a.owns().await {
        (a, b)
    } else {
        (b, a)
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_of_the_owner_the_standby_owns_within_lease_ttl_plus_2s_and_nothing_is_lost() {
    let etcd = Etcd::start().await;
    let limit = 4000;
    let (mut a, mut b) = (
        Node::new("a", &etcd, "kill", limit),
        Node::new("b", &etcd, "kill", limit),
    );
    a.start();
    b.start();
    let (owner, standby) = owner_and_standby(&mut a, &mut b).await;
    let (_, ready) = http_get(&format!("http://127.0.0.1:{}/readyz", standby.port))
        .await
        .expect("readyz");
    assert!(
        !ready.contains("\"ready\":false"),
        "a standby stays ready: {ready}"
    );
    let out = owner.out();
    until("the owner delivering", Duration::from_secs(20), || {
        let out = out.clone();
        async move { seqs(&out).len() >= 600 }
    })
    .await;
    owner.daemon.as_mut().expect("running").kill().await;
    let took = until("the standby owning", Duration::from_secs(TTL_S + 6), || {
        standby.owns()
    })
    .await;
    assert!(
        took <= Duration::from_secs(TTL_S + 2),
        "standby took {took:?} (lease_ttl {TTL_S}s + 2s allowed)\n{}",
        standby.log()
    );
    let standby_out = standby.out();
    until("every event delivered", Duration::from_secs(60), || {
        let p = standby_out.clone();
        async move { seqs(&p).contains(&(limit - 1)) }
    })
    .await;
    let (owner, standby) = (&*owner, &*standby);
    assert_eq!(
        missing(&[owner, standby], limit),
        Vec::<u64>::new(),
        "events lost"
    );
    // Duplicates: at most what the killed owner had delivered past its last
    // commit (≤ max_in_flight pages), not the whole stream twice.
    let dup = seqs(&owner.out())
        .intersection(&seqs(&standby.out()))
        .count();
    assert!(dup <= 4 * 40 + 40, "{dup} events delivered by both");
    assert!(
        standby
            .metric(
                "auditrelay_cluster_leadership_changes_total{change=\"acquired\",source=\"demo\"}"
            )
            .await
            >= 1.0
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn a_paused_owner_past_its_lease_is_replaced_and_cannot_move_the_checkpoint_back() {
    let etcd = Etcd::start().await;
    let limit = 4000;
    let (mut a, mut b) = (
        Node::new("a", &etcd, "pause", limit),
        Node::new("b", &etcd, "pause", limit),
    );
    a.start();
    b.start();
    let watcher =
        auditrelay::cluster::connect(&config(&etcd, "watcher", "pause", Duration::from_secs(3)))
            .await
            .expect("connect");
    let prefix_ok = {
        let (owner, standby) = owner_and_standby(&mut a, &mut b).await;
        until("a first commit", Duration::from_secs(20), || async {
            committed(&*watcher).await.is_some()
        })
        .await;
        owner.signal(libc::SIGSTOP);
        let took = until("the standby owning", Duration::from_secs(TTL_S + 6), || {
            standby.owns()
        })
        .await;
        assert!(took <= Duration::from_secs(TTL_S + 2), "took {took:?}");
        // Let the new owner commit past the paused one, then wake it up.
        let at_takeover = committed(&*watcher).await.unwrap_or(0);
        until(
            "the new owner committing",
            Duration::from_secs(20),
            || async { committed(&*watcher).await.unwrap_or(0) > at_takeover },
        )
        .await;
        owner.signal(libc::SIGCONT);
        // Watch the checkpoint while the woken owner notices it lost.
        let (mut last, mut in_order) = (0, true);
        let woke = Instant::now();
        loop {
            let now = committed(&*watcher).await.unwrap_or(last);
            in_order &= now >= last;
            last = last.max(now);
            let lost =
                "auditrelay_cluster_leadership_changes_total{change=\"lost\",source=\"demo\"}";
            if owner.metric(lost).await >= 1.0 {
                break;
            }
            assert!(
                woke.elapsed() < Duration::from_secs(10),
                "the woken owner never stopped\n{}",
                owner.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(!owner.owns().await, "the woken owner gave the source up");
        assert!(standby.owns().await, "the standby kept it");
        in_order
    };
    assert!(prefix_ok, "the checkpoint went backwards");
    until("every event delivered", Duration::from_secs(60), || async {
        committed(&*watcher).await == Some(limit)
    })
    .await;
    assert_eq!(missing(&[&a, &b], limit), Vec::<u64>::new(), "events lost");
    for n in [&a, &b] {
        let fenced = n
            .metric("auditrelay_cluster_fenced_commits_total{source=\"demo\"}")
            .await;
        assert!(fenced >= 0.0, "{}: the fenced-commit series exists", n.id);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn etcd_down_the_owner_steps_down_and_resumes_when_it_returns() {
    let mut etcd = Etcd::start().await;
    let limit = 6000;
    let mut a = Node::new("a", &etcd, "outage", limit);
    a.start();
    until("a owning", Duration::from_secs(15), || a.owns()).await;
    let out = a.out();
    until("a delivering", Duration::from_secs(20), || {
        let out = out.clone();
        async move { !seqs(&out).is_empty() }
    })
    .await;
    etcd.stop().await;
    let stepped = until(
        "a stepping down",
        Duration::from_secs(TTL_S + 3),
        || async { !a.owns().await },
    )
    .await;
    assert!(
        stepped <= Duration::from_secs(TTL_S),
        "stepped down after {stepped:?}, past its lease"
    );
    assert_eq!(
        a.metric("auditrelay_cluster_engine_reachable{backend=\"etcd\"}")
            .await,
        0.0
    );
    // Stopped means stopped: nothing more is delivered without the engine.
    let frozen = seqs(&a.out()).len();
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        seqs(&a.out()).len(),
        frozen,
        "delivered events while not owning"
    );
    etcd.resume().await;
    until("a owning again", Duration::from_secs(TTL_S + 10), || {
        a.owns()
    })
    .await;
    let out = a.out();
    until("every event delivered", Duration::from_secs(60), || {
        let p = out.clone();
        async move { seqs(&p).contains(&(limit - 1)) }
    })
    .await;
    assert_eq!(missing(&[&a], limit), Vec::<u64>::new(), "events lost");
    assert!(a.log().contains("stepping down"), "the log says why");
}

#[tokio::test(flavor = "multi_thread")]
async fn owners_killed_and_restarted_alternately_deliver_everything_with_bounded_duplicates() {
    let etcd = Etcd::start().await;
    let limit = 6000;
    let mut nodes = [
        Node::new("a", &etcd, "alt", limit),
        Node::new("b", &etcd, "alt", limit),
    ];
    for n in nodes.iter_mut() {
        n.start();
    }
    let kills = 3;
    for round in 0..kills {
        until("an owner", Duration::from_secs(TTL_S + 6), || async {
            nodes[0].owns().await || nodes[1].owns().await
        })
        .await;
        let owner = if nodes[0].owns().await { 0 } else { 1 };
        let out = nodes[owner].out();
        let have = seqs(&out).len();
        until("the owner delivering more", Duration::from_secs(20), || {
            let out = out.clone();
            async move { seqs(&out).len() >= have + 300 }
        })
        .await;
        nodes[owner].daemon.as_mut().expect("running").kill().await;
        let standby = 1 - owner;
        let took = until("the standby owning", Duration::from_secs(TTL_S + 6), || {
            nodes[standby].owns()
        })
        .await;
        assert!(
            took <= Duration::from_secs(TTL_S + 2),
            "round {round}: took {took:?}"
        );
        nodes[owner].start();
    }
    until("every event delivered", Duration::from_secs(60), || async {
        nodes.iter().any(|n| seqs(&n.out()).contains(&(limit - 1)))
    })
    .await;
    let [a, b] = &nodes;
    assert_eq!(missing(&[a, b], limit), Vec::<u64>::new(), "events lost");
    // The file sinks append: count every line, not unique ids.
    let lines = |n: &Node| {
        std::fs::read_to_string(n.out())
            .map(|t| t.lines().count())
            .unwrap_or(0)
    };
    let duplicates = lines(a) + lines(b) - limit as usize;
    let per_failover = 4 * 40 + 40; // max_in_flight pages + the one being committed
    assert!(
        duplicates <= kills * per_failover,
        "{duplicates} duplicates for {kills} failovers (bound {per_failover} each)"
    );
}
