//! The token clients' metrics, labelled by component key path
//! (`sources.zaita`), never by anything a token or secret is in.

crate::metrics::component_metrics! {
    pub(super) struct OAuth2Metrics in OAUTH2_METRICS {
        token_requests: counter(
            "auditrelay_oauth2_token_requests_total",
            "OAuth2 token requests by component and outcome (ok, transient_error, refused).",
            &["component", "outcome"],
        ),
        expires_in: gauge(
            "auditrelay_oauth2_token_expires_in_seconds",
            "Seconds until the component's current access token expires, as of its last use \
             (0: no token yet or the endpoint keeps failing; -1: the server gave no expires_in).",
            &["component"],
        ),
    }
}
