//! Event requests: one POST of envelopes, HEC's answer classified (see
//! [`super::answer`]), and the [`RetryLogic`] the shared delivery loop
//! drives (acks, Retry-After pauses for the whole sink, token and
//! `indexer_ack` troubles).

use std::sync::atomic::Ordering;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{HeaderValue, CONTENT_ENCODING, CONTENT_TYPE};
use tracing::{error, warn};

use super::ack_table::RequestAcks;
use super::answer::{classify, Answer};
use super::auth::Scope;
use super::config::Compression;
use super::encode::Sizes;
use super::inner::{Inner, Trouble, CHANNEL_HEADER, FIXED_ALL};
use crate::event::Event;
use crate::sink::delivery::{server_wait, RetryLogic, Run, Sent, Verdict};

/// A request confirmed on acceptance alone, with acknowledgment on: the
/// token and endpoint are fine, the `indexer_ack` setting is not proven.
const FIXED_TOKEN_ENDPOINT: &[Trouble] = &[Trouble::Token, Trouble::Endpoint];

impl Inner {
    /// One POST of envelopes to the event endpoint; the body is built
    /// (and compressed) only once a `concurrency` slot is held, so the
    /// bodies in memory are those of the requests being sent. Also the
    /// channel it went out on (its ack id is that channel's).
    pub(super) async fn post_events(
        &self,
        encode: impl FnOnce() -> Bytes,
    ) -> (Answer, HeaderValue) {
        let mut channel = self.channel.get();
        let answer = self.post_events_on(&mut channel, encode).await;
        (answer, channel)
    }

    async fn post_events_on(
        &self,
        channel: &mut HeaderValue,
        encode: impl FnOnce() -> Bytes,
    ) -> Answer {
        let Ok(_permit) = self.permits.acquire().await else {
            return Answer::Retry("sink is shutting down".into(), None);
        };
        // Each round sleeps until the latest pause; bounded by pauses set
        // while sleeping.
        loop {
            let until = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            match until {
                Some(t) if t > Instant::now() => tokio::time::sleep_until(t.into()).await,
                _ => break,
            }
        }
        if !self.sent_any.load(Ordering::Acquire) {
            // Waits while the probe asks about id 0 (bounded by its timeout).
            let _gate = self.id0_gate.read().await;
            self.sent_any.store(true, Ordering::Release);
        }
        *channel = self.channel.get();
        let body = encode();
        let body = if self.cfg.compression == Compression::Gzip {
            match tokio::task::spawn_blocking(move || crate::format::gzip(&body)).await {
                Ok(Ok(b)) => Bytes::from(b),
                Ok(Err(e)) => return Answer::Retry(format!("gzip failed: {e}"), None),
                Err(e) => return Answer::Retry(format!("gzip task failed: {e}"), None),
            }
        } else {
            body
        };
        let request = || {
            let mut req = self
                .client
                .post(self.event_url.clone())
                .header(CONTENT_TYPE, "application/json");
            if self.cfg.compression == Compression::Gzip {
                req = req.header(CONTENT_ENCODING, "gzip");
            }
            if self.cfg.indexer_ack {
                req = req.header(CHANNEL_HEADER, channel.clone());
            }
            req.body(body.clone())
        };
        let _in_flight = self.posts.begin();
        let sent = match self.auth.send(Scope::Hec, request).await {
            Ok(sent) => sent,
            Err(why) => return Answer::Token(why),
        };
        let (status, retry_after, answer) = match sent {
            Sent::Answer {
                status,
                retry_after,
                body: Ok(b),
            } => (status, retry_after, b),
            Sent::Answer { body: Err(e), .. } => {
                self.count("event", "network");
                return Answer::Retry(
                    format!(
                        "reading the answer failed: {}",
                        crate::http::describe_error(e)
                    ),
                    None,
                );
            }
            Sent::Redirect { why, label } => {
                self.count("event", &label);
                return Answer::Endpoint(why);
            }
            Sent::NoAnswer(why) => {
                self.count("event", "network");
                return Answer::Retry(why, None);
            }
        };
        let (label, mut answer) = classify(status, retry_after, &answer);
        self.count("event", &label);
        if let (true, Answer::Accepted { ack_id: Some(id) }) = (self.cfg.indexer_ack, &answer) {
            let id = *id;
            self.note_issued(id);
            if let Err(why) = self.channel.issued(channel, id) {
                warn!(sink = %self.delivery.name, ack_id = id, "{why}");
                answer = Answer::Retry(why, None);
            }
        }
        // Set while the permit is held, so no other request slips in.
        self.pause_for(&answer);
        answer
    }

    /// Honours a Retry-After for every request of the sink.
    pub(super) fn pause_for(&self, answer: &Answer) {
        if let Answer::Retry(_, Some(after)) = answer {
            let wait = server_wait(*after, self.delivery.retry);
            // Bounded above, but `retry.max` may be absurd: no overflow.
            let Some(until) = Instant::now().checked_add(wait) else {
                return;
            };
            let mut paused = self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
            *paused = Some(paused.map_or(until, |p| p.max(until)));
        }
    }
}

/// The requests of one `deliver` call: its events' envelopes, built and
/// sent by run.
pub(super) struct EventRequests<'a> {
    pub(super) inner: &'a Inner,
    /// The source's name, JSON-encoded.
    pub(super) source: &'a str,
    pub(super) sizes: &'a Sizes,
    /// Hears of each request accepted with an ack id (see `resolve`).
    pub(super) pending: crate::sink::PendingReport<'a>,
}

#[async_trait]
impl RetryLogic for EventRequests<'_> {
    type Trouble = Trouble;
    /// The ack ids of earlier sends of the run: any may still confirm it.
    type Memory = RequestAcks;

    async fn attempt(
        &self,
        events: &[Event],
        run: Run,
        acks: &mut RequestAcks,
    ) -> Verdict<Trouble> {
        let inner = self.inner;
        if acks.confirmed() {
            return Verdict::Confirmed { fixed: FIXED_ALL };
        }
        let body = || {
            let size = self.sizes.bytes(&run);
            inner
                .envelope
                .encode(self.source, &events[run.clone()], size)
        };
        let (answer, channel) = inner.post_events(body).await;
        match answer {
            Answer::Accepted { ack_id } => {
                if let (true, Some(id)) = (inner.cfg.indexer_ack, ack_id) {
                    (self.pending)(run.clone(), Inner::pending_token(&channel, id));
                }
                inner.accepted(acks, ack_id).await
            }
            Answer::Retry(why, after) => Verdict::Retry { why, after },
            Answer::Token(why) => Verdict::AuthWait {
                trouble: Trouble::Token,
                reason: format!(
                    "{} ({why}); check {} (re-read before every retry)",
                    inner.auth.refusal(),
                    inner.auth.describe()
                ),
                log: format!("{}; check {}", inner.auth.refusal(), inner.auth.describe()),
                why,
            },
            Answer::AckSetting(why) => Verdict::AuthWait {
                trouble: Trouble::AckSetting,
                reason: why.clone(),
                log: "config error: indexer_ack does not match the HEC token".into(),
                why,
            },
            Answer::Endpoint(why) => Verdict::AuthWait {
                trouble: Trouble::Endpoint,
                reason: why.clone(),
                log: "HEC endpoint does not answer like HEC; check endpoint".into(),
                why,
            },
            Answer::Reject(why, bad) => Verdict::Refused { why, bad },
        }
    }

    fn forget(&self, acks: RequestAcks) {
        self.inner.forget_acks(acks);
    }

    async fn after_auth_wait(&self, trouble: Trouble) {
        if trouble == Trouble::Token {
            self.inner.reload_token();
        }
    }
}

impl Inner {
    /// HEC took the request: confirmed now, or once its ack reads true.
    async fn accepted(&self, acks: &mut RequestAcks, ack_id: Option<u64>) -> Verdict<Trouble> {
        match (self.cfg.indexer_ack, ack_id) {
            (true, Some(id)) => {
                self.watch_ack(acks, id);
                if self.wait_for_ack(acks).await {
                    Verdict::Confirmed { fixed: FIXED_ALL }
                } else {
                    Verdict::Unconfirmed {
                        why: format!(
                            "no indexer acknowledgment within ack_timeout ({:?})",
                            self.cfg.ack_timeout
                        ),
                    }
                }
            }
            (true, None) => {
                // HEC took the events but cannot acknowledge them:
                // acceptance is all it offers, and sending again would
                // only duplicate them.
                let why = "HEC accepted a request without an ackId: indexer \
                           acknowledgment is off for this token; set \
                           indexer_ack = false (or turn acknowledgment on for \
                           the token); events are confirmed on acceptance only";
                let readiness = &self.delivery.readiness;
                if !readiness.has_any(&[Trouble::AckMissing]) {
                    error!(sink = %self.delivery.name, "{why}");
                }
                readiness.set(Trouble::AckMissing, why.into());
                Verdict::Confirmed {
                    fixed: FIXED_TOKEN_ENDPOINT,
                }
            }
            (false, _) => Verdict::Confirmed { fixed: FIXED_ALL },
        }
    }
}
