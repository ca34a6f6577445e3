//! The membership loop of one instance: renews its lease, steps down when
//! it cannot, takes free sources and hands sources over to their preferred
//! member, telling the daemon which pipelines to start and stop.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::assign::{decide, Decision, Inputs};
use super::config::ClusterConfig;
use super::connect::connect;
use super::engine::{Engine, EngineError, Fence, View};
use super::metrics::{init_source, owned, CLUSTER_METRICS};
use super::store::{EngineCheckpoints, Holdings};
use crate::checkpoint::RemoteCheckpoints;

/// What the daemon must do with a source's pipeline.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// This instance owns the source now: start its pipeline.
    Acquired(String),
    /// Ownership is gone: stop the pipeline at once (its commits are refused).
    Lost(String),
    /// Another member should own it: drain the pipeline (commit what the
    /// sinks confirmed), then call [`Cluster::handed_over`].
    Handover(String),
}

/// A running membership.
pub struct Cluster {
    engine: Arc<dyn Engine>,
    holdings: Holdings,
    fenced_tx: mpsc::UnboundedSender<(String, Fence)>,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
    backend: &'static str,
}

impl Cluster {
    /// Starts the membership loop for `sources`. The engine may be down:
    /// the loop keeps trying, and owns nothing meanwhile.
    pub async fn start(
        cfg: &ClusterConfig,
        sources: Vec<String>,
    ) -> anyhow::Result<(Arc<Cluster>, mpsc::UnboundedReceiver<Change>)> {
        let engine = connect(cfg).await?;
        Ok(Self::with_engine(engine, cfg, sources))
    }

    /// As [`Cluster::start`] with a given engine (tests, other backends).
    pub fn with_engine(
        engine: Arc<dyn Engine>,
        cfg: &ClusterConfig,
        sources: Vec<String>,
    ) -> (Arc<Cluster>, mpsc::UnboundedReceiver<Change>) {
        let backend = match cfg.backend {
            super::ClusterBackend::Etcd => "etcd",
            super::ClusterBackend::Kubernetes => "kubernetes",
        };
        for s in &sources {
            init_source(s);
        }
        let (changes_tx, changes_rx) = mpsc::unbounded_channel();
        let (fenced_tx, fenced_rx) = mpsc::unbounded_channel();
        let holdings: Holdings = Arc::default();
        let stop = CancellationToken::new();
        let member = Member {
            engine: engine.clone(),
            holdings: holdings.clone(),
            me: cfg.instance_id(),
            ttl: cfg.lease_ttl,
            sources,
            backend,
            changes: changes_tx,
            acquired_at: BTreeMap::new(),
            handing_over: BTreeSet::new(),
            first_seen: BTreeMap::new(),
            unowned_since: BTreeMap::new(),
            renewed_at: None,
        };
        let task = tokio::spawn(member.run(fenced_rx, stop.clone()));
        let cluster = Arc::new(Cluster {
            engine,
            holdings,
            fenced_tx,
            stop,
            task: Mutex::new(Some(task)),
            backend,
        });
        (cluster, changes_rx)
    }

    /// The checkpoint backend for the daemon's store.
    pub fn checkpoints(&self) -> Arc<dyn RemoteCheckpoints> {
        Arc::new(EngineCheckpoints::new(
            self.engine.clone(),
            self.holdings.clone(),
            self.fenced_tx.clone(),
            tokio::runtime::Handle::current(),
        ))
    }

    /// Whether this instance owns `source` now.
    pub fn owns(&self, source: &str) -> bool {
        self.holdings
            .lock()
            .map(|h| h.contains_key(source))
            .unwrap_or(false)
    }

    /// The pipeline of `source` is drained: give the source up.
    pub async fn handed_over(&self, source: &str) {
        let fence = self.holdings.lock().ok().and_then(|mut h| h.remove(source));
        owned(source, false, fence.as_ref().map(|_| "handed_over"));
        if let Some(fence) = fence {
            if let Err(e) = self.engine.release(source, &fence).await {
                warn!(source, error = %e, "cannot release the source; its owner key stays on this instance's lease, so it is taken again and handed over later");
            }
            info!(source, "cluster: source handed over");
        }
    }

    /// Stops the loop and ends the membership (the pipelines are drained
    /// already): every owned source is free for the others at once. With
    /// the engine unreachable each request hangs for its timeout, so the
    /// releases and the revocation go out together: a stop waits one
    /// request timeout, not one per source.
    pub async fn leave(&self) {
        self.stop.cancel();
        let task = self.task.lock().ok().and_then(|mut t| t.take());
        if let Some(task) = task {
            // A step may be waiting on the engine; whatever it took is on
            // the lease revoked below (or expiring with it).
            task.abort();
            let _ = task.await;
        }
        let held: Vec<_> = self
            .holdings
            .lock()
            .map(|mut h| std::mem::take(&mut *h).into_iter().collect())
            .unwrap_or_default();
        let releases = held.iter().map(|(source, fence)| {
            owned(source, false, None);
            self.engine.release(source, fence)
        });
        let _ = tokio::join!(
            futures_util::future::join_all(releases),
            self.engine.leave()
        );
        CLUSTER_METRICS
            .engine_reachable
            .with_label_values(&[self.backend])
            .set(0);
    }
}

/// The loop's own state.
struct Member {
    engine: Arc<dyn Engine>,
    holdings: Holdings,
    me: String,
    ttl: Duration,
    sources: Vec<String>,
    backend: &'static str,
    changes: mpsc::UnboundedSender<Change>,
    acquired_at: BTreeMap<String, Instant>,
    handing_over: BTreeSet<String>,
    first_seen: BTreeMap<String, Instant>,
    unowned_since: BTreeMap<String, Instant>,
    /// When the last successful renewal (or the join) was sent; `None`
    /// while not a member.
    renewed_at: Option<Instant>,
}

impl Member {
    fn tick(&self) -> Duration {
        (self.ttl / 10).clamp(Duration::from_millis(100), Duration::from_millis(500))
    }

    /// Past this, the engine may expire the lease any moment: stop first.
    fn deadline(&self, renewed_at: Instant) -> Instant {
        renewed_at + self.ttl - self.ttl / 4
    }

    async fn run(
        mut self,
        mut fenced: mpsc::UnboundedReceiver<(String, Fence)>,
        stop: CancellationToken,
    ) {
        let mut interval = tokio::time::interval(self.tick());
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => break,
                Some((source, fence)) = fenced.recv() => {
                    if self.holds(&source, &fence) {
                        self.lose(&source, "its checkpoint write was fenced");
                    }
                    continue;
                }
                _ = interval.tick() => {}
            }
            // An engine that stops answering makes every request hang for
            // its timeout: the step may not outlive the lease deadline.
            match self.renewed_at.map(|at| self.deadline(at)) {
                Some(deadline) => {
                    let bounded = tokio::time::timeout_at(deadline.into(), self.step());
                    if bounded.await.is_err() {
                        self.reachable(false);
                        self.step_down("the engine did not answer before the lease deadline");
                    }
                }
                None => self.step().await,
            }
        }
    }

    fn reachable(&self, up: bool) {
        CLUSTER_METRICS
            .engine_reachable
            .with_label_values(&[self.backend])
            .set(i64::from(up));
    }

    async fn step(&mut self) {
        self.forget_released();
        let now = Instant::now();
        if self.renewed_at.is_some_and(|at| now >= self.deadline(at)) {
            // Woken late (a paused process): stop before anything else.
            self.step_down("the lease could not be renewed in time");
            return;
        }
        match self.renewed_at {
            None => match self.engine.join().await {
                Ok(()) => {
                    info!(member = %self.me, "cluster: joined");
                    self.renewed_at = Some(now);
                }
                Err(e) => {
                    self.reachable(false);
                    warn!(error = %e, "cluster: cannot join; owning nothing until it works");
                    return;
                }
            },
            Some(at) if now.duration_since(at) >= self.ttl / 3 => match self.engine.renew().await {
                Ok(()) => self.renewed_at = Some(now),
                Err(EngineError::Expired) => {
                    self.step_down("the lease expired");
                    return;
                }
                Err(e) => {
                    self.reachable(false);
                    warn!(error = %e, "cluster: cannot renew the lease");
                }
            },
            Some(_) => {}
        }
        if let Some(at) = self.renewed_at {
            if Instant::now() >= self.deadline(at) {
                self.step_down("the lease could not be renewed in time");
                return;
            }
        }
        let view = match self.engine.view().await {
            Ok(v) => v,
            Err(e) => {
                self.reachable(false);
                warn!(error = %e, "cluster: cannot read the members and owners");
                return;
            }
        };
        self.reachable(true);
        let owners = self.owners(&view);
        self.follow(&view, &owners);
        self.act(&owners).await;
    }

    /// Whether `source` is held with `fence` still (not lost and taken
    /// again since).
    fn holds(&self, source: &str, fence: &Fence) -> bool {
        self.holdings
            .lock()
            .map(|h| h.get(source) == Some(fence))
            .unwrap_or(false)
    }

    /// Sources given up through [`Cluster::handed_over`].
    fn forget_released(&mut self) {
        let held: BTreeSet<String> = self
            .holdings
            .lock()
            .map(|h| h.keys().cloned().collect())
            .unwrap_or_default();
        self.acquired_at.retain(|s, _| held.contains(s));
        self.handing_over.retain(|s| held.contains(s));
    }

    /// The owners of `view`, less owner keys of this instance it does not
    /// hold: an acquisition whose answer was lost, a release that failed or
    /// a key of an earlier lease. They count as free, so this instance
    /// takes them again (the engine gives back only a key of the current
    /// lease) instead of leaving them unowned for as long as it lives.
    fn owners(&self, view: &View) -> BTreeMap<String, String> {
        view.owners
            .iter()
            .filter(|(s, o)| **o != self.me || self.acquired_at.contains_key(*s))
            .map(|(s, o)| (s.clone(), o.clone()))
            .collect()
    }

    /// Sources the engine no longer shows as ours are lost.
    fn follow(&mut self, view: &View, owners: &BTreeMap<String, String>) {
        let now = Instant::now();
        let held: Vec<String> = self.acquired_at.keys().cloned().collect();
        for s in held {
            if view.owners.get(&s) != Some(&self.me) {
                self.lose(&s, "its owner key is gone");
            }
        }
        self.first_seen.retain(|m, _| view.members.contains(m));
        for m in &view.members {
            self.first_seen.entry(m.clone()).or_insert(now);
        }
        self.unowned_since.retain(|s, _| !owners.contains_key(s));
        for s in &self.sources {
            if !owners.contains_key(s) {
                self.unowned_since.entry(s.clone()).or_insert(now);
            }
        }
    }

    async fn act(&mut self, owners: &BTreeMap<String, String>) {
        let now = Instant::now();
        let since = |m: &BTreeMap<String, Instant>| -> BTreeMap<String, Duration> {
            m.iter()
                .map(|(k, t)| (k.clone(), now.duration_since(*t)))
                .collect()
        };
        let members = since(&self.first_seen);
        let unowned_for = since(&self.unowned_since);
        let held_for = since(&self.acquired_at);
        let decisions = decide(&Inputs {
            me: &self.me,
            sources: &self.sources,
            owners,
            members: &members,
            unowned_for: &unowned_for,
            held_for: &held_for,
            grace: self.ttl / 3,
            settle: self.ttl,
        });
        for (source, decision) in decisions {
            match decision {
                Decision::Acquire => self.acquire(&source).await,
                Decision::Handover => {
                    if self.handing_over.insert(source.clone()) {
                        info!(source = %source, "cluster: handing the source over to its preferred member");
                        let _ = self.changes.send(Change::Handover(source));
                    }
                }
            }
        }
    }

    async fn acquire(&mut self, source: &str) {
        match self.engine.acquire(source).await {
            Ok(Some(fence)) => {
                if let Ok(mut h) = self.holdings.lock() {
                    h.insert(source.to_string(), fence);
                }
                self.acquired_at.insert(source.to_string(), Instant::now());
                owned(source, true, Some("acquired"));
                info!(source, member = %self.me, "cluster: acquired the source");
                let _ = self.changes.send(Change::Acquired(source.to_string()));
            }
            Ok(None) => {}
            Err(EngineError::Expired) => self.step_down("the lease expired"),
            Err(e) => warn!(source, error = %e, "cluster: cannot acquire the source"),
        }
    }

    fn lose(&mut self, source: &str, why: &str) {
        let had = self
            .holdings
            .lock()
            .map(|mut h| h.remove(source).is_some())
            .unwrap_or(false);
        self.acquired_at.remove(source);
        self.handing_over.remove(source);
        if had {
            owned(source, false, Some("lost"));
            warn!(
                source,
                why, "cluster: lost the source; stopping its pipeline"
            );
            let _ = self.changes.send(Change::Lost(source.to_string()));
        }
    }

    /// Stops every pipeline: this instance can no longer prove it owns
    /// anything. It joins again (with a new lease) when the engine answers.
    fn step_down(&mut self, why: &str) {
        warn!(why, "cluster: stepping down from every source");
        let held: Vec<String> = self.acquired_at.keys().cloned().collect();
        for s in held {
            self.lose(&s, why);
        }
        self.renewed_at = None;
    }
}
