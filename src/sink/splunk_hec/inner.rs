//! What the tasks of one HEC sink share: its config, client, URLs, token,
//! ack bookkeeping and readiness. The tasks (event requests, the ack
//! poller, the health loop) add their methods in their own files.

use std::sync::atomic::AtomicBool;
use std::sync::Mutex;
use std::time::Instant;

use reqwest::header::HeaderValue;
use tokio::sync::{Notify, Semaphore};

use super::ack_table::{AckTable, PostsInFlight};
use super::auth::HecAuth;
use super::channel::CurrentChannel;
use super::config::SplunkHecConfig;
use super::encode::Envelope;
use super::metrics::HEC_METRICS;
use crate::sink::delivery::Delivery;
use crate::sink::BatchConfig;

pub(super) const CHANNEL_HEADER: &str = "X-Splunk-Request-Channel";

/// Why the sink is not ready; each kind is set and cleared by what can tell.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Trouble {
    Health,
    Token,
    /// Codes 10, 11, 14.
    AckSetting,
    /// Accepted without an ackId while `indexer_ack` is on; only an ackId
    /// or a working ack query clears it.
    AckMissing,
    Endpoint,
}

/// The troubles a confirmed request (or a working ack query) proves gone:
/// the token and endpoint always; the `indexer_ack` setting when the answer
/// carried an ack id (or acknowledgment is off).
pub(super) const FIXED_ALL: &[Trouble] = &[
    Trouble::Token,
    Trouble::Endpoint,
    Trouble::AckSetting,
    Trouble::AckMissing,
];

pub(super) struct Inner {
    pub(super) cfg: SplunkHecConfig,
    pub(super) batch: BatchConfig,
    pub(super) client: reqwest::Client,
    pub(super) event_url: url::Url,
    /// The ack endpoint, without the `channel` parameter.
    pub(super) ack_url: url::Url,
    pub(super) health_url: url::Url,
    pub(super) channel: CurrentChannel,
    pub(super) auth: HecAuth,
    pub(super) envelope: Envelope,
    /// Name, retry, readiness and dead letters, for the delivery loop.
    pub(super) delivery: Delivery<Trouble>,
    pub(super) acks: Mutex<AckTable>,
    pub(super) ack_wake: Notify,
    /// Set once the startup health round has an answer (or gave up): event
    /// requests wait for it, so a load balancer's stickiness cookie is in
    /// the jar before the first event goes out and every request, and its
    /// ack queries, land on the same indexer.
    pub(super) warmed: tokio::sync::watch::Sender<bool>,
    /// Event requests whose ack id is not known yet.
    pub(super) posts: PostsInFlight,
    pub(super) permits: Semaphore,
    /// No event request before this instant: a Retry-After pauses the
    /// whole sink, not only the request that got it.
    pub(super) paused_until: Mutex<Option<Instant>>,
    /// Whether an event request went out on the channel (the ack probe
    /// asks about id 0, which is only safe before).
    pub(super) sent_any: AtomicBool,
    /// Held exclusively by the probe while it asks about id 0, shared by an
    /// event request while it sets `sent_any`: no request can get id 0
    /// while the probe's question (which would take its `true`) is out.
    pub(super) id0_gate: tokio::sync::RwLock<()>,
}

impl Inner {
    /// Re-reads the HEC token, in case it was rotated.
    pub(super) fn reload_token(&self) {
        self.auth.reload(&self.delivery.name);
    }

    /// The ack endpoint's URL for `channel`.
    pub(super) fn ack_url_for(&self, channel: &HeaderValue) -> url::Url {
        let mut url = self.ack_url.clone();
        url.query_pairs_mut()
            .clear()
            .append_pair("channel", channel.to_str().unwrap_or_default());
        url
    }

    pub(super) fn count(&self, endpoint: &str, code: &str) {
        HEC_METRICS
            .requests
            .with_label_values(&[&self.delivery.name, endpoint, code])
            .inc();
    }
}
