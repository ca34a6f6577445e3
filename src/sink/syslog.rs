//! Syslog: RFC 5424 (default) or RFC 3164 messages whose body is the compact
//! JSON event, CEF or LEEF, over UDP, TCP, TLS (RFC 5425) or RELP.
//!
//! What "confirmed" means per transport:
//! - `relp://`: the receiver acknowledged every message (`rsp 200`). The
//!   only transport with application-level acknowledgements; use it where
//!   losing nothing matters more than compatibility.
//! - `tcp://`, `tls://`: every frame was written and flushed (for TLS: the
//!   records written), **and** the receiver's TCP stack acknowledged all the
//!   bytes (the socket's send queue is empty, Linux `SIOCOUTQ`), and the
//!   connection was not closed meanwhile. Before each write the connection is
//!   checked for a close by the receiver, so a receiver that restarted
//!   between batches is noticed before anything is written into the dead
//!   socket. TCP cannot tell whether the receiver's *process* read the bytes
//!   its kernel acknowledged; but a receiver that closes (restart, crash)
//!   with our bytes unread in its socket resets the connection instead of
//!   closing it cleanly, so on a reset the last `replay_window` bytes of
//!   confirmed frames are written again on the next connection (duplicates,
//!   never loss). The window is on disk before a batch is confirmed
//!   ([`replay`]), so a restart, SIGKILL or reload of auditrelay resends it
//!   too. Left uncovered: a receiver that read frames and lost them itself,
//!   frames older than the window, or a host that vanished without a
//!   reset. RELP has no such gap.
//! - `udp://`: best effort. Each message is one datagram; a datagram that
//!   the network or the receiver drops is not noticed by anyone.
//!
//! Failures (refused connection, TLS handshake, reset, timeout) drop the
//! connection and retry with backoff, forever, resending the unconfirmed
//! messages: delivery is at least once, a message may arrive twice.

mod encode;
pub mod relp;
mod replay;
mod tls;

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use prometheus::{IntCounterVec, Opts};
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tracing::{info, warn};

use super::{DeadLetters, Sink, SinkCommon, SinkContext};
use crate::config::{require_positive, Problems, TlsConfig};
use crate::event::{Event, FieldPath};
use crate::format::fields::FieldMap;
use crate::format::syslog::{Facility, Severity};
use crate::format::{cef, leef, rfc5424};
use crate::health::Health;
use crate::metrics::metrics;
use crate::retry::Backoff;
pub use encode::{Encoder, Frames, SD_VALUE_MAX};

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Rfc5424,
    Rfc3164,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// The event's JSON as received, on one line.
    #[default]
    Json,
    Cef,
    Leef,
}

/// RFC 6587 framing on stream transports.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// `LEN SP MSG`: any content is safe.
    OctetCounting,
    /// `MSG LF`: newlines inside a message are escaped first.
    Lf,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SyslogConfig {
    /// `udp://host:port`, `tcp://host:port`, `tls://host:port`, `relp://host:port`.
    pub address: String,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub body: Body,
    /// Default `octet_counting` on TCP and TLS; not used by UDP and RELP,
    /// which delimit messages themselves.
    pub framing: Option<Framing>,
    #[serde(default = "d_facility")]
    pub facility: Facility,
    /// Severity of every event unless one of the rules below applies.
    #[serde(default = "d_severity")]
    pub severity: Severity,
    /// Severity of events whose outcome (see `fields.outcome`) is a failure.
    #[serde(default = "d_failure_severity")]
    pub failure_severity: Severity,
    /// Takes the severity from this event field: its value is looked up in
    /// `severity_values`, or read as a severity name or number.
    pub severity_field: Option<String>,
    #[serde(default)]
    pub severity_values: BTreeMap<String, Severity>,
    #[serde(default = "d_app_name")]
    pub app_name: String,
    /// Default: this machine's host name.
    pub hostname: Option<String>,
    /// Fixed MSGID; default: the event type (its last segment when long).
    pub msgid: Option<String>,
    /// SD-ID of the element carrying id, source and type.
    #[serde(default = "d_sd_id")]
    pub sd_id: String,
    #[serde(default = "d_true")]
    pub structured_data: bool,
    /// Largest message (without framing); longer bodies are cut.
    /// Default: 2048 on UDP, 8192 otherwise.
    pub max_message_size: Option<usize>,
    /// CEF/LEEF header: who produced the events.
    #[serde(default = "d_vendor")]
    pub vendor: String,
    #[serde(default = "d_vendor")]
    pub product: String,
    #[serde(default = "d_product_version")]
    pub product_version: String,
    #[serde(default = "d_leef_delimiter")]
    pub leef_delimiter: String,
    #[serde(default)]
    pub fields: FieldMap,
    /// More CEF extension keys / LEEF attributes: `{ cs3 = "identity.session_id" }`.
    #[serde(default)]
    pub extra_fields: BTreeMap<String, String>,
    #[serde(default = "d_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on writing a batch and on waiting for its acknowledgement.
    #[serde(default = "d_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// RELP messages in flight before waiting for acknowledgements.
    #[serde(default = "d_relp_window")]
    pub relp_window: usize,
    /// TCP/TLS: bytes of recently confirmed frames kept to resend when the
    /// receiver resets the connection (see the module docs); 0 disables.
    #[serde(default = "d_replay_window")]
    pub replay_window: usize,
    /// After this many `rsp` refusals of the same message, RELP gives up on
    /// it and writes it to the dead-letter file.
    #[serde(default = "d_relp_max_refusals")]
    pub relp_max_refusals: u32,
}

fn d_facility() -> Facility {
    Facility::LOCAL0
}
fn d_severity() -> Severity {
    Severity::INFO
}
fn d_failure_severity() -> Severity {
    Severity::WARNING
}
fn d_app_name() -> String {
    "auditrelay".into()
}
fn d_sd_id() -> String {
    "auditrelay@32473".into()
}
fn d_true() -> bool {
    true
}
fn d_vendor() -> String {
    "auditrelay".into()
}
fn d_product_version() -> String {
    env!("CARGO_PKG_VERSION").into()
}
fn d_leef_delimiter() -> String {
    "^".into()
}
fn d_connect_timeout() -> Duration {
    Duration::from_secs(10)
}
fn d_timeout() -> Duration {
    Duration::from_secs(30)
}
fn d_relp_window() -> usize {
    128
}
fn d_replay_window() -> usize {
    8 * 1024 * 1024
}
fn d_relp_max_refusals() -> u32 {
    3
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Relp,
}

/// A parsed `address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub transport: Transport,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Target {
    pub fn parse(address: &str) -> Result<Target, String> {
        let (scheme, _) = address.split_once("://").ok_or_else(|| {
            format!(
                "\"{address}\" has no scheme (write udp://, tcp://, tls:// or relp://HOST:PORT)"
            )
        })?;
        let (transport, default_port) = match scheme {
            "udp" => (Transport::Udp, Some(514)),
            "tcp" => (Transport::Tcp, None),
            "tls" => (Transport::Tls, Some(6514)),
            "relp" => (Transport::Relp, None),
            other => {
                return Err(format!(
                    "scheme \"{other}\" is not supported (use udp, tcp, tls or relp)"
                ))
            }
        };
        let url = url::Url::parse(address).map_err(|e| format!("\"{address}\": {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain credentials".into());
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(format!("\"{address}\" must be just {scheme}://HOST:PORT"));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("\"{address}\" names no host"))?
            .to_string();
        let port = url
            .port()
            .or(default_port)
            .ok_or_else(|| format!("\"{address}\" needs a port ({scheme} has no standard one)"))?;
        Ok(Target {
            transport,
            host,
            port,
        })
    }

    fn default_max_message(&self) -> usize {
        match self.transport {
            Transport::Udp => 2048,
            _ => 8192,
        }
    }
}

/// Largest UDP payload over IPv4.
const UDP_MAX: usize = 65_507;
/// Smallest limit that always leaves room for the header and SD element.
const MESSAGE_MIN: usize = 1024;

impl SyslogConfig {
    pub fn validate(&self, path: &str, common: &SinkCommon, problems: &mut Problems) {
        let target = match Target::parse(&self.address) {
            Ok(t) => Some(t),
            Err(e) => {
                problems.push(format!("{path}.address"), e);
                None
            }
        };
        if let Some(t) = &target {
            if self.framing.is_some() && matches!(t.transport, Transport::Udp | Transport::Relp) {
                problems.push(
                    format!("{path}.framing"),
                    "applies to tcp:// and tls:// only (UDP sends one message per datagram, RELP frames messages itself)",
                );
            }
            if t.transport != Transport::Tls && common.tls != TlsConfig::default() {
                problems.push(format!("{path}.tls"), "applies to tls:// addresses only");
            }
            if let Some(max) = self.max_message_size {
                let upper = if t.transport == Transport::Udp {
                    UDP_MAX
                } else {
                    16 * 1024 * 1024
                };
                if !(MESSAGE_MIN..=upper).contains(&max) {
                    problems.push(
                        format!("{path}.max_message_size"),
                        format!("must be between {MESSAGE_MIN} and {upper} for this transport"),
                    );
                }
            }
        }
        if rfc5424::token(&self.app_name, rfc5424::APP_NAME_MAX) == "-" {
            problems.push(format!("{path}.app_name"), "must not be empty");
        }
        if !rfc5424::valid_sd_id(&self.sd_id) {
            problems.push(
                format!("{path}.sd_id"),
                "must be 1-32 printable ASCII characters without space, =, ] or \" (e.g. auditrelay@32473)",
            );
        }
        let delimiter = match leef::parse_delimiter(&self.leef_delimiter) {
            Ok(d) => Some(d),
            Err(e) => {
                problems.push(format!("{path}.leef_delimiter"), e);
                None
            }
        };
        self.fields.validate(path, problems);
        if let Some(p) = &self.severity_field {
            if let Err(e) = FieldPath::parse(p) {
                problems.push(format!("{path}.severity_field"), e);
            }
        }
        for (key, p) in &self.extra_fields {
            let at = format!("{path}.extra_fields.{key}");
            if let Err(e) = FieldPath::parse(p) {
                problems.push(&at, e);
            }
            match self.body {
                Body::Json => problems.push(
                    &at,
                    "extra_fields apply to body = \"cef\" or \"leef\" (the JSON body is the whole event)",
                ),
                Body::Cef if !cef::valid_key(key) || cef::RESERVED_KEYS.contains(&key.as_str()) => {
                    problems.push(
                        &at,
                        format!(
                            "not a free CEF extension key (letters/digits; not one of {})",
                            cef::RESERVED_KEYS.join(", ")
                        ),
                    )
                }
                Body::Leef
                    if key.is_empty()
                        || key.contains(['=', ' ', '\t', '\n', '|'])
                        || delimiter.is_some_and(|d| key.contains(d))
                        || leef::RESERVED_KEYS.contains(&key.as_str()) =>
                {
                    problems.push(
                        &at,
                        format!(
                            "not a free LEEF attribute name (no =, spaces or the delimiter; not one of {})",
                            leef::RESERVED_KEYS.join(", ")
                        ),
                    )
                }
                _ => {}
            }
        }
        if !(1..=4096).contains(&self.relp_window) {
            problems.push(format!("{path}.relp_window"), "must be between 1 and 4096");
        }
        if self.relp_max_refusals == 0 {
            problems.push(format!("{path}.relp_max_refusals"), "must be at least 1");
        }
        require_positive(self.timeout, &format!("{path}.timeout"), problems);
        require_positive(
            self.connect_timeout,
            &format!("{path}.connect_timeout"),
            problems,
        );
    }
}

/// Sink-specific metrics, labelled by sink.
struct SyslogMetrics {
    frames: IntCounterVec,
    bytes: IntCounterVec,
    reconnects: IntCounterVec,
    truncated: IntCounterVec,
    refused: IntCounterVec,
}

static SYSLOG_METRICS: LazyLock<SyslogMetrics> = LazyLock::new(|| {
    let c = |name: &str, help: &str| {
        metrics().register(
            IntCounterVec::new(
                Opts::new(format!("auditrelay_syslog_{name}"), help),
                &["sink"],
            )
            .expect("metric definition is valid"),
        )
    };
    SyslogMetrics {
        frames: c(
            "frames_sent_total",
            "Syslog messages confirmed (written and acknowledged as the transport allows).",
        ),
        bytes: c(
            "bytes_sent_total",
            "Bytes of confirmed syslog frames, framing included.",
        ),
        reconnects: c(
            "reconnects_total",
            "Syslog connections opened again after a failure or a close by the receiver.",
        ),
        truncated: c(
            "truncated_total",
            "Syslog messages whose body was cut to max_message_size.",
        ),
        refused: c(
            "relp_refused_total",
            "RELP messages the receiver answered with a non-200 rsp.",
        ),
    }
});

/// A stream a syslog frame can be written to (TCP or TLS over TCP).
trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

struct StreamConn {
    io: Box<dyn Io>,
    /// The TCP socket under `io`, for liveness and send-queue checks.
    fd: RawFd,
}

enum Conn {
    Udp(UdpSocket),
    Stream(StreamConn),
    Relp(relp::RelpConn),
}

/// The connection and, for TCP/TLS, the frames most recently confirmed on
/// it. A receiver that closes a connection while bytes we sent are still
/// unread in its socket makes its kernel answer with a reset, not a FIN;
/// those bytes were acknowledged by TCP, so their batches were confirmed,
/// yet the receiver never saw them. On a reset (or any failure other than a
/// clean close) the window is written again on the next connection, before
/// anything new: at least once across receiver restarts and crashes. The
/// window is also on disk ([`replay`]), so it survives our own restarts.
#[derive(Default)]
struct State {
    conn: Option<Conn>,
    window: replay::Window,
    /// The window must be resent before the next batch.
    replay: bool,
    /// This instance's replay file, opened (and the windows of earlier
    /// instances adopted) before the first TCP/TLS batch.
    log: Option<Arc<std::sync::Mutex<replay::ReplayLog>>>,
    /// A send was under way; still set when it was cancelled midway (a
    /// reload aborting a pipeline whose drain timed out), and then the
    /// connection may end inside a frame: never write after that.
    sending: bool,
}

pub struct SyslogSink {
    name: Arc<str>,
    target: Target,
    cfg: SyslogConfig,
    common: SinkCommon,
    encoder: Encoder,
    tls: Option<(
        tokio_rustls::TlsConnector,
        rustls::pki_types::ServerName<'static>,
    )>,
    state: tokio::sync::Mutex<State>,
    connected_before: AtomicBool,
    health: Health,
    dead_letters: DeadLetters,
    state_dir: std::path::PathBuf,
}

impl SyslogSink {
    pub fn new(cfg: SyslogConfig, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Self> {
        let path = format!("sinks.{}", ctx.name);
        let target =
            Target::parse(&cfg.address).map_err(|e| anyhow::anyhow!("{path}.address: {e}"))?;
        let framing = match target.transport {
            Transport::Tcp | Transport::Tls => Some(cfg.framing.unwrap_or(Framing::OctetCounting)),
            Transport::Udp | Transport::Relp => None,
        };
        let max = cfg
            .max_message_size
            .unwrap_or_else(|| target.default_max_message());
        let encoder =
            Encoder::new(&cfg, framing, max).map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        let tls = if target.transport == Transport::Tls {
            let name = tls::server_name(&target.host)
                .map_err(|e| anyhow::anyhow!("{path}.address: {e}"))?;
            Some((tls::connector(&common.tls, &path)?, name))
        } else {
            None
        };
        if target.transport == Transport::Udp {
            info!(sink = %ctx.name, "syslog over UDP is best effort: datagrams lost on the way are not noticed");
        }
        LazyLock::force(&SYSLOG_METRICS);
        ctx.health.register(&format!("sink.{}", ctx.name));
        Ok(SyslogSink {
            name: ctx.name.into(),
            target,
            cfg,
            common: common.clone(),
            encoder,
            tls,
            state: tokio::sync::Mutex::new(State::default()),
            connected_before: AtomicBool::new(false),
            health: ctx.health,
            dead_letters: ctx.dead_letters,
            state_dir: ctx.state_dir,
        })
    }

    fn health_key(&self) -> String {
        format!("sink.{}", self.name)
    }

    /// Opens the connection of the configured transport.
    async fn connect(&self) -> Result<Conn, String> {
        let conn = match self.target.transport {
            Transport::Udp => {
                let addr = self.resolve().await?;
                let local = if addr.is_ipv4() {
                    "0.0.0.0:0"
                } else {
                    "[::]:0"
                };
                let sock = UdpSocket::bind(local)
                    .await
                    .map_err(|e| format!("cannot open a UDP socket: {e}"))?;
                sock.connect(addr)
                    .await
                    .map_err(|e| format!("cannot reach {}: {e}", self.target))?;
                Conn::Udp(sock)
            }
            Transport::Tcp => {
                let tcp = self.connect_tcp().await?;
                let fd = tcp.as_raw_fd();
                Conn::Stream(StreamConn {
                    io: Box::new(tcp),
                    fd,
                })
            }
            Transport::Tls => {
                let tcp = self.connect_tcp().await?;
                let fd = tcp.as_raw_fd();
                let Some((connector, name)) = &self.tls else {
                    return Err("TLS is not configured".into());
                };
                let handshake = connector.connect(name.clone(), tcp);
                let stream = match tokio::time::timeout(self.cfg.connect_timeout, handshake).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        let hint = if e.to_string().contains("certificate") {
                            format!(
                                " (check tls.ca_file: it must hold the CA that signed the receiver's certificate, and the certificate must name {})",
                                self.target.host
                            )
                        } else {
                            String::new()
                        };
                        return Err(format!(
                            "TLS handshake with {} failed: {e}{hint}",
                            self.target
                        ));
                    }
                    Err(_) => return Err(format!("TLS handshake with {} timed out", self.target)),
                };
                Conn::Stream(StreamConn {
                    io: Box::new(stream),
                    fd,
                })
            }
            Transport::Relp => {
                let tcp = self.connect_tcp().await?;
                let session = relp::RelpConn::open(tcp, self.cfg.timeout)
                    .await
                    .map_err(|e| format!("{e} ({})", self.target))?;
                Conn::Relp(session)
            }
        };
        if self.connected_before.swap(true, Ordering::Relaxed) {
            SYSLOG_METRICS
                .reconnects
                .with_label_values(&[&self.name])
                .inc();
            info!(sink = %self.name, receiver = %self.target, "reconnected");
        }
        Ok(conn)
    }

    async fn resolve(&self) -> Result<std::net::SocketAddr, String> {
        let host = self
            .target
            .host
            .trim_start_matches('[')
            .trim_end_matches(']');
        let lookup = tokio::net::lookup_host((host, self.target.port));
        match tokio::time::timeout(self.cfg.connect_timeout, lookup).await {
            Ok(Ok(mut addrs)) => addrs
                .next()
                .ok_or_else(|| format!("{} resolves to no address", self.target.host)),
            Ok(Err(e)) => Err(format!("cannot resolve {}: {e}", self.target.host)),
            Err(_) => Err(format!("resolving {} timed out", self.target.host)),
        }
    }

    async fn connect_tcp(&self) -> Result<TcpStream, String> {
        let addr = self.resolve().await?;
        let tcp =
            match tokio::time::timeout(self.cfg.connect_timeout, TcpStream::connect(addr)).await {
                Ok(Ok(s)) => s,
                Ok(Err(e)) => return Err(format!("cannot connect to {}: {e}", self.target)),
                Err(_) => return Err(format!("connecting to {} timed out", self.target)),
            };
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }

    /// Records a failed attempt and waits before the next one.
    async fn failed(&self, source: &str, events: usize, why: &str, backoff: &mut Backoff) {
        let m = metrics();
        m.sink_requests
            .with_label_values(&[&self.name, "retry"])
            .inc();
        m.sink_retries.with_label_values(&[&self.name]).inc();
        m.events_failed
            .with_label_values(&[&self.name, source])
            .inc_by(events as u64);
        let delay = backoff.next_delay();
        warn!(sink = %self.name, receiver = %self.target, error = %why, retry_in_s = delay.as_secs_f64(), "syslog delivery failed; retrying");
        self.health.set_unready(
            &self.health_key(),
            format!("syslog receiver {}: {why}", self.target),
        );
        tokio::time::sleep(delay).await;
    }

    fn confirmed(&self, source: &str, events: usize, frames: usize, bytes: usize) {
        let m = metrics();
        m.sink_requests.with_label_values(&[&self.name, "ok"]).inc();
        m.events_delivered
            .with_label_values(&[&self.name, source])
            .inc_by(events as u64);
        SYSLOG_METRICS
            .frames
            .with_label_values(&[&self.name])
            .inc_by(frames as u64);
        SYSLOG_METRICS
            .bytes
            .with_label_values(&[&self.name])
            .inc_by(bytes as u64);
        self.health.set_ready(&self.health_key());
    }

    /// Delivers one run of events, retrying until it is confirmed.
    async fn deliver_run(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
        let mut frames = self.encoder.encode_all(source, events);
        if frames.truncated > 0 {
            SYSLOG_METRICS
                .truncated
                .with_label_values(&[&self.name])
                .inc_by(frames.truncated as u64);
            let shortened = metrics().events_truncated.clone();
            shortened
                .with_label_values(&[&self.name, source, "values"])
                .inc_by((frames.truncated - frames.summarized) as u64);
            shortened
                .with_label_values(&[&self.name, source, "summary"])
                .inc_by(frames.summarized as u64);
            warn!(sink = %self.name, messages = frames.truncated, summarized = frames.summarized, max_message_size = self.max_message(), "syslog message bodies shortened to fit max_message_size (values cut and marked; summarized: only id, time and type kept); raise max_message_size here and on the receiver to keep them whole");
        }
        let mut backoff = Backoff::new(self.common.retry);
        let mut state = self.state.lock().await;
        let state = &mut *state;
        if std::mem::take(&mut state.sending) {
            warn!(sink = %self.name, "a send was cancelled midway; reconnecting");
            state.conn = None;
        }
        if self.keeps_window() && state.log.is_none() {
            self.open_replay_log(state).await?;
        }
        // RELP: which messages are acknowledged, and how often each was refused.
        let mut acked = vec![false; events.len()];
        let mut refusals = vec![0u32; events.len()];
        loop {
            if state.conn.is_none() {
                match self.connect().await {
                    Ok(c) => state.conn = Some(c),
                    Err(why) => {
                        self.failed(source, events.len(), &why, &mut backoff).await;
                        continue;
                    }
                }
            }
            let Some(conn) = state.conn.as_mut() else {
                continue;
            };
            state.sending = true;
            let result = match conn {
                Conn::Udp(sock) => send_udp(sock, &frames).await,
                Conn::Stream(s) => {
                    let replay: Vec<bytes::Bytes> = if state.replay {
                        state.window.batches.iter().cloned().collect()
                    } else {
                        Vec::new()
                    };
                    match send_stream(s, &replay, &frames.buf, self.cfg.timeout).await {
                        Ok(()) => {
                            if state.replay {
                                info!(sink = %self.name, bytes = state.window.bytes, "resent the frames written before the receiver reset the connection (or before a restart)");
                                state.replay = false;
                            }
                            Ok(())
                        }
                        Err(StreamError { why, clean }) => {
                            if clean && !state.replay {
                                // Closed with everything read: nothing to resend.
                                state.window.clear();
                                self.persist(&state.log, None, &state.window).await.ok();
                            } else if !clean {
                                state.replay = !state.window.is_empty();
                            }
                            Err(why)
                        }
                    }
                }
                Conn::Relp(session) => {
                    let todo: Vec<usize> = (0..events.len()).filter(|i| !acked[*i]).collect();
                    match session
                        .send(|i| frames.frame(i), &todo, &mut acked, self.cfg.relp_window)
                        .await
                    {
                        Ok(()) => Ok(()),
                        Err(relp::Failure::Rejected { index, answer }) => {
                            SYSLOG_METRICS
                                .refused
                                .with_label_values(&[&self.name])
                                .inc();
                            refusals[index] += 1;
                            if refusals[index] >= self.cfg.relp_max_refusals {
                                self.dead_letters.write(
                                    source,
                                    &events[index..=index],
                                    &format!(
                                        "RELP receiver refused the message {} times: {answer}",
                                        refusals[index]
                                    ),
                                )?;
                                acked[index] = true;
                            }
                            Err(format!("RELP receiver refused a message: {answer}"))
                        }
                        Err(relp::Failure::Broken(why)) => Err(why),
                    }
                }
            };
            state.sending = false;
            match result {
                Ok(()) => {
                    let (count, bytes) = (frames.spans.len(), frames.buf.len());
                    if self.keeps_window() {
                        let sent = bytes::Bytes::from(std::mem::take(&mut frames.buf));
                        state.window.push(sent.clone(), self.cfg.replay_window);
                        // On disk before the batch counts as confirmed: a
                        // crash from here on cannot lose it. Should that
                        // fail, the batch is not confirmed (sent again).
                        self.persist(&state.log, Some(sent), &state.window)
                            .await
                            .map_err(|e| anyhow::anyhow!("sinks.{}: {e}", self.name))?;
                    }
                    self.confirmed(source, events.len(), count, bytes);
                    return Ok(());
                }
                Err(why) => {
                    // Anything may have happened to the connection: start afresh.
                    state.conn = None;
                    if acked.iter().all(|a| *a) && self.target.transport == Transport::Relp {
                        self.confirmed(source, events.len(), frames.spans.len(), frames.buf.len());
                        return Ok(());
                    }
                    self.failed(source, events.len(), &why, &mut backoff).await;
                }
            }
        }
    }

    fn keeps_window(&self) -> bool {
        self.cfg.replay_window > 0
            && matches!(self.target.transport, Transport::Tcp | Transport::Tls)
    }

    /// Opens this instance's replay file; the windows earlier instances
    /// left (a crash, a restart, the sink a reload replaced) are resent
    /// before the first batch.
    async fn open_replay_log(&self, state: &mut State) -> anyhow::Result<()> {
        let (dir, name, cap) = (
            self.state_dir.clone(),
            self.name.to_string(),
            self.cfg.replay_window,
        );
        let framing = match self.cfg.framing.unwrap_or(Framing::OctetCounting) {
            Framing::OctetCounting => "octet_counting",
            Framing::Lf => "lf",
        };
        let opened =
            tokio::task::spawn_blocking(move || replay::ReplayLog::open(&dir, &name, cap, framing))
                .await;
        let path = replay::replay_dir(&self.state_dir, &self.name);
        let (log, adopted) = opened
            .map_err(|e| anyhow::anyhow!("{e}"))
            .and_then(|r| r.map_err(|e| anyhow::anyhow!("{e}")))
            .map_err(|e| {
                anyhow::anyhow!(
                    "sinks.{}: cannot open the replay window in {}: {e}",
                    self.name,
                    path.display()
                )
            })?;
        for discarded in &adopted.discarded {
            warn!(sink = %self.name, file = %discarded.display(), framing, "replay window of a previous run written with another framing (or unreadable): removed unsent, as its frames would break this connection's framing");
        }
        for damaged in &adopted.damaged {
            warn!(sink = %self.name, file = %damaged.display(), "replay file ends in a torn or corrupt record (a crash mid-write): the records before it are resent");
        }
        if !adopted.window.is_empty() {
            info!(sink = %self.name, bytes = adopted.window.bytes, "resending the replay window of a previous run before the first batch");
            for b in adopted.window.batches {
                state.window.push(b, self.cfg.replay_window);
            }
            state.replay = true;
        }
        state.log = Some(Arc::new(std::sync::Mutex::new(log)));
        Ok(())
    }

    /// Appends `sent` to the replay file, or (`None`) rewrites the file
    /// with `window`.
    async fn persist(
        &self,
        log: &Option<Arc<std::sync::Mutex<replay::ReplayLog>>>,
        sent: Option<bytes::Bytes>,
        window: &replay::Window,
    ) -> Result<(), String> {
        let Some(log) = log.clone() else {
            return Ok(());
        };
        // Cheap clones (reference counts) for the blocking thread.
        let snapshot = replay::Window {
            batches: window.batches.clone(),
            bytes: window.bytes,
        };
        let done = tokio::task::spawn_blocking(move || {
            let mut log = log.lock().unwrap_or_else(|p| p.into_inner());
            match sent {
                Some(sent) => log.append(&sent, &snapshot),
                None => log.rewrite(&snapshot),
            }
        })
        .await;
        let result = match done {
            Ok(r) => r.map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = &result {
            warn!(sink = %self.name, dir = %replay::replay_dir(&self.state_dir, &self.name).display(), error = %e, "cannot write the replay window");
        }
        result.map_err(|e| format!("cannot write the replay window: {e}"))
    }

    fn max_message(&self) -> usize {
        self.cfg
            .max_message_size
            .unwrap_or_else(|| self.target.default_max_message())
    }
}

/// One datagram per message.
async fn send_udp(sock: &UdpSocket, frames: &Frames) -> Result<(), String> {
    for i in 0..frames.spans.len() {
        sock.send(frames.frame(i))
            .await
            .map_err(|e| format!("UDP send failed: {e}"))?;
    }
    Ok(())
}

/// Why a write to a stream failed; `clean` when the receiver had closed
/// the connection in an orderly way (FIN) before anything was written, so
/// it read everything sent before.
struct StreamError {
    why: String,
    clean: bool,
}

impl StreamError {
    fn dirty(why: String) -> Self {
        StreamError { why, clean: false }
    }
}

/// Writes `replay` then `buf`, flushes, and waits until the receiver's TCP
/// stack has acknowledged every byte, checking that the connection stays
/// open.
async fn send_stream(
    conn: &mut StreamConn,
    replay: &[bytes::Bytes],
    buf: &[u8],
    timeout: Duration,
) -> Result<(), StreamError> {
    check_open(conn).await?;
    let deadline = tokio::time::Instant::now() + timeout;
    let write = async {
        for old in replay {
            conn.io.write_all(old).await?;
        }
        conn.io.write_all(buf).await?;
        conn.io.flush().await
    };
    match tokio::time::timeout_at(deadline, write).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(StreamError::dirty(format!("write failed: {e}"))),
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

#[async_trait]
impl Sink for SyslogSink {
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
        for run in self.common.batch.chunks(events, 1000, 1024 * 1024) {
            self.deliver_run(source, run).await?;
        }
        Ok(())
    }

    /// Opens (and drops) a connection of the configured transport: TCP
    /// connect, TLS handshake with certificate checks, RELP `open`. UDP
    /// only proves the address resolves.
    async fn healthcheck(&self) -> anyhow::Result<()> {
        self.connect()
            .await
            .map(drop)
            .map_err(|e| anyhow::anyhow!(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let t = Target::parse("tls://siem.example:6514").unwrap();
        assert_eq!(
            (t.transport, t.host.as_str(), t.port),
            (Transport::Tls, "siem.example", 6514)
        );
        assert_eq!(Target::parse("udp://10.0.0.1").unwrap().port, 514);
        assert_eq!(Target::parse("tls://h").unwrap().port, 6514);
        assert_eq!(Target::parse("relp://[::1]:2514").unwrap().host, "[::1]");
        assert!(Target::parse("tcp://h")
            .unwrap_err()
            .contains("needs a port"));
        assert!(Target::parse("http://h:1")
            .unwrap_err()
            .contains("not supported"));
        assert!(Target::parse("h:514").unwrap_err().contains("no scheme"));
        assert!(Target::parse("tcp://u:p@h:1").is_err());
        assert!(Target::parse("tcp://h:1/x").is_err());
    }
}

#[cfg(test)]
mod relp_sink_tests {
    use super::*;
    use crate::sink::DeadLetters;
    use bytes::Bytes;
    use std::sync::Mutex;
    use tokio::io::AsyncBufReadExt;
    use tokio::net::TcpListener;

    /// A scripted RELP receiver: refuses messages containing "poison" with
    /// `rsp 500`, and ends every session with `serverclose` (and a close)
    /// after `per_session` accepted messages, to force reconnects.
    async fn receiver(per_session: usize) -> (u16, Arc<Mutex<Vec<String>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let got = Arc::new(Mutex::new(Vec::new()));
        let seen = got.clone();
        tokio::spawn(async move {
            while let Ok((s, _)) = listener.accept().await {
                let (r, mut w) = s.into_split();
                let mut r = tokio::io::BufReader::new(r);
                let mut accepted = 0;
                loop {
                    let mut head = Vec::new();
                    if r.read_until(b' ', &mut head).await.unwrap_or(0) == 0 {
                        break;
                    }
                    let mut cmd = Vec::new();
                    let mut len = Vec::new();
                    if r.read_until(b' ', &mut cmd).await.is_err()
                        || r.read_until(b' ', &mut len).await.is_err()
                    {
                        break;
                    }
                    let txnr = String::from_utf8_lossy(&head).trim().to_string();
                    let len: usize = String::from_utf8_lossy(&len).trim().parse().unwrap();
                    let mut data = vec![0; len + 1];
                    if r.read_exact(&mut data).await.is_err() {
                        break;
                    }
                    data.pop();
                    let text = String::from_utf8_lossy(&data).to_string();
                    let answer = if cmd.starts_with(b"open") {
                        "200 OK\nrelp_version=0\ncommands=syslog".to_string()
                    } else if text.contains("poison") {
                        "500 message refused".to_string()
                    } else {
                        seen.lock().unwrap().push(text);
                        accepted += 1;
                        "200 OK".to_string()
                    };
                    let frame = format!("{txnr} rsp {} {answer}\n", answer.len());
                    if w.write_all(frame.as_bytes()).await.is_err() {
                        break;
                    }
                    if accepted == per_session {
                        let _ = w.write_all(b"0 serverclose 0\n").await;
                        break;
                    }
                }
            }
        });
        (port, got)
    }

    fn sink(port: u16, dir: &std::path::Path) -> SyslogSink {
        let cfg: SyslogConfig = serde_json::from_value(serde_json::json!({
            "address": format!("relp://127.0.0.1:{port}"),
            "relp_window": 4,
        }))
        .unwrap();
        let common: SinkCommon = serde_json::from_value(serde_json::json!({
            "inputs": ["s"], "retry": {"initial": "5ms", "max": "20ms"}
        }))
        .unwrap();
        SyslogSink::new(
            cfg,
            &common,
            SinkContext {
                name: "relp-test".into(),
                state_dir: dir.to_path_buf(),
                health: Health::default(),
                dead_letters: DeadLetters::new(dir, "relp-test"),
            },
        )
        .unwrap()
    }

    fn event(i: usize, poison: bool) -> Event {
        let id = format!("e{i:03}");
        Event {
            raw: Bytes::from(format!(
                "{{\"id\":\"{id}\"{}}}",
                if poison { ",\"x\":\"poison\"" } else { "" }
            )),
            id: Some(id.into()),
            time: None,
            kind: None,
        }
    }

    #[tokio::test]
    async fn serverclose_resends_unacked_and_refusals_go_to_dead_letters() {
        let (port, got) = receiver(7).await;
        let dir = tempfile::tempdir().unwrap();
        let sink = sink(port, dir.path());
        let events: Vec<Event> = (0..40).map(|i| event(i, i == 13)).collect();
        tokio::time::timeout(Duration::from_secs(20), sink.deliver("s", &events))
            .await
            .expect("delivery finished")
            .unwrap();
        let got = got.lock().unwrap().clone();
        for i in (0..40).filter(|i| *i != 13) {
            let id = format!("\"id\":\"e{i:03}\"");
            assert!(got.iter().any(|m| m.contains(&id)), "e{i:03} lost");
        }
        assert!(!got.iter().any(|m| m.contains("poison")));
        let dl = std::fs::read_to_string(dir.path().join("dead_letter/relp-test.ndjson")).unwrap();
        let rows: Vec<serde_json::Value> = dl
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(rows.len(), 1);
        assert_eq!(rows[0]["id"], "e013");
        assert!(rows[0]["error"]
            .as_str()
            .unwrap()
            .contains("refused the message 3 times: 500 message refused"));
        let m = metrics().render();
        assert!(
            m.contains("auditrelay_syslog_relp_refused_total{sink=\"relp-test\"} 3"),
            "{m}"
        );
        assert!(m.contains("auditrelay_syslog_reconnects_total{sink=\"relp-test\"}"));
    }
}
