//! What the SIEM bodies (CEF, LEEF) are built from: one event's identity,
//! its audit facts and the product names the SIEM keys its parsers on; and
//! how both write their header fields and `key=value` lists.

use chrono::{DateTime, Utc};

use super::fields::AuditFacts;
use super::shorten;
use super::syslog::Severity;

pub struct SiemEvent<'a> {
    pub vendor: &'a str,
    pub product: &'a str,
    pub version: &'a str,
    pub event_type: Option<&'a str>,
    pub id: Option<&'a str>,
    pub time: Option<DateTime<Utc>>,
    /// The auditrelay source the event came from.
    pub source: &'a str,
    pub severity: Severity,
    pub facts: &'a AuditFacts,
    /// Configured extra keys with their values, in order.
    pub extra: &'a [(String, String)],
}

impl<'a> SiemEvent<'a> {
    /// An event with only `facts`, for tests to fill in what they check.
    #[cfg(test)]
    pub fn with_facts(facts: &'a AuditFacts) -> Self {
        SiemEvent {
            vendor: "V",
            product: "P",
            version: "1",
            event_type: None,
            id: None,
            time: None,
            source: "s",
            severity: Severity::INFO,
            facts,
            extra: &[],
        }
    }
}

/// A record `write` puts in a buffer, as text (the SIEM encoders' tests).
#[cfg(test)]
pub fn encoded(write: impl FnOnce(&mut Vec<u8>)) -> String {
    let mut out = Vec::new();
    write(&mut out);
    String::from_utf8(out).expect("the encoders write UTF-8")
}

/// The facts the SIEM encoders' tests vary: who (with characters to
/// escape), from where (an IP address or a host) and whether it worked.
#[cfg(test)]
pub fn facts_of(actor: &str, source_ip: &str, success: bool) -> AuditFacts {
    AuditFacts {
        actor: Some(actor.into()),
        source_ip: Some(source_ip.into()),
        success: Some(success),
        ..Default::default()
    }
}

/// Writes a header field: `\` and `|` escaped; a header may hold no line
/// break, so one becomes a space.
pub fn header(out: &mut Vec<u8>, value: &str) {
    for b in value.bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'|' => out.extend_from_slice(b"\\|"),
            b'\n' | b'\r' => out.push(b' '),
            _ => out.push(b),
        }
    }
}

/// Writes the header fields naming the product, each followed by `|`.
pub fn product_header(out: &mut Vec<u8>, e: &SiemEvent<'_>) {
    for field in [e.vendor, e.product, e.version] {
        header(out, field);
        out.push(b'|');
    }
}

/// The `key=value` list of a record. Values are cut to `cap` bytes (see
/// [`shorten::capped`]) before they are escaped, so escapes stay whole:
/// `\` before a backslash and before `escaped`, line breaks as `\n`/`\r`
/// (and a tab as `\t` when it is the escaped byte).
pub struct KeyValues<'a> {
    out: &'a mut Vec<u8>,
    separator: u8,
    escaped: u8,
    first: bool,
    cap: usize,
}

impl<'a> KeyValues<'a> {
    pub fn new(out: &'a mut Vec<u8>, separator: u8, escaped: u8, cap: usize) -> Self {
        KeyValues {
            out,
            separator,
            escaped,
            first: true,
            cap,
        }
    }

    /// A source address: under `ip_key` when it parses as an IP address
    /// (what the SIEM's address field accepts), else under `host_key`.
    pub fn address(&mut self, ip_key: &str, host_key: &str, value: Option<&str>) {
        if let Some(v) = value {
            let key = if v.parse::<std::net::IpAddr>().is_ok() {
                ip_key
            } else {
                host_key
            };
            self.put(key, v);
        }
    }

    /// `success` or `failure`, when the event says which.
    pub fn outcome(&mut self, key: &str, success: Option<bool>) {
        self.opt(
            key,
            success.map(|ok| if ok { "success" } else { "failure" }),
        );
    }

    /// The configured extra keys, in order.
    pub fn extra(&mut self, extra: &[(String, String)]) {
        for (k, v) in extra {
            self.put(k, v);
        }
    }

    pub fn opt(&mut self, key: &str, value: Option<&str>) {
        if let Some(v) = value {
            self.put(key, v);
        }
    }

    pub fn put(&mut self, key: &str, value: &str) {
        if !self.first {
            self.out.push(self.separator);
        }
        self.first = false;
        self.out.extend_from_slice(key.as_bytes());
        self.out.push(b'=');
        for b in shorten::capped(value, self.cap).bytes() {
            match b {
                b'\\' => self.out.extend_from_slice(b"\\\\"),
                b'\n' => self.out.extend_from_slice(b"\\n"),
                b'\r' => self.out.extend_from_slice(b"\\r"),
                b'\t' if b == self.escaped => self.out.extend_from_slice(b"\\t"),
                _ if b == self.escaped => {
                    self.out.push(b'\\');
                    self.out.push(b);
                }
                _ => self.out.push(b),
            }
        }
    }
}
