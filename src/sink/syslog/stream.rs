//! Writing frames to a TCP or TLS stream and knowing when the receiver's
//! TCP stack has acknowledged them (Linux `SIOCOUTQ`), and noticing a
//! receiver that closed or reset the connection before writing into it.

use std::os::fd::RawFd;
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::replay::Resend;

/// A stream a syslog frame can be written to (TCP or TLS over TCP).
pub(super) trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

pub(super) struct StreamConn {
    pub(super) io: Box<dyn Io>,
    /// The TCP socket under `io`, for liveness and send-queue checks.
    pub(super) fd: RawFd,
    /// How the kernel knows this connection, to find out after a kill how
    /// it ended (see `closed.rs`); `None` where it does not tell.
    pub(super) connection: Option<super::replay::Connection>,
}

/// Why a write to a stream failed; `clean` when the receiver had closed
/// the connection in an orderly way (FIN) before anything was written, so
/// it read everything sent before.
pub(super) struct StreamError {
    pub(super) why: String,
    pub(super) clean: bool,
}

impl StreamError {
    fn dirty(why: String) -> Self {
        StreamError { why, clean: false }
    }
}

/// Writes the replay window (read back as it goes) then `buf`, flushes,
/// and waits until the receiver's TCP stack has acknowledged every byte,
/// checking that the connection stays open.
pub(super) async fn send_stream(
    conn: &mut StreamConn,
    replay: Option<&mut Resend>,
    buf: &[u8],
    timeout: Duration,
) -> Result<(), StreamError> {
    check_open(conn).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let failed = |e: std::io::Error| format!("write failed: {e}");
    let write = async {
        if let Some(resend) = replay {
            while let Some(old) = resend
                .next()
                .await
                .map_err(|e| format!("cannot read the replay window back to resend it: {e}"))?
            {
                conn.io.write_all(&old).await.map_err(failed)?;
            }
        }
        conn.io.write_all(buf).await.map_err(failed)?;
        conn.io.flush().await.map_err(failed)
    };
    match tokio::time::timeout_at(deadline, write).await {
        Ok(Ok(())) => {}
        Ok(Err(why)) => return Err(StreamError::dirty(why)),
        Err(_) => {
            return Err(StreamError::dirty(format!(
                "write did not finish within {}",
                humantime::format_duration(timeout)
            )))
        }
    }
    wait_acknowledged(conn.fd, deadline.into_std())
        .await
        .map_err(StreamError::dirty)
}

/// Ends the connection in order — TLS `close_notify`, then our FIN — and
/// waits until `deadline` for the receiver's FIN. Our FIN comes after every
/// frame, and a receiver closes after reading up to it (rsyslog does at
/// once, over TCP and TLS), so its clean close proves it read every frame:
/// `Ok` only then. A reset, data after the TLS close, or no close in time
/// prove nothing.
pub(super) async fn close_gracefully(
    conn: &mut StreamConn,
    deadline: tokio::time::Instant,
) -> Result<(), String> {
    let late = || "the receiver did not close its side in time".to_string();
    match tokio::time::timeout_at(deadline, conn.io.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(format!("closing the connection failed: {e}")),
        Err(_) => return Err(late()),
    }
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at(deadline, conn.io.read(&mut buf)).await {
            Err(_) => return Err(late()),
            Ok(Ok(0)) => break,
            // TLS session tickets and the like; plain receivers send nothing.
            Ok(Ok(_)) => {}
            // TLS: a TCP FIN without the receiver's close_notify (rsyslog's
            // gtls driver closes so); the socket below tells FIN from reset.
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Ok(Err(e)) => return Err(format!("connection failed while closing: {e}")),
        }
    }
    // TLS ends at the receiver's close_notify, which may precede its FIN.
    let mut delay = Duration::from_micros(100);
    loop {
        match peek(conn.fd) {
            Peer::Closed => return Ok(()),
            Peer::Failed(why) => return Err(why),
            Peer::Data => return Err("the receiver sent data after closing TLS".into()),
            Peer::Open if tokio::time::Instant::now() >= deadline => return Err(late()),
            Peer::Open => {}
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

/// What a non-blocking peek says about a TCP socket.
enum Peer {
    Open,
    /// The receiver sent something (TLS records, usually).
    Data,
    /// Orderly close (FIN): the receiver read everything before closing.
    Closed,
    /// Reset or another error: unread data may have been thrown away.
    Failed(String),
}

fn peek(fd: RawFd) -> Peer {
    let mut byte = [0u8; 1];
    // SAFETY: recv(2) into a valid 1-byte buffer on a socket we own; the fd
    // stays open while the connection that holds it is borrowed.
    let n = unsafe {
        libc::recv(
            fd,
            byte.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    match n {
        0 => Peer::Closed,
        n if n > 0 => Peer::Data,
        _ => {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Peer::Open,
                _ => Peer::Failed(format!("connection failed: {e}")),
            }
        }
    }
}

const CLOSED: &str = "the receiver closed the connection";

/// Fails when the receiver closed or reset the connection, so a batch is
/// never written into a socket that is already dead.
async fn check_open(conn: &mut StreamConn) -> Result<(), StreamError> {
    for _ in 0..8 {
        match peek(conn.fd) {
            Peer::Open => return Ok(()),
            Peer::Closed => {
                return Err(StreamError {
                    why: CLOSED.into(),
                    clean: true,
                })
            }
            Peer::Failed(why) => return Err(StreamError::dirty(why)),
            Peer::Data => {
                // Let TLS process what arrived (session tickets, close_notify);
                // plain syslog receivers send nothing, so data is discarded.
                let mut buf = [0u8; 4096];
                match tokio::time::timeout(Duration::from_millis(5), conn.io.read(&mut buf)).await {
                    Err(_) => return Ok(()),
                    Ok(Ok(0)) => {
                        return Err(StreamError {
                            why: CLOSED.into(),
                            clean: peek(conn.fd).is_closed(),
                        })
                    }
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => {
                        return Err(StreamError::dirty(format!("connection failed: {e}")))
                    }
                }
            }
        }
    }
    Ok(())
}

impl Peer {
    fn is_closed(&self) -> bool {
        matches!(self, Peer::Closed)
    }
}

/// Waits until the socket's send queue is empty: every byte written was
/// acknowledged by the receiver's TCP stack.
async fn wait_acknowledged(fd: RawFd, deadline: Instant) -> Result<(), String> {
    let mut delay = Duration::from_micros(100);
    loop {
        let queued = send_queue(fd)?;
        if queued == 0 {
            return Ok(());
        }
        match peek(fd) {
            Peer::Closed => return Err(format!("{CLOSED} with {queued} bytes unacknowledged")),
            Peer::Failed(why) => return Err(format!("{why} with {queued} bytes unacknowledged")),
            Peer::Open | Peer::Data => {}
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "the receiver did not acknowledge {queued} bytes in time"
            ));
        }
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_millis(20));
    }
}

/// Bytes written but not yet acknowledged by the peer.
#[cfg(target_os = "linux")]
fn send_queue(fd: RawFd) -> Result<usize, String> {
    let mut n: libc::c_int = 0;
    // SAFETY: TIOCOUTQ (= SIOCOUTQ on TCP sockets) writes one int.
    let rc = unsafe { libc::ioctl(fd, libc::TIOCOUTQ, &mut n) };
    if rc < 0 {
        return Err(format!(
            "cannot read the socket's send queue: {}",
            std::io::Error::last_os_error()
        ));
    }
    Ok(n.max(0) as usize)
}

/// Elsewhere only the write and flush are checked.
#[cfg(not(target_os = "linux"))]
fn send_queue(_fd: RawFd) -> Result<usize, String> {
    Ok(0)
}
