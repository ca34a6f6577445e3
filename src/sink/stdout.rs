//! NDJSON on standard output: for demos, debugging and sidecar log shipping
//! (the container runtime collects stdout). Logs go to stderr, so the two
//! never interleave.

use std::io::Write;
use std::sync::Arc;

use async_trait::async_trait;
use serde::Deserialize;

use super::{Sink, SinkCommon, SinkContext};
use crate::event::Event;
use crate::format::ndjson;
use crate::metrics::metrics;

#[derive(Clone, Debug, Default, Deserialize)]
pub struct StdoutConfig {}

pub struct StdoutSink {
    name: Arc<str>,
}

impl StdoutSink {
    pub fn new(_cfg: StdoutConfig, _common: &SinkCommon, ctx: SinkContext) -> Self {
        ctx.health.register(&format!("sink.{}", ctx.name));
        StdoutSink {
            name: ctx.name.into(),
        }
    }
}

#[async_trait]
impl Sink for StdoutSink {
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
        let buf = ndjson::lines(events);
        tokio::task::spawn_blocking(move || {
            let mut out = std::io::stdout().lock();
            out.write_all(&buf)?;
            out.flush()
        })
        .await??;
        let m = metrics();
        m.sink_requests.with_label_values(&[&self.name, "ok"]).inc();
        m.events_delivered
            .with_label_values(&[&self.name, source])
            .inc_by(events.len() as u64);
        Ok(())
    }
}

impl super::SinkType for StdoutConfig {
    const KIND: &'static str = "stdout";

    /// Stdout has no keys of its own.
    fn validate(&self, _path: &str, _common: &SinkCommon, _problems: &mut crate::config::Problems) {
    }

    fn build(&self, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(StdoutSink::new(self.clone(), common, ctx)))
    }
}
