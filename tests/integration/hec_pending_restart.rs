//! HEC requests awaiting their indexer ack at a SIGKILL: the restart asks
//! HEC about those ack ids on the old channel before sending the refetched
//! page, and sends again only what is not acknowledged. HEC answers `true`
//! once, forgets a channel when the indexer restarts (code 11), and the new
//! run's ack ids live on a channel of its own.

use crate::support;

use std::path::Path;
use std::time::{Duration, Instant};

use auditrelay::checkpoint::CheckpointStore;
use auditrelay::sink::Tracked;
use support::daemon::{free_port, Daemon};
use support::hec_fake::{HecFake, HecFakeConfig, HecFaults};
use support::veza_fake::{VezaFake, VezaFakeConfig};

const TOTAL: usize = 1000;
const REQUEST: usize = 100;
const LONG: Duration = Duration::from_secs(60);

struct Setup {
    _veza: VezaFake,
    hec: HecFake,
    dir: tempfile::TempDir,
    cfg: std::path::PathBuf,
}

async fn setup(unknown_channel_error: bool) -> Setup {
    let veza = VezaFake::start(VezaFakeConfig {
        initial_events: TOTAL,
        total_events: TOTAL,
        seed: 23,
        max_page_size: TOTAL,
        ..Default::default()
    })
    .await
    .unwrap();
    let hec = HecFake::start(HecFakeConfig {
        ack: true,
        id_field: "fake_ref".into(),
        faults: HecFaults {
            // Indexing stalled: every request awaits its ack at the kill.
            hold_acks: true,
            unknown_channel_error,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    support::harness::write_default_tokens(dir.path());
    let cfg = dir.path().join("auditrelay.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
state_dir = "{d}/state"
log_format = "json"
[server]
listen = "127.0.0.1:{port}"
[sources.veza]
type = "veza"
url = "{veza}"
token_file = "{d}/veza_token"
page_size = {TOTAL}
start_at = "-24h"
poll_interval = "50ms"
[sinks.hec]
type = "splunk_hec"
inputs = ["veza"]
endpoint = "{hec}"
token_file = "{d}/hec_token"
indexer_ack = true
ack_poll_interval = "200ms"
ack_timeout = "1h"
concurrency = 1
batch = {{ max_events = {REQUEST} }}
"#,
            d = dir.path().display(),
            port = free_port(),
            veza = veza.url(),
            hec = hec.url(),
        ),
    )
    .unwrap();
    Setup {
        _veza: veza,
        hec,
        dir,
        cfg,
    }
}

/// Waits (bounded) until the progress log records `n` pending requests: the
/// claims a restart can ask about are durable.
async fn wait_for_pending_records(state: &Path, n: usize) {
    let store = CheckpointStore::open(state).unwrap();
    let deadline = Instant::now() + LONG;
    loop {
        let pending = store.load_progress_all("veza").unwrap().pending.len();
        if pending >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{pending} of {n} pending records in the progress log"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Kills the daemon while all `TOTAL` events await their acks.
async fn kill_with_every_request_pending(s: &Setup) -> String {
    let log = s.dir.path().join("daemon.log");
    let mut daemon = Daemon::spawn(&s.cfg, &log);
    let requests = (TOTAL / REQUEST) as u64;
    assert!(
        s.hec
            .wait_until(LONG, |st| st.accepted_requests >= requests)
            .await,
        "{:?}",
        s.hec.stats()
    );
    wait_for_pending_records(&s.dir.path().join("state"), TOTAL / REQUEST).await;
    daemon.kill().await;
    assert_eq!(s.hec.unique_count(), TOTAL);
    s.hec
        .last_header("x-splunk-request-channel")
        .expect("requests carry a channel")
}

async fn restart_and_deliver_all(s: &Setup) {
    let log = s.dir.path().join("daemon2.log");
    let mut daemon = Daemon::spawn(&s.cfg, &log);
    // Committed: the progress log is compacted to nothing at the stop.
    let state = s.dir.path().join("state");
    let store = CheckpointStore::open(&state).unwrap();
    let deadline = Instant::now() + LONG;
    while store.load("veza").ok().flatten().is_none() || s.hec.unique_count() < TOTAL {
        assert!(
            Instant::now() < deadline,
            "not committed: {:?}",
            s.hec.stats()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = daemon.terminate(LONG).await.expect("exit after SIGTERM");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn acks_pending_at_a_sigkill_are_asked_about_and_not_sent_again() {
    let s = setup(false).await;
    let old_channel = kill_with_every_request_pending(&s).await;
    // Indexing resumes while the daemon is down: every old ack reads true
    // once asked.
    s.hec.set_hold_acks(false);
    restart_and_deliver_all(&s).await;
    let stats = s.hec.stats();
    // The channel's first ids (below twice `concurrency`: 0 and 1) are
    // never trusted, a restarted indexer could have issued them to requests
    // whose answers the crash cut off: those two are sent again. The
    // other eight read true and are not.
    let requests = (TOTAL / REQUEST) as u64;
    assert_eq!(
        stats.duplicate_events,
        2 * REQUEST as u64,
        "events acknowledged before the restart were sent again: {stats:?}"
    );
    assert_eq!(stats.accepted_requests, requests + 2);
    // Eight old acks read true when asked; the two resent requests' too.
    assert_eq!(stats.acks_true, requests, "{stats:?}");
    assert!(
        stats.ack_query_channels.get(&old_channel).copied() > Some(0),
        "the old channel was never asked about: {stats:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_channel_the_restarted_indexer_forgot_gets_its_events_sent_again() {
    let s = setup(true).await;
    let old_channel = kill_with_every_request_pending(&s).await;
    // The indexer restarts too: the old channel and its acks are gone (and
    // its events, as far as the ack can tell).
    s.hec.restart();
    s.hec.set_hold_acks(false);
    restart_and_deliver_all(&s).await;
    let stats = s.hec.stats();
    assert!(stats.unknown_channel_queries >= 1, "{stats:?}");
    assert!(stats.ack_query_channels.contains_key(&old_channel));
    // Nothing lost: every event was sent again on the new channel, once.
    assert_eq!(s.hec.unique_count(), TOTAL);
    assert_eq!(stats.duplicate_events, TOTAL as u64, "{stats:?}");
    let new_channel = s.hec.last_header("x-splunk-request-channel").unwrap();
    assert_ne!(new_channel, old_channel, "a restart must use a new channel");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_hears_true_once_per_ack_and_nothing_from_unknown_channels() {
    use crate::splunk_hec_sink::{build, events, TOKEN};
    use auditrelay::sink::PendingRequest;
    use std::sync::Mutex;

    let hec = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: true,
        faults: HecFaults {
            hold_acks: true,
            unknown_channel_error: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let extra = "indexer_ack = true\nack_poll_interval = \"100ms\"\nconcurrency = 1\n\
                 batch = { max_events = 10 }";
    // The old run: six requests (ack ids 0..5), all awaiting their acks.
    let old_dir = tempfile::tempdir().unwrap();
    let old = build(old_dir.path(), "hec_resolve_old", &hec.url(), TOKEN, extra);
    let tokens = Mutex::new(Vec::new());
    let reported = tokio::sync::Notify::new();
    let report = |_range, token| {
        tokens.lock().unwrap().push(token);
        reported.notify_one();
    };
    let all_reported = async {
        while tokens.lock().unwrap().len() < 6 {
            reported.notified().await;
        }
    };
    let sent = events(60);
    let call = Tracked {
        source: "veza",
        events: &sent,
        pending: &report,
    };
    tokio::select! {
        r = old.sink.deliver_tracked(call) => {
            panic!("confirmed while indexing is stalled: {r:?}")
        }
        r = tokio::time::timeout(LONG, all_reported) => r.expect("six requests reported pending"),
    }
    let old_channel = hec.last_header("x-splunk-request-channel").unwrap();
    // The old process is gone; indexing resumes.
    drop(old);
    hec.set_hold_acks(false);

    let new_dir = tempfile::tempdir().unwrap();
    let new = build(new_dir.path(), "hec_resolve_new", &hec.url(), TOKEN, extra);
    let mut requests: Vec<PendingRequest> = tokens
        .lock()
        .unwrap()
        .iter()
        .map(|t| PendingRequest {
            token: t.clone(),
            sent: std::time::SystemTime::now(),
        })
        .collect();
    // A channel HEC never knew, and a token that is not HEC's.
    let unknown = r#"{"channel":"0b7e57c4-0000-4000-8000-000000000001","ack":4}"#;
    for token in [unknown.as_bytes(), b"not a token"] {
        requests.push(PendingRequest {
            token: token.to_vec(),
            sent: std::time::SystemTime::now(),
        });
    }
    let first = new.sink.resolve_pending(&requests).await;
    // Ids 0 and 1 (below twice `concurrency`) are not trusted: a restarted
    // indexer would issue them first. 2..5 read true.
    assert_eq!(
        first,
        vec![false, false, true, true, true, true, false, false]
    );
    let stats = hec.stats();
    assert!(stats.unknown_channel_queries >= 1, "{stats:?}");
    assert!(stats.ack_query_channels.contains_key(&old_channel));
    // HEC forgets an ack once it answered true: asked again, nothing
    // confirms, and the asking is bounded.
    let started = Instant::now();
    let second = new.sink.resolve_pending(&requests).await;
    assert_eq!(second, vec![false; requests.len()]);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "{:?}",
        started.elapsed()
    );
}

/// Sends `events` to `sink` for `source` in a task of its own, noting the
/// token of each request reported pending in `tokens`.
fn send_tracked(
    sink: &std::sync::Arc<dyn auditrelay::sink::Sink>,
    source: &'static str,
    events: Vec<auditrelay::event::Event>,
    tokens: &std::sync::Arc<std::sync::Mutex<Vec<Vec<u8>>>>,
    reported: &std::sync::Arc<tokio::sync::Notify>,
) -> tokio::task::JoinHandle<()> {
    let (sink, tokens, reported) = (sink.clone(), tokens.clone(), reported.clone());
    tokio::spawn(async move {
        let report = |_range, token| {
            tokens.lock().unwrap().push(token);
            reported.notify_waiters();
        };
        let call = Tracked {
            source,
            events: &events,
            pending: &report,
        };
        let r = sink.deliver_tracked(call).await;
        panic!("confirmed while indexing is stalled: {r:?}");
    })
}

/// Waits (bounded) until `tokens` holds `n` tokens.
async fn wait_for_tokens(
    tokens: &std::sync::Mutex<Vec<Vec<u8>>>,
    reported: &tokio::sync::Notify,
    n: usize,
) {
    tokio::time::timeout(LONG, async {
        loop {
            let notified = reported.notified();
            if tokens.lock().unwrap().len() >= n {
                return;
            }
            notified.await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("{n} requests reported pending"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_ack_id_the_restarted_indexer_issued_to_another_source_confirms_nothing() {
    use crate::splunk_hec_sink::{build, events, TOKEN};
    use auditrelay::sink::PendingRequest;
    use std::sync::Arc;
    use tokio::sync::Notify;

    let hec = HecFake::start(HecFakeConfig {
        token: TOKEN.into(),
        ack: true,
        faults: HecFaults {
            hold_acks: true,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let extra = "indexer_ack = true\nack_poll_interval = \"100ms\"\nconcurrency = 1\n\
                 batch = { max_events = 10 }";
    let old_dir = tempfile::tempdir().unwrap();
    let old = build(old_dir.path(), "hec_shared_old", &hec.url(), TOKEN, extra);
    let all = events(60);
    let reported = Arc::new(Notify::new());
    let (a_tokens, b_tokens) = (Arc::default(), Arc::default());
    // Source b: ack ids 0 and 1 on the sink's channel, awaiting their acks.
    let b1 = send_tracked(&old.sink, "b", all[..20].to_vec(), &b_tokens, &reported);
    wait_for_tokens(&b_tokens, &reported, 2).await;
    // Source a: ack id 2, lost by the indexer, which then restarts.
    hec.set_faults(HecFaults {
        hold_acks: true,
        lose: 1.0,
        ..Default::default()
    });
    let a = send_tracked(&old.sink, "a", all[20..30].to_vec(), &a_tokens, &reported);
    wait_for_tokens(&a_tokens, &reported, 1).await;
    hec.restart();
    hec.set_faults(HecFaults {
        hold_acks: true,
        ..Default::default()
    });
    // Source b goes on sending on the shared channel: the restarted
    // indexer issues its ids from 0 again; the third is a's old id.
    let b2 = send_tracked(&old.sink, "b", all[30..60].to_vec(), &b_tokens, &reported);
    wait_for_tokens(&b_tokens, &reported, 5).await;
    // The crash: the old process and its poller are gone.
    for task in [b1, a, b2] {
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
    }
    drop(old);
    hec.set_hold_acks(false);

    // Source a's restart knows only its own pending record (source b's
    // are in b's progress log).
    let a_token = a_tokens.lock().unwrap()[0].clone();
    assert!(
        String::from_utf8_lossy(&a_token).contains("\"ack\":2"),
        "{}",
        String::from_utf8_lossy(&a_token)
    );
    let new_dir = tempfile::tempdir().unwrap();
    let new = build(new_dir.path(), "hec_shared_new", &hec.url(), TOKEN, extra);
    let answers = new
        .sink
        .resolve_pending(&[PendingRequest {
            token: a_token,
            sent: std::time::SystemTime::now(),
        }])
        .await;
    let counts = hec.counts();
    let a_indexed = all[20..30]
        .iter()
        .filter(|e| counts.contains_key(e.id.as_deref().unwrap()))
        .count();
    assert_eq!(a_indexed, 0, "source a's events were lost by the indexer");
    assert_eq!(
        answers,
        vec![false],
        "source a's lost request counted as acknowledged: its events would never be sent again"
    );
}
