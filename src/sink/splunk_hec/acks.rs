//! Indexer acknowledgment: the ack ids requests got, one poller asking HEC
//! about all of them, and what confirms a request.
//!
//! Each id is asked about soon after it was issued (`ack_first_poll`),
//! then again after a quarter of its age (at least `ack_first_poll`, at
//! most `ack_poll_interval`), so an ack is seen soon after it is ready;
//! whenever one is due, the query also asks about every other pending id
//! of the channel, and the channel is asked at most once per
//! `ack_first_poll` however many ids wait. Requests awaiting acks hold no request
//! permit (`concurrency` bounds only requests on the wire), so as many
//! await their acks as the pipeline has in flight.
//!
//! A request not acknowledged within `ack_timeout` is sent again, and gets
//! a new ack id; its earlier ids are still asked about until twice
//! `ack_timeout` after they were issued, so an ack that comes late still
//! confirms (an indexer under load acknowledges late, not never). An id
//! given up on is logged and counted: acks that never come mean lost data
//! or, behind a load balancer, sessions that are not sticky.
//!
//! Ack ids are unique on a channel only until the indexer restarts: then
//! it issues them from 0 again, so a new request can get the id an older,
//! lost one still waits on, and HEC's `true` for that id is the new
//! request's. An ack answer is therefore applied only once every event
//! request sent before it came back and had its id noted (a reissued id
//! takes the entry from the older request, which is sent again).

use std::sync::Arc;
use std::time::Instant;

use reqwest::header::CONTENT_TYPE;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::ack_table::{AckTable, RequestAcks};
use super::answer::{classify, Answer, HecReply};
use super::auth::Scope;
use super::inner::{Inner, Trouble, CHANNEL_HEADER, FIXED_ALL};
use super::metrics::HEC_METRICS;
use crate::sink::delivery::Sent;

/// Ack ids per ack query, so one query stays a small request.
const MAX_ACKS_PER_QUERY: usize = 1000;
/// Ack ids named in one "never acknowledged" log line.
const IDS_PER_LOG_LINE: usize = 20;

impl Inner {
    /// The age of the oldest is set by the poller, which looks at every
    /// entry anyway; here only once none is left.
    fn set_pending_gauge(&self, table: &AckTable) {
        HEC_METRICS
            .acks_pending
            .with_label_values(&[&self.delivery.name])
            .set(table.len() as i64);
        if table.is_empty() {
            HEC_METRICS
                .oldest_pending_ack_age
                .with_label_values(&[&self.delivery.name])
                .set(0.0);
        }
    }

    /// Notes that HEC just issued ack `id` (before the request counts as
    /// back): an entry with the same id is from before an indexer restart,
    /// and HEC's answers about the id are now the new request's.
    pub(super) fn note_issued(&self, id: u64) {
        let mut table = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        if table.remove_reissued(id) {
            HEC_METRICS
                .acks_expired
                .with_label_values(&[&self.delivery.name])
                .inc();
            warn!(
                sink = %self.delivery.name,
                ack_id = id,
                "HEC issued an ack id a second time on this channel: the indexer restarted \
                 (or a load balancer switched indexers); the request that waited on it is \
                 sent again at ack_timeout"
            );
            self.set_pending_gauge(&table);
        }
    }

    /// Asks about ack `id` (just issued for a send of `acks`'s request)
    /// until it reads true or twice `ack_timeout` passes.
    pub(super) fn watch_ack(&self, acks: &mut RequestAcks, id: u64) {
        {
            let mut table = self.acks.lock().unwrap_or_else(|p| p.into_inner());
            table.watch(acks, id, Instant::now());
            self.set_pending_gauge(&table);
        }
        self.ack_wake.notify_one();
    }

    /// Waits until an ack of the request reads true (true), or until
    /// `ack_timeout` passes (false: send again).
    pub(super) async fn wait_for_ack(&self, acks: &RequestAcks) -> bool {
        let mut rx = acks.subscribe();
        let acked = tokio::select! {
            r = rx.wait_for(|confirmed| *confirmed) => r.is_ok(),
            _ = tokio::time::sleep(self.cfg.ack_timeout) => false,
        };
        if acked {
            if let Some(since) = acks.first_issued() {
                HEC_METRICS
                    .ack_latency
                    .with_label_values(&[&self.delivery.name])
                    .observe(since.elapsed().as_secs_f64());
            }
        } else {
            HEC_METRICS
                .ack_timeouts
                .with_label_values(&[&self.delivery.name])
                .inc();
        }
        acked
    }

    /// Stops asking about the request's ack ids (it is confirmed, or its
    /// events were split into other requests).
    pub(super) fn forget_acks(&self, acks: RequestAcks) {
        if !acks.has_ids() {
            return;
        }
        let mut table = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        table.forget(acks);
        self.set_pending_gauge(&table);
    }

    /// Drops the ids issued more than twice `ack_timeout` ago, logging them:
    /// their requests were sent again long since.
    fn expire_acks(&self) {
        let horizon = self.cfg.ack_timeout * 2;
        let expired: Vec<u64> = {
            let mut table = self.acks.lock().unwrap_or_else(|p| p.into_inner());
            let expired = table.expire(horizon);
            self.set_pending_gauge(&table);
            expired
        };
        if expired.is_empty() {
            return;
        }
        HEC_METRICS
            .acks_expired
            .with_label_values(&[&self.delivery.name])
            .inc_by(expired.len() as u64);
        let shown: Vec<String> = expired
            .iter()
            .take(IDS_PER_LOG_LINE)
            .map(u64::to_string)
            .collect();
        warn!(
            sink = %self.delivery.name,
            count = expired.len(),
            ack_ids = %shown.join(","),
            given_up_after_s = horizon.as_secs_f64(),
            "HEC never acknowledged these requests (their events were sent again): \
             indexing is stalled or lost data, or a load balancer sends the ack queries \
             to another indexer than the events (it must keep sessions sticky by cookie)"
        );
    }

    /// One request to the ack endpoint on this sink's channel, with the
    /// sink's credentials; `Err`: a credential no header can carry.
    pub(super) async fn ack_query(&self, body: bytes::Bytes) -> Result<Sent, String> {
        let channel = self.channel.get();
        self.ack_query_on(&self.ack_url_for(&channel), &channel, body)
            .await
    }

    /// One request to the ack endpoint `url` about `channel` (an earlier
    /// run's, after a restart).
    pub(super) async fn ack_query_on(
        &self,
        url: &url::Url,
        channel: &reqwest::header::HeaderValue,
        body: bytes::Bytes,
    ) -> Result<Sent, String> {
        let request = || {
            self.client
                .post(url.clone())
                .header(CHANNEL_HEADER, channel.clone())
                .header(CONTENT_TYPE, "application/json")
                .body(body.clone())
        };
        self.auth.send(Scope::Hec, request).await
    }

    /// One ack query for `ids` (with their generations).
    async fn poll_acks(&self, ids: &[(u64, u64)]) {
        let list: Vec<u64> = ids.iter().map(|(id, _)| *id).collect();
        let body = match serde_json::to_vec(&serde_json::json!({ "acks": list })) {
            Ok(b) => b,
            Err(_) => return,
        };
        let sent = match self.ack_query(body.into()).await {
            Ok(sent) => sent,
            Err(why) => {
                self.delivery.readiness.set(Trouble::Token, why);
                return;
            }
        };
        let (status, text) = match sent {
            Sent::Answer { status, body, .. } => (status, body.unwrap_or_default()),
            Sent::Redirect { why, label } => {
                self.count("ack", &label);
                warn!(sink = %self.delivery.name, error = %why, "HEC ack query failed; asking again later");
                return;
            }
            Sent::NoAnswer(why) => {
                self.count("ack", "network");
                warn!(sink = %self.delivery.name, error = %why, "HEC ack query failed; asking again later");
                return;
            }
        };
        let reply: HecReply = serde_json::from_slice(&text).unwrap_or_default();
        match (status, reply.acks) {
            (200, Some(acks)) => {
                self.count("ack", "0");
                // A `true` may be about a request still on its way that got
                // a reissued id: apply answers once those are back.
                if acks.values().any(|v| *v) {
                    self.posts.settled().await;
                }
                self.delivery.readiness.clear(FIXED_ALL);
                let mut table = self.acks.lock().unwrap_or_else(|p| p.into_inner());
                table.confirm(ids, &acks);
                self.set_pending_gauge(&table);
            }
            _ => {
                let (label, answer) = classify(status, None, &text);
                self.count("ack", &label);
                match answer {
                    Answer::Token(why) => {
                        self.delivery.readiness.set(
                            Trouble::Token,
                            format!(
                                "{} on ack queries ({why}); check {}",
                                self.auth.refusal(),
                                self.auth.describe()
                            ),
                        );
                        self.reload_token();
                    }
                    Answer::AckSetting(why) => {
                        self.delivery.readiness.set(Trouble::AckSetting, why)
                    }
                    Answer::Retry(why, _) | Answer::Endpoint(why) | Answer::Reject(why, _) => {
                        warn!(sink = %self.delivery.name, error = %why, "HEC ack query failed; asking again later")
                    }
                    Answer::Accepted { .. } => {}
                }
            }
        }
    }
}

/// One poller per sink: whenever an id is due (see [`PollSchedule`]), one
/// query (per 1000 ids) about every id asked about.
///
/// [`PollSchedule`]: super::ack_table::PollSchedule
pub(super) async fn ack_poller(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        let next = inner
            .acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .next_due();
        // A new id may be due before the one waited for: look again.
        let wait_for_due = async {
            match next {
                Some(at) => tokio::time::sleep_until(at.into()).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = inner.ack_wake.notified() => continue,
            _ = wait_for_due => {}
        }
        inner.expire_acks();
        let now = Instant::now();
        let ids = {
            let mut table = inner.acks.lock().unwrap_or_else(|p| p.into_inner());
            HEC_METRICS
                .oldest_pending_ack_age
                .with_label_values(&[&inner.delivery.name])
                .set(table.oldest_age(now).as_secs_f64());
            table.due_for_query(now, MAX_ACKS_PER_QUERY)
        };
        for chunk in ids.chunks(MAX_ACKS_PER_QUERY) {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = inner.poll_acks(chunk) => {}
            }
        }
    }
}
