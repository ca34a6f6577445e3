//! A deliberately small HTTP/1.1 server layer shared by the fakes.
//!
//! Hand-written (not axum/hyper) so the fakes can break the HTTP layer on
//! purpose (a body cut short by a closed or reset connection) and can drop
//! every connection at once for outage tests. It reads one request at a time
//! per connection (keep-alive), bounds every read, and never panics on what
//! the peer sends: a malformed request gets a 4xx answer and the connection
//! is closed.

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};

/// Largest request head (request line plus headers) accepted.
pub const MAX_HEAD: usize = 64 * 1024;
/// Most requests served on one connection before it is closed.
pub const MAX_REQUESTS_PER_CONNECTION: usize = 1_000_000;
/// Most accepted plus finished connections before a server stops by itself.
pub const MAX_SERVER_EVENTS: usize = 10_000_000;

/// Binds a listener on 127.0.0.1:`port` (0 = any free port) with
/// SO_REUSEADDR, so a stopped server can listen on the same port again.
pub fn bind_loopback(port: u16) -> io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(SocketAddr::from(([127, 0, 0, 1], port)))?;
    socket.listen(1024)
}

/// One parsed request. Header names are lower-cased.
#[derive(Clone, Debug)]
pub struct Request {
    pub method: String,
    pub target: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Whether the connection may serve another request afterwards.
    pub keep_alive: bool,
}

impl Request {
    /// First value of header `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// Every value of header `name`.
    pub fn header_all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.headers
            .iter()
            .filter(move |(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn path(&self) -> &str {
        self.target.split('?').next().unwrap_or("")
    }

    pub fn query(&self) -> &str {
        self.target.split_once('?').map(|(_, q)| q).unwrap_or("")
    }
}

/// Why no request could be read.
#[derive(Debug)]
pub enum ReadError {
    /// The peer closed the connection cleanly between requests.
    Closed,
    /// The connection failed or closed mid-request.
    Io(io::Error),
    /// The request is unacceptable: answer `status` and close.
    Bad(u16, String),
}

impl From<io::Error> for ReadError {
    fn from(e: io::Error) -> Self {
        ReadError::Io(e)
    }
}

fn bad(status: u16, why: impl Into<String>) -> ReadError {
    ReadError::Bad(status, why.into())
}

/// A connection with its read buffer.
pub struct Conn {
    pub stream: TcpStream,
    buf: Vec<u8>,
}

impl Conn {
    pub fn new(stream: TcpStream) -> Self {
        Conn {
            stream,
            buf: Vec::with_capacity(8192),
        }
    }

    /// Reads more bytes into the buffer; `Ok(false)` at end of stream.
    async fn fill(&mut self) -> io::Result<bool> {
        let mut chunk = [0u8; 16 * 1024];
        let n = self.stream.read(&mut chunk).await?;
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n > 0)
    }

    /// Index of the first `needle` at or after `from`.
    fn find(&self, needle: &[u8], from: usize) -> Option<usize> {
        if self.buf.len() < needle.len() {
            return None;
        }
        (from..=self.buf.len() - needle.len()).find(|&i| &self.buf[i..i + needle.len()] == needle)
    }

    /// Takes one CRLF-terminated line (without the CRLF), at most `max` bytes.
    async fn take_line(&mut self, max: usize) -> Result<Vec<u8>, ReadError> {
        let mut scanned = 0;
        loop {
            if let Some(i) = self.find(b"\r\n", scanned) {
                let line = self.buf[..i].to_vec();
                self.buf.drain(..i + 2);
                return Ok(line);
            }
            if self.buf.len() > max {
                return Err(bad(400, "line too long"));
            }
            scanned = self.buf.len().saturating_sub(1);
            if !self.fill().await? {
                return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
    }

    /// Takes exactly `n` bytes (the caller bounds `n`).
    async fn take_exact(&mut self, n: usize) -> Result<Vec<u8>, ReadError> {
        while self.buf.len() < n {
            if !self.fill().await? {
                return Err(ReadError::Io(io::ErrorKind::UnexpectedEof.into()));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Answers an unreadable request and closes the connection without
    /// resetting it: stop writing, then read and discard what the peer still
    /// sends (bounded in bytes and time) so it can read the answer.
    pub async fn reject(mut self, resp: &Response) {
        if resp.write(&mut self.stream, true).await.is_err() {
            return;
        }
        let _ = self.stream.shutdown().await;
        let drain = async {
            let mut chunk = [0u8; 16 * 1024];
            let mut left: usize = 16 * 1024 * 1024;
            while left > 0 {
                match self.stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(2), drain).await;
    }

    /// Reads the next request; its body is read whole, up to `max_body` bytes
    /// (Content-Length or chunked).
    pub async fn read_request(&mut self, max_body: usize) -> Result<Request, ReadError> {
        // Skip empty lines before a request line (RFC 9112 §2.2).
        while self.buf.starts_with(b"\r\n") {
            self.buf.drain(..2);
        }
        let mut scanned = 0;
        let head_end = loop {
            if let Some(i) = self.find(b"\r\n\r\n", scanned) {
                break i;
            }
            if self.buf.len() > MAX_HEAD {
                return Err(bad(431, "request header fields too large"));
            }
            scanned = self.buf.len().saturating_sub(3);
            if !self.fill().await? {
                return Err(if self.buf.is_empty() {
                    ReadError::Closed
                } else {
                    ReadError::Io(io::ErrorKind::UnexpectedEof.into())
                });
            }
            if self.buf.starts_with(b"\r\n") {
                while self.buf.starts_with(b"\r\n") {
                    self.buf.drain(..2);
                }
                scanned = 0;
            }
        };
        if head_end > MAX_HEAD {
            return Err(bad(431, "request header fields too large"));
        }
        let head: Vec<u8> = self.buf.drain(..head_end + 4).collect();
        let head = std::str::from_utf8(&head[..head_end])
            .map_err(|_| bad(400, "request head is not UTF-8"))?;
        let mut lines = head.split("\r\n");
        let request_line = lines.next().unwrap_or("");
        let mut parts = request_line.split(' ');
        let (method, target, version) =
            match (parts.next(), parts.next(), parts.next(), parts.next()) {
                (Some(m), Some(t), Some(v), None) if !m.is_empty() && !t.is_empty() => (m, t, v),
                _ => return Err(bad(400, "malformed request line")),
            };
        if !method.bytes().all(|b| b.is_ascii_alphabetic()) {
            return Err(bad(400, "malformed method"));
        }
        if !target.starts_with('/') && target != "*" && !target.starts_with("http://") {
            return Err(bad(400, "malformed request target"));
        }
        let http10 = match version {
            "HTTP/1.1" => false,
            "HTTP/1.0" => true,
            _ => return Err(bad(505, "HTTP version not supported")),
        };
        let mut headers = Vec::new();
        for line in lines {
            if line.starts_with([' ', '\t']) {
                return Err(bad(400, "obsolete header line folding"));
            }
            let (name, value) = line
                .split_once(':')
                .ok_or_else(|| bad(400, "header line without colon"))?;
            if name.is_empty() || name.bytes().any(|b| b <= b' ' || b >= 0x7f) {
                return Err(bad(400, "malformed header name"));
            }
            headers.push((name.to_ascii_lowercase(), value.trim().to_string()));
        }
        let mut req = Request {
            method: method.to_string(),
            target: target.to_string(),
            headers,
            body: Vec::new(),
            keep_alive: true,
        };
        let tokens: Vec<String> = req
            .header_all("connection")
            .flat_map(|v| v.split(','))
            .map(|t| t.trim().to_ascii_lowercase())
            .collect();
        req.keep_alive = if http10 {
            tokens.iter().any(|t| t == "keep-alive")
        } else {
            !tokens.iter().any(|t| t == "close")
        };
        if let Some(te) = req.header("transfer-encoding") {
            if !te.trim().eq_ignore_ascii_case("chunked") {
                return Err(bad(501, "only chunked transfer-encoding is supported"));
            }
            if req.header("content-length").is_some() {
                return Err(bad(400, "both transfer-encoding and content-length"));
            }
            req.body = self.read_chunked(max_body).await?;
        } else {
            let mut length: Option<usize> = None;
            for v in req.header_all("content-length") {
                let n: usize = v
                    .trim()
                    .parse()
                    .map_err(|_| bad(400, "malformed content-length"))?;
                if length.is_some_and(|l| l != n) {
                    return Err(bad(400, "conflicting content-length headers"));
                }
                length = Some(n);
            }
            let length = length.unwrap_or(0);
            if length > max_body {
                return Err(bad(413, "request body too large"));
            }
            req.body = self.take_exact(length).await?;
        }
        Ok(req)
    }

    async fn read_chunked(&mut self, max_body: usize) -> Result<Vec<u8>, ReadError> {
        let mut body = Vec::new();
        // Every round either ends or adds at least one byte, and the body is
        // bounded, so this loop is too.
        loop {
            let line = self.take_line(1024).await?;
            let line = std::str::from_utf8(&line).map_err(|_| bad(400, "malformed chunk size"))?;
            let size = line.split(';').next().unwrap_or("").trim();
            let size =
                usize::from_str_radix(size, 16).map_err(|_| bad(400, "malformed chunk size"))?;
            if size == 0 {
                break;
            }
            if size > max_body.saturating_sub(body.len()) {
                return Err(bad(413, "request body too large"));
            }
            let data = self.take_exact(size).await?;
            body.extend_from_slice(&data);
            if !self.take_line(2).await?.is_empty() {
                return Err(bad(400, "chunk not followed by CRLF"));
            }
        }
        // Trailer section, ended by an empty line.
        let mut trailer_bytes = 0;
        loop {
            let line = self.take_line(MAX_HEAD).await?;
            if line.is_empty() {
                return Ok(body);
            }
            trailer_bytes += line.len() + 2;
            if trailer_bytes > MAX_HEAD {
                return Err(bad(431, "trailers too large"));
            }
        }
    }
}

/// A response to write.
#[derive(Clone, Debug)]
pub struct Response {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Response {
    pub fn new(status: u16, content_type: &str, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status,
            headers: vec![("Content-Type".into(), content_type.into())],
            body: body.into(),
        }
    }

    pub fn json(status: u16, body: impl Into<Vec<u8>>) -> Self {
        Self::new(status, "application/json", body)
    }

    pub fn with_header(mut self, name: &str, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// Status line and headers, announcing `content_length` body bytes.
    pub fn head(&self, content_length: usize, close: bool) -> Vec<u8> {
        let mut out = format!("HTTP/1.1 {} {}\r\n", self.status, reason(self.status));
        for (k, v) in &self.headers {
            out.push_str(k);
            out.push_str(": ");
            out.push_str(v);
            out.push_str("\r\n");
        }
        out.push_str(&format!("Content-Length: {content_length}\r\n"));
        if close {
            out.push_str("Connection: close\r\n");
        }
        out.push_str("\r\n");
        out.into_bytes()
    }

    /// Writes the whole response.
    pub async fn write(&self, stream: &mut TcpStream, close: bool) -> io::Result<()> {
        let mut bytes = self.head(self.body.len(), close);
        bytes.extend_from_slice(&self.body);
        stream.write_all(&bytes).await?;
        stream.flush().await
    }
}

pub fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        204 => "No Content",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        415 => "Unsupported Media Type",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        _ => "Status",
    }
}

/// An accept loop and its connection tasks. Dropping it aborts them all;
/// `stop` also waits until the listener and every connection are closed.
pub struct Server {
    addr: SocketAddr,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl Server {
    /// Serves `listener`, running `handler` on each accepted connection.
    pub fn spawn<F, Fut>(listener: TcpListener, handler: F) -> io::Result<Server>
    where
        F: Fn(TcpStream) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let addr = listener.local_addr()?;
        let (shutdown, mut stop_rx) = watch::channel(false);
        let task = tokio::spawn(async move {
            let mut conns = JoinSet::new();
            // One round per accepted or finished connection.
            for _ in 0..MAX_SERVER_EVENTS {
                let accepted = tokio::select! {
                    // The only change ever sent is "stop"; an error means the
                    // handle is gone.
                    _ = stop_rx.changed() => break,
                    accepted = listener.accept() => accepted,
                    Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                };
                match accepted {
                    Ok((stream, _)) => {
                        let _ = stream.set_nodelay(true);
                        conns.spawn(handler(stream));
                    }
                    // E.g. out of file descriptors: back off briefly.
                    Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                }
            }
            drop(listener);
            conns.shutdown().await;
        });
        Ok(Server {
            addr,
            shutdown,
            task: Some(task),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Closes the listener and every connection, and waits until they are.
    pub async fn stop(&mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
