//! Value types of keys several sources share (field paths, start points).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Deserialize;

use crate::config::Problems;
use crate::event::FieldPath;

/// One path or a list of paths tried in order.
#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum Paths {
    One(String),
    Many(Vec<String>),
}

impl Paths {
    pub fn of(list: &[&str]) -> Self {
        Paths::Many(list.iter().map(|s| s.to_string()).collect())
    }

    pub fn parse(&self) -> Result<Vec<FieldPath>, String> {
        let list: Vec<&str> = match self {
            Paths::One(p) => vec![p.as_str()],
            Paths::Many(v) => v.iter().map(String::as_str).collect(),
        };
        if list.is_empty() {
            return Err("needs at least one field path".into());
        }
        list.into_iter().map(FieldPath::parse).collect()
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if let Err(e) = self.parse() {
            problems.push(path, e);
        }
    }
}

/// Where a source starts when it has no checkpoint: an RFC 3339 time, `now`,
/// or a negative duration relative to now (`-24h`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StartAt {
    Time(DateTime<Utc>),
    Now,
    Ago(Duration),
}

impl StartAt {
    pub fn parse(text: &str) -> Result<Self, String> {
        let t = text.trim();
        if t.eq_ignore_ascii_case("now") {
            return Ok(StartAt::Now);
        }
        if let Some(rest) = t.strip_prefix('-') {
            return humantime::parse_duration(rest)
                .map(StartAt::Ago)
                .map_err(|e| format!("\"{text}\" is not a negative duration like -24h: {e}"));
        }
        DateTime::parse_from_rfc3339(t)
            .map(|d| StartAt::Time(d.with_timezone(&Utc)))
            .map_err(|e| {
                format!("\"{text}\" is neither an RFC 3339 time, \"now\", nor a negative duration like -24h: {e}")
            })
    }

    pub fn resolve(&self, now: DateTime<Utc>) -> DateTime<Utc> {
        match self {
            StartAt::Time(t) => *t,
            StartAt::Now => now,
            StartAt::Ago(d) => now - crate::source::pull::chrono_of(*d),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_at_forms() {
        let now = Utc::now();
        assert_eq!(StartAt::parse("now").unwrap().resolve(now), now);
        assert_eq!(
            StartAt::parse("-24h").unwrap().resolve(now),
            now - chrono::Duration::hours(24)
        );
        assert!(matches!(
            StartAt::parse("2023-08-07T22:11:25.915674671Z").unwrap(),
            StartAt::Time(_)
        ));
        assert!(StartAt::parse("yesterday").is_err());
        assert!(StartAt::parse("-abc").is_err());
    }
}
