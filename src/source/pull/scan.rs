//! One pass over a page: the body is read by serde_json once, and that pass
//! yields everything the source needs: whether the body is JSON, the items'
//! byte spans, each item's id/time/type, and the next-page token.
//!
//! Walking a 10 MB page once per question (is it JSON? where are the items?
//! the token? each item's fields?) cost six to seven scans of every byte;
//! this is one. Items are never copied: an item is a span of the body, and
//! its event a zero-copy slice of the response buffer.
//!
//! serde_json hands a visitor no positions, but every key and value read as
//! a borrowed [`RawValue`] is a slice of the input: the spans come from
//! those slices plus the JSON grammar (whitespace, `:`, `,`, brackets)
//! around them, which serde_json has already validated.

use std::fmt;
use std::ops::Range;

use bytes::Bytes;
use serde::de::{self, DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::event::{Event, Extracted, FieldExtractor, FieldPath};

/// What one pass found in a page.
#[derive(Debug)]
pub struct PageScan {
    pub items: Items,
    /// The next-page token: a non-empty string at the token path, else none.
    pub next_token: Option<String>,
}

/// The member at the items path.
#[derive(Debug)]
pub enum Items {
    /// No such member (or the body is not an object): not a page.
    Missing,
    /// The member is there but is not an array; the text says what it is.
    NotArray(String),
    List(Vec<ScannedItem>),
}

/// One item: where it is in the body, and its extracted fields.
#[derive(Debug)]
pub struct ScannedItem {
    pub span: Range<usize>,
    pub fields: Extracted,
}

impl ScannedItem {
    /// The event, as a slice of `body` (the buffer that was scanned).
    pub fn into_event(self, body: &Bytes) -> Event {
        self.fields.into_event(body.slice(self.span))
    }
}

impl PageScan {
    /// Whether the items member is present (an array or not).
    pub fn has_items(&self) -> bool {
        !matches!(self.items, Items::Missing)
    }
}

/// Scans `body` once. `Err` when the body is not JSON (serde_json's message).
pub fn scan_page(
    body: &[u8],
    items: &FieldPath,
    next_token: Option<&FieldPath>,
    extractor: &FieldExtractor,
) -> Result<PageScan, String> {
    let text = std::str::from_utf8(body).map_err(|e| {
        format!(
            "invalid UTF-8 at byte {} (JSON must be UTF-8)",
            e.valid_up_to()
        )
    })?;
    let mut found = Found {
        items: Items::Missing,
        token: None,
    };
    let ctx = Ctx {
        page: text,
        extractor,
    };
    let mut de = serde_json::Deserializer::from_str(text);
    let start = skip_ws(text.as_bytes(), 0);
    if text.as_bytes().get(start) == Some(&b'{') {
        let level = Level {
            ctx: &ctx,
            items: Some(items.segments()),
            token: next_token.map(FieldPath::segments),
            found: &mut found,
        };
        de.deserialize_map(level).map_err(|e| e.to_string())?;
    } else {
        IgnoredAny::deserialize(&mut de).map_err(|e| e.to_string())?;
    }
    de.end().map_err(|e| e.to_string())?;
    Ok(PageScan {
        items: found.items,
        next_token: found.token,
    })
}

struct Ctx<'p> {
    page: &'p str,
    extractor: &'p FieldExtractor,
}

impl Ctx<'_> {
    /// Byte offset of `part`, a slice the deserializer borrowed from the page.
    fn offset_of<E: de::Error>(&self, part: &str) -> Result<usize, E> {
        (part.as_ptr() as usize)
            .checked_sub(self.page.as_ptr() as usize)
            .filter(|o| o + part.len() <= self.page.len())
            .ok_or_else(|| E::custom("page scan: a value outside the page (bug)"))
    }

    /// End offset of a borrowed slice.
    fn end_of<E: de::Error>(&self, part: &str) -> Result<usize, E> {
        Ok(self.offset_of::<E>(part)? + part.len())
    }

    /// Where the value after the key ending at `key_end` starts.
    fn value_start(&self, key_end: usize) -> usize {
        let b = self.page.as_bytes();
        let colon = skip_ws(b, key_end);
        skip_ws(b, colon + 1)
    }

    fn byte(&self, at: usize) -> Option<u8> {
        self.page.as_bytes().get(at).copied()
    }
}

fn skip_ws(b: &[u8], mut at: usize) -> usize {
    while at < b.len() && matches!(b[at], b' ' | b'\t' | b'\n' | b'\r') {
        at += 1;
    }
    at
}

struct Found {
    items: Items,
    token: Option<String>,
}

/// The text of a key read as a raw value (quotes included).
fn key_text(raw: &RawValue) -> std::borrow::Cow<'_, str> {
    let s = raw.get();
    if s.contains('\\') {
        serde_json::from_str::<String>(s)
            .map(std::borrow::Cow::Owned)
            .unwrap_or(std::borrow::Cow::Borrowed(""))
    } else {
        std::borrow::Cow::Borrowed(&s[1..s.len() - 1])
    }
}

/// One object on the way to the items and token: the remaining segments of
/// each path (`None` once that path left this branch). Like
/// [`FieldPath::lookup`], the first member with a wanted name is followed.
struct Level<'a, 'p> {
    ctx: &'a Ctx<'p>,
    items: Option<&'a [String]>,
    token: Option<&'a [String]>,
    found: &'a mut Found,
}

impl<'a, 'de, 'p> Visitor<'de> for Level<'a, 'p> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Level {
            ctx,
            mut items,
            mut token,
            found,
        } = self;
        while let Some(key) = map.next_key::<&'de RawValue>()? {
            let name = key_text(key);
            let follow = |path: &mut Option<&'a [String]>| -> Option<&'a [String]> {
                match *path {
                    Some([head, rest @ ..]) if *head == name => {
                        *path = None; // later duplicates are not followed
                        Some(rest)
                    }
                    _ => None,
                }
            };
            let (i, t) = (follow(&mut items), follow(&mut token));
            let start = ctx.value_start(ctx.end_of::<A::Error>(key.get())?);
            match (i, t) {
                (Some([]), _) => {
                    if ctx.byte(start) == Some(b'[') {
                        let list = map.next_value_seed(ItemList {
                            ctx,
                            cursor: start + 1,
                        })?;
                        found.items = Items::List(list);
                    } else {
                        let v: &'de RawValue = map.next_value()?;
                        let why = serde_json::from_str::<Vec<IgnoredAny>>(v.get())
                            .err()
                            .map_or_else(|| "not an array".to_string(), |e| e.to_string());
                        found.items = Items::NotArray(why);
                    }
                }
                (_, Some([])) => {
                    let v: &'de RawValue = map.next_value()?;
                    found.token = serde_json::from_str::<Option<String>>(v.get())
                        .ok()
                        .flatten()
                        .filter(|t| !t.is_empty());
                }
                (None, None) => {
                    map.next_value::<IgnoredAny>()?;
                }
                (i, t) if ctx.byte(start) == Some(b'{') => {
                    map.next_value_seed(Level {
                        ctx,
                        items: i,
                        token: t,
                        found: &mut *found,
                    })?;
                }
                _ => {
                    map.next_value::<IgnoredAny>()?;
                }
            }
        }
        Ok(())
    }
}

impl<'de> DeserializeSeed<'de> for Level<'_, '_> {
    type Value = ();
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_map(self)
    }
}

/// The items array; `cursor` is just past the `[` or the previous item.
struct ItemList<'a, 'p> {
    ctx: &'a Ctx<'p>,
    cursor: usize,
}

impl<'de> DeserializeSeed<'de> for ItemList<'_, '_> {
    type Value = Vec<ScannedItem>;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de> Visitor<'de> for ItemList<'_, '_> {
    type Value = Vec<ScannedItem>;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an array of items")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx;
        let b = ctx.page.as_bytes();
        let mut cursor = self.cursor;
        let mut out = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        loop {
            // Between items: whitespace and one comma, already validated.
            let mut start = skip_ws(b, cursor);
            if b.get(start) == Some(&b',') {
                start = skip_ws(b, start + 1);
            }
            let item = if b.get(start) == Some(&b'{') {
                seq.next_element_seed(ItemObject { ctx, start })?
            } else {
                match seq.next_element::<&'de RawValue>()? {
                    Some(v) => {
                        let at = ctx.offset_of::<A::Error>(v.get())?;
                        Some(ScannedItem {
                            span: at..at + v.get().len(),
                            fields: Extracted::default(),
                        })
                    }
                    None => None,
                }
            };
            match item {
                Some(item) => {
                    cursor = item.span.end;
                    out.push(item);
                }
                None => return Ok(out),
            }
        }
    }
}

/// One object item starting at `start`: its wanted top-level members are
/// kept, the rest skipped; its end is found after its last member.
struct ItemObject<'a, 'p> {
    ctx: &'a Ctx<'p>,
    start: usize,
}

impl<'de> DeserializeSeed<'de> for ItemObject<'_, '_> {
    type Value = ScannedItem;
    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_map(self)
    }
}

impl<'de> Visitor<'de> for ItemObject<'_, '_> {
    type Value = ScannedItem;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("an object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let ctx = self.ctx;
        let ex = ctx.extractor;
        let mut top: Vec<(std::borrow::Cow<'de, str>, &'de RawValue)> = Vec::new();
        let mut last_end = self.start + 1;
        while let Some(key) = map.next_key::<&'de RawValue>()? {
            let value: &'de RawValue = map.next_value()?;
            let name = key_text(key);
            if ex.wants(&name) {
                top.push((name, value));
            }
            last_end = ctx.end_of::<A::Error>(value.get())?;
        }
        let close = skip_ws(ctx.page.as_bytes(), last_end);
        if ctx.byte(close) != Some(b'}') {
            return Err(de::Error::custom("page scan: object end not found (bug)"));
        }
        Ok(ScannedItem {
            span: self.start..close + 1,
            fields: ex.from_top(&top),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> FieldPath {
        FieldPath::parse(s).unwrap()
    }

    /// The multi-pass reading this scan replaces: lookup, then items, then
    /// each item's fields. Every case below must agree with it.
    fn reference(
        body: &Bytes,
        items: &FieldPath,
        token: &FieldPath,
    ) -> (Vec<Event>, Option<String>) {
        let root: &RawValue = serde_json::from_slice(body).unwrap();
        let next = token
            .lookup(root)
            .and_then(|v| {
                serde_json::from_str::<Option<String>>(v.get())
                    .ok()
                    .flatten()
            })
            .filter(|t| !t.is_empty());
        let list: Vec<&RawValue> = items
            .lookup(root)
            .map(|v| serde_json::from_str(v.get()).unwrap())
            .unwrap_or_default();
        let ex = FieldExtractor::veza_defaults();
        (list.iter().map(|i| ex.event(body, i)).collect(), next)
    }

    fn same(body: &str, items: &str, token: &str) {
        let body = Bytes::copy_from_slice(body.as_bytes());
        let (items, token) = (p(items), p(token));
        let scan = scan_page(
            &body,
            &items,
            Some(&token),
            &FieldExtractor::veza_defaults(),
        )
        .unwrap();
        let (want, next) = reference(&body, &items, &token);
        assert_eq!(scan.next_token, next, "token of {body:?}");
        let got: Vec<Event> = match scan.items {
            Items::List(l) => l.into_iter().map(|i| i.into_event(&body)).collect(),
            Items::Missing => Vec::new(),
            Items::NotArray(e) => panic!("{e}"),
        };
        assert_eq!(got.len(), want.len(), "{body:?}");
        for (g, w) in got.iter().zip(&want) {
            assert_eq!(g.raw, w.raw);
            assert_eq!((&g.id, g.time, &g.kind), (&w.id, w.time, &w.kind));
            // Zero-copy: a slice of the body.
            let base = body.as_ptr() as usize;
            assert!(g.raw.as_ptr() as usize >= base);
        }
    }

    #[test]
    fn agrees_with_the_multi_pass_reading() {
        same(
            r#"{"values":[{"request_id":"r1","ended_at":"2023-07-26T08:23:17.151080751Z","endpoint":"/x"},{"id":42,"timestamp":1690359797.5,"intent":"login"}],"next_page_token":"t2"}"#,
            "values",
            "next_page_token",
        );
        // Whitespace everywhere, escaped keys, nested type, odd items.
        same(
            " \n{ \"next_page_token\" : \"\" ,\r\n \"values\" :\t[ {} , { } ,1, \"s\" ,[1,{\"a\":2}],null,\n { \"me\\u0074a\" : {\"type\":\"auth.login\"} , \"id\" : \"a\\\"b\" } ] } \n",
            "values",
            "next_page_token",
        );
        // Nested paths sharing a prefix; a duplicate key is not followed.
        same(
            r#"{"data":{"items":[{"id":"1"}],"page":{"next":"n"}},"data":{"items":[{"id":"2"}]}}"#,
            "data.items",
            "data.page.next",
        );
        // Null and non-string tokens are none; no items member.
        same(r#"{"next_page_token":null}"#, "values", "next_page_token");
        same(
            r#"{"next_page_token":5,"values":[]}"#,
            "values",
            "next_page_token",
        );
        same(r#"[{"values":[1]}]"#, "values", "next_page_token");
        same(
            r#"{"data":[1],"values":{"x":[]}}"#,
            "data.items",
            "values.x",
        );
    }

    #[test]
    fn not_json_not_an_array_and_missing() {
        let ex = FieldExtractor::veza_defaults();
        let err = scan_page(br#"{"values":[{"a":1},]}"#, &p("values"), None, &ex).unwrap_err();
        assert!(err.contains("line 1"), "{err}");
        assert!(scan_page(b"{\"values\":[\"\xff\"]}", &p("values"), None, &ex).is_err());
        assert!(scan_page(br#"{"values":[]} x"#, &p("values"), None, &ex).is_err());
        let s = scan_page(br#"{"values":null}"#, &p("values"), None, &ex).unwrap();
        assert!(
            matches!(s.items, Items::NotArray(ref e) if e.contains("null")),
            "{s:?}"
        );
        assert!(s.has_items());
        let s = scan_page(
            br#"{"code":8,"message":"slow down"}"#,
            &p("values"),
            None,
            &ex,
        )
        .unwrap();
        assert!(!s.has_items());
    }
}
