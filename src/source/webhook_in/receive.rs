//! One pushed request: checked (path, method, size, secrets, encoding,
//! body) and answered 2xx only once its events are in the spool and
//! fsynced; refused with a clear message otherwise, spooling nothing.

use std::sync::{Arc, LazyLock};
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use prometheus::{IntCounterVec, IntGaugeVec};
use tracing::{debug, error, warn};

use super::auth::Auth;
use super::body::{gunzip, parse_events};
use crate::checkpoint::CheckpointStore;
use crate::disk_queue::{AppendError, DiskQueue, Pos};
use crate::health::Health;
use crate::metrics::metrics;

/// Time a client gets to send its body.
const BODY_TIMEOUT: Duration = Duration::from_secs(60);

pub(super) static REQUESTS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics().counter_vec(
        "auditrelay_webhook_in_requests_total",
        "Requests to a webhook_in listener by outcome (accepted, unauthorized, bad_request, too_large, unsupported, timeout, spool_full, spool_error, not_found, method_not_allowed).",
        &["source", "outcome"],
    )
});

pub(super) static SPOOL_BYTES: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics().gauge_vec(
        "auditrelay_webhook_in_spool_bytes",
        "Bytes of a webhook_in spool on disk (received, not yet committed and removed).",
        &["source"],
    )
});

/// What every request of one listener needs.
pub(super) struct Shared {
    pub(super) name: Arc<str>,
    /// The one path events are POSTed to.
    pub(super) path: String,
    pub(super) spool: Arc<DiskQueue>,
    pub(super) auth: Auth,
    pub(super) max_body: usize,
    pub(super) health: Health,
    /// Where the pipeline commits the spool position (see [`release_committed`]).
    pub(super) store: CheckpointStore,
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

    /// A 503 that tells the sender when to try again: the receiver cannot
    /// store events now (`outcome` says why).
    fn unavailable(&self, outcome: &str, message: &str, retry_after: &'static str) -> Response {
        let status = StatusCode::SERVICE_UNAVAILABLE;
        let mut r = self.refuse(outcome, status, message.into());
        r.headers_mut().insert(
            axum::http::header::RETRY_AFTER,
            HeaderValue::from_static(retry_after),
        );
        r
    }
}

pub(super) async fn receive(
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
    if let Err(why) = shared.auth.bearer_ok(&headers) {
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
    if let Err(why) = shared.auth.signature_ok(&headers, &raw) {
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
            shared.unavailable(
                "spool_full",
                "the receiver's queue is full; retry later",
                "30",
            )
        }
        Ok((Err(AppendError::Io(e)), _)) => {
            let reason = format!(
                "cannot write the spool in {}: {e}",
                shared.spool.dir().display()
            );
            error!(source = %shared.name, "{reason}");
            shared.health.set_unready(&health_key, reason);
            shared.unavailable(
                "spool_error",
                "the receiver cannot store events right now; retry later",
                "5",
            )
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
fn release_committed(spool: &DiskQueue, store: &CheckpointStore, source: &str) -> bool {
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
