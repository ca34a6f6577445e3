//! RFC 5424 syslog messages:
//! `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID STRUCTURED-DATA MSG`.
//!
//! Header fields are PRINTUSASCII tokens with the RFC's length limits;
//! structured-data values escape `"`, `\` and `]` (§6.3.3) so no event
//! content can end an SD element early.

use std::io::Write;

use chrono::{DateTime, SecondsFormat, Utc};

use super::syslog::{cut, header_token, writable_time};

pub const APP_NAME_MAX: usize = 48;
pub const HOSTNAME_MAX: usize = 255;
pub const PROCID_MAX: usize = 128;
pub const MSGID_MAX: usize = 32;

/// The header fields of one message, already cleaned with
/// [`header_token`] where they come from configuration.
pub struct Header<'a> {
    pub pri: u8,
    /// `None` writes NILVALUE (`-`): the receiver then uses its own clock.
    pub time: Option<DateTime<Utc>>,
    pub hostname: &'a str,
    pub app_name: &'a str,
    pub procid: &'a str,
    pub msgid: &'a str,
}

/// Writes `<PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID ` (with the
/// trailing space before STRUCTURED-DATA).
pub fn write_header(out: &mut Vec<u8>, h: &Header<'_>) {
    let _ = write!(out, "<{}>1 ", h.pri);
    // DATE-FULLYEAR has 4 digits and TIME-SECOND is 00-59: other times are
    // NILVALUE. TIME-SECFRAC allows at most 6 digits.
    match h.time.and_then(writable_time) {
        Some(t) => out.extend_from_slice(t.to_rfc3339_opts(SecondsFormat::Micros, true).as_bytes()),
        None => out.push(b'-'),
    }
    for field in [h.hostname, h.app_name, h.procid, h.msgid] {
        out.push(b' ');
        out.extend_from_slice(field.as_bytes());
    }
    out.push(b' ');
}

/// Cleans a header token for this format.
pub fn token(text: &str, max: usize) -> String {
    header_token(text, max)
}

/// Writes one SD element `[ID name="value" ...]`. Values are cut to
/// `value_max` bytes before escaping. With `escape_newlines`, CR and LF in
/// values become the two characters `\r`, `\n` (for LF framing, where a raw
/// newline would end the frame).
pub fn write_sd_element(
    out: &mut Vec<u8>,
    id: &str,
    params: &[(&str, &str)],
    value_max: usize,
    escape_newlines: bool,
) {
    out.push(b'[');
    out.extend_from_slice(id.as_bytes());
    for (name, value) in params {
        out.push(b' ');
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b"=\"");
        escape_param_value(out, cut(value, value_max), escape_newlines);
        out.push(b'"');
    }
    out.push(b']');
}

/// PARAM-VALUE escaping of RFC 5424 §6.3.3.
pub fn escape_param_value(out: &mut Vec<u8>, value: &str, escape_newlines: bool) {
    for b in value.bytes() {
        match b {
            b'"' | b'\\' | b']' => {
                out.push(b'\\');
                out.push(b);
            }
            b'\n' if escape_newlines => out.extend_from_slice(b"\\n"),
            b'\r' if escape_newlines => out.extend_from_slice(b"\\r"),
            _ => out.push(b),
        }
    }
}

/// Whether `id` is a valid SD-ID: 1-32 PRINTUSASCII except `=`, space, `]`, `"`.
pub fn valid_sd_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 32
        && id
            .bytes()
            .all(|b| b.is_ascii_graphic() && !matches!(b, b'=' | b']' | b'"'))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn header_and_escaped_sd() {
        let mut out = Vec::new();
        let t = Utc.timestamp_opt(1_690_359_797, 151_080_751).unwrap();
        write_header(
            &mut out,
            &Header {
                pri: 134,
                time: Some(t),
                hostname: "relay-1",
                app_name: "auditrelay",
                procid: "42",
                msgid: "DeleteUser",
            },
        );
        write_sd_element(
            &mut out,
            "auditrelay@32473",
            &[("id", "a\"b\\c]d\ne"), ("source", "veza")],
            128,
            true,
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "<134>1 2023-07-26T08:23:17.151080Z relay-1 auditrelay 42 DeleteUser \
             [auditrelay@32473 id=\"a\\\"b\\\\c\\]d\\ne\" source=\"veza\"]"
        );
    }

    #[test]
    fn times_a_timestamp_cannot_hold_are_nil_or_folded() {
        let header = |time| {
            let mut out = Vec::new();
            write_header(
                &mut out,
                &Header {
                    pri: 134,
                    time,
                    hostname: "h",
                    app_name: "a",
                    procid: "1",
                    msgid: "-",
                },
            );
            String::from_utf8(out).unwrap()
        };
        let year_10000 = Utc.timestamp_opt(253_402_300_800, 0).unwrap();
        assert_eq!(header(Some(year_10000)), "<134>1 - h a 1 - ");
        let leap = DateTime::parse_from_rfc3339("2026-12-31T23:59:60Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(
            header(Some(leap)),
            "<134>1 2026-12-31T23:59:59.999999Z h a 1 - "
        );
    }

    #[test]
    fn nil_timestamp_and_sd_ids() {
        let mut out = Vec::new();
        write_header(
            &mut out,
            &Header {
                pri: 0,
                time: None,
                hostname: "-",
                app_name: "-",
                procid: "-",
                msgid: "-",
            },
        );
        assert_eq!(out, b"<0>1 - - - - - ");
        assert!(valid_sd_id("auditrelay@32473"));
        assert!(!valid_sd_id("a b"));
        assert!(!valid_sd_id("a=b"));
        assert!(!valid_sd_id(""));
    }
}
