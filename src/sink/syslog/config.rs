//! The `[sinks.NAME]` keys of a syslog sink, their defaults and checks,
//! and the parsed `address`.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Deserialize;

use crate::format::fields::FieldMap;
use crate::format::syslog::{Facility, Severity};

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    #[default]
    Rfc5424,
    Rfc3164,
}

#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Body {
    /// The event's JSON as received, on one line.
    #[default]
    Json,
    Cef,
    Leef,
}

/// RFC 6587 framing on stream transports.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Framing {
    /// `LEN SP MSG`: any content is safe.
    OctetCounting,
    /// `MSG LF`: newlines inside a message are escaped first.
    Lf,
}

#[derive(Clone, Debug, Deserialize)]
pub struct SyslogConfig {
    /// `udp://host:port`, `tcp://host:port`, `tls://host:port`, `relp://host:port`.
    pub address: String,
    #[serde(default)]
    pub format: Format,
    #[serde(default)]
    pub body: Body,
    /// Default `octet_counting` on TCP and TLS; not used by UDP and RELP,
    /// which delimit messages themselves.
    pub framing: Option<Framing>,
    #[serde(default = "d_facility")]
    pub facility: Facility,
    /// Severity of every event unless one of the rules below applies.
    #[serde(default = "d_severity")]
    pub severity: Severity,
    /// Severity of events whose outcome (see `fields.outcome`) is a failure.
    #[serde(default = "d_failure_severity")]
    pub failure_severity: Severity,
    /// Takes the severity from this event field: its value is looked up in
    /// `severity_values`, or read as a severity name or number.
    pub severity_field: Option<String>,
    #[serde(default)]
    pub severity_values: BTreeMap<String, Severity>,
    #[serde(default = "d_app_name")]
    pub app_name: String,
    /// Default: this machine's host name.
    pub hostname: Option<String>,
    /// Fixed MSGID; default: the event type (its last segment when long).
    pub msgid: Option<String>,
    /// SD-ID of the element carrying id, source and type.
    #[serde(default = "d_sd_id")]
    pub sd_id: String,
    #[serde(default = "crate::config::yes")]
    pub structured_data: bool,
    /// Largest message (without framing); longer bodies are cut.
    /// Default: 2048 on UDP, 8192 otherwise.
    pub max_message_size: Option<usize>,
    /// CEF/LEEF header: who produced the events.
    #[serde(default = "d_vendor")]
    pub vendor: String,
    #[serde(default = "d_vendor")]
    pub product: String,
    #[serde(default = "d_product_version")]
    pub product_version: String,
    #[serde(default = "d_leef_delimiter")]
    pub leef_delimiter: String,
    #[serde(default)]
    pub fields: FieldMap,
    /// More CEF extension keys / LEEF attributes: `{ cs3 = "identity.session_id" }`.
    #[serde(default)]
    pub extra_fields: BTreeMap<String, String>,
    #[serde(default = "crate::config::secs::<10>", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Bound on writing a batch and on waiting for its acknowledgement.
    #[serde(default = "crate::config::secs::<30>", with = "humantime_serde")]
    pub timeout: Duration,
    /// RELP messages in flight before waiting for acknowledgements.
    #[serde(default = "d_relp_window")]
    pub relp_window: usize,
    /// TCP/TLS: bytes of recently confirmed frames kept to resend when the
    /// receiver resets the connection (see the module docs); 0 disables.
    #[serde(default = "d_replay_window")]
    pub replay_window: usize,
    /// After this many `rsp` refusals of the same message, RELP gives up on
    /// it and writes it to the dead-letter file.
    #[serde(default = "d_relp_max_refusals")]
    pub relp_max_refusals: u32,
}

crate::serde_defaults::serde_defaults! {
    fn d_facility() -> Facility = Facility::LOCAL0;
    fn d_severity() -> Severity = Severity::INFO;
    fn d_failure_severity() -> Severity = Severity::WARNING;
    fn d_app_name() -> String = "auditrelay".into();
    fn d_sd_id() -> String = "auditrelay@32473".into();
    fn d_vendor() -> String = "auditrelay".into();
    fn d_product_version() -> String = env!("CARGO_PKG_VERSION").into();
    fn d_leef_delimiter() -> String = "^".into();
    fn d_relp_window() -> usize = 128;
    fn d_replay_window() -> usize = 8 * 1024 * 1024;
    fn d_relp_max_refusals() -> u32 = 3;
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
    Tls,
    Relp,
}

/// A parsed `address`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    pub transport: Transport,
    pub host: String,
    pub port: u16,
}

impl std::fmt::Display for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.host, self.port)
    }
}

impl Target {
    pub fn parse(address: &str) -> Result<Target, String> {
        let (scheme, _) = address.split_once("://").ok_or_else(|| {
            format!(
                "\"{address}\" has no scheme (write udp://, tcp://, tls:// or relp://HOST:PORT)"
            )
        })?;
        let (transport, default_port) = match scheme {
            "udp" => (Transport::Udp, Some(514)),
            "tcp" => (Transport::Tcp, None),
            "tls" => (Transport::Tls, Some(6514)),
            "relp" => (Transport::Relp, None),
            other => {
                return Err(format!(
                    "scheme \"{other}\" is not supported (use udp, tcp, tls or relp)"
                ))
            }
        };
        let url = url::Url::parse(address).map_err(|e| format!("\"{address}\": {e}"))?;
        if !url.username().is_empty() || url.password().is_some() {
            return Err("must not contain credentials".into());
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() {
            return Err(format!("\"{address}\" must be just {scheme}://HOST:PORT"));
        }
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| format!("\"{address}\" names no host"))?
            .to_string();
        let port = url
            .port()
            .or(default_port)
            .ok_or_else(|| format!("\"{address}\" needs a port ({scheme} has no standard one)"))?;
        Ok(Target {
            transport,
            host,
            port,
        })
    }

    pub(super) fn default_max_message(&self) -> usize {
        match self.transport {
            Transport::Udp => 2048,
            _ => 8192,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses() {
        let t = Target::parse("tls://siem.example:6514").unwrap();
        assert_eq!(
            (t.transport, t.host.as_str(), t.port),
            (Transport::Tls, "siem.example", 6514)
        );
        assert_eq!(Target::parse("udp://10.0.0.1").unwrap().port, 514);
        assert_eq!(Target::parse("tls://h").unwrap().port, 6514);
        assert_eq!(Target::parse("relp://[::1]:2514").unwrap().host, "[::1]");
        assert!(Target::parse("tcp://h")
            .unwrap_err()
            .contains("needs a port"));
        assert!(Target::parse("http://h:1")
            .unwrap_err()
            .contains("not supported"));
        assert!(Target::parse("h:514").unwrap_err().contains("no scheme"));
        assert!(Target::parse("tcp://u:p@h:1").is_err());
        assert!(Target::parse("tcp://h:1/x").is_err());
    }

    /// The defaults of docs/configuration.md, as an address-only section
    /// gets them.
    #[test]
    fn unset_keys_take_the_documented_defaults() {
        let cfg: SyslogConfig =
            serde_json::from_value(serde_json::json!({"address": "tcp://h:514"})).unwrap();
        assert_eq!(
            (cfg.facility, cfg.severity, cfg.failure_severity),
            (Facility::LOCAL0, Severity::INFO, Severity::WARNING)
        );
        assert_eq!(
            [&cfg.app_name, &cfg.sd_id, &cfg.vendor, &cfg.product],
            ["auditrelay", "auditrelay@32473", "auditrelay", "auditrelay"]
        );
        assert_eq!(cfg.product_version, env!("CARGO_PKG_VERSION"));
        assert_eq!(cfg.leef_delimiter, "^");
        assert_eq!(
            (cfg.relp_window, cfg.replay_window, cfg.relp_max_refusals),
            (128, 8 * 1024 * 1024, 3)
        );
    }
}
