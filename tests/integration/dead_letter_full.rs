//! A sink whose dead-letter file is full holds what it could not
//! dead-letter and waits; it never sends again what the receiver accepted.

use crate::support;

use std::sync::Arc;
use std::time::Duration;

use auditrelay::sink::Sink;
use support::webhook_receiver::{WebhookConfig, WebhookReceiver};

fn dead_letter_full_gauge() -> Option<String> {
    auditrelay::metrics::metrics()
        .render()
        .lines()
        .find(|l| l.starts_with("auditrelay_dead_letter_full{sink=\"hook_full\"}"))
        .map(str::to_string)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_dead_letter_file_blocks_the_refused_events_without_resending_the_accepted() {
    let hook = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    hook.set_reject_ids(["ev-0001"]);
    let dir = tempfile::tempdir().unwrap();
    let (sink, dl, health) = support::sink::build(
        dir.path(),
        "hook_full",
        &format!(
            "type = \"webhook\"\nurl = \"{}\"\nbatch = {{ max_events = 1 }}\n\
             retry = {{ initial = \"10ms\", max = \"50ms\" }}\ndead_letter_max_bytes = 300\n",
            hook.url()
        ),
    );
    // Earlier dead letters fill the file: the next one does not fit.
    std::fs::create_dir_all(dl.path().parent().unwrap()).unwrap();
    std::fs::write(dl.path(), format!("{}\n", "x".repeat(250))).unwrap();
    let sink: Arc<dyn Sink> = Arc::from(sink);
    let events = support::sink::events(0, 2);
    let delivering = {
        let (sink, events) = (sink.clone(), events.clone());
        tokio::spawn(async move { sink.deliver("s", &events).await })
    };

    // The accepted event is in, the refused one cannot be dead-lettered.
    let mut stuck = false;
    for _ in 0..500 {
        if hook.count_of("ev-0000") == 1
            && dead_letter_full_gauge().is_some_and(|l| l.ends_with(" 1"))
        {
            stuck = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(
        stuck,
        "the receiver took ev-0000 and the dead-letter file is full"
    );
    let (ready, components) = health.snapshot();
    assert!(!ready, "a sink stuck on its dead letters is not ready");
    let why = &components["sink.hook_full.dead_letter"].reason;
    assert!(why.contains("is full"), "{why}");
    assert!(
        !delivering.is_finished(),
        "the delivery holds the refused event instead of failing the batch"
    );

    // The operator moves the file away: the sink resumes by itself.
    std::fs::rename(dl.path(), dir.path().join("moved.ndjson")).unwrap();
    let delivered = tokio::time::timeout(Duration::from_secs(10), delivering)
        .await
        .expect("resumes once the dead-letter file has room")
        .unwrap();
    assert!(delivered.is_ok(), "{delivered:?}");
    assert_eq!(
        hook.count_of("ev-0000"),
        1,
        "the accepted event is not sent again"
    );
    let read = auditrelay::sink::DeadLetters::read(dl.path()).unwrap();
    let ids: Vec<_> = read.records.iter().map(|r| r.id.clone()).collect();
    assert_eq!(ids, vec![Some("ev-0001".to_string())]);
    assert!(health.snapshot().0, "{:?}", health.snapshot().1);
    assert!(dead_letter_full_gauge().is_some_and(|l| l.ends_with(" 0")));
}
