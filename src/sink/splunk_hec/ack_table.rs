//! The bookkeeping of indexer acknowledgment (see [`super::acks`]): the ack
//! ids being asked about, the requests still on their way, and what
//! confirms one request.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;

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
    pub(super) async fn settled(&self) {
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

    /// Hears when an ack of the request reads true.
    pub(super) fn subscribe(&self) -> watch::Receiver<bool> {
        self.confirmed.subscribe()
    }

    /// When the first ack id of the request was issued.
    pub(super) fn first_issued(&self) -> Option<Instant> {
        self.first_issued
    }

    /// Whether any send of the request got an ack id.
    pub(super) fn has_ids(&self) -> bool {
        !self.ids.is_empty()
    }
}

impl AckTable {
    /// How many ack ids are asked about.
    pub(super) fn len(&self) -> usize {
        self.waiting.len()
    }

    pub(super) fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Drops the entry of `id`, if there is one (HEC issued the id again);
    /// whether there was.
    pub(super) fn remove_reissued(&mut self, id: u64) -> bool {
        self.waiting.remove(&id).is_some()
    }

    /// Asks about `id`, just issued for a send of `acks`'s request, from
    /// `now` on.
    pub(super) fn watch(&mut self, acks: &mut RequestAcks, id: u64, now: Instant) {
        self.generation += 1;
        let generation = self.generation;
        // An entry with the same id is from before a HEC restart: that
        // request no longer hears of it and is sent again at its timeout.
        self.waiting.insert(
            id,
            AckEntry {
                generation,
                issued: now,
                confirms: acks.confirmed.clone(),
            },
        );
        acks.ids.push((id, generation));
        acks.first_issued.get_or_insert(now);
    }

    /// Stops asking about the ids of `acks`'s request (those not issued
    /// again to a later request since).
    pub(super) fn forget(&mut self, acks: RequestAcks) {
        for (id, generation) in acks.ids {
            if self
                .waiting
                .get(&id)
                .is_some_and(|e| e.generation == generation)
            {
                self.waiting.remove(&id);
            }
        }
    }

    /// Drops the ids issued more than `horizon` ago; them, in order.
    pub(super) fn expire(&mut self, horizon: Duration) -> Vec<u64> {
        let mut expired: Vec<u64> = self
            .waiting
            .iter()
            .filter(|(_, e)| e.issued.elapsed() > horizon)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.waiting.remove(id);
        }
        expired.sort_unstable();
        expired
    }

    /// Every id asked about with its generation, in order.
    pub(super) fn ids(&self) -> Vec<(u64, u64)> {
        let mut ids: Vec<(u64, u64)> = self
            .waiting
            .iter()
            .map(|(id, e)| (*id, e.generation))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// Confirms the requests of `ids` (asked about in one query) whose ack
    /// reads true in `answers`, unless the id was issued again since.
    pub(super) fn confirm(&mut self, ids: &[(u64, u64)], answers: &HashMap<String, bool>) {
        for (id, generation) in ids {
            if answers.get(&id.to_string()) == Some(&true)
                && self
                    .waiting
                    .get(id)
                    .is_some_and(|e| e.generation == *generation)
            {
                if let Some(entry) = self.waiting.remove(id) {
                    entry.confirms.send_replace(true);
                }
            }
        }
    }
}
