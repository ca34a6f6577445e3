//! Veza's audit-log list (`GET /api/preview/system/audit`), for one-shot
//! backfills of a time range: `filter=ended_at GE "<from>" and ended_at LT
//! "<to>"` with `page_size`, then each `next_page_token` (the filter is sent
//! every time: this endpoint always requires one). Results come in order of
//! completion time; the API serves at most 90 days back, which is checked
//! before anything is sent.
//!
//! The checkpoint holds the range and the token of the next page, so an
//! interrupted backfill resumes where it stopped; the source is finished
//! when a page has no next token or reaches the end of the range.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use tracing::{info, warn};

use super::pull::{
    count_fresh, dedup_key, fresh, report_before_window, snippet, Fetcher, PullCommon, PullConfig,
    PullDefaults, PullKind, SeenSet,
};
use super::veza::{self, VezaConfig};
use super::{read_checkpoint, ManualPosition, Paths, Source, SourceContext, StartAt};
use crate::config::Problems;
use crate::event::{scalar_text, Batch, Event, FieldExtractor, FieldPath};
use crate::serde_defaults::serde_defaults;

/// How far back the list endpoint serves.
pub const MAX_AGE_DAYS: i64 = 90;

/// `[sources.NAME]` with `type = "veza_list"`.
pub type VezaListConfig = PullConfig<VezaList>;

/// The keys of a `veza_list` source besides [`super::pull::PullCommon`]
/// (which it takes without the window keys: it walks a fixed range).
#[derive(Clone, Debug, Deserialize)]
pub struct VezaList {
    #[serde(default = "veza::default_page_size")]
    pub page_size: u32,
    /// Start of the range (`auditrelay backfill --from` overrides it): RFC
    /// 3339, `now` or a negative duration.
    #[serde(default = "default_from")]
    pub from: String,
    /// End of the range, exclusive (`--to` overrides it); default: when the
    /// backfill starts.
    pub to: Option<String>,
    #[serde(default = "default_path")]
    pub path: String,
    #[serde(default = "veza::default_token_param")]
    pub token_param: String,
    #[serde(default = "veza::default_items_path")]
    pub items_path: String,
    #[serde(default = "veza::default_next_token_path")]
    pub next_token_path: String,
}

/// The list endpoint reports completion times.
const TIME_PATH: &[&str] = &["ended_at", "timestamp"];

impl VezaList {
    /// The range of this config, at `now`.
    pub fn range(&self, now: DateTime<Utc>) -> Result<Range, String> {
        let from = parse_bound(&self.from, now).map_err(|e| format!("from: {e}"))?;
        let to = match &self.to {
            Some(t) => parse_bound(t, now).map_err(|e| format!("to: {e}"))?,
            None => now,
        };
        Range::check(from, to, now)
    }
}

impl PullKind for VezaList {
    const KIND: &'static str = "veza_list";

    const DEFAULTS: PullDefaults = PullDefaults {
        id_path: veza::ID_PATH,
        time_path: TIME_PATH,
        type_path: veza::TYPE_PATH,
        window: false,
        token_missing: Some(veza::TOKEN_MISSING),
        ..PullDefaults::BASE
    };

    fn validate(&self, path: &str, _common: &PullCommon, problems: &mut Problems) {
        let names = [&self.token_param, &self.items_path, &self.next_token_path];
        veza::validate_page_keys(path, self.page_size, &self.path, names, problems);
        if let Err(e) = self.range(Utc::now()) {
            problems.push(format!("{path}.from"), e);
        }
    }

    fn manual_checkpoint(&self, _at: ManualPosition) -> Result<Vec<u8>, String> {
        Err(
            "a veza_list source walks a fixed range; use `auditrelay backfill` for another range"
                .into(),
        )
    }

    /// The daemon's backfill: the stored range, else the config's.
    fn build(config: &VezaListConfig, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        let label = ctx.name.clone();
        let source = VezaListSource::new(config.clone(), ctx, &label, None)?;
        Ok(Box::new(source))
    }
}

serde_defaults! {
    fn default_from() -> String = "-24h".into();
    fn default_path() -> String = "/api/preview/system/audit".into();
}

/// A backfill range, checked against the API's 90-day limit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Range {
    pub from: DateTime<Utc>,
    pub to: DateTime<Utc>,
}

impl Range {
    /// Checks a range before any request: `from < to`, `from` within the
    /// last 90 days.
    pub fn check(
        from: DateTime<Utc>,
        to: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<Range, String> {
        let oldest = now - chrono::Duration::days(MAX_AGE_DAYS);
        if from < oldest {
            return Err(format!(
                "--from {} is {} days ago; the Veza audit list API serves only the last {MAX_AGE_DAYS} days (from {} on)",
                from.to_rfc3339_opts(SecondsFormat::Secs, true),
                (now - from).num_days(),
                oldest.to_rfc3339_opts(SecondsFormat::Secs, true)
            ));
        }
        if from >= to {
            return Err(format!(
                "--from {} is not before --to {}",
                from.to_rfc3339_opts(SecondsFormat::AutoSi, true),
                to.to_rfc3339_opts(SecondsFormat::AutoSi, true)
            ));
        }
        Ok(Range { from, to })
    }
}

/// Reads `from`/`to` as RFC 3339, `now` or a negative duration.
pub fn parse_bound(text: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, String> {
    StartAt::parse(text).map(|s| s.resolve(now))
}

impl VezaListConfig {
    /// The list-endpoint settings of a `veza` (export) source, for a
    /// backfill of its tenant: same token, client and page keys.
    pub fn from_export(v: &VezaConfig) -> Self {
        let mut common = v.common.clone();
        common.time_path = Paths::of(TIME_PATH);
        PullConfig {
            common,
            own: VezaList {
                page_size: v.page_size,
                from: default_from(),
                to: None,
                path: default_path(),
                token_param: v.token_param.clone(),
                items_path: v.items_path.clone(),
                next_token_path: v.next_token_path.clone(),
            },
        }
    }
}

/// The checkpoint of a backfill.
#[derive(Clone, Debug, Deserialize, Serialize)]
struct State {
    range: Range,
    /// Token of the next page; none before the first.
    token: Option<String>,
    /// The last page was read.
    done: bool,
    /// Ids of the last page, dropped if a retried page repeats them.
    #[serde(default)]
    seen: SeenSet,
}

impl State {
    fn new(range: Range) -> State {
        State {
            range,
            token: None,
            done: false,
            seen: SeenSet::new(20_000),
        }
    }
}

pub struct VezaListSource {
    /// Name the events are labelled with (the configured source).
    label: Arc<str>,
    cfg: VezaListConfig,
    fetcher: Fetcher,
    url: url::Url,
    extractor: FieldExtractor,
    items_path: FieldPath,
    next_token_path: FieldPath,
    state: State,
}

impl VezaListSource {
    /// A backfill of `range` for the source `label`; `ctx.name` keys its
    /// checkpoint, which is resumed when it is for the same range. Without
    /// `range` (the daemon), the stored range or else the config's.
    pub fn new(
        cfg: VezaListConfig,
        ctx: SourceContext,
        label: &str,
        range: Option<Range>,
    ) -> anyhow::Result<Self> {
        let path = format!("sources.{label}");
        let common = &cfg.common;
        let url = common.endpoint(&cfg.path, &path)?;
        let items_path = FieldPath::of_key(&cfg.items_path, &format!("{path}.items_path"))?;
        let next_token_path =
            FieldPath::of_key(&cfg.next_token_path, &format!("{path}.next_token_path"))?;
        let stored: Option<State> = read_checkpoint(
            &ctx.name,
            ctx.checkpoint.as_deref(),
            "a Veza backfill state",
        )?;
        let state = match (stored, range) {
            // A backfill command names its range: resume only that one.
            (Some(s), Some(r)) if s.range == r => {
                info!(source = %label, done = s.done, "resuming the backfill of this range from its checkpoint");
                s
            }
            (Some(s), Some(r)) => {
                warn!(source = %label, stored_from = %s.range.from.to_rfc3339(), stored_to = %s.range.to.to_rfc3339(), "the stored backfill checkpoint is for another range; starting this one from the beginning");
                State::new(r)
            }
            (None, Some(r)) => State::new(r),
            // In the daemon the range is fixed at the first start.
            (Some(s), None) => {
                info!(source = %label, from = %s.range.from.to_rfc3339(), to = %s.range.to.to_rfc3339(), done = s.done, "continuing the range fixed at the first start (from/to in the config apply to a fresh checkpoint only)");
                s
            }
            (None, None) => State::new(
                cfg.range(Utc::now())
                    .map_err(|e| anyhow::anyhow!("{path}: {e}"))?,
            ),
        };
        let advice = |status, body: &str| {
            format!("the Veza API rejected the token with HTTP {status} ({body}); put a valid API key with audit-log read access in place")
        };
        let fetcher = Fetcher::new(cfg.fetcher_config(&ctx.name, &ctx.health, &path, advice)?)?;
        Ok(VezaListSource {
            label: label.into(),
            extractor: common.extractor(&path)?,
            cfg,
            fetcher,
            url,
            items_path,
            next_token_path,
            state,
        })
    }

    pub fn range(&self) -> Range {
        self.state.range
    }

    /// The events of one page and its next-page token, or why the page is
    /// not understood (also the entry point of fuzzing and the corpus test).
    pub(crate) fn parse_page(&self, body: &Bytes) -> Result<(Vec<Event>, Option<String>), String> {
        let root = serde_json::from_slice::<&RawValue>(body)
            .map_err(|e| format!("body is not JSON ({e}): {}", snippet(body)))?;
        let items: Vec<&RawValue> = match self.items_path.lookup(root) {
            Some(v) if v.get() != "null" => serde_json::from_str(v.get())
                .map_err(|e| format!("\"{}\" is not a list: {e}", self.items_path))?,
            Some(_) => Vec::new(),
            None => {
                return Err(format!(
                    "no \"{}\" member: {}",
                    self.items_path,
                    snippet(body)
                ))
            }
        };
        let next = self
            .next_token_path
            .lookup(root)
            .and_then(|v| scalar_text(v).map(|t| t.into_owned()))
            .filter(|t| !t.is_empty());
        let events = items
            .into_iter()
            .map(|i| self.extractor.event(body, i))
            .collect();
        Ok((events, next))
    }

    fn filter(&self) -> String {
        let f = |t: DateTime<Utc>| t.to_rfc3339_opts(SecondsFormat::AutoSi, true);
        format!(
            "ended_at GE \"{}\" and ended_at LT \"{}\"",
            f(self.state.range.from),
            f(self.state.range.to)
        )
    }
}

#[async_trait]
impl Source for VezaListSource {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        loop {
            if self.state.done {
                return Ok(None);
            }
            let mut query = vec![
                ("filter", self.filter()),
                ("page_size", self.cfg.page_size.to_string()),
            ];
            if let Some(t) = &self.state.token {
                query.push((self.cfg.token_param.as_str(), t.clone()));
            }
            let query: Vec<(String, String)> =
                query.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
            let reply = self.fetcher.get_json(&self.url, &query).await;
            let hint = "check url, the range and page_size";
            let Some(reply) = self.fetcher.accepted(reply, hint).await else {
                continue;
            };
            let (mut events, next) = match self.parse_page(&reply.body) {
                Ok(x) => x,
                Err(why) => {
                    self.fetcher.retry_later(&why).await;
                    continue;
                }
            };
            let returned = events.len();
            // Ordered by completion time: an event at or past the end means
            // the range is done (should the API ignore the upper bound).
            let to = self.state.range.to;
            let past_end = events.iter().any(|e| e.time.is_some_and(|t| t >= to));
            events.retain(|e| e.time.is_none_or(|t| t < to));
            let in_range = events.len();
            if in_range < returned {
                let after = (returned - in_range) as u64;
                crate::metrics::metrics()
                    .events_dropped
                    .with_label_values(&[&self.label, crate::metrics::DROPPED_AFTER_WINDOW])
                    .inc_by(after);
                info!(source = %self.label, dropped = after, to = %to.to_rfc3339(), "entries at or past the end of the backfill range were not delivered (the live source covers them)");
            }
            let found = fresh(&self.state.seen, events, Some(self.state.range.from));
            count_fresh(&self.label, in_range, &found);
            report_before_window(&self.label, &found);
            self.fetcher.count_answer(!found.events.is_empty());
            let mut seen = SeenSet::new(20_000);
            for ev in &found.events {
                seen.insert(&dedup_key(ev), ev.time);
            }
            self.state.seen = seen;
            self.state.done = past_end || next.is_none() || returned == 0;
            if next.is_some() {
                self.state.token = next;
            }
            let checkpoint = serde_json::to_vec(&self.state)?;
            if found.events.is_empty() {
                if self.state.done {
                    // Nothing left to deliver: the last batch already
                    // carried the state that matters.
                    return Ok(None);
                }
                continue;
            }
            let newest_time = found.events.iter().filter_map(|e| e.time).max();
            return Ok(Some(Batch {
                source: self.label.clone(),
                events: found.events,
                checkpoint: checkpoint.into(),
                newest_time,
                fetched_at: Instant::now(),
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_90_day_limit_is_checked_up_front() {
        let now = Utc::now();
        let days = |d: i64| now - chrono::Duration::days(d);
        assert!(Range::check(days(89), now, now).is_ok());
        let e = Range::check(days(91), days(80), now).unwrap_err();
        assert!(
            e.contains("91 days ago") && e.contains("last 90 days"),
            "{e}"
        );
        let e = Range::check(days(2), days(3), now).unwrap_err();
        assert!(e.contains("is not before"), "{e}");
    }
}
