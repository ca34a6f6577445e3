//! `[cluster]`: several instances with one config share the sources through
//! a coordination engine. Absent = one instance owns every source.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use crate::config::{Problems, TlsConfig};
use crate::secret::{Secret, SecretSource};

/// Below this a lease expires on an ordinary GC pause or a slow disk fsync.
pub const MIN_LEASE_TTL: Duration = Duration::from_secs(3);

#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ClusterBackend {
    Etcd,
    Kubernetes,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    pub backend: ClusterBackend,
    /// Instances with the same name share sources; one engine can hold
    /// several clusters.
    pub name: String,
    /// This instance among the members; default: the host name.
    pub instance_id: Option<String>,
    #[serde(default = "default_lease_ttl", with = "humantime_serde")]
    pub lease_ttl: Duration,
    pub etcd: Option<EtcdConfig>,
    pub kubernetes: Option<KubernetesConfig>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    #[serde(default = "default_prefix")]
    pub prefix: String,
    pub tls: Option<TlsConfig>,
    pub username: Option<String>,
    pub password_file: Option<PathBuf>,
}

#[derive(Clone, Debug, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KubernetesConfig {
    pub namespace: String,
    /// The API server; default: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`.
    pub api_url: Option<String>,
    /// CA of the API server; default: the service account's `ca.crt`.
    pub ca_file: Option<PathBuf>,
    /// Bearer token, re-read at every request (kubelet rotates it);
    /// default: the service account's `token`.
    pub token_file: Option<PathBuf>,
}

/// Where a pod's service account is mounted.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

impl KubernetesConfig {
    /// The API server URL, from `api_url` or the in-cluster environment.
    pub fn api_url(&self) -> Result<String, String> {
        if let Some(url) = &self.api_url {
            return Ok(url.trim_end_matches('/').to_string());
        }
        let host = std::env::var("KUBERNETES_SERVICE_HOST").map_err(|_| {
            "api_url is unset and KUBERNETES_SERVICE_HOST is not in the environment \
             (not running in a pod?)"
                .to_string()
        })?;
        let port = std::env::var("KUBERNETES_SERVICE_PORT").unwrap_or_else(|_| "443".into());
        // An IPv6 service address needs brackets in a URL.
        let host = if host.contains(':') && !host.starts_with('[') {
            format!("[{host}]")
        } else {
            host
        };
        Ok(format!("https://{host}:{port}"))
    }

    pub fn ca_file(&self) -> PathBuf {
        self.ca_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR).join("ca.crt"))
    }

    pub fn token_file(&self) -> PathBuf {
        self.token_file
            .clone()
            .unwrap_or_else(|| PathBuf::from(SERVICE_ACCOUNT_DIR).join("token"))
    }

    fn validate(&self, path: &str, cluster_name: &str, problems: &mut Problems) {
        if !dns_label(&self.namespace) {
            problems.push(
                format!("{path}.namespace"),
                "must be a Kubernetes namespace name (1-63 lowercase letters, digits, '-')",
            );
        }
        // The cluster name is a label value on every Lease (at most 63).
        if cluster_name.len() > 63 {
            problems.push(
                format!("{path}.name"),
                "must be at most 63 characters with backend = \"kubernetes\" (a label value)",
            );
        }
        match self.api_url() {
            Ok(u) => match url::Url::parse(&u) {
                Ok(parsed)
                    if matches!(parsed.scheme(), "http" | "https") && parsed.host().is_some() => {}
                _ => problems.push(
                    format!("{path}.api_url"),
                    format!("\"{u}\" is not an http:// or https:// URL with a host"),
                ),
            },
            Err(e) => problems.push(format!("{path}.api_url"), e),
        }
        let https = self.api_url().is_ok_and(|u| u.starts_with("https://"));
        let ca = self.ca_file();
        if let (true, Err(e)) = (https, std::fs::metadata(&ca)) {
            problems.push(
                format!("{path}.ca_file"),
                format!("cannot read {}: {e}", ca.display()),
            );
        }
        let token = self.token_file();
        if let Err(e) = SecretSource::File(token).load() {
            problems.push(format!("{path}.token_file"), e);
        }
    }
}

fn dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

fn default_lease_ttl() -> Duration {
    Duration::from_secs(10)
}

fn default_prefix() -> String {
    "/auditrelay".to_string()
}

impl ClusterConfig {
    /// The configured id, or the host name.
    pub fn instance_id(&self) -> String {
        self.instance_id.clone().unwrap_or_else(host_name)
    }

    pub fn validate(&self, path: &str, problems: &mut Problems) {
        if !plain_name(&self.name) {
            problems.push(
                format!("{path}.name"),
                "must be 1-64 characters of letters, digits, '_' or '-'",
            );
        }
        let id = self.instance_id();
        if id.is_empty() || id.len() > 253 || id.contains('/') || id.chars().any(char::is_control) {
            problems.push(
                format!("{path}.instance_id"),
                "must be 1-253 characters without '/' (the host name is used when unset)",
            );
        }
        if self.lease_ttl < MIN_LEASE_TTL {
            problems.push(
                format!("{path}.lease_ttl"),
                format!("must be at least {}s", MIN_LEASE_TTL.as_secs()),
            );
        }
        match self.backend {
            ClusterBackend::Etcd => match &self.etcd {
                Some(etcd) => etcd.validate(&format!("{path}.etcd"), problems),
                None => problems.push(
                    format!("{path}.etcd"),
                    "backend = \"etcd\" needs a [cluster.etcd] section with endpoints",
                ),
            },
            ClusterBackend::Kubernetes => match &self.kubernetes {
                Some(k) => k.validate(&format!("{path}.kubernetes"), &self.name, problems),
                None => problems.push(
                    format!("{path}.kubernetes"),
                    "backend = \"kubernetes\" needs a [cluster.kubernetes] section with namespace",
                ),
            },
        }
    }
}

impl EtcdConfig {
    fn validate(&self, path: &str, problems: &mut Problems) {
        if self.endpoints.is_empty() {
            problems.push(format!("{path}.endpoints"), "needs at least one endpoint");
        }
        for (i, e) in self.endpoints.iter().enumerate() {
            match url::Url::parse(e) {
                Ok(u) if matches!(u.scheme(), "http" | "https") && u.host().is_some() => {}
                _ => problems.push(
                    format!("{path}.endpoints[{i}]"),
                    format!("\"{e}\" is not an http:// or https:// URL with a host"),
                ),
            }
        }
        if !self.prefix.starts_with('/') || self.prefix.ends_with('/') && self.prefix.len() > 1 {
            problems.push(
                format!("{path}.prefix"),
                "must start with '/' and not end with one",
            );
        }
        if let Some(tls) = &self.tls {
            tls.validate(path, problems);
            if tls.insecure_skip_verify {
                problems.push(
                    format!("{path}.tls.insecure_skip_verify"),
                    "not supported for etcd: give ca_file instead",
                );
            }
        }
        match (&self.username, &self.password_file) {
            (Some(_), Some(_)) => {
                if let Err(e) = self.password() {
                    problems.push(format!("{path}.password_file"), e);
                }
            }
            (None, None) => {}
            _ => problems.push(
                format!("{path}.username"),
                "username and password_file go together",
            ),
        }
    }

    /// The password, read now (a rotated secret is picked up at reconnect).
    pub fn password(&self) -> Result<Option<Secret>, String> {
        self.password_file
            .as_ref()
            .map(|p| SecretSource::File(p.clone()).load())
            .transpose()
    }
}

fn plain_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// The longest an engine request may take: a third of the lease, so a
/// renewal that hangs still leaves time for the next attempt.
pub fn request_timeout(ttl: Duration) -> Duration {
    (ttl / 3).max(Duration::from_millis(500))
}

/// The host name (`gethostname(2)`), or "" when it cannot be read.
pub fn host_name() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its length; gethostname writes at most that.
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return String::new();
    }
    let end = buf.iter().position(|b| *b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> ClusterConfig {
        let fig = figment::Figment::new()
            .merge(<figment::providers::Toml as figment::providers::Format>::string(text));
        fig.extract_inner("cluster").expect("parses")
    }

    fn problems(cfg: &ClusterConfig) -> Vec<String> {
        let mut p = Problems::default();
        cfg.validate("cluster", &mut p);
        p.into_vec().into_iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn a_good_etcd_section_is_valid_and_defaults_apply() {
        let cfg = parse(
            "[cluster]\nbackend = \"etcd\"\nname = \"prod\"\n[cluster.etcd]\nendpoints = [\"http://127.0.0.1:2379\"]\n",
        );
        assert_eq!(problems(&cfg), Vec::<String>::new());
        assert_eq!(cfg.lease_ttl, Duration::from_secs(10));
        assert_eq!(
            cfg.etcd.as_ref().map(|e| e.prefix.as_str()),
            Some("/auditrelay")
        );
        assert_eq!(cfg.instance_id(), host_name());
    }

    #[test]
    fn every_bad_value_is_named_by_its_key_path() {
        let cfg = parse(
            "[cluster]\nbackend = \"etcd\"\nname = \"a b\"\ninstance_id = \"x/y\"\nlease_ttl = \"2s\"\n\
             [cluster.etcd]\nendpoints = [\"ftp://x\"]\nprefix = \"noslash\"\nusername = \"u\"\n",
        );
        let p = problems(&cfg).join("\n");
        for key in [
            "cluster.name:",
            "cluster.instance_id:",
            "cluster.lease_ttl: must be at least 3s",
            "cluster.etcd.endpoints[0]:",
            "cluster.etcd.prefix:",
            "cluster.etcd.username: username and password_file go together",
        ] {
            assert!(p.contains(key), "{key} missing in:\n{p}");
        }
    }

    #[test]
    fn a_backend_without_its_section_is_refused() {
        let cfg = parse("[cluster]\nbackend = \"etcd\"\nname = \"p\"\n");
        assert!(problems(&cfg)
            .join("\n")
            .contains("cluster.etcd: backend = \"etcd\" needs"));
        let cfg = parse("[cluster]\nbackend = \"kubernetes\"\nname = \"p\"\n");
        assert!(problems(&cfg)
            .join("\n")
            .contains("cluster.kubernetes: backend = \"kubernetes\" needs"));
    }

    #[test]
    fn kubernetes_values_are_checked_and_named_by_their_key_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        let ca = dir.path().join("ca.crt");
        std::fs::write(&ca, "not read at validate").expect("ca");
        let token = dir.path().join("token");
        std::fs::write(&token, "sa-token-secret\n").expect("token");
        let good = format!(
            "[cluster]\nbackend = \"kubernetes\"\nname = \"p\"\n[cluster.kubernetes]\n\
             namespace = \"siem\"\napi_url = \"https://127.0.0.1:6443\"\nca_file = \"{}\"\n\
             token_file = \"{}\"\n",
            ca.display(),
            token.display()
        );
        assert_eq!(problems(&parse(&good)), Vec::<String>::new());
        let bad = format!(
            "[cluster]\nbackend = \"kubernetes\"\nname = \"{}\"\n[cluster.kubernetes]\n\
             namespace = \"Siem_1\"\napi_url = \"ftp://x\"\nca_file = \"/nonexistent/ca.crt\"\n\
             token_file = \"{}/missing-token\"\n",
            "n".repeat(64),
            dir.path().display()
        );
        let p = problems(&parse(&bad)).join("\n");
        for key in [
            "cluster.kubernetes.namespace:",
            "cluster.kubernetes.name: must be at most 63",
            "cluster.kubernetes.api_url: \"ftp://x\"",
            "cluster.kubernetes.token_file: cannot read secret file",
        ] {
            assert!(p.contains(key), "{key} missing in:\n{p}");
        }
        // ftp:// is not https: no CA is read, so none is asked for.
        assert!(!p.contains("ca_file"), "{p}");
        assert!(!p.contains("sa-token-secret"));
    }

    #[test]
    fn an_unreadable_password_file_is_reported_without_its_content() {
        let cfg = parse(
            "[cluster]\nbackend = \"etcd\"\nname = \"p\"\n[cluster.etcd]\nendpoints = [\"https://e:2379\"]\n\
             username = \"u\"\npassword_file = \"/nonexistent/etcd-password\"\n",
        );
        let p = problems(&cfg).join("\n");
        assert!(
            p.contains(
                "cluster.etcd.password_file: cannot read secret file /nonexistent/etcd-password"
            ),
            "{p}"
        );
    }
}
