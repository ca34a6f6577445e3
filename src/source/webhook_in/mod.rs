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

mod auth;
mod body;
mod config;
mod listener;
mod receive;

use std::net::SocketAddr;
use std::sync::{Arc, LazyLock};
use std::time::Instant;

use async_trait::async_trait;
use axum::http::HeaderName;
use prometheus::IntCounterVec;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use self::auth::Auth;
#[cfg(feature = "fuzzing")]
pub(crate) use self::body::gunzip;
pub use self::body::parse_events;
pub(crate) use self::body::record_event;
pub use self::config::WebhookInConfig;
use self::listener::{serve, tls_acceptor};
use self::receive::{receive, Shared, REQUESTS, SPOOL_BYTES};
use super::queued::{events_of, QueueCursor, QueueRead};
use super::{ManualPosition, Paths, Source, SourceContext};
use crate::checkpoint::CheckpointStore;
use crate::config::Problems;
use crate::disk_queue::{DiskQueue, Pos};
use crate::event::{Batch, FieldExtractor};
use crate::metrics::metrics;

/// About how many bytes of events one batch takes from the spool.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

static SPOOL_CORRUPT: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics().counter_vec(
        "auditrelay_webhook_in_spool_corrupt_total",
        "Damaged spool regions skipped (logged with file and offset).",
        &["source"],
    )
});

pub struct WebhookInSource {
    name: Arc<str>,
    spool: Arc<DiskQueue>,
    cursor: QueueCursor,
    extractor: FieldExtractor,
    store: CheckpointStore,
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
        let path = ctx.key_path();
        let name: Arc<str> = ctx.name.as_str().into();
        let auth = Auth::load(&cfg, &path)?;
        let parse =
            |p: &Paths, key: &str| p.parse().map_err(|e| anyhow::anyhow!("{path}.{key}: {e}"));
        let extractor = FieldExtractor::new(
            parse(&cfg.id_path, "id_path")?,
            parse(&cfg.time_path, "time_path")?,
            parse(&cfg.type_path, "type_path")?,
        );
        let dir = ctx.state_dir.join("spool").join(&ctx.name);
        let spool = Arc::new(
            DiskQueue::open(&dir, cfg.segment_bytes, cfg.max_spool_bytes).map_err(|e| {
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
        ctx.health.register(&format!("source.{}", ctx.name));
        let shared = Arc::new(Shared {
            name: name.clone(),
            path: cfg.path.clone(),
            spool: spool.clone(),
            auth,
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
            name: name.clone(),
            cursor: QueueCursor::new(
                QueueRead {
                    source: name.clone(),
                    what: "spool",
                    max_records: cfg.batch_size,
                    max_bytes: BATCH_BYTES,
                    damaged: &SPOOL_CORRUPT,
                },
                &spool,
                pos,
            ),
            spool,
            extractor,
            store,
            server,
            local_addr,
        })
    }

    /// Deletes the segments before the committed position (read back from
    /// the checkpoint store: the pipeline commits, not the source).
    fn collect_garbage(&mut self) {
        if !self.cursor.has_read_past_oldest() {
            return;
        }
        let committed = self.store.committed::<Pos>(&self.name, "spool position");
        let Some(committed) = committed else { return };
        match self.spool.release(committed) {
            Ok(n) => {
                if n > 0 {
                    debug!(source = %self.name, segments = n, "removed delivered spool segments");
                }
                self.cursor.oldest = committed.segment;
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
            let records = self.cursor.next_records(self.spool.clone()).await?;
            self.collect_garbage();
            if records.is_empty() {
                // Woken by the next append (or never, which is fine).
                self.cursor.appended().await;
                continue;
            }
            metrics()
                .events_fetched
                .with_label_values(&[&self.name])
                .inc_by(records.len() as u64);
            let events = events_of(&self.extractor, records);
            let newest_time = events.iter().filter_map(|e| e.time).max();
            let checkpoint = serde_json::to_vec(&self.cursor.pos)?;
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

impl super::SourceType for WebhookInConfig {
    const KIND: &'static str = "webhook_in";

    fn validate(&self, path: &str, problems: &mut Problems) {
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

    /// A push source has no cursor to set.
    fn manual_checkpoint(&self, _at: ManualPosition) -> Result<Vec<u8>, String> {
        Err(
            "webhook_in drains its local spool; there is no cursor to set \
             (`checkpoint reset` drains the spool again from its oldest segment)"
                .into(),
        )
    }

    fn build(&self, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(WebhookInSource::new(self.clone(), ctx)?))
    }
}
