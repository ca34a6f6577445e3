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
//!   ([`replay`]), so a SIGKILL, restart or reload of auditrelay resends it
//!   too — unless the receiver answered our FIN with a clean close of its
//!   own, proof it read everything: seen at a stop or reload
//!   ([`Sink::close`]), and after a SIGKILL in the kernel's table, where the
//!   dead connection waits in TIME_WAIT ([`closed`]).
//!   Left uncovered: a receiver that read frames and lost them itself,
//!   frames older than the window, or a host that vanished without a
//!   reset. RELP has no such gap.
//! - `udp://`: best effort. Each message is one datagram; a datagram that
//!   the network or the receiver drops is not noticed by anyone.
//!
//! Failures (refused connection, TLS handshake, reset, timeout) drop the
//! connection and retry with backoff, forever, resending the unconfirmed
//! messages: delivery is at least once, a message may arrive twice.

mod closed;
mod config;
mod connect;
mod encode;
mod metrics;
pub mod relp;
mod replay;
mod stream;
mod tls;

use std::sync::{Arc, LazyLock};

use async_trait::async_trait;
use tracing::{info, warn};

use super::delivery::{count_confirmed, count_failed};
use super::{DeadLetters, Sink, SinkCommon, SinkContext};
use crate::config::{require_positive, Problems, TlsConfig};
use crate::event::{Event, FieldPath};
use crate::format::{cef, leef, rfc5424};
use crate::health::Health;
use crate::metrics::metrics;
use crate::retry::Backoff;
pub use config::{Body, Format, Framing, SyslogConfig, Target, Transport};
use connect::{send_udp, Conn, Connector};
pub use encode::{Encoder, Frames, SD_VALUE_MAX};
use metrics::SYSLOG_METRICS;
use stream::{close_gracefully, send_stream, StreamError};

/// Longest wait for the receiver's close at a stop or reload.
const CLOSE_WAIT: std::time::Duration = std::time::Duration::from_secs(5);

/// The connection and, for TCP/TLS, the frames most recently confirmed on
/// it. A receiver that closes a connection while bytes we sent are still
/// unread in its socket makes its kernel answer with a reset, not a FIN;
/// those bytes were acknowledged by TCP, so their batches were confirmed,
/// yet the receiver never saw them. On a reset (or any failure other than a
/// clean close) the window is written again on the next connection, before
/// anything new: at least once across receiver restarts and crashes. The
/// window is kept on disk only ([`replay`]), so it survives our own
/// restarts and costs no memory.
#[derive(Default)]
struct State {
    conn: Option<Conn>,
    /// The window must be resent before the next batch.
    replay: bool,
    /// This instance's replay file, which holds the window, opened (and the
    /// windows of earlier instances adopted) before the first TCP/TLS batch.
    log: Option<Arc<std::sync::Mutex<replay::ReplayLog>>>,
    /// A send was under way; still set when it was cancelled midway (a
    /// reload aborting a pipeline whose drain timed out), and then the
    /// connection may end inside a frame: never write after that.
    sending: bool,
}

impl State {
    /// Bytes of frames in the replay window (none before the file is open).
    fn window_bytes(&self) -> usize {
        self.log
            .as_ref()
            .map_or(0, |log| replay::lock(log).window_bytes())
    }
}

pub struct SyslogSink {
    name: Arc<str>,
    target: Target,
    cfg: SyslogConfig,
    common: SinkCommon,
    encoder: Encoder,
    connector: Connector,
    state: tokio::sync::Mutex<State>,
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
        let connector =
            Connector::new(ctx.name.as_str().into(), &target, &cfg, &common.tls, &path)?;
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
            connector,
            state: tokio::sync::Mutex::new(State::default()),
            health: ctx.health,
            dead_letters: ctx.dead_letters,
            state_dir: ctx.state_dir,
        })
    }

    fn health_key(&self) -> String {
        format!("sink.{}", self.name)
    }

    /// Records a failed attempt and waits before the next one.
    async fn failed(&self, source: &str, events: usize, why: &str, backoff: &mut Backoff) {
        count_failed(&self.name, source, events as u64, "retry");
        let delay = backoff.next_delay();
        warn!(sink = %self.name, receiver = %self.target, error = %why, retry_in_s = delay.as_secs_f64(), "syslog delivery failed; retrying");
        self.health.set_unready(
            &self.health_key(),
            format!("syslog receiver {}: {why}", self.target),
        );
        tokio::time::sleep(delay).await;
    }

    fn confirmed(&self, source: &str, events: usize, frames: usize, bytes: usize) {
        count_confirmed(&self.name, source, events as u64);
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
        let frames = self.encoder.encode_all(source, events);
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
            warn!(sink = %self.name, "a send was cancelled midway; reconnecting and resending the replay window");
            state.conn = None;
            // Dropping the connection without the receiver's close proves
            // nothing, as after a reset: what it acknowledged may be unread.
            state.replay = state.window_bytes() > 0;
        }
        if self.keeps_window() && state.log.is_none() {
            if let Err(e) = self.open_replay_log(state).await {
                self.health
                    .set_unready(&self.health_key(), format!("{e:#}"));
                return Err(e);
            }
        }
        // RELP: which messages are acknowledged, and how often each was refused.
        let mut acked = vec![false; events.len()];
        let mut refusals = vec![0u32; events.len()];
        loop {
            if state.conn.is_none() {
                match self.connector.connect().await {
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
            // TCP/TLS: the connection that now carried the whole window.
            let mut carried_by = None;
            let result = match conn {
                Conn::Udp(sock) => send_udp(sock, &frames).await,
                Conn::Stream(s) => {
                    // Read back from the file batch by batch while sent.
                    let mut resend = match &state.log {
                        Some(log) if state.replay => Some(replay::Resend::new(log.clone())),
                        _ => None,
                    };
                    match send_stream(s, resend.as_mut(), &frames.buf, self.cfg.timeout).await {
                        Ok(()) => {
                            carried_by = s.connection;
                            if state.replay {
                                info!(sink = %self.name, bytes = state.window_bytes(), "resent the frames written before the receiver reset the connection (or before a restart)");
                                state.replay = false;
                            }
                            Ok(())
                        }
                        Err(StreamError { why, clean }) => {
                            if clean && !state.replay {
                                // Closed with everything read: nothing to resend.
                                self.persist(&state.log, None).await.ok();
                            } else if !clean {
                                // Also when the window could not be read
                                // back: this batch is not confirmed, and the
                                // next attempt resends the window first.
                                state.replay = state.window_bytes() > 0;
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
                                self.dead_letters
                                    .write_waiting(
                                        source,
                                        &events[index..=index],
                                        &format!(
                                            "RELP receiver refused the message {} times: {answer}",
                                            refusals[index]
                                        ),
                                    )
                                    .await;
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
                        // On disk (the window's only copy) before the batch
                        // counts as confirmed: a crash from here on cannot
                        // lose it. Should that fail, the batch is not
                        // confirmed (sent again).
                        // The pipeline retries the run (sending it again):
                        // unready until a batch is confirmed, so a full or
                        // read-only state_dir is seen, not only logged.
                        if let Err(e) = self
                            .persist(&state.log, Some((frames.buf, carried_by)))
                            .await
                        {
                            self.health.set_unready(&self.health_key(), e.clone());
                            return Err(anyhow::anyhow!("sinks.{}: {e}", self.name));
                        }
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
        let opened = tokio::task::spawn_blocking(move || {
            replay::ReplayLog::open(&dir, &name, cap, framing, CLOSE_WAIT)
        })
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
        let counted = |outcome: &str, bytes: u64| {
            SYSLOG_METRICS
                .restart_window
                .with_label_values(&[&self.name, outcome])
                .inc_by(bytes)
        };
        counted("resent", adopted.bytes as u64);
        counted("skipped", adopted.read);
        if adopted.read > 0 {
            info!(sink = %self.name, bytes = adopted.read, "not resending the replay window of a previous run: its connection closed cleanly after the run ended, so the receiver read every frame");
        }
        if adopted.bytes > 0 {
            info!(sink = %self.name, bytes = adopted.bytes, "resending the replay window of a previous run before the first batch");
            state.replay = true;
        }
        state.log = Some(Arc::new(std::sync::Mutex::new(log)));
        Ok(())
    }

    /// Appends the frames `sent` to the replay window, or (`None`)
    /// empties it.
    async fn persist(
        &self,
        log: &Option<Arc<std::sync::Mutex<replay::ReplayLog>>>,
        sent: Option<(Vec<u8>, Option<replay::Connection>)>,
    ) -> Result<(), String> {
        let Some(log) = log.clone() else {
            return Ok(());
        };
        let done = tokio::task::spawn_blocking(move || {
            let mut log = replay::lock(&log);
            match sent {
                Some((sent, carried_by)) => log.append(&sent, carried_by),
                None => log.clear(),
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

#[async_trait]
impl Sink for SyslogSink {
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
        for run in self.common.batch.chunks(events, 1000, 1024 * 1024) {
            self.deliver_run(source, run).await?;
        }
        Ok(())
    }

    /// TCP/TLS: a clean close by the receiver after our FIN proves it read
    /// every frame, so the replay window is cleared and the next instance
    /// resends nothing. Without that proof (a reset, no close in time, a
    /// send cut off midway, a window not yet resent) it stays on disk.
    async fn close(&self) {
        let mut state = self.state.lock().await;
        let state = &mut *state;
        let Some(Conn::Stream(mut conn)) = state.conn.take() else {
            return;
        };
        if !self.keeps_window() || state.window_bytes() == 0 {
            let deadline = tokio::time::Instant::now() + self.cfg.timeout.min(CLOSE_WAIT);
            let _ = close_gracefully(&mut conn, deadline).await;
            return;
        }
        if state.sending || state.replay {
            info!(sink = %self.name, bytes = state.window_bytes(), "replay window kept: the connection was not in a state to close cleanly; it is resent at the next start");
            return;
        }
        let deadline = tokio::time::Instant::now() + self.cfg.timeout.min(CLOSE_WAIT);
        match close_gracefully(&mut conn, deadline).await {
            Ok(()) => {
                if self.persist(&state.log, None).await.is_ok() {
                    info!(sink = %self.name, receiver = %self.target, "connection closed cleanly by the receiver: it read every frame, nothing to resend");
                }
            }
            Err(why) => {
                // A send after this (the spool drainer runs until the sink
                // is dropped) goes on a new connection, window first: else
                // that connection would be named for frames it never carried.
                state.replay = true;
                info!(sink = %self.name, receiver = %self.target, bytes = state.window_bytes(), reason = %why, "replay window kept: no proof the receiver read every frame; it is resent at the next start");
            }
        }
    }

    /// Opens (and drops) a connection of the configured transport: TCP
    /// connect, TLS handshake with certificate checks, RELP `open`. UDP
    /// only proves the address resolves.
    async fn healthcheck(&self) -> anyhow::Result<()> {
        self.connector
            .connect()
            .await
            .map(drop)
            .map_err(|e| anyhow::anyhow!(e))
    }
}

/// Largest UDP payload over IPv4.
const UDP_MAX: usize = 65_507;
/// Smallest limit that always leaves room for the header and SD element.
const MESSAGE_MIN: usize = 1024;

impl super::SinkType for SyslogConfig {
    const KIND: &'static str = "syslog";

    fn validate(&self, path: &str, common: &SinkCommon, problems: &mut Problems) {
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
            FieldPath::check(p, &format!("{path}.severity_field"), problems);
        }
        for (key, p) in &self.extra_fields {
            let at = format!("{path}.extra_fields.{key}");
            FieldPath::check(p, &at, problems);
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

    fn build(&self, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(SyslogSink::new(self.clone(), common, ctx)?))
    }
}

#[cfg(test)]
mod relp_sink_tests;

#[cfg(test)]
mod kill_proof_tests;
