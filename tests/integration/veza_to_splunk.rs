//! The real binary from the Veza export fake to the Splunk HEC fake, with
//! indexer acknowledgment, lost and late acks, busy answers, a rejected
//! event, a wrong token fixed while running, and secrets kept out of logs.

use crate::support;

use std::collections::HashSet;
use std::time::Duration;

use support::daemon::{free_port, http_get, Daemon};
use support::hec_fake::{HecFake, HecFakeConfig, HecFaults};
use support::veza_fake::{Faults, TokenAtEnd, VezaFake, VezaFakeConfig};

const VEZA_TOKEN: &str = "veza-SECRET-token-0a1b2c";
const HEC_TOKEN: &str = "5e4d3c2b-SECRET-4a5b-8c9d-0e1f2a3b4c5d";
const WRONG_HEC_TOKEN: &str = "wrong-SECRET-hec-token-77";

fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(-1.0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_id_reaches_splunk_with_indexer_ack_and_no_secret_is_logged() {
    let total = 1500;
    let veza = VezaFake::start(VezaFakeConfig {
        api_token: VEZA_TOKEN.into(),
        initial_events: total,
        total_events: total,
        seed: 21,
        default_wait: Duration::from_secs(1),
        // The real API's harsh sides: a clamp below `page_size`, no next
        // token at the end of the log, empty request ids.
        max_page_size: 37,
        token_at_end: TokenAtEnd::Missing,
        empty_id_every: 9,
        faults: Faults {
            server_error: 0.05,
            rate_limit: 0.03,
            ..Faults::none()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let ids = veza.all_ids();
    let rejected = ids[700].clone();
    let hec = HecFake::start(HecFakeConfig {
        token: HEC_TOKEN.into(),
        // The request id may be empty: tell events apart by `fake_ref`.
        id_field: "fake_ref".into(),
        ack: true,
        seed: 5,
        faults: HecFaults {
            ack_delay: Duration::from_millis(100),
            lose: 0.2,
            busy: 0.1,
            reject_ids: [rejected.clone()].into_iter().collect(),
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();

    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    std::fs::write(p("veza_token"), VEZA_TOKEN).unwrap();
    std::fs::write(p("hec_token"), format!("{WRONG_HEC_TOKEN}\n")).unwrap();
    let port = free_port();
    let config = p("auditrelay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
state_dir = "{state}"
log_format = "json"
shutdown_timeout = "20s"
[server]
listen = "127.0.0.1:{port}"
[sources.veza]
type = "veza"
url = "{veza}"
token_file = "{dir}/veza_token"
page_size = 100
start_at = "-24h"
poll_interval = "50ms"
rate_limit_wait = "1s"
rate_limit_jitter = "100ms"
retry = {{ initial = "20ms", max = "300ms" }}
[sinks.splunk]
type = "splunk_hec"
inputs = ["veza"]
endpoint = "{hec}"
token_file = "{dir}/hec_token"
sourcetype = "veza:audit"
index = "security"
indexer_ack = true
ack_poll_interval = "50ms"
ack_timeout = "1s"
auth_retry = "200ms"
health_check_interval = "200ms"
concurrency = 4
batch = {{ max_events = 50 }}
retry = {{ initial = "20ms", max = "300ms" }}
"#,
            state = p("state").display(),
            dir = dir.path().display(),
            veza = veza.url(),
            hec = hec.url(),
        ),
    )
    .unwrap();
    let mut daemon = Daemon::spawn(&config, &p("daemon.log"));

    // The wrong token: nothing indexed, /readyz says why.
    assert!(
        hec.wait_until(Duration::from_secs(30), |s| s.auth_failures >= 3)
            .await
    );
    assert_eq!(hec.unique_count(), 0);
    let readyz = format!("http://127.0.0.1:{port}/readyz");
    let (status, body) = http_get(&readyz).await.expect("readyz");
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("sink.splunk") && body.contains("Invalid token"),
        "{body}"
    );

    // Fixed while running: picked up without a restart.
    std::fs::write(p("hec_token"), HEC_TOKEN).unwrap();
    if !hec
        .wait_for_unique(total - 1, Duration::from_secs(120))
        .await
    {
        let log = std::fs::read_to_string(p("daemon.log")).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        panic!(
            "only {} of {} ids indexed; {:?}\n{}",
            hec.unique_count(),
            total - 1,
            hec.stats(),
            tail.join("\n")
        );
    }
    let indexed: HashSet<String> = hec.unique_ids().into_iter().collect();
    let missing: Vec<&String> = ids.iter().filter(|id| !indexed.contains(*id)).collect();
    assert_eq!(
        missing,
        vec![&rejected],
        "exactly the rejected id is missing"
    );

    // The rejected event is in the dead-letter file with HEC's reason.
    let dead = std::fs::read_to_string(p("state/dead_letter/splunk.ndjson")).unwrap();
    let rows: Vec<serde_json::Value> = dead
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert!(!rows.is_empty());
    assert!(rows.iter().all(|r| r["id"] == rejected.as_str()));
    assert_eq!(
        rows[0]["error"],
        "HEC code 6: Invalid data format (HTTP 400)"
    );

    let stats = hec.stats();
    assert!(stats.lost_requests > 0 && stats.busy > 0, "{stats:?}");
    let envelope = &hec.indexed()[0].envelope;
    assert_eq!(envelope["sourcetype"], "veza:audit");
    assert_eq!(envelope["source"], "veza");
    assert!(envelope["time"].is_f64(), "{envelope}");

    let (status, _) = http_get(&readyz).await.expect("readyz");
    assert_eq!(status, 200);
    let (_, metrics) = http_get(&format!("http://127.0.0.1:{port}/metrics"))
        .await
        .expect("metrics");
    assert!(
        metric(
            &metrics,
            "auditrelay_hec_requests_total{code=\"0\",endpoint=\"event\",sink=\"splunk\"}"
        ) > 0.0
    );
    assert!(
        metric(
            &metrics,
            "auditrelay_hec_requests_total{code=\"4\",endpoint=\"event\",sink=\"splunk\"}"
        ) > 0.0
    );
    assert!(
        metric(
            &metrics,
            "auditrelay_hec_ack_timeouts_total{sink=\"splunk\"}"
        ) > 0.0
    );
    assert!(
        metric(
            &metrics,
            "auditrelay_hec_ack_latency_seconds_count{sink=\"splunk\"}"
        ) > 0.0
    );
    assert!(
        metric(
            &metrics,
            "auditrelay_events_dead_lettered_total{sink=\"splunk\",source=\"veza\"}"
        ) >= 1.0
    );

    let status = daemon
        .terminate(Duration::from_secs(30))
        .await
        .expect("exit after SIGTERM");
    assert!(status.success(), "{status:?}");
    let log = std::fs::read_to_string(p("daemon.log")).unwrap();
    assert!(
        log.contains("HEC refuses the token"),
        "auth failure not logged"
    );
    for secret in [VEZA_TOKEN, HEC_TOKEN, WRONG_HEC_TOKEN] {
        assert!(!log.contains(secret), "{secret} leaked into the log");
        assert!(!metrics.contains(secret), "{secret} leaked into metrics");
    }
}
