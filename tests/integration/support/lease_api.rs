//! A fake Kubernetes API server holding `coordination.k8s.io/v1` Leases,
//! behind a TLS front with its own CA (as in a pod), for the Kubernetes
//! cluster backend.
//!
//! Faithful where it matters for fencing, harsh where real servers are:
//! every write gets a new `resourceVersion`; a PUT or DELETE naming a
//! stale one is 409 Conflict, a POST of an existing name 409 AlreadyExists,
//! a PUT of a missing Lease 404 (Leases are not created on update); a
//! wrong or missing bearer token 401 (the token can be rotated at runtime);
//! a body whose name or namespace disagree with the URL, a `resourceVersion`
//! on create, or an invalid spec (non-positive `leaseDurationSeconds`, a
//! `renewTime` that is not RFC 3339) 400/422; a changed `uid` 409; fields
//! it does not know are kept (`managedFields` is added, as real servers
//! do). Lists filter by `labelSelector` equality terms. Options: slow
//! answers (all, or for this many requests), changeable while running.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::{json, Value};

use super::http1::{Request, Response};
use super::paged::{bearer, Answer, PagedApi, PagedFake};
use super::tls::{TestPki, TlsFront};

const PREFIX: &str = "/apis/coordination.k8s.io/v1/namespaces/";

pub struct LeaseApi;

#[derive(Default)]
pub struct LeaseState {
    pub token: String,
    leases: BTreeMap<(String, String), Value>,
    next_version: u64,
    next_uid: u64,
    /// Every answer this much later.
    pub delay: Option<Duration>,
    /// Answers by status code, to show which paths were taken.
    pub statuses: BTreeMap<u16, u64>,
}

fn status(code: u16, reason: &str, message: &str) -> Response {
    let body = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {},
        "status": "Failure", "message": message, "reason": reason, "code": code,
    });
    Response::json(code, body.to_string())
}

fn ok(code: u16, body: &Value) -> Response {
    Response::json(code, body.to_string())
}

fn meta<'a>(v: &'a Value, key: &str) -> Option<&'a str> {
    v.get("metadata")?.get(key)?.as_str()
}

/// Why a Lease body is invalid, as the API server's validation says.
fn invalid(lease: &Value) -> Option<String> {
    if lease.get("kind").and_then(Value::as_str) != Some("Lease") {
        return Some("kind must be Lease".into());
    }
    let spec = lease.get("spec")?;
    if let Some(d) = spec.get("leaseDurationSeconds") {
        if d.as_i64().is_none_or(|d| d <= 0) {
            return Some("spec.leaseDurationSeconds: must be greater than 0".into());
        }
    }
    for key in ["renewTime", "acquireTime"] {
        if let Some(t) = spec.get(key) {
            let parsed = t
                .as_str()
                .map(chrono::DateTime::parse_from_rfc3339)
                .is_some_and(|r| r.is_ok());
            if !parsed {
                return Some(format!("spec.{key}: not an RFC 3339 MicroTime"));
            }
        }
    }
    if let Some(h) = spec.get("holderIdentity") {
        if !h.is_string() && !h.is_null() {
            return Some("spec.holderIdentity: must be a string".into());
        }
    }
    let size: usize = lease
        .pointer("/metadata/annotations")
        .and_then(Value::as_object)
        .map(|a| a.iter().map(|(k, v)| k.len() + v.to_string().len()).sum())
        .unwrap_or(0);
    (size > 256 * 1024)
        .then(|| "metadata.annotations: Too long: must have at most 262144 bytes".into())
}

fn matches(lease: &Value, selector: &str) -> bool {
    selector.split(',').filter(|t| !t.is_empty()).all(|term| {
        let Some((k, v)) = term.split_once('=') else {
            return false;
        };
        lease
            .pointer("/metadata/labels")
            .and_then(|l| l.get(k))
            .and_then(Value::as_str)
            == Some(v)
    })
}

impl LeaseState {
    fn stamp(&mut self, lease: &mut Value) {
        self.next_version += 1;
        lease["metadata"]["resourceVersion"] = json!(self.next_version.to_string());
        lease["metadata"]["managedFields"] =
            json!([{"manager": "auditrelay", "operation": "Update"}]);
    }

    fn answer(&mut self, req: &Request) -> Response {
        if bearer(req) != Some(self.token.as_str()) {
            return status(401, "Unauthorized", "Unauthorized");
        }
        let Some(rest) = req.path().strip_prefix(PREFIX) else {
            return status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            );
        };
        let parts: Vec<&str> = rest.split('/').collect();
        let (ns, name) = match parts.as_slice() {
            [ns, "leases"] => (ns.to_string(), None),
            [ns, "leases", name] if !name.is_empty() => (ns.to_string(), Some(name.to_string())),
            _ => {
                return status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                )
            }
        };
        let body: Option<Value> = if req.body.is_empty() {
            None
        } else {
            match serde_json::from_slice(&req.body) {
                Ok(v) => Some(v),
                Err(e) => return status(400, "BadRequest", &format!("invalid JSON: {e}")),
            }
        };
        match (req.method.as_str(), name) {
            ("GET", None) => {
                let selector = super::paged::Params::of_query(req)
                    .get("labelSelector")
                    .unwrap_or("")
                    .to_string();
                let items: Vec<Value> = self
                    .leases
                    .iter()
                    .filter(|((n, _), l)| *n == ns && matches(l, &selector))
                    .map(|(_, l)| l.clone())
                    .collect();
                ok(
                    200,
                    &json!({"kind": "LeaseList", "apiVersion": "coordination.k8s.io/v1",
                        "metadata": {"resourceVersion": self.next_version.to_string()},
                        "items": items}),
                )
            }
            ("GET", Some(name)) => match self.leases.get(&(ns, name.clone())) {
                Some(l) => ok(200, l),
                None => not_found(&name),
            },
            ("POST", None) => {
                let Some(mut lease) = body else {
                    return status(400, "BadRequest", "no body");
                };
                let Some(name) = meta(&lease, "name").map(str::to_string) else {
                    return status(422, "Invalid", "metadata.name: Required value");
                };
                if meta(&lease, "namespace").is_some_and(|n| n != ns) {
                    return status(
                        400,
                        "BadRequest",
                        "the namespace of the object does not match the namespace on the request",
                    );
                }
                if meta(&lease, "resourceVersion").is_some_and(|v| !v.is_empty()) {
                    return status(
                        500,
                        "InternalError",
                        "resourceVersion should not be set on objects to be created",
                    );
                }
                if let Some(why) = invalid(&lease) {
                    return status(422, "Invalid", &why);
                }
                let key = (ns.clone(), name.clone());
                if self.leases.contains_key(&key) {
                    return status(
                        409,
                        "AlreadyExists",
                        &format!("leases.coordination.k8s.io \"{name}\" already exists"),
                    );
                }
                self.next_uid += 1;
                lease["metadata"]["namespace"] = json!(ns);
                lease["metadata"]["uid"] = json!(format!("uid-{}", self.next_uid));
                lease["metadata"]["creationTimestamp"] = json!(chrono::Utc::now().to_rfc3339());
                self.stamp(&mut lease);
                self.leases.insert(key, lease.clone());
                ok(201, &lease)
            }
            ("PUT", Some(name)) => {
                let Some(mut lease) = body else {
                    return status(400, "BadRequest", "no body");
                };
                if meta(&lease, "name") != Some(name.as_str()) {
                    return status(
                        400,
                        "BadRequest",
                        "the name of the object does not match the name on the URL",
                    );
                }
                if let Some(why) = invalid(&lease) {
                    return status(422, "Invalid", &why);
                }
                let key = (ns, name.clone());
                let Some(stored) = self.leases.get(&key) else {
                    return not_found(&name);
                };
                let stale = meta(&lease, "resourceVersion")
                    .is_some_and(|v| Some(v) != meta(stored, "resourceVersion"));
                let other_uid = meta(&lease, "uid").is_some_and(|u| Some(u) != meta(stored, "uid"));
                if stale || other_uid {
                    return status(409, "Conflict", &format!("Operation cannot be fulfilled on leases.coordination.k8s.io \"{name}\": the object has been modified; please apply your changes to the latest version and try again"));
                }
                for k in ["uid", "creationTimestamp", "namespace"] {
                    lease["metadata"][k] = stored["metadata"][k].clone();
                }
                self.stamp(&mut lease);
                self.leases.insert(key, lease.clone());
                ok(200, &lease)
            }
            ("DELETE", Some(name)) => {
                let key = (ns, name.clone());
                let Some(stored) = self.leases.get(&key) else {
                    return not_found(&name);
                };
                let wanted = body
                    .as_ref()
                    .and_then(|b| b.pointer("/preconditions/resourceVersion"))
                    .and_then(Value::as_str);
                if wanted.is_some_and(|v| Some(v) != meta(stored, "resourceVersion")) {
                    return status(
                        409,
                        "Conflict",
                        "Precondition failed: ResourceVersion in precondition does not match",
                    );
                }
                self.leases.remove(&key);
                ok(
                    200,
                    &json!({"kind": "Status", "apiVersion": "v1", "status": "Success"}),
                )
            }
            _ => status(
                405,
                "MethodNotAllowed",
                "the server does not allow this method on the requested resource",
            ),
        }
    }
}

fn not_found(name: &str) -> Response {
    status(
        404,
        "NotFound",
        &format!("leases.coordination.k8s.io \"{name}\" not found"),
    )
}

impl PagedApi for LeaseApi {
    type State = LeaseState;

    fn unreadable(&self, _st: &mut LeaseState, status_code: u16, why: &str) -> Response {
        status(status_code, "BadRequest", why)
    }

    fn answer(&self, st: &mut LeaseState, req: &Request) -> Answer {
        let response = st.answer(req);
        *st.statuses.entry(response.status).or_default() += 1;
        Answer {
            response,
            delay: st.delay,
            cut: None,
        }
    }
}

/// The fake behind TLS, with its CA and a token file as a pod has them.
pub struct LeaseApiServer {
    pub fake: PagedFake<LeaseApi>,
    front: TlsFront,
    dir: tempfile::TempDir,
}

impl LeaseApiServer {
    pub async fn start() -> LeaseApiServer {
        let token = "k8s-sa-token-4f1c";
        let fake = PagedFake::serve(
            LeaseApi,
            LeaseState {
                token: token.into(),
                ..LeaseState::default()
            },
        )
        .expect("lease API fake");
        let pki = TestPki::generate("fake kubernetes CA");
        let front = TlsFront::start(&pki, fake.addr()).await.expect("TLS front");
        let dir = tempfile::tempdir().expect("tempdir");
        pki.write_ca(dir.path(), "ca.crt");
        std::fs::write(dir.path().join("token"), format!("{token}\n")).expect("token file");
        LeaseApiServer { fake, front, dir }
    }

    pub fn url(&self) -> String {
        self.front.url()
    }

    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.crt")
    }

    pub fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Answers everything this much later (`None`: at once).
    pub fn set_delay(&self, delay: Option<Duration>) {
        self.fake.state().delay = delay;
    }

    /// Rotates the accepted token (the file keeps the old one).
    pub fn set_token(&self, token: &str) {
        self.fake.state().token = token.into();
    }

    pub fn answered(&self, status_code: u16) -> u64 {
        self.fake
            .state()
            .statuses
            .get(&status_code)
            .copied()
            .unwrap_or(0)
    }

    /// The stored Lease named `name` in `ns`.
    pub fn lease(&self, ns: &str, name: &str) -> Option<Value> {
        self.fake
            .state()
            .leases
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    pub fn lease_names(&self) -> Vec<String> {
        self.fake
            .state()
            .leases
            .keys()
            .map(|(_, n)| n.clone())
            .collect()
    }
}
