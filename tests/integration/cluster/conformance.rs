//! The engine contract, on every backend (a real etcd, and the Kubernetes
//! Lease API fake): exclusive ownership, fenced checkpoint writes, expiry
//! of a member that stops renewing, an unreachable engine.

use std::sync::Arc;
use std::time::{Duration, Instant};

use auditrelay::cluster::{
    ClusterBackend, ClusterConfig, Engine, EngineError, EtcdConfig, KubernetesConfig,
};

use crate::support::etcd::{self, Etcd};
use crate::support::lease_api::LeaseApiServer;

/// A backend under test, started per test and stopped when dropped.
pub enum Backend {
    Etcd(Etcd),
    Kubernetes(LeaseApiServer),
}

#[derive(Clone, Copy, Debug)]
pub enum Kind {
    Etcd,
    Kubernetes,
}

pub const NAMESPACE: &str = "siem";

impl Backend {
    pub async fn start(kind: Kind) -> Backend {
        match kind {
            Kind::Etcd => {
                if !etcd::available() {
                    panic!("etcd is not installed: apt-get install etcd-server (see .ci/run)");
                }
                Backend::Etcd(Etcd::start().await)
            }
            Kind::Kubernetes => Backend::Kubernetes(LeaseApiServer::start().await),
        }
    }

    pub fn config(&self, id: &str, name: &str, ttl: Duration) -> ClusterConfig {
        match self {
            Backend::Etcd(etcd) => config(etcd, id, name, ttl),
            Backend::Kubernetes(api) => ClusterConfig {
                backend: ClusterBackend::Kubernetes,
                name: name.to_string(),
                instance_id: Some(id.to_string()),
                lease_ttl: ttl,
                etcd: None,
                kubernetes: Some(KubernetesConfig {
                    namespace: NAMESPACE.to_string(),
                    api_url: Some(api.url()),
                    ca_file: Some(api.ca_file()),
                    token_file: Some(api.token_file()),
                }),
            },
        }
    }

    /// The engine stops answering (etcd killed; the API server answering
    /// only after every client gave up).
    pub async fn outage(&mut self) {
        match self {
            Backend::Etcd(etcd) => etcd.stop().await,
            Backend::Kubernetes(api) => api.set_delay(Some(Duration::from_secs(5))),
        }
    }

    pub async fn recover(&mut self) {
        match self {
            Backend::Etcd(etcd) => etcd.resume().await,
            Backend::Kubernetes(api) => api.set_delay(None),
        }
    }
}

/// Runs an `async fn(Kind)` test once per backend.
macro_rules! on_every_backend {
    ($test:ident) => {
        mod $test {
            use super::Kind;
            #[tokio::test]
            async fn etcd() {
                super::$test(Kind::Etcd).await
            }
            #[tokio::test]
            async fn kubernetes() {
                super::$test(Kind::Kubernetes).await
            }
        }
    };
}
pub(crate) use on_every_backend;

pub fn config(etcd: &Etcd, id: &str, name: &str, ttl: Duration) -> ClusterConfig {
    ClusterConfig {
        backend: ClusterBackend::Etcd,
        name: name.to_string(),
        instance_id: Some(id.to_string()),
        lease_ttl: ttl,
        etcd: Some(EtcdConfig {
            endpoints: vec![etcd.endpoint()],
            prefix: "/auditrelay-test".to_string(),
            tls: None,
            username: None,
            password_file: None,
        }),
        kubernetes: None,
    }
}

async fn engine(backend: &Backend, id: &str) -> Arc<dyn Engine> {
    let cfg = backend.config(id, "c", Duration::from_secs(3));
    let e = auditrelay::cluster::connect(&cfg).await.expect("connect");
    e.join().await.expect("join");
    e
}

on_every_backend!(ownership_is_exclusive_and_a_stale_owner_cannot_commit);
async fn ownership_is_exclusive_and_a_stale_owner_cannot_commit(kind: Kind) {
    let backend = Backend::start(kind).await;
    let a = engine(&backend, "a").await;
    let b = engine(&backend, "b").await;
    let view = a.view().await.expect("view");
    assert_eq!(view.members.len(), 2, "{view:?}");

    let fence_a = a.acquire("veza").await.expect("acquire").expect("free");
    assert_eq!(
        b.acquire("veza").await.expect("acquire"),
        None,
        "one owner at a time"
    );
    a.save("veza", &fence_a, br#"{"next":100}"#)
        .await
        .expect("owner commits");
    let b_fake = auditrelay::cluster::Fence {
        token: fence_a.token,
    };
    assert!(
        matches!(
            b.save("veza", &b_fake, br#"{"next":1}"#).await,
            Err(EngineError::Fenced)
        ),
        "a non-owner's write is refused even with the owner's token"
    );

    // a stops renewing (paused): its lease expires and b takes over.
    let since = Instant::now();
    let fence_b = loop {
        assert!(since.elapsed() < Duration::from_secs(8), "b never acquired");
        if let Some(f) = b.acquire("veza").await.expect("acquire") {
            break f;
        }
        b.renew().await.expect("b renews");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(
        since.elapsed() <= Duration::from_secs(3 + 2),
        "took {:?}",
        since.elapsed()
    );
    assert_ne!(fence_a, fence_b);
    assert_eq!(
        b.load("veza").await.expect("load").as_deref(),
        Some(&br#"{"next":100}"#[..]),
        "the new owner resumes where the old one committed"
    );
    b.save("veza", &fence_b, br#"{"next":200}"#)
        .await
        .expect("new owner commits");

    // a wakes up and commits late: rejected, the history stays in order.
    assert!(matches!(
        a.save("veza", &fence_a, br#"{"next":150}"#).await,
        Err(EngineError::Fenced)
    ));
    assert!(
        matches!(a.renew().await, Err(EngineError::Expired)),
        "a learns its lease is gone"
    );
    assert_eq!(
        b.load("veza").await.expect("load").as_deref(),
        Some(&br#"{"next":200}"#[..])
    );

    // Releasing frees the source at once; a releases nothing it lost.
    a.release("veza", &fence_a).await.expect("no-op release");
    assert_eq!(
        a.view()
            .await
            .expect("view")
            .owners
            .get("veza")
            .map(String::as_str),
        Some("b")
    );
    b.release("veza", &fence_b).await.expect("release");
    assert!(!b.view().await.expect("view").owners.contains_key("veza"));
    b.leave().await;
    let members = a.view().await.expect("view").members;
    assert!(
        !members.contains(&"b".to_string()),
        "a left member is gone at once: {members:?}"
    );
}

on_every_backend!(an_unreachable_engine_is_an_error_not_a_hang);
async fn an_unreachable_engine_is_an_error_not_a_hang(kind: Kind) {
    let mut backend = Backend::start(kind).await;
    let a = engine(&backend, "a").await;
    backend.outage().await;
    let started = Instant::now();
    let renewed = a.renew().await;
    assert!(
        matches!(renewed, Err(EngineError::Unreachable(_))),
        "{renewed:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "bounded by the request timeout: {:?}",
        started.elapsed()
    );
    backend.recover().await;
    // Back within the lease: the same membership goes on.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        match a.renew().await {
            Ok(()) => break,
            Err(e) => assert!(Instant::now() < deadline, "renewal never recovered: {e}"),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
