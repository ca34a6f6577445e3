//! Event requests: one POST of envelopes, HEC's answer classified, and the
//! [`RetryLogic`] the shared delivery loop drives (acks, Retry-After pauses
//! for the whole sink, token and `indexer_ack` troubles).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use reqwest::header::{AUTHORIZATION, CONTENT_ENCODING, CONTENT_TYPE};
use serde::Deserialize;
use tracing::error;

use super::acks::RequestAcks;
use super::config::Compression;
use super::encode::Encoded;
use super::{Inner, Trouble, CHANNEL_HEADER};
use crate::event::Event;
use crate::sink::delivery::{send_http, server_wait, snippet, RetryLogic, Run, Sent, Verdict};

/// HEC's JSON answer to an event or ack request.
#[derive(Debug, Default, Deserialize)]
pub(super) struct HecReply {
    pub(super) text: Option<String>,
    pub(super) code: Option<i64>,
    #[serde(rename = "ackId")]
    pub(super) ack_id: Option<u64>,
    #[serde(rename = "invalid-event-number")]
    pub(super) invalid_event: Option<usize>,
    pub(super) acks: Option<HashMap<String, bool>>,
}

/// How one event request ended.
pub(super) enum Answer {
    Accepted {
        ack_id: Option<u64>,
    },
    Retry(String, Option<Duration>),
    /// The token is refused (codes 1-4): retry slowly, re-read the token.
    Token(String),
    /// `indexer_ack` does not match the token (codes 10, 11, 14).
    AckSetting(String),
    /// Not HEC's answer, or a wrong path: retry slowly, report not ready.
    Endpoint(String),
    /// Events are unacceptable: split, then dead-letter the lone rejected one.
    Reject(String, Option<usize>),
}

pub(super) fn classify(
    status: u16,
    retry_after: Option<Duration>,
    body: &[u8],
) -> (String, Answer) {
    let reply: Option<HecReply> = serde_json::from_slice(body).ok();
    let code = reply.as_ref().and_then(|r| r.code);
    let label = match code {
        Some(c) => c.to_string(),
        None => format!("http_{status}"),
    };
    let why = match (&reply, code) {
        (Some(r), Some(c)) => format!(
            "HEC code {c}: {} (HTTP {status})",
            r.text.as_deref().unwrap_or("")
        ),
        _ => format!("HTTP {status}: {}", snippet(body, 200)),
    };
    let invalid = reply.as_ref().and_then(|r| r.invalid_event);
    let answer = match code {
        Some(0) if (200..300).contains(&status) => Answer::Accepted {
            ack_id: reply.and_then(|r| r.ack_id),
        },
        Some(1..=4) => Answer::Token(why),
        Some(5 | 6 | 7 | 12 | 13 | 15) => Answer::Reject(why, invalid),
        Some(8 | 9 | 18..=20) => Answer::Retry(why, retry_after),
        Some(10) => Answer::AckSetting(format!(
            "{why}: the HEC token requires indexer acknowledgment; set indexer_ack = true \
             on this sink (or turn acknowledgment off on the token)"
        )),
        Some(11) => Answer::AckSetting(format!(
            "{why}: HEC refused the request channel; indexer_ack must match the token's \
             indexer acknowledgment setting (toggle indexer_ack)"
        )),
        Some(14) => Answer::AckSetting(format!(
            "{why}: the HEC token has indexer acknowledgment off; set indexer_ack = false \
             on this sink (or turn acknowledgment on for the token)"
        )),
        _ => match status {
            408 | 429 | 500..=599 => Answer::Retry(why, retry_after),
            401 | 403 => Answer::Token(why),
            413 => Answer::Reject(why, None),
            200..=299 => {
                Answer::Endpoint(format!("{why}: the answer is not HEC's; check endpoint"))
            }
            _ => Answer::Endpoint(format!("{why}; check endpoint")),
        },
    };
    (label, answer)
}

/// The troubles a confirmed request proves gone: the token and endpoint
/// always; the `indexer_ack` setting when the answer carried an ack id (or
/// acknowledgment is off).
const FIXED_ALL: &[Trouble] = &[
    Trouble::Token,
    Trouble::Endpoint,
    Trouble::AckSetting,
    Trouble::AckMissing,
];
const FIXED_TOKEN_ENDPOINT: &[Trouble] = &[Trouble::Token, Trouble::Endpoint];

impl Inner {
    /// One POST of envelopes to the event endpoint.
    pub(super) async fn post_events(&self, body: Bytes) -> Answer {
        let Some(auth) = self.auth() else {
            return Answer::Token("the token holds characters an HTTP header cannot carry".into());
        };
        let body = if self.cfg.compression == Compression::Gzip {
            match tokio::task::spawn_blocking(move || crate::format::gzip(&body)).await {
                Ok(Ok(b)) => Bytes::from(b),
                Ok(Err(e)) => return Answer::Retry(format!("gzip failed: {e}"), None),
                Err(e) => return Answer::Retry(format!("gzip task failed: {e}"), None),
            }
        } else {
            body
        };
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
        self.sent_any.store(true, Ordering::Relaxed);
        let mut req = self
            .client
            .post(self.event_url.clone())
            .header(AUTHORIZATION, auth)
            .header(CONTENT_TYPE, "application/json");
        if self.cfg.compression == Compression::Gzip {
            req = req.header(CONTENT_ENCODING, "gzip");
        }
        if self.cfg.indexer_ack {
            req = req.header(CHANNEL_HEADER, self.channel.clone());
        }
        let _in_flight = self.posts.begin();
        let (status, retry_after, answer) = match send_http(req.body(body)).await {
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
        let (label, answer) = classify(status, retry_after, &answer);
        self.count("event", &label);
        if let (true, Answer::Accepted { ack_id: Some(id) }) = (self.cfg.indexer_ack, &answer) {
            self.note_issued(*id);
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

/// The requests of one `deliver` call: its envelopes, sent by run.
pub(super) struct EventRequests<'a> {
    pub(super) inner: &'a Inner,
    pub(super) enc: &'a Encoded,
}

#[async_trait]
impl RetryLogic for EventRequests<'_> {
    type Trouble = Trouble;
    /// The ack ids of earlier sends of the run: any may still confirm it.
    type Memory = RequestAcks;

    async fn attempt(
        &self,
        _source: &str,
        _events: &[Event],
        run: Run,
        acks: &mut RequestAcks,
    ) -> Verdict<Trouble> {
        let inner = self.inner;
        if acks.confirmed() {
            return Verdict::Confirmed { fixed: FIXED_ALL };
        }
        match inner.post_events(self.enc.body(&run)).await {
            Answer::Accepted { ack_id } => inner.accepted(acks, ack_id).await,
            Answer::Retry(why, after) => Verdict::Retry { why, after },
            Answer::Token(why) => Verdict::AuthWait {
                trouble: Trouble::Token,
                reason: format!(
                    "HEC refuses the token ({why}); put a valid, enabled token in {} \
                     (re-read before every retry)",
                    inner.token_source.describe()
                ),
                log: format!(
                    "HEC refuses the token; check the token in {}",
                    inner.token_source.describe()
                ),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A Retry-After of u64::MAX seconds is a number HEC (or a proxy in
    /// front of it) can send: the sink-wide pause must neither overflow
    /// (a panic from network input) nor last for ever.
    #[tokio::test]
    async fn a_huge_retry_after_pauses_the_sink_for_a_bounded_time() {
        use figment::providers::Format;
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "t0k3n").unwrap();
        let toml = |text: String| figment::Figment::from(figment::providers::Toml::string(&text));
        let cfg: super::super::SplunkHecConfig = toml(format!(
            "endpoint = \"http://127.0.0.1:1\"\ntoken_file = \"{}\"",
            token.display()
        ))
        .extract()
        .unwrap();
        let common: crate::sink::SinkCommon = toml("inputs = []".into()).extract().unwrap();
        let health = crate::health::Health::default();
        let sink = super::super::SplunkHecSink::new(
            cfg,
            &common,
            crate::sink::SinkContext {
                name: "hec_huge_retry_after".into(),
                state_dir: dir.path().to_path_buf(),
                health: health.clone(),
                dead_letters: crate::sink::DeadLetters::new(dir.path(), "hec_huge_retry_after"),
            },
        )
        .unwrap();
        let inner = &sink.inner;
        inner.pause_for(&Answer::Retry(
            "HTTP 429".into(),
            Some(Duration::from_secs(u64::MAX)),
        ));
        let until = inner.paused_until.lock().unwrap().expect("paused");
        let longest = crate::sink::delivery::LONGEST_RETRY_AFTER;
        assert!(
            until <= Instant::now() + longest,
            "paused beyond {longest:?}"
        );
        assert!(until > Instant::now(), "Retry-After not honoured at all");
    }

    #[test]
    fn answers_by_hec_code_and_http_status() {
        let c = |status, body: &str| classify(status, None, body.as_bytes());
        assert!(matches!(
            c(200, r#"{"text":"Success","code":0,"ackId":7}"#).1,
            Answer::Accepted { ack_id: Some(7) }
        ));
        assert!(matches!(
            c(200, r#"{"text":"Success","code":0}"#).1,
            Answer::Accepted { ack_id: None }
        ));
        let (label, a) = c(503, r#"{"text":"Server is busy","code":9}"#);
        assert_eq!(label, "9");
        assert!(matches!(a, Answer::Retry(..)));
        assert!(matches!(
            c(403, r#"{"text":"Invalid token","code":4}"#).1,
            Answer::Token(_)
        ));
        match c(
            400,
            r#"{"text":"Invalid data format","code":6,"invalid-event-number":3}"#,
        )
        .1
        {
            Answer::Reject(why, Some(3)) => {
                assert_eq!(why, "HEC code 6: Invalid data format (HTTP 400)")
            }
            _ => panic!("code 6 must reject"),
        }
        match c(400, r#"{"text":"Data channel is missing","code":10}"#).1 {
            Answer::AckSetting(why) => assert!(why.contains("indexer_ack = true")),
            _ => panic!("code 10 is an ack setting problem"),
        }
        match c(400, r#"{"text":"ACK is disabled","code":14}"#).1 {
            Answer::AckSetting(why) => assert!(why.contains("indexer_ack = false")),
            _ => panic!("code 14 is an ack setting problem"),
        }
        let (label, a) = c(502, "<html>bad gateway</html>");
        assert_eq!(label, "http_502");
        assert!(matches!(a, Answer::Retry(..)));
        assert!(matches!(c(413, "too large").1, Answer::Reject(_, None)));
        assert!(matches!(c(200, "<html>ok</html>").1, Answer::Endpoint(_)));
        assert!(matches!(c(404, "not found").1, Answer::Endpoint(_)));
    }
}
