//! Redirects as receivers really send them, for the fakes to turn on:
//!
//! - 301/302/303 from an SSO proxy or a trailing-slash rule, to a page that
//!   answers 200 with HTML to anything. A client that follows one turns its
//!   POST into a GET without a body, and the 200 of that page confirms
//!   nothing.
//! - 307/308 to where the endpoint lives now (the same path under
//!   [`MOVED_PREFIX`]), where the fake serves as usual: a client that keeps
//!   method and body gets there intact.
//! - any status to an absolute URL, e.g. another origin.

use super::http1::{Request, Response};

/// The page 301/302/303 lead to.
pub const LOGIN_PATH: &str = "/sso/login";
/// Where 307/308 lead to: the requested path under this prefix.
pub const MOVED_PREFIX: &str = "/moved";

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Redirect {
    /// This status (301, 302 or 303) to the login page.
    LoginPage(u16),
    /// This status (307 or 308) to the same path and query under `/moved`.
    Moved(u16),
    /// This status to this absolute URL.
    Url(u16, String),
}

impl Redirect {
    /// The answer to `req`, which asked for a path that redirects.
    pub fn answer(&self, req: &Request) -> Response {
        let (status, location) = match self {
            Redirect::LoginPage(status) => (
                *status,
                // SSO proxies put the original address in the query.
                format!("{LOGIN_PATH}?return_to={}", req.path().replace('/', "%2F")),
            ),
            Redirect::Moved(status) => (*status, format!("{MOVED_PREFIX}{}", req.target)),
            Redirect::Url(status, url) => (*status, url.clone()),
        };
        Response::new(
            status,
            "text/html",
            format!("<html><body>Moved to <a href=\"{location}\">here</a></body></html>"),
        )
        .with_header("Location", location)
    }
}

/// Whether `req` is for the login page.
pub fn is_login_page(req: &Request) -> bool {
    req.path() == LOGIN_PATH
}

/// The login page: 200 and HTML, whatever the method.
pub fn login_page() -> Response {
    Response::new(
        200,
        "text/html; charset=utf-8",
        "<!DOCTYPE html><html><head><title>Sign in</title></head>\
         <body><form method=\"post\"><input name=\"user\"></form></body></html>",
    )
}

/// `path` without [`MOVED_PREFIX`], and whether it had it.
pub fn strip_moved(path: &str) -> (&str, bool) {
    match path.strip_prefix(MOVED_PREFIX) {
        Some(rest) if rest.starts_with('/') => (rest, true),
        _ => (path, false),
    }
}

/// An SSO proxy in front of an API that is not there: every request is
/// redirected to its login page (answering 200 HTML), as when a client's
/// session or network route lands it in front of a web login.
pub struct SsoProxy {
    server: super::http1::Server,
    /// (requests, login page hits), bumped after every request.
    progress: tokio::sync::watch::Sender<(u64, u64)>,
}

impl SsoProxy {
    pub async fn start(status: u16) -> std::io::Result<SsoProxy> {
        use super::http1::{self, Conn};
        let listener = http1::bind_loopback(0)?;
        let progress = tokio::sync::watch::Sender::new((0, 0));
        let counts = progress.clone();
        let server = http1::Server::spawn(listener, move |stream| {
            let counts = counts.clone();
            async move {
                let mut conn = Conn::new(stream);
                for _ in 0..http1::MAX_REQUESTS_PER_CONNECTION {
                    let Ok(req) = conn.read_request(1024 * 1024).await else {
                        return;
                    };
                    let login = is_login_page(&req);
                    let resp = if login {
                        login_page()
                    } else {
                        Redirect::LoginPage(status).answer(&req)
                    };
                    counts.send_modify(|(n, hits)| {
                        *n += 1;
                        *hits += u64::from(login);
                    });
                    let close = !req.keep_alive;
                    if resp.write(&mut conn.stream, close).await.is_err() || close {
                        return;
                    }
                }
            }
        })?;
        Ok(SsoProxy { server, progress })
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    pub fn login_page_hits(&self) -> u64 {
        self.progress.borrow().1
    }

    /// Waits until `n` requests were answered.
    pub async fn wait_for_requests(&self, n: u64, timeout: std::time::Duration) -> bool {
        let mut rx = self.progress.subscribe();
        let done = matches!(
            tokio::time::timeout(timeout, rx.wait_for(|(requests, _)| *requests >= n)).await,
            Ok(Ok(_))
        );
        done
    }
}
