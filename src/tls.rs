//! TLS failures explained for operators: what rustls refused and what to
//! change, for every rustls client (the HTTP sources and sinks, syslog over
//! TLS).

use std::error::Error;

/// Advice for a TLS failure somewhere in `e`'s chain of causes, when the
/// cause is one an operator can fix and rustls's own words do not say how.
pub fn advice(e: &(dyn Error + 'static)) -> Option<String> {
    causes(e).find_map(|cause| match cause.downcast_ref::<rustls::Error>()? {
        rustls::Error::InvalidCertificate(rustls::CertificateError::Other(other)) => {
            match other.0.downcast_ref::<webpki::Error>()? {
                webpki::Error::CaUsedAsEndEntity => Some(CA_AS_SERVER.to_string()),
                _ => None,
            }
        }
        _ => None,
    })
}

const CA_AS_SERVER: &str = "the server presents a CA certificate (basicConstraints CA:TRUE) as \
    its own, which TLS clients refuse; `openssl req -x509` makes such a certificate unless told \
    otherwise. Give the server a certificate signed by a CA, with CA:FALSE (e.g. `openssl req \
    -x509 ... -addext basicConstraints=critical,CA:FALSE -addext subjectAltName=DNS:<host>`, or \
    sign a server certificate with your CA), and put that CA in tls.ca_file";

/// `e` and its causes, looking inside `io::Error`s too: their `source()`
/// skips the error they wrap, which is where rustls puts its own.
fn causes<'a>(e: &'a (dyn Error + 'static)) -> impl Iterator<Item = &'a (dyn Error + 'static)> {
    let mut stack = vec![e];
    // Bounded: error chains are short, but a cycle must not hang a log line.
    let mut left = 64;
    std::iter::from_fn(move || {
        let cur = stack.pop()?;
        left -= 1;
        if left > 0 {
            if let Some(next) = cur.source() {
                stack.push(next);
            }
            if let Some(inner) = cur
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                stack.push(inner);
            }
        }
        Some(cur)
    })
}

/// A TLS error for a log line or readiness reason: its text plus advice.
pub fn describe(e: &(dyn Error + 'static)) -> String {
    match advice(e) {
        Some(advice) => format!("{e} ({advice})"),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_ca_certificate_as_server_certificate_gets_advice_even_inside_io_errors() {
        let rustls_err = rustls::Error::InvalidCertificate(rustls::CertificateError::Other(
            rustls::OtherError(Arc::new(webpki::Error::CaUsedAsEndEntity)),
        ));
        let io = std::io::Error::new(std::io::ErrorKind::InvalidData, rustls_err);
        let text = describe(&io);
        assert!(
            text.contains("CA certificate") && text.contains("CA:FALSE"),
            "{text}"
        );
        assert!(text.contains("tls.ca_file"), "{text}");

        let other = rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer);
        assert_eq!(advice(&other), None);
    }
}
