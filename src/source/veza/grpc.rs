//! How Veza answers besides a page: gRPC-style error bodies passed
//! through the gateway (`{"code":8,...}`), whatever the HTTP status.

use serde::Deserialize;

use crate::event::FieldPath;
use crate::source::pull::scan::PageScan;
use crate::source::pull::{snippet, Verdict};

/// What an answer of the export endpoint means, beyond its status (see
/// [`crate::source::pull::Fetcher::send_classified`]): a 2xx holding a page
/// is `None` (so is a 429, which the fetcher knows). ResourceExhausted in
/// the body is a rate limit whatever the status; a rejected page token
/// (400 or gRPC code 3) is handed back, counted `token_rejected` when a
/// token was sent. `page` is the one-pass scan of a 2xx body (the caller
/// keeps it, so the page is not read again).
pub fn verdict(
    items_path: &FieldPath,
    sent_token: bool,
    status: u16,
    body: &[u8],
    page: Option<&Result<PageScan, String>>,
) -> Option<Verdict> {
    if status == 429 {
        return None;
    }
    let success = (200..300).contains(&status);
    if success {
        // The common case: a whole JSON page. Anything else in a 2xx is
        // either a gRPC error passed through the gateway or a broken body.
        match page {
            Some(Ok(scan)) if scan.has_items() => return None,
            Some(Ok(_)) | None => {}
            Some(Err(e)) => {
                return Some(Verdict::Retry(format!(
                    "HTTP {status}: body is not valid JSON ({e}, {} bytes received)",
                    body.len()
                )))
            }
        }
    }
    let grpc = GrpcError::sniff(body);
    if grpc.as_ref().is_some_and(GrpcError::is_resource_exhausted) {
        return Some(Verdict::RateLimited);
    }
    let code = grpc.as_ref().and_then(|g| g.code);
    if status == 401 || status == 403 || code == Some(16) || code == Some(7) {
        return Some(Verdict::Unauthorized);
    }
    if rejects_token(status, code) {
        return Some(Verdict::Refused(if sent_token {
            "token_rejected"
        } else {
            "client_error"
        }));
    }
    if status >= 500 || status == 408 || success {
        // A 2xx lands here when it lacked the items member.
        return Some(Verdict::Retry(format!(
            "HTTP {status}: not a page (no \"{items_path}\" member): {}",
            snippet(body)
        )));
    }
    Some(Verdict::Refused("client_error"))
}

/// Whether a refusal is Veza's answer to a page token it no longer takes.
pub fn refused_token(status: u16, body: &[u8]) -> bool {
    rejects_token(status, GrpcError::sniff(body).and_then(|g| g.code))
}

fn rejects_token(status: u16, code: Option<i64>) -> bool {
    status == 400 || code == Some(3)
}

/// A gRPC-style error body: `{"code":8,"message":...}` and variants.
#[derive(Debug, Default)]
struct GrpcError {
    code: Option<i64>,
    status: Option<String>,
    message: Option<String>,
}

impl GrpcError {
    /// Reads an error body if it is a small JSON object with a code or status.
    fn sniff(body: &[u8]) -> Option<GrpcError> {
        if body.len() > 64 * 1024 || !body.trim_ascii_start().starts_with(b"{") {
            return None;
        }
        #[derive(Deserialize)]
        struct Wire {
            code: Option<serde_json::Value>,
            status: Option<serde_json::Value>,
            message: Option<String>,
            error: Option<Box<Wire>>,
        }
        let wire: Wire = serde_json::from_slice(body).ok()?;
        let wire = match wire.error {
            Some(inner) if wire.code.is_none() => *inner,
            _ => wire,
        };
        let mut out = GrpcError {
            message: wire.message,
            ..Default::default()
        };
        for v in [&wire.code, &wire.status].into_iter().flatten() {
            match v {
                serde_json::Value::Number(n) => out.code = out.code.or(n.as_i64()),
                serde_json::Value::String(s) => out.status = out.status.clone().or(Some(s.clone())),
                _ => {}
            }
        }
        if out.code.is_none() && out.status.is_none() {
            return None;
        }
        Some(out)
    }

    fn is_resource_exhausted(&self) -> bool {
        let named = |s: &str| {
            let s = s.to_ascii_lowercase().replace('_', "");
            s.contains("resourceexhausted") || s.contains("resourceexhaused")
        };
        self.code == Some(8)
            || self.status.as_deref().is_some_and(named)
            || (self.code.is_none() && self.message.as_deref().is_some_and(named))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_bodies_are_recognised() {
        let re =
            |b: &str| GrpcError::sniff(b.as_bytes()).is_some_and(|g| g.is_resource_exhausted());
        assert!(re(r#"{"code":8,"message":"slow down"}"#));
        assert!(re(r#"{"code":"RESOURCE_EXHAUSTED"}"#));
        assert!(re(
            r#"{"error":{"code":429,"status":"RESOURCE_EXHAUSTED"}}"#
        ));
        assert!(re(r#"{"status":"ResourceExhausted","message":"x"}"#));
        assert!(!re(r#"{"code":3,"message":"bad token"}"#));
        assert!(!re(r#"{"values":[],"next_page_token":"x"}"#));
        assert!(!re("<html>"));
    }
}
