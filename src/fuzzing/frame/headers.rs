//! A strict reader of syslog frames: RFC 6587 framing, the RFC 5424 header
//! with its structured data, and the RFC 3164 header. It panics on anything
//! the grammar does not allow.

use crate::format::rfc5424;
use crate::sink::syslog::Framing;

/// The message inside a frame of `framing`.
pub(super) fn unframe(frame: &[u8], framing: Option<Framing>) -> &[u8] {
    match framing {
        Some(Framing::OctetCounting) => {
            let sp = frame
                .iter()
                .position(|c| *c == b' ')
                .expect("octet count without a space");
            let digits = &frame[..sp];
            assert!(
                !digits.is_empty() && digits[0] != b'0' && digits.iter().all(u8::is_ascii_digit),
                "MSG-LEN is not NONZERO-DIGIT *DIGIT"
            );
            let n: usize = std::str::from_utf8(digits)
                .expect("digits")
                .parse()
                .expect("count");
            let msg = &frame[sp + 1..];
            assert_eq!(n, msg.len(), "octet count differs from the message length");
            msg
        }
        Some(Framing::Lf) => {
            let msg = frame.strip_suffix(b"\n").expect("LF frame without its LF");
            assert!(!msg.contains(&b'\n'), "a raw LF inside an LF frame");
            msg
        }
        None => frame,
    }
}

/// A byte cursor that panics on anything the grammar does not allow.
struct Reader<'a> {
    s: &'a [u8],
    i: usize,
}

impl<'a> Reader<'a> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.i).copied()
    }

    fn expect(&mut self, what: &[u8], field: &str) {
        assert!(
            self.s[self.i..].starts_with(what),
            "{field}: expected {:?} at {}",
            String::from_utf8_lossy(what),
            self.i
        );
        self.i += what.len();
    }

    /// Bytes up to (not including) the first of `stop`, or the end.
    fn until(&mut self, stop: &[u8]) -> &'a [u8] {
        let start = self.i;
        while self.i < self.s.len() && !stop.contains(&self.s[self.i]) {
            self.i += 1;
        }
        &self.s[start..self.i]
    }

    fn rest(&mut self) -> &'a [u8] {
        let r = &self.s[self.i..];
        self.i = self.s.len();
        r
    }

    /// `<PRI>`: 1-3 digits without leading zeros, at most 191.
    fn pri(&mut self) -> u8 {
        self.expect(b"<", "PRI");
        let d = self.until(b">");
        self.expect(b">", "PRI");
        assert!(
            (1..=3).contains(&d.len())
                && d.iter().all(u8::is_ascii_digit)
                && (d.len() == 1 || d[0] != b'0'),
            "PRI {:?}",
            String::from_utf8_lossy(d)
        );
        let n: u16 = std::str::from_utf8(d)
            .expect("digits")
            .parse()
            .expect("PRI");
        assert!(n <= 191, "PRI {n}");
        n as u8
    }

    /// A header token: 1..=max PRINTUSASCII bytes, then a space.
    fn token(&mut self, max: usize, field: &str) -> &'a [u8] {
        let t = self.until(b" ");
        assert!(
            (1..=max).contains(&t.len()) && t.iter().all(u8::is_ascii_graphic),
            "{field} {:?} is not 1-{max} PRINTUSASCII",
            String::from_utf8_lossy(t)
        );
        self.expect(b" ", field);
        t
    }
}

/// An RFC 5424 message: its PRI, its SD element (`SD-ID`, params unescaped)
/// and its MSG.
#[allow(clippy::type_complexity)]
pub(super) fn read_rfc5424(
    msg: &[u8],
    lf: bool,
) -> (u8, Option<(String, Vec<(String, String)>)>, &[u8]) {
    let mut r = Reader { s: msg, i: 0 };
    let pri = r.pri();
    r.expect(b"1 ", "VERSION");
    let ts = r.token(32, "TIMESTAMP");
    if ts != b"-" {
        check_timestamp(ts);
    }
    r.token(rfc5424::HOSTNAME_MAX, "HOSTNAME");
    r.token(rfc5424::APP_NAME_MAX, "APP-NAME");
    r.token(rfc5424::PROCID_MAX, "PROCID");
    r.token(rfc5424::MSGID_MAX, "MSGID");
    let sd = if r.peek() == Some(b'-') {
        r.i += 1;
        None
    } else {
        let mut elements = Vec::new();
        while r.peek() == Some(b'[') {
            elements.push(read_sd_element(&mut r, lf));
        }
        assert_eq!(elements.len(), 1, "one SD element");
        elements.pop()
    };
    let body = if r.peek().is_none() {
        &[][..]
    } else {
        r.expect(b" ", "SP before MSG");
        r.rest()
    };
    (pri, sd, body)
}

/// Whether `t` is `shape` with each `d` a digit.
pub(super) fn has_shape(t: &str, shape: &str) -> bool {
    t.len() == shape.len()
        && t.bytes().zip(shape.bytes()).all(|(c, s)| {
            if s == b'd' {
                c.is_ascii_digit()
            } else {
                c == s
            }
        })
}

/// `YYYY-MM-DDTHH:MM:SS.ffffffZ` with the ranges of RFC 5424 §6.2.3 (no
/// leap second, at most 6 fraction digits, a 4-digit year).
fn check_timestamp(ts: &[u8]) {
    let t = std::str::from_utf8(ts).expect("ascii");
    assert!(
        has_shape(t, "dddd-dd-ddTdd:dd:dd.ddddddZ"),
        "TIMESTAMP {t:?} is not FULL-DATE \"T\" FULL-TIME"
    );
    let n = |a: usize, b: usize| t[a..b].parse::<u32>().expect("digits");
    assert!((1..=12).contains(&n(5, 7)), "month in {t}");
    assert!((1..=31).contains(&n(8, 10)), "day in {t}");
    assert!(n(11, 13) <= 23 && n(14, 16) <= 59, "time in {t}");
    assert!(
        n(17, 19) <= 59,
        "TIME-SECOND in {t} (00-59, no leap second)"
    );
    assert!(
        chrono::DateTime::parse_from_rfc3339(t).is_ok(),
        "TIMESTAMP {t} is no date"
    );
}

/// `[SD-ID *(SP PARAM-NAME="PARAM-VALUE")]`, values unescaped.
fn read_sd_element(r: &mut Reader<'_>, lf: bool) -> (String, Vec<(String, String)>) {
    let sd_name = |t: &[u8]| {
        (1..=32).contains(&t.len())
            && t.iter()
                .all(|c| c.is_ascii_graphic() && !matches!(c, b'=' | b']' | b'"'))
    };
    r.expect(b"[", "SD-ELEMENT");
    let id = r.until(b" ]");
    assert!(sd_name(id), "SD-ID {:?}", String::from_utf8_lossy(id));
    let mut params = Vec::new();
    loop {
        match r.peek() {
            Some(b']') => {
                r.i += 1;
                break;
            }
            Some(b' ') => r.i += 1,
            other => panic!("SD-ELEMENT: unexpected {other:?}"),
        }
        let name = r.until(b"=");
        assert!(
            sd_name(name),
            "PARAM-NAME {:?}",
            String::from_utf8_lossy(name)
        );
        r.expect(b"=\"", "SD-PARAM");
        let mut value = Vec::new();
        loop {
            match r.peek().expect("PARAM-VALUE not closed") {
                b'\\' => {
                    let e = r.s.get(r.i + 1).copied().expect("escape at the end");
                    value.push(match e {
                        b'"' | b'\\' | b']' => e,
                        b'n' if lf => b'\n',
                        b'r' if lf => b'\r',
                        _ => panic!("PARAM-VALUE escape \\{}", e as char),
                    });
                    r.i += 2;
                }
                b'"' => {
                    r.i += 1;
                    break;
                }
                b']' => panic!("unescaped ] in PARAM-VALUE"),
                c => {
                    value.push(c);
                    r.i += 1;
                }
            }
        }
        params.push((
            String::from_utf8(name.to_vec()).expect("ascii"),
            String::from_utf8(value).expect("PARAM-VALUE is not UTF-8"),
        ));
    }
    (String::from_utf8(id.to_vec()).expect("ascii"), params)
}

/// `<PRI>Mmm dd hh:mm:ss HOSTNAME TAG[PID]: MSG`: the PRI and MSG.
pub(super) fn read_rfc3164(msg: &[u8]) -> (u8, &[u8]) {
    let mut r = Reader { s: msg, i: 0 };
    let pri = r.pri();
    let ts = r.s.get(r.i..r.i + 15).expect("TIMESTAMP");
    let t = std::str::from_utf8(ts).expect("TIMESTAMP is ASCII");
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    assert!(MONTHS.contains(&&t[..3]), "month in {t:?}");
    let day = t[4..6].trim_start();
    assert!(
        t.as_bytes()[3] == b' '
            && !day.is_empty()
            && day.bytes().all(|c| c.is_ascii_digit())
            && (1..=31).contains(&day.parse::<u32>().unwrap_or(0)),
        "day in {t:?}"
    );
    let shape = " dd:dd:dd";
    assert!(
        t[6..]
            .bytes()
            .zip(shape.bytes())
            .all(|(c, s)| if s == b'd' {
                c.is_ascii_digit()
            } else {
                c == s
            }),
        "time in {t:?}"
    );
    let n = |a: usize| t[a..a + 2].parse::<u32>().expect("digits");
    assert!(
        n(7) <= 23 && n(10) <= 59 && n(13) <= 59,
        "time in {t:?} (00-23:00-59:00-59, no leap second)"
    );
    r.i += 15;
    r.expect(b" ", "SP");
    r.token(255, "HOSTNAME");
    let tag = r.until(b"[");
    assert!(
        (1..=32).contains(&tag.len())
            && tag
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.' | b'/')),
        "TAG {:?}",
        String::from_utf8_lossy(tag)
    );
    r.expect(b"[", "PID");
    let pid = r.until(b"]");
    assert!(!pid.is_empty() && pid.iter().all(u8::is_ascii_digit), "PID");
    r.expect(b"]: ", "after PID");
    (pri, r.rest())
}
