//! The command line as an operator uses it: `validate`, startup errors, and a
//! bounded demo run end to end.

use std::path::Path;
use std::process::Command;

fn auditrelay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_auditrelay"))
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).expect("write test file");
}

#[test]
fn validate_reports_every_problem_with_its_key_path() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("bad.toml");
    write(
        &cfg,
        r#"
state_dir = "/tmp/unused"
bogus = 1
[sources.veza_prod]
type = "veza"
url = "example.com/x"
token_env = "AUDITRELAY_TEST_UNSET_TOKEN"
page_size = 20000
start_at = "yesterday"
poll_interval = "5 parsecs"
[sinks.hook]
type = "webhook"
inputs = ["veza_prd"]
url = "/relative"
[sinks.hook.tls]
ca = "x"
[sinks.f]
type = "file"
inputs = ["veza_prod"]
path = "x"
rotate_bytes = "big"
on_unavailable = "drop"
[sinks.k]
type = "carrier_pigeon"
inputs = ["veza_prod"]
"#,
    );
    let out = auditrelay()
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "bogus: unknown key",
        "sources.veza_prod.poll_interval: invalid value string \"5 parsecs\"",
        "sinks.hook.tls.ca: unknown key (accepted: ca_file, cert_file, key_file, insecure_skip_verify)",
        "sinks.f.rotate_bytes: invalid type",
        "sinks.f.on_unavailable: unknown value \"drop\" (one of: block, spool)",
        "sinks.k.type: unknown sink type \"carrier_pigeon\"",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }

    // With the type errors fixed, the semantic checks speak.
    write(
        &cfg,
        r#"
[sources.veza_prod]
type = "veza"
url = "example.com/x"
token_env = "AUDITRELAY_TEST_UNSET_TOKEN"
page_size = 20000
start_at = "yesterday"
[sinks.hook]
type = "webhook"
inputs = ["veza_prd"]
url = "/relative"
on_unavailable = "spool"
spool_max_bytes = 1000
"#,
    );
    let out = auditrelay()
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    for expected in [
        "sources.veza_prod.url: relative URL without a base",
        "sources.veza_prod.token_env: environment variable AUDITRELAY_TEST_UNSET_TOKEN is not set",
        "sources.veza_prod.page_size: 20000 is out of range",
        "sources.veza_prod.start_at: \"yesterday\" is neither",
        "sinks.hook.url: relative URL without a base",
        "sinks.hook.inputs[0]: \"veza_prd\" names no source (sources: veza_prod)",
        "sinks.hook.spool_max_bytes: 1000 bytes is too small for a spool",
    ] {
        assert!(err.contains(expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn missing_config_file_is_named() {
    let out = auditrelay()
        .args(["validate", "--config", "/nonexistent/auditrelay.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("cannot read config file /nonexistent/auditrelay.toml"),
        "{err}"
    );
}

#[test]
fn shipped_configs_validate() {
    let root = env!("CARGO_MANIFEST_DIR");
    let out = auditrelay()
        .args(["validate", "--config"])
        .arg(Path::new(root).join("config/demo.toml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("is valid: 1 source [demo (demo)]"));

    // The real example, with its secret paths pointed at files that exist.
    let dir = tempfile::tempdir().unwrap();
    let (veza, hook) = (dir.path().join("veza"), dir.path().join("hook"));
    write(&veza, "veza-token\n");
    write(&hook, "hook-key\n");
    let out = auditrelay()
        .args(["validate", "--config"])
        .arg(Path::new(root).join("config/veza-to-webhook.toml"))
        .env("AUDITRELAY_SOURCES__VEZA_PROD__TOKEN_FILE", &veza)
        .env("AUDITRELAY_SINKS__HOOK__HMAC_SECRET_FILE", &hook)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let hec = dir.path().join("hec");
    write(&hec, "0f1e2d3c-4b5a-6978-8a9b-0c1d2e3f4a5b\n");
    let out = auditrelay()
        .args(["validate", "--config"])
        .arg(Path::new(root).join("config/veza-to-splunk.toml"))
        .env("AUDITRELAY_SOURCES__VEZA_PROD__TOKEN_FILE", &veza)
        .env("AUDITRELAY_SINKS__SPLUNK__TOKEN_FILE", &hec)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("splunk (splunk_hec)"));
}

#[test]
fn shipped_source_examples_validate() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    write(&secret, "s3cret\n");
    // (example, env overrides pointing its secret files at one that exists)
    let cases: &[(&str, &[&str])] = &[
        (
            "config/quickztna.toml",
            &[
                "AUDITRELAY_SOURCES__QUICKZTNA__TOKEN_FILE",
                "AUDITRELAY_SINKS__HOOK__HMAC_SECRET_FILE",
            ],
        ),
        (
            "config/certifyclouds.toml",
            &[
                "AUDITRELAY_SOURCES__CERTIFYCLOUDS__TOKEN_FILE",
                "AUDITRELAY_SINKS__HOOK__HMAC_SECRET_FILE",
            ],
        ),
        (
            "config/zaita.toml",
            &[
                "AUDITRELAY_SOURCES__ZAITA__OAUTH2__CLIENT_SECRET_FILE",
                "AUDITRELAY_SINKS__HOOK__HMAC_SECRET_FILE",
            ],
        ),
        (
            "config/webhook-in.toml",
            &[
                "AUDITRELAY_SOURCES__PUSH__TOKEN_FILE",
                "AUDITRELAY_SOURCES__PUSH__HMAC_SECRET_FILE",
                "AUDITRELAY_SOURCES__PUSH__TLS__CERT_FILE",
                "AUDITRELAY_SOURCES__PUSH__TLS__KEY_FILE",
                "AUDITRELAY_SINKS__HOOK__HMAC_SECRET_FILE",
            ],
        ),
    ];
    for (file, vars) in cases {
        let mut cmd = auditrelay();
        cmd.args(["validate", "--config"]).arg(root.join(file));
        for v in *vars {
            cmd.env(v, &secret);
        }
        let out = cmd.output().unwrap();
        assert!(
            out.status.success(),
            "{file}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn demo_config(dir: &Path, limit: u64) -> std::path::PathBuf {
    let cfg = dir.join("demo.toml");
    write(
        &cfg,
        &format!(
            r#"
state_dir = "{state}"
[server]
listen = "127.0.0.1:0"
[sources.demo]
type = "demo"
rate = 0
batch_size = 250
limit = {limit}
[sinks.out]
type = "file"
inputs = ["demo"]
path = "{state}/events.ndjson"
"#,
            state = dir.join("state").display()
        ),
    );
    cfg
}

#[test]
fn bounded_demo_run_delivers_everything_then_resumes_from_its_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo_config(dir.path(), 1000);
    let out = auditrelay()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = std::fs::read_to_string(dir.path().join("state/events.ndjson")).unwrap();
    let ids: Vec<String> = events
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["request_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    assert_eq!(ids.len(), 1000);
    assert_eq!(ids[999], "demo-000000000999");

    // Raising the limit continues after the committed checkpoint: no repeats.
    let cfg = demo_config(dir.path(), 1500);
    let out = auditrelay()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let events = std::fs::read_to_string(dir.path().join("state/events.ndjson")).unwrap();
    assert_eq!(events.lines().count(), 1500);

    let show = auditrelay()
        .args(["checkpoint", "show", "--source", "demo", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&show.stdout).trim(),
        r#"{"next":1500}"#
    );
}

#[test]
fn corrupt_checkpoint_stops_startup_with_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo_config(dir.path(), 10);
    let out = auditrelay()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(out.status.success());
    let path = dir.path().join("state/checkpoints/demo.checkpoint");
    let mut data = std::fs::read(&path).unwrap();
    let last = data.len() - 2;
    data[last] = b'7';
    std::fs::write(&path, &data).unwrap();

    let out = auditrelay()
        .args(["run", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&path.display().to_string()), "{err}");
    assert!(err.contains("checksum mismatch"), "{err}");
    assert!(
        err.contains("auditrelay checkpoint reset --source demo"),
        "{err}"
    );
    // Nothing was overwritten.
    assert_eq!(std::fs::read(&path).unwrap(), data);

    let reset = auditrelay()
        .args(["checkpoint", "reset", "--source", "demo", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(reset.status.success());
    assert!(!path.exists());
}

/// The config of SPEC §6, key for key, must stay valid: it is the product's
/// user interface.
#[test]
fn spec_section_6_config_validates() {
    let dir = tempfile::tempdir().unwrap();
    for f in ["veza_token", "hec_token", "hook_key"] {
        write(&dir.path().join(f), "s3cret\n");
    }
    let cfg = dir.path().join("spec.toml");
    write(
        &cfg,
        &format!(
            r#"
state_dir = "{d}/state"
log_format = "json"
shutdown_timeout = "30s"

[server]
listen = "127.0.0.1:9464"

[sources.veza_prod]
type = "veza"
url = "https://example.vezacloud.com"
token_file = "{d}/veza_token"
page_size = 1000
start_at = "-24h"
poll_interval = "5s"
rate_limit_wait = "60s"
overlap = "5m"
tls = {{ insecure_skip_verify = false }}
retry = {{ initial = "1s", max = "5m" }}

[sinks.splunk]
type = "splunk_hec"
inputs = ["veza_prod"]
endpoint = "https://splunk.example:8088"
token_file = "{d}/hec_token"
index = "security"
sourcetype = "veza:audit"
indexer_ack = true
ack_timeout = "5m"
ack_poll_interval = "10s"
compression = "gzip"
batch = {{ max_events = 500, max_bytes = 800000, timeout = "1s" }}

[sinks.bus]
type = "kafka"
inputs = ["veza_prod"]
brokers = ["kafka-1:9092"]
topic = "audit.veza"
key_field = "request_id"
[sinks.bus.librdkafka]
"security.protocol" = "sasl_ssl"

[sinks.qradar]
type = "syslog"
inputs = ["veza_prod"]
address = "tls://siem.example:6514"
format = "rfc5424"
body = "json"
framing = "octet_counting"
filter = {{ include = ["auth.*"], exclude = ["auth.debug"] }}

[sinks.hook]
type = "webhook"
inputs = ["veza_prod"]
url = "https://hooks.example/audit"
hmac_secret_file = "{d}/hook_key"
retry = {{ initial = "1s", max = "5m" }}

[sinks.debug]
type = "file"
inputs = ["veza_prod"]
path = "/var/log/auditrelay/events.ndjson"
"#,
            d = dir.path().display()
        ),
    );
    let out = auditrelay()
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("1 source [veza_prod (veza)] -> 5 sinks"),
        "{text}"
    );
}

/// `checkpoint show` runs beside a live daemon (it takes no state lock), so
/// it must not touch the daemon's checkpoint temp files: removing one makes
/// the daemon's rename fail and its commit wait for a retry.
#[test]
fn checkpoint_show_leaves_a_running_daemons_temp_files_alone() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo_config(dir.path(), 10);
    let temp_dir = dir.path().join("state/checkpoints/.tmp");
    std::fs::create_dir_all(&temp_dir).unwrap();
    // Named like a write in progress by another process (the daemon).
    let in_progress = temp_dir.join("demo.4194303.7");
    write(&in_progress, "half a checkpoint");
    let show = auditrelay()
        .args(["checkpoint", "show", "--source", "demo", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        show.status.success(),
        "{}",
        String::from_utf8_lossy(&show.stderr)
    );
    assert!(
        in_progress.exists(),
        "checkpoint show removed the temp file of another process's write"
    );
}

#[test]
fn validate_names_a_too_small_in_flight_byte_budget() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("budget.toml");
    write(
        &cfg,
        &format!(
            r#"
state_dir = "{}"
[pipeline]
max_in_flight_bytes = 1000
[sources.d]
type = "demo"
[sinks.out]
type = "stdout"
inputs = ["d"]
"#,
            dir.path().display()
        ),
    );
    let out = auditrelay()
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("pipeline.max_in_flight_bytes: 1000 bytes is too small"),
        "{err}"
    );
}

#[test]
fn validate_names_a_webhook_concurrency_out_of_range() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("hook.toml");
    write(
        &cfg,
        &format!(
            r#"
state_dir = "{}"
[sources.d]
type = "demo"
[sinks.hook]
type = "webhook"
inputs = ["d"]
url = "http://127.0.0.1:1/in"
concurrency = 0
"#,
            dir.path().display()
        ),
    );
    let out = auditrelay()
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("sinks.hook.concurrency: must be between 1 and 256"),
        "{err}"
    );
}

/// `checkpoint set` moves a source to another position, usually back to
/// send a range again: what a sink confirmed before must not be skipped then.
#[test]
fn checkpoint_set_forgets_the_confirmations_of_the_progress_log() {
    use auditrelay::checkpoint::{CheckpointStore, ProgressRecord};
    let dir = tempfile::tempdir().unwrap();
    let cfg = demo_config(dir.path(), 10);
    let store = CheckpointStore::open(&dir.path().join("state")).unwrap();
    let mut log = store.open_progress("demo").unwrap();
    log.append(&[ProgressRecord {
        sink: "out".into(),
        keys: vec![[1; 16]],
    }])
    .unwrap();
    drop(log);
    let set = auditrelay()
        .args([
            "checkpoint",
            "set",
            "--source",
            "demo",
            "--token",
            "0",
            "--config",
        ])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(
        set.status.success(),
        "{}",
        String::from_utf8_lossy(&set.stderr)
    );
    assert!(
        store.load_progress("demo").unwrap().is_empty(),
        "a source set to another position sends its events to every sink again"
    );
}
