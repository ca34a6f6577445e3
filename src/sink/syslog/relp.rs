//! A RELP client (rsyslog's Reliable Event Logging Protocol, as librelp
//! speaks it), so a syslog batch is confirmed by the receiver's application,
//! not just by TCP.
//!
//! Frames are `TXNR SP COMMAND SP DATALEN [SP DATA] LF`. A session starts with
//! `open` (offers `relp_version=0`, `commands=syslog`), then each message is a
//! `syslog` command answered by `TXNR rsp LEN 200 OK`; up to `window`
//! commands are in flight. A message counts as delivered only on its `200`.
//! `rsp 500`, `serverclose` (the receiver is shutting down) or a broken
//! connection end the session; the caller reconnects and resends exactly the
//! messages not yet acknowledged.
//!
//! No maintained RELP client exists on crates.io (the `relp` crate is an
//! unrelated linear-programming library), hence this module.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt, BufReader, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;

/// Largest transaction number; the next one is 1 again.
const TXNR_MAX: u32 = 999_999_999;
/// Longest response DATA accepted (rsp text, open offers).
const RSP_MAX: usize = 64 * 1024;

pub struct RelpConn {
    reader: BufReader<OwnedReadHalf>,
    writer: BufWriter<OwnedWriteHalf>,
    next_txnr: u32,
    timeout: Duration,
}

/// Why a session ended.
#[derive(Debug)]
pub enum Failure {
    /// Network error, timeout, protocol error or `serverclose`.
    Broken(String),
    /// The receiver refused one message (a non-200 `rsp`).
    Rejected { index: usize, answer: String },
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Broken(why) => f.write_str(why),
            Failure::Rejected { answer, .. } => {
                write!(f, "RELP receiver refused a message: {answer}")
            }
        }
    }
}

impl RelpConn {
    /// Opens a session on a connected stream.
    pub async fn open(stream: TcpStream, timeout: Duration) -> Result<RelpConn, String> {
        let (r, w) = stream.into_split();
        let mut conn = RelpConn {
            reader: BufReader::new(r),
            writer: BufWriter::with_capacity(64 * 1024, w),
            next_txnr: 1,
            timeout,
        };
        let offer = format!(
            "relp_version=0\nrelp_software=auditrelay,{}\ncommands=syslog",
            env!("CARGO_PKG_VERSION")
        );
        let txnr = conn.write_command("open", offer.as_bytes()).await;
        let txnr = txnr.map_err(|e| format!("RELP open failed: {e}"))?;
        conn.writer
            .flush()
            .await
            .map_err(|e| format!("RELP open failed: {e}"))?;
        let (rtx, cmd, data) = conn
            .read_frame()
            .await
            .map_err(|e| format!("RELP open failed: {e}"))?;
        let text = String::from_utf8_lossy(&data);
        if rtx != txnr || cmd != "rsp" {
            return Err(format!(
                "RELP open: unexpected answer \"{rtx} {cmd}\" (is this a RELP port?)"
            ));
        }
        if !text.starts_with("200") {
            return Err(format!("RELP open refused: {}", first_line(&text)));
        }
        let offers_syslog = text
            .lines()
            .any(|l| l.starts_with("commands=") && l[9..].split(',').any(|c| c == "syslog"));
        if !offers_syslog {
            return Err(format!(
                "RELP receiver does not accept the syslog command (answered: {})",
                text.replace('\n', "; ")
            ));
        }
        Ok(conn)
    }

    /// Sends the messages `todo` (indices into `frames`) and marks each one
    /// acknowledged in `acked`. Stops at the first failure; the session is
    /// unusable afterwards.
    pub async fn send<'a>(
        &mut self,
        frame: impl Fn(usize) -> &'a [u8],
        todo: &[usize],
        acked: &mut [bool],
        window: usize,
    ) -> Result<(), Failure> {
        let mut pending: VecDeque<(u32, usize)> = VecDeque::with_capacity(window);
        for &i in todo {
            if pending.len() >= window.max(1) {
                self.writer.flush().await.map_err(broken)?;
                self.take_answer(&mut pending, acked).await?;
                // Take every answer already received, so the window refills
                // in bulk instead of one write per answer.
                while !pending.is_empty() && !self.reader.buffer().is_empty() {
                    self.take_answer(&mut pending, acked).await?;
                }
            }
            let txnr = self
                .write_command("syslog", frame(i))
                .await
                .map_err(broken)?;
            pending.push_back((txnr, i));
        }
        self.writer.flush().await.map_err(broken)?;
        while !pending.is_empty() {
            self.take_answer(&mut pending, acked).await?;
        }
        Ok(())
    }

    async fn take_answer(
        &mut self,
        pending: &mut VecDeque<(u32, usize)>,
        acked: &mut [bool],
    ) -> Result<(), Failure> {
        let (txnr, cmd, data) = self.read_frame().await.map_err(broken)?;
        let text = String::from_utf8_lossy(&data);
        match cmd.as_str() {
            "rsp" => {}
            "serverclose" => {
                return Err(Failure::Broken(
                    "RELP receiver closed the session (serverclose)".into(),
                ))
            }
            other => {
                return Err(Failure::Broken(format!(
                    "RELP receiver sent unexpected command \"{other}\""
                )))
            }
        }
        let pos = pending
            .iter()
            .position(|(t, _)| *t == txnr)
            .ok_or_else(|| {
                Failure::Broken(format!("RELP answer for unknown transaction {txnr}"))
            })?;
        let Some((_, index)) = pending.remove(pos) else {
            return Err(Failure::Broken("RELP answer bookkeeping failed".into()));
        };
        if text.starts_with("200") {
            acked[index] = true;
            Ok(())
        } else {
            Err(Failure::Rejected {
                index,
                answer: first_line(&text).to_string(),
            })
        }
    }

    /// Buffers one command frame; returns its transaction number.
    async fn write_command(&mut self, command: &str, data: &[u8]) -> io::Result<u32> {
        let txnr = self.next_txnr;
        self.next_txnr = if txnr >= TXNR_MAX { 1 } else { txnr + 1 };
        let head = format!("{txnr} {command} {}", data.len());
        self.writer.write_all(head.as_bytes()).await?;
        if !data.is_empty() {
            self.writer.write_all(b" ").await?;
            self.writer.write_all(data).await?;
        }
        self.writer.write_all(b"\n").await?;
        Ok(txnr)
    }

    /// Reads one frame, within the session's timeout.
    async fn read_frame(&mut self) -> io::Result<(u32, String, Vec<u8>)> {
        match tokio::time::timeout(self.timeout, self.read_frame_inner()).await {
            Ok(r) => r,
            Err(_) => Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!(
                    "no RELP answer within {}",
                    humantime::format_duration(self.timeout)
                ),
            )),
        }
    }

    async fn read_frame_inner(&mut self) -> io::Result<(u32, String, Vec<u8>)> {
        let (txnr, _) = self.token(9, true).await?;
        let txnr: u32 = txnr
            .parse()
            .map_err(|_| protocol(format!("bad transaction number \"{txnr}\"")))?;
        let (cmd, _) = self.token(32, false).await?;
        let (len, end) = self.token(9, true).await?;
        let len: usize = len
            .parse()
            .map_err(|_| protocol(format!("bad data length \"{len}\"")))?;
        if len > RSP_MAX {
            return Err(protocol(format!("answer of {len} bytes is too large")));
        }
        let mut data = vec![0u8; len];
        if end == b' ' {
            self.reader.read_exact(&mut data).await?;
            let trailer = self.reader.read_u8().await?;
            if trailer != b'\n' {
                return Err(protocol("frame without its newline trailer".into()));
            }
        } else if len != 0 {
            return Err(protocol("data length without data".into()));
        }
        Ok((txnr, cmd, data))
    }

    /// Reads up to a space (or, where `may_end`, a newline): the token and
    /// the byte that ended it.
    async fn token(&mut self, max: usize, digits: bool) -> io::Result<(String, u8)> {
        let mut out = String::new();
        loop {
            let b = match self.reader.read_u8().await {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "RELP receiver closed the connection",
                    ))
                }
                Err(e) => return Err(e),
            };
            if b == b' ' || (b == b'\n' && digits) {
                if out.is_empty() {
                    return Err(protocol("empty header field".into()));
                }
                return Ok((out, b));
            }
            let ok = if digits {
                b.is_ascii_digit()
            } else {
                b.is_ascii_alphabetic()
            };
            if !ok || out.len() >= max {
                return Err(protocol(format!(
                    "unexpected byte 0x{b:02x} in a frame header (is this a RELP port?)"
                )));
            }
            out.push(b as char);
        }
    }
}

fn protocol(msg: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("RELP protocol error: {msg}"),
    )
}

fn broken(e: io::Error) -> Failure {
    Failure::Broken(e.to_string())
}

fn first_line(text: &str) -> &str {
    text.lines().next().unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpListener;

    /// A scripted peer: answers `open`, acks some syslog frames, refuses one.
    #[tokio::test]
    async fn acks_refusals_and_serverclose() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (s, _) = listener.accept().await.unwrap();
            let (r, mut w) = s.into_split();
            let mut r = tokio::io::BufReader::new(r);
            let mut seen = Vec::new();
            loop {
                let mut head = Vec::new();
                if r.read_until(b' ', &mut head).await.unwrap() == 0 {
                    break;
                }
                let txnr: u32 = String::from_utf8_lossy(&head).trim().parse().unwrap();
                let mut cmd = Vec::new();
                r.read_until(b' ', &mut cmd).await.unwrap();
                let mut len = Vec::new();
                r.read_until(b' ', &mut len).await.unwrap();
                let len: usize = String::from_utf8_lossy(&len).trim().parse().unwrap();
                let mut data = vec![0; len + 1];
                r.read_exact(&mut data).await.unwrap();
                let cmd = String::from_utf8_lossy(&cmd).trim().to_string();
                let answer = if cmd == "open" {
                    "200 OK\nrelp_version=0\ncommands=syslog".to_string()
                } else if data.starts_with(b"bad") {
                    "500 not accepted".to_string()
                } else {
                    seen.push(String::from_utf8_lossy(&data[..len]).to_string());
                    "200 OK".to_string()
                };
                w.write_all(format!("{txnr} rsp {} {answer}\n", answer.len()).as_bytes())
                    .await
                    .unwrap();
                if seen.len() == 4 && cmd == "syslog" && data.starts_with(b"m4") {
                    w.write_all(b"0 serverclose 0\n").await.unwrap();
                }
            }
            seen
        });
        let stream = TcpStream::connect(addr).await.unwrap();
        let mut conn = RelpConn::open(stream, Duration::from_secs(5))
            .await
            .unwrap();
        let msgs: Vec<&[u8]> = vec![b"m0", b"m1", b"bad", b"m3", b"m4"];
        let mut acked = vec![false; msgs.len()];
        let err = conn
            .send(|i| msgs[i], &[0, 1, 2], &mut acked, 1)
            .await
            .unwrap_err();
        assert!(matches!(err, Failure::Rejected { index: 2, .. }), "{err}");
        assert_eq!(acked, [true, true, false, false, false]);
        conn.send(|i| msgs[i], &[3, 4], &mut acked, 8)
            .await
            .unwrap();
        assert!(acked[3] && acked[4]);
        let mut again = vec![false; msgs.len()];
        let err = conn
            .send(|i| msgs[i], &[0], &mut again, 8)
            .await
            .unwrap_err();
        assert!(err.to_string().contains("serverclose"), "{err}");
        drop(conn);
        assert_eq!(server.await.unwrap()[..4], ["m0", "m1", "m3", "m4"]);
    }
}
