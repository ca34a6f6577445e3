//! The listening side: TCP (or TLS) connections, bounded in number and
//! in the time a client may take, served by the request handler.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::config::TlsConfig;

/// Most connections served at once.
const MAX_CONNECTIONS: usize = 1024;
/// Time a client gets to send its request head (the body's is in `receive`).
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);
const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// A TLS acceptor for `tls`, if it names a certificate.
pub(super) fn tls_acceptor(
    tls: &TlsConfig,
    path: &str,
) -> anyhow::Result<Option<tokio_rustls::TlsAcceptor>> {
    use tokio_rustls::rustls;
    use tokio_rustls::rustls::pki_types::pem::PemObject;
    use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) else {
        return Ok(None);
    };
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| anyhow::anyhow!("{path}.tls.cert_file: {}: {e}", cert.display()))?;
    if certs.is_empty() {
        anyhow::bail!(
            "{path}.tls.cert_file: {} holds no certificate",
            cert.display()
        );
    }
    let key = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| anyhow::anyhow!("{path}.tls.key_file: {}: {e}", key.display()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("{path}.tls: {e}"))?;
    let builder = match &tls.ca_file {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| anyhow::anyhow!("{path}.tls.ca_file: {}: {e}", ca.display()))?
            {
                let c = c.map_err(|e| anyhow::anyhow!("{path}.tls.ca_file: {e}"))?;
                roots
                    .add(c)
                    .map_err(|e| anyhow::anyhow!("{path}.tls.ca_file: {e}"))?;
            }
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(roots),
                provider,
            )
            .build()
            .map_err(|e| anyhow::anyhow!("{path}.tls.ca_file: {e}"))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(certs, key)
        .map_err(|e| anyhow::anyhow!("{path}.tls: certificate and key do not fit: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(tokio_rustls::TlsAcceptor::from(Arc::new(config))))
}

/// Accepts connections until the task is aborted (when the source is dropped).
pub(super) async fn serve(
    name: Arc<str>,
    listener: tokio::net::TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    router: axum::Router,
) {
    use hyper_util::rt::{TokioIo, TokioTimer};
    use hyper_util::service::TowerToHyperService;
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut conns = JoinSet::new();
    loop {
        let permit = match slots.clone().acquire_owned().await {
            Ok(p) => p,
            Err(_) => return,
        };
        let accepted = tokio::select! {
            Some(_) = conns.join_next(), if !conns.is_empty() => continue,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // E.g. out of file descriptors: back off briefly.
                warn!(source = %name, error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let (svc, tls, name) = (router.clone(), tls.clone(), name.clone());
        conns.spawn(async move {
            let _permit = permit;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new())
                .header_read_timeout(HEAD_TIMEOUT);
            let svc = TowerToHyperService::new(svc);
            let served = match tls {
                Some(acceptor) => {
                    match tokio::time::timeout(TLS_HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await
                    {
                        Ok(Ok(s)) => http.serve_connection(TokioIo::new(s), svc).await,
                        Ok(Err(e)) => {
                            debug!(source = %name, %peer, error = %e, "TLS handshake failed");
                            return;
                        }
                        Err(_) => {
                            debug!(source = %name, %peer, "TLS handshake timed out");
                            return;
                        }
                    }
                }
                None => http.serve_connection(TokioIo::new(stream), svc).await,
            };
            if let Err(e) = served {
                debug!(source = %name, %peer, error = %e, "connection ended with an error");
            }
        });
    }
}
