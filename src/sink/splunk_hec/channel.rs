//! The channel event requests go out on, given up for a new one as soon as
//! HEC is seen issuing an ack id a second time on it (the indexer
//! restarted, or a load balancer switched indexers).
//!
//! Every source routed to the sink shares its channel, but each source's
//! progress log records only its own requests' ack ids. Were the channel
//! kept after an indexer restart, the ids the restarted indexer issues
//! again would go to other sources' requests too, and after a crash a
//! source could not tell that the `true` of its old, lost request's id is
//! another source's (see `resolve`). With a new channel from the first
//! reissued id on, an id of the old channel is reissued only to requests
//! that were on the wire at the restart: at most `concurrency` of them,
//! below the ids a restart trusts.

use std::collections::BTreeSet;
use std::sync::Mutex;

use reqwest::header::HeaderValue;

/// Ack ids kept per channel to recognise one issued again: an answer
/// coming back this many ids late is taken for a reissue too (a channel
/// given up when in doubt costs a resend, nothing else).
const SEEN_WINDOW: u64 = 1 << 14;

/// The current channel and the ack ids issued on it.
pub(super) struct CurrentChannel(Mutex<Seen>);

struct Seen {
    header: HeaderValue,
    /// Ids issued on `header`, from `highest - SEEN_WINDOW` up.
    ids: BTreeSet<u64>,
    highest: Option<u64>,
}

impl Seen {
    fn fresh() -> Seen {
        let guid = uuid::Uuid::new_v4().to_string();
        Seen {
            // A GUID is always a valid header value.
            header: HeaderValue::from_str(&guid).unwrap_or(HeaderValue::from_static("")),
            ids: BTreeSet::new(),
            highest: None,
        }
    }
}

impl CurrentChannel {
    pub(super) fn new() -> Self {
        CurrentChannel(Mutex::new(Seen::fresh()))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Seen> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The channel a request goes out on now.
    pub(super) fn get(&self) -> HeaderValue {
        self.lock().header.clone()
    }

    /// Notes that HEC issued ack `id` to a request sent on `sent_on`.
    /// `Err` (why) when that request cannot be confirmed by its ack: the
    /// channel was given up meanwhile, or this id proves the indexer
    /// restarted (the channel is given up now). Send it again.
    pub(super) fn issued(&self, sent_on: &HeaderValue, id: u64) -> Result<(), String> {
        let mut seen = self.lock();
        if seen.header != *sent_on {
            return Err(
                "accepted on a channel given up since (the indexer restarted); \
                        sending again on the new channel"
                    .into(),
            );
        }
        let reissued = seen.ids.contains(&id)
            || seen
                .highest
                .is_some_and(|h| id.saturating_add(SEEN_WINDOW) < h);
        if reissued {
            *seen = Seen::fresh();
            return Err(format!(
                "HEC issued ack id {id} a second time on this channel: the indexer restarted \
                 (or a load balancer switched indexers); sending again on a new channel"
            ));
        }
        seen.ids.insert(id);
        if seen.highest.is_none_or(|h| id > h) {
            seen.highest = Some(id);
            let floor = id.saturating_sub(SEEN_WINDOW);
            seen.ids = seen.ids.split_off(&floor);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_in_any_order_keep_the_channel_and_a_reissued_one_changes_it() {
        let ch = CurrentChannel::new();
        let first = ch.get();
        for id in [1, 0, 2, 5, 3, 4, 9, 6] {
            assert_eq!(ch.issued(&first, id), Ok(()), "id {id}");
        }
        // A hole (an answer lost on the way) is not a reissue.
        assert_eq!(ch.issued(&first, 8), Ok(()));
        assert!(ch.issued(&first, 2).is_err(), "2 was issued before");
        let second = ch.get();
        assert_ne!(first, second);
        // What was sent on the old channel is sent again.
        assert!(ch.issued(&first, 7).is_err());
        assert_eq!(ch.issued(&second, 0), Ok(()));
        assert_eq!(ch.get(), second);
    }

    #[test]
    fn an_id_far_below_the_window_is_a_reissue() {
        let ch = CurrentChannel::new();
        let first = ch.get();
        for id in 0..=SEEN_WINDOW + 10 {
            assert_eq!(ch.issued(&first, id), Ok(()));
        }
        assert!(ch.issued(&first, 3).is_err());
        assert_ne!(ch.get(), first);
    }
}
