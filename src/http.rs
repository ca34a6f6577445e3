//! The HTTP client every HTTP source and sink uses: rustls, the shared
//! `tls` keys, a request timeout, a user agent naming auditrelay, and a
//! redirect policy under which an answer that went somewhere else never
//! passes for the endpoint's.

use std::time::Duration;

use serde::Deserialize;

use crate::config::TlsConfig;

/// Most redirects followed for one request.
const MAX_REDIRECTS: usize = 5;

/// Which redirects a client follows (`follow_redirects`). 301, 302 and 303
/// are never followed: clients turn the POST into a GET without its body,
/// so whatever page answers at the end confirms nothing. 307 and 308 keep
/// method and body; the choice is where they may lead.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FollowRedirects {
    /// No redirect is followed.
    None,
    /// 307/308 to the same scheme, host and port.
    #[default]
    SameOrigin,
    /// 307/308 anywhere, but never from https to http. Credentials
    /// (`Authorization`, cookies) are not sent to another origin.
    AnyOrigin,
}

/// How a client is built beyond the `tls` keys and the timeout.
#[derive(Clone, Copy, Debug, Default)]
pub struct ClientOptions {
    pub redirects: FollowRedirects,
    /// Keep the cookies the server sets and send them back: load balancers
    /// pin a session to one backend with a cookie (Splunk HEC's indexer
    /// acknowledgment only works when every request reaches the same one).
    pub cookies: bool,
}

/// A redirect the client did not follow, naming where it pointed.
#[derive(Debug)]
pub struct RedirectRefused {
    pub status: u16,
    /// The Location, without its query (which may carry a return address
    /// holding the request's own URL) and without user info.
    pub location: String,
    pub why: &'static str,
}

impl std::fmt::Display for RedirectRefused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the endpoint answered HTTP {} redirecting to {}: {}",
            self.status, self.location, self.why
        )
    }
}

impl std::error::Error for RedirectRefused {}

/// A Location for messages: scheme, host, port and path only.
fn shown_location(url: &url::Url) -> String {
    let mut shown = url.clone();
    let _ = shown.set_username("");
    let _ = shown.set_password(None);
    shown.set_fragment(None);
    let had_query = shown.query().is_some();
    shown.set_query(None);
    if had_query {
        format!("{shown} (query left out)")
    } else {
        shown.to_string()
    }
}

fn same_origin(a: &url::Url, b: &url::Url) -> bool {
    a.scheme() == b.scheme()
        && a.host_str() == b.host_str()
        && a.port_or_known_default() == b.port_or_known_default()
}

/// Whether to follow a redirect with `status` from `from` (the request's
/// original URL) to `to`, hop number `hops`.
fn check_redirect(
    follow: FollowRedirects,
    status: u16,
    from: Option<&url::Url>,
    to: &url::Url,
    hops: usize,
) -> Result<(), RedirectRefused> {
    let refuse = |why| {
        Err(RedirectRefused {
            status,
            location: shown_location(to),
            why,
        })
    };
    if !matches!(status, 307 | 308) {
        return refuse(
            "a client follows this with a GET without the request's body, so its answer \
             would confirm nothing; set the URL to the final address",
        );
    }
    if hops > MAX_REDIRECTS {
        return refuse("too many redirects in a row");
    }
    let cross_origin = from.is_some_and(|f| !same_origin(f, to));
    match follow {
        FollowRedirects::None => {
            refuse("follow_redirects = \"none\"; set the URL to the final address, or allow it")
        }
        FollowRedirects::SameOrigin if cross_origin => refuse(
            "it leads to another origin; set the URL to the final address, or set \
             follow_redirects = \"any_origin\"",
        ),
        _ if from.is_some_and(|f| f.scheme() == "https") && to.scheme() != "https" => {
            refuse("it leads from https to plain http")
        }
        _ => Ok(()),
    }
}

/// Builds a client for the component at `path` (used in error messages),
/// following only same-origin 307/308 redirects.
pub fn client(tls: &TlsConfig, timeout: Duration, path: &str) -> anyhow::Result<reqwest::Client> {
    client_with(tls, timeout, path, ClientOptions::default())
}

/// [`client`] with a redirect policy and cookies as `options` say.
pub fn client_with(
    tls: &TlsConfig,
    timeout: Duration,
    path: &str,
    options: ClientOptions,
) -> anyhow::Result<reqwest::Client> {
    let follow = options.redirects;
    let policy = reqwest::redirect::Policy::custom(move |attempt| {
        let status = attempt.status().as_u16();
        let hops = attempt.previous().len();
        match check_redirect(
            follow,
            status,
            attempt.previous().first(),
            attempt.url(),
            hops,
        ) {
            Ok(()) => attempt.follow(),
            Err(refused) => attempt.error(refused),
        }
    });
    let mut builder = reqwest::Client::builder()
        .user_agent(concat!("auditrelay/", env!("CARGO_PKG_VERSION")))
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(50))
        .redirect(policy)
        .cookie_store(options.cookies);
    if let Some(ca) = &tls.ca_file {
        let pem = std::fs::read(ca).map_err(|e| {
            anyhow::anyhow!("{path}.tls.ca_file: cannot read {}: {e}", ca.display())
        })?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
            anyhow::anyhow!(
                "{path}.tls.ca_file: {} holds no usable PEM certificate: {e}",
                ca.display()
            )
        })?;
        builder = builder.tls_certs_merge(certs);
    }
    if let (Some(cert), Some(key)) = (&tls.cert_file, &tls.key_file) {
        let mut pem = std::fs::read(cert).map_err(|e| {
            anyhow::anyhow!("{path}.tls.cert_file: cannot read {}: {e}", cert.display())
        })?;
        crate::secret::warn_if_exposed(key);
        let key_pem = std::fs::read(key).map_err(|e| {
            anyhow::anyhow!("{path}.tls.key_file: cannot read {}: {e}", key.display())
        })?;
        pem.push(b'\n');
        pem.extend_from_slice(&key_pem);
        let identity = reqwest::Identity::from_pem(&pem).map_err(|e| {
            anyhow::anyhow!("{path}.tls: client certificate/key are not usable PEM: {e}")
        })?;
        builder = builder.identity(identity);
    }
    if tls.insecure_skip_verify {
        tracing::warn!(
            component = path,
            "TLS certificate verification is OFF (tls.insecure_skip_verify = true): \
             anyone on the network path can read and alter this traffic"
        );
        builder = builder.tls_danger_accept_invalid_certs(true);
    }
    builder
        .build()
        .map_err(|e| anyhow::anyhow!("{path}: cannot build HTTP client: {e}"))
}

/// The redirect behind `e`, when the client refused to follow one.
pub fn refused_redirect(e: &reqwest::Error) -> Option<&RedirectRefused> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(r) = err.downcast_ref::<RedirectRefused>() {
            return Some(r);
        }
        cur = err.source();
    }
    None
}

/// Why a sent request has no answer of the endpoint itself: a redirect
/// the client refused to follow, or a 3xx it returned unfollowed. Every
/// HTTP delivery checks this before reading a status as confirmation.
pub fn unfollowed_redirect(sent: &reqwest::Result<reqwest::Response>) -> Option<String> {
    match sent {
        Ok(r) => redirect_status(r.status().as_u16(), r.headers()),
        Err(e) => refused_redirect(e).map(ToString::to_string),
    }
}

/// Why an answer with a 3xx status (one the client did not follow, such as
/// a 307 whose body could not be sent again) is not the endpoint's answer.
pub fn redirect_status(status: u16, headers: &reqwest::header::HeaderMap) -> Option<String> {
    if !(300..400).contains(&status) {
        return None;
    }
    let location = headers
        .get(reqwest::header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .map(|l| match url::Url::parse(l) {
            Ok(u) => shown_location(&u),
            // Relative: the path alone, query left out.
            Err(_) => l.split(['?', '#']).next().unwrap_or("").to_string(),
        });
    Some(match location {
        Some(to) => format!(
            "the endpoint answered HTTP {status} redirecting to {to}, which was not followed; \
             set the URL to the final address"
        ),
        None => format!("the endpoint answered HTTP {status} (a redirect without a Location)"),
    })
}

/// A reqwest error with its causes, without the URL: URLs can carry
/// secrets (webhook paths, query tokens) and must not reach a log line.
/// TLS failures with a known cause get advice (see [`crate::tls`]).
pub fn describe_error(e: reqwest::Error) -> String {
    let e = e.without_url();
    if let Some(r) = refused_redirect(&e) {
        return r.to_string();
    }
    let mut out = e.to_string();
    let mut cur = std::error::Error::source(&e);
    while let Some(s) = cur {
        out.push_str(": ");
        out.push_str(&s.to_string());
        cur = s.source();
    }
    if let Some(advice) = crate::tls::advice(&e) {
        out.push_str(" (");
        out.push_str(&advice);
        out.push(')');
    }
    out
}

/// Why a request got no answer, for a log line and a retry: what failed
/// (timed out, connection failed) and [`describe_error`].
pub fn no_answer(e: reqwest::Error) -> String {
    let what = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "connection failed"
    } else {
        "request failed"
    };
    format!("{what}: {}", describe_error(e))
}

/// Parses `Retry-After` (delay seconds or an HTTP date) into a wait from now.
pub fn retry_after(headers: &reqwest::header::HeaderMap) -> Option<Duration> {
    let value = headers
        .get(reqwest::header::RETRY_AFTER)?
        .to_str()
        .ok()?
        .trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(std::time::SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};

    #[test]
    fn retry_after_seconds_and_dates() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h), Some(Duration::from_secs(7)));
        let later = std::time::SystemTime::now() + Duration::from_secs(120);
        h.insert(
            RETRY_AFTER,
            HeaderValue::from_str(&httpdate::fmt_http_date(later)).unwrap(),
        );
        let d = retry_after(&h).unwrap();
        assert!(
            d > Duration::from_secs(115) && d <= Duration::from_secs(120),
            "{d:?}"
        );
        h.insert(RETRY_AFTER, HeaderValue::from_static("soon"));
        assert_eq!(retry_after(&h), None);
    }

    fn url(s: &str) -> url::Url {
        url::Url::parse(s).unwrap()
    }

    #[test]
    fn only_307_and_308_are_followed_and_only_where_allowed() {
        let from = url("https://hooks.example/in");
        let same = url("https://hooks.example/moved/in");
        let other = url("https://elsewhere.example/in");
        let plain = url("http://hooks.example/in");
        use FollowRedirects::*;
        for status in [301, 302, 303, 300, 305] {
            let e = check_redirect(AnyOrigin, status, Some(&from), &same, 1).unwrap_err();
            assert!(e.to_string().contains("GET without"), "{e}");
        }
        for status in [307, 308] {
            assert!(check_redirect(SameOrigin, status, Some(&from), &same, 1).is_ok());
            assert!(check_redirect(AnyOrigin, status, Some(&from), &other, 1).is_ok());
            let e = check_redirect(SameOrigin, status, Some(&from), &other, 1).unwrap_err();
            assert!(
                e.to_string().contains("follow_redirects = \"any_origin\""),
                "{e}"
            );
            assert!(check_redirect(None, status, Some(&from), &same, 1).is_err());
            // A downgrade to plain http is another origin, and never allowed.
            assert!(check_redirect(SameOrigin, status, Some(&from), &plain, 1).is_err());
            assert!(check_redirect(AnyOrigin, status, Some(&from), &plain, 1).is_err());
            assert!(check_redirect(SameOrigin, status, Some(&from), &same, 6).is_err());
        }
    }

    #[test]
    fn a_refused_location_is_named_without_its_query_or_user_info() {
        let to = url(
            "https://user:pw@sso.example/login?return_to=https%3A%2F%2Fhooks.example%2FT0K3N#x",
        );
        let e = check_redirect(
            FollowRedirects::SameOrigin,
            302,
            Some(&url("https://hooks.example/T0K3N")),
            &to,
            1,
        )
        .unwrap_err();
        let text = e.to_string();
        assert!(
            text.contains("HTTP 302 redirecting to https://sso.example/login (query left out)"),
            "{text}"
        );
        assert!(!text.contains("T0K3N") && !text.contains("pw"), "{text}");

        let mut h = HeaderMap::new();
        h.insert(
            reqwest::header::LOCATION,
            HeaderValue::from_static("/login?next=/secret"),
        );
        let text = redirect_status(307, &h).unwrap();
        assert!(text.contains("HTTP 307 redirecting to /login,"), "{text}");
        assert_eq!(redirect_status(200, &h), Option::None);
    }
}
