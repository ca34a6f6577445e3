//! Indexer acknowledgment: the ack ids requests got, one poller asking HEC
//! about all of them, and what confirms a request.
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

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::Instant;

use reqwest::header::{HeaderValue, AUTHORIZATION, CONTENT_TYPE};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;
use tracing::warn;

use super::deliver::{classify, Answer, HecReply};
use super::metrics::HEC_METRICS;
use super::{Inner, Trouble, CHANNEL_HEADER};
use crate::sink::delivery::{send_http, Sent};

/// Ack ids per ack query, so one query stays a small request.
const MAX_ACKS_PER_QUERY: usize = 1000;
/// Ack ids named in one "never acknowledged" log line.
const IDS_PER_LOG_LINE: usize = 20;

struct AckEntry {
    /// Tells this request from a later one that got the same id (ids
    /// restart when HEC does).
    generation: u64,
    issued: Instant,
    confirms: Arc<watch::Sender<bool>>,
}

/// Ack ids being asked about, by id.
#[derive(Default)]
pub(super) struct AckTable {
    waiting: HashMap<u64, AckEntry>,
    generation: u64,
}

/// Event requests on their way whose ack id is not known yet, by sequence
/// number: the ones an ack answer may be about.
#[derive(Default)]
struct OpenPosts {
    next: u64,
    open: BTreeSet<u64>,
}

pub(super) struct PostsInFlight(watch::Sender<OpenPosts>);

impl Default for PostsInFlight {
    fn default() -> Self {
        PostsInFlight(watch::Sender::new(OpenPosts::default()))
    }
}

/// One event request on its way; dropped once its answer (and ack id) has
/// been noted, or when it failed or was cancelled.
pub(super) struct PostInFlight<'a> {
    posts: &'a PostsInFlight,
    seq: u64,
}

impl PostsInFlight {
    /// Call right before the request is sent.
    pub(super) fn begin(&self) -> PostInFlight<'_> {
        let mut seq = 0;
        self.0.send_modify(|p| {
            seq = p.next;
            p.next += 1;
            p.open.insert(seq);
        });
        PostInFlight { posts: self, seq }
    }

    /// Waits until every request begun so far has come back. Bounded by the
    /// request timeout.
    async fn settled(&self) {
        let horizon = self.0.borrow().next;
        let mut rx = self.0.subscribe();
        let _ = rx
            .wait_for(|p| p.open.first().is_none_or(|first| *first >= horizon))
            .await;
    }
}

impl Drop for PostInFlight<'_> {
    fn drop(&mut self) {
        let seq = self.seq;
        self.posts.0.send_modify(|p| {
            p.open.remove(&seq);
        });
    }
}

/// What confirms one request's events: any ack id it got reading true.
pub(super) struct RequestAcks {
    confirmed: Arc<watch::Sender<bool>>,
    /// (ack id, generation) of every send of the request.
    ids: Vec<(u64, u64)>,
    first_issued: Option<Instant>,
}

impl Default for RequestAcks {
    fn default() -> Self {
        RequestAcks {
            confirmed: Arc::new(watch::Sender::new(false)),
            ids: Vec::new(),
            first_issued: None,
        }
    }
}

impl RequestAcks {
    /// Whether an ack of an earlier send read true meanwhile.
    pub(super) fn confirmed(&self) -> bool {
        *self.confirmed.borrow()
    }
}

impl Inner {
    fn set_pending_gauge(&self, table: &AckTable) {
        HEC_METRICS
            .acks_pending
            .with_label_values(&[&self.delivery.name])
            .set(table.waiting.len() as i64);
    }

    /// Notes that HEC just issued ack `id` (before the request counts as
    /// back): an entry with the same id is from before an indexer restart,
    /// and HEC's answers about the id are now the new request's.
    pub(super) fn note_issued(&self, id: u64) {
        let mut table = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        if table.waiting.remove(&id).is_some() {
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
        let now = Instant::now();
        {
            let mut table = self.acks.lock().unwrap_or_else(|p| p.into_inner());
            table.generation += 1;
            let generation = table.generation;
            // An entry with the same id is from before a HEC restart: that
            // request no longer hears of it and is sent again at its timeout.
            table.waiting.insert(
                id,
                AckEntry {
                    generation,
                    issued: now,
                    confirms: acks.confirmed.clone(),
                },
            );
            acks.ids.push((id, generation));
            self.set_pending_gauge(&table);
        }
        acks.first_issued.get_or_insert(now);
        self.ack_wake.notify_one();
    }

    /// Waits until an ack of the request reads true (true), or until
    /// `ack_timeout` passes (false: send again).
    pub(super) async fn wait_for_ack(&self, acks: &RequestAcks) -> bool {
        let mut rx = acks.confirmed.subscribe();
        let acked = tokio::select! {
            r = rx.wait_for(|confirmed| *confirmed) => r.is_ok(),
            _ = tokio::time::sleep(self.cfg.ack_timeout) => false,
        };
        if acked {
            if let Some(since) = acks.first_issued {
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
        if acks.ids.is_empty() {
            return;
        }
        let mut table = self.acks.lock().unwrap_or_else(|p| p.into_inner());
        for (id, generation) in acks.ids {
            if table
                .waiting
                .get(&id)
                .is_some_and(|e| e.generation == generation)
            {
                table.waiting.remove(&id);
            }
        }
        self.set_pending_gauge(&table);
    }

    /// Drops the ids issued more than twice `ack_timeout` ago, logging them:
    /// their requests were sent again long since.
    fn expire_acks(&self) {
        let horizon = self.cfg.ack_timeout * 2;
        let expired: Vec<u64> = {
            let mut table = self.acks.lock().unwrap_or_else(|p| p.into_inner());
            let mut expired: Vec<u64> = table
                .waiting
                .iter()
                .filter(|(_, e)| e.issued.elapsed() > horizon)
                .map(|(id, _)| *id)
                .collect();
            for id in &expired {
                table.waiting.remove(id);
            }
            self.set_pending_gauge(&table);
            expired.sort_unstable();
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

    /// A request to the ack endpoint on this sink's channel.
    pub(super) fn ack_query(
        &self,
        auth: HeaderValue,
        body: impl Into<reqwest::Body>,
    ) -> reqwest::RequestBuilder {
        self.client
            .post(self.ack_url.clone())
            .header(AUTHORIZATION, auth)
            .header(CHANNEL_HEADER, self.channel.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
    }

    /// One ack query for `ids` (with their generations).
    async fn poll_acks(&self, ids: &[(u64, u64)]) {
        let Some(auth) = self.auth() else {
            return;
        };
        let list: Vec<u64> = ids.iter().map(|(id, _)| *id).collect();
        let body = match serde_json::to_vec(&serde_json::json!({ "acks": list })) {
            Ok(b) => b,
            Err(_) => return,
        };
        let (status, text) = match send_http(self.ack_query(auth, body)).await {
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
                self.delivery.readiness.clear(&[
                    Trouble::Token,
                    Trouble::AckSetting,
                    Trouble::AckMissing,
                    Trouble::Endpoint,
                ]);
                let mut table = self.acks.lock().unwrap_or_else(|p| p.into_inner());
                for (id, generation) in ids {
                    if acks.get(&id.to_string()) == Some(&true)
                        && table
                            .waiting
                            .get(id)
                            .is_some_and(|e| e.generation == *generation)
                    {
                        if let Some(entry) = table.waiting.remove(id) {
                            entry.confirms.send_replace(true);
                        }
                    }
                }
                self.set_pending_gauge(&table);
            }
            _ => {
                let (label, answer) = classify(status, None, &text);
                self.count("ack", &label);
                match answer {
                    Answer::Token(why) => {
                        self.delivery.readiness.set(
                            Trouble::Token,
                            format!("HEC refuses the token on ack queries ({why})"),
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

/// One poller per sink: every `ack_poll_interval` while ids wait, one
/// query (per 1000 ids) about all of them.
pub(super) async fn ack_poller(inner: Arc<Inner>, stop: CancellationToken) {
    loop {
        loop {
            let empty = inner
                .acks
                .lock()
                .map(|t| t.waiting.is_empty())
                .unwrap_or(false);
            if !empty {
                break;
            }
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = inner.ack_wake.notified() => {}
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(inner.cfg.ack_poll_interval) => {}
        }
        inner.expire_acks();
        let ids: Vec<(u64, u64)> = {
            let table = inner.acks.lock().unwrap_or_else(|p| p.into_inner());
            let mut ids: Vec<(u64, u64)> = table
                .waiting
                .iter()
                .map(|(id, e)| (*id, e.generation))
                .collect();
            ids.sort_unstable();
            ids
        };
        for chunk in ids.chunks(MAX_ACKS_PER_QUERY) {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = inner.poll_acks(chunk) => {}
            }
        }
    }
}
