//! Pending acks across a restart: each request awaiting its ack is reported
//! to the pipeline as pending under a token naming its channel and ack id
//! (recorded in the source's progress log); after a crash, the new run asks
//! HEC about those ids on their old channels before the refetched pages
//! are sent, and skips what reads true.
//!
//! HEC answers `true` for an id only once, so an id the old run already
//! heard true (but had not recorded as confirmed) reads false now: sent
//! again, a duplicate. A channel HEC no longer knows (expired, or the
//! indexer restarted: code 11) confirms nothing. The new run has a channel
//! of its own, so its ack ids never meet the old ones.
//!
//! An indexer that restarted while the old run was sending issued ids from
//! 0 again on the old channel, so a `true` for a low id may be a later
//! request's. Hence (see [`trustworthy`]): a channel whose recorded ids
//! fall back (a later send with a much lower id) is not trusted at all, nor
//! is any id below twice `concurrency` (the ids requests on the wire at a
//! crash could have got from a restarted indexer before any of them was
//! recorded); and the pipeline drops a token claimed for two different
//! sets of events. Those checks see one source's ids only, while every
//! source routed to the sink shares its channel: the running sink gives a
//! channel up at the first id issued on it twice (see `channel`), so an
//! old channel's ids are reissued only to the few requests on the wire at
//! the indexer's restart. What remains is an indexer restart and a crash
//! within one progress-log sync of each other, on a channel younger than
//! that.
//!
//! Asking is bounded: an id is asked about until the running sink would
//! have given up waiting for it (`ack_timeout` after it was sent), and the
//! whole round ends at most the longer of `ack_poll_interval` and
//! [`ASK_AT_LEAST`] after it began (plus one `timeout` for a query, or an
//! access token, still awaited), asking on the usual schedule meanwhile:
//! a restart waits about as long as one slow ack, not `ack_timeout`.

use std::collections::BTreeMap;
use std::time::{Instant, SystemTime};

use reqwest::header::HeaderValue;
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use super::answer::HecReply;
use super::inner::Inner;
use crate::sink::delivery::Sent;
use crate::sink::PendingRequest;

/// Ack ids per ack query.
const MAX_ACKS_PER_QUERY: usize = 1000;
/// How long a restart may wait for acks still false, even with a short
/// `ack_poll_interval`: acks of requests sent just before a crash are
/// typically ready within a second or two.
pub(super) const ASK_AT_LEAST: std::time::Duration = std::time::Duration::from_secs(2);

/// What a pending token holds (JSON: readable in a hex dump, and new
/// fields can be added).
#[derive(Serialize, Deserialize)]
struct AckToken {
    channel: String,
    ack: u64,
}

/// How one ack query about an old channel went.
enum Reply {
    Answers(std::collections::HashMap<String, bool>),
    /// HEC does not know the channel (any more): nothing on it confirms.
    ChannelGone(String),
    /// Ask again later (network, busy, token trouble).
    Failed(String),
}

/// An id still asked about.
struct Open {
    ack: u64,
    index: usize,
    sent: SystemTime,
    until: Instant,
}

/// Keeps the ids of one old channel whose `true` can only be their own
/// request's (see the module documentation); why the rest are dropped.
fn trustworthy(ids: &mut Vec<Open>, concurrency: u64) -> Option<String> {
    let young = concurrency.saturating_mul(2);
    ids.sort_by_key(|o| (o.sent, o.ack));
    let mut highest = None::<u64>;
    let mut fell_back = None;
    for o in ids.iter() {
        if let Some(h) = highest.filter(|h| o.ack.saturating_add(young) <= *h) {
            fell_back = Some((o.ack, h));
            break;
        }
        highest = highest.max(Some(o.ack));
    }
    if let Some((low, high)) = fell_back {
        ids.clear();
        return Some(format!(
            "ack id {low} was issued after id {high}: the indexer restarted meanwhile"
        ));
    }
    let before = ids.len();
    ids.retain(|o| o.ack >= young);
    (ids.len() < before).then(|| {
        format!("ack ids below {young} (twice concurrency) could be a restarted indexer's")
    })
}

impl Inner {
    /// The token of a request that got ack id `ack` on `channel`.
    pub(super) fn pending_token(channel: &HeaderValue, ack: u64) -> Vec<u8> {
        let channel = channel.to_str().unwrap_or_default().to_string();
        serde_json::to_vec(&AckToken { channel, ack }).unwrap_or_default()
    }

    /// See the module documentation.
    pub(super) async fn resolve_pending(&self, requests: &[PendingRequest]) -> Vec<bool> {
        let mut confirmed = vec![false; requests.len()];
        if !self.cfg.indexer_ack || requests.is_empty() {
            return confirmed;
        }
        let start = Instant::now();
        let now = SystemTime::now();
        let schedule = self.cfg.poll_schedule();
        // One query may wait for its answer (or for an access token, which
        // an OAuth2 gateway's token endpoint may never give) no longer than
        // the round, plus one `timeout`: the source waits for this.
        let give_up = start + schedule.ceiling.max(ASK_AT_LEAST) + self.cfg.timeout;
        let mut open: BTreeMap<String, Vec<Open>> = BTreeMap::new();
        for (index, r) in requests.iter().enumerate() {
            let Ok(token) = serde_json::from_slice::<AckToken>(&r.token) else {
                continue;
            };
            let age = now.duration_since(r.sent).unwrap_or_default();
            let left = self.cfg.ack_timeout.saturating_sub(age);
            open.entry(token.channel).or_default().push(Open {
                ack: token.ack,
                index,
                sent: r.sent,
                until: start + left.min(schedule.ceiling.max(ASK_AT_LEAST)),
            });
        }
        for (channel, ids) in open.iter_mut() {
            if let Some(why) = trustworthy(ids, self.cfg.concurrency as u64) {
                info!(sink = %self.delivery.name, channel = %channel, reason = %why, "some acks pending before the restart are not asked about; their events are sent again");
            }
        }
        open.retain(|_, ids| !ids.is_empty());
        let asked = open.values().map(Vec::len).sum::<usize>();
        loop {
            for (channel, ids) in open.iter_mut() {
                let mut gone = None;
                for chunk in ids.chunks(MAX_ACKS_PER_QUERY) {
                    let asked = tokio::time::timeout_at(
                        give_up.into(),
                        self.ask_old_channel(channel, chunk),
                    );
                    let reply = asked.await.unwrap_or_else(|_| {
                        Reply::Failed("no answer while the restart was asking".into())
                    });
                    match reply {
                        Reply::Answers(answers) => {
                            for o in chunk {
                                if answers.get(&o.ack.to_string()) == Some(&true) {
                                    confirmed[o.index] = true;
                                }
                            }
                        }
                        Reply::ChannelGone(why) => {
                            gone = Some(why);
                            break;
                        }
                        Reply::Failed(why) => {
                            warn!(sink = %self.delivery.name, error = %why, "asking HEC about acks pending before the restart failed; asking again");
                        }
                    }
                }
                if let Some(why) = gone {
                    info!(sink = %self.delivery.name, channel = %channel, ids = ids.len(), reason = %why, "HEC no longer knows the channel of acks pending before the restart; their events are sent again");
                    ids.clear();
                }
                let now = Instant::now();
                ids.retain(|o| !confirmed[o.index] && o.until > now);
            }
            open.retain(|_, ids| !ids.is_empty());
            let Some(last) = open.values().flatten().map(|o| o.until).max() else {
                break;
            };
            let wait = schedule.wait_at(start.elapsed());
            tokio::time::sleep_until((Instant::now() + wait).min(last).into()).await;
        }
        let yes = confirmed.iter().filter(|c| **c).count();
        info!(sink = %self.delivery.name, pending = requests.len(), asked, acknowledged = yes, "acks pending before the restart resolved; the rest is sent again");
        confirmed
    }

    /// One ack query about `ids` on an old `channel`.
    async fn ask_old_channel(&self, channel: &str, ids: &[Open]) -> Reply {
        let Ok(header) = HeaderValue::from_str(channel) else {
            return Reply::ChannelGone("not a channel name".into());
        };
        let url = self.ack_url_for(&header);
        let list: Vec<u64> = ids.iter().map(|o| o.ack).collect();
        let Ok(body) = serde_json::to_vec(&serde_json::json!({ "acks": list })) else {
            return Reply::Failed("cannot encode the ack query".into());
        };
        let sent = match self.ack_query_on(&url, &header, body.into()).await {
            Ok(sent) => sent,
            Err(why) => return Reply::Failed(why),
        };
        let (status, text) = match sent {
            Sent::Answer { status, body, .. } => (status, body.unwrap_or_default()),
            Sent::Redirect { why, .. } | Sent::NoAnswer(why) => return Reply::Failed(why),
        };
        let reply: HecReply = serde_json::from_slice(&text).unwrap_or_default();
        match (status, reply.acks, reply.code) {
            (200, Some(acks), _) => Reply::Answers(acks),
            // 10 and 11: the channel is missing or unknown; 14: the token
            // has acknowledgment off now. Either way nothing confirms.
            (_, _, Some(code @ (10 | 11 | 14))) => Reply::ChannelGone(format!(
                "HEC code {code}: {} (HTTP {status})",
                reply.text.unwrap_or_default()
            )),
            _ => Reply::Failed(format!(
                "HTTP {status}: {}",
                crate::sink::delivery::snippet(&text, 200)
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, UNIX_EPOCH};

    fn ids(list: &[(u64, u64)]) -> Vec<Open> {
        list.iter()
            .enumerate()
            .map(|(index, (ack, sent_ms))| Open {
                ack: *ack,
                index,
                sent: UNIX_EPOCH + Duration::from_millis(*sent_ms),
                until: Instant::now(),
            })
            .collect()
    }

    fn acks(list: &[Open]) -> Vec<u64> {
        list.iter().map(|o| o.ack).collect()
    }

    #[test]
    fn ids_of_a_steady_channel_are_trusted_even_a_little_out_of_order() {
        // Concurrent requests are noted in any order: 41 before 40.
        let mut list = ids(&[(40, 1001), (41, 1000), (45, 1002), (44, 1003)]);
        assert_eq!(trustworthy(&mut list, 4), None);
        assert_eq!(acks(&list), vec![41, 40, 45, 44]);
    }

    #[test]
    fn a_channel_whose_ids_fell_back_is_not_trusted() {
        // 50 and 51, then the indexer restarted and issued 0 and 1 again.
        let mut list = ids(&[(50, 1000), (51, 1001), (9, 1002), (10, 1003)]);
        assert!(trustworthy(&mut list, 4).is_some());
        assert!(list.is_empty());
    }

    #[test]
    fn the_first_ids_of_a_channel_are_not_trusted() {
        // A restarted indexer issues these to requests whose answers may
        // not have come back before the crash.
        let mut list = ids(&[(3, 1000), (7, 1001), (8, 1002), (12, 1003)]);
        assert!(trustworthy(&mut list, 4).is_some());
        assert_eq!(acks(&list), vec![8, 12]);
    }
}
