//! The syslog sink against a real rsyslogd on loopback: every transport
//! (UDP, TCP, TLS, mutual TLS, RELP), rsyslog's own RFC 5424 parser as the
//! judge of the messages, hostile event contents, size limits, CEF/LEEF
//! golden files, certificate errors and a receiver restart mid-stream.

use crate::support;

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use auditrelay::event::Event;
use auditrelay::health::Health;
use auditrelay::sink::{DeadLetters, Sink, SinkContext};
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use serde_json::{json, Value};
use support::rsyslog::{Record, Rsyslog};

const KIND: &str = "/api_protos.v1.UserService/DeleteUser";

fn time(i: usize) -> DateTime<Utc> {
    Utc.timestamp_opt(1_767_225_600 + i as i64, 123_456_789)
        .unwrap()
}

/// A Veza-shaped event; every fifth one failed. Odd ones are pretty-printed
/// so their raw JSON holds newlines between tokens.
fn veza_event(prefix: &str, i: usize) -> Event {
    let failed = i.is_multiple_of(5);
    let id = format!("{prefix}-{i:05}");
    let v = json!({
        "identity": {"user_id": "5f2d7e91", "email": format!("user{i}@example.com")},
        "status": {
            "grpc_code": if failed { "PERMISSION_DENIED" } else { "OK" },
            "http_status": if failed { 403 } else { 200 },
            "error_reason": if failed { "user lacks role \"admin\"\nrequested by policy [p-1]" } else { "" }
        },
        "client": {"ip": format!("10.0.{}.{}", i / 250, i % 250 + 1), "user_agent": "curl/8.4.0"},
        "endpoint": KIND,
        "method": "DELETE",
        "request_id": id,
        "ended_at": time(i).to_rfc3339_opts(SecondsFormat::Nanos, true),
    });
    let raw = if i % 2 == 1 {
        serde_json::to_string_pretty(&v).unwrap()
    } else {
        v.to_string()
    };
    Event {
        raw: Bytes::from(raw),
        id: Some(id.into()),
        time: Some(time(i)),
        kind: Some(KIND.into()),
    }
}

/// Events whose contents try to break frames and SD elements.
fn hostile_events(prefix: &str) -> Vec<Event> {
    let big: String = "line\n] \"q\" \\ ünï☃ 123 <134>1 fake\n".repeat(100 * 1024 / 32);
    let texts = [
        "new\nline and\r\nCRLF".to_string(),
        "close ] bracket \" quote \\ backslash \\\" \\] ]]".to_string(),
        "unicode: naïve ☃ 李雷 🔒 \u{2028}".to_string(),
        "57 <134>1 2026-01-01T00:00:00Z h a - - - looks like a frame\n".to_string(),
        big,
    ];
    texts
        .iter()
        .enumerate()
        .map(|(i, text)| {
            let id = format!("{prefix}-\"h]\\{i}ü");
            let v = json!({"request_id": id, "note": text, "nested": {"k]": [text.len()]}});
            Event {
                raw: Bytes::from(serde_json::to_string_pretty(&v).unwrap()),
                id: Some(id.into()),
                time: Some(time(i)),
                kind: Some(format!("/svc/Do\"]\\{i}").into()),
            }
        })
        .collect()
}

/// A sink named `sys`. Each one gets a state directory of its own: sinks
/// built one after another in one state directory are restarts of one sink,
/// and the later one would resend the earlier one's TCP/TLS replay window.
fn build(dir: &Path, sink_toml: &str) -> (Arc<dyn Sink>, Health, DeadLetters) {
    let instance = rand::random::<u32>();
    let cfg_path = dir.join(format!("c-{instance}.toml"));
    std::fs::write(
        &cfg_path,
        format!(
            "state_dir = \"{}\"\n[sources.veza]\ntype = \"demo\"\n[sinks.sys]\ntype = \"syslog\"\ninputs = [\"veza\"]\nhostname = \"relay-1\"\nretry = {{ initial = \"20ms\", max = \"200ms\" }}\ntimeout = \"5s\"\n{sink_toml}\n",
            dir.display()
        ),
    )
    .unwrap();
    let cfg = auditrelay::config_file::load(&cfg_path).unwrap_or_else(|e| panic!("{e}"));
    let health = Health::default();
    let dl = DeadLetters::new(dir, "sys");
    let sink = cfg.sinks["sys"]
        .build(SinkContext {
            name: "sys".into(),
            state_dir: dir.join(format!("state-{instance}")),
            health: health.clone(),
            dead_letters: dl.clone(),
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    (sink.into(), health, dl)
}

fn ids(events: &[Event]) -> HashSet<String> {
    events
        .iter()
        .map(|e| e.id.as_deref().unwrap().to_string())
        .collect()
}

/// Records by their SD id; panics on a record without one.
fn by_id(records: &[Record]) -> HashMap<String, Vec<&Record>> {
    let mut map: HashMap<String, Vec<&Record>> = HashMap::new();
    for r in records {
        let id = r
            .sd_param("id")
            .unwrap_or_else(|| panic!("record without id: {r:?}"));
        map.entry(id).or_default().push(r);
    }
    map
}

/// What the JSON body of an event must look like: the raw event with its
/// raw newlines (whitespace) as spaces.
fn compact(e: &Event) -> String {
    String::from_utf8(e.raw.to_vec())
        .unwrap()
        .replace(['\n', '\r'], " ")
}

/// Every event arrived exactly once, parsed as RFC 5424, with its fields.
fn assert_delivered(input: &str, records: &[Record], events: &[Event]) {
    assert_eq!(
        records.len(),
        events.len(),
        "{input}: {} records for {} events (split or merged frames?)",
        records.len(),
        events.len()
    );
    let map = by_id(records);
    for e in events {
        let id = e.id.as_deref().unwrap();
        let got = map
            .get(id)
            .unwrap_or_else(|| panic!("{input}: {id} never arrived"));
        assert_eq!(got.len(), 1, "{input}: {id} arrived {} times", got.len());
        let r = got[0];
        assert_eq!(
            r.protocol, "1",
            "{input}: rsyslog did not parse RFC 5424: {r:?}"
        );
        assert_eq!(r.hostname, "relay-1");
        assert_eq!(r.app, "auditrelay");
        assert_eq!(r.procid, std::process::id().to_string());
        assert_eq!(
            r.timestamp,
            e.time.unwrap().to_rfc3339_opts(SecondsFormat::Micros, true)
        );
        assert_eq!(r.sd_param("source").as_deref(), Some("veza"));
        assert_eq!(r.sd_param("type").as_deref(), e.kind.as_deref());
        assert_eq!(r.msg, compact(e), "{input}: body of {id} changed");
        let sent: Value = serde_json::from_slice(&e.raw).unwrap();
        let got: Value = serde_json::from_str(&r.msg).unwrap();
        assert_eq!(got, sent);
    }
}

#[tokio::test]
async fn every_id_arrives_over_each_transport_as_valid_rfc5424() {
    let dir = tempfile::tempdir().unwrap();
    let rs = Rsyslog::start(dir.path()).await;
    let pki = &rs.pki;
    let cases = [
        ("udp", format!("address = \"udp://127.0.0.1:{}\"", rs.udp_port)),
        ("tcp", format!("address = \"tcp://127.0.0.1:{}\"", rs.tcp_port)),
        (
            "tls",
            format!(
                "address = \"tls://localhost:{}\"\ntls = {{ ca_file = \"{}\" }}",
                rs.tls_port,
                pki.ca.display()
            ),
        ),
        (
            "mtls",
            format!(
                "address = \"tls://127.0.0.1:{}\"\ntls = {{ ca_file = \"{}\", cert_file = \"{}\", key_file = \"{}\" }}",
                rs.mtls_port,
                pki.ca.display(),
                pki.client_cert.display(),
                pki.client_key.display()
            ),
        ),
        ("relp", format!("address = \"relp://127.0.0.1:{}\"\nrelp_window = 16", rs.relp_port)),
    ];
    for (input, toml) in cases {
        let (sink, health, dl) = build(dir.path(), &toml);
        let events: Vec<Event> = (0..200).map(|i| veza_event(input, i)).collect();
        for batch in events.chunks(50) {
            tokio::time::timeout(Duration::from_secs(30), sink.deliver("veza", batch))
                .await
                .unwrap_or_else(|_| panic!("{input}: delivery hung: {:?}", health.snapshot()))
                .unwrap();
        }
        let records = rs
            .wait_for_ids(input, &ids(&events), Duration::from_secs(20))
            .await;
        assert_delivered(input, &records, &events);
        for (r, e) in records.iter().zip(&events) {
            assert_eq!(r.msgid, "DeleteUser");
            assert_eq!(r.facility, 16, "local0");
            let failed = e.raw.windows(17).any(|w| w == b"PERMISSION_DENIED");
            assert_eq!(r.severity, if failed { 4 } else { 6 }, "{r:?}");
        }
        assert!(health.snapshot().0);
        assert!(!dl.path().exists());
    }
}

#[tokio::test]
async fn rfc3164_and_lf_framing_are_parsed_by_rsyslog() {
    let dir = tempfile::tempdir().unwrap();
    let rs = Rsyslog::start(dir.path()).await;
    let (sink, _, _) = build(
        dir.path(),
        &format!(
            "address = \"tcp://127.0.0.1:{}\"\nformat = \"rfc3164\"\nframing = \"lf\"\nfacility = \"auth\"\napp_name = \"audit-relay\"",
            rs.tcp_port
        ),
    );
    let events: Vec<Event> = (0..30).map(|i| veza_event("bsd", i)).collect();
    sink.deliver("veza", &events).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let records = loop {
        let r = rs.records("tcp");
        if r.len() >= events.len() || std::time::Instant::now() > deadline {
            break r;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(records.len(), events.len());
    for (r, e) in records.iter().zip(&events) {
        assert_eq!(r.protocol, "0");
        assert_eq!(r.app, "audit-relay");
        assert_eq!(r.hostname, "relay-1");
        assert_eq!(r.facility, 4);
        assert_eq!(r.procid, std::process::id().to_string());
        // rsyslog keeps the space after "TAG:" in msg for RFC 3164.
        assert_eq!(r.msg.trim_start(), compact(e));
    }
}

#[tokio::test]
async fn hostile_contents_never_break_or_merge_frames() {
    let dir = tempfile::tempdir().unwrap();
    let rs = Rsyslog::start(dir.path()).await;
    let big = "max_message_size = 200000";
    let cases = [
        (
            "tcp",
            format!("address = \"tcp://127.0.0.1:{}\"\n{big}", rs.tcp_port),
            "octet",
        ),
        (
            "tcp",
            format!(
                "address = \"tcp://127.0.0.1:{}\"\nframing = \"lf\"\n{big}",
                rs.tcp_port
            ),
            "lf",
        ),
        (
            "tls",
            format!(
                "address = \"tls://localhost:{}\"\ntls = {{ ca_file = \"{}\" }}\n{big}",
                rs.tls_port,
                rs.pki.ca.display()
            ),
            "tls",
        ),
        (
            "relp",
            format!("address = \"relp://127.0.0.1:{}\"\n{big}", rs.relp_port),
            "relp",
        ),
    ];
    for (input, toml, label) in cases {
        let (sink, _, _) = build(dir.path(), &toml);
        let before = rs.records(input).len();
        let mut events = hostile_events(label);
        events.extend((0..20).map(|i| veza_event(label, i)));
        sink.deliver("veza", &events).await.unwrap();
        let records = rs
            .wait_for_ids(input, &ids(&events), Duration::from_secs(20))
            .await;
        let records = &records[before..];
        assert_delivered(label, records, &events);
        if label == "lf" {
            // Framed by newlines: each frame is exactly one raw message.
            assert!(records.iter().all(|r| !r.raw.contains('\n')));
        }
    }
}

#[tokio::test]
async fn oversized_messages_arrive_as_valid_frames_with_json_bodies() {
    let dir = tempfile::tempdir().unwrap();
    let rs = Rsyslog::start(dir.path()).await;
    for (input, address) in [
        ("tcp", format!("tcp://127.0.0.1:{}", rs.tcp_port)),
        ("udp", format!("udp://127.0.0.1:{}", rs.udp_port)),
    ] {
        let (sink, _, _) = build(dir.path(), &format!("address = \"{address}\""));
        let mut events = hostile_events(input);
        events.extend((0..10).map(|i| veza_event(input, i)));
        sink.deliver("veza", &events).await.unwrap();
        let records = rs
            .wait_for_ids(input, &ids(&events), Duration::from_secs(20))
            .await;
        assert_eq!(records.len(), events.len(), "{input}");
        let limit = if input == "udp" { 2048 } else { 8192 };
        let map = by_id(&records);
        for e in &events {
            let r = map[e.id.as_deref().unwrap()][0];
            assert_eq!(r.protocol, "1");
            assert!(r.raw.len() <= limit, "{input}: {} > {limit}", r.raw.len());
            let body = compact(e);
            match r.sd_param("truncated") {
                Some(n) => {
                    assert_eq!(n.parse::<usize>().unwrap(), body.len());
                    assert!(r.msg.len() < body.len());
                    // What the SIEM's JSON extraction sees: the event, with
                    // only its long strings cut and marked.
                    let got: Value = serde_json::from_str(&r.msg).unwrap_or_else(|err| {
                        panic!("{input}: the shortened body is not JSON ({err}): {}", r.msg)
                    });
                    let sent: Value = serde_json::from_slice(&e.raw).unwrap();
                    assert_eq!(got["request_id"], sent["request_id"]);
                    assert_eq!(got["nested"], sent["nested"], "short values stay whole");
                    let note = got["note"].as_str().unwrap();
                    let at = note.rfind("…[truncated ").expect("marker");
                    assert!(sent["note"].as_str().unwrap().starts_with(&note[..at]));
                    // One long value: the cap is bisected to within a
                    // character or escape (at most 12 bytes) of the limit.
                    assert!(r.raw.len() > limit - 16, "cut far below the limit");
                }
                None => assert_eq!(r.msg, body),
            }
        }
        let cut = records
            .iter()
            .filter(|r| r.sd_param("truncated").is_some())
            .count();
        assert!(cut >= 1, "{input}: the 100 KiB event was not cut");
    }
    let text = auditrelay::metrics::metrics().render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("auditrelay_syslog_truncated_total{sink=\"sys\"}")),
        "{text}"
    );
    assert!(
        text.lines().any(|l| l.starts_with(
            "auditrelay_sink_events_truncated_total{how=\"values\",sink=\"sys\",source=\"veza\"} "
        ) && !l.ends_with(" 0")),
        "{text}"
    );
}

/// Fixed events for the golden files: a success, a failure with a hostile
/// reason, and one with a host name instead of an IP and missing fields.
fn golden_events() -> Vec<Event> {
    let raws = [
        json!({"identity": {"email": "cookie@cookie.ai", "user_id": "aeaa34cf"},
               "status": {"grpc_code": "OK", "http_status": 200},
               "client": {"ip": "10.1.2.3", "user_agent": "Mozilla/5.0 (X11; Linux x86_64)"},
               "endpoint": "/api_protos.v1.APIKeyService/CreateAPIKey", "method": "POST",
               "url": "/api/preview/keys?x=1&y=2", "request_id": "req-1"}),
        json!({"identity": {"email": "jürgen.o'neil@example.de", "user_id": "5f2d"},
               "status": {"grpc_code": "PERMISSION_DENIED", "http_status": 403,
                          "error_reason": "user lacks role \"admin\"\nrequested by policy [p=1|2] \\ ^"},
               "client": {"ip": "2001:db8::7", "user_agent": "curl/8.4.0"},
               "endpoint": "/api_protos.v1.UserService/DeleteUser", "method": "DELETE",
               "request_id": "req-2", "identity_extra": "x"}),
        json!({"id": 42, "timestamp": 1767225600, "intent": "login", "result": "denied",
               "actor": "svc|bot=1", "source_ip": "host.example"}),
    ];
    let kinds = [
        Some("/api_protos.v1.APIKeyService/CreateAPIKey"),
        Some("/api_protos.v1.UserService/DeleteUser"),
        Some("login"),
    ];
    raws.iter()
        .zip(kinds)
        .enumerate()
        .map(|(i, (v, kind))| Event {
            raw: Bytes::from(v.to_string()),
            id: Some(format!("req-{}", i + 1).into()),
            time: Some(time(i)),
            kind: kind.map(Into::into),
        })
        .collect()
}

#[tokio::test]
async fn cef_and_leef_bodies_match_golden_files() {
    let dir = tempfile::tempdir().unwrap();
    let rs = Rsyslog::start(dir.path()).await;
    let golden_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    for (body, extra) in [
        ("cef", "vendor = \"Veza\"\nproduct = \"Audit Log\"\nproduct_version = \"1.0\"\nextra_fields = { cs3 = \"identity.user_id\" }"),
        ("leef", "vendor = \"Veza\"\nproduct = \"Audit Log\"\nproduct_version = \"1.0\"\nextra_fields = { sessionUser = \"identity.user_id\" }"),
        ("leef_tab", "body = \"leef\"\nleef_delimiter = \"tab\"\nvendor = \"Veza\"\nproduct = \"Audit\"\nproduct_version = \"1.0\""),
    ] {
        let body_key = if body == "leef_tab" {
            String::new()
        } else {
            format!("body = \"{body}\"\n")
        };
        let (sink, _, _) = build(
            dir.path(),
            &format!("address = \"tcp://127.0.0.1:{}\"\n{body_key}{extra}", rs.tcp_port),
        );
        let before = rs.records("tcp").len();
        let events = golden_events();
        sink.deliver("veza", &events).await.unwrap();
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        let records = loop {
            let r = rs.records("tcp");
            if r.len() >= before + events.len() || std::time::Instant::now() > deadline {
                break r;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        let got: Vec<&str> = records[before..].iter().map(|r| r.msg.as_str()).collect();
        assert!(records[before..].iter().all(|r| r.protocol == "1"));
        let text = got.join("\n") + "\n";
        let file = golden_dir.join(format!("{body}.txt"));
        if std::env::var_os("UPDATE_GOLDEN").is_some() {
            std::fs::create_dir_all(&golden_dir).unwrap();
            std::fs::write(&file, &text).unwrap();
        }
        let want = std::fs::read_to_string(&file)
            .unwrap_or_else(|e| panic!("{}: {e} (run with UPDATE_GOLDEN=1 to create)", file.display()));
        assert_eq!(text, want, "{body} output differs from {}", file.display());
    }
}

#[tokio::test]
async fn tls_with_the_wrong_ca_fails_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let rs = Rsyslog::start(dir.path()).await;
    let (sink, health, _) = build(
        dir.path(),
        &format!(
            "address = \"tls://localhost:{}\"\ntls = {{ ca_file = \"{}\" }}",
            rs.tls_port,
            rs.pki.other_ca.display()
        ),
    );
    let events: Vec<Event> = (0..3).map(|i| veza_event("wrongca", i)).collect();
    let task = {
        let sink = sink.clone();
        tokio::spawn(async move { sink.deliver("veza", &events).await })
    };
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let reason = loop {
        let (ready, map) = health.snapshot();
        if !ready {
            break map["sink.sys"].reason.clone();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reported the TLS failure"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        !task.is_finished(),
        "delivery must keep retrying, never give up"
    );
    task.abort();
    assert!(reason.contains("TLS handshake"), "{reason}");
    assert!(reason.contains("UnknownIssuer"), "{reason}");
    assert!(reason.contains("tls.ca_file"), "{reason}");
    assert!(rs.records("tls").is_empty());
    // The same server with verification switched off (loudly) is reachable.
    let (sink, _, _) = build(
        dir.path(),
        &format!(
            "address = \"tls://127.0.0.1:{}\"\ntls = {{ insecure_skip_verify = true }}",
            rs.tls_port
        ),
    );
    let events: Vec<Event> = (0..3).map(|i| veza_event("insecure", i)).collect();
    tokio::time::timeout(Duration::from_secs(20), sink.deliver("veza", &events))
        .await
        .unwrap()
        .unwrap();
    let records = rs
        .wait_for_ids("tls", &ids(&events), Duration::from_secs(20))
        .await;
    assert_delivered("insecure", &records, &events);
}

#[tokio::test]
async fn a_receiver_restart_mid_stream_loses_nothing_over_tcp_tls_and_relp() {
    let dir = tempfile::tempdir().unwrap();
    let mut rs = Rsyslog::start(dir.path()).await;
    let cases = [
        (
            "tcp",
            format!("address = \"tcp://127.0.0.1:{}\"", rs.tcp_port),
        ),
        (
            "tls",
            format!(
                "address = \"tls://localhost:{}\"\ntls = {{ ca_file = \"{}\" }}",
                rs.tls_port,
                rs.pki.ca.display()
            ),
        ),
        (
            "relp",
            format!("address = \"relp://127.0.0.1:{}\"", rs.relp_port),
        ),
    ];
    const BATCHES: usize = 60;
    const PER_BATCH: usize = 50;
    let mut tasks = Vec::new();
    let mut all = Vec::new();
    for (input, toml) in cases {
        let (sink, _, _) = build(dir.path(), &toml);
        let events: Vec<Event> = (0..BATCHES * PER_BATCH)
            .map(|i| veza_event(input, i))
            .collect();
        all.push((input, ids(&events)));
        tasks.push(tokio::spawn(async move {
            for batch in events.chunks(PER_BATCH) {
                sink.deliver("veza", batch).await.unwrap();
                // Pacing, so the restart falls in the middle of the stream.
                tokio::time::sleep(Duration::from_millis(15)).await;
            }
        }));
    }
    // Restart once every stream is well under way.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while !all
        .iter()
        .all(|(input, _)| rs.records(input).len() >= BATCHES * PER_BATCH / 4)
    {
        assert!(
            std::time::Instant::now() < deadline,
            "streams never got going"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    rs.restart().await;
    for t in tasks {
        tokio::time::timeout(Duration::from_secs(60), t)
            .await
            .expect("deliveries did not finish after the restart")
            .unwrap();
    }
    for (input, want) in &all {
        let records = rs.wait_for_ids(input, want, Duration::from_secs(20)).await;
        let got: HashSet<String> = records.iter().filter_map(|r| r.sd_param("id")).collect();
        let missing: Vec<&String> = want.difference(&got).collect();
        assert!(
            missing.is_empty(),
            "{input}: {} of {} events lost across the restart, e.g. {:?}",
            missing.len(),
            want.len(),
            &missing[..missing.len().min(5)]
        );
        assert!(records.iter().all(|r| r.protocol == "1"));
        eprintln!(
            "{input}: {} events, {} records ({} duplicates after the restart)",
            want.len(),
            records.len(),
            records.len() - want.len()
        );
    }
    let text = auditrelay::metrics::metrics().render();
    assert!(
        text.lines()
            .any(|l| l.starts_with("auditrelay_syslog_reconnects_total{sink=\"sys\"}")),
        "no reconnect counted"
    );
}

#[test]
fn config_problems_name_their_keys() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        r#"
[sources.s]
type = "demo"
[sinks.x]
type = "syslog"
inputs = ["s"]
address = "udp://h"
framing = "lf"
sd_id = "a b"
leef_delimiter = "="
extra_fields = { "a b" = "x..y" }
max_message_size = 100
fields = { actor = "a..b" }
tls = { insecure_skip_verify = true }
[sinks.y]
type = "syslog"
inputs = ["s"]
address = "tcp://h"
body = "cef"
extra_fields = { suser = "x" }
"#,
    )
    .unwrap();
    let err = auditrelay::config_file::load(&path).unwrap_err();
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "sinks.x.framing",
        "sinks.x.sd_id",
        "sinks.x.leef_delimiter",
        "sinks.x.extra_fields.a b",
        "sinks.x.max_message_size",
        "sinks.x.fields.actor[0]",
        "sinks.x.tls",
        "sinks.y.address",
        "sinks.y.extra_fields.suser",
    ] {
        assert!(paths.contains(&want), "{want} not reported: {err}");
    }
    let text = err.to_string();
    assert!(text.contains("needs a port"), "{text}");
}

/// Runs the real binary: the demo source (`limit` events, as fast as the
/// sinks take them) into `sinks`; returns how long it took to deliver all and
/// exit.
async fn run_demo(dir: &Path, sinks: &str, limit: u64, batch_size: usize) -> Duration {
    let config = dir.join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
log_format = "json"
[server]
listen = "127.0.0.1:{port}"
[sources.demo]
type = "demo"
rate = 0
batch_size = {batch_size}
limit = {limit}
{sinks}
"#,
            state = dir.join("state").display(),
            port = support::daemon::free_port(),
        ),
    )
    .unwrap();
    let started = std::time::Instant::now();
    let mut d = support::daemon::Daemon::spawn(&config, &dir.join("daemon.log"));
    let status = d
        .wait(Duration::from_secs(300))
        .await
        .unwrap_or_else(|| panic!("daemon did not finish: {}", d.log_text()));
    assert!(status.success(), "{status}: {}", d.log_text());
    started.elapsed()
}

fn demo_ids(limit: u64) -> HashSet<String> {
    (0..limit).map(|i| format!("demo-{i:012}")).collect()
}

#[tokio::test]
async fn the_daemon_delivers_demo_events_over_relp_and_tls() {
    let dir = tempfile::tempdir().unwrap();
    let rs = Rsyslog::start(dir.path()).await;
    let sinks = format!(
        r#"[sinks.relp]
type = "syslog"
inputs = ["demo"]
address = "relp://127.0.0.1:{relp}"
[sinks.tls]
type = "syslog"
inputs = ["demo"]
address = "tls://localhost:{tls}"
body = "cef"
tls = {{ ca_file = "{ca}" }}
"#,
        relp = rs.relp_port,
        tls = rs.tls_port,
        ca = rs.pki.ca.display()
    );
    run_demo(dir.path(), &sinks, 1000, 100).await;
    let want = demo_ids(1000);
    for input in ["relp", "tls"] {
        let records = rs.wait_for_ids(input, &want, Duration::from_secs(20)).await;
        let got: HashSet<String> = records.iter().filter_map(|r| r.sd_param("id")).collect();
        assert_eq!(got, want, "{input}");
        assert_eq!(records.len(), 1000, "{input}");
        assert!(records.iter().all(|r| r.protocol == "1"));
    }
    let cef = rs.records("tls");
    assert!(cef
        .iter()
        .all(|r| r.msg.starts_with("CEF:0|auditrelay|auditrelay|")));
}

/// Throughput of the release binary into rsyslog over TCP and TLS. Run with
/// `cargo test --release --test integration -- --ignored --nocapture syslog_sink::throughput`.
#[tokio::test]
#[ignore = "benchmark; run explicitly in a release build"]
async fn throughput_to_rsyslog_over_tcp_and_tls() {
    let limit: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200_000);
    let batch: usize = std::env::var("BENCH_BATCH")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let window = std::env::var("BENCH_RELP_WINDOW").unwrap_or_else(|_| "128".into());
    for (input, body) in [
        ("tcp", "json"),
        ("tls", "json"),
        ("tcp", "leef"),
        ("relp", "json"),
    ] {
        if !only.is_empty() && !only.split(',').any(|o| o == input) {
            continue;
        }
        let dir = tempfile::tempdir().unwrap();
        let rs = Rsyslog::start(dir.path()).await;
        let address = match input {
            "tcp" => format!("tcp://127.0.0.1:{}", rs.tcp_port),
            "tls" => format!("tls://localhost:{}", rs.tls_port),
            _ => format!("relp://127.0.0.1:{}", rs.relp_port),
        };
        let tls = if input == "tls" {
            format!("tls = {{ ca_file = \"{}\" }}\n", rs.pki.ca.display())
        } else {
            String::new()
        };
        let sinks = format!(
            "[sinks.out]\ntype = \"syslog\"\ninputs = [\"demo\"]\naddress = \"{address}\"\nbody = \"{body}\"\nrelp_window = {window}\n{tls}"
        );
        let started = std::time::Instant::now();
        let took = run_demo(dir.path(), &sinks, limit, batch).await;
        // Until rsyslog has written everything, too.
        let want = demo_ids(limit);
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        let received = loop {
            let n = rs.count(input);
            if n >= want.len() || std::time::Instant::now() > deadline {
                break n;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        let written = started.elapsed();
        assert_eq!(received, want.len(), "{input}");
        eprintln!(
            "{input} {body}: {limit} events; daemon start to exit {:.2}s = {:.0} events/s; \
             until rsyslog wrote all {:.2}s = {:.0} events/s (batch {batch})",
            took.as_secs_f64(),
            limit as f64 / took.as_secs_f64(),
            written.as_secs_f64(),
            limit as f64 / written.as_secs_f64()
        );
    }
}

/// The demo source's committed position: the next sequence number.
fn committed(state: &Path) -> Option<u64> {
    let data = std::fs::read(state.join("checkpoints/demo.checkpoint")).ok()?;
    let nl = data.iter().position(|b| *b == b'\n')?;
    let v: Value = serde_json::from_slice(&data[nl + 1..]).ok()?;
    v["next"].as_u64()
}

/// A daemon config: the demo source (400 events/s) into a TCP syslog sink.
fn replay_config(dir: &Path, receiver: u16, port: u16, timeout: &str) -> std::path::PathBuf {
    let config = dir.join("daemon.toml");
    std::fs::write(
        &config,
        format!(
            r#"state_dir = "{state}"
[server]
listen = "127.0.0.1:{port}"
[sources.demo]
type = "demo"
rate = 400
batch_size = 20
[sinks.sys]
type = "syslog"
inputs = ["demo"]
address = "tcp://127.0.0.1:{receiver}"
timeout = "{timeout}"
retry = {{ initial = "20ms", max = "200ms" }}
"#,
            state = dir.join("state").display(),
        ),
    )
    .unwrap();
    config
}

/// Waits (bounded) until the receiver threw away 300 frames and the
/// checkpoint passed 200 events: confirmed, committed, and lost.
async fn run_into_a_losing_receiver(
    receiver: &support::syslog_receiver::SyslogReceiver,
    state: &Path,
    daemon: &support::daemon::Daemon,
) {
    assert!(
        receiver
            .wait_until(Duration::from_secs(30), |lost, _| lost.len() >= 300)
            .await,
        "no frames arrived: {}",
        daemon.log_text()
    );
    // The checkpoint file is the only sign from outside: poll it.
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while committed(state).unwrap_or(0) < 200 {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits for every id below `next` at the honest receiver; panics naming
/// what is missing.
async fn assert_all_back(
    receiver: &support::syslog_receiver::SyslogReceiver,
    next: u64,
    log: &Path,
) {
    let want: HashSet<String> = (0..next).map(|i| format!("demo-{i:012}")).collect();
    receiver
        .wait_until(Duration::from_secs(30), |_, kept| {
            let kept: HashSet<&String> = kept.iter().collect();
            want.iter().all(|id| kept.contains(id))
        })
        .await;
    let kept: HashSet<String> = receiver.kept().into_iter().collect();
    let missing: Vec<&String> = want.difference(&kept).collect();
    assert!(
        missing.is_empty(),
        "{} of {} checkpointed frames the receiver lost never came back (first: {:?})\n{}",
        missing.len(),
        want.len(),
        missing.iter().min(),
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// Issue 14, item 6: the receiver's kernel acknowledged frames (so their
/// batches were confirmed and checkpointed), then the receiver lost them
/// and reset the connection, while auditrelay was SIGKILLed. After the
/// restart every one of them must arrive: the replay window was on disk.
#[tokio::test]
async fn frames_a_receiver_lost_while_the_daemon_was_killed_arrive_after_the_restart() {
    use support::syslog_receiver::SyslogReceiver;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let receiver = SyslogReceiver::start(true).await;
    let config = replay_config(
        dir.path(),
        receiver.port,
        support::daemon::free_port(),
        "5s",
    );
    let log = dir.path().join("daemon.log");
    let mut daemon = support::daemon::Daemon::spawn(&config, &log);
    run_into_a_losing_receiver(&receiver, &state, &daemon).await;
    // It resets the connection instead of closing it after our kill's FIN
    // (what a receiver does that dies holding our frames): no proof it read
    // them. One that closes cleanly proves it did (and one that read frames
    // and lost them itself is beyond any TCP sender, running or restarted).
    receiver.set_holding_on_eof(true);
    daemon.kill().await;
    let before_kill = committed(&state).unwrap();
    receiver.reset_connections();
    receiver.set_losing(false);
    let lost: HashSet<String> = receiver.lost().into_iter().collect();
    assert!(
        (0..before_kill).all(|i| lost.contains(&format!("demo-{i:012}"))),
        "checkpointed yet never sent?"
    );
    // Only the replay window can bring these back: the source resumes
    // after them.
    let mut daemon = support::daemon::Daemon::spawn(&config, &log);
    assert_all_back(&receiver, before_kill, &log).await;
    daemon.kill().await;
    assert!(
        std::fs::read_to_string(&log)
            .unwrap()
            .contains("resending the replay window of a previous run"),
        "the restart did not resend the window"
    );
}

/// The same across a SIGHUP that changes the sink: the new sink instance
/// is built while the old one still runs; it takes the old one's window
/// over once the old one is gone, and resends it.
#[tokio::test]
async fn frames_a_receiver_lost_around_a_reload_of_the_sink_arrive_after_it() {
    use support::syslog_receiver::SyslogReceiver;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let receiver = SyslogReceiver::start(true).await;
    let port = support::daemon::free_port();
    let config = replay_config(dir.path(), receiver.port, port, "5s");
    let log = dir.path().join("daemon.log");
    let mut daemon = support::daemon::Daemon::spawn(&config, &log);
    run_into_a_losing_receiver(&receiver, &state, &daemon).await;
    replay_config(dir.path(), receiver.port, port, "6s");
    receiver.reset_connections();
    receiver.set_losing(false);
    let before_reload = committed(&state).unwrap();
    // The old instance may bring the frames back before it is replaced:
    // what is asserted below is the state after the reload.
    reload(&daemon).await;
    assert_all_back(&receiver, before_reload, &log).await;
    daemon.kill().await;
    let files: Vec<String> = std::fs::read_dir(state.join("syslog_replay/sys"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let instances: HashSet<&str> = files
        .iter()
        .filter_map(|f| f.split_once('.').map(|(stem, _)| stem))
        .collect();
    assert!(
        instances.len() == 1
            && files.iter().any(|f| f.ends_with(".lock"))
            && files.iter().any(|f| f.ends_with(".replay")),
        "one instance's .lock, .replay (and .conn): the old instance's were adopted and removed: {files:?}"
    );
}

/// The demo source (400 events/s) into rsyslog over TCP and TLS; a new
/// `timeout` changes both sinks, so a reload replaces them.
fn stop_config(dir: &Path, rs: &Rsyslog, port: u16, timeout: &str) -> std::path::PathBuf {
    let config = dir.join("daemon.toml");
    let sink = |name: &str, address: String, tls: String| {
        format!(
            "[sinks.{name}]\ntype = \"syslog\"\ninputs = [\"demo\"]\naddress = \"{address}\"\n\
             timeout = \"{timeout}\"\nretry = {{ initial = \"20ms\", max = \"200ms\" }}\n{tls}\n"
        )
    };
    let text = format!(
        "state_dir = \"{state}\"\n[server]\nlisten = \"127.0.0.1:{port}\"\n\
         [sources.demo]\ntype = \"demo\"\nrate = 400\nbatch_size = 20\n{tcp}{tls}",
        state = dir.join("state").display(),
        tcp = sink(
            "tcp",
            format!("tcp://127.0.0.1:{}", rs.tcp_port),
            String::new()
        ),
        tls = sink(
            "tls",
            format!("tls://localhost:{}", rs.tls_port),
            format!("tls = {{ ca_file = \"{}\" }}", rs.pki.ca.display())
        ),
    );
    std::fs::write(&config, text).unwrap();
    config
}

/// Sends SIGHUP and waits (bounded) until the daemon says the reload happened.
async fn reload(daemon: &support::daemon::Daemon) {
    daemon.signal(libc::SIGHUP);
    assert!(
        daemon
            .wait_for_log("config reloaded", Duration::from_secs(30))
            .await,
        "{}",
        daemon.log_text()
    );
}

/// Waits (bounded) until the demo checkpoint reaches `next`.
async fn wait_committed(state: &Path, next: u64, daemon: &support::daemon::Daemon) {
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while committed(state).unwrap_or(0) < next {
        assert!(
            std::time::Instant::now() < deadline,
            "checkpoint never reached {next}: {}",
            daemon.log_text()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// How often each of the demo ids below `next` arrived at `input`, once
/// all of them did.
async fn arrivals(rs: &Rsyslog, input: &str, next: u64) -> HashMap<String, usize> {
    let records = rs
        .wait_for_ids(input, &demo_ids(next), Duration::from_secs(20))
        .await;
    let mut seen = HashMap::new();
    for id in records.iter().filter_map(|r| r.sd_param("id")) {
        *seen.entry(id).or_insert(0) += 1;
    }
    for id in demo_ids(next) {
        assert!(seen.contains_key(&id), "{input}: {id} never arrived");
    }
    seen
}

/// A SIGTERM or a reload ends each TCP/TLS connection in order and waits
/// for rsyslog to close its side (it does, once it has read our FIN, so it
/// read every frame): then nothing needs resending, and the next instance
/// sends no duplicates; after a SIGKILL the dead connection's TIME_WAIT
/// proves the same.
#[tokio::test]
async fn a_clean_stop_reload_or_kill_resends_nothing_when_the_receiver_closes_cleanly() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let log = dir.path().join("daemon.log");
    let rs = Rsyslog::start(dir.path()).await;
    let port = support::daemon::free_port();
    let config = stop_config(dir.path(), &rs, port, "5s");
    let mut daemon = support::daemon::Daemon::spawn(&config, &log);
    wait_committed(&state, 100, &daemon).await;
    // A reload that replaces both sinks.
    stop_config(dir.path(), &rs, port, "6s");
    let before_reload = committed(&state).unwrap();
    reload(&daemon).await;
    wait_committed(&state, before_reload + 100, &daemon).await;
    let status = daemon.terminate(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", daemon.log_text());
    let stopped = committed(&state).unwrap();
    let mut daemon = support::daemon::Daemon::spawn(&config, &log);
    wait_committed(&state, stopped + 100, &daemon).await;
    let status = daemon.terminate(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", daemon.log_text());
    let next = committed(&state).unwrap();
    for input in ["tcp", "tls"] {
        let seen = arrivals(&rs, input, next).await;
        let mut twice: Vec<&String> = seen
            .iter()
            .filter(|(_, n)| **n > 1)
            .map(|(id, _)| id)
            .collect();
        twice.sort();
        assert!(
            twice.is_empty(),
            "{input}: {} of {next} events arrived more than once after a reload and a SIGTERM (first: {:?})\n{}",
            twice.len(),
            twice.first(),
            daemon.log_text()
        );
    }
    let text = daemon.log_text();
    assert!(!text.contains("resending the replay window"), "{text}");
    assert_eq!(
        text.matches("connection closed cleanly by the receiver")
            .count(),
        6,
        "each sink proved its receiver read everything at the reload and both stops: {text}"
    );

    // SIGKILL: our kernel still sends the queued frames and a FIN, and
    // rsyslog, reading up to it, closes cleanly: the dead connection's
    // TIME_WAIT proves it read the window, which is not sent again (issue
    // 19: before, every kill resent the whole window).
    let mut daemon = support::daemon::Daemon::spawn(&config, &log);
    wait_committed(&state, next + 100, &daemon).await;
    daemon.kill().await;
    let killed = committed(&state).unwrap();
    let mut daemon = support::daemon::Daemon::spawn(&config, &log);
    wait_committed(&state, killed + 20, &daemon).await;
    let status = daemon.terminate(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", daemon.log_text());
    let text = daemon.log_text();
    assert_eq!(
        text.matches("not resending the replay window of a previous run")
            .count(),
        2,
        "each sink found the proof: {text}"
    );
    assert!(
        !text.contains("resending the replay window of a previous run before"),
        "{text}"
    );
    for input in ["tcp", "tls"] {
        let seen = arrivals(&rs, input, killed).await;
        let resent: Vec<u64> = (next..killed)
            .filter(|i| seen[&format!("demo-{i:012}")] > 1)
            .collect();
        assert!(
            resent.is_empty(),
            "{input}: {} committed events of the killed run came again (first {:?})",
            resent.len(),
            resent.first()
        );
    }
}

/// A receiver that keeps the connection open after our FIN gives no proof
/// it read the last frames: a SIGTERM then keeps the window (after waiting
/// at most the sink's `timeout`), and the next start resends it.
#[tokio::test]
async fn a_receiver_that_does_not_close_gets_the_window_again_after_a_sigterm() {
    use support::syslog_receiver::SyslogReceiver;
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let receiver = SyslogReceiver::start(false).await;
    receiver.set_holding_on_eof(true);
    let config = replay_config(
        dir.path(),
        receiver.port,
        support::daemon::free_port(),
        "1s",
    );
    let log = dir.path().join("daemon.log");
    let mut daemon = support::daemon::Daemon::spawn(&config, &log);
    wait_committed(&state, 100, &daemon).await;
    let stopping = std::time::Instant::now();
    let status = daemon.terminate(Duration::from_secs(30)).await;
    assert!(status.is_some_and(|s| s.success()), "{}", daemon.log_text());
    assert!(
        stopping.elapsed() < Duration::from_secs(10),
        "the wait for the close is bounded"
    );
    let stopped = committed(&state).unwrap();
    let text = daemon.log_text();
    assert!(text.contains("replay window kept"), "{text}");
    let mut daemon = support::daemon::Daemon::spawn(&config, &log);
    let twice = |kept: &[String]| {
        (0..stopped).all(|i| {
            let id = format!("demo-{i:012}");
            kept.iter().filter(|k| **k == id).count() == 2
        })
    };
    let resent = receiver
        .wait_until(Duration::from_secs(30), |_, kept| twice(kept))
        .await;
    daemon.kill().await;
    assert!(
        resent,
        "the {stopped} events before the SIGTERM did not all arrive twice: {}",
        daemon.log_text()
    );
}

/// A receiver whose certificate is a CA certificate (what a bare
/// `openssl req -x509` makes) is refused; the reason says why and what to do.
#[tokio::test]
async fn a_ca_certificate_as_the_receiver_s_certificate_is_explained() {
    let dir = tempfile::tempdir().unwrap();
    let pki = support::tls::TestPki::ca_as_server_certificate();
    let receiver = support::syslog_receiver::SyslogReceiver::start(false).await;
    let front = support::tls::TlsFront::start(&pki, ([127, 0, 0, 1], receiver.port).into())
        .await
        .unwrap();
    let port = front.url().rsplit(':').next().unwrap().to_string();
    let (sink, health, _) = build(
        dir.path(),
        &format!(
            "address = \"tls://127.0.0.1:{port}\"\ntls = {{ ca_file = \"{}\" }}",
            pki.write_ca(dir.path(), "ca.pem").display()
        ),
    );
    let events: Vec<Event> = (0..3).map(|i| veza_event("caserver", i)).collect();
    let task = tokio::spawn(async move { sink.deliver("veza", &events).await });
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let reason = loop {
        let (ready, map) = health.snapshot();
        if !ready {
            break map["sink.sys"].reason.clone();
        }
        assert!(std::time::Instant::now() < deadline, "never failed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    task.abort();
    assert!(reason.contains("TLS handshake"), "{reason}");
    assert!(
        reason.contains("CA certificate") && reason.contains("CA:FALSE"),
        "{reason}"
    );
    assert!(receiver.kept().is_empty());
}

/// A deliver cancelled midway (a reload whose drain timed out against a
/// stalled receiver) leaves the connection unusable, so the next batch
/// reconnects. Frames confirmed before, still unread in the stalled
/// receiver's socket, are lost when it is restarted: they must be resent on
/// the new connection like after a reset.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_confirmed_before_a_cancelled_send_are_resent_on_the_next_connection() {
    use support::syslog_receiver::SyslogReceiver;
    let receiver = SyslogReceiver::start(false).await;
    receiver.set_stalled(true);
    let dir = tempfile::tempdir().unwrap();
    let (sink, _, _) = build(
        dir.path(),
        &format!(
            "address = \"tcp://127.0.0.1:{}\"\nmax_message_size = 65536\nreplay_window = 67108864",
            receiver.port
        ),
    );
    let first = vec![veza_event("first", 0)];
    tokio::time::timeout(Duration::from_secs(10), sink.deliver("veza", &first))
        .await
        .expect("confirmed: the receiver's kernel acknowledged it")
        .unwrap();
    // More than loopback's socket buffers hold: the write blocks.
    let big: Vec<Event> = (0..400)
        .map(|i| {
            let id = format!("big-{i:05}");
            Event {
                raw: Bytes::from(json!({"id": id, "pad": "x".repeat(60_000)}).to_string()),
                id: Some(id.into()),
                time: Some(time(i)),
                kind: Some(KIND.into()),
            }
        })
        .collect();
    let cancelled =
        tokio::time::timeout(Duration::from_millis(1500), sink.deliver("veza", &big)).await;
    assert!(cancelled.is_err(), "the stalled receiver blocked the write");
    // The stalled receiver is restarted with our frames unread.
    receiver.reset_connections();
    receiver.set_stalled(false);
    let next = vec![veza_event("next", 1)];
    tokio::time::timeout(Duration::from_secs(20), sink.deliver("veza", &next))
        .await
        .expect("delivered")
        .unwrap();
    let arrived = receiver
        .wait_until(Duration::from_secs(10), |_, kept| {
            kept.iter().any(|id| id == "first-00000") && kept.iter().any(|id| id == "next-00001")
        })
        .await;
    assert!(
        arrived,
        "a confirmed frame the receiver never read was not resent: {:?}",
        receiver
            .kept()
            .iter()
            .filter(|id| !id.starts_with("big-"))
            .collect::<Vec<_>>()
    );
}
