//! The Kubernetes backend: one `coordination.k8s.io/v1` Lease per member
//! and one per source, the source's checkpoint an annotation on its Lease.
//!
//! Every write is a PUT of the Lease as last read or written, so the API
//! server refuses it (409) when anyone wrote in between: a former owner
//! whose Lease was taken over can never commit. The owner's own renewals
//! change the `resourceVersion` too, so writes to one source's Lease go
//! through one lock and the version is tracked.
//!
//! A Lease is expired when its `resourceVersion` has not changed for
//! `leaseDurationSeconds` as seen by this instance's own monotonic clock
//! (as client-go's leader election does): no clock sync is needed.

use std::collections::HashMap;
use std::sync::{Arc, Mutex as SyncMutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine as _;
use chrono::SecondsFormat;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex;

use super::config::ClusterConfig;
use super::engine::{Engine, EngineError, Fence, Instance, View};
use super::lease_api::{ApiError, LeaseApi};

pub const LABEL_CLUSTER: &str = "auditrelay.io/cluster";
pub const LABEL_ROLE: &str = "auditrelay.io/role";
pub const ANNOTATION_SOURCE: &str = "auditrelay.io/source";
/// The checkpoint as text (it is JSON); `…-base64` when it is not UTF-8.
pub const ANNOTATION_CHECKPOINT: &str = "auditrelay.io/checkpoint";
pub const ANNOTATION_CHECKPOINT_B64: &str = "auditrelay.io/checkpoint-base64";

/// Member Leases of instances gone this many lease durations are deleted
/// (a Deployment's pods get new names: they would pile up).
const FORGET_MEMBERS_AFTER: u32 = 3;

pub struct KubernetesEngine {
    api: LeaseApi,
    namespace: String,
    cluster: String,
    instance: Instance,
    /// This instance's member Lease; `None` = not a member.
    member: Mutex<Option<Held>>,
    /// When the member Lease was last written: past `lease_ttl`, the others
    /// count it expired, whatever the API server still stores.
    renewed_at: SyncMutex<Option<Instant>>,
    /// Per source: its Lease while this instance holds it.
    slots: SyncMutex<HashMap<String, Arc<Mutex<Option<Held>>>>>,
    /// Lease name → (resourceVersion, when this instance saw it change).
    seen: SyncMutex<HashMap<String, (String, Instant)>>,
}

struct Held {
    token: i64,
    lease: Value,
    /// A write went unanswered: it may have been applied, so the version
    /// is re-read before the next one.
    uncertain: bool,
}

fn api_error(e: ApiError) -> EngineError {
    match e {
        ApiError::Unreachable(why) => EngineError::Unreachable(why),
        ApiError::NotFound => EngineError::Unreachable("the Lease is gone (404)".into()),
        ApiError::Conflict => EngineError::Unreachable("the Lease changed meanwhile (409)".into()),
    }
}

fn now_micro() -> String {
    chrono::Utc::now().to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// A DNS-subdomain-safe piece of `name`.
fn slug(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(40)
        .collect();
    s.trim_matches('-').to_string()
}

fn resource_version(lease: &Value) -> Option<&str> {
    lease.pointer("/metadata/resourceVersion")?.as_str()
}

fn holder(lease: &Value) -> &str {
    lease
        .pointer("/spec/holderIdentity")
        .and_then(Value::as_str)
        .unwrap_or("")
}

fn transitions(lease: &Value) -> i64 {
    lease
        .pointer("/spec/leaseTransitions")
        .and_then(Value::as_i64)
        .unwrap_or(0)
}

fn annotation<'a>(lease: &'a Value, key: &str) -> Option<&'a str> {
    lease.pointer("/metadata/annotations")?.get(key)?.as_str()
}

fn checkpoint(lease: &Value) -> Option<Vec<u8>> {
    if let Some(text) = annotation(lease, ANNOTATION_CHECKPOINT) {
        return Some(text.as_bytes().to_vec());
    }
    let b64 = annotation(lease, ANNOTATION_CHECKPOINT_B64)?;
    base64::engine::general_purpose::STANDARD.decode(b64).ok()
}

fn set_checkpoint(lease: &mut Value, state: Option<&[u8]>) {
    let annotations = &mut lease["metadata"]["annotations"];
    if !annotations.is_object() {
        *annotations = json!({});
    }
    if let Some(map) = annotations.as_object_mut() {
        map.remove(ANNOTATION_CHECKPOINT);
        map.remove(ANNOTATION_CHECKPOINT_B64);
        match state.map(std::str::from_utf8) {
            Some(Ok(text)) => {
                map.insert(ANNOTATION_CHECKPOINT.into(), json!(text));
            }
            Some(Err(_)) => {
                let b64 = base64::engine::general_purpose::STANDARD.encode(state.unwrap_or(&[]));
                map.insert(ANNOTATION_CHECKPOINT_B64.into(), json!(b64));
            }
            None => {}
        }
    }
}

impl KubernetesEngine {
    pub fn connect(cfg: &ClusterConfig) -> anyhow::Result<KubernetesEngine> {
        let k = cfg
            .kubernetes
            .clone()
            .ok_or_else(|| anyhow::anyhow!("cluster.kubernetes: missing"))?;
        let instance = Instance::of(cfg);
        Ok(KubernetesEngine {
            api: LeaseApi::new(&k, instance.request_timeout())?,
            namespace: k.namespace,
            cluster: cfg.name.clone(),
            instance,
            member: Mutex::new(None),
            renewed_at: SyncMutex::new(None),
            slots: SyncMutex::default(),
            seen: SyncMutex::default(),
        })
    }

    fn lease_name(&self, role: &str, name: &str) -> String {
        let hash = Sha256::digest(format!("{}/{role}/{name}", self.cluster));
        format!(
            "auditrelay-{}-{role}-{}-{}",
            slug(&self.cluster),
            slug(name),
            &hex::encode(hash)[..10]
        )
    }

    fn member_name(&self) -> String {
        self.lease_name("member", &self.instance.id)
    }

    fn source_name(&self, source: &str) -> String {
        self.lease_name("source", source)
    }

    /// A new Lease held by this instance.
    fn new_lease(&self, name: &str, role: &str, source: Option<&str>) -> Value {
        let now = now_micro();
        let mut annotations = json!({});
        if let Some(s) = source {
            annotations[ANNOTATION_SOURCE] = json!(s);
        }
        json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "labels": {
                    LABEL_CLUSTER: self.cluster,
                    LABEL_ROLE: role,
                    "app.kubernetes.io/managed-by": "auditrelay",
                },
                "annotations": annotations,
            },
            "spec": {
                "holderIdentity": self.instance.id,
                "leaseDurationSeconds": self.instance.lease_secs(),
                "acquireTime": now,
                "renewTime": now,
                "leaseTransitions": 0,
            },
        })
    }

    /// Makes `lease` held by this instance from now on.
    fn take(&self, lease: &mut Value, transitions: i64) {
        let now = now_micro();
        lease["spec"]["holderIdentity"] = json!(self.instance.id);
        lease["spec"]["leaseDurationSeconds"] = json!(self.instance.lease_secs());
        lease["spec"]["acquireTime"] = json!(now);
        lease["spec"]["renewTime"] = json!(now);
        lease["spec"]["leaseTransitions"] = json!(transitions);
    }

    /// How long ago this instance saw `lease` change (recording it now).
    fn unchanged_for(&self, lease: &Value) -> Duration {
        let name = lease
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("");
        let rv = resource_version(lease).unwrap_or("");
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        let entry = seen
            .entry(name.to_string())
            .or_insert_with(|| (rv.to_string(), now));
        if entry.0 != rv {
            *entry = (rv.to_string(), now);
        }
        now.duration_since(entry.1)
    }

    /// Held by someone whose renewals this instance still sees.
    fn live(&self, lease: &Value) -> bool {
        let secs = lease
            .pointer("/spec/leaseDurationSeconds")
            .and_then(Value::as_u64)
            .unwrap_or(self.instance.ttl.as_secs());
        let age = self.unchanged_for(lease);
        !holder(lease).is_empty() && age < Duration::from_secs(secs)
    }

    fn slot(&self, source: &str) -> Arc<Mutex<Option<Held>>> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.entry(source.to_string()).or_default().clone()
    }

    fn held_slots(&self) -> Vec<Arc<Mutex<Option<Held>>>> {
        let slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        slots.values().cloned().collect()
    }

    /// Writes `lease` (changed from `held.lease`) under the held version.
    /// `Fenced` and the holding dropped when someone else wrote meanwhile.
    async fn write_held(
        &self,
        slot: &mut Option<Held>,
        change: impl FnOnce(&mut Value),
    ) -> Result<(), EngineError> {
        let Some(held) = slot.as_mut() else {
            return Err(EngineError::Fenced);
        };
        let name = held
            .lease
            .pointer("/metadata/name")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string();
        if held.uncertain {
            match self.api.get(&name).await {
                Ok(cur) if holder(&cur) == self.instance.id && transitions(&cur) == held.token => {
                    held.lease = cur;
                    held.uncertain = false;
                }
                Ok(_) | Err(ApiError::NotFound) => {
                    *slot = None;
                    return Err(EngineError::Fenced);
                }
                Err(e) => return Err(api_error(e)),
            }
        }
        let mut lease = held.lease.clone();
        change(&mut lease);
        match self.api.replace(&name, &lease).await {
            Ok(written) => {
                held.lease = written;
                Ok(())
            }
            Err(ApiError::Conflict | ApiError::NotFound) => {
                *slot = None;
                Err(EngineError::Fenced)
            }
            Err(e) => {
                held.uncertain = true;
                Err(api_error(e))
            }
        }
    }

    fn renewed_at(&self) -> Option<Instant> {
        *self.renewed_at.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn set_renewed(&self, at: Option<Instant>) {
        *self.renewed_at.lock().unwrap_or_else(|p| p.into_inner()) = at;
    }

    /// The membership expired: no holding can be proven any more.
    async fn drop_holdings(&self) {
        for slot in self.held_slots() {
            *slot.lock().await = None;
        }
    }

    /// Deletes member Leases of instances long gone (best effort).
    async fn forget_members(&self, leases: &[Value]) {
        let after = self.instance.ttl * FORGET_MEMBERS_AFTER;
        for lease in leases {
            let gone = holder(lease) != self.instance.id && self.unchanged_for(lease) > after;
            let name = lease.pointer("/metadata/name").and_then(Value::as_str);
            if let (true, Some(name), Some(rv)) = (gone, name, resource_version(lease)) {
                let _ = self.api.delete(name, rv).await;
            }
        }
    }
}

#[async_trait]
impl Engine for KubernetesEngine {
    async fn join(&self) -> Result<(), EngineError> {
        // Holdings of an earlier membership are not ours to use.
        self.drop_holdings().await;
        let mut member = self.member.lock().await;
        let name = self.member_name();
        let fresh = self.new_lease(&name, "member", None);
        let written = match self.api.create(&fresh).await {
            Ok(v) => v,
            Err(ApiError::Conflict) => {
                // Left by an earlier run with this id: take it over.
                let mut cur = self.api.get(&name).await.map_err(api_error)?;
                let n = transitions(&cur) + 1;
                self.take(&mut cur, n);
                self.api.replace(&name, &cur).await.map_err(api_error)?
            }
            Err(e) => return Err(api_error(e)),
        };
        *member = Some(Held {
            token: transitions(&written),
            lease: written,
            uncertain: false,
        });
        self.set_renewed(Some(Instant::now()));
        Ok(())
    }

    async fn renew(&self) -> Result<(), EngineError> {
        {
            let mut member = self.member.lock().await;
            let expired = self
                .renewed_at()
                .is_none_or(|at| at.elapsed() >= self.instance.ttl);
            if member.is_none() || expired {
                *member = None;
                drop(member);
                self.drop_holdings().await;
                return Err(EngineError::Expired);
            }
            let started = Instant::now();
            match self
                .write_held(&mut member, |l| l["spec"]["renewTime"] = json!(now_micro()))
                .await
            {
                Ok(()) => self.set_renewed(Some(started)),
                Err(EngineError::Fenced) => {
                    drop(member);
                    self.drop_holdings().await;
                    return Err(EngineError::Expired);
                }
                Err(e) => return Err(e),
            }
        }
        let mut failed = None;
        for slot in self.held_slots() {
            let mut slot = slot.lock().await;
            if slot.is_none() {
                continue;
            }
            let renewed = self
                .write_held(&mut slot, |l| l["spec"]["renewTime"] = json!(now_micro()))
                .await;
            // A Lease taken over is seen in the next view as not ours.
            if let Err(e @ EngineError::Unreachable(_)) = renewed {
                failed = Some(e);
            }
        }
        failed.map_or(Ok(()), Err)
    }

    async fn view(&self) -> Result<View, EngineError> {
        let selector = format!("{LABEL_CLUSTER}={}", self.cluster);
        let leases = self.api.list(&selector).await.map_err(api_error)?;
        let mut view = View::default();
        let mut gone_members = Vec::new();
        for lease in &leases {
            let role = lease
                .pointer("/metadata/labels")
                .and_then(|l| l.get(LABEL_ROLE))
                .and_then(Value::as_str);
            let live = self.live(lease);
            match role {
                Some("member") if live => view.members.push(holder(lease).to_string()),
                Some("member") => gone_members.push(lease.clone()),
                Some("source") => {
                    let Some(source) = annotation(lease, ANNOTATION_SOURCE) else {
                        continue;
                    };
                    if live {
                        view.owners
                            .insert(source.to_string(), holder(lease).to_string());
                    }
                    if let Some(state) = checkpoint(lease) {
                        view.checkpoints.insert(source.to_string(), state);
                    }
                }
                _ => {}
            }
        }
        view.members.sort();
        self.forget_members(&gone_members).await;
        Ok(view)
    }

    async fn acquire(&self, source: &str) -> Result<Option<Fence>, EngineError> {
        let expired = self
            .renewed_at()
            .is_none_or(|at| at.elapsed() >= self.instance.ttl);
        if self.member.lock().await.is_none() || expired {
            return Err(EngineError::Expired);
        }
        let slot = self.slot(source);
        let mut slot = slot.lock().await;
        let name = self.source_name(source);
        let written = match self.api.get(&name).await {
            Err(ApiError::NotFound) => {
                match self
                    .api
                    .create(&self.new_lease(&name, "source", Some(source)))
                    .await
                {
                    Ok(v) => v,
                    Err(ApiError::Conflict) => return Ok(None),
                    Err(e) => return Err(api_error(e)),
                }
            }
            Err(e) => return Err(api_error(e)),
            Ok(mut cur) => {
                // Held by an earlier run of this instance: ours to take.
                if self.live(&cur) && holder(&cur) != self.instance.id {
                    return Ok(None);
                }
                let n = transitions(&cur) + 1;
                self.take(&mut cur, n);
                match self.api.replace(&name, &cur).await {
                    Ok(v) => v,
                    Err(ApiError::Conflict | ApiError::NotFound) => return Ok(None),
                    Err(e) => return Err(api_error(e)),
                }
            }
        };
        let token = transitions(&written);
        *slot = Some(Held {
            token,
            lease: written,
            uncertain: false,
        });
        Ok(Some(Fence { token }))
    }

    async fn release(&self, source: &str, fence: &Fence) -> Result<(), EngineError> {
        let slot = self.slot(source);
        let mut slot = slot.lock().await;
        if slot.as_ref().is_none_or(|h| h.token != fence.token) {
            return Ok(());
        }
        let freed = self
            .write_held(&mut slot, |l| {
                if let Some(spec) = l.get_mut("spec").and_then(Value::as_object_mut) {
                    spec.remove("holderIdentity");
                }
            })
            .await;
        *slot = None;
        match freed {
            Ok(()) | Err(EngineError::Fenced) => Ok(()),
            Err(e) => Err(e),
        }
    }

    async fn load(&self, source: &str) -> Result<Option<Vec<u8>>, EngineError> {
        match self.api.get(&self.source_name(source)).await {
            Ok(lease) => Ok(checkpoint(&lease)),
            Err(ApiError::NotFound) => Ok(None),
            Err(e) => Err(api_error(e)),
        }
    }

    async fn save(&self, source: &str, fence: &Fence, state: &[u8]) -> Result<(), EngineError> {
        let slot = self.slot(source);
        let mut slot = slot.lock().await;
        if slot.as_ref().is_none_or(|h| h.token != fence.token) {
            return Err(EngineError::Fenced);
        }
        self.write_held(&mut slot, |l| set_checkpoint(l, Some(state)))
            .await
    }

    async fn reset(&self, source: &str) -> Result<bool, EngineError> {
        let slot = self.slot(source);
        let mut slot = slot.lock().await;
        let name = self.source_name(source);
        for _ in 0..5 {
            let mut lease = match self.api.get(&name).await {
                Ok(l) => l,
                Err(ApiError::NotFound) => return Ok(false),
                Err(e) => return Err(api_error(e)),
            };
            if checkpoint(&lease).is_none() {
                return Ok(false);
            }
            set_checkpoint(&mut lease, None);
            match self.api.replace(&name, &lease).await {
                Ok(written) => {
                    if let Some(held) = slot.as_mut() {
                        if holder(&written) == self.instance.id
                            && transitions(&written) == held.token
                        {
                            held.lease = written;
                        }
                    }
                    return Ok(true);
                }
                Err(ApiError::Conflict) => continue,
                Err(e) => return Err(api_error(e)),
            }
        }
        Err(EngineError::Unreachable(format!(
            "the Lease {}/{name} kept changing; try again",
            self.namespace
        )))
    }

    async fn leave(&self) {
        let Some(held) = self.member.lock().await.take() else {
            return;
        };
        self.set_renewed(None);
        if let Some(rv) = resource_version(&held.lease) {
            let _ = self.api.delete(&self.member_name(), rv).await;
        }
    }

    fn describe(&self, source: &str) -> String {
        format!(
            "the annotation {ANNOTATION_CHECKPOINT} of Lease {}/{}",
            self.namespace,
            self.source_name(source)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_names_are_dns_subdomains_and_distinct() {
        let cfg: ClusterConfig = serde_json::from_value(json!({
            "backend": "kubernetes", "name": "Prod_SIEM", "instance_id": "host-a",
            "lease_ttl": "10s",
            "kubernetes": { "namespace": "siem", "api_url": "http://127.0.0.1:1" },
        }))
        .expect("config");
        let e = KubernetesEngine::connect(&cfg).expect("engine");
        let names = [
            e.source_name("veza"),
            e.source_name("Veza"),
            e.source_name("--"),
            e.member_name(),
        ];
        for n in &names {
            assert!(n.len() <= 253, "{n}");
            assert!(
                n.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'),
                "{n}"
            );
            assert!(
                n.starts_with("auditrelay-prod-siem-") && !n.ends_with('-'),
                "{n}"
            );
        }
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }

    #[test]
    fn a_checkpoint_that_is_not_utf8_survives_the_annotation() {
        let mut lease = json!({"metadata": {}});
        set_checkpoint(&mut lease, Some(&[0xff, 0x00, b'a']));
        assert_eq!(checkpoint(&lease), Some(vec![0xff, 0x00, b'a']));
        set_checkpoint(&mut lease, Some(br#"{"next":5}"#));
        assert_eq!(
            annotation(&lease, ANNOTATION_CHECKPOINT),
            Some(r#"{"next":5}"#)
        );
        assert_eq!(annotation(&lease, ANNOTATION_CHECKPOINT_B64), None);
        set_checkpoint(&mut lease, None);
        assert_eq!(checkpoint(&lease), None);
    }
}
