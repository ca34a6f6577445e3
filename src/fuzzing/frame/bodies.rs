//! A strict reader of CEF and LEEF bodies: header fields and extensions or
//! attributes split on unescaped separators, with only the escapes each
//! format allows.

/// Splits `s` on unescaped `sep` (a `\` escapes the next byte, which must be
/// one of `escapable`); returns the pieces unescaped. `complete = false`
/// accepts a prefix of a record (a cut body).
fn split_escaped(s: &[u8], sep: Option<u8>, escapable: &[(u8, u8)], what: &str) -> Vec<Vec<u8>> {
    let mut out = vec![Vec::new()];
    let mut i = 0;
    while i < s.len() {
        match s[i] {
            b'\\' => {
                let e = *s
                    .get(i + 1)
                    .unwrap_or_else(|| panic!("{what}: lone \\ at the end"));
                let (_, v) = escapable
                    .iter()
                    .find(|(k, _)| *k == e)
                    .unwrap_or_else(|| panic!("{what}: escape \\{}", e as char));
                out.last_mut().expect("piece").push(*v);
                i += 2;
            }
            c if Some(c) == sep => {
                out.push(Vec::new());
                i += 1;
            }
            c => {
                assert!(c != b'\n' && c != b'\r', "{what}: raw line break");
                out.last_mut().expect("piece").push(c);
                i += 1;
            }
        }
    }
    out
}

fn text(v: Vec<u8>) -> String {
    String::from_utf8(v).expect("field is not UTF-8")
}

/// The header of a CEF or LEEF record: `prefix`, then fields up to the
/// `pipes`-th unescaped `|` (unescaped), and what follows. `None` for a cut
/// body (`complete = false`) that ends inside the header.
fn read_header<'a>(
    body: &'a [u8],
    prefix: &str,
    pipes: usize,
    complete: bool,
) -> Option<(Vec<Vec<u8>>, &'a [u8])> {
    let name = prefix.split(':').next().unwrap_or(prefix);
    if !complete && body.len() < prefix.len() {
        assert!(prefix.as_bytes().starts_with(body), "{name} prefix");
        return None;
    }
    assert!(body.starts_with(prefix.as_bytes()), "no {prefix} prefix");
    let rest = &body[prefix.len()..];
    let (mut seen, mut i) = (0, 0);
    while i < rest.len() && seen < pipes {
        match rest[i] {
            b'\\' => i += 2,
            b'|' => {
                seen += 1;
                i += 1
            }
            _ => i += 1,
        }
    }
    let (head, after) = rest.split_at(i.min(rest.len()));
    let fields = split_escaped(
        head,
        Some(b'|'),
        &[(b'\\', b'\\'), (b'|', b'|')],
        &format!("{name} header"),
    );
    if !complete && seen < pipes {
        return None;
    }
    assert_eq!(seen, pipes, "{name} header has {seen} separators");
    Some((fields, after))
}

/// A CEF record: the six header fields (unescaped) and the extensions as
/// key/value pairs (unescaped).
pub(super) fn read_cef(body: &[u8], complete: bool) -> (Vec<String>, Vec<(String, String)>) {
    // The header ends at the sixth unescaped `|`.
    let Some((fields, ext)) = read_header(body, "CEF:0|", 6, complete) else {
        return Default::default();
    };
    let fields: Vec<String> = fields.into_iter().map(text).collect();
    let severity = &fields[5];
    assert!(
        severity.parse::<u8>().is_ok_and(|n| n <= 10),
        "CEF severity {severity:?}"
    );
    // Extensions: every unescaped `=` ends a key that starts the extension
    // or follows a space; the value runs to the space before the next key.
    let mut eqs = Vec::new();
    let mut i = 0;
    while i < ext.len() {
        match ext[i] {
            b'\\' => {
                assert!(i + 1 < ext.len(), "CEF extension: lone \\ at the end");
                assert!(
                    matches!(ext[i + 1], b'\\' | b'=' | b'n' | b'r'),
                    "CEF extension escape \\{}",
                    ext[i + 1] as char
                );
                i += 2;
            }
            b'=' => {
                eqs.push(i);
                i += 1;
            }
            b'\n' | b'\r' => panic!("CEF extension: raw line break"),
            _ => i += 1,
        }
    }
    let mut pairs = Vec::new();
    let mut key_starts = Vec::new();
    for (n, &eq) in eqs.iter().enumerate() {
        let floor = if n == 0 { 0 } else { eqs[n - 1] + 1 };
        let ks = ext[floor..eq]
            .iter()
            .rposition(|c| *c == b' ')
            .map_or(floor, |p| floor + p + 1);
        let key = &ext[ks..eq];
        assert!(
            crate::format::cef::valid_key(std::str::from_utf8(key).unwrap_or("")),
            "CEF key {:?}",
            String::from_utf8_lossy(key)
        );
        assert!(
            ks == 0 && n == 0 || ks > 0 && ext[ks - 1] == b' ',
            "CEF key does not start the extension or follow a space"
        );
        key_starts.push(ks);
    }
    if !ext.is_empty() {
        assert!(!eqs.is_empty() || !complete, "CEF extension without a key");
    }
    for (n, &eq) in eqs.iter().enumerate() {
        let end = key_starts.get(n + 1).map_or(ext.len(), |ks| ks - 1);
        let key = String::from_utf8(ext[key_starts[n]..eq].to_vec()).expect("key");
        let value = split_escaped(
            &ext[eq + 1..end],
            None,
            &[(b'\\', b'\\'), (b'=', b'='), (b'n', b'\n'), (b'r', b'\r')],
            "CEF value",
        );
        pairs.push((key, text(value.concat())));
    }
    (fields, pairs)
}

/// A LEEF 2.0 record: the four header fields before the delimiter
/// declaration (unescaped) and the attributes.
pub(super) fn read_leef(
    body: &[u8],
    delim: char,
    complete: bool,
) -> (Vec<String>, Vec<(String, String)>) {
    let Some((mut fields, attrs)) = read_header(body, "LEEF:2.0|", 5, complete) else {
        return Default::default();
    };
    fields.truncate(5);
    let declared = text(fields.pop().expect("delimiter field"));
    let want = if delim == '\t' {
        "x09".to_string()
    } else {
        delim.to_string()
    };
    assert_eq!(declared, want, "LEEF delimiter declaration");
    let d = delim as u8;
    let mut escapable = vec![(b'\\', b'\\'), (b'n', b'\n'), (b'r', b'\r'), (d, d)];
    if d == b'\t' {
        escapable.push((b't', b'\t'));
    }
    let pieces = split_escaped(attrs, Some(d), &escapable, "LEEF attributes");
    let last = pieces.len() - 1;
    let mut pairs = Vec::new();
    for (n, piece) in pieces.into_iter().enumerate() {
        let piece = text(piece);
        match piece.split_once('=') {
            Some((k, v)) => {
                assert!(
                    !k.is_empty() && k.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'_'),
                    "LEEF key {k:?}"
                );
                pairs.push((k.to_string(), v.to_string()));
            }
            None => assert!(!complete && n == last, "LEEF attribute without ="),
        }
    }
    (fields.into_iter().map(text).collect(), pairs)
}
