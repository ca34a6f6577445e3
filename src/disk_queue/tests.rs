use super::*;
use std::time::Duration;

fn texts(r: &Chunk) -> Vec<String> {
    r.records
        .iter()
        .map(|b| String::from_utf8_lossy(b).into_owned())
        .collect()
}

/// A new spool in a temporary directory, kept alive by the returned guard.
fn fresh(segment_bytes: u64, max_bytes: u64) -> (tempfile::TempDir, DiskQueue) {
    let dir = tempfile::tempdir().unwrap();
    let spool = DiskQueue::open(dir.path(), segment_bytes, max_bytes).unwrap();
    (dir, spool)
}

/// Up to ten records from `from`.
fn read_ten(spool: &DiskQueue, from: Pos) -> Chunk {
    spool.read(from, 10, 1 << 20).unwrap()
}

/// Whether appending `record` is refused because the spool is full.
fn refused_as_full(spool: &DiskQueue, record: &[u8]) -> bool {
    matches!(spool.append(&[record]), Err(AppendError::Full { .. }))
}

#[test]
fn a_reopened_spool_waits_for_the_instance_it_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let old = DiskQueue::open(dir.path(), 1 << 20, 1 << 20).unwrap();
    let start = old.start().unwrap();
    let (opened_tx, opened_rx) = std::sync::mpsc::channel();
    let path = dir.path().to_path_buf();
    let reopening = std::thread::spawn(move || {
        let new = DiskQueue::open(&path, 1 << 20, 1 << 20);
        let _ = opened_tx.send(());
        new
    });
    // The old instance is still writing into its header-only segment.
    assert!(
        opened_rx.recv_timeout(Duration::from_millis(200)).is_err(),
        "the new instance must not open the segment the old one writes"
    );
    old.append(&[b"from-old"]).unwrap();
    drop(old);
    opened_rx
        .recv_timeout(Duration::from_secs(10))
        .expect("opens once the old instance is gone");
    let new = reopening.join().unwrap().unwrap();
    new.append(&[b"from-new"]).unwrap();
    let mut got = Vec::new();
    let mut pos = start;
    for _ in 0..10 {
        let r = read_ten(&new, pos);
        got.extend(texts(&r));
        if r.next == pos {
            break;
        }
        pos = r.next;
    }
    assert_eq!(got, vec!["from-old", "from-new"]);
}

#[test]
fn delivered_bytes_of_the_current_segment_do_not_count_as_full() {
    // A segment larger than the spool: it never rotates while full.
    let (_dir, spool) = fresh(1 << 20, 200);
    let start = spool.start().unwrap();
    let record = [b'x'; 80];
    spool.append(&[&record]).unwrap();
    spool.append(&[&record]).unwrap();
    assert!(refused_as_full(&spool, &record));
    let read = read_ten(&spool, start);
    assert_eq!(read.records.len(), 2);
    // Both delivered and committed: room again, in the same segment.
    spool.release(read.next).unwrap();
    spool.append(&[&record]).unwrap();
    spool.append(&[&record]).unwrap();
    assert!(refused_as_full(&spool, &record));
}

#[test]
fn append_read_rotate_and_remove() {
    let (_dir, spool) = fresh(64, 1 << 20);
    let start = spool.start().unwrap();
    spool.append(&[b"{\"a\":1}", b"{\"b\":2}"]).unwrap();
    spool.append(&[b"{\"c\":3}"]).unwrap();
    spool.append(&[b"{\"d\":4}"]).unwrap();
    assert!(spool.tail().segment > 1, "rotated at 64 bytes");
    let r = spool.read(start, 2, 1 << 20).unwrap();
    assert_eq!(texts(&r), vec!["{\"a\":1}", "{\"b\":2}"]);
    let r2 = read_ten(&spool, r.next);
    assert_eq!(texts(&r2), vec!["{\"c\":3}", "{\"d\":4}"]);
    let r3 = read_ten(&spool, r2.next);
    assert!(r3.records.is_empty() && r3.next == r2.next);
    let before = spool.bytes();
    assert!(spool.remove_before(r2.next.segment).unwrap() >= 1);
    assert!(spool.bytes() < before);
    // Reading from a removed segment moves on to the next one.
    let r4 = read_ten(&spool, start);
    assert!(r4.records.len() <= 2);
}

#[test]
fn torn_tail_is_cut_at_open_and_full_spool_refuses() {
    let dir = tempfile::tempdir().unwrap();
    {
        let spool = DiskQueue::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        spool.append(&[b"{\"ok\":1}"]).unwrap();
    }
    let path = dir.path().join(segment_name(1));
    let mut f = OpenOptions::new().append(true).open(&path).unwrap();
    f.write_all(&[200, 0, 0, 0, 1, 2, 3, 4, b'{']).unwrap();
    drop(f);
    let spool = DiskQueue::open(dir.path(), 1 << 20, 100).unwrap();
    let r = read_ten(&spool, spool.start().unwrap());
    assert_eq!(texts(&r), vec!["{\"ok\":1}"]);
    assert!(r.skipped.is_empty());
    spool.append(&[b"{\"next\":2}"]).unwrap();
    let r = read_ten(&spool, r.next);
    assert_eq!(texts(&r), vec!["{\"next\":2}"]);
    let big = vec![b'x'; 200];
    assert!(refused_as_full(&spool, &big));
}

#[test]
fn corruption_in_a_sealed_segment_is_reported_and_skipped() {
    let (dir, spool) = fresh(40, 1 << 20);
    spool
        .append(&[b"{\"first\":1}", b"{\"second\":2}"])
        .unwrap();
    spool.append(&[b"{\"third\":3}"]).unwrap();
    let path = dir.path().join(segment_name(1));
    let mut data = fs::read(&path).unwrap();
    let last = data.len() - 2;
    data[last] ^= 0xff;
    fs::write(&path, &data).unwrap();
    let r = read_ten(&spool, spool.start().unwrap());
    assert_eq!(texts(&r), vec!["{\"first\":1}", "{\"third\":3}"]);
    assert_eq!(r.skipped.len(), 1);
    assert!(r.skipped[0].contains("checksum"), "{:?}", r.skipped);
}

#[test]
fn a_damaged_record_in_the_newest_segment_is_skipped_not_cut() {
    let dir = tempfile::tempdir().unwrap();
    let delivered;
    {
        let spool = DiskQueue::open(dir.path(), 1 << 20, 1 << 20).unwrap();
        for r in [b"{\"r\":1}", b"{\"r\":2}", b"{\"r\":3}"] {
            spool.append(&[r]).unwrap();
        }
        let r = read_ten(&spool, spool.start().unwrap());
        assert_eq!(r.records.len(), 3);
        delivered = r.next;
    }
    // Bit rot in record 1, already delivered.
    let path = dir.path().join(segment_name(1));
    let mut data = fs::read(&path).unwrap();
    let whole = data.len();
    data[MAGIC.len() + 8 + 2] ^= 0xff;
    fs::write(&path, &data).unwrap();
    let spool = DiskQueue::open(dir.path(), 1 << 20, 1 << 20).unwrap();
    assert_eq!(
        fs::metadata(&path).unwrap().len() as usize,
        whole,
        "nothing cut"
    );
    spool.append(&[b"{\"r\":4}"]).unwrap();
    spool.append(&[b"{\"r\":5}"]).unwrap();
    let r = read_ten(&spool, delivered);
    assert_eq!(texts(&r), vec!["{\"r\":4}", "{\"r\":5}"], "{:?}", r.skipped);
    // Read from the start: only the damaged record is skipped.
    let all = read_ten(&spool, spool.start().unwrap());
    assert_eq!(
        texts(&all),
        vec!["{\"r\":2}", "{\"r\":3}", "{\"r\":4}", "{\"r\":5}"]
    );
    assert_eq!(all.skipped.len(), 1, "{:?}", all.skipped);
}
