//! Throughput of the real binary into the HEC fake, with and without indexer
//! acknowledgment. A measurement, not a test: ignored by default, run with
//!
//!     cargo test --release --test integration -- --ignored --nocapture hec_throughput::
//!
//! (optionally HEC_BENCH_EVENTS=N). The demo source generates ~800-byte
//! Veza-shaped events as fast as the sink takes them. It reads this
//! process's CPU time for the fake's share, so it must run alone, as the
//! filter above makes it.

use crate::support;

use std::time::{Duration, Instant};

use support::daemon::{free_port, Daemon};
use support::hec_fake::{HecFake, HecFakeConfig};

const TOKEN: &str = "3f2e1d0c-bbbb-4ccc-8ddd-eeeeeeeeeeee";

async fn run(label: &str, events: usize, ack: bool, sink_extra: &str, max_in_flight: usize) {
    let fake = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack,
        max_content_length: 10_000_000,
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("tok"), TOKEN).unwrap();
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
[sources.demo]
type = "demo"
rate = 0
batch_size = 1000
limit = {events}
[sinks.splunk]
type = "splunk_hec"
inputs = ["demo"]
endpoint = "{url}"
token_file = "{d}/tok"
sourcetype = "veza:audit"
indexer_ack = {ack}
{sink_extra}
"#,
            d = dir.path().display(),
            port = free_port(),
            url = fake.url(),
        ),
    )
    .unwrap();
    let cpu_before = children_cpu_seconds();
    let fake_before = cpu_seconds(libc::RUSAGE_SELF);
    let started = Instant::now();
    let mut daemon = Daemon::spawn(&config, &dir.path().join("log"));
    // The daemon exits once the demo source is finished and every batch is
    // confirmed and checkpointed: start to exit is confirmed throughput.
    let status = daemon.wait(Duration::from_secs(900)).await;
    let secs = started.elapsed().as_secs_f64();
    let cpu = children_cpu_seconds() - cpu_before;
    let fake_cpu = cpu_seconds(libc::RUSAGE_SELF) - fake_before;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
    let stats = fake.stats();
    assert_eq!(fake.unique_count(), events);
    assert_eq!(stats.duplicate_events, 0);
    let bytes: usize = fake.indexed().iter().map(|e| e.event_raw.len()).sum();
    println!(
        "{label}: {events} events of {:.0} B avg confirmed in {secs:.2} s = {:.0} events/s \
         ({:.1} MB/s of events); daemon CPU {cpu:.2} s = {:.0} events per CPU-second; \
         HEC fake CPU {fake_cpu:.2} s; {} requests, {} ack queries",
        bytes as f64 / events as f64,
        events as f64 / secs,
        bytes as f64 / secs / 1e6,
        events as f64 / cpu,
        stats.requests,
        stats.ack_queries,
    );
}

/// User+system CPU time of the reaped child processes so far.
fn children_cpu_seconds() -> f64 {
    cpu_seconds(libc::RUSAGE_CHILDREN)
}

fn cpu_seconds(who: libc::c_int) -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe { libc::getrusage(who, &mut usage) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(usage.ru_utime) + t(usage.ru_stime)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement; run explicitly with --release"]
async fn hec_throughput() {
    let events: usize = std::env::var("HEC_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    run("no ack, gzip", events, false, "", 4).await;
    run(
        "no ack, no gzip",
        events,
        false,
        "compression = \"none\"",
        4,
    )
    .await;
    run(
        "ack, poll 100ms, 16 pages in flight",
        events,
        true,
        "ack_poll_interval = \"100ms\"",
        16,
    )
    .await;
    run(
        "ack, poll 1s, 16 pages in flight",
        events / 2,
        true,
        "ack_poll_interval = \"1s\"",
        16,
    )
    .await;
    run(
        "ack, poll 10s (default), 4 pages in flight (default)",
        events / 10,
        true,
        "",
        4,
    )
    .await;
    run(
        "ack, poll 10s (default), 64 pages in flight",
        events / 2,
        true,
        "",
        64,
    )
    .await;
}
