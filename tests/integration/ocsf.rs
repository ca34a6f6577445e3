//! `schema = "ocsf"` and redaction end to end: the real binary, each seed
//! source's fake (harsh options on: clamped pages, empty ids) and webhook
//! receivers. Every event a shaping sink delivers is checked against the
//! compiled OCSF schema (support::ocsf_schema); a raw sink beside it gets
//! the API's bytes unchanged.

use crate::support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::Utc;
use serde_json::Value;
use support::certifyclouds_fake::{CertifycloudsFake, CertifycloudsFakeConfig, Echo};
use support::harness::{metric_value, wait_for_all, Setup};
use support::ocsf_schema::assert_valid;
use support::pull_fake::{PullFake, PullFakeConfig, PullMode};
use support::quickztna_fake::{QuickztnaFake, QuickztnaFakeConfig};
use support::veza_fake::{TokenAtEnd, VezaFake, VezaFakeConfig};
use support::webhook_receiver::{WebhookConfig, WebhookReceiver};

async fn receiver(id_field: &str) -> WebhookReceiver {
    WebhookReceiver::start(WebhookConfig {
        id_field: id_field.into(),
        ..Default::default()
    })
    .await
    .unwrap()
}

/// Appends keys to the config's last table (the `hook` sink) and further
/// tables after it.
fn append(setup: &Setup, text: &str) {
    let mut config = std::fs::read_to_string(&setup.config).unwrap();
    config.push_str(text);
    std::fs::write(&setup.config, config).unwrap();
}

/// The OCSF classes (class_uid → count) of `events`.
fn classes(events: &[Value]) -> BTreeMap<u64, usize> {
    let mut out = BTreeMap::new();
    for e in events {
        *out.entry(e["class_uid"].as_u64().unwrap_or(u64::MAX))
            .or_default() += 1;
    }
    out
}

/// The original of an OCSF event kept in `raw_data`.
fn original(e: &Value) -> Value {
    serde_json::from_str(e["raw_data"].as_str().expect("raw_data kept")).expect("raw_data is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn veza_to_an_ocsf_sink_redacts_the_email_while_a_raw_sink_gets_the_bytes_unchanged() {
    let fake = VezaFake::start(VezaFakeConfig {
        api_token: "veza-ocsf-token".into(),
        initial_events: 300,
        max_page_size: 37,
        token_at_end: TokenAtEnd::Missing,
        empty_id_every: 9,
        ..Default::default()
    })
    .await
    .unwrap();
    let raw_hook = receiver("fake_ref").await;
    let ocsf_hook = receiver("metadata.uid").await;
    let setup = Setup::new(
        "veza",
        &format!(
            r#"type = "veza"
url = "{}"
token_file = "{{dir}}/veza_token"
page_size = 100
start_at = "-24h"
poll_interval = "50ms"
timeout = "2s"
retry = {{ initial = "20ms", max = "300ms" }}"#,
            fake.url()
        ),
        &raw_hook,
    );
    setup.write("veza_token", "veza-ocsf-token\n");
    append(
        &setup,
        &format!(
            r#"
[sinks.siem]
type = "webhook"
inputs = ["veza"]
url = "{}"
retry = {{ initial = "20ms", max = "300ms" }}
schema = "ocsf"
redact = ["identity.email"]
"#,
            ocsf_hook.url_for("/ocsf")
        ),
    );
    let mut daemon = setup.spawn();
    let expected = fake.all_ids();
    assert_eq!(expected.len(), 300);
    wait_for_all(&expected, &raw_hook, &setup).await;

    // The OCSF sink: every original (kept in raw_data) arrives; ids may be
    // empty, so they are told apart by the fake's reference inside.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let events = loop {
        let seen = ocsf_hook.requests();
        let events = ocsf_hook.events();
        let refs: BTreeSet<String> = events
            .iter()
            .map(|e| original(e)["fake_ref"].as_str().unwrap_or("").to_string())
            .collect();
        if expected.iter().all(|id| refs.contains(id)) {
            break events;
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        assert!(
            !left.is_zero() && ocsf_hook.wait_for_requests(seen + 1, left).await,
            "the OCSF sink got {} of {} events\n{}",
            refs.len(),
            expected.len(),
            setup.tail(30)
        );
    };
    assert!(
        daemon
            .terminate(Duration::from_secs(20))
            .await
            .is_some_and(|s| s.success()),
        "{}",
        setup.tail(20)
    );

    assert_valid(&events);
    for e in &events {
        let text = e.to_string();
        assert!(
            !text.contains('@'),
            "an email address left the relay: {text}"
        );
        let orig = original(e);
        assert_eq!(orig["identity"]["email"], "[REDACTED]");
        // The mapping saw the original: its ids and endpoint are there.
        assert_eq!(
            e["api"]["operation"]
                .as_str()
                .map(|o| orig["endpoint"].as_str().unwrap().ends_with(o)),
            Some(true)
        );
        match orig["request_id"].as_str() {
            Some("") | None => assert!(e["metadata"].get("uid").is_none()),
            Some(id) => assert_eq!(e["metadata"]["uid"], id),
        }
    }
    let by_class = classes(&events);
    for class in [3002, 3004, 6003] {
        assert!(
            by_class.contains_key(&class),
            "no class {class} in {by_class:?}"
        );
    }

    // Raw mode: byte for byte what the API served, each event once.
    let mut served: Vec<String> = fake.events().into_iter().map(|e| e.json).collect();
    let mut received = raw_hook.raw_events();
    served.sort();
    received.sort();
    assert_eq!(received.len(), served.len());
    assert!(
        received == served,
        "the raw sink's events differ from the API's bytes"
    );
}

/// The sink keys of the non-Veza sources: originals in `unmapped` (the
/// receiver tells events apart by their `fake_ref` there), names and
/// addresses redacted, a tag.
const OCSF_SINK: &str = r#"schema = "ocsf"
ocsf_raw = "unmapped"
redact = ["actor.name", "actor.email", "ip_address", "source_ip"]
add_fields = { tenant = "acme" }
"#;

/// Runs the daemon until `hook` has every expected event, stops it
/// cleanly, and returns what `hook` received.
async fn deliver_all(setup: &Setup, expected: &[String], hook: &WebhookReceiver) -> Vec<Value> {
    let mut daemon = setup.spawn();
    wait_for_all(expected, hook, setup).await;
    assert!(
        daemon
            .terminate(Duration::from_secs(20))
            .await
            .is_some_and(|s| s.success()),
        "{}",
        setup.tail(20)
    );
    hook.events()
}

fn assert_shaped(events: &[Value], class_list: &[u64]) {
    assert_valid(events);
    let by_class = classes(events);
    for class in class_list {
        assert!(
            by_class.contains_key(class),
            "no class {class} in {by_class:?}"
        );
    }
    for e in events {
        let text = e.to_string();
        assert!(!text.contains('@'), "an address left the relay: {text}");
        assert!(
            !text.contains("192.0.2.50") && !text.contains("203.0.113.42"),
            "{text}"
        );
        assert_eq!(e["metadata"]["tags"][0]["name"], "tenant");
        assert_eq!(e["metadata"]["tags"][0]["value"], "acme");
        assert!(
            e["unmapped"].is_object(),
            "original kept in unmapped: {text}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certifyclouds_entries_become_schema_valid_ocsf() {
    let fake = CertifycloudsFake::start(CertifycloudsFakeConfig {
        token: "cc-ocsf-token".into(),
        max_limit: 17,
        echo: Echo::Requested,
        empty_id_every: 7,
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = receiver("unmapped.fake_ref").await;
    let now = Utc::now();
    let expected = fake.add_spread(
        120,
        now - chrono::Duration::minutes(50),
        now - chrono::Duration::minutes(1),
    );
    let setup = Setup::new(
        "cc",
        &format!(
            r#"type = "certifyclouds"
url = "{}"
token_file = "{{dir}}/cc_token"
poll_interval = "200ms"
page_size = 40
start_at = "-1h"
retry = {{ initial = "20ms", max = "200ms" }}"#,
            fake.url()
        ),
        &hook,
    );
    setup.write("cc_token", "cc-ocsf-token");
    append(&setup, OCSF_SINK);
    let events = deliver_all(&setup, &expected, &hook).await;
    assert_shaped(&events, &[3002, 3004]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quickztna_entries_become_schema_valid_ocsf() {
    let fake = QuickztnaFake::start(QuickztnaFakeConfig {
        admin_token: "qz-ocsf-admin".into(),
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = receiver("unmapped.id").await;
    let now = Utc::now();
    let expected = fake.add_spread(
        150,
        now - chrono::Duration::hours(5),
        now - chrono::Duration::minutes(1),
    );
    let setup = Setup::new(
        "qz",
        &format!(
            r#"type = "quickztna"
url = "{}"
org_id = "{}"
token_file = "{{dir}}/qz_token"
poll_interval = "200ms"
start_at = "-6h"
retry = {{ initial = "20ms", max = "200ms" }}"#,
            fake.url(),
            fake.org_id()
        ),
        &hook,
    );
    setup.write("qz_token", "qz-ocsf-admin");
    append(&setup, OCSF_SINK);
    let events = deliver_all(&setup, &expected, &hook).await;
    assert_shaped(&events, &[3002, 3004]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zaita_style_http_pull_events_become_schema_valid_ocsf() {
    let fake = PullFake::start(PullFakeConfig {
        token: "zaita-ocsf-token".into(),
        mode: PullMode::TokenBody,
        max_page_size: 13,
        empty_id_every: 6,
        token_on_empty: true,
        ..Default::default()
    })
    .await
    .unwrap();
    let hook = receiver("unmapped.fake_ref").await;
    let now = Utc::now();
    let expected = fake.add_spread(
        120,
        now - chrono::Duration::minutes(50),
        now - chrono::Duration::minutes(1),
    );
    let setup = Setup::new(
        "zaita",
        &format!(
            r#"type = "http_pull"
url = "{}"
path = "/api/v1/audit/events"
token_file = "{{dir}}/token"
query = {{ start_time = "{{since}}", end_time = "{{until}}", page_size = "{{page_size}}", page_token = "{{cursor}}" }}
pagination = {{ mode = "token", token_path = "next_page_token" }}
id_path = "event_id"
time_path = "timestamp"
type_path = "action"
start_at = "-1h"
poll_interval = "200ms"
retry = {{ initial = "20ms", max = "200ms" }}"#,
            fake.url()
        ),
        &hook,
    );
    setup.write("token", "zaita-ocsf-token");
    append(&setup, OCSF_SINK);
    let events = deliver_all(&setup, &expected, &hook).await;
    assert_shaped(&events, &[3002, 3004]);
    assert!(events
        .iter()
        .all(|e| e["metadata"]["tenant_uid"] == "tnt_7g8h9i0j"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushed_violations_become_detection_findings_and_the_rest_stays_valid() {
    let hook = receiver("unmapped.id").await;
    let port = support::daemon::free_port();
    let setup = Setup::new(
        "push",
        &format!(
            r#"type = "webhook_in"
listen = "127.0.0.1:{port}"
path = "/events"
token_file = "{{dir}}/bearer"
batch_size = 50"#
        ),
        &hook,
    );
    setup.write("bearer", "push-ocsf-bearer");
    append(&setup, OCSF_SINK);
    let mut daemon = setup.spawn();
    let body = serde_json::json!([
        {"id": "p1", "type": "policy.violation", "severity": "high", "rule": "no-public-buckets",
         "description": "bucket x is public", "user_id": "u-2", "ip_address": "192.0.2.50",
         "timestamp": "2026-06-01T10:00:00Z"},
        {"id": "p2", "alert": {"title": "Impossible travel", "severity": "critical"},
         "timestamp": "2026-06-01T10:00:01Z"},
        {"id": "p3", "event_type": "auth.login.failed", "actor": {"type": "user", "id": "user-1", "name": "x@company.com"},
         "severity": "warning", "ip_address": "192.0.2.50", "timestamp": "2026-06-01T10:00:02Z"},
        {"id": "p4", "action": "machine.renamed", "resource_type": "machine", "resource_id": "m-1",
         "user_id": null, "created_at": "2026-06-01T10:00:03Z", "details": "{}"},
        {"id": "p5", "something": ["else"], "timestamp": "2026-06-01T10:00:04Z"}
    ]);
    let client = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/events");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    // The listener comes up with the daemon: retry the connection, bounded.
    loop {
        let sent = client
            .post(&url)
            .bearer_auth("push-ocsf-bearer")
            .header("content-type", "application/json")
            .body(body.to_string())
            .send()
            .await;
        match sent {
            Ok(r) if r.status().is_success() => break,
            Ok(r) => panic!("push refused: {}", r.status()),
            Err(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await
            }
            Err(e) => panic!("listener never came up: {e}\n{}", setup.tail(20)),
        }
    }
    let ids: Vec<String> = (1..=5).map(|i| format!("p{i}")).collect();
    wait_for_all(&ids, &hook, &setup).await;
    let metrics = setup.metrics().await;
    let series = |class: &str| {
        metric_value(
            &metrics,
            &format!(
                "auditrelay_ocsf_events_total{{class=\"{class}\",sink=\"hook\",source=\"push\"}}"
            ),
        )
    };
    assert_eq!(series("detection_finding"), 2.0, "{metrics}");
    assert_eq!(series("base_event"), 1.0, "{metrics}");
    assert!(
        daemon
            .terminate(Duration::from_secs(20))
            .await
            .is_some_and(|s| s.success()),
        "{}",
        setup.tail(20)
    );
    let events = hook.events();
    let class_of = |id: &str| {
        events
            .iter()
            .find(|e| e["unmapped"]["id"] == id)
            .map(|e| e["class_uid"].as_u64().unwrap())
    };
    assert_eq!(class_of("p1"), Some(2004));
    assert_eq!(class_of("p2"), Some(2004));
    assert_eq!(class_of("p3"), Some(3002));
    assert_eq!(class_of("p4"), Some(3004));
    assert_eq!(class_of("p5"), Some(0));
    assert_shaped(&events, &[0, 2004, 3002, 3004]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn splunk_hec_sourcetype_defaults_to_the_ocsf_class() {
    use support::daemon::{free_port, Daemon};
    use support::hec_fake::{HecFake, HecFakeConfig, HecFaults};
    let veza = VezaFake::start(VezaFakeConfig {
        api_token: "veza-hec-ocsf".into(),
        initial_events: 120,
        max_page_size: 37,
        token_at_end: TokenAtEnd::Missing,
        empty_id_every: 9,
        ..Default::default()
    })
    .await
    .unwrap();
    let hec = HecFake::start(HecFakeConfig {
        token: "hec-ocsf-token".into(),
        id_field: "unmapped.fake_ref".into(),
        ack: true,
        faults: HecFaults {
            ack_delay: Duration::from_millis(50),
            busy: 0.1,
            ..Default::default()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let p = |name: &str| dir.path().join(name);
    std::fs::write(p("veza_token"), "veza-hec-ocsf").unwrap();
    std::fs::write(p("hec_token"), "hec-ocsf-token\n").unwrap();
    let config = p("auditrelay.toml");
    std::fs::write(
        &config,
        format!(
            r#"
state_dir = "{state}"
log_format = "json"
[server]
listen = "127.0.0.1:{port}"
[sources.veza]
type = "veza"
url = "{veza}"
token_file = "{dir}/veza_token"
page_size = 100
start_at = "-24h"
poll_interval = "50ms"
retry = {{ initial = "20ms", max = "300ms" }}
[sinks.splunk]
type = "splunk_hec"
inputs = ["veza"]
endpoint = "{hec}"
token_file = "{dir}/hec_token"
indexer_ack = true
ack_poll_interval = "50ms"
batch = {{ max_events = 25 }}
retry = {{ initial = "20ms", max = "300ms" }}
schema = "ocsf"
ocsf_raw = "unmapped"
redact = ["identity.email"]
"#,
            state = p("state").display(),
            port = free_port(),
            dir = dir.path().display(),
            veza = veza.url(),
            hec = hec.url(),
        ),
    )
    .unwrap();
    let log = p("daemon.log");
    let mut daemon = Daemon::spawn(&config, &log);
    let all = veza.all_ids();
    let arrived = hec
        .wait_for_unique(all.len(), Duration::from_secs(60))
        .await;
    let tail = support::harness::tail(&log, 30);
    assert!(
        daemon
            .terminate(Duration::from_secs(20))
            .await
            .is_some_and(|s| s.success()),
        "{tail}"
    );
    assert!(
        arrived,
        "{} of {} events indexed\n{tail}",
        hec.unique_count(),
        all.len()
    );
    let indexed = hec.indexed();
    let events: Vec<Value> = indexed
        .iter()
        .map(|i| serde_json::from_str(&i.event_raw).expect("OCSF JSON"))
        .collect();
    assert_valid(&events);
    for (i, e) in indexed.iter().zip(&events) {
        let class = e["class_name"]
            .as_str()
            .unwrap()
            .to_lowercase()
            .replace(' ', "_");
        assert_eq!(
            i.envelope["sourcetype"],
            format!("ocsf:{class}"),
            "{}",
            i.envelope
        );
        assert!(!i.event_raw.contains('@'), "{}", i.event_raw);
    }
    assert!(classes(&events).len() >= 3, "{:?}", classes(&events));
}
