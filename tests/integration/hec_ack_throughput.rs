//! Throughput of the real binary from the Veza fake into the HEC fake with
//! indexer acknowledgment, against ack latency. A measurement, not a test:
//! ignored by default, run alone with
//!
//!     cargo test --release --test integration -- --ignored --nocapture hec_ack_throughput::
//!
//! Every acknowledgment reads true exactly `latency` after its request.
//! The sink keeps every key at its default (`ack_first_poll` 100 ms,
//! `ack_poll_interval` 10 s, `concurrency` 1, 1000-event requests; set
//! `HEC_ACK_BENCH_CONCURRENCY` to compare another); Veza
//! pages are its default 1000 events. What limits throughput is how many
//! pages the pipeline keeps in flight (`max_in_flight`) while their acks
//! are pending: runs with the default and with a budget's worth of pages.

use crate::support;

use std::time::{Duration, Instant};

use support::daemon::{free_port, Daemon};
use support::hec_fake::{HecFake, HecFakeConfig, HecFaults};
use support::veza_fake::{VezaFake, VezaFakeConfig};

const VEZA_TOKEN: &str = "veza-bench-token";
const HEC_TOKEN: &str = "4c3b2a19-0000-4aaa-8bbb-cccccccccccc";

async fn run(latency: Duration, events: usize, max_in_flight: usize) {
    let veza = VezaFake::start(VezaFakeConfig {
        api_token: VEZA_TOKEN.into(),
        initial_events: events,
        total_events: events,
        ..Default::default()
    })
    .await
    .unwrap();
    let hec = HecFake::start(HecFakeConfig {
        token: HEC_TOKEN.into(),
        ack: true,
        faults: HecFaults {
            ack_min_delay: latency,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("veza_token"), VEZA_TOKEN).unwrap();
    std::fs::write(dir.path().join("hec_token"), HEC_TOKEN).unwrap();
    let config = dir.path().join("c.toml");
    std::fs::write(
        &config,
        format!(
            r#"
state_dir = "{d}/state"
log_level = "warn"
[server]
listen = "127.0.0.1:{port}"
[pipeline]
max_in_flight = {max_in_flight}
[sources.veza]
type = "veza"
url = "{veza}"
token_file = "{d}/veza_token"
start_at = "-30d"
[sinks.splunk]
type = "splunk_hec"
inputs = ["veza"]
endpoint = "{hec}"
token_file = "{d}/hec_token"
indexer_ack = true
{concurrency}"#,
            d = dir.path().display(),
            port = free_port(),
            veza = veza.url(),
            hec = hec.url(),
            concurrency = std::env::var("HEC_ACK_BENCH_CONCURRENCY")
                .map(|n| format!("concurrency = {n}\n"))
                .unwrap_or_default(),
        ),
    )
    .unwrap();
    let started = Instant::now();
    let mut daemon = Daemon::spawn(&config, &dir.path().join("log"));
    let all = hec.wait_for_unique(events, Duration::from_secs(900)).await;
    // Every event indexed; confirmed once the last acks are read.
    let confirmed = hec
        .wait_until(Duration::from_secs(120), |s| {
            s.acks_true >= s.accepted_requests - s.lost_requests
        })
        .await;
    let secs = started.elapsed().as_secs_f64();
    let peak_rss_mib = std::fs::read_to_string(format!("/proc/{}/status", daemon.pid()))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        })
        .map_or(f64::NAN, |kb| kb / 1024.0);
    daemon.terminate(Duration::from_secs(30)).await;
    assert!(all && confirmed, "{:?}\n{}", hec.stats(), daemon.log_text());
    let stats = hec.stats();
    println!(
        "ack latency {:.1} s, max_in_flight {max_in_flight}: {events} events in {secs:.2} s = \
         {:.0} events/s; {} requests, {} ack queries (largest {} ids), {} duplicates, \
         peak RSS {peak_rss_mib:.1} MiB",
        latency.as_secs_f64(),
        events as f64 / secs,
        stats.requests,
        stats.ack_queries,
        stats.largest_ack_query,
        stats.duplicate_events,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run explicitly with --release"]
async fn hec_ack_throughput() {
    let events: usize = std::env::var("HEC_ACK_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    // `HEC_ACK_BENCH_LATENCIES=1000`: only these latencies (ms), default
    // pipeline only.
    let only: Option<Vec<u64>> = std::env::var("HEC_ACK_BENCH_LATENCIES")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect());
    for latency_ms in only.clone().unwrap_or_else(|| vec![100, 1000, 3000]) {
        let latency = Duration::from_millis(latency_ms);
        if only.is_none() {
            run(latency, events / 5, 4).await;
        }
        run(latency, events, 64).await;
    }
}
