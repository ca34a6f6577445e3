//! `[sinks.NAME]` with `type = "kafka"`: keys, their checks, and the
//! librdkafka settings they make.

use std::collections::BTreeMap;
use std::time::Duration;

use rdkafka::config::ClientConfig;
use serde::Deserialize;

use crate::config::Problems;
use crate::secret::SecretSource;

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Compression {
    None,
    Gzip,
    Snappy,
    Lz4,
    #[default]
    Zstd,
}

impl Compression {
    fn as_str(self) -> &'static str {
        match self {
            Compression::None => "none",
            Compression::Gzip => "gzip",
            Compression::Snappy => "snappy",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// A librdkafka property value as TOML may spell it.
#[derive(Clone, Debug, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum PropertyValue {
    Text(String),
    Integer(i64),
    Float(f64),
    Bool(bool),
}

impl PropertyValue {
    fn render(&self) -> String {
        match self {
            PropertyValue::Text(s) => s.clone(),
            PropertyValue::Integer(i) => i.to_string(),
            PropertyValue::Float(f) => f.to_string(),
            PropertyValue::Bool(b) => b.to_string(),
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct KafkaConfig {
    pub brokers: Vec<String>,
    /// Topic name; `{type}`, `{source}` and `{path.to.field}` are replaced
    /// per event (e.g. `audit.{type}`). A missing value renders as `unknown`.
    pub topic: String,
    /// Event path of the message key; the event id when unset.
    pub key_field: Option<String>,
    #[serde(default)]
    pub compression: Compression,
    /// librdkafka's `enable.idempotence`; on by default (implies acks=all).
    #[serde(default = "crate::config::yes")]
    pub idempotence: bool,
    /// How long librdkafka keeps trying one message before reporting it
    /// failed (it is then sent again: nothing is dropped).
    #[serde(default = "crate::config::secs::<120>", with = "humantime_serde")]
    pub message_timeout: Duration,
    /// How often broker connectivity is checked for `/readyz`.
    #[serde(default = "crate::config::secs::<30>", with = "humantime_serde")]
    pub health_interval: Duration,
    /// Properties passed to librdkafka verbatim (SASL, SSL, linger, batch
    /// sizes…); they override the settings above.
    #[serde(default)]
    pub librdkafka: BTreeMap<String, PropertyValue>,
    /// librdkafka properties whose values are secrets, read from files
    /// (`"sasl.password" = "/run/secrets/kafka_password"`).
    #[serde(default)]
    pub librdkafka_secret_files: BTreeMap<String, std::path::PathBuf>,
}

impl KafkaConfig {
    /// The producer settings, ours first so `librdkafka` can override them.
    /// Secret values are read from their files now (so a rotated password is
    /// used by a rebuilt producer); errors name the property, not the value.
    pub(super) fn client_config(&self, sink: &str) -> Result<ClientConfig, String> {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("client.id", format!("auditrelay-{sink}"))
            .set("enable.idempotence", self.idempotence.to_string())
            .set("compression.type", self.compression.as_str())
            .set(
                "message.timeout.ms",
                self.message_timeout.as_millis().to_string(),
            )
            .set("linger.ms", "5");
        for (k, v) in &self.librdkafka {
            c.set(k, v.render());
        }
        for (k, file) in &self.librdkafka_secret_files {
            let value = SecretSource::File(file.clone())
                .load()
                .map_err(|e| format!("{k}: {e}"))?;
            c.set(k, value.expose());
        }
        Ok(c)
    }
}

impl KafkaConfig {
    /// The idempotent producer needs every in-sync replica's ack; librdkafka
    /// only finds the conflict when the producer is created (at run time),
    /// so an `acks` override other than `all` is a config error here.
    pub(super) fn validate_acks(&self, path: &str, problems: &mut Problems) {
        let idempotent = match self.librdkafka.get("enable.idempotence") {
            Some(v) => v.render().trim().eq_ignore_ascii_case("true"),
            None => self.idempotence,
        };
        if !idempotent {
            return;
        }
        for key in ["acks", "request.required.acks"] {
            if let Some(v) = self.librdkafka.get(key) {
                let acks = v.render();
                let acks = acks.trim();
                if !(acks.eq_ignore_ascii_case("all") || acks == "-1") {
                    problems.push(
                        format!("{path}.librdkafka.{key}"),
                        format!(
                            "is {acks}, but the idempotent producer (idempotence = true) needs \
                             acks = all; remove the override or set idempotence = false"
                        ),
                    );
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sink::{SinkCommon, SinkType};

    fn check(cfg: &KafkaConfig) -> Problems {
        let common: SinkCommon = serde_json::from_str(r#"{"inputs":["x"]}"#).unwrap();
        let mut p = Problems::default();
        cfg.validate("sinks.bus", &common, &mut p);
        p
    }

    #[test]
    fn librdkafka_rejects_unknown_properties_at_validate() {
        let mut cfg: KafkaConfig =
            serde_json::from_str(r#"{"brokers":["127.0.0.1:9092"],"topic":"t"}"#).unwrap();
        let p = check(&cfg);
        assert!(p.is_empty(), "{p:?}");
        cfg.librdkafka
            .insert("no.such.property".into(), PropertyValue::Text("1".into()));
        cfg.librdkafka
            .insert("linger.ms".into(), PropertyValue::Integer(10));
        let p = check(&cfg);
        let list = p.into_vec();
        assert_eq!(list.len(), 1);
        assert_eq!(list[0].path, "sinks.bus.librdkafka");
        assert!(
            list[0].message.contains("no.such.property"),
            "{}",
            list[0].message
        );
    }

    #[test]
    fn acks_other_than_all_with_idempotence_is_a_config_error() {
        let mut cfg: KafkaConfig =
            serde_json::from_str(r#"{"brokers":["127.0.0.1:9092"],"topic":"t"}"#).unwrap();
        cfg.librdkafka
            .insert("acks".into(), PropertyValue::Integer(1));
        let p = check(&cfg);
        let list = p.into_vec();
        assert_eq!(list.len(), 1, "{list:?}");
        assert_eq!(list[0].path, "sinks.bus.librdkafka.acks");
        assert!(
            list[0].message.contains("acks = all"),
            "{}",
            list[0].message
        );

        for ok in [
            PropertyValue::Text("all".into()),
            PropertyValue::Integer(-1),
        ] {
            cfg.librdkafka.insert("acks".into(), ok);
            let p = check(&cfg);
            assert!(p.is_empty(), "{p:?}");
        }
        cfg.librdkafka.insert(
            "request.required.acks".into(),
            PropertyValue::Text("0".into()),
        );
        let p = check(&cfg);
        assert_eq!(
            p.into_vec()[0].path,
            "sinks.bus.librdkafka.request.required.acks"
        );

        cfg.idempotence = false;
        let p = check(&cfg);
        assert!(
            p.is_empty(),
            "without idempotence any acks is allowed: {p:?}"
        );
    }
}
