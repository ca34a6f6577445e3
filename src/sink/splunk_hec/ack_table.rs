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
    /// When the id is next due to be asked about, and the wait after that.
    due: Instant,
    wait: Duration,
    confirms: Arc<watch::Sender<bool>>,
}

/// When ack ids are asked about: `first` after they were issued, then
/// again after a quarter of their age (at least `first`, at most
/// `ceiling`): an ack ready at t is seen by about max(t + `first`, 1.25 t),
/// while a slow one costs few queries. A channel is never asked more often
/// than once per `first`, however many ids wait.
#[derive(Clone, Copy, Debug)]
pub(super) struct PollSchedule {
    pub(super) first: Duration,
    pub(super) ceiling: Duration,
}

impl PollSchedule {
    /// The wait before asking again about an ack `age` old: a quarter of
    /// its age (so an ack ready at t is seen by about 1.25 t, and by t +
    /// `first` while young), at least `first`, at most `ceiling`.
    pub(super) fn wait_at(&self, age: Duration) -> Duration {
        (age / 4).max(self.first).min(self.ceiling)
    }
}

/// Ack ids being asked about, by id. Not capped: every entry belongs to a
/// request in flight (or to an earlier send of one, until twice
/// `ack_timeout`), so what is in flight bounds it.
pub(super) struct AckTable {
    waiting: HashMap<u64, AckEntry>,
    generation: u64,
    schedule: PollSchedule,
    /// When the channel was last asked (the gap before the next query).
    last_query: Option<Instant>,
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
    pub(super) fn new(schedule: PollSchedule) -> Self {
        AckTable {
            waiting: HashMap::new(),
            generation: 0,
            schedule,
            last_query: None,
        }
    }

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
        let wait = self.schedule.first;
        self.waiting.insert(
            id,
            AckEntry {
                generation,
                issued: now,
                due: now + wait,
                wait,
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

    /// When the next query is due: when the first id is due, but not
    /// sooner than `first` after the last query.
    pub(super) fn next_due(&self) -> Option<Instant> {
        let due = self.waiting.values().map(|e| e.due).min()?;
        Some(match self.last_query {
            Some(last) => due.max(last + self.schedule.first),
            None => due,
        })
    }

    /// How long ago the oldest id still asked about was issued.
    pub(super) fn oldest_age(&self, now: Instant) -> Duration {
        self.waiting
            .values()
            .map(|e| now.saturating_duration_since(e.issued))
            .max()
            .unwrap_or_default()
    }

    /// The ids (with generations) to ask about at `now`: every id due (or
    /// due within half the first wait, so ids issued close together share
    /// a query), whose next ask is pushed back; then, while fewer than
    /// `per_query`, ids not yet due (asking costs nothing extra, and they
    /// keep their schedule). In chunks of `per_query` ids, due ids first.
    pub(super) fn due_for_query(&mut self, now: Instant, per_query: usize) -> Vec<(u64, u64)> {
        let soon = now + self.schedule.first / 2;
        let schedule = self.schedule;
        self.last_query = Some(now);
        let mut due = Vec::new();
        let mut later = Vec::new();
        for (id, e) in &mut self.waiting {
            if e.due <= soon {
                e.wait = schedule.wait_at(now.saturating_duration_since(e.issued));
                e.due = now + e.wait;
                due.push((*id, e.generation));
            } else {
                later.push((e.due, *id, e.generation));
            }
        }
        due.sort_unstable();
        // What the last chunk of due ids leaves free (none when none is due).
        let room = (per_query - due.len() % per_query) % per_query;
        later.sort_unstable();
        due.extend(later.into_iter().take(room).map(|(_, id, g)| (id, g)));
        due
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

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    fn table() -> AckTable {
        AckTable::new(PollSchedule {
            first: 100 * MS,
            ceiling: 1000 * MS,
        })
    }

    /// A table watching one request, with ack id `id`, sent at the
    /// returned instant.
    fn table_watching(id: u64) -> (AckTable, Instant, RequestAcks) {
        let mut t = table();
        let t0 = Instant::now();
        let mut acks = RequestAcks::default();
        t.watch(&mut acks, id, t0);
        (t, t0, acks)
    }

    #[test]
    fn an_ack_is_seen_soon_after_it_is_ready_and_slow_ones_are_asked_less_often() {
        let (mut t, t0, _acks) = table_watching(7);
        assert_eq!(t.next_due(), Some(t0 + 100 * MS));
        assert!(
            t.due_for_query(t0 + 10 * MS, 1000).is_empty(),
            "asked before due"
        );
        let mut asks = Vec::new();
        let mut now = t0 + 100 * MS;
        while now < t0 + 20_000 * MS {
            assert_eq!(t.due_for_query(now, 1000), vec![(7, 1)]);
            asks.push(now - t0);
            now = t.next_due().unwrap();
        }
        let waits: Vec<Duration> = asks.windows(2).map(|w| w[1] - w[0]).collect();
        // Soon, then less often, never more than the ceiling apart.
        assert!(waits.windows(2).all(|w| w[0] <= w[1]), "{waits:?}");
        assert_eq!(waits[0], 100 * MS);
        assert_eq!(*waits.last().unwrap(), 1000 * MS);
        // An ack ready at `ready` is seen within max(first, ready / 4):
        // a doubling wait would see an ack ready at 1.7 s only at 3.1 s.
        for ready in [150, 450, 1000, 1700, 3000, 9000].map(|ms| ms * MS) {
            let seen = *asks.iter().find(|a| **a >= ready).unwrap();
            let late = (ready / 4).max(100 * MS);
            assert!(seen <= ready + late, "ready at {ready:?}, seen at {seen:?}");
        }
        // Few questions: 20 s of a slow ack, not one per `first`.
        assert!(asks.len() <= 40, "{} asks", asks.len());
    }

    #[test]
    fn a_channel_is_asked_at_most_once_per_first_wait() {
        let (mut t, t0, _a) = table_watching(1);
        let mut b = RequestAcks::default();
        assert_eq!(t.due_for_query(t0 + 100 * MS, 1000), vec![(1, 1)]);
        // A request issued right after the query: its first question waits
        // for the gap, not only its own first wait.
        t.watch(&mut b, 2, t0 + 101 * MS - 100 * MS / 2 - MS);
        assert_eq!(t.next_due(), Some(t0 + 200 * MS));
    }

    #[test]
    fn ids_not_yet_due_ride_along_and_keep_their_schedule() {
        let (mut t, t0, a) = table_watching(1);
        let (mut b, mut c) = Default::default();
        t.watch(&mut b, 2, t0 + 40 * MS); // due within half the first wait
        t.watch(&mut c, 3, t0 + 90 * MS);
        assert_eq!(
            t.due_for_query(t0 + 100 * MS, 1000),
            vec![(1, 1), (2, 2), (3, 3)]
        );
        // 1 and 2 were due (or nearly): next at +200 ms; 3 keeps its
        // time (190 ms), which alone would be due then: the next query.
        t.forget(a);
        t.forget(b);
        assert_eq!(t.oldest_age(t0 + 100 * MS), 10 * MS);
        assert_eq!(
            t.next_due(),
            Some(t0 + 200 * MS),
            "at most one query per first wait"
        );
        let late = t0 + 190 * MS + 100 * MS;
        assert_eq!(t.due_for_query(late, 1000), vec![(3, 3)]);
    }

    #[test]
    fn due_ids_come_first_and_fill_whole_queries() {
        let mut t = table();
        let t0 = Instant::now();
        let mut acks: Vec<RequestAcks> = (0..5).map(|_| RequestAcks::default()).collect();
        for (i, a) in acks.iter_mut().enumerate() {
            // ids 0..3 early, 3..5 late
            let at = if i < 3 { t0 } else { t0 + 500 * MS };
            t.watch(a, i as u64, at);
        }
        let asked = t.due_for_query(t0 + 100 * MS, 2);
        // Three due ids take two queries of two; one late id fills the second.
        assert_eq!(asked, vec![(0, 1), (1, 2), (2, 3), (3, 4)]);
    }

    #[test]
    fn a_confirmed_id_leaves_the_schedule() {
        let (mut t, t0, a) = table_watching(4);
        let asked = t.due_for_query(t0 + 100 * MS, 1000);
        t.confirm(&asked, &HashMap::from([("4".to_string(), true)]));
        assert!(a.confirmed());
        assert_eq!(t.next_due(), None);
        assert_eq!(t.oldest_age(t0), Duration::ZERO);
    }
}
