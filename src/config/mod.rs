//! Configuration building blocks every component uses: problems with key
//! paths, the reading of one section, and the value types several sections
//! share (retry, TLS, URLs, durations). The file as a whole (top-level
//! keys, loading, the list of sources and sinks) is [`crate::config_file`],
//! which sits above sources and sinks; this module sits below them.

mod introspect;
mod registry;

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use serde::de::{DeserializeOwned, IgnoredAny};
use serde::Deserialize;

pub use introspect::struct_fields;
pub(crate) use registry::kinds_enum;

/// One problem found in a config, with the key path it is about.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Collects problems under a key-path prefix while a section is validated.
#[derive(Debug, Default)]
pub struct Problems {
    list: Vec<Problem>,
}

impl Problems {
    pub fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.list.push(Problem {
            path: path.into(),
            message: message.into(),
        });
    }

    pub fn extend(&mut self, problems: impl IntoIterator<Item = Problem>) {
        self.list.extend(problems);
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub fn into_vec(self) -> Vec<Problem> {
        self.list
    }
}

/// TLS settings shared by every HTTP client and listener.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
    #[serde(default)]
    pub insecure_skip_verify: bool,
}

impl TlsConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        for (key, file) in [
            ("ca_file", &self.ca_file),
            ("cert_file", &self.cert_file),
            ("key_file", &self.key_file),
        ] {
            if let Some(file) = file {
                if let Err(e) = std::fs::metadata(file) {
                    problems.push(
                        format!("{path}.tls.{key}"),
                        format!("cannot read {}: {e}", file.display()),
                    );
                }
            }
        }
        if self.cert_file.is_some() != self.key_file.is_some() {
            problems.push(
                format!("{path}.tls"),
                "cert_file and key_file go together (client certificate and its key)",
            );
        }
    }
}

/// A default of `N` seconds, written at the key it belongs to:
/// `#[serde(default = "crate::config::secs::<30>")]`.
pub fn secs<const N: u64>() -> Duration {
    Duration::from_secs(N)
}

/// A default of `true` (`#[serde(default = "crate::config::yes")]`).
pub fn yes() -> bool {
    true
}

/// Exponential backoff bounds for transient failures.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "secs::<1>", with = "humantime_serde")]
    pub initial: Duration,
    #[serde(default = "secs::<300>", with = "humantime_serde")]
    pub max: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            initial: secs::<1>(),
            max: secs::<300>(),
        }
    }
}

impl RetryConfig {
    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if self.initial.is_zero() {
            problems.push(format!("{path}.retry.initial"), "must be greater than 0");
        }
        if self.max < self.initial {
            problems.push(
                format!("{path}.retry.max"),
                "must be at least retry.initial",
            );
        }
    }
}

/// Reads the section at `path` as `T`, reporting type errors with their full
/// key path and any key that neither `T` nor `shared` accepts.
pub fn extract_section<T: DeserializeOwned>(
    fig: &Figment,
    path: &str,
    shared: &[&[&str]],
) -> Result<T, Vec<Problem>> {
    let mut problems = Vec::new();
    let keys = if path.is_empty() {
        fig.extract::<BTreeMap<String, IgnoredAny>>()
    } else {
        fig.extract_inner::<BTreeMap<String, IgnoredAny>>(path)
    };
    if let Ok(keys) = keys {
        let own = struct_fields::<T>();
        for key in keys.keys() {
            let known = own.contains(&key.as_str())
                || shared.iter().any(|list| list.contains(&key.as_str()));
            if !known {
                let mut accepted: Vec<&str> = own
                    .iter()
                    .chain(shared.iter().flat_map(|l| l.iter()))
                    .copied()
                    .collect();
                accepted.sort_unstable();
                accepted.dedup();
                problems.push(Problem {
                    path: join_path(path, key),
                    message: format!("unknown key (accepted: {})", accepted.join(", ")),
                });
            }
        }
    }
    let value = if path.is_empty() {
        fig.extract::<T>()
    } else {
        fig.extract_inner::<T>(path)
    };
    match value {
        Ok(v) if problems.is_empty() => Ok(v),
        Ok(_) => Err(problems),
        Err(e) => {
            problems.extend(figment_problems(e, path));
            Err(problems)
        }
    }
}

fn join_path(prefix: &str, key: &str) -> String {
    if prefix.is_empty() {
        key.to_string()
    } else {
        format!("{prefix}.{key}")
    }
}

/// A section read as two structs (a component's own keys and the keys its
/// kind shares): both, or every problem of both once, the first's first
/// (both reads may report the same bad key).
pub fn read_both<A, B>(
    first: Result<A, Vec<Problem>>,
    second: Result<B, Vec<Problem>>,
) -> Result<(A, B), Vec<Problem>> {
    match (first, second) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        (a, b) => {
            let mut all = a.err().unwrap_or_default();
            for p in b.err().unwrap_or_default() {
                if !all.contains(&p) {
                    all.push(p);
                }
            }
            Err(all)
        }
    }
}

/// The `type` of the section at `path`, which names one of `kinds`.
pub fn read_type(fig: &Figment, path: &str, kinds: &[&str]) -> Result<String, Vec<Problem>> {
    fig.extract_inner(&format!("{path}.type")).map_err(|_| {
        type_problem(
            path,
            format!(
                "required key is missing or not a string (one of: {})",
                kinds.join(", ")
            ),
        )
    })
}

/// A problem with the `type` of the section at `path`.
pub fn type_problem(path: &str, message: String) -> Vec<Problem> {
    vec![Problem {
        path: format!("{path}.type"),
        message,
    }]
}

/// Flattens figment's (possibly chained) errors into problems with key paths.
pub fn figment_problems(err: figment::Error, prefix: &str) -> Vec<Problem> {
    err.into_iter()
        .map(|e| {
            // figment reports the path inside the focused section followed by
            // the focus itself (`[field, "sinks", "hook"]`); put it in order.
            let focus: Vec<&str> = prefix.split('.').filter(|s| !s.is_empty()).collect();
            let mut rel: Vec<String> = e.path.clone();
            if rel.len() >= focus.len()
                && rel[rel.len() - focus.len()..]
                    .iter()
                    .map(String::as_str)
                    .eq(focus.iter().copied())
            {
                rel.truncate(rel.len() - focus.len());
            } else if rel.len() >= focus.len()
                && rel[..focus.len()]
                    .iter()
                    .map(String::as_str)
                    .eq(focus.iter().copied())
            {
                rel.drain(..focus.len());
            }
            let mut segments: Vec<String> = focus.iter().map(|s| s.to_string()).collect();
            let joined = rel.join(".");
            segments.extend(rel);
            let message = match &e.kind {
                figment::error::Kind::UnknownField(field, expected) => {
                    if !joined.ends_with(field.as_str()) {
                        segments.push(field.clone());
                    }
                    format!("unknown key (accepted: {})", expected.join(", "))
                }
                figment::error::Kind::MissingField(field) => {
                    segments.push(field.to_string());
                    "required key is missing".to_string()
                }
                figment::error::Kind::UnknownVariant(found, expected) => {
                    format!(
                        "unknown value \"{found}\" (one of: {})",
                        expected.join(", ")
                    )
                }
                kind => kind.to_string(),
            };
            Problem {
                path: segments.join("."),
                message,
            }
        })
        .collect()
}

/// Parses a URL and reports a problem at `path` when it is unusable.
pub fn parse_url(raw: &str, path: &str, problems: &mut Problems) -> Option<url::Url> {
    match url::Url::parse(raw) {
        Ok(u) if u.scheme() == "http" || u.scheme() == "https" => Some(u),
        Ok(u) => {
            problems.push(
                path,
                format!("scheme {} is not supported (use http or https)", u.scheme()),
            );
            None
        }
        Err(e) => {
            problems.push(path, e.to_string());
            None
        }
    }
}

/// Reports a zero duration at `path`.
pub fn require_positive(d: Duration, path: &str, problems: &mut Problems) {
    if d.is_zero() {
        problems.push(path, "must be greater than 0");
    }
}

/// Whether no name occurs twice: the `type` values of a registry, checked
/// when it is compiled (a second registration would never be reached).
pub const fn all_distinct(names: &[&str]) -> bool {
    let mut i = 0;
    while i < names.len() {
        let mut j = i + 1;
        while j < names.len() {
            if same_bytes(names[i].as_bytes(), names[j].as_bytes()) {
                return false;
            }
            j += 1;
        }
        i += 1;
    }
    true
}

const fn same_bytes(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_distinct_finds_a_repeated_name() {
        assert!(all_distinct(&["veza", "veza_list", "demo"]));
        assert!(all_distinct(&[]));
        assert!(!all_distinct(&["veza", "demo", "veza"]));
        assert!(!all_distinct(&["", ""]));
    }
}
