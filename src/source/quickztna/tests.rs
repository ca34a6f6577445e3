//! The journal's crash points and checkpoint formats.

use chrono::{DateTime, Utc};

use super::journal::{Journal, JournalCheckpoint, Resume};
use crate::disk_queue::Pos;
use crate::event::{FieldExtractor, FieldPath};
use crate::source::pull::WindowState;
use crate::source::SourceType;

fn extractor() -> FieldExtractor {
    FieldExtractor::new(
        vec![FieldPath::parse("id").unwrap()],
        vec![FieldPath::parse("created_at").unwrap()],
        vec![FieldPath::parse("action").unwrap()],
    )
}

fn time(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

#[test]
fn entries_appended_before_a_crash_that_beat_the_state_save_are_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let before = WindowState {
        watermark: Some(time("2026-03-01T10:00:00Z")),
        ..Default::default()
    };
    {
        let journal = Journal::open(dir.path(), "qz", 1 << 20).unwrap();
        journal.save_state(&before).unwrap();
        // The append is fsynced; the crash comes before the next save.
        journal
            .spool
            .append(&[
                br#"{"id":"a1","created_at":"2026-03-01T10:00:01Z"}"#,
                br#"{"id":"","created_at":"2026-03-01T10:00:02Z","details":"x"}"#,
                br#"{"id":"","created_at":"2026-03-01T10:00:02Z","details":"y"}"#,
            ])
            .unwrap();
    }
    let journal = Journal::open(dir.path(), "qz", 1 << 20).unwrap();
    let saved = journal.load_state(50_000).unwrap().expect("state");
    assert_eq!(saved.window.watermark, before.watermark);
    let mut window = saved.window;
    let from = saved.appended.expect("appended position");
    let mut by_hand = window.clone();
    let replayed = journal
        .replay(from, &mut window, &extractor(), true)
        .unwrap();
    assert_eq!(replayed, 3);
    assert!(window.seen.contains("a1"), "the id is known again");
    // The watermark the crash did not save moves as the append would have
    // moved it: else the next poll reaches back to before those entries,
    // and a capped answer there reports a gap over what the journal holds.
    assert_eq!(window.watermark, Some(time("2026-03-01T10:00:02Z")));
    // A checkpoint set by hand keeps its start: what the journal holds is
    // delivered anyway, the rest is polled again from there.
    journal
        .replay(from, &mut by_hand, &extractor(), false)
        .unwrap();
    assert_eq!(by_hand.watermark, before.watermark);
    // Two entries with an empty id are two entries, not one id "".
    assert_eq!(window.seen.len(), 3);
    assert!(!window.seen.contains(""));
}

#[test]
fn both_checkpoint_formats_are_read_and_garbage_names_the_fix() {
    let old = br#"{"watermark":"2026-03-01T10:00:00Z","seen":[["a1","2026-03-01T09:59:00Z"]]}"#;
    match Resume::parse("qz", Some(old), 50_000).unwrap() {
        Resume::Window(w) => {
            assert_eq!(w.watermark, Some(time("2026-03-01T10:00:00Z")));
            assert!(w.seen.contains("a1"));
        }
        Resume::Journal(_) => panic!("a window state read as a journal position"),
    }
    let new = br#"{"journal":{"segment":3,"offset":20},"newest":"2026-03-01T10:00:00Z"}"#;
    match Resume::parse("qz", Some(new), 50_000).unwrap() {
        Resume::Journal(ck) => {
            assert_eq!(
                ck.journal,
                Pos {
                    segment: 3,
                    offset: 20
                }
            );
            assert_eq!(ck.newest, Some(time("2026-03-01T10:00:00Z")));
        }
        Resume::Window(_) => panic!("a journal position read as a window state"),
    }
    assert!(matches!(
        Resume::parse("qz", None, 50_000).unwrap(),
        Resume::Window(w) if w.watermark.is_none()
    ));
    let err = Resume::parse("qz", Some(br#"{"watermark":5}"#), 50_000)
        .err()
        .expect("garbage refused")
        .to_string();
    assert!(err.contains("checkpoint reset --source qz"), "{err}");
}

#[test]
fn journal_off_is_refused_while_entries_wait_and_resumes_the_poll_once_drained() {
    let dir = tempfile::tempdir().unwrap();
    let journal = Journal::open(dir.path(), "qz", 1 << 20).unwrap();
    let start = journal.spool.start().unwrap();
    journal
        .spool
        .append(&[br#"{"id":"a1","created_at":"2026-03-01T10:00:01Z"}"#])
        .unwrap();
    let polled = WindowState {
        watermark: Some(time("2026-03-01T10:00:01Z")),
        ..Default::default()
    };
    journal.save_state(&polled).unwrap();
    let waiting = JournalCheckpoint {
        journal: start,
        newest: None,
    };
    let err = journal
        .state_after(&waiting, 50_000)
        .expect_err("undelivered entries")
        .to_string();
    assert!(err.contains("journal = true"), "{err}");
    let tail = journal.spool.tail();
    let drained = JournalCheckpoint {
        journal: Pos {
            segment: tail.segment,
            offset: tail.synced,
        },
        newest: polled.watermark,
    };
    let state = journal.state_after(&drained, 50_000).unwrap();
    assert_eq!(state.watermark, polled.watermark);
}

#[test]
fn journal_and_cap_keys_are_validated_with_their_path() {
    let cfg: super::QuickztnaConfig = serde_json::from_value(serde_json::json!({
        "url": "https://login.quickztna.com",
        "org_id": "org",
        "token_env": "QZ_TOKEN",
        "max_journal_bytes": 1000,
        "export_cap": 0,
    }))
    .unwrap();
    assert!(cfg.journal, "the journal is on by default");
    let mut problems = crate::config::Problems::default();
    cfg.validate("sources.qz", &mut problems);
    let paths: Vec<String> = problems.into_vec().into_iter().map(|p| p.path).collect();
    assert!(
        paths.contains(&"sources.qz.max_journal_bytes".to_string())
            && paths.contains(&"sources.qz.export_cap".to_string()),
        "{paths:?}"
    );
    let fine: super::QuickztnaConfig = serde_json::from_value(serde_json::json!({
        "url": "https://login.quickztna.com",
        "org_id": "org",
        "token_env": "QZ_TOKEN",
    }))
    .unwrap();
    assert_eq!(fine.max_journal_bytes, 1 << 30);
    let mut problems = crate::config::Problems::default();
    fine.validate("sources.qz", &mut problems);
    let problems = problems.into_vec();
    assert!(
        problems.iter().all(|p| p.path == "sources.qz.token_env"),
        "only the unset variable: {problems:?}"
    );
}

fn timeless(id: &str) -> crate::event::Event {
    crate::event::Event {
        raw: bytes::Bytes::from(format!(r#"{{"id":"{id}","created_at":"yesterday"}}"#)),
        id: Some(id.into()),
        time: None,
        kind: None,
    }
}

#[test]
fn a_capped_answer_without_readable_times_is_a_gap_when_it_shares_nothing_with_before() {
    use super::api::Answer;
    use super::window::Window;
    let health = crate::health::Health::default();
    let mut window = Window {
        name: "qz-timeless".into(),
        health: health.clone(),
        overlap: std::time::Duration::from_secs(600),
        start: time("2026-03-01T00:00:00Z"),
        cap: 3,
        state: WindowState::default(),
    };
    let asked_at = time("2026-03-01T10:00:00Z");
    let answer = |ids: &[&str]| Answer {
        events: ids.iter().map(|id| timeless(id)).collect(),
        count: None,
        window_start: time("2026-03-01T00:00:00Z"),
        asked_at,
    };
    window.record(&[timeless("a"), timeless("b"), timeless("c")], asked_at);
    let gap_noted = || {
        health
            .snapshot()
            .1
            .get("source.qz-timeless.data_gap")
            .is_some_and(|c| c.reason.contains("may be lost"))
    };
    // Reaches back to an entry taken before: nothing cut between.
    window.capped(&answer(&["c", "d", "e"]));
    assert!(!gap_noted(), "an answer reaching back is no gap");
    // Holds the cap, and none of it was taken before: entries in between
    // may have been cut off, and no created_at says otherwise.
    window.capped(&answer(&["f", "g", "h"]));
    assert!(gap_noted(), "a capped answer disjoint from before is a gap");
}
