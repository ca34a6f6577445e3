//! Pieces shared by the syslog header formats (RFC 5424, RFC 3164) and the
//! SIEM bodies (CEF, LEEF): facility and severity, and text helpers that cut
//! or clean a field without ever splitting a UTF-8 character.

use std::fmt;

use chrono::{DateTime, Datelike, Timelike, Utc};
use serde::de::{self, Deserializer, Visitor};
use serde::Deserialize;

/// RFC 5424 §6.2.1 facility codes by their usual names.
const FACILITIES: &[&str] = &[
    "kern", "user", "mail", "daemon", "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv",
    "ftp", "ntp", "audit", "alert", "clock", "local0", "local1", "local2", "local3", "local4",
    "local5", "local6", "local7",
];

/// RFC 5424 §6.2.1 severities, most severe first.
const SEVERITIES: &[&str] = &[
    "emerg", "alert", "crit", "err", "warning", "notice", "info", "debug",
];

/// A syslog facility (0-23), written in config as a name (`local0`) or number.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Facility(pub u8);

/// A syslog severity (0 = emerg … 7 = debug), written as a name or number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Severity(pub u8);

impl Facility {
    pub const LOCAL0: Facility = Facility(16);

    pub fn parse(text: &str) -> Option<Facility> {
        let t = text.trim().to_ascii_lowercase();
        let t = match t.as_str() {
            "security" => "auth",
            "logaudit" | "log_audit" => "audit",
            other => other,
        };
        lookup(FACILITIES, t).map(Facility)
    }
}

impl Severity {
    pub const ERR: Severity = Severity(3);
    pub const WARNING: Severity = Severity(4);
    pub const NOTICE: Severity = Severity(5);
    pub const INFO: Severity = Severity(6);

    /// Names (`warning`, with the common aliases `error`, `warn`, `emergency`,
    /// `critical`, `informational`) or numbers 0-7.
    pub fn parse(text: &str) -> Option<Severity> {
        let t = text.trim().to_ascii_lowercase();
        let t = match t.as_str() {
            "emergency" | "panic" => "emerg",
            "critical" => "crit",
            "error" => "err",
            "warn" => "warning",
            "informational" | "information" => "info",
            other => other,
        };
        lookup(SEVERITIES, t).map(Severity)
    }

    pub fn name(self) -> &'static str {
        SEVERITIES.get(self.0 as usize).copied().unwrap_or("info")
    }

    /// The 0-10 scale of CEF and LEEF (10 = most severe).
    pub fn siem_scale(self) -> u8 {
        match self.0 {
            0..=2 => 10,
            3 => 8,
            4 => 6,
            5 => 4,
            6 => 3,
            _ => 1,
        }
    }
}

/// `<PRI>` = facility × 8 + severity.
pub fn pri(facility: Facility, severity: Severity) -> u8 {
    facility.0 * 8 + severity.0
}

fn lookup(names: &[&str], text: &str) -> Option<u8> {
    if let Ok(n) = text.parse::<u8>() {
        return (usize::from(n) < names.len()).then_some(n);
    }
    names.iter().position(|n| *n == text).map(|i| i as u8)
}

struct NameOrNumber {
    what: &'static str,
    names: &'static [&'static str],
}

impl Visitor<'_> for NameOrNumber {
    type Value = u8;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "a syslog {} name ({}) or number 0-{}",
            self.what,
            self.names.join(", "),
            self.names.len() - 1
        )
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<u8, E> {
        let parsed = if self.what == "facility" {
            Facility::parse(v).map(|f| f.0)
        } else {
            Severity::parse(v).map(|s| s.0)
        };
        parsed.ok_or_else(|| E::invalid_value(de::Unexpected::Str(v), &self))
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<u8, E> {
        if (v as usize) < self.names.len() {
            Ok(v as u8)
        } else {
            Err(E::invalid_value(de::Unexpected::Unsigned(v), &self))
        }
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<u8, E> {
        if v < 0 {
            return Err(E::invalid_value(de::Unexpected::Signed(v), &self));
        }
        self.visit_u64(v as u64)
    }
}

impl<'de> Deserialize<'de> for Facility {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NameOrNumber {
            what: "facility",
            names: FACILITIES,
        })
        .map(Facility)
    }
}

impl<'de> Deserialize<'de> for Severity {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(NameOrNumber {
            what: "severity",
            names: SEVERITIES,
        })
        .map(Severity)
    }
}

/// The longest prefix of `s` of at most `max` bytes that ends on a character
/// boundary.
pub fn cut(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

/// Like [`cut`] on bytes that hold UTF-8 text, additionally never ending
/// inside a backslash escape (an odd run of trailing backslashes), so an
/// escaped field stays well formed after the cut.
pub fn cut_escaped(bytes: &[u8], max: usize) -> usize {
    if bytes.len() <= max {
        return bytes.len();
    }
    let mut end = max;
    // UTF-8 continuation bytes are 10xxxxxx.
    while end > 0 && (bytes[end] & 0xC0) == 0x80 {
        end -= 1;
    }
    let run = bytes[..end]
        .iter()
        .rev()
        .take_while(|b| **b == b'\\')
        .count();
    if run % 2 == 1 {
        end -= 1;
    }
    end
}

/// `t` as the RFC 3339 profiles of RFC 5424 and LEEF can carry it: a
/// 4-digit year, else `None` (an event time from a hostile or broken field,
/// `253402300800000` ms, would print as `+10000-…` and break the header; the
/// receiver's clock is better), and no leap second (`:60`, which chrono
/// reads from RFC 3339 text, becomes `:59.999999999`).
pub fn writable_time(t: DateTime<Utc>) -> Option<DateTime<Utc>> {
    (0..=9999)
        .contains(&t.year())
        .then(|| without_leap_second(t))
}

/// A leap second (`:60`) as `:59.999999999`: syslog timestamps count
/// seconds 00-59.
pub fn without_leap_second(t: DateTime<Utc>) -> DateTime<Utc> {
    if t.nanosecond() >= 1_000_000_000 {
        t.with_nanosecond(999_999_999).unwrap_or(t)
    } else {
        t
    }
}

/// A header token of RFC 5424 (PRINTUSASCII, `%d33-126`, at most `max`
/// bytes): other characters become `_`; an empty result is `-` (NILVALUE).
pub fn header_token(text: &str, max: usize) -> String {
    let mut out: String = text
        .chars()
        .map(|c| if c.is_ascii_graphic() { c } else { '_' })
        .take(max)
        .collect();
    if out.is_empty() {
        out.push('-');
    }
    out
}

/// A short name for an event type that must fit a small field (MSGID is 32
/// bytes): the type itself when it fits, else its last `/`- or `.`-separated
/// segment (`/api.v1.UserService/DeleteUser` → `DeleteUser`), else a cut.
pub fn short_name(kind: &str, max: usize) -> &str {
    if kind.len() <= max {
        return kind;
    }
    let last = kind
        .rsplit(['/', '.'])
        .find(|s| !s.is_empty())
        .unwrap_or(kind);
    cut(last, max)
}

/// This machine's host name, for the HOSTNAME header field.
pub fn local_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "-".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_numbers() {
        assert_eq!(Facility::parse("local0"), Some(Facility(16)));
        assert_eq!(Facility::parse("AUTHPRIV"), Some(Facility(10)));
        assert_eq!(Facility::parse("23"), Some(Facility(23)));
        assert_eq!(Facility::parse("24"), None);
        assert_eq!(Severity::parse("warn"), Some(Severity::WARNING));
        assert_eq!(Severity::parse("7"), Some(Severity(7)));
        assert_eq!(Severity::parse("loud"), None);
        assert_eq!(pri(Facility(16), Severity::INFO), 134);
        let f: Facility = serde_json::from_str("\"audit\"").unwrap();
        assert_eq!(f, Facility(13));
        let s: Severity = serde_json::from_str("4").unwrap();
        assert_eq!(s, Severity::WARNING);
        let err = serde_json::from_str::<Severity>("\"bad\"").unwrap_err();
        assert!(err.to_string().contains("warning"), "{err}");
    }

    #[test]
    fn cuts_never_split_characters_or_escapes() {
        assert_eq!(cut("aé", 2), "a");
        assert_eq!(cut("abc", 5), "abc");
        let s = "ab\\\\\\\"cd".as_bytes(); // ab \\ \\ \\ " cd ... as escaped text
        assert_eq!(cut_escaped(s, 3), 2); // "ab\" would end in a lone backslash
        assert_eq!(cut_escaped(s, 4), 4);
        assert_eq!(cut_escaped("☃☃".as_bytes(), 4), 3);
    }

    #[test]
    fn times_outside_rfc3339_profiles_are_dropped_or_folded() {
        // The syslog_encoder fuzz target's TIMESTAMP checks fail on these
        // times without it.
        let t = |text: &str| {
            DateTime::parse_from_rfc3339(text)
                .unwrap()
                .with_timezone(&Utc)
        };
        let far = crate::event::parse_time(
            serde_json::from_str::<&serde_json::value::RawValue>("253402300800000").unwrap(),
        )
        .unwrap();
        assert_eq!(far.year(), 10000);
        assert_eq!(writable_time(far), None);
        assert_eq!(writable_time(t("0000-01-01T00:00:00+00:01")), None);
        let leap = writable_time(t("2026-03-15T08:42:60.5Z")).unwrap();
        assert_eq!(leap, t("2026-03-15T08:42:59.999999999Z"));
        let plain = t("9999-12-31T23:59:59.25Z");
        assert_eq!(writable_time(plain), Some(plain));
    }

    #[test]
    fn tokens_and_short_names() {
        assert_eq!(header_token("a b\u{e9}", 10), "a_b_");
        assert_eq!(header_token("", 10), "-");
        assert_eq!(
            short_name("/api_protos.v1.APIKeyService/CreateAPIKey", 32),
            "CreateAPIKey"
        );
        assert_eq!(short_name("login", 32), "login");
    }
}
