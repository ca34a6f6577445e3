//! Sinks: where events go.
//!
//! A sink is a [`Sink`] implementation in one file of this directory, whose
//! config implements [`SinkType`], plus its line in `register_sinks!` below
//! (and the `pub mod` that declares the file). The keys every sink shares
//! live in [`SinkCommon`]; a sink's own keys live in its config struct next
//! to its code.

mod common;
mod component;
pub mod dead_letter;
pub mod delivery;
pub mod file;
pub mod kafka;
mod registry;
pub mod shaping;
pub mod splunk_hec;
pub mod spooling;
pub mod stdout;
pub mod syslog;
pub mod webhook;

use figment::Figment;

pub use common::{
    BatchConfig, FilterConfig, OcsfRaw, OnUnavailable, RedactMode, Schema, SinkCommon,
};
pub use component::{AnySink, PendingReport, PendingRequest, Sink, SinkContext, SinkType, Tracked};
pub use dead_letter::DeadLetters;

use crate::config::{figment_problems, read_both, read_type, type_problem, Problem, Problems};

registry::register_sinks! {
    Stdout(stdout::StdoutConfig),
    File(file::FileConfig),
    Webhook(webhook::WebhookConfig),
    Kafka(kafka::KafkaConfig),
    SplunkHec(splunk_hec::SplunkHecConfig),
    Syslog(syslog::SyslogConfig),
}

/// `[sinks.NAME]`: the shared keys plus the keys of its type.
#[derive(Clone, Debug)]
pub struct SinkConfig {
    pub common: SinkCommon,
    pub kind: SinkKind,
}

impl SinkConfig {
    pub fn from_figment(fig: &Figment, path: &str) -> Result<Self, Vec<Problem>> {
        let kind = read_type(fig, path, KINDS)?;
        let kind_result = SinkKind::read_kind(&kind, fig, path).unwrap_or_else(|| {
            Err(type_problem(
                path,
                format!(
                    "unknown sink type \"{kind}\" (available: {})",
                    KINDS.join(", ")
                ),
            ))
        });
        // Shared keys are read without the unknown-key check: the kind's
        // section read above already reported every unknown key once.
        let common = fig.extract_inner::<SinkCommon>(path).map_err(|e| {
            let mut list = figment_problems(e, path);
            for p in &mut list {
                if p.path.ends_with(".inputs") && p.message.starts_with("required key") {
                    p.message =
                        "required key is missing (the names of the sources this sink takes)".into();
                }
            }
            list
        });
        let (kind, common) = read_both(kind_result, common)?;
        Ok(SinkConfig { common, kind })
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if self.common.inputs.is_empty() {
            problems.push(
                format!("{path}.inputs"),
                "lists no source; name at least one",
            );
        }
        self.common.batch.validate(path, problems);
        self.common.retry.validate(path, problems);
        self.common.tls.validate(path, problems);
        if self.common.on_unavailable == OnUnavailable::Spool {
            if self.common.spool_max_bytes < spooling::MIN_MAX_BYTES {
                problems.push(
                    format!("{path}.spool_max_bytes"),
                    format!(
                        "{} bytes is too small for a spool; use at least {} (16 MiB)",
                        self.common.spool_max_bytes,
                        spooling::MIN_MAX_BYTES
                    ),
                );
            }
            if self.common.spool_after.is_zero() {
                problems.push(
                    format!("{path}.spool_after"),
                    "must be longer than 0s (a delivery needs some time to confirm)",
                );
            }
        }
        shaping::validate(&self.common, path, problems);
        self.kind.component().validate(path, &self.common, problems);
    }

    pub fn build(&self, ctx: SinkContext) -> anyhow::Result<Box<dyn Sink>> {
        self.kind.component().build(&self.common, ctx)
    }
}
