//! Splunk HTTP Event Collector (HEC): events go to
//! `POST {endpoint}/services/collector/event` as concatenated JSON envelopes
//! `{"time","host","source","sourcetype","index","fields","event":<raw>}`,
//! `Authorization: Splunk <token>`, gzip by default, several requests at once.
//!
//! Confirmation: without `indexer_ack` a 200 with HEC code 0 confirms (HEC
//! has the events, not yet indexed). With `indexer_ack` every request is
//! sent on this sink's channel (a GUID in `X-Splunk-Request-Channel`), its
//! `ackId` is recorded, and one poller per sink asks
//! `/services/collector/ack` about every pending id, first
//! `ack_first_poll` after a request, then after a quarter of the ack's
//! age, at most `ack_poll_interval` apart, while its ack reads false.
//! Each request awaiting its ack is reported pending (channel, ack id) to
//! the source's progress log, and a restart asks HEC about those before
//! sending them again (see [`resolve`]).
//! A request counts as confirmed only once its ack reads `true`; one not
//! acknowledged within `ack_timeout` is sent again (an indexer can lose
//! data, and an ack reads true only once, so "no answer" means "resend"),
//! while its earlier ack ids are still asked about until twice
//! `ack_timeout` (see [`acks`]). The client keeps the cookies HEC's load
//! balancer sets, so every request and ack query of the channel reaches the
//! indexer that knows its ack ids.
//!
//! Redirects: 307/308 are followed as `follow_redirects` allows; a
//! 301/302/303 (or one not allowed) is an endpoint error naming the
//! Location, retried every `auth_retry` with the sink not ready.
//!
//! HEC codes: 9 (busy), 8, 18-20, 429, 5xx and network errors retry with
//! backoff (Retry-After honoured). 1-4 (token disabled, missing, malformed,
//! invalid) retry every `auth_retry`, re-reading the token, with the sink not
//! ready: dropping events over a credential would be worse. 10/11/14 mean
//! `indexer_ack` does not match the token's setting: a config error, retried
//! slowly, never dropped. 5, 6, 7, 12, 13, 15 and HTTP 413 reject events: the
//! request is split (straight around `invalid-event-number` when HEC gives
//! it) until the rejected event is alone, which goes to the dead-letter file
//! with the code and text; the rest is delivered. Events HEC took before the
//! rejected one are sent again, so they may be indexed twice (at least once).
//!
//! OAuth2 (`[sinks.NAME.oauth2]`, HEC behind a gateway): every request
//! carries `Authorization: Bearer <access token>` and the HEC token, if
//! any, goes in `hec_token_header` (see [`auth`]).
//!
//! `GET /services/collector/health` at startup and every
//! `health_check_interval` feeds `/readyz`, and a startup probe (an empty
//! request, which HEC answers with code 5 "No data" once the token and
//! channel are fine) reports a wrong token or `indexer_ack` setting before
//! the first event is sent.

mod ack_table;
mod acks;
mod answer;
mod auth;
mod channel;
mod config;
mod deliver;
mod encode;
mod health;
mod inner;
mod metrics;
mod resolve;

use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use tokio::sync::{Notify, Semaphore};
use tokio_util::sync::CancellationToken;
use tracing::info;

use super::delivery::{Delivery, Readiness};
use super::{PendingRequest, Sink, SinkCommon, SinkContext, Tracked};
use crate::config::{parse_url, require_positive, Problems};
use crate::event::{Event, FieldPath};
use ack_table::{AckTable, PostsInFlight};
use acks::ack_poller;
use auth::HecAuth;
use channel::CurrentChannel;
pub use config::{Compression, SplunkHecConfig};
use deliver::EventRequests;
use encode::Envelope;
use health::health_loop;
use inner::Inner;

pub struct SplunkHecSink {
    inner: Arc<Inner>,
    stop: CancellationToken,
}

impl Drop for SplunkHecSink {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

impl SplunkHecSink {
    pub fn new(
        cfg: SplunkHecConfig,
        common: &SinkCommon,
        ctx: SinkContext,
    ) -> anyhow::Result<Self> {
        let path = format!("sinks.{}", ctx.name);
        let timeouts = (cfg.timeout, cfg.auth_retry);
        let oauth2 = common.oauth2_client(cfg.oauth2.as_ref(), &path, &ctx.health, timeouts)?;
        let auth = HecAuth::new(&cfg, &path, oauth2)?;
        let mut base =
            url::Url::parse(&cfg.endpoint).map_err(|e| anyhow::anyhow!("{path}.endpoint: {e}"))?;
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let join = |rel: &str| {
            base.join(rel)
                .map_err(|e| anyhow::anyhow!("{path}.endpoint: {e}"))
        };
        let event_url = join("services/collector/event")?;
        let health_url = join("services/collector/health")?;
        let ack_url = join("services/collector/ack")?;
        let options = crate::http::ClientOptions {
            redirects: cfg.follow_redirects,
            cookies: true,
        };
        let client = crate::http::client_with(&common.tls, cfg.timeout, &path, options)?;
        let mut envelope = Envelope::new(&cfg).map_err(|e| anyhow::anyhow!("{path}.{e}"))?;
        if common.schema == crate::sink::Schema::Ocsf {
            envelope = envelope.with_ocsf_sourcetype();
        }
        let runtime = tokio::runtime::Handle::try_current()
            .map_err(|_| anyhow::anyhow!("{path}: the sink needs a running async runtime"))?;
        let inner = Arc::new(Inner {
            batch: common.batch,
            client,
            event_url,
            ack_url,
            health_url,
            channel: CurrentChannel::new(),
            auth,
            envelope,
            delivery: Delivery {
                name: ctx.name.as_str().into(),
                retry: common.retry,
                auth_retry: cfg.auth_retry,
                readiness: Readiness::new(ctx.health, &ctx.name),
                dead_letters: ctx.dead_letters,
                failing: None,
            },
            acks: Mutex::new(AckTable::new(cfg.poll_schedule())),
            ack_wake: Notify::new(),
            warmed: tokio::sync::watch::Sender::new(false),
            posts: PostsInFlight::default(),
            permits: Semaphore::new(cfg.concurrency.max(1)),
            paused_until: Mutex::new(None),
            sent_any: AtomicBool::new(false),
            id0_gate: tokio::sync::RwLock::new(()),
            cfg,
        });
        let stop = CancellationToken::new();
        runtime.spawn(health_loop(inner.clone(), stop.clone()));
        if inner.cfg.indexer_ack {
            runtime.spawn(ack_poller(inner.clone(), stop.clone()));
        }
        let channel = inner.channel.get();
        let channel = channel.to_str().unwrap_or_default();
        info!(sink = %inner.delivery.name, channel = %channel, indexer_ack = inner.cfg.indexer_ack, "Splunk HEC sink ready to send");
        Ok(SplunkHecSink { inner, stop })
    }
}

#[async_trait]
impl Sink for SplunkHecSink {
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
        self.deliver_tracked(Tracked::untracked(source, events))
            .await
    }

    /// Each request accepted with an ack id is reported pending (its
    /// channel and ack id) until its ack reads true.
    async fn deliver_tracked(&self, call: Tracked<'_>) -> anyhow::Result<()> {
        let Tracked {
            source,
            events,
            pending,
        } = call;
        if events.is_empty() {
            return Ok(());
        }
        // Bounded: a collector that never answers its health check must not
        // hold events back longer than one request would take.
        let mut warmed = self.inner.warmed.subscribe();
        let _ = tokio::time::timeout(self.inner.cfg.timeout, warmed.wait_for(|w| *w)).await;
        let inner = &*self.inner;
        let json_source = encode::json_string(source);
        let sizes = inner.envelope.measure(&json_source, events);
        let requests = EventRequests {
            inner,
            source: &json_source,
            sizes: &sizes,
            pending,
        };
        // Each run on its own, at once: `concurrency` bounds the requests
        // (and the request bodies built).
        let results = futures_util::future::join_all(
            sizes
                .runs(&inner.batch)
                .into_iter()
                .map(|r| inner.delivery.deliver(&requests, source, events, vec![r])),
        )
        .await;
        results.into_iter().collect()
    }

    async fn resolve_pending(&self, requests: &[PendingRequest]) -> Vec<bool> {
        self.inner.resolve_pending(requests).await
    }

    /// Splunk indexes by event time; parallel requests give throughput.
    fn ordered(&self) -> bool {
        false
    }

    /// The health endpoint and the token/`indexer_ack` probe, as at startup.
    async fn healthcheck(&self) -> anyhow::Result<()> {
        self.inner.check_health().await;
        self.inner.probe().await;
        match self.inner.delivery.readiness.reasons() {
            None => Ok(()),
            Some(reasons) => anyhow::bail!("{reasons}"),
        }
    }
}

impl super::SinkType for SplunkHecConfig {
    const KIND: &'static str = "splunk_hec";

    fn validate(&self, path: &str, _common: &SinkCommon, problems: &mut Problems) {
        let key = format!("{path}.endpoint");
        if let Some(url) = parse_url(&self.endpoint, &key, problems) {
            if url.path().contains("/services/collector") {
                problems.push(
                    &key,
                    "give the collector's base URL (e.g. https://splunk.example:8088); \
                     the sink adds /services/collector/event itself",
                );
            }
            if url.query().is_some() || url.fragment().is_some() {
                problems.push(&key, "must not have a query or fragment");
            }
        }
        auth::validate(self, path, problems);
        for (k, v) in [
            ("host", &self.host),
            ("source", &self.source),
            ("sourcetype", &self.sourcetype),
            ("index", &self.index),
        ] {
            if v.as_deref().is_some_and(|v| v.trim().is_empty()) {
                problems.push(
                    format!("{path}.{k}"),
                    "must not be empty (leave it out for the token's default)",
                );
            }
        }
        for (name, field_path) in &self.fields {
            if name.trim().is_empty() {
                problems.push(format!("{path}.fields"), "a field name is empty");
            }
            FieldPath::check(field_path, &format!("{path}.fields.{name}"), problems);
        }
        for (k, d) in [
            ("ack_timeout", self.ack_timeout),
            ("ack_poll_interval", self.ack_poll_interval),
            ("ack_first_poll", self.ack_first_poll),
            ("timeout", self.timeout),
            ("auth_retry", self.auth_retry),
            ("health_check_interval", self.health_check_interval),
        ] {
            require_positive(d, &format!("{path}.{k}"), problems);
        }
        if self.indexer_ack && self.ack_poll_interval >= self.ack_timeout {
            problems.push(
                format!("{path}.ack_poll_interval"),
                "must be shorter than ack_timeout, or no ack is ever asked for in time",
            );
        }
        if !(1..=256).contains(&self.concurrency) {
            problems.push(format!("{path}.concurrency"), "must be between 1 and 256");
        }
    }

    fn build(&self, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(SplunkHecSink::new(self.clone(), common, ctx)?))
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::answer::Answer;

    /// A sink `name` with defaults, its token in a file in `dir`, sending to
    /// a closed port (nothing here needs an answer).
    fn sink_in(dir: &std::path::Path, name: &str) -> super::SplunkHecSink {
        use figment::providers::Format;
        let token = dir.join("token");
        std::fs::write(&token, "t0k3n").unwrap();
        let toml = |text: String| figment::Figment::from(figment::providers::Toml::string(&text));
        let cfg: super::SplunkHecConfig = toml(format!(
            "endpoint = \"http://127.0.0.1:1\"\ntoken_file = \"{}\"",
            token.display()
        ))
        .extract()
        .unwrap();
        let common: crate::sink::SinkCommon = toml("inputs = []".into()).extract().unwrap();
        let ctx = crate::sink::SinkContext::in_dir(dir, name);
        super::SplunkHecSink::new(cfg, &common, ctx).unwrap()
    }

    /// A Retry-After of u64::MAX seconds is a number HEC (or a proxy in
    /// front of it) can send: the sink-wide pause must neither overflow
    /// (a panic from network input) nor last for ever.
    #[tokio::test]
    async fn a_huge_retry_after_pauses_the_sink_for_a_bounded_time() {
        let dir = tempfile::tempdir().unwrap();
        let sink = sink_in(dir.path(), "hec_huge_retry_after");
        let inner = &sink.inner;
        inner.pause_for(&Answer::Retry(
            "HTTP 429".into(),
            Some(Duration::from_secs(u64::MAX)),
        ));
        let until = inner.paused_until.lock().unwrap().expect("paused");
        let longest = crate::sink::delivery::LONGEST_RETRY_AFTER;
        assert!(
            until <= Instant::now() + longest,
            "paused beyond {longest:?}"
        );
        assert!(until > Instant::now(), "Retry-After not honoured at all");
    }
}
