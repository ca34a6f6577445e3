//! Dotted paths applied to a parsed event: every match is visited, a path
//! through an array applies to each element, and a path that matches
//! nothing does nothing (an event without the field is not an error).

use std::collections::BTreeMap;

use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// What an event's bytes are to shaping.
pub(super) enum Parsed {
    Value(Value),
    NotJson,
    /// JSON, but nested deeper than [`MAX_DEPTH`].
    TooDeep,
}

/// Deepest nesting walked (serde_json's own limit for `Value`).
const MAX_DEPTH: usize = 128;

/// The event as a `Value`. Sources split pages with `RawValue`, which
/// accepts numbers `Value` cannot hold (`1e400`): those are kept as the
/// string of their text, so the rest of the event can still be shaped.
pub(super) fn parse(raw: &[u8]) -> Parsed {
    if let Ok(v) = serde_json::from_slice::<Value>(raw) {
        return Parsed::Value(v);
    }
    let Ok(root) = serde_json::from_slice::<&RawValue>(raw) else {
        return Parsed::NotJson;
    };
    match lenient(root, 0) {
        Some(v) => Parsed::Value(v),
        None => Parsed::TooDeep,
    }
}

fn lenient(raw: &RawValue, depth: usize) -> Option<Value> {
    if depth > MAX_DEPTH {
        return None;
    }
    if let Ok(v) = serde_json::from_str::<Value>(raw.get()) {
        return Some(v);
    }
    let text = raw.get().trim_start();
    match text.as_bytes().first()? {
        b'{' => {
            let fields: BTreeMap<String, &RawValue> = serde_json::from_str(text).ok()?;
            let mut map = Map::new();
            for (k, v) in fields {
                map.insert(k, lenient(v, depth + 1)?);
            }
            Some(Value::Object(map))
        }
        b'[' => {
            let items: Vec<&RawValue> = serde_json::from_str(text).ok()?;
            items
                .into_iter()
                .map(|v| lenient(v, depth + 1))
                .collect::<Option<Vec<_>>>()
                .map(Value::Array)
        }
        b'-' | b'0'..=b'9' => Some(Value::String(text.trim_end().to_string())),
        _ => None,
    }
}

/// Calls `f` on every value at `path` in `v`; returns whether any matched.
/// A key with dots (`{"identity.email": …}`, a flattened event) matches
/// the segments it spells.
pub(super) fn for_each(v: &mut Value, path: &[String], f: &mut dyn FnMut(&mut Value)) -> bool {
    if path.is_empty() {
        f(v);
        return true;
    }
    match v {
        Value::Object(map) => {
            let mut any = false;
            for k in 1..=path.len() {
                if let Some(child) = map.get_mut(&path[..k].join(".")) {
                    any |= for_each(child, &path[k..], f);
                }
            }
            any
        }
        Value::Array(items) => {
            let mut any = false;
            for item in items {
                any |= for_each(item, path, f);
            }
            any
        }
        _ => false,
    }
}

/// Removes every value at `path` (matched as [`for_each`] does); returns
/// whether any was there.
pub(super) fn remove(v: &mut Value, path: &[String]) -> bool {
    if path.is_empty() {
        return false;
    }
    match v {
        Value::Object(map) => {
            let mut any = false;
            for k in 1..=path.len() {
                let key = path[..k].join(".");
                if k == path.len() {
                    any |= map.remove(&key).is_some();
                } else if let Some(child) = map.get_mut(&key) {
                    any |= remove(child, &path[k..]);
                }
            }
            any
        }
        Value::Array(items) => items
            .iter_mut()
            .fold(false, |any, item| remove(item, path) | any),
        _ => false,
    }
}

/// Sets `path` to `value`, making the objects on the way; a value in the
/// way that is not an object is left alone (the field is not added).
pub(super) fn set(v: &mut Value, path: &[String], value: Value) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    let Value::Object(map) = v else {
        return;
    };
    if rest.is_empty() {
        map.insert(first.clone(), value);
        return;
    }
    let child = map
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    set(child, rest, value);
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn p(s: &str) -> Vec<String> {
        s.split('.').map(str::to_string).collect()
    }

    #[test]
    fn visits_through_arrays_and_ignores_missing_paths() {
        let mut v = json!({"users": [{"email": "a"}, {"email": "b"}, {"name": "c"}], "n": 1});
        let mut seen = Vec::new();
        assert!(for_each(&mut v, &p("users.email"), &mut |x| seen.push(x.clone())));
        assert_eq!(seen, vec![json!("a"), json!("b")]);
        assert!(!for_each(&mut v, &p("n.deeper"), &mut |_| panic!(
            "no match"
        )));
        assert!(!for_each(&mut v, &p("missing.path"), &mut |_| panic!(
            "no match"
        )));
    }

    #[test]
    fn removes_and_sets() {
        let mut v = json!({"a": {"b": 1, "c": 2}, "l": [{"x": 1}, {"x": 2, "y": 3}], "s": "text"});
        assert!(remove(&mut v, &p("a.b")));
        assert!(remove(&mut v, &p("l.x")));
        assert!(!remove(&mut v, &p("a.zzz")));
        set(&mut v, &p("tags.env"), json!("prod"));
        set(&mut v, &p("s.inner"), json!(1));
        assert_eq!(
            v,
            json!({"a": {"c": 2}, "l": [{}, {"y": 3}], "s": "text", "tags": {"env": "prod"}})
        );
    }
}
