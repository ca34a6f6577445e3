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
//! of its own, so its ack ids never meet the old ones. An old channel's id
//! that the indexer (restarted) issued again to a later request is only
//! trusted when the log names it once (the pipeline drops tokens claimed
//! for two different sets of events).
//!
//! Asking is bounded: an id is asked about until the running sink would
//! have given up waiting for it (`ack_timeout` after it was sent), and the
//! whole round ends at most the longer of `ack_poll_interval` and
//! [`ASK_AT_LEAST`] after it began, asking on the usual schedule meanwhile:
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
    until: Instant,
}

impl Inner {
    /// The token of a request that got ack id `ack` on this sink's channel.
    pub(super) fn pending_token(&self, ack: u64) -> Vec<u8> {
        let channel = self.channel.to_str().unwrap_or_default().to_string();
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
                until: start + left.min(schedule.ceiling.max(ASK_AT_LEAST)),
            });
        }
        let asked = open.values().map(Vec::len).sum::<usize>();
        loop {
            for (channel, ids) in open.iter_mut() {
                let mut gone = None;
                for chunk in ids.chunks(MAX_ACKS_PER_QUERY) {
                    match self.ask_old_channel(channel, chunk).await {
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
        let mut url = self.ack_url.clone();
        url.query_pairs_mut()
            .clear()
            .append_pair("channel", channel);
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
