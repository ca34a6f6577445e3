use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::{json, Value};

use super::*;

const VEZA: &str = r#"{"identity":{"user_id":"u-1","session_id":"s-1","api_key_id":"","email":"alice@example.com"},"status":{"grpc_code":"OK","http_status":200,"error_reason":"OK"},"client":{"ip":"10.0.0.1","user_agent":"curl/8"},"endpoint":"/api_protos.v1.UserService/ListUsers","method":"GET","url":"/api/v1/users","request_id":"req-1","request":{"password":"hunter2"},"started_at":"2023-07-26T08:23:17.134994459Z","ended_at":"2023-07-26T08:23:17.151080751Z"}"#;

fn common(keys: Value) -> SinkCommon {
    let mut v = json!({"inputs": ["veza"]});
    for (k, x) in keys.as_object().unwrap() {
        v[k] = x.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn kinds() -> Arc<BTreeMap<String, String>> {
    Arc::new(BTreeMap::from([("veza".to_string(), "veza".to_string())]))
}

fn event(raw: &str) -> Event {
    Event {
        raw: Bytes::copy_from_slice(raw.as_bytes()),
        id: Some("req-1".into()),
        time: chrono::DateTime::from_timestamp(1_690_359_797, 0),
        kind: Some("/api_protos.v1.UserService/ListUsers".into()),
    }
}

fn shaped(keys: Value, raw: &str) -> (Event, Value) {
    let shaper = Shaper::new(&common(keys), "sinks.out", kinds())
        .unwrap()
        .expect("a shaping key is set");
    let e = shaper.shape("veza", &event(raw));
    let v = serde_json::from_slice(&e.raw).unwrap();
    (e, v)
}

#[test]
fn no_shaping_key_means_no_shaper() {
    assert!(Shaper::new(&common(json!({})), "sinks.out", kinds())
        .unwrap()
        .is_none());
}

#[test]
fn redact_masks_and_keeps_id_time_kind() {
    let (e, v) = shaped(
        json!({"redact": ["identity.email", "request.password", "not.there"]}),
        VEZA,
    );
    assert_eq!(v["identity"]["email"], json!(MASK));
    assert_eq!(v["request"]["password"], json!(MASK));
    assert_eq!(v["identity"]["user_id"], json!("u-1"));
    let before = event(VEZA);
    assert_eq!(e.id, before.id);
    assert_eq!(e.time, before.time);
    assert_eq!(e.kind, before.kind);
    assert!(!String::from_utf8_lossy(&e.raw).contains("alice@"));
}

#[test]
fn hmac_redaction_is_hmac_sha256_hex_of_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key");
    std::fs::write(&key, "key\n").unwrap();
    let raw = r#"{"msg":"The quick brown fox jumps over the lazy dog","other":{"msg":1}}"#;
    let (_, v) = shaped(
        json!({"redact": ["msg"], "redact_mode": "hmac", "redact_key_file": key}),
        raw,
    );
    // RFC 4231-style known answer (HMAC-SHA256, key "key").
    assert_eq!(
        v["msg"],
        json!("f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8")
    );
    assert_eq!(v["other"]["msg"], json!(1));
}

#[test]
fn drop_and_add_fields_in_raw_mode() {
    let (_, v) = shaped(
        json!({"drop_fields": ["request", "client.user_agent"], "add_fields": {"tenant": "acme", "env.stage": "prod", "n": 3}}),
        VEZA,
    );
    assert!(v.get("request").is_none());
    assert!(v["client"].get("user_agent").is_none());
    assert_eq!(v["client"]["ip"], json!("10.0.0.1"));
    assert_eq!(v["tenant"], json!("acme"));
    assert_eq!(v["env"]["stage"], json!("prod"));
    assert_eq!(v["n"], json!(3));
}

#[test]
fn non_json_event_is_kept_in_raw_mode_and_wrapped_in_ocsf_mode() {
    let (e, _) = (
        Shaper::new(&common(json!({"redact": ["a"]})), "sinks.out", kinds())
            .unwrap()
            .unwrap()
            .shape("veza", &event("not json")),
        (),
    );
    assert_eq!(&e.raw[..], b"not json");
    let (_, v) = shaped(json!({"schema": "ocsf"}), "not json");
    assert_eq!(v["class_uid"], json!(0));
    assert_eq!(v["raw_data"], json!("not json"));
}

#[test]
fn ocsf_with_redaction_keeps_the_redacted_original() {
    let (_, v) = shaped(
        json!({"schema": "ocsf", "redact": ["identity.email"]}),
        VEZA,
    );
    assert_eq!(v["class_uid"], json!(6003));
    assert_eq!(v["type_uid"], json!(600302));
    assert!(!v.to_string().contains("alice@example.com"));
    let original: Value = serde_json::from_str(v["raw_data"].as_str().unwrap()).unwrap();
    assert_eq!(original["identity"]["email"], json!(MASK));
    assert_eq!(original["request_id"], json!("req-1"));
    assert_eq!(v["metadata"]["uid"], json!("req-1"));
}

#[test]
fn ocsf_raw_unmapped_none_and_tags() {
    let (_, v) = shaped(
        json!({"schema": "ocsf", "ocsf_raw": "unmapped", "add_fields": {"tenant": "acme", "n": 3}}),
        VEZA,
    );
    assert_eq!(v["unmapped"]["request_id"], json!("req-1"));
    assert!(v.get("raw_data").is_none());
    assert_eq!(
        v["metadata"]["tags"],
        json!([{"name": "n", "value": "3"}, {"name": "tenant", "value": "acme"}])
    );
    let (_, v) = shaped(json!({"schema": "ocsf", "ocsf_raw": "none"}), VEZA);
    assert!(v.get("raw_data").is_none() && v.get("unmapped").is_none());
}

#[test]
fn a_path_absent_from_the_original_applies_to_the_ocsf_event() {
    let (_, v) = shaped(
        json!({"schema": "ocsf", "redact": ["actor.user.uid"], "drop_fields": ["http_request"]}),
        VEZA,
    );
    assert_eq!(v["actor"]["user"]["uid"], json!(MASK));
    assert!(v.get("http_request").is_none());
}

#[test]
fn validate_names_the_key() {
    let mut problems = Problems::default();
    validate(
        &common(json!({"redact_mode": "hmac", "redact": ["a..b"], "drop_fields": [""]})),
        "sinks.out",
        &mut problems,
    );
    let text: Vec<String> = problems
        .into_vec()
        .into_iter()
        .map(|p| format!("{}: {}", p.path, p.message))
        .collect();
    assert!(
        text.iter()
            .any(|t| t.starts_with("sinks.out.redact_key_file: required")),
        "{text:?}"
    );
    assert!(
        text.iter().any(|t| t.starts_with("sinks.out.redact[0]:")),
        "{text:?}"
    );
    assert!(
        text.iter()
            .any(|t| t.starts_with("sinks.out.drop_fields[0]:")),
        "{text:?}"
    );
    let err = Shaper::new(
        &common(json!({"redact_mode": "hmac", "redact": ["a"]})),
        "sinks.out",
        kinds(),
    )
    .err()
    .unwrap();
    assert!(
        err.to_string().starts_with("sinks.out.redact_key_file:"),
        "{err}"
    );
}

#[test]
fn an_unreadable_key_file_is_reported_without_its_contents() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("empty");
    std::fs::write(&key, "  \n").unwrap();
    let mut problems = Problems::default();
    validate(
        &common(json!({"redact_mode": "hmac", "redact_key_file": key})),
        "sinks.out",
        &mut problems,
    );
    let list = problems.into_vec();
    assert_eq!(list.len(), 1);
    assert_eq!(list[0].path, "sinks.out.redact_key_file");
    assert!(list[0].message.contains("is empty"), "{}", list[0].message);
}

/// Records what it is handed.
#[derive(Default)]
struct Recorder(std::sync::Mutex<Vec<Event>>);

#[async_trait]
impl Sink for Recorder {
    async fn deliver(&self, _source: &str, events: &[Event]) -> anyhow::Result<()> {
        self.0.lock().unwrap().extend_from_slice(events);
        Ok(())
    }
}

fn daemon_config(sink_keys: &str) -> crate::config_file::Config {
    crate::config_file::load_str(&format!(
        "state_dir = \"/nonexistent\"\n[sources.s]\ntype = \"demo\"\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"s\"]\n{sink_keys}\n"
    ))
    .expect("valid config")
}

#[tokio::test]
async fn the_daemon_shapes_only_sinks_with_a_shaping_key() {
    let inner: Arc<dyn Sink> = Arc::new(Recorder::default());
    let config = daemon_config("");
    let kinds = crate::daemon::source_kinds(&config);
    let built = crate::daemon::with_shaping(&config, "out", inner.clone(), kinds).unwrap();
    assert!(
        Arc::ptr_eq(&built, &inner),
        "raw mode: the sink itself, no step in front"
    );

    let recorder = Arc::new(Recorder::default());
    let config = daemon_config("schema = \"ocsf\"\nocsf_raw = \"unmapped\"");
    let kinds = crate::daemon::source_kinds(&config);
    assert_eq!(kinds.get("s").map(String::as_str), Some("demo"));
    let built = crate::daemon::with_shaping(&config, "out", recorder.clone(), kinds).unwrap();
    assert!(!Arc::ptr_eq(&built, &(recorder.clone() as Arc<dyn Sink>)));
    built.deliver("s", &[event(r#"{"a":1}"#)]).await.unwrap();
    let got = recorder.0.lock().unwrap().clone();
    let v: Value = serde_json::from_slice(&got[0].raw).unwrap();
    assert_eq!(v["class_uid"], json!(0));
    assert_eq!(v["unmapped"], json!({"a": 1}));
    assert_eq!(got[0].id.as_deref(), Some("req-1"));
    let counted = metrics::SHAPING_METRICS
        .ocsf_events
        .with_label_values(&["out", "s", "base_event"])
        .get();
    assert_eq!(counted, 1);
}

#[test]
fn loading_a_config_reports_shaping_problems_with_their_key_paths() {
    let err = crate::config_file::load_str(
        "state_dir = \"/nonexistent\"\n[sources.s]\ntype = \"demo\"\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"s\"]\nredact_mode = \"hmac\"\nredact = [\"a\"]\nschema = \"json\"\n",
    )
    .expect_err("bad shaping keys");
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert!(paths.contains(&"sinks.out.schema"), "{paths:?}");
    let err = crate::config_file::load_str(
        "state_dir = \"/nonexistent\"\n[sources.s]\ntype = \"demo\"\n[sinks.out]\ntype = \"stdout\"\ninputs = [\"s\"]\nredact_mode = \"hmac\"\nredact = [\"a\"]\n",
    )
    .expect_err("hmac without a key file");
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, vec!["sinks.out.redact_key_file"]);
}

#[test]
fn kafka_topic_class_placeholder_needs_the_ocsf_schema() {
    let config = |keys: &str| {
        crate::config_file::load_str(&format!(
            "state_dir = \"/nonexistent\"\n[sources.s]\ntype = \"demo\"\n[sinks.k]\ntype = \"kafka\"\ninputs = [\"s\"]\nbrokers = [\"127.0.0.1:9092\"]\ntopic = \"ocsf.{{class}}\"\n{keys}\n"
        ))
    };
    let err = config("").expect_err("{class} without schema = \"ocsf\"");
    let paths: Vec<&str> = err.problems.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(paths, vec!["sinks.k.topic"]);
    assert!(config("schema = \"ocsf\"").is_ok());
}

/// Events a source accepts (its pages are split with `RawValue`, which
/// checks neither number range nor nesting depth) but `Value` cannot parse
/// must not go out with a redacted field in clear.
#[test]
fn an_event_value_cannot_parse_is_still_redacted() {
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let cases = [
        r#"{"identity":{"email":"alice@example.com"},"n":1e400}"#.to_string(),
        format!(r#"{{"identity":{{"email":"alice@example.com"}},"deep":{deep}}}"#),
    ];
    for raw in cases {
        assert!(
            serde_json::from_str::<&serde_json::value::RawValue>(&raw).is_ok(),
            "a source accepts it"
        );
        for schema in ["raw", "ocsf"] {
            let shaper = Shaper::new(
                &common(json!({"schema": schema, "redact": ["identity.email"]})),
                "sinks.out",
                kinds(),
            )
            .unwrap()
            .unwrap();
            let e = shaper.shape("veza", &event(&raw));
            let out = String::from_utf8_lossy(&e.raw);
            assert!(
                !out.contains("alice@"),
                "schema {schema}: the email went out: {}",
                &out[..out.len().min(200)]
            );
        }
    }
    // What could be walked is kept: only the email changed.
    let (_, v) = shaped(
        json!({"redact": ["identity.email"]}),
        r#"{"identity":{"email":"alice@example.com","user_id":"u-1"},"n":1e400}"#,
    );
    assert_eq!(
        v,
        json!({"identity": {"email": MASK, "user_id": "u-1"}, "n": "1e400"})
    );
}

/// Flattened events (`{"identity.email": …}`, as ECS-style exporters
/// send) hold the field under one dotted key: the path names it too.
#[test]
fn a_path_matches_a_key_with_dots() {
    let raw = r#"{"identity.email":"alice@example.com","actor":{"user.email":"alice@example.com","id":"u-1"},"n":{"a.b":{"c":1}}}"#;
    for schema in ["raw", "ocsf"] {
        let shaper = Shaper::new(
            &common(json!({"schema": schema, "redact": ["identity.email", "actor.user.email"], "drop_fields": ["n.a.b.c"]})),
            "sinks.out",
            kinds(),
        )
        .unwrap()
        .unwrap();
        let out = String::from_utf8_lossy(&shaper.shape("veza", &event(raw)).raw).into_owned();
        assert!(!out.contains("alice@"), "schema {schema}: {out}");
        assert!(
            !out.contains(r#"\"c\":1"#) && !out.contains(r#""c":1"#),
            "schema {schema}: {out}"
        );
    }
}

/// A redacted path some events of a source lack (`metadata`) is tried on
/// their OCSF event, where it names OCSF's own `metadata`: tagging them
/// must not panic, and the tags must still be there.
#[test]
fn redacting_ocsf_metadata_with_add_fields_does_not_panic() {
    let (_, v) = shaped(
        json!({"schema": "ocsf", "redact": ["metadata"], "add_fields": {"tenant": "acme"}}),
        VEZA,
    );
    assert_eq!(
        v["metadata"]["tags"],
        json!([{"name": "tenant", "value": "acme"}])
    );
}

/// An `id_path` or `type_path` on a redacted field: the value must not
/// leave through the event's id (syslog SD, Kafka key, dead letters) or
/// OCSF's `metadata.uid` / `activity_name`.
#[test]
fn an_id_or_type_taken_from_a_redacted_field_is_redacted_too() {
    for schema in ["raw", "ocsf"] {
        let shaper = Shaper::new(
            &common(json!({"schema": schema, "redact": ["identity.email", "endpoint"]})),
            "sinks.out",
            kinds(),
        )
        .unwrap()
        .expect("a shaping key is set");
        let mut input = event(VEZA);
        input.id = Some("alice@example.com".into());
        let e = shaper.shape("veza", &input);
        assert_eq!(e.id.as_deref(), Some(MASK), "{schema}");
        assert_eq!(e.kind.as_deref(), Some(MASK), "{schema}");
        let text = String::from_utf8_lossy(&e.raw);
        assert!(!text.contains("alice@example.com"), "{schema}: {text}");
        assert!(!text.contains("ListUsers"), "{schema}: {text}");
    }
}
