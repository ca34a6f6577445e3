//! The delivery state machine against a scripted sink: each classification
//! path, halving down to the dead-letter file, Retry-After, readiness, and a
//! full dead-letter file.

// A delivery takes a list of runs; a list of one run is no mistake here.
#![allow(clippy::single_range_in_vec_init)]

use std::sync::atomic::{AtomicUsize, Ordering};

use super::*;
use crate::metrics::metrics;

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Trouble {
    Auth,
    Failing,
}

type Script = Box<dyn Fn(&Run, usize) -> Verdict<Trouble> + Send + Sync>;

/// A sink whose answers come from `script(run, attempt of this run)`.
struct Scripted {
    script: Script,
    /// Every attempt: the run and how often it was tried before.
    log: Mutex<Vec<(Run, usize)>>,
    forgotten: AtomicUsize,
    auth_waits: AtomicUsize,
    /// What readiness said at each attempt.
    seen_ready: Mutex<Vec<Option<String>>>,
    health: Health,
}

impl Scripted {
    fn new(
        health: &Health,
        script: impl Fn(&Run, usize) -> Verdict<Trouble> + Send + Sync + 'static,
    ) -> Self {
        Scripted {
            script: Box::new(script),
            log: Mutex::default(),
            forgotten: AtomicUsize::new(0),
            auth_waits: AtomicUsize::new(0),
            seen_ready: Mutex::default(),
            health: health.clone(),
        }
    }

    fn attempts(&self) -> Vec<(Run, usize)> {
        self.log.lock().unwrap().clone()
    }
}

#[async_trait]
impl RetryLogic for Scripted {
    type Trouble = Trouble;
    /// How often this run was tried before.
    type Memory = usize;

    async fn attempt(&self, _events: &[Event], run: Run, tries: &mut usize) -> Verdict<Trouble> {
        self.log.lock().unwrap().push((run.clone(), *tries));
        let (_, states) = self.health.snapshot();
        let sink = states
            .iter()
            .find(|(k, _)| !k.ends_with(".dead_letter"))
            .filter(|(_, s)| !s.ready)
            .map(|(_, s)| s.reason.clone());
        self.seen_ready.lock().unwrap().push(sink);
        let verdict = (self.script)(&run, *tries);
        *tries += 1;
        verdict
    }

    fn forget(&self, _memory: usize) {
        self.forgotten.fetch_add(1, Ordering::Relaxed);
    }

    async fn after_auth_wait(&self, _trouble: Trouble) {
        self.auth_waits.fetch_add(1, Ordering::Relaxed);
    }
}

fn events(n: usize) -> Vec<Event> {
    (0..n)
        .map(|i| Event {
            raw: Bytes::from(format!("{{\"i\":{i}}}")),
            id: Some(i.to_string().into()),
            time: None,
            kind: None,
        })
        .collect()
}

/// A state dir, a readiness registry and a delivery with millisecond waits.
fn setup(name: &str) -> (tempfile::TempDir, Health, Delivery<Trouble>) {
    let dir = tempfile::tempdir().unwrap();
    let health = Health::default();
    let delivery = Delivery {
        name: name.into(),
        retry: RetryConfig {
            initial: Duration::from_millis(1),
            max: Duration::from_millis(2),
        },
        auth_retry: Duration::from_millis(1),
        readiness: Readiness::new(health.clone(), name),
        dead_letters: DeadLetters::new(dir.path(), name).with_health(health.clone()),
        failing: Some(Trouble::Failing),
    };
    (dir, health, delivery)
}

fn confirmed() -> Verdict<Trouble> {
    Verdict::Confirmed {
        fixed: &[Trouble::Auth, Trouble::Failing],
    }
}

/// A receiver that refuses every request holding event `bad`, naming its
/// place in the request when `named` (as HEC's invalid-event-number does).
fn refusing(bad: usize, named: bool) -> impl Fn(&Run, usize) -> Verdict<Trouble> {
    move |run, _| {
        if run.contains(&bad) {
            Verdict::Refused {
                why: "HTTP 400: bad event".into(),
                bad: named.then(|| bad - run.start),
            }
        } else {
            confirmed()
        }
    }
}

fn delivered(sink: &str) -> u64 {
    metrics()
        .events_delivered
        .with_label_values(&[sink, "src"])
        .get()
}

/// Every backoff wait of `d` is exactly `wait`.
fn fixed_backoff(d: &mut Delivery<Trouble>, wait: Duration) {
    d.retry.initial = wait;
    d.retry.max = wait;
}

/// How long delivering `n` events as one run took; it must succeed.
async fn timed_delivery(d: &Delivery<Trouble>, sink: &Scripted, n: usize) -> Duration {
    let started = Instant::now();
    d.deliver(sink, "src", &events(n), vec![0..n])
        .await
        .unwrap();
    started.elapsed()
}

fn dead_lettered(dir: &std::path::Path, sink: &str) -> Vec<String> {
    let path = DeadLetters::path_for(dir, sink);
    DeadLetters::read(&path)
        .map(|f| f.records.into_iter().filter_map(|r| r.id).collect())
        .unwrap_or_default()
}

#[tokio::test]
async fn confirmed_runs_go_out_once_each_in_order() {
    let (_dir, health, d) = setup("dl_confirmed");
    let sink = Scripted::new(&health, |_, _| confirmed());
    let ev = events(5);
    d.deliver(&sink, "src", &ev, vec![0..2, 2..4, 4..5])
        .await
        .unwrap();
    assert_eq!(sink.attempts(), vec![(0..2, 0), (2..4, 0), (4..5, 0)]);
    assert_eq!(delivered("dl_confirmed"), 5);
    assert_eq!(sink.forgotten.load(Ordering::Relaxed), 3);
}

#[tokio::test]
async fn a_retry_resends_the_same_run_with_its_memory_and_readiness_follows() {
    let (_dir, health, d) = setup("dl_retry");
    // Three failures in a row turn the sink unready; the success clears it.
    let sink = Scripted::new(&health, |_, tries| match tries {
        0..=2 => Verdict::Retry {
            why: format!("HTTP 503 #{tries}"),
            after: None,
        },
        _ => confirmed(),
    });
    let ev = events(2);
    d.deliver(&sink, "src", &ev, vec![0..2]).await.unwrap();
    assert_eq!(
        sink.attempts(),
        vec![(0..2, 0), (0..2, 1), (0..2, 2), (0..2, 3)]
    );
    let seen = sink.seen_ready.lock().unwrap().clone();
    assert_eq!(seen[..3], [None, None, None]);
    let reason = seen[3].clone().expect("unready after three failures");
    assert!(
        reason.contains("3 in a row") && reason.contains("HTTP 503 #2"),
        "{reason}"
    );
    assert!(health.snapshot().0, "a success makes the sink ready again");
    assert_eq!(delivered("dl_retry"), 2);
    let failed = metrics()
        .events_failed
        .with_label_values(&["dl_retry", "src"])
        .get();
    assert_eq!(failed, 6);
}

#[tokio::test]
async fn retry_after_is_honoured_instead_of_the_backoff() {
    let (_dir, health, d) = setup("dl_retry_after");
    let sink = Scripted::new(&health, |_, tries| match tries {
        0 => Verdict::Retry {
            why: "HTTP 429".into(),
            after: Some(Duration::from_millis(300)),
        },
        _ => confirmed(),
    });
    let took = timed_delivery(&d, &sink, 1).await;
    // The backoff alone would wait 2 ms at most.
    assert!(took >= Duration::from_millis(300));
    assert_eq!(sink.attempts().len(), 2);
}

/// `Retry-After: 0` (or an HTTP date in the past) must not turn a busy
/// receiver's answers into a request loop without any wait.
#[tokio::test]
async fn a_retry_after_of_zero_still_waits_the_least_backoff() {
    let (_dir, health, mut d) = setup("dl_retry_after_zero");
    fixed_backoff(&mut d, Duration::from_millis(100));
    let sink = Scripted::new(&health, |_, tries| match tries {
        0..=2 => Verdict::Retry {
            why: "HTTP 503".into(),
            after: Some(Duration::ZERO),
        },
        _ => confirmed(),
    });
    let took = timed_delivery(&d, &sink, 1).await;
    assert_eq!(sink.attempts().len(), 4);
    assert!(
        took >= Duration::from_millis(300),
        "three answers of Retry-After 0 were resent after {took:?}"
    );
}

/// A server's wait is honoured from `retry.initial` up to the longer of
/// `retry.max` and an hour: a garbled or hostile Retry-After neither
/// stalls the sink for ever nor overflows a deadline.
#[test]
fn a_retry_after_is_bounded() {
    let retry = RetryConfig {
        initial: Duration::from_millis(100),
        max: Duration::from_secs(5),
    };
    assert_eq!(server_wait(Duration::ZERO, retry), retry.initial);
    assert_eq!(
        server_wait(Duration::from_secs(30), retry),
        Duration::from_secs(30)
    );
    assert_eq!(
        server_wait(Duration::from_secs(u64::MAX), retry),
        LONGEST_RETRY_AFTER
    );
    let long = RetryConfig {
        initial: Duration::from_secs(1),
        max: Duration::from_secs(7200),
    };
    assert_eq!(
        server_wait(Duration::from_secs(u64::MAX), long),
        Duration::from_secs(7200)
    );
}

#[tokio::test]
async fn refusals_halve_down_to_the_one_event_which_is_dead_lettered() {
    let (dir, health, d) = setup("dl_halve");
    // Event 5 of 0..8 is unacceptable; every request holding it is refused.
    let sink = Scripted::new(&health, refusing(5, false));
    let ev = events(8);
    d.deliver(&sink, "src", &ev, vec![0..8]).await.unwrap();
    let runs: Vec<Run> = sink.attempts().into_iter().map(|(r, _)| r).collect();
    assert_eq!(runs, vec![0..8, 0..4, 4..8, 4..6, 4..5, 5..6, 6..8]);
    assert_eq!(dead_lettered(dir.path(), "dl_halve"), vec!["5".to_string()]);
    assert_eq!(delivered("dl_halve"), 7);
}

#[tokio::test]
async fn an_empty_run_is_never_sent() {
    let (_dir, health, d) = setup("dl_empty");
    let sink = Scripted::new(&health, |_, _| Verdict::Refused {
        why: "HTTP 400".into(),
        bad: None,
    });
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        d.deliver(&sink, "src", &events(2), vec![1..1, 2..2]),
    )
    .await;
    assert!(matches!(out, Ok(Ok(()))));
    assert!(sink.attempts().is_empty());
}

#[tokio::test]
async fn a_named_refused_event_is_cut_out_directly() {
    let (dir, health, d) = setup("dl_named");
    let sink = Scripted::new(&health, refusing(5, true));
    d.deliver(&sink, "src", &events(8), vec![0..8])
        .await
        .unwrap();
    let runs: Vec<Run> = sink.attempts().into_iter().map(|(r, _)| r).collect();
    assert_eq!(runs, vec![0..8, 0..5, 5..6, 6..8]);
    assert_eq!(dead_lettered(dir.path(), "dl_named"), vec!["5".to_string()]);
    // A hint outside the run is ignored: halves instead.
    assert_eq!(split(0..4, Some(9)), vec![0..2, 2..4]);
    assert_eq!(split(0..4, Some(0)), vec![0..1, 1..4]);
}

#[tokio::test]
async fn auth_wait_sets_its_trouble_waits_at_least_auth_retry_and_calls_back() {
    let (_dir, health, mut d) = setup("dl_auth");
    d.auth_retry = Duration::from_millis(200);
    let sink = Scripted::new(&health, |_, tries| match tries {
        0 => Verdict::AuthWait {
            trouble: Trouble::Auth,
            why: "HTTP 401".into(),
            reason: "endpoint refuses the token".into(),
            log: "endpoint refuses the requests; check credentials".into(),
        },
        _ => confirmed(),
    });
    let took = timed_delivery(&d, &sink, 3).await;
    assert!(took >= Duration::from_millis(200));
    assert_eq!(sink.auth_waits.load(Ordering::Relaxed), 1);
    let seen = sink.seen_ready.lock().unwrap().clone();
    assert_eq!(seen, vec![None, Some("endpoint refuses the token".into())]);
    assert!(health.snapshot().0);
    assert_eq!(sink.attempts(), vec![(0..3, 0), (0..3, 1)]);
}

#[tokio::test]
async fn unconfirmed_resends_at_once_keeping_the_memory() {
    let (_dir, health, mut d) = setup("dl_unconfirmed");
    fixed_backoff(&mut d, Duration::from_secs(60));
    let sink = Scripted::new(&health, |_, tries| match tries {
        0 | 1 => Verdict::Unconfirmed {
            why: "no ack".into(),
        },
        _ => confirmed(),
    });
    let out = tokio::time::timeout(
        Duration::from_secs(10),
        d.deliver(&sink, "src", &events(1), vec![0..1]),
    )
    .await;
    assert!(matches!(out, Ok(Ok(()))), "no backoff wait for a resend");
    assert_eq!(sink.attempts(), vec![(0..1, 0), (0..1, 1), (0..1, 2)]);
    assert_eq!(sink.forgotten.load(Ordering::Relaxed), 1);
}

#[tokio::test]
async fn fatal_ends_the_delivery_with_the_error() {
    let (_dir, health, d) = setup("dl_fatal");
    let sink = Scripted::new(&health, |run, _| {
        if run.start == 0 {
            confirmed()
        } else {
            Verdict::Fatal(anyhow::anyhow!("HMAC key: invalid"))
        }
    });
    let err = d
        .deliver(&sink, "src", &events(4), vec![0..2, 2..4])
        .await
        .unwrap_err();
    assert_eq!(err.to_string(), "HMAC key: invalid");
    assert_eq!(sink.attempts(), vec![(0..2, 0), (2..4, 0)]);
    assert_eq!(sink.forgotten.load(Ordering::Relaxed), 2);
}

#[tokio::test]
async fn a_full_dead_letter_file_holds_the_delivery_until_it_has_room() {
    let (dir, health, mut d) = setup("dl_full");
    d.dead_letters = DeadLetters::new(dir.path(), "dl_full")
        .with_health(health.clone())
        .with_max_bytes(600);
    let path = DeadLetters::path_for(dir.path(), "dl_full");
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, format!("{}\n", "x".repeat(580))).unwrap();
    let sink = std::sync::Arc::new(Scripted::new(&health, refusing(1, false)));
    let ev = events(3);
    let task = {
        let sink = sink.clone();
        tokio::spawn(async move { d.deliver(&*sink, "src", &ev, vec![0..3]).await })
    };
    // Bounded wait for the sink to report itself stuck on its dead letters.
    let stuck = async {
        loop {
            let (_, states) = health.snapshot();
            if states
                .get("sink.dl_full.dead_letter")
                .is_some_and(|s| !s.ready)
            {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(10), stuck)
        .await
        .expect("the delivery waits on the full file");
    assert!(
        !task.is_finished(),
        "nothing confirmed while it cannot dead-letter"
    );
    std::fs::rename(&path, dir.path().join("moved.ndjson")).unwrap();
    let out = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .expect("resumes once the file has room");
    out.unwrap().unwrap();
    assert_eq!(dead_lettered(dir.path(), "dl_full"), vec!["1".to_string()]);
    // What the receiver accepted was not sent again while waiting.
    let runs: Vec<Run> = sink.attempts().into_iter().map(|(r, _)| r).collect();
    assert_eq!(runs, vec![0..3, 0..1, 1..3, 1..2, 2..3]);
}

#[test]
fn snippets_are_short_and_on_one_line() {
    assert_eq!(snippet(b"a\nb\rc", 10), "a b c");
    assert_eq!(snippet("äöü".as_bytes(), 2), "äö");
}
