//! A `webhook_in` spool whose current segment holds only delivered events
//! is not full: pushes keep being accepted while the sink keeps up.

use crate::support;

use std::time::Duration;

use support::daemon::free_port;
use support::harness::Setup;
use support::webhook_receiver::{WebhookConfig, WebhookReceiver};

const BEARER: &str = "push-bearer-SECRET-77c1";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_events_in_the_current_segment_do_not_fill_the_spool() {
    let hook = WebhookReceiver::start(WebhookConfig {
        id_field: "id".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let port = free_port();
    // The smallest valid sizes: a spool of one segment plus one body.
    let setup = Setup::new(
        "push",
        &format!(
            "type = \"webhook_in\"\nlisten = \"127.0.0.1:{port}\"\npath = \"/events\"\n\
             token_file = \"{{dir}}/bearer\"\nsegment_bytes = 4096\nmax_body_bytes = 1024\n\
             max_spool_bytes = 5120\n"
        ),
        &hook,
    );
    setup.write("bearer", BEARER);
    let mut daemon = setup.spawn();
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/events");
    let pad = "p".repeat(850);
    for i in 0..20 {
        let body = format!("{{\"id\":\"e{i}\",\"pad\":\"{pad}\"}}");
        // A sender retries a 503 (Retry-After), as real ones do; bounded.
        let mut last = String::new();
        let mut accepted = false;
        for _ in 0..100 {
            let answer = client
                .post(&url)
                .bearer_auth(BEARER)
                .body(body.clone())
                .send()
                .await;
            match answer {
                Ok(r) if r.status().as_u16() == 200 => {
                    accepted = true;
                    break;
                }
                Ok(r) => last = format!("{} {}", r.status(), r.text().await.unwrap_or_default()),
                Err(e) => last = e.to_string(),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            accepted,
            "push {i} refused for good ({last}); the spool holds only delivered events:\n{}",
            setup.tail(20)
        );
        assert!(
            hook.wait_for_unique(i + 1, Duration::from_secs(20)).await,
            "e{i} not delivered:\n{}",
            setup.tail(20)
        );
    }
    let status = daemon.terminate(Duration::from_secs(20)).await;
    assert!(status.is_some_and(|s| s.success()), "{status:?}");
}
