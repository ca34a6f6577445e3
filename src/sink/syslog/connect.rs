//! Opening the connection of the configured transport (UDP, TCP, TLS,
//! RELP), with the timeouts and error texts an operator can act on.

use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use tokio::net::{TcpStream, UdpSocket};
use tokio_rustls::TlsConnector;
use tracing::info;

use super::config::{SyslogConfig, Target, Transport};
use super::encode::Frames;
use super::metrics::SYSLOG_METRICS;
use super::stream::StreamConn;
use super::{relp, tls};
use crate::config::TlsConfig;

/// An open connection to the receiver.
pub(super) enum Conn {
    Udp(UdpSocket),
    Stream(StreamConn),
    Relp(relp::RelpConn),
}

/// Opens connections to the receiver of one sink, and counts the
/// reconnects.
pub(super) struct Connector {
    name: Arc<str>,
    target: Target,
    connect_timeout: Duration,
    /// RELP: how long the session open may take.
    timeout: Duration,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connected_before: AtomicBool,
}

impl Connector {
    /// `path` is the sink's key path, for errors.
    pub(super) fn new(
        name: Arc<str>,
        target: &Target,
        cfg: &SyslogConfig,
        tls: &TlsConfig,
        path: &str,
    ) -> anyhow::Result<Connector> {
        let tls = if target.transport == Transport::Tls {
            let name = tls::server_name(&target.host)
                .map_err(|e| anyhow::anyhow!("{path}.address: {e}"))?;
            Some((tls::connector(tls, path)?, name))
        } else {
            None
        };
        Ok(Connector {
            name,
            target: target.clone(),
            connect_timeout: cfg.connect_timeout,
            timeout: cfg.timeout,
            tls,
            connected_before: AtomicBool::new(false),
        })
    }

    /// Opens the connection of the configured transport.
    pub(super) async fn connect(&self) -> Result<Conn, String> {
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
                let connection = connection(&tcp);
                Conn::Stream(StreamConn {
                    io: Box::new(tcp),
                    fd,
                    connection,
                })
            }
            Transport::Tls => {
                let tcp = self.connect_tcp().await?;
                let fd = tcp.as_raw_fd();
                let connection = connection(&tcp);
                let Some((connector, name)) = &self.tls else {
                    return Err("TLS is not configured".into());
                };
                let handshake = connector.connect(name.clone(), tcp);
                let stream = match tokio::time::timeout(self.connect_timeout, handshake).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) if crate::tls::advice(&e).is_some() => {
                        return Err(format!(
                            "TLS handshake with {} failed: {}",
                            self.target,
                            crate::tls::describe(&e)
                        ));
                    }
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
                    connection,
                })
            }
            Transport::Relp => {
                let tcp = self.connect_tcp().await?;
                let session = relp::RelpConn::open(tcp, self.timeout)
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
        match tokio::time::timeout(self.connect_timeout, lookup).await {
            Ok(Ok(mut addrs)) => addrs
                .next()
                .ok_or_else(|| format!("{} resolves to no address", self.target.host)),
            Ok(Err(e)) => Err(format!("cannot resolve {}: {e}", self.target.host)),
            Err(_) => Err(format!("resolving {} timed out", self.target.host)),
        }
    }

    async fn connect_tcp(&self) -> Result<TcpStream, String> {
        let addr = self.resolve().await?;
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(addr)).await {
            Ok(Ok(s)) => s,
            Ok(Err(e)) => return Err(format!("cannot connect to {}: {e}", self.target)),
            Err(_) => return Err(format!("connecting to {} timed out", self.target)),
        };
        let _ = tcp.set_nodelay(true);
        Ok(tcp)
    }
}

/// Each message as one datagram: best effort, nobody notices a lost one.
pub(super) async fn send_udp(sock: &UdpSocket, frames: &Frames) -> Result<(), String> {
    for i in 0..frames.spans.len() {
        sock.send(frames.frame(i))
            .await
            .map_err(|e| format!("UDP send failed: {e}"))?;
    }
    Ok(())
}

/// How the kernel knows `tcp`, to find out after a kill how it ended.
fn connection(tcp: &tokio::net::TcpStream) -> Option<super::closed::Connection> {
    let (ours, theirs) = tcp.local_addr().ok().zip(tcp.peer_addr().ok())?;
    super::closed::Connection::of(tcp.as_raw_fd(), ours, theirs)
}
