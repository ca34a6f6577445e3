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

/// Words in a key, header or query parameter name that say its value is a
/// secret. Broad on purpose: a needless warning costs a `chmod`, a missed
/// one a leaked credential.
const SECRET_WORDS: [&str; 12] = [
    "password",
    "passwd",
    "secret",
    "token",
    "key",
    "auth",
    "cookie",
    "sig",
    "credential",
    "session",
    "jaas",
    "oauthbearer.config",
];

fn secret_name(name: &str) -> bool {
    let name = name.to_ascii_lowercase();
    SECRET_WORDS.iter().any(|w| name.contains(w))
}

/// Key paths under `prefix` whose values look like secrets: values of keys
/// (header names included) named like secrets, URLs with a password or a secret-named
/// query parameter. `*_file`, `*_env` and `*_credential` keys and the
/// `*_secret_files` tables name where a secret is, not the secret.
fn inline_secrets(value: &figment::value::Value, prefix: &str, out: &mut Vec<String>) {
    use figment::value::Value;
    match value {
        Value::Dict(_, dict) => {
            if prefix.ends_with("_secret_files") {
                return;
            }
            for (key, v) in dict {
                let path = if prefix.is_empty() {
                    key.clone()
                } else {
                    format!("{prefix}.{key}")
                };
                let lower = key.to_ascii_lowercase();
                // Keys whose value names a place, a field or a header.
                let names_something = [
                    "_file",
                    "_env",
                    "_credential",
                    "_retry",
                    "_field",
                    "_header",
                    "_path",
                    "_scheme",
                    "_url",
                ]
                .iter()
                .any(|s| lower.ends_with(s));
                // `oauth2.client_auth` names a method (`basic`, `body`, `json`).
                let names_something = names_something || lower == "client_auth";
                // `fields`, `extra_fields`: names of event fields, values paths.
                let field_map = prefix.ends_with("fields");
                // A template placeholder such as `"{cursor}"` is no secret.
                let placeholder = v
                    .as_str()
                    .is_some_and(|t| t.starts_with('{') && t.ends_with('}'));
                if matches!(v, Value::String(..))
                    && !placeholder
                    && !names_something
                    && !field_map
                    && secret_name(key)
                {
                    out.push(path.clone());
                    continue;
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
                let query_secret = url.query_pairs().any(|(k, _)| secret_name(&k));
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

    /// The key paths of the inline secrets of a config written as TOML.
    fn find(toml: &str) -> Vec<String> {
        use figment::providers::{Format, Toml};
        let tree: figment::value::Value = figment::Figment::from(Toml::string(toml))
            .extract()
            .unwrap();
        let mut keys = Vec::new();
        inline_secrets(&tree, "", &mut keys);
        keys
    }

    #[test]
    fn a_config_holds_secrets_only_where_a_value_is_one() {
        // The shipped configs, and one with secrets in *_file keys: nothing.
        for shipped in [
            include_str!("../config/demo.toml"),
            include_str!("../config/certifyclouds.toml"),
            include_str!("../config/quickztna.toml"),
            include_str!("../config/veza-to-kafka.toml"),
            include_str!("../config/veza-to-splunk.toml"),
            include_str!("../config/veza-to-syslog.toml"),
            include_str!("../config/veza-to-webhook.toml"),
            include_str!("../config/webhook-in.toml"),
            include_str!("../config/zaita.toml"),
        ] {
            assert_eq!(find(shipped), Vec::<String>::new());
        }
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
    fn inline_secrets_under_other_names_are_found_too() {
        let keys = find(
            "[sinks.bus.librdkafka]\n\"sasl.password\" = \"pw\"\n\
             \"sasl.oauthbearer.client.secret\" = \"s\"\n\"linger.ms\" = 5\n\
             [sinks.bus.librdkafka_secret_files]\n\"ssl.key.password\" = \"/run/k\"\n\
             [sinks.hook]\nurl = \"https://b.example/o?X-Amz-Signature=ab&X-Amz-Credential=c\"\n\
             token_file = \"/run/t\"\nauth_retry = \"30s\"\n\
             headers = { \"X-Auth-Token\" = \"t\", \"Api-Key\" = \"k\", \"X-Tenant\" = \"t1\" }",
        );
        assert_eq!(
            keys,
            [
                "sinks.bus.librdkafka.sasl.oauthbearer.client.secret",
                "sinks.bus.librdkafka.sasl.password",
                "sinks.hook.headers.Api-Key",
                "sinks.hook.headers.X-Auth-Token",
                "sinks.hook.url"
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
