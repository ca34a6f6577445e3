//! IBM QRadar Log Event Extended Format, version 2.0:
//! `LEEF:2.0|Vendor|Product|Version|EventID|Delimiter|key=value<delim>key=value`.
//!
//! LEEF 2.0 declares its attribute delimiter in the header (a character, or
//! `xHH` for one that is not printable, such as tab). LEEF defines no escape
//! for values, so this encoder uses the CEF convention: `\` before a
//! backslash or the delimiter, and `\n`/`\r` for line breaks; a value
//! therefore never contains a bare delimiter or newline that could end an
//! attribute or the line.

use super::shorten;
use super::siem::{header, product_header, KeyValues, SiemEvent};
use super::syslog::writable_time;

/// `devTime` is written as RFC 3339 UTC with milliseconds; this is the Java
/// date pattern QRadar is told to parse it with.
pub const DEV_TIME_FORMAT: &str = "yyyy-MM-dd'T'HH:mm:ss.SSSX";

/// Keys this encoder writes itself; extra fields may not reuse them.
pub const RESERVED_KEYS: &[&str] = &[
    "devTime",
    "devTimeFormat",
    "sev",
    "usrName",
    "userId",
    "src",
    "identHostName",
    "outcome",
    "status",
    "reason",
    "method",
    "url",
    "userAgent",
    "requestId",
    "source",
];

/// Parses the `leef_delimiter` setting: one character, or `\t`, `tab`,
/// `xHH`/`0xHH`. Characters that would break the record are refused.
pub fn parse_delimiter(text: &str) -> Result<char, String> {
    let hex = text
        .strip_prefix("0x")
        .or_else(|| text.strip_prefix('x'))
        .filter(|h| h.len() == 2);
    let c = if text == "\\t" || text.eq_ignore_ascii_case("tab") {
        '\t'
    } else if let Some(h) = hex {
        let n = u8::from_str_radix(h, 16).map_err(|_| format!("\"{text}\" is not a hex byte"))?;
        char::from(n)
    } else {
        let mut chars = text.chars();
        match (chars.next(), chars.next()) {
            (Some(c), None) => c,
            _ => {
                return Err(format!(
                    "\"{text}\" is not one character (or \\t, tab, xHH)"
                ))
            }
        }
    };
    if !c.is_ascii()
        || matches!(c, '=' | '|' | '\\' | '\n' | '\r' | '\0')
        || c.is_ascii_alphanumeric()
    {
        return Err(format!(
            "{c:?} cannot separate LEEF attributes (use ^, tab or another ASCII symbol)"
        ));
    }
    Ok(c)
}

/// The header's declaration of `delim`.
fn declare(delim: char) -> String {
    if delim.is_ascii_graphic() {
        delim.to_string()
    } else {
        format!("x{:02X}", delim as u32)
    }
}

/// Writes one LEEF 2.0 record (no trailing newline).
pub fn write(out: &mut Vec<u8>, e: &SiemEvent<'_>, delim: char) {
    write_capped(out, e, delim, usize::MAX);
}

/// [`write`] with the event's values (attribute values, the event type in
/// the header) cut to `cap` bytes and marked (see [`shorten::capped`]);
/// the cut comes before escaping, so escapes stay whole.
pub fn write_capped(out: &mut Vec<u8>, e: &SiemEvent<'_>, delim: char, cap: usize) {
    out.extend_from_slice(b"LEEF:2.0|");
    product_header(out, e);
    header(out, &shorten::capped(e.event_type.unwrap_or("audit"), cap));
    out.push(b'|');
    out.extend_from_slice(declare(delim).as_bytes());
    out.push(b'|');
    // ASCII, checked by parse_delimiter; values escape it, so one can
    // never end an attribute.
    let d = delim as u8;
    let mut attrs = KeyValues::new(out, d, d, cap);
    // A time devTimeFormat cannot read is left out: QRadar then uses the
    // time it received the event.
    if let Some(t) = e.time.and_then(writable_time) {
        attrs.put(
            "devTime",
            &t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        );
        attrs.put("devTimeFormat", DEV_TIME_FORMAT);
    }
    attrs.put("sev", &e.severity.siem_scale().to_string());
    let f = e.facts;
    attrs.opt("usrName", f.actor.as_deref());
    attrs.opt("userId", f.actor_id.as_deref());
    attrs.address("src", "identHostName", f.source_ip.as_deref());
    attrs.outcome("outcome", f.success);
    attrs.opt("status", f.outcome.as_deref());
    attrs.opt("reason", f.reason.as_deref());
    attrs.opt("method", f.method.as_deref());
    attrs.opt("url", f.url.as_deref());
    attrs.opt("userAgent", f.user_agent.as_deref());
    attrs.opt("requestId", e.id);
    attrs.put("source", e.source);
    attrs.extra(e.extra);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::fields::AuditFacts;
    use crate::format::siem::{encoded, facts_of};

    #[test]
    fn delimiters() {
        assert_eq!(parse_delimiter("^"), Ok('^'));
        assert_eq!(parse_delimiter("tab"), Ok('\t'));
        assert_eq!(parse_delimiter("x09"), Ok('\t'));
        assert_eq!(parse_delimiter("0x5E"), Ok('^'));
        assert!(parse_delimiter("=").is_err());
        assert!(parse_delimiter("ab").is_err());
        assert!(parse_delimiter("a").is_err());
        assert_eq!(declare('\t'), "x09");
    }

    #[test]
    fn dev_time_only_when_dev_time_format_can_read_it() {
        use chrono::TimeZone;
        let facts = AuditFacts::default();
        let leef = |t| {
            let event = SiemEvent {
                time: Some(t),
                ..SiemEvent::with_facts(&facts)
            };
            encoded(|out| write(out, &event, '^'))
        };
        let year_10000 = chrono::Utc.timestamp_opt(253_402_300_800, 0).unwrap();
        assert_eq!(leef(year_10000), "LEEF:2.0|V|P|1|audit|^|sev=3^source=s");
        let t = chrono::Utc.timestamp_opt(1_700_000_000, 5_000_000).unwrap();
        assert!(leef(t).contains("devTime=2023-11-14T22:13:20.005Z^devTimeFormat="));
    }

    #[test]
    fn values_cannot_break_attributes() {
        let facts = facts_of("x^y\\z\nw", "10.1.2.3", true);
        let event = SiemEvent {
            vendor: "Veza",
            product: "Audit",
            version: "1|2",
            extra: &[("cs1".into(), "v".into())],
            ..SiemEvent::with_facts(&facts)
        };
        assert_eq!(
            encoded(|out| write(out, &event, '^')),
            "LEEF:2.0|Veza|Audit|1\\|2|audit|^|sev=3^usrName=x\\^y\\\\z\\nw^src=10.1.2.3^outcome=success^source=s^cs1=v"
        );
    }
}
