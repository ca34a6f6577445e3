//! ArcSight Common Event Format, version 0:
//! `CEF:0|Vendor|Product|Version|SignatureID|Name|Severity|Extension`.
//!
//! Header fields escape `\` and `|`; extension values escape `\` and `=` and
//! write CR/LF as `\r`/`\n`, as the CEF specification requires, so a value
//! can never start a new key or a new line.

use std::io::Write;

use super::shorten;
use super::siem::{header, product_header, KeyValues, SiemEvent};

/// Keys this encoder writes itself; extra fields may not reuse them.
pub const RESERVED_KEYS: &[&str] = &[
    "rt",
    "externalId",
    "suser",
    "suid",
    "src",
    "shost",
    "outcome",
    "act",
    "requestMethod",
    "request",
    "requestClientApplication",
    "reason",
    "cs1",
    "cs1Label",
    "cs2",
    "cs2Label",
];

/// Whether `key` can be an extension key (CEF keys are alphanumeric).
pub fn valid_key(key: &str) -> bool {
    !key.is_empty() && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

/// Writes one CEF record (no trailing newline).
pub fn write(out: &mut Vec<u8>, e: &SiemEvent<'_>) {
    write_capped(out, e, usize::MAX);
}

/// [`write`] with the event's values (extension values, the type and name
/// in the header) cut to `cap` bytes and marked (see
/// [`shorten::capped`]); the cut comes before escaping, so escapes stay
/// whole.
pub fn write_capped(out: &mut Vec<u8>, e: &SiemEvent<'_>, cap: usize) {
    let kind = e.event_type.unwrap_or("audit");
    out.extend_from_slice(b"CEF:0|");
    // Name: the last path segment of RPC/URL-style types (`DeleteUser`).
    let name = kind.rsplit('/').find(|s| !s.is_empty()).unwrap_or(kind);
    product_header(out, e);
    for field in [kind, name] {
        header(out, &shorten::capped(field, cap));
        out.push(b'|');
    }
    let _ = write!(out, "{}|", e.severity.siem_scale());
    // Values escape `=`, so one can never start a new key.
    let mut ext = KeyValues::new(out, b' ', b'=', cap);
    if let Some(t) = e.time {
        ext.put("rt", &t.timestamp_millis().to_string());
    }
    ext.opt("externalId", e.id);
    let f = e.facts;
    ext.opt("suser", f.actor.as_deref());
    ext.opt("suid", f.actor_id.as_deref());
    // `src` must be an IP address for ArcSight; anything else is a host.
    ext.address("src", "shost", f.source_ip.as_deref());
    ext.outcome("outcome", f.success);
    ext.opt("act", f.action.as_deref());
    ext.opt("requestMethod", f.method.as_deref());
    ext.opt("request", f.url.as_deref());
    ext.opt("requestClientApplication", f.user_agent.as_deref());
    ext.opt("reason", f.reason.as_deref());
    if let Some(status) = f.outcome.as_deref() {
        ext.put("cs1Label", "status");
        ext.put("cs1", status);
    }
    ext.put("cs2Label", "source");
    ext.put("cs2", e.source);
    ext.extra(e.extra);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::siem::{encoded, facts_of};
    use crate::format::syslog::Severity;

    #[test]
    fn escapes_header_and_extensions() {
        let facts = facts_of("a=b\\c\nd", "not-an-ip", false);
        let event = SiemEvent {
            vendor: "Ve|za",
            product: "Audit",
            event_type: Some("/svc/Do\\It"),
            id: Some("r1"),
            source: "veza",
            severity: Severity::WARNING,
            ..SiemEvent::with_facts(&facts)
        };
        assert_eq!(
            encoded(|out| write(out, &event)),
            "CEF:0|Ve\\|za|Audit|1|/svc/Do\\\\It|Do\\\\It|6|externalId=r1 \
             suser=a\\=b\\\\c\\nd shost=not-an-ip outcome=failure cs2Label=source cs2=veza"
        );
        assert!(valid_key("cs3"));
        assert!(!valid_key("a b"));
    }
}
