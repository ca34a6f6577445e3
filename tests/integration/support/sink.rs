//! Builds a sink from a config snippet exactly as the daemon does, for tests
//! that drive one sink directly.

use std::path::Path;

use auditrelay::event::Event;
use auditrelay::health::Health;
use auditrelay::sink::{DeadLetters, Sink, SinkContext};
use bytes::Bytes;

/// Builds sink `NAME` from `[sinks.NAME]` keys `sink_toml` (which must set
/// `type`), fed by a demo source `s`, with its state under `dir`.
pub fn build(dir: &Path, name: &str, sink_toml: &str) -> (Box<dyn Sink>, DeadLetters, Health) {
    let cfg_path = dir.join(format!("{name}.toml"));
    std::fs::write(
        &cfg_path,
        format!(
            "state_dir = \"{}\"\n[sources.s]\ntype = \"demo\"\n[sinks.{name}]\ninputs = [\"s\"]\n{sink_toml}\n",
            dir.display()
        ),
    )
    .expect("write config");
    let cfg = auditrelay::config_file::load(&cfg_path).unwrap_or_else(|e| panic!("{e}"));
    let health = Health::default();
    let dl = DeadLetters::new(dir, name)
        .with_max_bytes(cfg.sinks[name].common.dead_letter_max_bytes)
        .with_health(health.clone());
    let sink = cfg.sinks[name]
        .build(SinkContext {
            name: name.into(),
            state_dir: dir.to_path_buf(),
            health: health.clone(),
            dead_letters: dl.clone(),
        })
        .unwrap_or_else(|e| panic!("{e:#}"));
    (sink, dl, health)
}

/// `n` Veza-like events `ev-0000`… with a type, starting at `first`.
pub fn events(first: usize, n: usize) -> Vec<Event> {
    (first..first + n)
        .map(|i| Event {
            raw: Bytes::from(format!(
                "{{\"request_id\":\"ev-{i:04}\",\"endpoint\":\"/api.UserService/Login\",\"note\":\"line\\nbreak\"}}"
            )),
            id: Some(format!("ev-{i:04}").into()),
            time: None,
            kind: Some("/api.UserService/Login".into()),
        })
        .collect()
}
