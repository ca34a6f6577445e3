//! A push source: an HTTP(S) listener for events that QuickZTNA,
//! CertifyClouds or anything else POSTs (a JSON object, an array of them, or
//! NDJSON), authenticated by a bearer token and/or an HMAC-SHA256 signature
//! of the body (both compared in constant time).
//!
//! A request is answered 2xx only after its events are appended to the
//! spool under `state_dir/spool/<source>/` and fsynced, so a crash after the
//! answer loses nothing. The source drains the spool through the pipeline
//! like any other: each batch's checkpoint is the spool position after it,
//! and segments before the committed position are deleted. Nothing of a
//! refused request (401, 400, 413, 415) is spooled.

use std::net::SocketAddr;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hmac::{Hmac, Mac};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prometheus::{IntCounterVec, IntGaugeVec, Opts};
use serde::Deserialize;
use serde_json::value::RawValue;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tokio::sync::{watch, Semaphore};
use tokio::task::{JoinHandle, JoinSet};
use tracing::{debug, error, info, warn};

use super::{Paths, Source, SourceContext};
use crate::checkpoint::CheckpointStore;
use crate::config::{Problems, TlsConfig};
use crate::disk_queue::{AppendError, DiskQueue as Spool, Pos, Tail};
use crate::event::{Batch, Event, FieldExtractor};
use crate::health::Health;
use crate::metrics::metrics;
use crate::secret::{Secret, SecretKeys, SecretSource};

/// Most connections served at once.
const MAX_CONNECTIONS: usize = 1024;
/// Time a client gets to send its request head, and its body.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const BODY_TIMEOUT: Duration = Duration::from_secs(60);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// About how many bytes of events one batch takes from the spool.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "auditrelay_webhook_in_requests_total",
            "Requests to a webhook_in listener by outcome (accepted, unauthorized, bad_request, too_large, unsupported, timeout, spool_full, spool_error, not_found, method_not_allowed).",
        ),
        &["source", "outcome"],
    )
    .expect("metric definition is valid");
    metrics().register(c)
});

static SPOOL_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    let g = IntGaugeVec::new(
        Opts::new(
            "auditrelay_webhook_in_spool_bytes",
            "Bytes of a webhook_in spool on disk (received, not yet committed and removed).",
        ),
        &["source"],
    )
    .expect("metric definition is valid");
    metrics().register(g)
});

static SPOOL_CORRUPT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    let c = IntCounterVec::new(
        Opts::new(
            "auditrelay_webhook_in_spool_corrupt_total",
            "Damaged spool regions skipped (logged with file and offset).",
        ),
        &["source"],
    )
    .expect("metric definition is valid");
    metrics().register(c)
});

/// `[sources.NAME]` with `type = "webhook_in"`.
#[derive(Clone, Debug, Deserialize)]
pub struct WebhookInConfig {
    /// Address to listen on, e.g. `0.0.0.0:8443`.
    pub listen: String,
    /// Path events are POSTed to.
    #[serde(default = "default_path")]
    pub path: String,
    /// Bearer token senders must present (`Authorization: Bearer …`).
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    /// Key of the HMAC-SHA256 signature of the body senders must present.
    pub hmac_secret_file: Option<PathBuf>,
    pub hmac_secret_env: Option<String>,
    pub hmac_secret_credential: Option<String>,
    #[serde(default = "default_signature_header")]
    pub signature_header: String,
    /// Text before the hex digest in the signature header.
    #[serde(default = "default_signature_prefix")]
    pub signature_prefix: String,
    /// `cert_file` + `key_file` serve HTTPS; `ca_file` also requires client
    /// certificates signed by it (mTLS).
    #[serde(default)]
    pub tls: TlsConfig,
    /// Largest request body, on the wire and after gzip decoding.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// Most events per batch drained from the spool.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    #[serde(default = "default_segment_bytes")]
    pub segment_bytes: u64,
    /// Beyond this the listener answers 503 (Retry-After) until the sinks
    /// catch up: a bounded disk instead of a full one.
    #[serde(default = "default_max_spool_bytes")]
    pub max_spool_bytes: u64,
    #[serde(default = "default_id_path")]
    pub id_path: Paths,
    #[serde(default = "default_time_path")]
    pub time_path: Paths,
    #[serde(default = "default_type_path")]
    pub type_path: Paths,
}

fn default_path() -> String {
    "/".into()
}
fn default_signature_header() -> String {
    "X-Auditrelay-Signature".into()
}
fn default_signature_prefix() -> String {
    "sha256=".into()
}
fn default_max_body_bytes() -> usize {
    10 * 1024 * 1024
}
fn default_batch_size() -> usize {
    500
}
fn default_segment_bytes() -> u64 {
    64 * 1024 * 1024
}
fn default_max_spool_bytes() -> u64 {
    1024 * 1024 * 1024
}
fn default_id_path() -> Paths {
    Paths::of(&["id", "event_id", "request_id"])
}
fn default_time_path() -> Paths {
    Paths::of(&["timestamp", "created_at", "time"])
}
fn default_type_path() -> Paths {
    Paths::of(&["event_type", "action", "type"])
}

impl WebhookInConfig {
    fn token_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.token_file.clone(),
            env: self.token_env.clone(),
            credential: self.token_credential.clone(),
        }
    }

    fn hmac_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.hmac_secret_file.clone(),
            env: self.hmac_secret_env.clone(),
            credential: self.hmac_secret_credential.clone(),
        }
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if let Err(e) = self.listen.parse::<SocketAddr>() {
            problems.push(
                format!("{path}.listen"),
                format!("not an address:port: {e}"),
            );
        }
        if !self.path.starts_with('/') {
            problems.push(format!("{path}.path"), "must start with /");
        }
        let mut any_auth = false;
        for (stem, keys) in [
            ("token", self.token_keys()),
            ("hmac_secret", self.hmac_keys()),
        ] {
            match keys.source(stem) {
                Ok(Some(src)) => {
                    any_auth = true;
                    if let Err(e) = src.load() {
                        problems.push(format!("{path}.{}", src.key(stem)), e);
                    }
                }
                Ok(None) => {}
                Err(e) => problems.push(path, e),
            }
        }
        if !any_auth {
            problems.push(
                format!("{path}.token_file"),
                "a listener must authenticate its senders: set token_file (bearer) and/or hmac_secret_file (body signature), or their _env/_credential forms",
            );
        }
        if HeaderName::from_bytes(self.signature_header.as_bytes()).is_err() {
            problems.push(
                format!("{path}.signature_header"),
                format!("\"{}\" is not a header name", self.signature_header),
            );
        }
        self.tls.validate(path, problems);
        if self.tls.insecure_skip_verify {
            problems.push(
                format!("{path}.tls.insecure_skip_verify"),
                "does not apply to a listener",
            );
        }
        if self.tls.ca_file.is_some() && self.tls.cert_file.is_none() {
            problems.push(
                format!("{path}.tls.ca_file"),
                "client certificates need HTTPS: set tls.cert_file and tls.key_file too",
            );
        }
        if !(1024..=1 << 30).contains(&self.max_body_bytes) {
            problems.push(
                format!("{path}.max_body_bytes"),
                "must be between 1024 and 1073741824",
            );
        }
        if !(1..=100_000).contains(&self.batch_size) {
            problems.push(format!("{path}.batch_size"), "must be between 1 and 100000");
        }
        if self.segment_bytes < 4096 {
            problems.push(format!("{path}.segment_bytes"), "must be at least 4096");
        }
        if self.max_spool_bytes < 2 * self.max_body_bytes as u64 {
            problems.push(
                format!("{path}.max_spool_bytes"),
                "must be at least twice max_body_bytes",
            );
        } else if self.max_spool_bytes < self.segment_bytes + self.max_body_bytes as u64 {
            problems.push(
                format!("{path}.max_spool_bytes"),
                format!(
                    "must be at least segment_bytes + max_body_bytes ({} bytes): a smaller spool \
                     fills before its segment rotates",
                    self.segment_bytes + self.max_body_bytes as u64
                ),
            );
        }
        self.id_path.validate(&format!("{path}.id_path"), problems);
        self.time_path
            .validate(&format!("{path}.time_path"), problems);
        self.type_path
            .validate(&format!("{path}.type_path"), problems);
    }
}

/// A secret compared against what senders present, re-read (at most once
/// a second) when a comparison fails, so a rotated secret is picked up.
struct Keyed {
    src: SecretSource,
    value: Mutex<(Secret, Instant)>,
}

impl Keyed {
    fn load(src: SecretSource, path: &str) -> anyhow::Result<Keyed> {
        let value = src.load().map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        Ok(Keyed {
            src,
            value: Mutex::new((value, Instant::now())),
        })
    }

    fn current(&self) -> Secret {
        self.value
            .lock()
            .map(|v| v.0.clone())
            .unwrap_or_else(|p| p.into_inner().0.clone())
    }

    /// The secret re-read from its source when it changed since.
    fn reread(&self) -> Option<Secret> {
        let mut v = self.value.lock().unwrap_or_else(|p| p.into_inner());
        if v.1.elapsed() < Duration::from_secs(1) {
            return None;
        }
        v.1 = Instant::now();
        match self.src.load() {
            Ok(new) if new != v.0 => {
                info!(from = %self.src.describe(), "webhook_in secret changed; using the new one");
                v.0 = new.clone();
                Some(new)
            }
            Ok(_) => None,
            Err(e) => {
                warn!(error = %e, "cannot re-read the webhook_in secret");
                None
            }
        }
    }
}

/// Constant-time equality of two byte strings (of any lengths: the digests
/// compared have the same length, so timing reveals neither).
fn same(a: &[u8], b: &[u8]) -> bool {
    bool::from(Sha256::digest(a).ct_eq(&Sha256::digest(b)))
}

struct Shared {
    name: Arc<str>,
    path: String,
    spool: Arc<Spool>,
    bearer: Option<Keyed>,
    hmac: Option<Keyed>,
    signature_header: HeaderName,
    /// As configured, for messages (header names are lower-cased).
    signature_header_text: String,
    signature_prefix: String,
    max_body: usize,
    health: Health,
    /// Where the pipeline commits the spool position (see [`release_committed`]).
    store: CheckpointStore,
}

fn answer(status: StatusCode, message: impl Into<String>) -> Response {
    let body = serde_json::json!({ "error": message.into() }).to_string();
    (
        status,
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

impl Shared {
    fn count(&self, outcome: &str) {
        REQUESTS.with_label_values(&[&self.name, outcome]).inc();
    }

    fn refuse(&self, outcome: &str, status: StatusCode, message: String) -> Response {
        self.count(outcome);
        debug!(source = %self.name, status = status.as_u16(), reason = %message, "webhook_in refused a request");
        answer(status, message)
    }

    fn bearer_ok(&self, headers: &HeaderMap) -> Result<(), String> {
        let Some(keyed) = &self.bearer else {
            return Ok(());
        };
        let given = headers
            .get(axum::http::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .map(str::trim)
            .ok_or("missing Authorization: Bearer <token>")?;
        if same(given.as_bytes(), keyed.current().expose().as_bytes()) {
            return Ok(());
        }
        match keyed.reread() {
            Some(new) if same(given.as_bytes(), new.expose().as_bytes()) => Ok(()),
            _ => Err("the bearer token is not the one configured".into()),
        }
    }

    fn signature_ok(&self, headers: &HeaderMap, body: &[u8]) -> Result<(), String> {
        let Some(keyed) = &self.hmac else {
            return Ok(());
        };
        let header = self.signature_header_text.as_str();
        let given = headers
            .get(&self.signature_header)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| format!("missing {header} header"))?
            .trim();
        let hex_digest = given.strip_prefix(&self.signature_prefix).unwrap_or(given);
        let digest = hex::decode(hex_digest)
            .map_err(|_| format!("{header} is not {}<hex digest>", self.signature_prefix))?;
        let verify = |key: &Secret| {
            Hmac::<Sha256>::new_from_slice(key.expose().as_bytes())
                .map(|mut mac| {
                    mac.update(body);
                    mac.verify_slice(&digest).is_ok()
                })
                .unwrap_or(false)
        };
        if verify(&keyed.current()) {
            return Ok(());
        }
        match keyed.reread() {
            Some(new) if verify(&new) => Ok(()),
            _ => Err(format!(
                "{header} does not match the body (HMAC-SHA256 with the configured key)"
            )),
        }
    }
}

/// The byte ranges of the events of a body: a JSON object, an array of
/// objects, or NDJSON (one object per line).
pub fn parse_events(body: &[u8]) -> Result<Vec<Range<usize>>, String> {
    let base = body.as_ptr() as usize;
    let range = |part: &[u8]| {
        let start = part.as_ptr() as usize - base;
        start..start + part.len()
    };
    let trimmed = body.trim_ascii();
    if trimmed.is_empty() {
        return Err("empty body: send a JSON object, an array of objects, or NDJSON".into());
    }
    if trimmed.starts_with(b"[") {
        let items: Vec<&RawValue> = serde_json::from_slice(trimmed)
            .map_err(|e| format!("the JSON array does not parse: {e}"))?;
        return items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                if item.get().starts_with('{') {
                    Ok(range(item.get().as_bytes()))
                } else {
                    Err(format!("item {i} of the array is not a JSON object"))
                }
            })
            .collect();
    }
    if !trimmed.starts_with(b"{") {
        return Err("the body is neither a JSON object, an array of objects, nor NDJSON".into());
    }
    if let Ok(one) = serde_json::from_slice::<&RawValue>(trimmed) {
        return Ok(vec![range(one.get().as_bytes())]);
    }
    let mut out = Vec::new();
    for (n, line) in body.split(|b| *b == b'\n').enumerate() {
        let line = line.trim_ascii();
        if line.is_empty() {
            continue;
        }
        let item: &RawValue = serde_json::from_slice(line)
            .map_err(|e| format!("NDJSON line {} does not parse: {e}", n + 1))?;
        if !item.get().starts_with('{') {
            return Err(format!("NDJSON line {} is not a JSON object", n + 1));
        }
        out.push(range(item.get().as_bytes()));
    }
    Ok(out)
}

/// The event of one spooled record (the bytes of one item of a body).
pub(crate) fn record_event(extractor: &FieldExtractor, raw: Bytes) -> Event {
    match serde_json::from_slice::<&RawValue>(&raw) {
        Ok(item) => extractor.event(&raw, item),
        Err(_) => Event {
            raw: raw.clone(),
            id: None,
            time: None,
            kind: None,
        },
    }
}

pub(crate) fn gunzip(data: &[u8], max: usize) -> Result<Vec<u8>, (StatusCode, String)> {
    use std::io::Read;
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(data)
        .take(max as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            (
                StatusCode::BAD_REQUEST,
                format!("gzip body does not decode: {e}"),
            )
        })?;
    if out.len() > max {
        return Err((
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {max} bytes once decompressed (max_body_bytes)"),
        ));
    }
    Ok(out)
}

async fn receive(
    State(shared): State<Arc<Shared>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Body,
) -> Response {
    if uri.path() != shared.path {
        return shared.refuse(
            "not_found",
            StatusCode::NOT_FOUND,
            format!("no such path; events are POSTed to {}", shared.path),
        );
    }
    if method != Method::POST {
        let mut r = shared.refuse(
            "method_not_allowed",
            StatusCode::METHOD_NOT_ALLOWED,
            "only POST is accepted".into(),
        );
        r.headers_mut()
            .insert(axum::http::header::ALLOW, HeaderValue::from_static("POST"));
        return r;
    }
    let max = shared.max_body;
    let declared = headers
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max as u64) {
        return shared.refuse(
            "too_large",
            StatusCode::PAYLOAD_TOO_LARGE,
            format!("the body is larger than {max} bytes (max_body_bytes); send fewer events per request"),
        );
    }
    if let Err(why) = shared.bearer_ok(&headers) {
        let mut r = shared.refuse("unauthorized", StatusCode::UNAUTHORIZED, why);
        r.headers_mut().insert(
            axum::http::header::WWW_AUTHENTICATE,
            HeaderValue::from_static("Bearer"),
        );
        return r;
    }
    let collected = tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, max).collect()).await;
    let raw: Bytes = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) if e.downcast_ref::<LengthLimitError>().is_some() => {
            return shared.refuse(
                "too_large",
                StatusCode::PAYLOAD_TOO_LARGE,
                format!("the body is larger than {max} bytes (max_body_bytes); send fewer events per request"),
            )
        }
        Ok(Err(e)) => {
            return shared.refuse(
                "bad_request",
                StatusCode::BAD_REQUEST,
                format!("the body could not be read: {e}"),
            )
        }
        Err(_) => {
            return shared.refuse(
                "timeout",
                StatusCode::REQUEST_TIMEOUT,
                format!("the body did not arrive within {}s", BODY_TIMEOUT.as_secs()),
            )
        }
    };
    if let Err(why) = shared.signature_ok(&headers, &raw) {
        return shared.refuse("unauthorized", StatusCode::UNAUTHORIZED, why);
    }
    let encoding = headers
        .get(axum::http::header::CONTENT_ENCODING)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.trim().to_ascii_lowercase());
    let body = match encoding.as_deref() {
        None | Some("") | Some("identity") => raw,
        Some("gzip") | Some("x-gzip") => match gunzip(&raw, max) {
            Ok(d) => Bytes::from(d),
            Err((status, why)) => {
                let outcome = if status == StatusCode::PAYLOAD_TOO_LARGE {
                    "too_large"
                } else {
                    "bad_request"
                };
                return shared.refuse(outcome, status, why);
            }
        },
        Some(other) => {
            return shared.refuse(
                "unsupported",
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                format!("Content-Encoding {other} is not supported (gzip is)"),
            )
        }
    };
    let ranges = match parse_events(&body) {
        Ok(r) => r,
        Err(why) => return shared.refuse("bad_request", StatusCode::BAD_REQUEST, why),
    };
    let n = ranges.len();
    let spool = shared.spool.clone();
    let (store, name) = (shared.store.clone(), shared.name.clone());
    let written = tokio::task::spawn_blocking(move || {
        let records: Vec<&[u8]> = ranges.iter().map(|r| &body[r.clone()]).collect();
        let mut result = spool.append(&records);
        if matches!(result, Err(AppendError::Full { .. }))
            && release_committed(&spool, &store, &name)
        {
            result = spool.append(&records);
        }
        (result, spool.bytes())
    })
    .await;
    let health_key = format!("source.{}", shared.name);
    match written {
        Ok((Ok(()), bytes)) => {
            SPOOL_BYTES
                .with_label_values(&[&shared.name])
                .set(bytes as i64);
            shared.health.set_ready(&health_key);
            shared.count("accepted");
            (
                StatusCode::OK,
                [(axum::http::header::CONTENT_TYPE, "application/json")],
                serde_json::json!({ "accepted": n }).to_string(),
            )
                .into_response()
        }
        Ok((Err(AppendError::Full { used, max }), _)) => {
            warn!(source = %shared.name, used, max, "spool full: refusing pushes (503) until the sinks catch up");
            let mut r = shared.refuse(
                "spool_full",
                StatusCode::SERVICE_UNAVAILABLE,
                "the receiver's queue is full; retry later".into(),
            );
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("30"),
            );
            r
        }
        Ok((Err(AppendError::Io(e)), _)) => {
            let reason = format!(
                "cannot write the spool in {}: {e}",
                shared.spool.dir().display()
            );
            error!(source = %shared.name, "{reason}");
            shared.health.set_unready(&health_key, reason);
            let mut r = shared.refuse(
                "spool_error",
                StatusCode::SERVICE_UNAVAILABLE,
                "the receiver cannot store events right now; retry later".into(),
            );
            r.headers_mut().insert(
                axum::http::header::RETRY_AFTER,
                HeaderValue::from_static("5"),
            );
            r
        }
        Err(e) => {
            error!(source = %shared.name, error = %e, "spool task failed");
            shared.refuse(
                "spool_error",
                StatusCode::SERVICE_UNAVAILABLE,
                "the receiver cannot store events right now; retry later".into(),
            )
        }
    }
}

/// Tells the spool how far the pipeline committed, so the delivered
/// records still in its newest segment stop counting as full (the source
/// learns of commits only when it reads, and it does not read while pushes
/// are refused). True when the position was read.
fn release_committed(spool: &Spool, store: &CheckpointStore, source: &str) -> bool {
    let committed = store
        .load(source)
        .ok()
        .flatten()
        .and_then(|b| serde_json::from_slice::<Pos>(&b).ok());
    match committed {
        Some(pos) => spool.release(pos).is_ok(),
        None => false,
    }
}

/// A TLS acceptor for `tls`, if it names a certificate.
fn tls_acceptor(tls: &TlsConfig, path: &str) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{path}.tls.cert_file: {}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "{path}.tls.cert_file: {} holds no certificate",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("{path}.tls.key_file: {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("{path}.tls: {e}"))?;
    let builder = match &tls.ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| anyhow::anyhow!("{path}.tls.ca_file: {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| anyhow::anyhow!("{path}.tls.ca_file: {e}"))?;
                roots
                    .add(c)
                    .map_err(|e| anyhow::anyhow!("{path}.tls.ca_file: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| anyhow::anyhow!("{path}.tls.ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("{path}.tls: certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Accepts connections until the task is aborted (when the source is dropped).
async fn serve(
    name: Arc<str>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let permit = match slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let accepted = tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // E.g. out of file descriptors: back off briefly.
                warn!(source = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (svc, tls, name) = (router.clone(), tls.clone(), name.clone());
        conns.spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT);
            let svc = TowerToHyperService::new(svc);
            let served = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => http.serve_connection(TokioIo::new(s), svc).await,
                        Ok(Err(e)) => {
                            debug!(source = %name, %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(source = %name, %peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => http.serve_connection(TokioIo::new(stream), svc).await,
            };
            if let Err(e) = served {
                debug!(source = %name, %peer, error = %e, "connection ended with an error");
            }
        });
    }
}

pub struct WebhookInSource {
    name: Arc<str>,
    spool: Arc<Spool>,
    tail: watch::Receiver<Tail>,
    pos: Pos,
    extractor: FieldExtractor,
    batch_size: usize,
    store: CheckpointStore,
    /// Oldest segment possibly still on disk.
    oldest: u64,
    server: JoinHandle<()>,
    pub local_addr: SocketAddr,
}

impl Drop for WebhookInSource {
    fn drop(&mut self) {
        self.server.abort();
    }
}

impl WebhookInSource {
    pub fn new(cfg: WebhookInConfig, ctx: SourceContext) -> anyhow::Result<Self> {
        let path = format!("sources.{}", ctx.name);
        let name: Arc<str> = ctx.name.as_str().into();
        let keyed = |stem: &str, keys: SecretKeys| -> anyhow::Result<Option<Keyed>> {
            match keys
                .source(stem)
                .map_err(|e| anyhow::anyhow!("{path}: {e}"))?
            {
                Some(src) => Ok(Some(Keyed::load(src, &format!("{path}.{stem}_file"))?)),
                None => Ok(None),
            }
        };
        let bearer = keyed("token", cfg.token_keys())?;
        let hmac = keyed("hmac_secret", cfg.hmac_keys())?;
        if bearer.is_none() && hmac.is_none() {
            anyhow::bail!("{path}: set token_file and/or hmac_secret_file");
        }
        let parse =
            |p: &Paths, key: &str| p.parse().map_err(|e| anyhow::anyhow!("{path}.{key}: {e}"));
        let extractor = FieldExtractor::new(
            parse(&cfg.id_path, "id_path")?,
            parse(&cfg.time_path, "time_path")?,
            parse(&cfg.type_path, "type_path")?,
        );
        let dir = ctx.state_dir.join("spool").join(&ctx.name);
        let spool = Arc::new(
            Spool::open(&dir, cfg.segment_bytes, cfg.max_spool_bytes).map_err(|e| {
                anyhow::anyhow!("{path}: cannot open the spool {}: {e}", dir.display())
            })?,
        );
        let store =
            CheckpointStore::open(&ctx.state_dir).map_err(|e| anyhow::anyhow!("state_dir: {e}"))?;
        let pos = match &ctx.checkpoint {
            Some(b) => serde_json::from_slice::<Pos>(b).map_err(|e| {
                anyhow::anyhow!(
                    "checkpoint of source {} is not a spool position ({e}); reset it with \
                     `auditrelay checkpoint reset --source {}` (the spool is then drained from its start)",
                    ctx.name,
                    ctx.name
                )
            })?,
            None => spool
                .start()
                .map_err(|e| anyhow::anyhow!("{path}: spool {}: {e}", dir.display()))?,
        };
        let tls = tls_acceptor(&cfg.tls, &path)?;
        let addr: SocketAddr = cfg
            .listen
            .parse()
            .map_err(|e| anyhow::anyhow!("{path}.listen: {e}"))?;
        let std_listener = std::net::TcpListener::bind(addr)
            .map_err(|e| anyhow::anyhow!("{path}.listen: cannot listen on {addr}: {e}"))?;
        std_listener.set_nonblocking(true)?;
        let local_addr = std_listener.local_addr()?;
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("{path}: the listener needs the async runtime"))?;
        let listener = {
            let _guard = runtime.enter();
            tokio::net::TcpListener::from_std(std_listener)?
        };
        let signature_header = HeaderName::from_bytes(cfg.signature_header.as_bytes())
            .map_err(|e| anyhow::anyhow!("{path}.signature_header: {e}"))?;
        ctx.health.register(&format!("source.{}", ctx.name));
        let shared = Arc::new(Shared {
            name: name.clone(),
            path: cfg.path.clone(),
            spool: spool.clone(),
            bearer,
            hmac,
            signature_header,
            signature_header_text: cfg.signature_header.clone(),
            signature_prefix: cfg.signature_prefix.clone(),
            max_body: cfg.max_body_bytes,
            health: ctx.health.clone(),
            store: store.clone(),
        });
        for outcome in ["accepted", "unauthorized", "bad_request", "too_large"] {
            REQUESTS.with_label_values(&[&name, outcome]);
        }
        SPOOL_CORRUPT.with_label_values(&[&name]);
        SPOOL_BYTES
            .with_label_values(&[&name])
            .set(spool.bytes() as i64);
        // Every request, whatever its method or path, goes to `receive`,
        // which answers with a clear message.
        let router = axum::Router::new().fallback(receive).with_state(shared);
        let server = runtime.spawn(serve(name.clone(), listener, tls, router));
        info!(
            source = %name,
            listen = %local_addr,
            https = cfg.tls.cert_file.is_some(),
            spool = %dir.display(),
            resume_segment = pos.segment,
            resume_offset = pos.offset,
            "webhook_in listening"
        );
        Ok(WebhookInSource {
            name,
            tail: spool.subscribe(),
            oldest: spool.start().map(|p| p.segment).unwrap_or(pos.segment),
            spool,
            pos,
            extractor,
            batch_size: cfg.batch_size,
            store,
            server,
            local_addr,
        })
    }

    /// Deletes the segments before the committed position (read back from
    /// the checkpoint store: the pipeline commits, not the source).
    fn collect_garbage(&mut self) {
        if self.pos.segment <= self.oldest {
            return;
        }
        let committed = match self.store.load(&self.name) {
            Ok(Some(b)) => serde_json::from_slice::<Pos>(&b).ok(),
            Ok(None) => None,
            Err(e) => {
                warn!(source = %self.name, error = %e, "cannot read the committed spool position");
                None
            }
        };
        let Some(committed) = committed else { return };
        match self.spool.release(committed) {
            Ok(n) => {
                if n > 0 {
                    debug!(source = %self.name, segments = n, "removed delivered spool segments");
                }
                self.oldest = committed.segment;
                SPOOL_BYTES
                    .with_label_values(&[&self.name])
                    .set(self.spool.bytes() as i64);
            }
            Err(e) => {
                warn!(source = %self.name, error = %e, "cannot remove delivered spool segments")
            }
        }
    }
}

#[async_trait]
impl Source for WebhookInSource {
    /// Stops accepting and waits until the listening socket is closed, so a
    /// replacement built by a reload can bind the same address.
    async fn close(&mut self) {
        self.server.abort();
        let _ = (&mut self.server).await;
    }

    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        loop {
            self.tail.borrow_and_update();
            let (spool, pos, n) = (self.spool.clone(), self.pos, self.batch_size);
            let chunk = tokio::task::spawn_blocking(move || spool.read(pos, n, BATCH_BYTES))
                .await
                .map_err(|e| anyhow::anyhow!("spool read task failed: {e}"))?
                .map_err(|e| {
                    anyhow::anyhow!("cannot read the spool {}: {e}", self.spool.dir().display())
                })?;
            for what in &chunk.skipped {
                SPOOL_CORRUPT.with_label_values(&[&self.name]).inc();
                error!(source = %self.name, "damaged spool data skipped: {what}");
            }
            self.pos = chunk.next;
            self.collect_garbage();
            if chunk.records.is_empty() {
                // Woken by the next append (or never, which is fine).
                let _ = self.tail.changed().await;
                continue;
            }
            metrics()
                .events_fetched
                .with_label_values(&[&self.name])
                .inc_by(chunk.records.len() as u64);
            let events: Vec<Event> = chunk
                .records
                .into_iter()
                .map(|raw| record_event(&self.extractor, raw))
                .collect();
            let newest_time = events.iter().filter_map(|e| e.time).max();
            let checkpoint = serde_json::to_vec(&self.pos)?;
            return Ok(Some(Batch {
                source: self.name.clone(),
                events,
                checkpoint: checkpoint.into(),
                newest_time,
                fetched_at: Instant::now(),
            }));
        }
    }
}

/// `auditrelay checkpoint set` has no meaning for a push source.
pub fn manual_checkpoint(
    _token: Option<String>,
    _time: Option<chrono::DateTime<chrono::Utc>>,
) -> Result<Vec<u8>, String> {
    Err(
        "webhook_in drains its local spool; there is no cursor to set \
         (`checkpoint reset` drains the spool again from its oldest segment)"
            .into(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn texts(body: &[u8]) -> Result<Vec<String>, String> {
        parse_events(body).map(|rs| {
            rs.into_iter()
                .map(|r| String::from_utf8_lossy(&body[r]).into_owned())
                .collect()
        })
    }

    #[test]
    fn objects_arrays_and_ndjson_keep_their_bytes() {
        assert_eq!(texts(b" {\"a\": 1} \n").unwrap(), vec!["{\"a\": 1}"]);
        assert_eq!(
            texts(b"[{\"a\":1},\n {\"b\":\n2}]").unwrap(),
            vec!["{\"a\":1}", "{\"b\":\n2}"]
        );
        assert_eq!(
            texts(b"{\"a\":1}\n\n{\"b\":2}\r\n").unwrap(),
            vec!["{\"a\":1}", "{\"b\":2}"]
        );
        assert!(texts(b"[]").unwrap().is_empty());
    }

    #[test]
    fn bad_bodies_say_where() {
        assert!(texts(b"").unwrap_err().contains("empty body"));
        assert!(texts(b"[1]").unwrap_err().contains("item 0"));
        assert!(texts(b"{\"a\":1}\n{oops}\n")
            .unwrap_err()
            .contains("line 2"));
        assert!(texts(b"{\"a\":1}\n[2]\n").unwrap_err().contains("line 2"));
        assert!(texts(b"hello").unwrap_err().contains("neither"));
        assert!(texts(b"[{\"a\":1},").unwrap_err().contains("array"));
    }

    #[test]
    fn secrets_compare_in_constant_time_whatever_the_length() {
        assert!(same(b"token", b"token"));
        assert!(!same(b"token", b"tokex"));
        assert!(!same(b"token", b"token-longer"));
    }

    #[test]
    fn a_spool_smaller_than_a_segment_plus_a_body_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "s3cret").unwrap();
        let load = |spool: &str| {
            crate::config::load_str(&format!(
                "[sources.push]\ntype = \"webhook_in\"\nlisten = \"127.0.0.1:0\"\n\
                 token_file = \"{}\"\n\
                 max_body_bytes = 1048576\nsegment_bytes = 4194304\nmax_spool_bytes = {spool}\n\
                 [sinks.out]\ntype = \"stdout\"\ninputs = [\"push\"]\n",
                token.display()
            ))
        };
        let err = load("4194304").unwrap_err();
        let p = err
            .problems
            .iter()
            .find(|p| p.path == "sources.push.max_spool_bytes")
            .unwrap_or_else(|| panic!("{err}"));
        assert!(
            p.message.contains("segment_bytes + max_body_bytes"),
            "{}",
            p.message
        );
        if let Err(e) = load("5242880") {
            panic!("{e}");
        }
    }
}
