//! CertifyClouds audit trail: `GET /audit/entries?start_date&end_date&limit&offset`
//! (optional `event_type` and `actor` filters).
//!
//! Each pass asks for the window from the watermark (newest delivered
//! `timestamp`) minus `overlap` to the instant the pass began, page by page
//! with `offset +=` the entries returned, until a page is provably the last:
//! empty, or shorter than the `limit` the answer echoes when that is below
//! what was asked (servers clamp `limit` silently and may change the clamp,
//! so neither `page_size` nor earlier pages prove anything). Entries inserted
//! while paging shift the offsets, so a page can repeat entries of the one
//! before: those, and everything delivered in an earlier pass, are dropped
//! by `id`. Every page is a batch whose checkpoint holds the pass (window
//! and next offset), so a restart continues the walk; the watermark moves
//! only when a pass is complete, since the order of the pages is not
//! documented.

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{debug, info};

use super::pull::{
    find_items, page_is_last, snippet, After, Fetcher, PullCommon, PullConfig, PullDefaults,
    PullKind, Stop, TimeFormat, Walker, WindowState,
};
use super::{Source, SourceContext};
use crate::config::Problems;
use crate::event::{Batch, Event, FieldExtractor, FieldPath};
use crate::serde_defaults::serde_defaults;

/// `[sources.NAME]` with `type = "certifyclouds"`.
pub type CertifycloudsConfig = PullConfig<Certifyclouds>;

/// The keys of a `certifyclouds` source besides [`super::pull::PullCommon`].
#[derive(Clone, Debug, Deserialize)]
pub struct Certifyclouds {
    #[serde(default = "default_path")]
    pub path: String,
    /// `limit` of each page.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
    /// Which page ends a pass: `short_page` or `empty_page`.
    #[serde(default)]
    pub stop: Stop,
    /// Only entries of this event type (`event_type` parameter).
    pub event_type: Option<String>,
    /// Only entries of this actor (`actor` parameter).
    pub actor: Option<String>,
    /// How `start_date`/`end_date` are written; with `date` (whole days)
    /// `end_date` is not sent, so today's entries are not cut off.
    #[serde(default)]
    pub time_format: TimeFormat,
    /// Send `end_date` (the instant the pass began) so entries newer than
    /// the pass do not shift its pages.
    #[serde(default = "crate::config::yes")]
    pub send_end_date: bool,
    /// Where the entries are in the answer; unset = a top-level array, or
    /// the first array among `entries`, `items`, `data`, `results`.
    pub items_path: Option<String>,
}

impl PullKind for Certifyclouds {
    const KIND: &'static str = "certifyclouds";

    const DEFAULTS: PullDefaults = PullDefaults {
        token_missing: Some("the CertifyClouds API needs a bearer token: set token_file, token_env or token_credential"),
        ..PullDefaults::BASE
    };

    fn validate(&self, path: &str, _common: &PullCommon, problems: &mut Problems) {
        if !self.path.starts_with('/') {
            problems.push(format!("{path}.path"), "must start with /");
        }
        if !(1..=10_000).contains(&self.page_size) {
            problems.push(format!("{path}.page_size"), "must be between 1 and 10000");
        }
        if matches!(self.time_format, TimeFormat::Unix | TimeFormat::UnixMs) {
            problems.push(
                format!("{path}.time_format"),
                "start_date/end_date are ISO 8601: use rfc3339, rfc3339_seconds or date",
            );
        }
        if let Some(p) = &self.items_path {
            FieldPath::check(p, &format!("{path}.items_path"), problems);
        }
    }

    fn build(config: &CertifycloudsConfig, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(CertifycloudsSource::new(config.clone(), ctx)?))
    }
}

serde_defaults! {
    fn default_path() -> String = "/audit/entries".into();
    fn default_page_size() -> u32 = 500;
}

fn advice(status: u16, body: &str) -> String {
    format!(
        "CertifyClouds refused the token with HTTP {status} ({body}): it is invalid, expired, \
         or lacks permission to read the audit log"
    )
}

/// Where the entries may be when `items_path` is not set.
const ITEM_CANDIDATES: &[&str] = &["entries", "items", "data", "results", "audit_entries"];

pub struct CertifycloudsSource {
    cfg: CertifycloudsConfig,
    walk: Walker,
    url: url::Url,
    extractor: FieldExtractor,
    items_path: Option<FieldPath>,
}

impl CertifycloudsSource {
    pub fn new(cfg: CertifycloudsConfig, ctx: SourceContext) -> anyhow::Result<Self> {
        let path = ctx.key_path();
        let common = &cfg.common;
        let url = common.endpoint(&cfg.path, &path)?;
        let items_path = cfg
            .items_path
            .as_deref()
            .map(|p| FieldPath::of_key(p, &format!("{path}.items_path")))
            .transpose()?;
        let state = WindowState::of_context(&ctx, "CertifyClouds", common.recent_ids)?;
        let fetcher = Fetcher::new(cfg.fetcher_config(&ctx.name, &ctx.health, &path, advice)?)?;
        let walk = Walker::new(fetcher, state, common, common.start(&path)?);
        info!(source = %walk.name, resume = walk.resume(), "certifyclouds source ready");
        Ok(CertifycloudsSource {
            extractor: common.extractor(&path)?,
            cfg,
            walk,
            url,
            items_path,
        })
    }

    /// The query of the current page (waiting for the next pass first).
    async fn query(&mut self) -> Vec<(&'static str, String)> {
        let cfg = &self.cfg;
        let pass = self.walk.pass().await;
        let offset = pass.cursor.clone().unwrap_or_else(|| "0".into());
        let mut q = vec![("start_date", cfg.time_format.format(pass.start))];
        if cfg.send_end_date && cfg.time_format != TimeFormat::Date {
            q.push(("end_date", cfg.time_format.format(pass.end)));
        }
        if let Some(t) = &cfg.event_type {
            q.push(("event_type", t.clone()));
        }
        if let Some(a) = &cfg.actor {
            q.push(("actor", a.clone()));
        }
        q.push(("limit", cfg.page_size.to_string()));
        q.push(("offset", offset));
        q
    }

    /// The events of one page, or why it is not one (also the entry point
    /// of fuzzing and the corpus test).
    #[cfg(feature = "fuzzing")]
    pub(crate) fn parse_page(&self, body: &Bytes) -> Result<Vec<Event>, String> {
        self.parse_page_and_limit(body).map(|(events, _)| events)
    }

    /// The events of one page and the `limit` the envelope echoes, if any.
    fn parse_page_and_limit(&self, body: &Bytes) -> Result<(Vec<Event>, Option<usize>), String> {
        let root = serde_json::from_slice::<&RawValue>(body)
            .map_err(|e| format!("body is not JSON ({e}): {}", snippet(body)))?;
        let echoed = if root.get().starts_with('{') {
            crate::event::get_field(root, "limit").and_then(|v| v.get().parse::<usize>().ok())
        } else {
            None
        };
        let items = find_items(
            root,
            self.items_path.as_ref(),
            ITEM_CANDIDATES,
            "entries",
            false,
        )?;
        let events = items
            .into_iter()
            .map(|i| self.extractor.event(body, i))
            .collect();
        Ok((events, echoed))
    }
}

#[async_trait]
impl Source for CertifycloudsSource {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        loop {
            let query = self.query().await;
            let reply = self.walk.fetcher.get_json(&self.url, &query).await;
            let hint = "check url, path, filters and page_size";
            let Some(reply) = self.walk.fetcher.accepted(reply, hint).await else {
                continue;
            };
            let (events, echoed) = match self.parse_page_and_limit(&reply.body) {
                Ok(page) => page,
                Err(why) => {
                    self.walk.fetcher.retry_later(&why).await;
                    continue;
                }
            };
            let returned = events.len();
            let last = page_is_last(self.cfg.stop, self.cfg.page_size as usize, returned, echoed);
            debug!(source = %self.walk.name, offset = self.walk.cursor().unwrap_or("0"), returned, echoed_limit = ?echoed, "certifyclouds page");
            // From the offset of this page's last entry, which the next
            // page must hold: advances by what the server returned (a
            // clamped page skips nothing) and notices entries moving back.
            if let Some(batch) = self.walk.take(events, After::Offset { last }) {
                return Ok(Some(batch));
            }
        }
    }
}
