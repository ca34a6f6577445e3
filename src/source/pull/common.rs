//! The keys every pull source shares, read the way sinks read
//! [`crate::sink::SinkCommon`]: one `[sources.NAME]` section read as two
//! structs, the shared keys ([`PullCommon`]) and the source's own (`K`),
//! with unknown keys and bad values reported by key path.
//!
//! Some defaults differ per API (Veza polls every 5s, QuickZTNA every
//! 60s): each source states its own in [`PullKind::DEFAULTS`].
//!
//! A vendor file implements [`PullKind`] (its `type`, defaults, checks and
//! source); the one `SourceType` impl here makes every `PullConfig<K>` a
//! registrable source, so nothing about the shared keys is written per
//! source.

use std::fmt::Debug;
use std::ops::Deref;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use figment::Figment;
use serde::de::{DeserializeOwned, Deserializer, Error as _};
use serde::Deserialize;

use super::fetch::FetcherConfig;
use super::rate_limit::RateLimitConfig;
use super::window::WindowState;
use crate::config::{
    extract_section, figment_problems, parse_url, read_both, require_positive, struct_fields,
    Problem, Problems, RetryConfig, TlsConfig,
};
use crate::event::FieldExtractor;
use crate::health::Health;
use crate::secret::{SecretKeys, SecretSource};
use crate::source::{ManualPosition, Paths, Source, SourceContext, SourceType, StartAt};

/// A pull source type: its own keys (`Self`), its shared-key defaults and
/// what only it knows (its checks, its checkpoint, its source). Every
/// `PullConfig<K>` is a [`SourceType`] through it: the shared keys are read
/// and checked here, the vendor file implements only this.
pub trait PullKind: DeserializeOwned + Clone + Debug + Send + Sync + 'static {
    /// The value of `type` that selects this source.
    const KIND: &'static str;

    const DEFAULTS: PullDefaults;

    /// Reports the values of its own keys serde accepts but the source
    /// cannot use; the shared keys (`common`) are checked already.
    /// Required, so a forgotten check cannot pass silently.
    fn validate(&self, path: &str, common: &PullCommon, problems: &mut Problems);

    /// The state `auditrelay checkpoint set` writes. By default that of a window walk
    /// ([`WindowState`]), which resumes at a time and has no page token.
    fn manual_checkpoint(&self, at: ManualPosition) -> Result<Vec<u8>, String> {
        let ManualPosition::Time(time) = at else {
            return Err("this source has no durable page token; use --time <RFC 3339>".into());
        };
        let state = WindowState {
            resume_at: Some(time),
            ..Default::default()
        };
        serde_json::to_vec(&state).map_err(|e| e.to_string())
    }

    /// The running source, resuming from `ctx.checkpoint`.
    fn build(config: &PullConfig<Self>, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>>;
}

/// What a source assumes for the shared keys it is not given.
#[derive(Clone, Copy, Debug)]
pub struct PullDefaults {
    pub timeout: Duration,
    pub auth_retry: Duration,
    pub start_at: &'static str,
    pub poll_interval: Duration,
    pub overlap: Duration,
    pub recent_ids: usize,
    pub id_path: &'static [&'static str],
    pub time_path: &'static [&'static str],
    pub type_path: &'static [&'static str],
    /// Whether the source takes the window keys (`start_at`,
    /// `poll_interval`, `overlap`, `recent_ids`); one that walks a fixed
    /// range does not, and reports them as unknown.
    pub window: bool,
    /// What `validate` says when no token is configured; `None`: the API
    /// may be open, a token is optional.
    pub token_missing: Option<&'static str>,
}

impl PullDefaults {
    /// The defaults most APIs get; sources override what differs.
    pub const BASE: PullDefaults = PullDefaults {
        timeout: Duration::from_secs(30),
        auth_retry: Duration::from_secs(30),
        start_at: "-24h",
        poll_interval: Duration::from_secs(30),
        overlap: Duration::from_secs(300),
        recent_ids: 50_000,
        id_path: &["id"],
        time_path: &["timestamp"],
        type_path: &["event_type"],
        window: true,
        token_missing: None,
    };
}

/// Keys without a per-source default.
const RATE_LIMIT_WAIT: Duration = Duration::from_secs(60);
const RATE_LIMIT_JITTER: Duration = Duration::from_secs(5);

/// The keys a source without a window does not take.
const WINDOW_KEYS: &[&str] = &["start_at", "poll_interval", "overlap", "recent_ids"];

/// The shared keys of `[sources.NAME]`, defaults applied.
#[derive(Clone, Debug)]
pub struct PullCommon {
    /// Base URL of the API.
    pub url: String,
    pub token_file: Option<PathBuf>,
    pub token_env: Option<String>,
    pub token_credential: Option<String>,
    /// OAuth2 client credentials instead of a static token.
    pub oauth2: Option<crate::oauth2::OAuth2Config>,
    /// Request timeout.
    pub timeout: Duration,
    /// Least wait between attempts while the API refuses the token.
    pub auth_retry: Duration,
    pub retry: RetryConfig,
    pub tls: TlsConfig,
    /// Wait after a rate-limit signal that says nothing about when.
    pub rate_limit_wait: Duration,
    /// Random extra wait added to every rate-limit pause.
    pub rate_limit_jitter: Duration,
    pub id_path: Paths,
    pub time_path: Paths,
    pub type_path: Paths,
    /// Where a source without a checkpoint starts.
    pub start_at: String,
    pub poll_interval: Duration,
    /// How far behind the newest delivered event a re-read starts.
    pub overlap: Duration,
    /// How many delivered ids the checkpoint keeps for de-duplication.
    pub recent_ids: usize,
}

/// [`PullCommon`] as written: what is absent takes the source's default.
#[derive(Deserialize)]
struct PullKeys {
    url: String,
    token_file: Option<PathBuf>,
    token_env: Option<String>,
    token_credential: Option<String>,
    oauth2: Option<crate::oauth2::OAuth2Config>,
    #[serde(default, with = "humantime_serde::option")]
    timeout: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    auth_retry: Option<Duration>,
    #[serde(default)]
    retry: RetryConfig,
    #[serde(default)]
    tls: TlsConfig,
    #[serde(default, with = "humantime_serde::option")]
    rate_limit_wait: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    rate_limit_jitter: Option<Duration>,
    id_path: Option<Paths>,
    time_path: Option<Paths>,
    type_path: Option<Paths>,
    start_at: Option<String>,
    #[serde(default, with = "humantime_serde::option")]
    poll_interval: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    overlap: Option<Duration>,
    recent_ids: Option<usize>,
}

impl PullKeys {
    fn resolve(self, d: &PullDefaults) -> PullCommon {
        let paths = |list: &[&str]| match list {
            [one] => Paths::One((*one).into()),
            many => Paths::of(many),
        };
        PullCommon {
            url: self.url,
            token_file: self.token_file,
            token_env: self.token_env,
            token_credential: self.token_credential,
            oauth2: self.oauth2,
            timeout: self.timeout.unwrap_or(d.timeout),
            auth_retry: self.auth_retry.unwrap_or(d.auth_retry),
            retry: self.retry,
            tls: self.tls,
            rate_limit_wait: self.rate_limit_wait.unwrap_or(RATE_LIMIT_WAIT),
            rate_limit_jitter: self.rate_limit_jitter.unwrap_or(RATE_LIMIT_JITTER),
            id_path: self.id_path.unwrap_or_else(|| paths(d.id_path)),
            time_path: self.time_path.unwrap_or_else(|| paths(d.time_path)),
            type_path: self.type_path.unwrap_or_else(|| paths(d.type_path)),
            start_at: self.start_at.unwrap_or_else(|| d.start_at.into()),
            poll_interval: self.poll_interval.unwrap_or(d.poll_interval),
            overlap: self.overlap.unwrap_or(d.overlap),
            recent_ids: self.recent_ids.unwrap_or(d.recent_ids),
        }
    }
}

/// `[sources.NAME]` of a pull source: the shared keys and its own. Derefs
/// to its own keys (`cfg.page_size`); shared ones are `cfg.common.*`.
#[derive(Clone, Debug)]
pub struct PullConfig<K> {
    pub common: PullCommon,
    pub own: K,
}

impl<K> Deref for PullConfig<K> {
    type Target = K;
    fn deref(&self) -> &K {
        &self.own
    }
}

impl<K: PullKind> SourceType for PullConfig<K> {
    const KIND: &'static str = K::KIND;

    fn read(fig: &Figment, path: &str) -> Result<Self, Vec<Problem>> {
        Self::read_section(fig, path, true)
    }

    /// Checks the shared keys, then the source's own.
    fn validate(&self, path: &str, problems: &mut Problems) {
        let (c, d) = (&self.common, &K::DEFAULTS);
        parse_url(&c.url, &format!("{path}.url"), problems);
        let token_missing = d.token_missing.filter(|_| c.oauth2.is_none());
        c.token_keys()
            .validate("token", path, token_missing, problems);
        crate::oauth2::validate_exclusive(c.oauth2.as_ref(), &c.token_keys(), path, problems);
        if let Some(o) = &c.oauth2 {
            o.validate(&format!("{path}.oauth2"), problems);
        }
        if d.window {
            if let Err(e) = StartAt::parse(&c.start_at) {
                problems.push(format!("{path}.start_at"), e);
            }
            require_positive(c.poll_interval, &format!("{path}.poll_interval"), problems);
        }
        require_positive(c.timeout, &format!("{path}.timeout"), problems);
        c.id_path.validate(&format!("{path}.id_path"), problems);
        c.time_path.validate(&format!("{path}.time_path"), problems);
        c.type_path.validate(&format!("{path}.type_path"), problems);
        c.retry.validate(path, problems);
        c.tls.validate(path, problems);
        self.own.validate(path, c, problems);
    }

    fn manual_checkpoint(&self, at: ManualPosition) -> Result<Vec<u8>, String> {
        self.own.manual_checkpoint(at)
    }

    fn build(&self, ctx: SourceContext) -> anyhow::Result<Box<dyn Source>> {
        K::build(self, ctx)
    }
}

impl<K: PullKind> PullConfig<K> {
    /// Reads the section at `path` (`""`: the whole figment), reporting bad
    /// values with their key path; `strict` reports unknown keys too, else
    /// they are ignored (as serde does for a struct without
    /// `deny_unknown_fields`).
    fn read_section(fig: &Figment, path: &str, strict: bool) -> Result<Self, Vec<Problem>> {
        let window = K::DEFAULTS.window;
        let own = if strict {
            extract_section::<K>(fig, path, &[&Self::shared_keys(), &["type"]])
        } else {
            extract::<K>(fig, path)
        };
        // Shared keys are read without the unknown-key check: the section
        // read above already reported every unknown key once. A source
        // without a window reads them without the window keys, which it
        // reported as unknown: a bad value there must not stop serde
        // before the shared keys after it.
        let common = if window {
            extract::<PullKeys>(fig, path)
        } else {
            extract_without::<PullKeys>(fig, path, WINDOW_KEYS)
        };
        let (own, keys) = read_both(own, common)?;
        Ok(PullConfig {
            common: keys.resolve(&K::DEFAULTS),
            own,
        })
    }

    /// The shared keys this source takes.
    pub fn shared_keys() -> Vec<&'static str> {
        struct_fields::<PullKeys>()
            .iter()
            .copied()
            .filter(|k| K::DEFAULTS.window || !WINDOW_KEYS.contains(k))
            .collect()
    }

    /// Every key of the section: shared ones, then the source's own.
    pub fn keys() -> Vec<&'static str> {
        let mut all = Self::shared_keys();
        all.extend(struct_fields::<K>());
        all
    }

    /// The request loop settings of source `name` (rate limits by status
    /// 429, `Retry-After` and `X-RateLimit-*`: change `rate_limit` for
    /// other APIs); `advice` tells what a refused token means.
    pub fn fetcher_config(
        &self,
        name: &str,
        health: &Health,
        path: &str,
        advice: impl Fn(u16, &str) -> String + Send + Sync + 'static,
    ) -> anyhow::Result<FetcherConfig> {
        let c = &self.common;
        let client = crate::http::client(&c.tls, c.timeout, path)?;
        let oauth2 = match &c.oauth2 {
            Some(o) => Some(std::sync::Arc::new(crate::oauth2::TokenClient::new(
                o.clone(),
                crate::oauth2::TokenClientOptions {
                    component: path.to_string(),
                    http: client.clone(),
                    health: Some(health.clone()),
                    retry: c.retry,
                    auth_retry: c.auth_retry,
                },
            )?)),
            None => None,
        };
        Ok(FetcherConfig {
            name: name.into(),
            client,
            token_source: self.token_source(path)?,
            oauth2,
            health: health.clone(),
            retry: c.retry,
            auth_retry: c.auth_retry,
            rate_limit: RateLimitConfig::default(),
            rate_limit_wait: c.rate_limit_wait,
            rate_limit_jitter: c.rate_limit_jitter,
            advice: Box::new(advice),
            cooldown_file: None,
        })
    }

    /// The token source, required unless the source says a token is
    /// optional.
    pub fn token_source(&self, path: &str) -> anyhow::Result<Option<SecretSource>> {
        let src = self
            .common
            .token_keys()
            .source("token")
            .map_err(|e| anyhow::anyhow!("{path}: {e}"))?;
        if src.is_some() && self.common.oauth2.is_some() {
            anyhow::bail!("{path}: set either a static token or the oauth2 table, not both");
        }
        if src.is_none() && self.common.oauth2.is_none() && K::DEFAULTS.token_missing.is_some() {
            anyhow::bail!("{path}.token_file: no token configured");
        }
        Ok(src)
    }
}

/// Configs read from any serde format (JSON in tests and fuzzing) get the
/// same defaults as a section of the config file; unknown keys are ignored,
/// as serde does for a struct that does not deny them.
impl<'de, K: PullKind> Deserialize<'de> for PullConfig<K> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let dict = figment::value::Dict::deserialize(d)?;
        let fig = Figment::from(figment::providers::Serialized::defaults(dict));
        Self::read_section(&fig, "", false).map_err(|problems| {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            D::Error::custom(list.join("; "))
        })
    }
}

/// `path` of `fig` (`""`: all of it) as a `T`, problems by key path.
fn extract<T: DeserializeOwned>(fig: &Figment, path: &str) -> Result<T, Vec<Problem>> {
    let value = if path.is_empty() {
        fig.extract()
    } else {
        fig.extract_inner(path)
    };
    value.map_err(|e| figment_problems(e, path))
}

/// [`extract`] of `path` with the top-level `skip` keys left out.
fn extract_without<T: DeserializeOwned>(
    fig: &Figment,
    path: &str,
    skip: &[&str],
) -> Result<T, Vec<Problem>> {
    let mut section: figment::value::Dict = extract(fig, path)?;
    section.retain(|k, _| !skip.contains(&k.as_str()));
    Figment::from(figment::providers::Serialized::defaults(section))
        .extract()
        .map_err(|e| figment_problems(e, path))
}

impl PullCommon {
    pub fn token_keys(&self) -> SecretKeys {
        SecretKeys {
            file: self.token_file.clone(),
            env: self.token_env.clone(),
            credential: self.token_credential.clone(),
        }
    }

    /// `url` joined with the source's `rel` path.
    pub fn endpoint(&self, rel: &str, path: &str) -> anyhow::Result<url::Url> {
        url::Url::parse(&self.url)
            .and_then(|base| base.join(rel))
            .map_err(|e| anyhow::anyhow!("{path}.url: {e}"))
    }

    /// Reads id, time and type of each event as `id_path` etc. say.
    pub fn extractor(&self, path: &str) -> anyhow::Result<FieldExtractor> {
        let parse =
            |p: &Paths, key: &str| p.parse().map_err(|e| anyhow::anyhow!("{path}.{key}: {e}"));
        Ok(FieldExtractor::new(
            parse(&self.id_path, "id_path")?,
            parse(&self.time_path, "time_path")?,
            parse(&self.type_path, "type_path")?,
        ))
    }

    /// `start_at`, resolved now.
    pub fn start(&self, path: &str) -> anyhow::Result<DateTime<Utc>> {
        Ok(StartAt::parse(&self.start_at)
            .map_err(|e| anyhow::anyhow!("{path}.start_at: {e}"))?
            .resolve(Utc::now()))
    }
}
