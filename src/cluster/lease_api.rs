//! The few calls of the Kubernetes `coordination.k8s.io/v1` Lease REST API
//! the Lease backend needs, over plain HTTPS, with the service account's
//! bearer token (re-read at every request: the kubelet rotates it).

use std::path::PathBuf;
use std::time::Duration;

use reqwest::header::{HeaderValue, AUTHORIZATION};
use reqwest::{Method, StatusCode};
use serde_json::Value;

use super::config::KubernetesConfig;
use crate::config::TlsConfig;
use crate::secret::SecretSource;

#[derive(Debug)]
pub enum ApiError {
    NotFound,
    /// 409: a stale `resourceVersion`, or the name exists already (create).
    Conflict,
    /// No answer, or an answer that says nothing about the Lease.
    Unreachable(String),
}

pub struct LeaseApi {
    http: reqwest::Client,
    /// `<api>/apis/coordination.k8s.io/v1/namespaces/<ns>/leases`
    leases: String,
    namespace: String,
    token_file: PathBuf,
}

impl LeaseApi {
    pub fn new(cfg: &KubernetesConfig, timeout: Duration) -> anyhow::Result<LeaseApi> {
        let api = cfg
            .api_url()
            .map_err(|e| anyhow::anyhow!("cluster.kubernetes.api_url: {e}"))?;
        let tls = TlsConfig {
            ca_file: api.starts_with("https://").then(|| cfg.ca_file()),
            cert_file: None,
            key_file: None,
            insecure_skip_verify: false,
        };
        let http = crate::http::client(&tls, timeout, "cluster.kubernetes")?;
        Ok(LeaseApi {
            http,
            leases: format!(
                "{api}/apis/coordination.k8s.io/v1/namespaces/{}/leases",
                cfg.namespace
            ),
            namespace: cfg.namespace.clone(),
            token_file: cfg.token_file(),
        })
    }

    async fn call(
        &self,
        method: Method,
        url: String,
        body: Option<&Value>,
    ) -> Result<Value, ApiError> {
        let token = SecretSource::File(self.token_file.clone())
            .load()
            .map_err(|e| ApiError::Unreachable(format!("cluster.kubernetes.token_file: {e}")))?;
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose().trim()))
            .map_err(|_| {
                ApiError::Unreachable(format!(
                    "cluster.kubernetes.token_file: {} holds characters not allowed in a header",
                    self.token_file.display()
                ))
            })?;
        auth.set_sensitive(true);
        let mut req = self
            .http
            .request(method.clone(), &url)
            .header(AUTHORIZATION, auth);
        if let Some(body) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(body.to_string());
        }
        let resp = req
            .send()
            .await
            .map_err(|e| ApiError::Unreachable(crate::http::describe_error(e)))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .map_err(|e| ApiError::Unreachable(crate::http::describe_error(e)))?;
        match status {
            s if s.is_success() => serde_json::from_slice(&bytes).map_err(|e| {
                ApiError::Unreachable(format!("{method} {url}: the answer is not JSON: {e}"))
            }),
            StatusCode::NOT_FOUND => Err(ApiError::NotFound),
            StatusCode::CONFLICT => Err(ApiError::Conflict),
            StatusCode::UNAUTHORIZED => Err(ApiError::Unreachable(format!(
                "the API server refused the token of {} (401)",
                self.token_file.display()
            ))),
            StatusCode::FORBIDDEN => Err(ApiError::Unreachable(format!(
                "forbidden (403): the service account needs get, list, create, update and \
                 delete on leases.coordination.k8s.io in namespace {}: {}",
                self.namespace,
                status_message(&bytes)
            ))),
            s => Err(ApiError::Unreachable(format!(
                "{method} {url}: HTTP {s}: {}",
                status_message(&bytes)
            ))),
        }
    }

    fn one(&self, name: &str) -> String {
        format!("{}/{name}", self.leases)
    }

    pub async fn get(&self, name: &str) -> Result<Value, ApiError> {
        self.call(Method::GET, self.one(name), None).await
    }

    /// Every Lease whose labels match `selector` (`k=v,k2=v2`).
    pub async fn list(&self, selector: &str) -> Result<Vec<Value>, ApiError> {
        let url = url::Url::parse_with_params(&self.leases, [("labelSelector", selector)])
            .map_err(|e| ApiError::Unreachable(format!("bad Lease list URL: {e}")))?;
        let list = self.call(Method::GET, url.into(), None).await?;
        match list.get("items") {
            Some(Value::Array(items)) => Ok(items.clone()),
            Some(Value::Null) | None => Ok(Vec::new()),
            Some(_) => Err(ApiError::Unreachable(
                "the Lease list has no items array".into(),
            )),
        }
    }

    pub async fn create(&self, lease: &Value) -> Result<Value, ApiError> {
        self.call(Method::POST, self.leases.clone(), Some(lease))
            .await
    }

    /// PUT: refused with 409 unless `lease.metadata.resourceVersion` is
    /// the stored one.
    pub async fn replace(&self, name: &str, lease: &Value) -> Result<Value, ApiError> {
        self.call(Method::PUT, self.one(name), Some(lease)).await
    }

    /// DELETE, only if the Lease is still at `resource_version`.
    pub async fn delete(&self, name: &str, resource_version: &str) -> Result<(), ApiError> {
        let options = serde_json::json!({
            "kind": "DeleteOptions",
            "apiVersion": "v1",
            "preconditions": { "resourceVersion": resource_version },
        });
        self.call(Method::DELETE, self.one(name), Some(&options))
            .await
            .map(|_| ())
    }
}

/// The `message` of a Kubernetes `Status` answer (bounded), or the start
/// of the body.
fn status_message(body: &[u8]) -> String {
    let text = serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|v| v.get("message")?.as_str().map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(body).into_owned());
    text.chars().take(300).collect()
}
