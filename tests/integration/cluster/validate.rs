//! `auditrelay validate` on `[cluster]` configs: every problem with its key
//! path, host-local state refused, and no `[cluster]` = no change.

use std::process::Command;

fn validate(toml: &str) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        toml.replace("{dir}", &dir.path().display().to_string()),
    )
    .expect("write");
    let out = Command::new(env!("CARGO_BIN_EXE_auditrelay"))
        .args(["validate", "--config"])
        .arg(&cfg)
        .output()
        .expect("run");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.code(), text)
}

const SOURCES_AND_SINKS: &str = r#"
state_dir = "{dir}/state"
[sources.demo]
type = "demo"
[sources.hooks]
type = "webhook_in"
listen = "127.0.0.1:0"
hmac_secret_env = "HOME"
[sinks.out]
type = "file"
inputs = ["demo", "hooks"]
path = "{dir}/out"
on_unavailable = "spool"
"#;

#[test]
fn cluster_problems_and_host_local_state_are_named_by_key_path() {
    let (code, text) = validate(&format!(
        "{SOURCES_AND_SINKS}\n[cluster]\nbackend = \"etcd\"\nname = \"p\"\nlease_ttl = \"1s\"\nbogus = 1\n\
         [cluster.etcd]\nendpoints = []\n"
    ));
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("cluster.bogus: unknown key"), "{text}");
    let (code, text) = validate(&format!(
        "{SOURCES_AND_SINKS}\n[cluster]\nbackend = \"etcd\"\nname = \"p\"\nlease_ttl = \"1s\"\n\
         [cluster.etcd]\nendpoints = []\n"
    ));
    assert_eq!(code, Some(2), "{text}");
    for expected in [
        "cluster.lease_ttl: must be at least 3s",
        "cluster.etcd.endpoints: needs at least one endpoint",
        "sinks.out.on_unavailable: \"spool\" keeps batches on this host only",
        "sources.hooks.type: webhook_in receives pushes into a spool on this host",
    ] {
        assert!(text.contains(expected), "{expected} missing:\n{text}");
    }
}

#[test]
fn without_cluster_the_same_sources_and_sinks_stay_valid() {
    let (code, text) = validate(SOURCES_AND_SINKS);
    assert!(!text.contains("cluster"), "{text}");
    assert_eq!(code, Some(0), "{text}");
}
