//! What a sink is: the [`Sink`] the pipeline delivers to, and the
//! [`SinkType`] its config implements to be registered in one line.

use std::fmt::Debug;
use std::ops::Range;
use std::path::PathBuf;
use std::time::SystemTime;

use async_trait::async_trait;
use figment::Figment;
use serde::de::DeserializeOwned;

use super::common::SinkCommon;
use super::dead_letter::DeadLetters;
use crate::config::{extract_section, struct_fields, Problem, Problems};
use crate::event::Event;
use crate::health::Health;

/// A destination that confirms what it received.
#[async_trait]
pub trait Sink: Send + Sync {
    /// Delivers `events` (all from `source`), returning only once each one is
    /// confirmed by the destination or written to the dead-letter file.
    /// Transient failures are retried inside, with backoff, for as long as it
    /// takes. An `Err` means no progress is possible for a local reason (the
    /// dead-letter file cannot be written); the pipeline retries the call.
    /// Called concurrently for several batches.
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()>;

    /// [`Self::deliver`], also reporting each request the destination
    /// accepted but has not confirmed yet ([`Tracked::pending`]), which
    /// [`Self::resolve_pending`] understands after a restart.
    /// Only a sink whose destination can be asked later reports anything
    /// (HEC with indexer acknowledgment); the report is a claim of sending,
    /// never of confirmation. A sink that confirms before the destination
    /// has the events (a spool) reports nothing.
    async fn deliver_tracked(&self, call: Tracked<'_>) -> anyhow::Result<()> {
        self.deliver(call.source, call.events).await
    }

    /// Which of `requests` (reported pending by an earlier run's
    /// [`Self::deliver_tracked`]) the destination confirms now, one answer
    /// each, in order. Called once at a start, before the refetched pages
    /// are delivered; the sink bounds how long it asks. `false` means "send
    /// again" (duplicates, never loss), so that is the answer whenever in
    /// doubt, and the default.
    async fn resolve_pending(&self, requests: &[PendingRequest]) -> Vec<bool> {
        vec![false; requests.len()]
    }

    /// Whether batches of a source must reach this sink in fetch order. Then
    /// the pipeline hands it one batch of a source at a time; otherwise up
    /// to `max_in_flight` batches at once (throughput over order).
    fn ordered(&self) -> bool {
        true
    }

    /// Whether the destination is reachable now, without sending an event
    /// (`validate --online`). Sinks without a cheap probe say yes.
    async fn healthcheck(&self) -> anyhow::Result<()> {
        Ok(())
    }

    /// Waits until what the sink confirmed but still holds locally (a
    /// spool) has reached the destination. Called when every source has
    /// finished, before the daemon exits.
    async fn flush(&self) {}

    /// Ends the sink's connections in order once nothing delivers through
    /// it any more: at a stop, and when a reload drops or replaces it. The
    /// caller bounds how long it may take (a cut-off close must leave
    /// nothing worse than an abrupt one).
    async fn close(&self) {}
}

/// Where [`Sink::deliver_tracked`] reports a request awaiting confirmation:
/// the events of the call it carried, and the destination's name for it.
pub type PendingReport<'a> = &'a (dyn Fn(Range<usize>, Vec<u8>) + Send + Sync);

/// One [`Sink::deliver_tracked`] call, bundled so that every sink and
/// wrapper passing it on names it once.
#[derive(Clone, Copy)]
pub struct Tracked<'a> {
    pub source: &'a str,
    /// All from `source`.
    pub events: &'a [Event],
    /// `pending(range, token)` says `events[range]` went out in a request
    /// the destination knows by `token`.
    pub pending: PendingReport<'a>,
}

impl<'a> Tracked<'a> {
    /// A call whose pending requests nobody keeps: what a plain
    /// [`Sink::deliver`] of a tracking sink amounts to.
    pub fn untracked(source: &'a str, events: &'a [Event]) -> Self {
        fn ignore(_: Range<usize>, _: Vec<u8>) {}
        Tracked {
            source,
            events,
            pending: &ignore,
        }
    }
}

/// A request an earlier run reported pending ([`Sink::deliver_tracked`]).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingRequest {
    pub token: Vec<u8>,
    /// When it was sent (as recorded; the clock may have moved since).
    pub sent: SystemTime,
}

/// What a sink is given when it is built.
pub struct SinkContext {
    pub name: String,
    pub state_dir: PathBuf,
    pub health: Health,
    pub dead_letters: DeadLetters,
}

#[cfg(test)]
impl SinkContext {
    /// The context of sink `name` under test: its state and dead letters in
    /// `dir`, a health of its own.
    pub(crate) fn in_dir(dir: &std::path::Path, name: &str) -> SinkContext {
        SinkContext {
            name: name.into(),
            state_dir: dir.to_path_buf(),
            health: Health::default(),
            dead_letters: DeadLetters::new(dir, name),
        }
    }
}

/// The keys of one sink type (`[sinks.NAME]` with `type = KIND`, beside the
/// shared keys of [`SinkCommon`]). Implementing it and adding one line to
/// `register_sinks!` in `sink/mod.rs` is all a new sink needs outside its
/// own file.
pub trait SinkType: DeserializeOwned + Clone + Debug + Send + Sync + 'static {
    /// The value of `type` that selects this sink.
    const KIND: &'static str;

    /// Reads this type's keys of the section at `path` (`sinks.NAME`),
    /// reporting every key that is neither its own nor shared, and bad
    /// values, with their key path.
    fn read(fig: &Figment, path: &str) -> Result<Self, Vec<Problem>> {
        extract_section(fig, path, &[struct_fields::<SinkCommon>(), &["type"]])
    }

    /// Reports the values serde accepts but this sink cannot use (the
    /// shared keys are checked already). Required even when there is
    /// nothing to check, so a forgotten check cannot pass silently.
    fn validate(&self, path: &str, common: &SinkCommon, problems: &mut Problems);

    /// The running sink.
    fn build(&self, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Box<dyn Sink>>;
}

/// The methods of [`SinkType`] that need no `Self` type, callable on a
/// config of any registered type (`SinkKind::component()`).
pub trait AnySink {
    fn validate(&self, path: &str, common: &SinkCommon, problems: &mut Problems);
    fn build(&self, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Box<dyn Sink>>;
}

impl<T: SinkType> AnySink for T {
    fn validate(&self, path: &str, common: &SinkCommon, problems: &mut Problems) {
        SinkType::validate(self, path, common, problems)
    }
    fn build(&self, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Box<dyn Sink>> {
        SinkType::build(self, common, ctx)
    }
}
