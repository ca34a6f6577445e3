//! The rustls client of `tls://` (RFC 5425): the shared `tls` keys — extra CA
//! file, client certificate for mTLS, `insecure_skip_verify` — with SNI and
//! certificate verification against the address's host.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{verify_tls12_signature, verify_tls13_signature, CryptoProvider};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_rustls::TlsConnector;

use crate::config::TlsConfig;

/// Builds the connector for the component at `path` (used in errors).
pub fn connector(tls: &TlsConfig, path: &str) -> anyhow::Result<TlsConnector> {
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| anyhow::anyhow!("{path}.tls: {e}"))?;
    let builder = if tls.insecure_skip_verify {
        tracing::warn!(
            component = path,
            "TLS certificate verification is OFF (tls.insecure_skip_verify = true): \
             anyone on the network path can read and alter this traffic"
        );
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerify(provider)))
    } else {
        let mut roots = RootCertStore::empty();
        // System roots plus the configured CA, as the HTTP clients do.
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(ca) = &tls.ca_file {
            let certs = CertificateDer::pem_file_iter(ca)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    anyhow::anyhow!("{path}.tls.ca_file: cannot read {}: {e}", ca.display())
                })?;
            if certs.is_empty() {
                anyhow::bail!(
                    "{path}.tls.ca_file: {} holds no PEM certificate",
                    ca.display()
                );
            }
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                anyhow::bail!(
                    "{path}.tls.ca_file: {} holds no usable CA certificate",
                    ca.display()
                );
            }
        }
        builder.with_root_certificates(roots)
    };
    let config = match (&tls.cert_file, &tls.key_file) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(cert)
                .and_then(|it| it.collect::<Result<Vec<_>, _>>())
                .map_err(|e| {
                    anyhow::anyhow!("{path}.tls.cert_file: cannot read {}: {e}", cert.display())
                })?;
            let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
                anyhow::anyhow!("{path}.tls.key_file: cannot read {}: {e}", key.display())
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| anyhow::anyhow!("{path}.tls: client certificate/key unusable: {e}"))?
        }
        _ => builder.with_no_client_auth(),
    };
    Ok(TlsConnector::from(Arc::new(config)))
}

/// The name the server certificate must carry (and SNI when a DNS name).
pub fn server_name(host: &str) -> anyhow::Result<ServerName<'static>> {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    ServerName::try_from(bare.to_string())
        .map_err(|e| anyhow::anyhow!("\"{host}\" is not a valid TLS server name: {e}"))
}

/// The handshake signature checks of [`ServerCertVerifier`], one method per
/// TLS version, each left to the rustls function of the same name with the
/// provider's algorithms: they differ only in that name.
macro_rules! signature_checks {
    ($($check:ident),+) => {$(
        fn $check(
            &self,
            message: &[u8],
            cert: &CertificateDer<'_>,
            dss: &DigitallySignedStruct,
        ) -> Result<HandshakeSignatureValid, rustls::Error> {
            $check(message, cert, dss, &self.0.signature_verification_algorithms)
        }
    )+};
}

/// Accepts any certificate but still checks handshake signatures.
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    signature_checks!(verify_tls12_signature, verify_tls13_signature);

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
