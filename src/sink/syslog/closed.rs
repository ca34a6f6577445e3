//! How a killed instance's last TCP connection ended, asked of the kernel
//! (sock_diag netlink) by the next instance.
//!
//! When auditrelay dies, its kernel sends what was still queued and then a
//! FIN. A receiver that reads up to that FIN and closes answers with its own
//! FIN, and the dead connection waits out TIME_WAIT (60 s on Linux): proof
//! the receiver read every frame, the same proof a clean stop takes from
//! the receiver's close. A receiver that closes with our bytes unread
//! resets the connection instead, and a reset connection is gone at once.
//! So a restart resends the replay window only when it cannot find that
//! proof.
//!
//! A connection is known by its addresses *and* its socket cookie (a
//! number the kernel gives each socket once per boot, kept by its
//! TIME_WAIT) *and* the boot it was made in: a later connection that
//! happens to reuse the same port pair is another socket, and proves
//! nothing about ours.

use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;
use std::time::{Duration, Instant};

/// A connection as the kernel knows it: our address, the receiver's, the
/// socket's cookie, and the boot (`/proc/sys/kernel/random/boot_id`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    pub ours: SocketAddr,
    pub theirs: SocketAddr,
    pub cookie: u64,
    pub boot: u128,
}

/// This boot's id; `None` where the kernel does not tell.
fn boot_id() -> Option<u128> {
    static BOOT: std::sync::LazyLock<Option<u128>> = std::sync::LazyLock::new(|| {
        let text = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
        u128::from_str_radix(&text.trim().replace('-', ""), 16).ok()
    });
    *BOOT
}

impl Connection {
    /// The connection of the TCP socket `fd`; `None` where the kernel does
    /// not tell (then nothing can be proven about it later).
    pub fn of(fd: RawFd, ours: SocketAddr, theirs: SocketAddr) -> Option<Connection> {
        Some(Connection {
            ours,
            theirs,
            cookie: socket_cookie(fd)?,
            boot: boot_id()?,
        })
    }

    /// `ours theirs cookie boot`, one line (the `.conn` file).
    pub fn to_line(self) -> String {
        format!(
            "{} {} {} {:032x}\n",
            self.ours, self.theirs, self.cookie, self.boot
        )
    }

    pub fn from_line(line: &str) -> Option<Connection> {
        let mut fields = line.strip_suffix('\n')?.split(' ');
        let connection = Connection {
            ours: fields.next()?.parse().ok()?,
            theirs: fields.next()?.parse().ok()?,
            cookie: fields.next()?.parse().ok()?,
            boot: u128::from_str_radix(fields.next()?, 16).ok()?,
        };
        fields.next().is_none().then_some(connection)
    }
}

/// TCP states as the kernel numbers them.
const ESTABLISHED: u8 = 1;
const FIN_WAIT1: u8 = 4;
const FIN_WAIT2: u8 = 5;
const TIME_WAIT: u8 = 6;
const CLOSING: u8 = 11;

/// Waits (at most `within`) until `conn` is in TIME_WAIT: true then. False
/// as soon as it is in no state that can still lead there (reset, gone,
/// another socket on the same ports, another state), or when `within`
/// passed.
pub fn closed_cleanly(conn: Connection, within: Duration) -> bool {
    if boot_id() != Some(conn.boot) {
        return false; // made before a reboot: long gone, whatever shares its cookie
    }
    let deadline = Instant::now() + within;
    let mut delay = Duration::from_millis(5);
    loop {
        match state_of(conn) {
            Some(TIME_WAIT) => return true,
            // Our FIN is out (or about to be: the dead process's socket
            // may close a moment after its lock); the receiver may still be
            // reading up to it.
            Some(ESTABLISHED | FIN_WAIT1 | FIN_WAIT2 | CLOSING) if Instant::now() < deadline => {}
            _ => return false,
        }
        std::thread::sleep(delay.min(deadline.saturating_duration_since(Instant::now())));
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

#[cfg(target_os = "linux")]
fn socket_cookie(fd: RawFd) -> Option<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_COOKIE,
            (&mut cookie as *mut u64).cast(),
            &mut len,
        )
    };
    (rc == 0 && len as usize == std::mem::size_of::<u64>()).then_some(cookie)
}

#[cfg(not(target_os = "linux"))]
fn socket_cookie(_fd: RawFd) -> Option<u64> {
    None
}

/// The TCP state of `conn`, if the kernel has a socket with its addresses
/// and cookie (`inet_diag` exact lookup, which finds TIME_WAIT too).
#[cfg(target_os = "linux")]
fn state_of(conn: Connection) -> Option<u8> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    const NETLINK_SOCK_DIAG: libc::c_int = 4;
    const SOCK_DIAG_BY_FAMILY: u16 = 20;
    const NLM_F_REQUEST: u16 = 1;
    const NLMSG_ERROR: u16 = 2;
    const HEADER: usize = 16;
    let family = match conn.ours.ip() {
        IpAddr::V4(_) => libc::AF_INET,
        IpAddr::V6(_) => libc::AF_INET6,
    };
    // nlmsghdr, then inet_diag_req_v2 { family, protocol, ext, pad,
    // states, inet_diag_sockid { sport, dport (big-endian), src[16],
    // dst[16], if, cookie[2] } }.
    let mut request = Vec::with_capacity(HEADER + 56);
    request.extend_from_slice(&((HEADER + 56) as u32).to_ne_bytes());
    request.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    request.extend_from_slice(&NLM_F_REQUEST.to_ne_bytes());
    request.extend_from_slice(&1u32.to_ne_bytes()); // sequence
    request.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel
    request.extend_from_slice(&[family as u8, libc::IPPROTO_TCP as u8, 0, 0]);
    request.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    request.extend_from_slice(&conn.ours.port().to_be_bytes());
    request.extend_from_slice(&conn.theirs.port().to_be_bytes());
    for addr in [conn.ours.ip(), conn.theirs.ip()] {
        let mut bytes = [0u8; 16];
        match addr {
            IpAddr::V4(v4) => bytes[..4].copy_from_slice(&v4.octets()),
            IpAddr::V6(v6) => bytes.copy_from_slice(&v6.octets()),
        }
        request.extend_from_slice(&bytes);
    }
    // The interface a link-local IPv6 socket is bound to (else none).
    let interface = match conn.ours {
        SocketAddr::V6(v6) => v6.scope_id(),
        SocketAddr::V4(_) => 0,
    };
    request.extend_from_slice(&interface.to_ne_bytes());
    // The kernel compares the two 32-bit halves as it stores them.
    request.extend_from_slice(&(conn.cookie as u32).to_ne_bytes());
    request.extend_from_slice(&((conn.cookie >> 32) as u32).to_ne_bytes());

    // SAFETY: plain syscalls on a socket we own (closed by OwnedFd).
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let timeout = libc::timeval {
        tv_sec: 1,
        tv_usec: 0,
    };
    // SAFETY: setsockopt reads a timeval; send/recv use valid buffers.
    let answer = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&timeout as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        );
        if libc::send(fd.as_raw_fd(), request.as_ptr().cast(), request.len(), 0)
            != request.len() as isize
        {
            return None;
        }
        let mut buf = [0u8; 8192];
        let n = libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0);
        if n < 0 {
            return None;
        }
        buf[..n as usize].to_vec()
    };
    parse_answer(&answer, conn.cookie, NLMSG_ERROR, SOCK_DIAG_BY_FAMILY)
}

/// The state in a sock_diag answer (`inet_diag_msg` after the header),
/// when it is about the socket with `cookie`; `None` for an error (no such
/// socket) or anything else.
#[cfg(target_os = "linux")]
fn parse_answer(answer: &[u8], cookie: u64, error: u16, diag: u16) -> Option<u8> {
    let u32_at = |at: usize| -> Option<u32> {
        Some(u32::from_ne_bytes(answer.get(at..at + 4)?.try_into().ok()?))
    };
    let len = u32_at(0)? as usize;
    let kind = u16::from_ne_bytes(answer.get(4..6)?.try_into().ok()?);
    if kind == error || kind != diag || len > answer.len() {
        return None;
    }
    // inet_diag_msg: family, state, timer, retrans, then the sockid whose
    // cookie halves end it (offset 4 + 40).
    let msg = 16;
    let state = *answer.get(msg + 1)?;
    let low = u32_at(msg + 4 + 40)?;
    let high = u32_at(msg + 4 + 44)?;
    (u64::from(high) << 32 | u64::from(low) == cookie).then_some(state)
}

#[cfg(not(target_os = "linux"))]
fn state_of(_conn: Connection) -> Option<u8> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    fn connection(stream: &TcpStream) -> Connection {
        Connection::of(
            stream.as_raw_fd(),
            stream.local_addr().unwrap(),
            stream.peer_addr().unwrap(),
        )
        .expect("the kernel gives a socket cookie")
    }

    #[test]
    fn a_connection_is_written_and_read_back_as_one_line() {
        let conn = Connection {
            ours: "[::1]:40000".parse().unwrap(),
            theirs: "127.0.0.1:514".parse().unwrap(),
            cookie: u64::MAX - 7,
            boot: u128::MAX - 3,
        };
        assert_eq!(Connection::from_line(&conn.to_line()), Some(conn));
        let line = conn.to_line();
        for cut in 0..line.len() {
            assert_eq!(Connection::from_line(&line[..cut]), None, "torn at {cut}");
        }
        assert_eq!(Connection::from_line("127.0.0.1:1 127.0.0.1:2 3\n"), None);
    }

    /// A receiver that reads to our FIN and closes leaves TIME_WAIT; one
    /// that closes with our bytes unread resets, and leaves nothing.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_clean_close_is_told_from_a_reset() {
        for (ip, reads_everything) in [
            ("127.0.0.1:0", true),
            ("127.0.0.1:0", false),
            ("[::1]:0", true),
        ] {
            let Ok(listener) = TcpListener::bind(ip) else {
                continue; // no IPv6 here
            };
            let mut ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut theirs, _) = listener.accept().unwrap();
            let conn = connection(&ours);
            assert_eq!(state_of(conn), Some(ESTABLISHED), "{ip}: established");
            ours.write_all(&[b'x'; 10_000]).unwrap();
            drop(ours); // what the kernel does for a killed process
            if reads_everything {
                let mut all = Vec::new();
                theirs.read_to_end(&mut all).unwrap();
                assert_eq!(all.len(), 10_000);
            }
            drop(theirs); // unread bytes: a reset
            assert_eq!(
                closed_cleanly(conn, Duration::from_secs(5)),
                reads_everything,
                "{ip}: receiver read everything: {reads_everything}"
            );
            let other_boot = Connection {
                boot: conn.boot ^ 1,
                ..conn
            };
            assert!(
                !closed_cleanly(other_boot, Duration::ZERO),
                "{ip}: a connection of another boot proves nothing"
            );
        }
    }

    /// Another socket on the same ports (a reused source port) is not ours:
    /// its TIME_WAIT proves nothing about the connection that was reset.
    #[cfg(target_os = "linux")]
    #[test]
    fn another_socket_on_the_same_ports_proves_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (theirs, _) = listener.accept().unwrap();
        let dead = connection(&ours);
        ours.write_all(b"x").unwrap();
        drop(ours);
        // Closed with the byte unread: a reset, nothing left of `dead`.
        theirs
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(theirs.peek(&mut [0u8]).unwrap(), 1, "the byte arrived");
        drop(theirs);

        // The same source port again, to the same receiver.
        let later = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(async {
                for _ in 0..1000 {
                    let socket = tokio::net::TcpSocket::new_v4().unwrap();
                    socket.set_reuseaddr(true).unwrap();
                    if socket.bind(dead.ours).is_ok() {
                        let stream = socket.connect(dead.theirs).await.unwrap();
                        return stream.into_std().unwrap();
                    }
                    tokio::task::yield_now().await;
                }
                panic!("the source port did not come free after the reset")
            });
        later.set_nonblocking(false).unwrap();
        let (mut theirs, _) = listener.accept().unwrap();
        let again = connection(&later);
        assert_eq!((again.ours, again.theirs), (dead.ours, dead.theirs));
        assert_ne!(again.cookie, dead.cookie);
        drop(later);
        let mut rest = Vec::new();
        theirs.read_to_end(&mut rest).unwrap();
        drop(theirs);
        assert!(
            closed_cleanly(again, Duration::from_secs(5)),
            "the later one closed cleanly"
        );
        assert!(
            !closed_cleanly(dead, Duration::from_secs(1)),
            "ours was reset"
        );
    }

    /// A receiver that keeps its side open proves nothing; the wait ends.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_receiver_that_holds_the_connection_proves_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_theirs, _) = listener.accept().unwrap();
        let conn = connection(&ours);
        drop(ours);
        assert!(!closed_cleanly(conn, Duration::from_millis(200)));
    }
}
