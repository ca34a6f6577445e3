//! Requests a sink reported pending before a restart (HEC: accepted, ack
//! not yet read): before the refetched pages are planned, each sink is
//! asked which of them its destination confirms now
//! ([`Sink::resolve_pending`]); the events of those count as confirmed by
//! it, the rest are sent again.
//!
//! What is asked is chosen so that no answer can skip an event the sink
//! does not have: a pending record whose events the sink confirmed anyway
//! is not asked about (its `true` would count them twice); a token claimed
//! for two different sets of events (an ack id the destination issued
//! again after its restart) is not trusted for either; a run sent several
//! times (resent after `ack_timeout`, with a new token each time) is one
//! question with several tokens, and confirmed once if any reads true.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use crate::checkpoint::{EventKey, PendingRecord, ProgressRecord};
use crate::sink::{PendingRequest, Sink};

/// The events of one run sent to `sink` with any of `tokens`.
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Question {
    pub sink: String,
    pub keys: Vec<EventKey>,
    pub tokens: Vec<PendingRequest>,
}

/// The questions worth asking about `pending`, given what each sink
/// confirmed (`confirmed`: per sink, the keys and their counts).
pub(super) fn questions(
    pending: Vec<PendingRecord>,
    confirmed: &HashMap<Arc<str>, HashMap<EventKey, u32>>,
) -> Vec<Question> {
    let covered = |r: &PendingRecord| {
        confirmed
            .get(r.sink.as_str())
            .is_some_and(|c| r.keys.iter().all(|k| c.get(k).is_some_and(|n| *n > 0)))
    };
    let pending: Vec<PendingRecord> = pending.into_iter().filter(|r| !covered(r)).collect();
    let mut claims: HashMap<(&str, &[u8]), HashSet<&[EventKey]>> = HashMap::new();
    for r in &pending {
        claims
            .entry((&r.sink, &r.token))
            .or_default()
            .insert(&r.keys);
    }
    let ambiguous: HashSet<(String, Vec<u8>)> = claims
        .into_iter()
        .filter(|(_, runs)| runs.len() > 1)
        .map(|((sink, token), _)| (sink.to_string(), token.to_vec()))
        .collect();
    let mut out: Vec<Question> = Vec::new();
    let mut by_run: HashMap<(String, Vec<EventKey>), usize> = HashMap::new();
    for r in pending {
        if r.keys.is_empty() || ambiguous.contains(&(r.sink.clone(), r.token.clone())) {
            continue;
        }
        let request = PendingRequest {
            token: r.token,
            sent: UNIX_EPOCH + Duration::from_millis(r.sent_ms),
        };
        let at = *by_run
            .entry((r.sink.clone(), r.keys.clone()))
            .or_insert_with(|| {
                out.push(Question {
                    sink: r.sink,
                    keys: r.keys,
                    tokens: Vec::new(),
                });
                out.len() - 1
            });
        let tokens = &mut out[at].tokens;
        if !tokens.iter().any(|t| t.token == request.token) {
            tokens.push(request);
        }
    }
    out
}

/// Asks each sink about its questions (all sinks at once); the events of
/// the questions confirmed, as confirmations.
pub(super) async fn ask(
    questions: Vec<Question>,
    sinks: &HashMap<Arc<str>, Arc<dyn Sink>>,
) -> Vec<ProgressRecord> {
    let mut per_sink: HashMap<&str, Vec<&Question>> = HashMap::new();
    for q in &questions {
        per_sink.entry(&q.sink).or_default().push(q);
    }
    let asks = per_sink.into_iter().filter_map(|(name, qs)| {
        let sink = sinks.get(name)?.clone();
        Some(async move {
            let requests: Vec<PendingRequest> =
                qs.iter().flat_map(|q| q.tokens.iter().cloned()).collect();
            let answers = sink.resolve_pending(&requests).await;
            let mut answers = answers.into_iter();
            let mut confirmed = Vec::new();
            for q in qs {
                // A short answer list means "not confirmed" for the rest.
                let yes =
                    (0..q.tokens.len()).fold(false, |yes, _| answers.next().unwrap_or(false) | yes);
                if yes {
                    confirmed.push(ProgressRecord {
                        sink: q.sink.clone(),
                        keys: q.keys.clone(),
                    });
                }
            }
            confirmed
        })
    });
    futures_util::future::join_all(asks)
        .await
        .into_iter()
        .flatten()
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(sink: &str, token: &str, keys: &[u8]) -> PendingRecord {
        PendingRecord {
            sink: sink.into(),
            token: token.as_bytes().to_vec(),
            sent_ms: 1000,
            keys: keys.iter().map(|b| [*b; 16]).collect(),
        }
    }

    fn tokens(q: &Question) -> Vec<&[u8]> {
        q.tokens.iter().map(|t| t.token.as_slice()).collect()
    }

    #[test]
    fn a_run_sent_twice_is_one_question_and_what_is_confirmed_is_not_asked() {
        let confirmed: HashMap<Arc<str>, HashMap<EventKey, u32>> =
            HashMap::from([("hec".into(), HashMap::from([([9u8; 16], 1)]))]);
        let qs = questions(
            vec![
                rec("hec", "c/1", &[1, 2]),
                rec("hec", "c/5", &[1, 2]),
                rec("hec", "c/1", &[1, 2]),
                rec("hec", "c/2", &[9]),
                rec("other", "c/2", &[9]),
            ],
            &confirmed,
        );
        assert_eq!(qs.len(), 2, "{qs:?}");
        assert_eq!(
            (qs[0].sink.as_str(), tokens(&qs[0])),
            ("hec", vec![&b"c/1"[..], b"c/5"])
        );
        assert_eq!(qs[0].keys, vec![[1u8; 16], [2u8; 16]]);
        assert_eq!(
            (qs[1].sink.as_str(), tokens(&qs[1])),
            ("other", vec![&b"c/2"[..]])
        );
        assert_eq!(qs[0].tokens[0].sent, UNIX_EPOCH + Duration::from_secs(1));
    }

    #[test]
    fn a_token_claimed_for_two_different_runs_is_trusted_for_neither() {
        // The destination restarted and issued ack id 3 again on the
        // channel: its `true` may be either run's.
        let qs = questions(
            vec![
                rec("hec", "c/3", &[1]),
                rec("hec", "c/3", &[2]),
                rec("hec", "c/4", &[2]),
            ],
            &HashMap::new(),
        );
        assert_eq!(qs.len(), 1, "{qs:?}");
        assert_eq!(qs[0].keys, vec![[2u8; 16]]);
        assert_eq!(tokens(&qs[0]), vec![&b"c/4"[..]]);
    }
}
