//! Generates realistic Veza-shaped audit events in-process, so the daemon
//! runs with zero setup and benchmarks have a source that is never the
//! bottleneck. Events are a pure function of their sequence number: a
//! restart from a checkpoint regenerates exactly the unconfirmed events.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde::{Deserialize, Serialize};

use super::{read_checkpoint, ManualPosition, Source, SourceContext, SourceType};
use crate::config::Problems;
use crate::event::{Batch, Event};
use crate::metrics::metrics;
use crate::serde_defaults::serde_defaults;

/// `[sources.NAME]` with `type = "demo"`.
#[derive(Clone, Debug, Deserialize)]
pub struct DemoConfig {
    /// Events per second; 0 = as fast as the sinks take them.
    #[serde(default = "default_rate")]
    pub rate: u64,
    /// Events per batch (page).
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Stop after this many events in total (across restarts); unset = forever.
    pub limit: Option<u64>,
}

serde_defaults! {
    fn default_rate() -> u64 = 5;
    fn default_batch_size() -> usize = 100;
}

impl SourceType for DemoConfig {
    const KIND: &'static str = "demo";

    fn validate(&self, path: &str, problems: &mut Problems) {
        if !(1..=100_000).contains(&self.batch_size) {
            problems.push(format!("{path}.batch_size"), "must be between 1 and 100000");
        }
    }

    /// `--token N`: the sequence number to continue at.
    fn manual_checkpoint(&self, at: ManualPosition) -> Result<Vec<u8>, String> {
        let ManualPosition::Token(token) = at else {
            return Err("the demo source has no time cursor; use --token <sequence number>".into());
        };
        let next = token
            .parse::<u64>()
            .map_err(|e| format!("--token must be a sequence number: {e}"))?;
        serde_json::to_vec(&State { next }).map_err(|e| e.to_string())
    }

    fn build(&self, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(DemoSource::new(self.clone(), ctx)?))
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
struct State {
    /// Sequence number of the next event to generate.
    next: u64,
}

pub struct DemoSource {
    name: Arc<str>,
    cfg: DemoConfig,
    next: u64,
    started: Instant,
    emitted_since_start: u64,
    epoch: DateTime<Utc>,
}

impl DemoSource {
    pub fn new(cfg: DemoConfig, ctx: SourceContext) -> anyhow::Result<Self> {
        let state: State = read_checkpoint(&ctx.name, ctx.checkpoint.as_deref(), "a demo cursor")?
            .unwrap_or_default();
        ctx.health.register(&format!("source.{}", ctx.name));
        Ok(DemoSource {
            name: ctx.name.as_str().into(),
            next: state.next,
            cfg,
            started: Instant::now(),
            emitted_since_start: 0,
            epoch: Utc
                .timestamp_opt(1_767_225_600, 0)
                .single()
                .unwrap_or_default(),
        })
    }
}

#[async_trait]
impl Source for DemoSource {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        let mut n = self.cfg.batch_size as u64;
        if let Some(limit) = self.cfg.limit {
            n = n.min(limit.saturating_sub(self.next));
            if n == 0 {
                return Ok(None);
            }
        }
        if self.cfg.rate > 0 {
            // Pace to `rate`: this batch may leave once the previous ones fit.
            let due =
                Duration::from_secs_f64(self.emitted_since_start as f64 / self.cfg.rate as f64);
            tokio::time::sleep_until((self.started + due).into()).await;
            n = n.min(self.cfg.rate.max(1));
        }
        let mut buf = Vec::with_capacity(n as usize * 900);
        let mut spans = Vec::with_capacity(n as usize);
        let mut times = Vec::with_capacity(n as usize);
        for seq in self.next..self.next + n {
            let start = buf.len();
            let time = self.epoch + chrono::Duration::milliseconds(seq as i64 * 250);
            write_event(&mut buf, seq, time)?;
            spans.push(start..buf.len());
            times.push(time);
        }
        let page = bytes::Bytes::from(buf);
        let events: Vec<Event> = spans
            .into_iter()
            .zip(times)
            .enumerate()
            .map(|(i, (span, time))| {
                let seq = self.next + i as u64;
                Event {
                    raw: page.slice(span),
                    id: Some(format!("demo-{seq:012}").into()),
                    time: Some(time),
                    kind: Some(ACTIONS[(mix(seq) % ACTIONS.len() as u64) as usize].1.into()),
                }
            })
            .collect();
        self.next += n;
        self.emitted_since_start += n;
        metrics()
            .events_fetched
            .with_label_values(&[&self.name])
            .inc_by(n);
        let newest_time = events.last().and_then(|e| e.time);
        let checkpoint = serde_json::to_vec(&State { next: self.next })?;
        Ok(Some(Batch {
            source: self.name.clone(),
            events,
            checkpoint: checkpoint.into(),
            newest_time,
            fetched_at: Instant::now(),
        }))
    }
}

/// The one event `auditrelay send-test` sends: demo-shaped, with an id and
/// type that say what it is.
pub fn send_test_event() -> Event {
    let now = Utc::now();
    let id = format!(
        "auditrelay-send-test-{}",
        now.timestamp_nanos_opt().unwrap_or_default()
    );
    let raw = serde_json::json!({
        "request_id": id,
        "endpoint": "auditrelay.send_test",
        "method": "POST",
        "identity": {"email": "auditrelay@localhost"},
        "status": {"grpc_code": "OK", "http_status": 200, "error_reason": "OK"},
        "client": {"ip": "127.0.0.1", "user_agent": concat!("auditrelay/", env!("CARGO_PKG_VERSION"))},
        "persisted_at": now.to_rfc3339_opts(SecondsFormat::Nanos, true),
        "message": "synthetic event sent by `auditrelay send-test`",
    });
    Event {
        raw: serde_json::to_vec(&raw).unwrap_or_default().into(),
        id: Some(id.into()),
        time: Some(now),
        kind: Some("auditrelay.send_test".into()),
    }
}

const USERS: &[(&str, &str)] = &[
    ("aeaa34cf-e97f-4315-b185-249018cf191c", "cookie@cookie.ai"),
    (
        "0b6f1c2e-8d1a-4f57-9a43-3c1d5e7f9a10",
        "ana.lópez@example.com",
    ),
    (
        "5f2d7e91-3b4c-4e8a-b1f0-6a9c8d7e5f43",
        "jürgen.o'neil@example.de",
    ),
    (
        "9c8b7a65-4d3e-4f21-8a09-b8c7d6e5f4a3",
        "svc-terraform@example.com",
    ),
    ("1a2b3c4d-5e6f-4a7b-8c9d-0e1f2a3b4c5d", "李雷@example.cn"),
];

const ACTIONS: &[(&str, &str, &str)] = &[
    (
        "POST",
        "/api_protos.v1.APIKeyService/CreateAPIKey",
        "/api/preview/keys",
    ),
    (
        "GET",
        "/api_protos.v1.QueryService/RunQuery",
        "/api/v1/assessments/query_spec:nodes",
    ),
    (
        "DELETE",
        "/api_protos.v1.UserService/DeleteUser",
        "/api/preview/users",
    ),
    (
        "POST",
        "/api_protos.v1.AuthService/Login",
        "/api/auth/login",
    ),
    (
        "PUT",
        "/api_protos.v1.PolicyService/UpdatePolicy",
        "/api/preview/policies",
    ),
];

const AGENTS: &[&str] = &[
    "Mozilla/5.0 (Macintosh; Intel Mac OS X 10_15_7) AppleWebKit/537.36 (KHTML, like Gecko) Chrome/115.0.0.0 Safari/537.36",
    "terraform-provider-veza/1.4.2 (+https://registry.terraform.io)",
    "python-requests/2.31.0",
    "curl/8.4.0",
];

/// A cheap deterministic hash so fields vary but replay identically.
fn mix(seq: u64) -> u64 {
    let mut x = seq.wrapping_add(0x9E37_79B9_7F4A_7C15);
    x = (x ^ (x >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    x ^ (x >> 31)
}

fn write_event(buf: &mut Vec<u8>, seq: u64, time: DateTime<Utc>) -> anyhow::Result<()> {
    let h = mix(seq);
    let (user_id, email) = USERS[(h % USERS.len() as u64) as usize];
    let (method, endpoint, url) = ACTIONS[(h % ACTIONS.len() as u64) as usize];
    let agent = AGENTS[((h >> 8) % AGENTS.len() as u64) as usize];
    let failed = (h >> 16).is_multiple_of(10);
    let (grpc, http, reason) = if failed {
        (
            "PERMISSION_DENIED",
            403,
            "user lacks role \"admin\"\nrequested by policy [p-1]",
        )
    } else {
        ("OK", 200, "OK")
    };
    let ip = format!(
        "10.{}.{}.{}",
        (h >> 24) & 0xff,
        (h >> 32) & 0xff,
        ((h >> 40) & 0xfe) + 1
    );
    let ended = time.to_rfc3339_opts(SecondsFormat::Nanos, true);
    let started =
        (time - chrono::Duration::milliseconds(16)).to_rfc3339_opts(SecondsFormat::Nanos, true);
    let event = serde_json::json!({
        "identity": {"user_id": user_id, "session_id": format!("{:016x}", h), "api_key_id": "", "email": email},
        "status": {"grpc_code": grpc, "http_status": http, "error_reason": reason},
        "client": {"ip": ip, "user_agent": agent},
        "endpoint": endpoint,
        "method": method,
        "url": url,
        "request_id": format!("demo-{seq:012}"),
        "request": {"name": format!("Key \"{}\" \\ {}", seq % 97, if seq.is_multiple_of(7) { "naïve ☃" } else { "plain" })},
        "started_at": started,
        "ended_at": ended,
        "persisted_at": ended,
    });
    serde_json::to_writer(&mut *buf, &event)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;

    fn source(checkpoint: Option<Vec<u8>>, limit: Option<u64>) -> DemoSource {
        DemoSource::new(
            DemoConfig {
                rate: 0,
                batch_size: 10,
                limit,
            },
            SourceContext {
                name: "demo".into(),
                checkpoint,
                health: Health::default(),
                state_dir: std::env::temp_dir(),
            },
        )
        .unwrap()
    }

    #[tokio::test]
    async fn events_are_valid_json_and_replay_identically_from_a_checkpoint() {
        let mut a = source(None, Some(25));
        let b1 = a.next_batch().await.unwrap().unwrap();
        let b2 = a.next_batch().await.unwrap().unwrap();
        for e in b1.events.iter().chain(&b2.events) {
            let v: serde_json::Value = serde_json::from_slice(&e.raw).unwrap();
            assert_eq!(v["request_id"].as_str(), e.id.as_deref());
        }
        let mut resumed = source(Some(b1.checkpoint.to_vec()), Some(25));
        let again = resumed.next_batch().await.unwrap().unwrap();
        assert_eq!(again.events[0].raw, b2.events[0].raw);
        assert_eq!(a.next_batch().await.unwrap().unwrap().events.len(), 5);
        assert!(a.next_batch().await.unwrap().is_none());
    }
}
