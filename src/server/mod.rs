//! `/metrics`, `/healthz`, `/readyz` over plain HTTP on `server.listen`.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::health::Health;
use crate::metrics::metrics;

/// Binds the listener now (so a busy port fails startup), serves until `stop`.
pub async fn start(
    addr: SocketAddr,
    health: Health,
    stop: CancellationToken,
) -> anyhow::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| anyhow::anyhow!("server.listen: cannot listen on {addr}: {e}"))?;
    let local = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(health);
    let handle = tokio::spawn(async move {
        let served = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await;
        if let Err(e) = served {
            tracing::error!(error = %e, "metrics server stopped");
        }
    });
    Ok((local, handle))
}

async fn metrics_text(State(health): State<Health>) -> impl IntoResponse {
    let (ready, _) = health.snapshot();
    metrics().ready.set(i64::from(ready));
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        metrics().render(),
    )
}

async fn readyz(State(health): State<Health>) -> impl IntoResponse {
    let (ready, components) = health.snapshot();
    metrics().ready.set(i64::from(ready));
    let body = serde_json::json!({
        "ready": ready,
        "components": components
            .iter()
            .map(|(name, s)| (name.clone(), serde_json::json!({
                "ready": s.ready,
                "reason": s.reason,
                "for_seconds": s.since.elapsed().as_secs(),
            })))
            .collect::<serde_json::Map<_, _>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
}
