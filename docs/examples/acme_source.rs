//! Acme audit events: `GET /v1/audit?since&until&limit&cursor`; each answer
//! is `{"events": [...], "next": "<cursor>"}`, and no `next` ends the pass.
//!
//! The example of docs/writing-a-source.md: compiled and tested with the
//! crate's unit tests (`cargo test --lib source::pull::acme_example`), so
//! the guide cannot drift from the core it describes.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::config::Problems;
use crate::event::{get_field, scalar_text, Batch, Event, FieldExtractor};
use crate::source::pull::{
    find_items, snippet, After, Fetcher, Next, PullCommon, PullConfig, PullDefaults, PullKind,
    TimeFormat, Walker, WindowState,
};
use crate::source::{Source, SourceContext};

/// `[sources.NAME]` with `type = "acme"`: the shared keys plus [`Acme`].
pub type AcmeConfig = PullConfig<Acme>;

/// The keys only Acme has.
#[derive(Clone, Debug, Deserialize)]
pub struct Acme {
    /// `limit` of each page.
    #[serde(default = "default_page_size")]
    pub page_size: u32,
}

fn default_page_size() -> u32 {
    200
}

impl PullKind for Acme {
    const KIND: &'static str = "acme";

    // Only what differs from the usual defaults.
    const DEFAULTS: PullDefaults = PullDefaults {
        poll_interval: Duration::from_secs(15),
        time_path: &["created"],
        token_missing: Some("Acme needs an API key: set token_file, token_env or token_credential"),
        ..PullDefaults::BASE
    };

    fn validate(&self, path: &str, _common: &PullCommon, problems: &mut Problems) {
        if !(1..=1000).contains(&self.page_size) {
            problems.push(format!("{path}.page_size"), "must be between 1 and 1000");
        }
    }

    fn build(config: &AcmeConfig, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        Ok(Box::new(AcmeSource::new(config.clone(), ctx)?))
    }
}

pub struct AcmeSource {
    cfg: AcmeConfig,
    walk: Walker,
    url: url::Url,
    extractor: FieldExtractor,
}

impl AcmeSource {
    pub fn new(cfg: AcmeConfig, ctx: SourceContext) -> anyhow::Result<Self> {
        let path = format!("sources.{}", ctx.name);
        let common = &cfg.common;
        let advice = |status, body: &str| {
            format!("Acme refused the API key with HTTP {status} ({body}); it needs the audit:read scope")
        };
        let fetcher = Fetcher::new(cfg.fetcher_config(&ctx.name, &ctx.health, &path, advice)?)?;
        let checkpoint = ctx.checkpoint.as_deref();
        let state = WindowState::load(&ctx.name, checkpoint, "Acme", common.recent_ids)?;
        Ok(AcmeSource {
            url: common.endpoint("/v1/audit", &path)?,
            extractor: common.extractor(&path)?,
            walk: Walker::new(fetcher, state, common, common.start(&path)?),
            cfg,
        })
    }

    /// The events of an answer and where the walk goes next.
    fn parse(&self, body: &Bytes) -> Result<(Vec<Event>, Next), String> {
        let root: &RawValue = serde_json::from_slice(body)
            .map_err(|e| format!("body is not JSON ({e}): {}", snippet(body)))?;
        let items = find_items(root, None, &["events"], "events", true)?;
        let next = match get_field(root, "next").and_then(scalar_text) {
            Some(cursor) if !cursor.is_empty() && !items.is_empty() => {
                Next::Cursor(cursor.into_owned())
            }
            _ => Next::Done,
        };
        let events = items
            .into_iter()
            .map(|item| self.extractor.event(body, item))
            .collect();
        Ok((events, next))
    }
}

#[async_trait]
impl Source for AcmeSource {
    async fn next_batch(&mut self) -> anyhow::Result<Option<Batch>> {
        loop {
            let pass = self.walk.pass().await;
            let mut query = vec![
                ("since", TimeFormat::Rfc3339.format(pass.start)),
                ("until", TimeFormat::Rfc3339.format(pass.end)),
                ("limit", self.cfg.page_size.to_string()),
            ];
            if let Some(cursor) = &pass.cursor {
                query.push(("cursor", cursor.clone()));
            }
            let reply = match self.walk.fetcher.get_json(&self.url, &query).await {
                Ok(reply) => reply,
                Err(refused) => {
                    let hint = "check url and page_size";
                    self.walk.fetcher.give_up_for_now(&refused, hint).await;
                    continue;
                }
            };
            match self.parse(&reply.body) {
                Ok((events, next)) => {
                    if let Some(batch) = self.walk.take(events, After::Next(next)) {
                        return Ok(Some(batch));
                    }
                }
                Err(why) => self.walk.fetcher.retry_later(&why).await,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::Health;
    use crate::source::SourceType;

    fn config(extra: serde_json::Value) -> AcmeConfig {
        let mut cfg = serde_json::json!({"url": "http://127.0.0.1:9", "token_file": "/dev/null"});
        cfg.as_object_mut()
            .unwrap()
            .extend(extra.as_object().unwrap().clone());
        serde_json::from_value(cfg).expect("config")
    }

    #[test]
    fn defaults_are_acmes_and_bad_keys_say_where() {
        let cfg = config(serde_json::json!({"page_size": 0, "timeout": "0s"}));
        assert_eq!(cfg.common.poll_interval, Duration::from_secs(15));
        assert_eq!(
            cfg.common.overlap,
            Duration::from_secs(300),
            "the usual default"
        );
        // `SourceType::validate`, which every `PullConfig<K>` has: the
        // shared keys, then `Acme::validate`.
        let mut problems = Problems::default();
        cfg.validate("sources.acme", &mut problems);
        let text = format!("{problems:?}");
        assert!(text.contains("sources.acme.page_size"), "{text}");
        assert!(text.contains("sources.acme.timeout"), "{text}");
    }

    #[test]
    fn a_page_becomes_events_and_a_cursor() {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, "k").unwrap();
        let cfg = config(serde_json::json!({"token_file": token}));
        let ctx = SourceContext {
            name: "acme".into(),
            checkpoint: None,
            health: Health::default(),
            state_dir: dir.path().into(),
        };
        let source = AcmeSource::new(cfg, ctx).expect("source");
        let body = Bytes::from_static(
            br#"{"events":[{"id":"a","created":"2026-01-01T00:00:00Z"}],"next":"c2"}"#,
        );
        let (events, next) = source.parse(&body).expect("page");
        assert_eq!(events[0].id.as_deref(), Some("a"));
        assert!(events[0].time.is_some(), "time read from `created`");
        assert!(matches!(next, Next::Cursor(c) if c == "c2"));
        let last = Bytes::from_static(br#"{"events":[],"next":"c3"}"#);
        assert!(matches!(source.parse(&last), Ok((_, Next::Done))));
    }
}
