//! Whether HEC can take events before any is sent: its health endpoint,
//! and a probe of the token and the `indexer_ack` setting, at startup and
//! every `health_check_interval` (the probe while something is wrong).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use reqwest::header::CONTENT_TYPE;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error};

use super::answer::{classify, Answer, HecReply};
use super::auth::Scope;
use super::inner::{Inner, Trouble, CHANNEL_HEADER};
use crate::sink::delivery::{snippet, Sent};

impl Inner {
    /// `GET /services/collector/health`: 200 (code 17) healthy; 503 with
    /// codes 18-20 unhealthy; a 404 means the endpoint has no health check
    /// (a proxy, an old Splunk), which is not the sink's problem. Behind
    /// an OAuth2 gateway it carries the access token like every request.
    pub(super) async fn check_health(&self) {
        let request = || self.client.get(self.health_url.clone());
        let (status, body) = match self.auth.send(Scope::Health, request).await {
            Ok(Sent::Answer { status, body, .. }) => (status, body.unwrap_or_default()),
            Ok(Sent::Redirect { why, label }) => {
                self.count("health", &label);
                let why = format!("HEC health check failed: {why}");
                self.delivery.readiness.set(Trouble::Health, why);
                return;
            }
            Ok(Sent::NoAnswer(why)) => {
                self.count("health", "network");
                let why = format!("HEC health check failed: {why}");
                self.delivery.readiness.set(Trouble::Health, why);
                return;
            }
            Err(why) => {
                self.delivery.readiness.set(Trouble::Token, why);
                return;
            }
        };
        let reply: Option<HecReply> = serde_json::from_slice(&body).ok();
        let code = reply.as_ref().and_then(|r| r.code);
        self.count(
            "health",
            &code.map_or_else(|| format!("http_{status}"), |c| c.to_string()),
        );
        if (200..300).contains(&status) || status == 404 {
            if status == 404 {
                debug!(sink = %self.delivery.name, "HEC has no health endpoint; relying on requests");
            }
            self.delivery.readiness.clear(&[Trouble::Health]);
        } else {
            let text = match &reply {
                Some(HecReply {
                    text: Some(t),
                    code: Some(c),
                    ..
                }) => format!("HEC code {c}: {t}"),
                _ => snippet(&body, 200),
            };
            self.delivery.readiness.set(
                Trouble::Health,
                format!("HEC reports unhealthy (HTTP {status}: {text})"),
            );
        }
    }

    /// Checks the token and the `indexer_ack` setting without sending an
    /// event: an empty request is answered with code 5 ("No data") once
    /// both are right. True when the answer was conclusive.
    pub(super) async fn probe(&self) -> bool {
        // An event-endpoint request like any other: one permit, no request
        // while HEC asked for a pause.
        let Ok(_permit) = self.permits.acquire().await else {
            return false;
        };
        let paused = *self.paused_until.lock().unwrap_or_else(|p| p.into_inner());
        if paused.is_some_and(|t| t > Instant::now()) {
            return false;
        }
        let request = || {
            let req = self
                .client
                .post(self.event_url.clone())
                .header(CONTENT_TYPE, "application/json");
            let req = if self.cfg.indexer_ack {
                req.header(CHANNEL_HEADER, self.channel.get())
            } else {
                req
            };
            req.body(Vec::new())
        };
        let sent = match self.auth.send(Scope::Hec, request).await {
            Ok(sent) => sent,
            Err(why) => {
                self.delivery.readiness.set(Trouble::Token, why);
                return true;
            }
        };
        let (status, retry_after, body) = match sent {
            Sent::Answer {
                status,
                retry_after,
                body,
            } => (status, retry_after, body.unwrap_or_default()),
            Sent::Redirect { why, label } => {
                self.count("event", &label);
                error!(sink = %self.delivery.name, error = %why, "HEC endpoint redirects; check endpoint and follow_redirects");
                self.delivery.readiness.set(Trouble::Endpoint, why);
                return true;
            }
            Sent::NoAnswer(why) => {
                self.count("event", "network");
                debug!(sink = %self.delivery.name, error = %why, "HEC probe got no answer");
                return false;
            }
        };
        let (label, answer) = classify(status, retry_after, &body);
        self.count("event", &label);
        self.pause_for(&answer);
        match answer {
            Answer::Reject(..) | Answer::Accepted { .. } => {
                // The token is fine; without acks, so is sending no channel.
                // With acks, only the ack endpoint can tell (below).
                self.delivery
                    .readiness
                    .clear(&[Trouble::Token, Trouble::Endpoint]);
                if !self.cfg.indexer_ack {
                    self.delivery.readiness.clear(&[Trouble::AckSetting]);
                }
            }
            Answer::Token(why) => {
                let (refusal, check) = (self.auth.refusal(), self.auth.describe());
                let reason = format!("{refusal} ({why}); check {check}");
                error!(sink = %self.delivery.name, error = %why, "{refusal}; check {check}");
                self.delivery.readiness.set(Trouble::Token, reason);
                return true;
            }
            Answer::AckSetting(why) => {
                error!(sink = %self.delivery.name, error = %why, "config error: indexer_ack does not match the HEC token");
                self.delivery.readiness.set(Trouble::AckSetting, why);
                return true;
            }
            Answer::Endpoint(why) => {
                error!(sink = %self.delivery.name, error = %why, "HEC endpoint does not answer like HEC; check endpoint");
                self.delivery.readiness.set(Trouble::Endpoint, why);
                return true;
            }
            Answer::Retry(..) => return false,
        }
        // With acknowledgment, also ask the ack endpoint: a token with
        // acknowledgment off answers code 14. Only before the first event
        // request, when id 0 cannot be a real request's; the gate keeps
        // event requests back until the answer is in (an ack reads true
        // only once: this question would take a request's `true`).
        let _gate = self.id0_gate.write().await;
        if self.cfg.indexer_ack && !self.sent_any.load(Ordering::Acquire) {
            let sent = self
                .ack_query(bytes::Bytes::from_static(b"{\"acks\":[0]}"))
                .await;
            let (status, body) = match sent {
                Ok(Sent::Answer { status, body, .. }) => (status, body.unwrap_or_default()),
                Ok(Sent::Redirect { label, .. }) => {
                    self.count("ack", &label);
                    return true;
                }
                Ok(Sent::NoAnswer(_)) | Err(_) => return false,
            };
            if status == 200 {
                self.count("ack", "0");
                self.delivery
                    .readiness
                    .clear(&[Trouble::AckSetting, Trouble::AckMissing]);
            } else {
                let (label, answer) = classify(status, None, &body);
                self.count("ack", &label);
                if let Answer::AckSetting(why) = answer {
                    error!(sink = %self.delivery.name, error = %why, "config error: indexer_ack does not match the HEC token");
                    self.delivery.readiness.set(Trouble::AckSetting, why);
                }
            }
        }
        true
    }
}

/// The startup check, then a health check every `health_check_interval`;
/// the token/ack probe runs again while it or a request found a problem.
pub(super) async fn health_loop(inner: Arc<Inner>, stop: CancellationToken) {
    let mut probe_due = true;
    loop {
        let round = async {
            inner.check_health().await;
            if probe_due
                || inner.delivery.readiness.has_any(&[
                    Trouble::Token,
                    Trouble::AckSetting,
                    Trouble::Endpoint,
                ])
            {
                if !probe_due {
                    inner.reload_token();
                }
                probe_due = !inner.probe().await;
            }
        };
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = round => {}
        }
        inner.warmed.send_replace(true);
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(inner.cfg.health_check_interval) => {}
        }
    }
}
