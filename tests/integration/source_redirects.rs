//! A source whose API answers with a redirect to a login page (an SSO
//! proxy in front of it): the redirect is an error naming the Location,
//! never a page of events, and nothing is read from the login page.

use crate::support;

use std::time::Duration;

use support::harness::{problems, Setup};
use support::redirect::SsoProxy;
use support::webhook_receiver::{WebhookConfig, WebhookReceiver};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_pull_behind_a_login_redirect_reports_the_location_and_reads_nothing() {
    let proxy = SsoProxy::start(302).await.unwrap();
    let hook = WebhookReceiver::start(WebhookConfig::default())
        .await
        .unwrap();
    let setup = Setup::new(
        "zaita",
        &format!(
            r#"type = "http_pull"
url = "{}"
path = "/api/v1/audit/events"
token_file = "{{dir}}/token"
query = {{ start_time = "{{since}}", end_time = "{{until}}" }}
pagination = {{ mode = "none" }}
id_path = "event_id"
time_path = "timestamp"
poll_interval = "100ms"
timeout = "5s"
retry = {{ initial = "20ms", max = "100ms" }}
"#,
            proxy.url()
        ),
        &hook,
    );
    setup.write("token", "zaita-token");
    let mut daemon = setup.spawn();
    assert!(
        proxy.wait_for_requests(4, Duration::from_secs(60)).await,
        "the source stopped asking\n{}",
        setup.tail(20)
    );
    daemon.terminate(Duration::from_secs(20)).await;
    assert_eq!(proxy.login_page_hits(), 0, "the redirect was followed");
    let logged = problems(&setup, 20);
    assert!(
        logged.contains("HTTP 302 redirecting to")
            && logged.contains("/sso/login (query left out)"),
        "{logged}"
    );
    assert_eq!(hook.requests(), 0);
    assert!(!setup
        .state_dir()
        .join("checkpoints/zaita.checkpoint")
        .exists());
}
