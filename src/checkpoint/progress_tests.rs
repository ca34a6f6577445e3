//! Tests of the progress log format (see `progress.rs`).

use super::samples::{pending, record};
use super::*;

fn open(dir: &Path) -> ProgressLog {
    ProgressLog::open(dir, dir.join("s.progress"), dir.join(".tmp")).unwrap()
}

/// A new log `s.progress` in a temp dir (removed when the guard drops).
fn fresh() -> (tempfile::TempDir, PathBuf, ProgressLog) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("s.progress");
    let log = open(dir.path());
    (dir, path, log)
}

#[test]
fn appends_survive_reopen_and_rewrite_replaces() {
    let (dir, path, mut log) = fresh();
    assert!(load(&dir.path().join("absent.progress"), "s")
        .unwrap()
        .is_empty());
    assert!(log.is_empty());
    log.append(&[record("hec", &[1, 2])]).unwrap();
    log.append(&[record("hook", &[3]), record("hec", &[4])])
        .unwrap();
    drop(log);
    let mut log = open(dir.path());
    log.append(&[record("hec", &[5])]).unwrap();
    assert_eq!(
        load(&path, "s").unwrap(),
        vec![
            record("hec", &[1, 2]),
            record("hook", &[3]),
            record("hec", &[4]),
            record("hec", &[5])
        ]
    );
    log.rewrite(&[record("hook", &[9])]).unwrap();
    log.append(&[record("hec", &[7])]).unwrap();
    assert_eq!(
        load(&path, "s").unwrap(),
        vec![record("hook", &[9]), record("hec", &[7])]
    );
    assert_eq!(log.len(), fs::metadata(&path).unwrap().len());
    assert_eq!(fs::read_dir(dir.path().join(".tmp")).unwrap().count(), 0);
    remove(&path).unwrap();
    assert!(load(&path, "s").unwrap().is_empty());
    remove(&path).unwrap();
}

#[test]
fn a_torn_or_damaged_tail_keeps_the_whole_records_before_it() {
    let (_dir, path, mut log) = fresh();
    log.append(&[record("a", &[1]), record("b", &[2, 3])])
        .unwrap();
    let whole = fs::read(&path).unwrap();
    for cut in 1..record_len("b", 2) as usize {
        fs::write(&path, &whole[..whole.len() - cut]).unwrap();
        assert_eq!(
            load(&path, "s").unwrap(),
            vec![record("a", &[1])],
            "cut {cut}"
        );
    }
    let mut flipped = whole.clone();
    let last = flipped.len() - 1;
    flipped[last] ^= 1;
    fs::write(&path, &flipped).unwrap();
    assert_eq!(load(&path, "s").unwrap(), vec![record("a", &[1])]);
    fs::write(&path, b"garbage").unwrap();
    assert!(load(&path, "s").unwrap().is_empty());
}

#[test]
fn pending_records_load_apart_from_confirmations_and_retire_one_by_one() {
    let (_dir, path, mut log) = fresh();
    log.append(&[record("hec", &[1])]).unwrap();
    log.append_all(&Appends {
        pending: vec![pending("hec", "c/7", &[2, 3]), pending("hec", "c/8", &[4])],
        ..Default::default()
    })
    .unwrap();
    // An identical record twice (a run sent twice with one token): one
    // retirement cancels one of them.
    log.append_all(&Appends {
        pending: vec![pending("hec", "c/8", &[4])],
        ..Default::default()
    })
    .unwrap();
    let loaded = load_all(&path, "s").unwrap();
    assert_eq!(loaded.confirmed, vec![record("hec", &[1])]);
    assert_eq!(
        loaded.pending,
        vec![
            pending("hec", "c/7", &[2, 3]),
            pending("hec", "c/8", &[4]),
            pending("hec", "c/8", &[4])
        ]
    );
    // A pending record is never a confirmation.
    assert_eq!(load(&path, "s").unwrap(), vec![record("hec", &[1])]);
    log.append_all(&Appends {
        retired: vec![record("hec", &[1])],
        retired_pending: vec![pending("hec", "c/8", &[4]), pending("hec", "c/7", &[2])],
        ..Default::default()
    })
    .unwrap();
    let loaded = load_all(&path, "s").unwrap();
    assert!(loaded.confirmed.is_empty());
    // Only an identical record is cancelled: c/7 with other keys stays.
    assert_eq!(
        loaded.pending,
        vec![pending("hec", "c/7", &[2, 3]), pending("hec", "c/8", &[4])]
    );
    log.rewrite_all(&[record("hook", &[9])], &[pending("hec", "d/1", &[5])])
        .unwrap();
    let loaded = load_all(&path, "s").unwrap();
    assert_eq!(loaded.confirmed, vec![record("hook", &[9])]);
    assert_eq!(loaded.pending, vec![pending("hec", "d/1", &[5])]);
    assert_eq!(log.len(), fs::metadata(&path).unwrap().len());
}

#[test]
fn a_torn_pending_record_ends_the_read_and_keeps_what_came_before() {
    let (_dir, path, mut log) = fresh();
    log.append(&[record("a", &[1])]).unwrap();
    let p = pending("hec", "channel/12", &[2, 3]);
    log.append_all(&Appends {
        pending: vec![p.clone()],
        ..Default::default()
    })
    .unwrap();
    let whole = fs::read(&path).unwrap();
    assert_eq!(whole.len() as u64 - pending_len(&p), {
        let (_dir, _, mut without) = fresh();
        without.append(&[record("a", &[1])]).unwrap();
        without.len()
    });
    for cut in 1..pending_len(&p) as usize {
        fs::write(&path, &whole[..whole.len() - cut]).unwrap();
        let loaded = load_all(&path, "s").unwrap();
        assert_eq!(loaded.confirmed, vec![record("a", &[1])], "cut {cut}");
        assert!(loaded.pending.is_empty(), "cut {cut}");
    }
}
