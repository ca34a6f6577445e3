//! A plain TCP syslog receiver (RFC 6587 octet counting) that can lose
//! what its kernel acknowledged, as a real receiver does when it crashes or
//! restarts with frames in its buffers: in `losing` mode it reads every
//! frame (so the sender's TCP stack sees each byte acknowledged) and throws
//! it away; `reset_connections` closes every open connection with a reset.
//! Receivers differ in what they do when the sender closes its side:
//! rsyslog closes at once, others keep the connection until an idle
//! timeout; `set_holding_on_eof(true)` models the latter. A busy or hung
//! receiver stops reading: `set_stalled(true)` makes connections opened
//! from then on read nothing (their kernel acknowledges until its buffer
//! is full) until `reset_connections`.
//! Frames are told apart by their SD `id="…"` parameter. Runs on
//! 127.0.0.1:0 and stops when dropped.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

#[derive(Default)]
struct Inner {
    losing: AtomicBool,
    /// After the sender's FIN, keep the connection open (until a reset or
    /// the receiver stops) instead of closing it.
    holding_on_eof: AtomicBool,
    /// Connections accepted now read nothing until a reset.
    stalled: AtomicBool,
    /// Ids of frames read while not losing, in arrival order.
    kept: Mutex<Vec<String>>,
    /// Ids of frames read and thrown away.
    lost: Mutex<Vec<String>>,
    arrived: Notify,
    /// Connections being served, and a signal when one ends.
    open: AtomicUsize,
    closed: Notify,
}

/// Counts a connection as open while it is served.
struct Served(Arc<Inner>);

impl Drop for Served {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::SeqCst);
        self.0.closed.notify_waiters();
    }
}

pub struct SyslogReceiver {
    pub port: u16,
    inner: Arc<Inner>,
    resets: watch::Sender<u64>,
    task: JoinHandle<()>,
}

impl SyslogReceiver {
    pub async fn start(losing: bool) -> SyslogReceiver {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let inner = Arc::new(Inner::default());
        inner.losing.store(losing, Ordering::SeqCst);
        let (resets, _) = watch::channel(0u64);
        let (shared, reset_rx) = (inner.clone(), resets.subscribe());
        let task = tokio::spawn(async move {
            let mut conns = tokio::task::JoinSet::new();
            while let Ok((stream, _)) = listener.accept().await {
                shared.open.fetch_add(1, Ordering::SeqCst);
                let served = Served(shared.clone());
                conns.spawn(serve(stream, served, reset_rx.clone()));
            }
        });
        SyslogReceiver {
            port,
            inner,
            resets,
            task,
        }
    }

    pub fn set_losing(&self, losing: bool) {
        self.inner.losing.store(losing, Ordering::SeqCst);
    }

    pub fn set_holding_on_eof(&self, holding: bool) {
        self.inner.holding_on_eof.store(holding, Ordering::SeqCst);
    }

    pub fn set_stalled(&self, stalled: bool) {
        self.inner.stalled.store(stalled, Ordering::SeqCst);
    }

    /// Resets (RST) every connection open now.
    pub fn reset_connections(&self) {
        self.resets.send_modify(|n| *n += 1);
    }

    /// Resets every connection open now and waits (at most `within`)
    /// until each is gone, so the sender's next write finds the reset.
    pub async fn reset_connections_and_wait(&self, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        self.reset_connections();
        loop {
            let closed = self.inner.closed.notified();
            if self.inner.open.load(Ordering::SeqCst) == 0 {
                return true;
            }
            if tokio::time::timeout_at(deadline, closed).await.is_err() {
                return self.inner.open.load(Ordering::SeqCst) == 0;
            }
        }
    }

    pub fn lost(&self) -> Vec<String> {
        self.inner.lost.lock().unwrap().clone()
    }

    pub fn kept(&self) -> Vec<String> {
        self.inner.kept.lock().unwrap().clone()
    }

    /// Waits until `pred` holds for (lost, kept), or `within` passes.
    pub async fn wait_until(
        &self,
        within: Duration,
        pred: impl Fn(&[String], &[String]) -> bool,
    ) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            let arrived = self.inner.arrived.notified();
            if pred(&self.lost(), &self.kept()) {
                return true;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                return pred(&self.lost(), &self.kept());
            }
        }
    }
}

impl Drop for SyslogReceiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves one connection; it counts as open until its socket is closed.
async fn serve(stream: TcpStream, served: Served, resets: watch::Receiver<u64>) {
    read_frames(stream, served.0.clone(), resets).await;
    drop(served);
}

async fn read_frames(mut stream: TcpStream, inner: Arc<Inner>, mut resets: watch::Receiver<u64>) {
    resets.borrow_and_update();
    if inner.stalled.load(Ordering::SeqCst) {
        // Unread data and a close: the kernel resets the connection.
        let _ = resets.changed().await;
        let _ = stream.set_zero_linger();
        return;
    }
    let mut buf = Vec::new();
    let mut chunk = vec![0u8; 64 * 1024];
    loop {
        let n = tokio::select! {
            r = stream.read(&mut chunk) => match r {
                Ok(0) if inner.holding_on_eof.load(Ordering::SeqCst) => {
                    let _ = resets.changed().await;
                    let _ = stream.set_zero_linger();
                    return;
                }
                Ok(0) | Err(_) => return,
                Ok(n) => n,
            },
            _ = resets.changed() => {
                // SO_LINGER 0: close with a reset, as a crashing receiver's
                // kernel does when unread data is left.
                let _ = stream.set_zero_linger();
                return;
            }
        };
        buf.extend_from_slice(&chunk[..n]);
        while let Some((id, used)) = next_frame(&buf) {
            buf.drain(..used);
            let into = if inner.losing.load(Ordering::SeqCst) {
                &inner.lost
            } else {
                &inner.kept
            };
            into.lock().unwrap().push(id);
            inner.arrived.notify_waiters();
        }
    }
}

/// The SD id of the first whole octet-counted frame in `buf`, and the
/// bytes it takes.
fn next_frame(buf: &[u8]) -> Option<(String, usize)> {
    let sp = buf.iter().position(|b| *b == b' ')?;
    let len: usize = std::str::from_utf8(&buf[..sp]).ok()?.parse().ok()?;
    let msg = buf.get(sp + 1..sp + 1 + len)?;
    let text = String::from_utf8_lossy(msg);
    let id = text
        .split_once(" id=\"")
        .and_then(|(_, rest)| rest.split_once('"'))
        .map_or_else(String::new, |(id, _)| id.to_string());
    Some((id, sp + 1 + len))
}
