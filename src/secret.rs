//! Secrets (API tokens, HMAC keys) and where they come from.
//!
//! A [`Secret`] never prints its value: `Debug` and `Display` show `***`, so a
//! secret that ends up in a log line or an error message by accident leaks nothing.

use std::fmt;
use std::path::PathBuf;

use serde::Deserialize;

/// A secret value. Compare with [`Secret::expose`] only where it is sent.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The value, for the one place that puts it on the wire.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Where a secret is read from: exactly one of a file, an environment
/// variable, or a systemd credential (`$CREDENTIALS_DIRECTORY/NAME`).
///
/// Files are re-read on demand so a rotated Kubernetes secret or a renewed
/// credential is picked up without a restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum SecretSource {
    File(PathBuf),
    Env(String),
    Credential(String),
}

/// The three optional keys a config section uses to name a secret, e.g.
/// `token_file`, `token_env`, `token_credential`.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
pub struct SecretKeys {
    pub file: Option<PathBuf>,
    pub env: Option<String>,
    pub credential: Option<String>,
}

impl SecretKeys {
    /// Resolves the keys to one source. `prefix` is the key stem (`token`,
    /// `hmac_secret`) used in error messages.
    pub fn source(&self, prefix: &str) -> Result<Option<SecretSource>, String> {
        let mut found = Vec::new();
        if let Some(path) = &self.file {
            found.push(SecretSource::File(path.clone()));
        }
        if let Some(var) = &self.env {
            found.push(SecretSource::Env(var.clone()));
        }
        if let Some(name) = &self.credential {
            found.push(SecretSource::Credential(name.clone()));
        }
        match found.len() {
            0 => Ok(None),
            1 => Ok(found.pop()),
            _ => Err(format!(
                "set only one of {prefix}_file, {prefix}_env and {prefix}_credential"
            )),
        }
    }
}

impl SecretKeys {
    /// Config validation of the keys `{stem}_file|_env|_credential` of the
    /// section at `path`: exactly one set (an error saying `missing` when
    /// none is and the secret is required), and readable now. Returns the
    /// secret for checks of its own.
    pub fn validate(
        &self,
        stem: &str,
        path: &str,
        missing: Option<&str>,
        problems: &mut crate::config::Problems,
    ) -> Option<Secret> {
        match self.source(stem) {
            Ok(Some(src)) => match src.load() {
                Ok(secret) => Some(secret),
                Err(e) => {
                    problems.push(format!("{path}.{}", src.key(stem)), e);
                    None
                }
            },
            Ok(None) => {
                if let Some(why) = missing {
                    problems.push(format!("{path}.{stem}_file"), why);
                }
                None
            }
            Err(e) => {
                problems.push(path, e);
                None
            }
        }
    }
}

impl SecretSource {
    /// Reads the secret now. Surrounding whitespace (a trailing newline in a
    /// mounted file) is trimmed. Errors name the place, never the value.
    pub fn load(&self) -> Result<Secret, String> {
        let (raw, place) = match self {
            SecretSource::File(path) => (
                {
                    warn_if_exposed(path);
                    std::fs::read_to_string(path)
                        .map_err(|e| format!("cannot read secret file {}: {e}", path.display()))?
                },
                format!("secret file {}", path.display()),
            ),
            SecretSource::Env(var) => (
                std::env::var(var)
                    .map_err(|_| format!("environment variable {var} is not set or not UTF-8"))?,
                format!("environment variable {var}"),
            ),
            SecretSource::Credential(name) => {
                let dir = std::env::var_os("CREDENTIALS_DIRECTORY").ok_or_else(|| {
                    format!(
                        "systemd credential {name} requested but CREDENTIALS_DIRECTORY is not set \
                         (add LoadCredential={name}:... to the unit)"
                    )
                })?;
                let path = PathBuf::from(dir).join(name);
                (
                    std::fs::read_to_string(&path).map_err(|e| {
                        format!("cannot read systemd credential {}: {e}", path.display())
                    })?,
                    format!("systemd credential {name}"),
                )
            }
        };
        let value = raw.trim();
        if value.is_empty() {
            return Err(format!("{place} is empty"));
        }
        Ok(Secret::new(value))
    }

    /// The config key that names this source, e.g. `token_env` for stem `token`.
    pub fn key(&self, stem: &str) -> String {
        match self {
            SecretSource::File(_) => format!("{stem}_file"),
            SecretSource::Env(_) => format!("{stem}_env"),
            SecretSource::Credential(_) => format!("{stem}_credential"),
        }
    }

    /// Describes the place (for logs), never the value.
    pub fn describe(&self) -> String {
        match self {
            SecretSource::File(p) => format!("file {}", p.display()),
            SecretSource::Env(v) => format!("env {v}"),
            SecretSource::Credential(n) => format!("credential {n}"),
        }
    }
}

/// Warns, like [`warn_if_exposed`], when the config file at `path` can be
/// read by every user, but only if it holds a secret itself (an
/// `Authorization` header, a URL with a password or a token in its query):
/// secrets belong in `*_file`, `*_env` or `*_credential` keys, and a config
/// without any is no more secret than the binary.
pub fn warn_if_config_exposed(path: &std::path::Path) {
    use figment::providers::{Format, Toml};
    let Ok(tree) = figment::Figment::from(Toml::file(path)).extract::<figment::value::Value>()
    else {
        return;
    };
    let mut keys = Vec::new();
    inline_secrets(&tree, "", &mut keys);
    if !keys.is_empty() {
        warn_with_reason(path, &format!("it holds secrets at {}", keys.join(", ")));
    }
}

/// Key paths under `prefix` whose values look like secrets.
fn inline_secrets(value: &figment::value::Value, prefix: &str, out: &mut Vec<String>) {
    use figment::value::Value;
    match value {
        Value::Dict(_, dict) => {
            for (key, v) in dict {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                let in_headers = prefix.ends_with("headers");
                let secret_header = in_headers
                    && [
                        "authorization",
                        "proxy-authorization",
                        "cookie",
                        "x-api-key",
                    ]
                    .contains(&key.to_ascii_lowercase().as_str());
                if secret_header && matches!(v, Value::String(..)) {
                    out.push(path.clone());
                }
                inline_secrets(v, &path, out);
            }
        }
        Value::Array(_, items) => {
            for (i, v) in items.iter().enumerate() {
                inline_secrets(v, &format!("{prefix}[{i}]"), out);
            }
        }
        Value::String(_, text) => {
            if let Ok(url) = url::Url::parse(text) {
                let query_secret = url.query_pairs().any(|(k, _)| {
                    let k = k.to_ascii_lowercase();
                    [
                        "token",
                        "secret",
                        "password",
                        "key",
                        "sig",
                        "signature",
                        "apikey",
                        "api_key",
                    ]
                    .iter()
                    .any(|s| k == *s || k.ends_with(&format!("_{s}")))
                });
                if url.password().is_some() || query_secret {
                    out.push(prefix.to_string());
                }
            }
        }
        _ => {}
    }
}

/// Warns when a file holding secrets can be read by users other than its
/// owner and group: the secret is only as safe as the file.
pub fn warn_if_exposed(path: &std::path::Path) {
    warn_with_reason(path, "it holds a secret");
}

fn warn_with_reason(path: &std::path::Path, reason: &str) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        let mode = meta.permissions().mode();
        if mode & 0o004 != 0 {
            tracing::warn!(
                file = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "file is readable by every user on this host and {reason}; restrict it (chmod o-r) or move the secret to a *_file key or a credential"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secret_never_formats_its_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s}"), "***");
        assert!(!format!("{s:?}").contains("hunter2"));
        assert_eq!(s.expose(), "hunter2");
    }

    #[test]
    fn file_secret_is_trimmed_and_empty_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tok");
        std::fs::write(&path, "abc\n").unwrap();
        let src = SecretSource::File(path.clone());
        assert_eq!(src.load().unwrap().expose(), "abc");
        std::fs::write(&path, "\n").unwrap();
        assert!(src.load().unwrap_err().contains("is empty"));
    }

    #[test]
    fn a_config_holds_secrets_only_where_a_value_is_one() {
        use figment::providers::{Format, Toml};
        let find = |toml: &str| {
            let tree: figment::value::Value = figment::Figment::from(Toml::string(toml))
                .extract()
                .unwrap();
            let mut keys = Vec::new();
            inline_secrets(&tree, "", &mut keys);
            keys
        };
        // The demo config, and one with secrets in *_file keys: nothing.
        assert!(find(include_str!("../config/demo.toml")).is_empty());
        assert!(find(
            "[sinks.hook]\nurl = \"https://h.example/in?tenant=1\"\ntoken_file = \"/run/t\"\n\
             headers = { \"X-Tenant\" = \"t1\" }"
        )
        .is_empty());
        let keys = find(
            "[sinks.hook]\nurl = \"https://u:pw@h.example/in\"\n\
             headers = { Authorization = \"Bearer x\" }\n\
             [sources.p]\nurl = \"https://api.example/?api_key=x\"",
        );
        assert_eq!(
            keys,
            [
                "sinks.hook.headers.Authorization",
                "sinks.hook.url",
                "sources.p.url"
            ]
        );
    }

    #[test]
    fn two_sources_are_ambiguous() {
        let keys = SecretKeys {
            file: Some("/x".into()),
            env: Some("X".into()),
            credential: None,
        };
        assert!(keys.source("token").unwrap_err().contains("only one"));
    }
}
