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
use prometheus::{IntCounterVec, Opts};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, error, info, warn};

use self::auth::Auth;
#[cfg(feature = "fuzzing")]
pub(crate) use self::body::gunzip;
pub use self::body::parse_events;
pub(crate) use self::body::record_event;
pub use self::config::WebhookInConfig;
use self::listener::{serve, tls_acceptor};
use self::receive::{receive, Shared, REQUESTS, SPOOL_BYTES};
use super::{Paths, Source, SourceContext};
use crate::checkpoint::CheckpointStore;
use crate::config::Problems;
use crate::disk_queue::{DiskQueue, Pos, Tail};
use crate::event::{Batch, Event, FieldExtractor};
use crate::metrics::metrics;

/// About how many bytes of events one batch takes from the spool.
const BATCH_BYTES: usize = 4 * 1024 * 1024;

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

pub struct WebhookInSource {
    name: Arc<str>,
    spool: Arc<DiskQueue>,
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

impl super::SourceType for WebhookInConfig {
    const KIND: &'static str = "webhook_in";

    fn validate(&self, path: &str, problems: &mut Problems) {
        WebhookInConfig::validate(self, path, problems)
    }

    fn manual_checkpoint(
        &self,
        token: Option<String>,
        time: Option<chrono::DateTime<chrono::Utc>>,
    ) -> Result<Vec<u8>, String> {
        manual_checkpoint(token, time)
    }

    fn build(&self, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(WebhookInSource::new(self.clone(), ctx)?))
    }
}
