//! What HEC's answers mean: its JSON reply, and how an answer to an event
//! or ack request is classified by HEC code and HTTP status.

use std::collections::HashMap;
use std::time::Duration;

use serde::Deserialize;

use crate::sink::delivery::snippet;

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

#[cfg(test)]
mod tests {
    use super::*;

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
