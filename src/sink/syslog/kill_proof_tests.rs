//! The proof a restart takes from a dead connection's TIME_WAIT must cover
//! every frame of the window (see `closed.rs`).

use super::*;
use bytes::Bytes;
use std::sync::Mutex;
use std::time::Duration;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};

fn event(i: usize) -> Event {
    let id = format!("e{i:03}");
    Event {
        raw: Bytes::from(format!("{{\"id\":\"{id}\"}}")),
        id: Some(id.into()),
        time: None,
        kind: None,
    }
}

fn sink(port: u16, dir: &std::path::Path) -> SyslogSink {
    let cfg: SyslogConfig = serde_json::from_value(serde_json::json!({
        "address": format!("tcp://127.0.0.1:{port}"),
        "timeout": "300ms",
    }))
    .unwrap();
    let common: SinkCommon = serde_json::from_value(serde_json::json!({
        "inputs": ["s"], "retry": {"initial": "5ms", "max": "20ms"}
    }))
    .unwrap();
    SyslogSink::new(cfg, &common, SinkContext::in_dir(dir, "tcp-test")).unwrap()
}

/// The first connection is accepted and never read (a busy receiver);
/// later ones are read to EOF and closed cleanly (rsyslog-like).
struct Receiver {
    port: u16,
    stalled: Arc<Mutex<Vec<TcpStream>>>,
    read: Arc<Mutex<String>>,
}

async fn receiver() -> Receiver {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let stalled = Arc::new(Mutex::new(Vec::new()));
    let read = Arc::new(Mutex::new(String::new()));
    let (s, r) = (stalled.clone(), read.clone());
    tokio::spawn(async move {
        let mut first = true;
        while let Ok((mut c, _)) = listener.accept().await {
            if std::mem::take(&mut first) {
                s.lock().unwrap().push(c);
                continue;
            }
            let r = r.clone();
            tokio::spawn(async move {
                let mut all = Vec::new();
                let _ = c.read_to_end(&mut all).await;
                r.lock().unwrap().push_str(&String::from_utf8_lossy(&all));
                // dropped: a clean close after our FIN
            });
        }
    });
    Receiver {
        port,
        stalled,
        read,
    }
}

/// A close() that finds no proof keeps the window; a later delivery on the
/// same instance (a spool drainer or a late attempt still running after
/// the sinks were closed) goes out on a new connection and names it in
/// `.conn`, so it must carry the window first: else, after the process
/// ends, that connection's TIME_WAIT would vouch for frames it never
/// carried (the first connection's receiver died with them unread).
#[tokio::test]
async fn a_delivery_after_a_close_without_proof_vouches_for_a_window_it_never_carried() {
    let rx = receiver().await;
    let dir = tempfile::tempdir().unwrap();
    let first = sink(rx.port, dir.path());
    let a: Vec<Event> = (0..10).map(event).collect();
    first.deliver("s", &a).await.unwrap(); // confirmed: B's kernel acked
    first.close().await; // B: no FIN back within 300 ms: window kept
    let b: Vec<Event> = (10..20).map(event).collect();
    first.deliver("s", &b).await.unwrap(); // on C, without the window
                                           // The busy receiver dies with B's frames unread: a reset.
    for s in rx.stalled.lock().unwrap().drain(..) {
        let _ = s.set_zero_linger();
    }
    // The process ends: C gets our FIN, the receiver closes: TIME_WAIT (the
    // next instance waits for it while C is still closing).
    drop(first);
    let second = sink(rx.port, dir.path());
    let c: Vec<Event> = (20..30).map(event).collect();
    second.deliver("s", &c).await.unwrap();
    drop(second);
    let missing = |read: &str| -> Vec<usize> {
        (0..30)
            .filter(|i| !read.contains(&format!("\"id\":\"e{i:03}\"")))
            .collect()
    };
    // Bounded: the receiver reads what the second instance sent.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !missing(&rx.read.lock().unwrap().clone()).is_empty()
        && std::time::Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let missing = missing(&rx.read.lock().unwrap().clone());
    assert!(
        missing.is_empty(),
        "confirmed, never read, never resent: {missing:?}"
    );
}

/// A connection is its socket, not its addresses: another one that later
/// gets the same ports to the same receiver and closes cleanly proves
/// nothing about a dead instance's connection that was reset.
#[tokio::test]
async fn a_later_socket_on_the_same_ports_does_not_vouch_for_the_dead_one() {
    use std::os::fd::AsRawFd;
    use tokio::io::AsyncWriteExt;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let peer = listener.local_addr().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let mut ours = TcpStream::connect(peer).await.unwrap();
    let (theirs, _) = listener.accept().await.unwrap();
    let local = ours.local_addr().unwrap();
    let carried_by = replay::Connection::of(ours.as_raw_fd(), local, peer);
    assert!(carried_by.is_some());
    ours.write_all(b"aaaa").await.unwrap();
    let (mut log, _) =
        replay::ReplayLog::open(dir.path(), "sys", 100, "octet_counting", Duration::ZERO).unwrap();
    log.append(b"aaaa", carried_by).unwrap();
    drop(ours); // killed
    drop(log);
    // The receiver dies with our bytes unread: a reset, no TIME_WAIT.
    theirs.set_zero_linger().unwrap();
    drop(theirs);
    // Someone else gets the same source port to the same receiver (bound
    // once the reset freed it), and closes cleanly.
    let mut other = None;
    for _ in 0..1000 {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.set_reuseaddr(true).unwrap();
        if socket.bind(local).is_ok() {
            other = Some(socket.connect(peer).await.unwrap());
            break;
        }
        tokio::task::yield_now().await;
    }
    let other = other.expect("the source port comes free after the reset");
    let (mut theirs, _) = listener.accept().await.unwrap();
    drop(other);
    let mut all = Vec::new();
    theirs.read_to_end(&mut all).await.unwrap();
    drop(theirs);
    let d = dir.path().to_path_buf();
    let (next, adopted) = tokio::task::spawn_blocking(move || {
        replay::ReplayLog::open(&d, "sys", 100, "octet_counting", Duration::from_secs(5)).unwrap()
    })
    .await
    .unwrap();
    assert_eq!(
        (adopted.bytes, adopted.read, next.window_bytes()),
        (4, 0, 4),
        "the reset connection's window must be resent"
    );
}
