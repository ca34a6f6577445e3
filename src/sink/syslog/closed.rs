//! How a killed instance's last TCP connection ended, read from the
//! kernel's socket table (`/proc/net/tcp`, `/proc/net/tcp6`) by the next
//! instance.
//!
//! When auditrelay dies, its kernel sends what was still queued and then a
//! FIN. A receiver that reads up to that FIN and closes answers with its own
//! FIN, and the dead connection waits out TIME_WAIT (60 s on Linux) in our
//! table: proof the receiver read every frame, the same proof a clean stop
//! takes from the receiver's close. A receiver that closes with our bytes
//! unread resets the connection instead, and a reset connection leaves no
//! TIME_WAIT. So a restart resends the replay window only when it cannot
//! find that proof.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::{Duration, Instant};

/// TCP states as the kernel numbers them in `/proc/net/tcp`.
const FIN_WAIT1: u8 = 0x04;
const FIN_WAIT2: u8 = 0x05;
const TIME_WAIT: u8 = 0x06;
const CLOSING: u8 = 0x0B;

/// Waits (at most `within`) until the connection `local` → `peer` is in
/// TIME_WAIT: true then. False as soon as it is in no state that can still
/// lead there (reset, gone, or another state), or when `within` passed.
pub fn closed_cleanly(local: SocketAddr, peer: SocketAddr, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    let mut delay = Duration::from_millis(5);
    loop {
        match state_of(local, peer) {
            Some(TIME_WAIT) => return true,
            // Our FIN is out; the receiver may still be reading up to it.
            Some(FIN_WAIT1 | FIN_WAIT2 | CLOSING) if Instant::now() < deadline => {}
            _ => return false,
        }
        std::thread::sleep(delay.min(deadline.saturating_duration_since(Instant::now())));
        delay = (delay * 2).min(Duration::from_millis(100));
    }
}

/// The state of the connection `local` → `peer` in this network namespace.
fn state_of(local: SocketAddr, peer: SocketAddr) -> Option<u8> {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .find_map(|table| {
            let text = std::fs::read_to_string(table).ok()?;
            text.lines()
                .skip(1)
                .filter_map(parse_line)
                .find(|(l, p, _)| same(*l, local) && same(*p, peer))
                .map(|(_, _, state)| state)
        })
}

/// Equal addresses, an IPv4 one also as its IPv4-mapped IPv6 form.
fn same(a: SocketAddr, b: SocketAddr) -> bool {
    let canonical = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    a.port() == b.port() && canonical(a.ip()) == canonical(b.ip())
}

/// `sl local rem st …`: addresses as the kernel prints them (each 32-bit
/// word in host byte order, hex), the port in hex.
fn parse_line(line: &str) -> Option<(SocketAddr, SocketAddr, u8)> {
    let mut fields = line.split_whitespace().skip(1);
    let local = parse_addr(fields.next()?)?;
    let peer = parse_addr(fields.next()?)?;
    let state = u8::from_str_radix(fields.next()?, 16).ok()?;
    Some((local, peer, state))
}

fn parse_addr(field: &str) -> Option<SocketAddr> {
    let (ip, port) = field.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let word = |i: usize| {
        let hex = ip.get(8 * i..8 * i + 8)?;
        u32::from_str_radix(hex, 16).ok().map(u32::to_ne_bytes)
    };
    let ip = match ip.len() {
        8 => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        32 => {
            let mut bytes = [0u8; 16];
            for i in 0..4 {
                bytes[4 * i..4 * i + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(bytes))
        }
        _ => return None,
    };
    Some(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{TcpListener, TcpStream};

    #[test]
    fn lines_of_the_kernel_table_parse() {
        let v4 = "   0: 0100007F:1F90 0100007F:C350 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000";
        let (l, p, st) = parse_line(v4).unwrap();
        assert_eq!(l, "127.0.0.1:8080".parse().unwrap());
        assert_eq!(p, "127.0.0.1:50000".parse().unwrap());
        assert_eq!(st, TIME_WAIT);
        let v6 = "   0: 00000000000000000000000001000000:1F90 0000000000000000FFFF00000100007F:C350 01 00000000:00000000 00:00000000 00000000  1000        0 1 1 0";
        let (l, p, st) = parse_line(v6).unwrap();
        assert_eq!(l, "[::1]:8080".parse().unwrap());
        assert!(same(p, "127.0.0.1:50000".parse().unwrap()));
        assert_eq!(st, 0x01);
        assert!(parse_line("  sl  local_address rem_address   st").is_none());
    }

    /// A receiver that reads to our FIN and closes leaves TIME_WAIT; one
    /// that closes with our bytes unread resets, and leaves nothing.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_clean_close_is_told_from_a_reset() {
        for reads_everything in [true, false] {
            let listener = TcpListener::bind("127.0.0.1:0").unwrap();
            let mut ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
            let (mut theirs, _) = listener.accept().unwrap();
            let (local, peer) = (ours.local_addr().unwrap(), ours.peer_addr().unwrap());
            ours.write_all(&[b'x'; 10_000]).unwrap();
            drop(ours); // what the kernel does for a killed process
            if reads_everything {
                let mut all = Vec::new();
                theirs.read_to_end(&mut all).unwrap();
                assert_eq!(all.len(), 10_000);
            }
            drop(theirs); // unread bytes: a reset
            assert_eq!(
                closed_cleanly(local, peer, Duration::from_secs(5)),
                reads_everything,
                "receiver read everything: {reads_everything}"
            );
        }
    }

    /// A receiver that keeps its side open proves nothing; the wait ends.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_receiver_that_holds_the_connection_proves_nothing() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_theirs, _) = listener.accept().unwrap();
        let (local, peer) = (ours.local_addr().unwrap(), ours.peer_addr().unwrap());
        drop(ours);
        assert!(!closed_cleanly(local, peer, Duration::from_millis(200)));
    }
}
