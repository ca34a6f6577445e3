//! BSD syslog (RFC 3164): `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG`.
//!
//! The format has no year, time zone or structured data; the timestamp is
//! written in UTC (receivers that assume local time will be off by the zone
//! offset: prefer RFC 5424 where the collector supports it).

use std::io::Write;

use chrono::{DateTime, Utc};

/// TAG is at most 32 alphanumeric characters by the RFC; `-`, `_`, `.` and
/// `/` are accepted by every parser in use and kept.
pub const TAG_MAX: usize = 32;

/// Writes the header up to and including the `: ` before MSG.
pub fn write_header(
    out: &mut Vec<u8>,
    pri: u8,
    time: DateTime<Utc>,
    hostname: &str,
    tag: &str,
    pid: u32,
) {
    // `%e` pads the day with a space, as the RFC wants ("Jan  5"); seconds
    // are 00-59.
    let time = super::syslog::without_leap_second(time);
    let _ = write!(
        out,
        "<{pri}>{} {hostname} {tag}[{pid}]: ",
        time.format("%b %e %H:%M:%S")
    );
}

/// A TAG from the configured app name.
pub fn tag(app_name: &str) -> String {
    let t: String = app_name
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | '/'))
        .take(TAG_MAX)
        .collect();
    if t.is_empty() {
        "auditrelay".into()
    } else {
        t
    }
}

/// A HOSTNAME without spaces or control characters.
pub fn hostname(name: &str) -> String {
    super::syslog::header_token(name, 255)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn bsd_header() {
        let mut out = Vec::new();
        let t = Utc.with_ymd_and_hms(2026, 1, 5, 8, 3, 9).unwrap();
        write_header(&mut out, 38, t, "relay-1", &tag("audit relay!"), 7);
        assert_eq!(out, b"<38>Jan  5 08:03:09 relay-1 auditrelay[7]: ");
        assert_eq!(hostname("my host"), "my_host");
        let mut out = Vec::new();
        let leap = DateTime::parse_from_rfc3339("2026-12-31T23:59:60Z")
            .unwrap()
            .with_timezone(&Utc);
        write_header(&mut out, 38, leap, "h", "t", 7);
        assert_eq!(out, b"<38>Dec 31 23:59:59 h t[7]: ");
    }
}
