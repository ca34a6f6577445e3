//! Tests of the replay window's file: appends, trims, read-back, adoption.

use super::*;

const OC: &str = "octet_counting";

/// Every batch of the window, read back from the file.
fn batches(log: &ReplayLog) -> Vec<Vec<u8>> {
    (0..)
        .map_while(|i| log.read_batch(i).unwrap())
        .map(|b| b.to_vec())
        .collect()
}

fn one(b: &[u8]) -> Vec<Vec<u8>> {
    vec![b.to_vec()]
}

/// An instance of sink "sys" (octet counting) with a window of `cap` bytes
/// in `dir`, and what it adopted.
fn open(dir: &Path, cap: usize) -> (ReplayLog, Adopted) {
    ReplayLog::open(dir, "sys", cap, OC, Duration::ZERO).unwrap()
}

/// A new instance ([`open`]) that appended `appended`, batch by batch.
fn holding(dir: &Path, cap: usize, appended: &[&[u8]]) -> ReplayLog {
    let (mut log, _) = open(dir, cap);
    for batch in appended {
        log.append(batch, None).unwrap();
    }
    log
}

#[test]
fn a_dead_instance_s_window_is_adopted_once_and_a_live_one_s_never() {
    let dir = tempfile::tempdir().unwrap();
    let (mut first, adopted) = open(dir.path(), 100);
    assert_eq!(adopted.bytes, 0);
    for b in [&b"aaaa"[..], b"bbbb", b"cccc"] {
        first.append(b, None).unwrap();
    }
    // A reload builds the new instance while the old one still runs.
    let (second, adopted) = open(dir.path(), 100);
    assert_eq!(adopted.bytes, 0, "the live instance's file is its own");
    drop(second);
    // The old one goes (or is SIGKILLed: the kernel drops its lock).
    drop(first);
    let (third, adopted) = open(dir.path(), 6);
    assert_eq!(batches(&third), one(b"cccc"), "bounded by the window");
    assert_eq!(adopted.bytes, 4);
    assert!(adopted.damaged.is_empty());
    drop(third);
    // The third wrote what it adopted into its own file first.
    let (fourth, adopted) = open(dir.path(), 100);
    assert_eq!(adopted.bytes, 4);
    assert_eq!(batches(&fourth), one(b"cccc"));
    let left: Vec<_> = fs::read_dir(replay_dir(dir.path(), "sys"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(
        left.len(),
        2,
        "only the live instance's lock and file: {left:?}"
    );
}

#[test]
fn frames_of_another_framing_are_never_adopted() {
    let dir = tempfile::tempdir().unwrap();
    let (mut lf, _) = ReplayLog::open(dir.path(), "sys", 100, "lf", Duration::ZERO).unwrap();
    lf.append(b"<134>1 - - - - - - x\n", None).unwrap();
    let lf_file = lf.path.clone();
    drop(lf);
    let (oc, adopted) = open(dir.path(), 100);
    assert_eq!(adopted.bytes, 0);
    assert!(batches(&oc).is_empty());
    assert_eq!(adopted.discarded, std::slice::from_ref(&lf_file));
    assert!(!lf_file.exists());
}

#[test]
fn a_torn_or_corrupt_tail_keeps_the_records_before_it() {
    for damage in ["torn", "corrupt", "huge length"] {
        let dir = tempfile::tempdir().unwrap();
        let log = holding(dir.path(), 100, &[b"one", b"two"]);
        let path = log.path.clone();
        drop(log);
        let mut bytes = fs::read(&path).unwrap();
        let last = bytes.len() - RECORD_HEAD - 3;
        match damage {
            "torn" => bytes.truncate(bytes.len() - 1),
            "corrupt" => *bytes.last_mut().unwrap() ^= 1,
            _ => bytes[last..last + 4].copy_from_slice(&u32::MAX.to_le_bytes()),
        }
        fs::write(&path, &bytes).unwrap();
        let (log, adopted) = open(dir.path(), 100);
        assert_eq!(batches(&log), one(b"one"), "{damage}");
        assert_eq!(adopted.damaged, [path], "{damage}");
    }
}

/// The window is kept in the file only: what a resend reads back is
/// what was appended, across trimming to the cap and rewrites.
#[test]
fn the_window_read_back_is_the_last_batches_appended() {
    let dir = tempfile::tempdir().unwrap();
    let cap = 300_000;
    let (mut log, _) = open(dir.path(), cap);
    let mut model: VecDeque<Vec<u8>> = VecDeque::new();
    let mut rewrites = 0;
    for i in 0..40u8 {
        let batch = vec![b'a' + i % 26; 50_000 + usize::from(i) * 1000];
        let size = log.file_bytes;
        log.append(&batch, None).unwrap();
        if log.file_bytes < size {
            rewrites += 1;
        }
        model.push_back(batch);
        while model.iter().map(Vec::len).sum::<usize>() > cap {
            model.pop_front();
        }
        assert_eq!(batches(&log), Vec::from(model.clone()), "after batch {i}");
        assert_eq!(
            log.window_bytes(),
            model.iter().map(Vec::len).sum::<usize>()
        );
    }
    assert!(rewrites >= 2, "the file was rewritten: {rewrites}");
    log.clear().unwrap();
    assert!(batches(&log).is_empty());
    assert_eq!(fs::read(&log.path).unwrap(), log.header);
}

/// A record changed on disk after it was written is an error naming
/// the file and the offset, never frames sent as if they were ours.
#[test]
fn a_record_damaged_on_disk_is_not_read_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = holding(dir.path(), 100, &[b"first", b"second"]);
    let at = log.window.spans[1].at;
    let f = OpenOptions::new().write(true).open(&log.path).unwrap();
    f.write_all_at(b"X", at + RECORD_HEAD as u64).unwrap();
    assert_eq!(log.read_batch(0).unwrap().as_deref(), Some(&b"first"[..]));
    let e = log.read_batch(1).unwrap_err().to_string();
    assert!(
        e.contains(&format!("offset {at} of {}", log.path.display())) && e.contains("checksum"),
        "{e}"
    );
    // Cut short (a truncated file): an error too.
    f.set_len(at + 3).unwrap();
    assert!(log.read_batch(1).is_err());
}

/// Runs `name` (an ignored test of this module) in a child process with
/// `env` set, so it may change process-wide limits.
fn in_child(name: &str, env: &str, value: &Path) {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--exact", &format!("sink::syslog::replay::tests::{name}")])
        .args(["--ignored", "--nocapture", "--test-threads=1"])
        .env(env, value)
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("1 passed"), "the child ran the test: {text}");
}

/// A failed append (here: the file size limit; in life a full disk)
/// leaves part of a record behind. The batch is not confirmed and is
/// sent and appended again: what a later instance adopts must still
/// hold it and every batch after it.
#[test]
fn a_batch_appended_after_a_failed_append_is_still_adopted() {
    let dir = tempfile::tempdir().unwrap();
    in_child(
        "failed_append_child",
        "REPLAY_FAILED_APPEND_DIR",
        dir.path(),
    );
}

#[test]
#[ignore = "run by a_batch_appended_after_a_failed_append_is_still_adopted"]
fn failed_append_child() {
    let Some(dir) = std::env::var_os("REPLAY_FAILED_APPEND_DIR") else {
        return;
    };
    let dir = Path::new(&dir);
    let limit = |soft: libc::rlim_t| {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: plain libc calls on a valid struct, in a child process
        // of its own.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut lim), 0);
            lim.rlim_cur = soft.min(lim.rlim_max);
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lim), 0);
        }
    };
    let (mut log, _) = open(dir, 1 << 20);
    let (a, b, c) = (vec![b'a'; 100], vec![b'b'; 8000], vec![b'c'; 100]);
    log.append(&a, None).unwrap();
    limit(4096);
    assert!(log.append(&b, None).is_err(), "over the size limit");
    limit(libc::RLIM_INFINITY);
    // Sent again and confirmed this time, then the next batch.
    log.append(&b, None).unwrap();
    log.append(&c, None).unwrap();
    assert_eq!(batches(&log), [a.clone(), b.clone(), c.clone()]);
    drop(log);
    let (next, adopted) = open(dir, 1 << 20);
    assert_eq!(batches(&next), [a, b, c]);
    assert!(adopted.damaged.is_empty(), "{:?}", adopted.damaged);
}

#[test]
fn rewriting_keeps_only_the_window() {
    let dir = tempfile::tempdir().unwrap();
    let mut log = holding(dir.path(), 4, &[b"one!", b"two!"]);
    log.rewrite().unwrap();
    assert_eq!(
        fs::metadata(&log.path).unwrap().len() as usize,
        MAGIC.len() + OC.len() + 1 + RECORD_HEAD + 4
    );
    assert_eq!(batches(&log), one(b"two!"));
    log.append(b"six!", None).unwrap();
    assert_eq!(batches(&log), one(b"six!"));
}

/// Two instances that died (a reload, then a kill) leave two files:
/// the later instance's frames are the newer ones, resent last and kept
/// when the cap leaves room for one, whatever order the directory lists
/// them in.
#[test]
fn the_later_instance_s_frames_are_adopted_last_and_kept_over_the_cap() {
    for trial in 0..4 {
        let dir = tempfile::tempdir().unwrap();
        // A directory in use has gaps where removed files were, which
        // later names fill: listing order is not creation order.
        let gap = replay_dir(dir.path(), "sys").join("g".repeat(200));
        fs::create_dir_all(gap.parent().unwrap()).unwrap();
        fs::write(&gap, b"").unwrap();
        let older = holding(dir.path(), 100, &[b"older"]);
        fs::remove_file(&gap).unwrap();
        let newer = holding(dir.path(), 100, &[b"newer"]);
        drop(older);
        drop(newer);
        let (whole, _) = open(dir.path(), 100);
        assert_eq!(
            batches(&whole),
            [b"older".to_vec(), b"newer".to_vec()],
            "trial {trial}: oldest instance first"
        );
        // Its file holds both now, in that order; a cap of one batch
        // keeps the newest.
        drop(whole);
        let (capped, _) = open(dir.path(), 5);
        assert_eq!(batches(&capped), one(b"newer"), "trial {trial}");
    }
}

/// A dead instance's window is skipped only when the connection that
/// carried it closed cleanly (the receiver read everything); a reset one,
/// or no name at all, gets it resent.
#[test]
fn a_window_whose_connection_closed_cleanly_is_not_resent() {
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    for (case, reads_everything) in [("clean close", true), ("reset", false)] {
        let dir = tempfile::tempdir().unwrap();
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut theirs, _) = listener.accept().unwrap();
        let carried_by = Connection::of(
            std::os::fd::AsRawFd::as_raw_fd(&ours),
            ours.local_addr().unwrap(),
            ours.peer_addr().unwrap(),
        );
        assert!(carried_by.is_some());
        ours.write_all(b"aaaabbbb").unwrap();
        let (mut log, _) = open(dir.path(), 100);
        log.append(b"aaaa", carried_by).unwrap();
        log.append(b"bbbb", carried_by).unwrap();
        // Killed: the kernel closes our socket and drops the lock.
        drop(ours);
        drop(log);
        if reads_everything {
            let mut all = Vec::new();
            theirs.read_to_end(&mut all).unwrap();
        }
        drop(theirs);
        let (next, adopted) =
            ReplayLog::open(dir.path(), "sys", 100, OC, Duration::from_secs(5)).unwrap();
        if reads_everything {
            assert!(batches(&next).is_empty(), "{case}");
            assert_eq!((adopted.bytes, adopted.read), (0, 8), "{case}");
        } else {
            assert_eq!(
                batches(&next),
                [b"aaaa".to_vec(), b"bbbb".to_vec()],
                "{case}"
            );
            assert_eq!((adopted.bytes, adopted.read), (8, 0), "{case}");
        }
        let left: Vec<_> = fs::read_dir(replay_dir(dir.path(), "sys"))
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        assert_eq!(
            left.len(),
            2,
            "{case}: only the new lock and file: {left:?}"
        );
    }
}

/// The name is written before the first record of a new connection, and a
/// batch whose connection is not known takes the name away.
#[test]
fn the_connection_is_named_before_its_first_record() {
    let dir = tempfile::tempdir().unwrap();
    let (mut log, _) = open(dir.path(), 100);
    let name = log.path.with_extension("conn");
    let conn = |port: u16, cookie: u64| Connection {
        ours: std::net::SocketAddr::from(([127, 0, 0, 1], port)),
        theirs: "127.0.0.1:514".parse().unwrap(),
        cookie,
        boot: 1,
    };
    let (a, b) = (conn(40000, 7), conn(40001, 8));
    log.append(b"one", Some(a)).unwrap();
    assert_eq!(read_connection(&name), Some(a));
    log.append(b"two", Some(b)).unwrap();
    assert_eq!(read_connection(&name), Some(b));
    log.append(b"three", None).unwrap();
    assert!(!name.exists(), "an unknown connection proves nothing");
}
