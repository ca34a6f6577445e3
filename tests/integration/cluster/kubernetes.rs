//! What only the Kubernetes Lease backend has: its own renewals change the
//! Lease's `resourceVersion` (they must never fence its own commits), the
//! API server's 409 is the fence, the Lease carries the fields other
//! Lease readers expect, and a refused token is named by its file only.

use std::time::Duration;

use auditrelay::cluster::{Engine, EngineError};
use serde_json::Value;

use super::conformance::{Backend, Kind, NAMESPACE};
use crate::support::lease_api::LeaseApiServer;

async fn started() -> (Backend, std::sync::Arc<dyn Engine>) {
    let backend = Backend::start(Kind::Kubernetes).await;
    let cfg = backend.config("host-a", "k8s", Duration::from_secs(3));
    let engine = auditrelay::cluster::connect(&cfg).await.expect("connect");
    engine.join().await.expect("join");
    (backend, engine)
}

fn api(backend: &Backend) -> &LeaseApiServer {
    match backend {
        Backend::Kubernetes(api) => api,
        Backend::Etcd(_) => unreachable!("a Kubernetes backend"),
    }
}

fn source_lease(api: &LeaseApiServer) -> (String, Value) {
    let name = api
        .lease_names()
        .into_iter()
        .find(|n| n.contains("-source-veza-"))
        .expect("the source's Lease");
    let lease = api.lease(NAMESPACE, &name).expect("stored");
    (name, lease)
}

#[tokio::test(flavor = "multi_thread")]
async fn renewals_between_commits_never_fence_the_owner_but_a_takeover_does() {
    let (backend, a) = started().await;
    let fence = a.acquire("veza").await.expect("acquire").expect("free");
    let saver = {
        let (a, fence) = (a.clone(), fence.clone());
        tokio::spawn(async move {
            for next in 0..40 {
                let state = format!("{{\"next\":{next}}}");
                a.save("veza", &fence, state.as_bytes()).await?;
            }
            Ok::<_, EngineError>(())
        })
    };
    let renewer = {
        let a = a.clone();
        tokio::spawn(async move {
            for _ in 0..20 {
                a.renew().await?;
            }
            Ok::<_, EngineError>(())
        })
    };
    saver
        .await
        .expect("task")
        .expect("every commit of the owner goes through");
    renewer
        .await
        .expect("task")
        .expect("every renewal goes through");

    let api = api(&backend);
    let (_, lease) = source_lease(api);
    let spec = &lease["spec"];
    assert_eq!(spec["holderIdentity"], "host-a", "{lease}");
    assert_eq!(spec["leaseDurationSeconds"], 3, "{lease}");
    assert_eq!(spec["leaseTransitions"], 0, "{lease}");
    for t in ["acquireTime", "renewTime"] {
        let text = spec[t].as_str().unwrap_or_default();
        assert!(
            chrono::DateTime::parse_from_rfc3339(text).is_ok() && text.contains('.'),
            "{t} is a MicroTime: {lease}"
        );
    }
    assert_eq!(
        lease["metadata"]["annotations"]["auditrelay.io/checkpoint"],
        r#"{"next":39}"#
    );
    assert_eq!(lease["metadata"]["labels"]["auditrelay.io/cluster"], "k8s");
    assert_eq!(api.answered(409), 0, "no write raced its own renewal");

    // The owner stops renewing (paused); another instance takes the Lease
    // over: the paused owner's next commit is the API server's 409.
    let b_cfg = backend.config("host-b", "k8s", Duration::from_secs(3));
    let b = auditrelay::cluster::connect(&b_cfg).await.expect("connect");
    b.join().await.expect("join");
    // b may take it only once it saw no renewal for the lease duration.
    assert_eq!(b.acquire("veza").await.expect("acquire"), None);
    let fence_b = loop {
        if let Some(f) = b.acquire("veza").await.expect("acquire") {
            break f;
        }
        b.renew().await.expect("b renews");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    let conflicts = api.answered(409);
    assert!(matches!(
        a.save("veza", &fence, br#"{"next":1}"#).await,
        Err(EngineError::Fenced)
    ));
    assert_eq!(
        api.answered(409),
        conflicts + 1,
        "the fence is the server's 409"
    );
    assert_eq!(
        b.load("veza").await.expect("load").as_deref(),
        Some(&br#"{"next":39}"#[..])
    );
    b.save("veza", &fence_b, br#"{"next":40}"#)
        .await
        .expect("the new owner commits");
    let (_, lease) = source_lease(api);
    assert_eq!(lease["spec"]["holderIdentity"], "host-b");
    assert_eq!(lease["spec"]["leaseTransitions"], 1);
}

#[tokio::test]
async fn a_refused_token_is_named_by_its_file_and_a_rotated_file_is_read_again() {
    let (backend, a) = started().await;
    let api = api(&backend);
    api.set_token("rotated-token-77");
    let refused = a.renew().await;
    let Err(EngineError::Unreachable(why)) = refused else {
        panic!("{refused:?}");
    };
    assert!(why.contains("401"), "{why}");
    assert!(
        why.contains(&api.token_file().display().to_string()),
        "names the file: {why}"
    );
    assert!(!why.contains("k8s-sa-token"), "never the token: {why}");
    // The kubelet writes the new token: the next request uses it.
    std::fs::write(api.token_file(), "rotated-token-77\n").expect("rotate");
    a.renew().await.expect("renews with the rotated token");
    assert!(api.answered(401) >= 1);
}
