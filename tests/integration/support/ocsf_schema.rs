//! Validates events against the compiled OCSF schema (tests/data, trimmed
//! from ocsf-lib's compile of OCSF 1.9.0-dev; see tests/data/NOTICE): the
//! class exists, every required attribute is present (those of profiles
//! the event does not declare excepted), no attribute is undefined, every
//! `*_id` enum value is defined, every value has its attribute's type
//! (recursively into objects and arrays, with the type's pattern checks
//! for emails, IPs, date-times, UUIDs, ports, lengths) and
//! `type_uid = class_uid * 100 + activity_id`; also the `at_least_one`
//! constraints of classes and objects.

use std::io::Read;
use std::net::IpAddr;
use std::sync::OnceLock;

use serde_json::Value;

const SCHEMA_GZ: &[u8] = include_bytes!("../../data/ocsf-schema.trimmed.json.gz");

pub fn schema() -> &'static Value {
    static SCHEMA: OnceLock<Value> = OnceLock::new();
    SCHEMA.get_or_init(|| {
        let mut text = String::new();
        flate2::read::GzDecoder::new(SCHEMA_GZ)
            .read_to_string(&mut text)
            .expect("tests/data/ocsf-schema.trimmed.json.gz is gzip");
        serde_json::from_str(&text).expect("the trimmed schema is JSON")
    })
}

/// Every way `event` breaks the schema (empty: valid).
pub fn problems(event: &Value) -> Vec<String> {
    let schema = schema();
    let mut out = Vec::new();
    let Some(class_uid) = event.get("class_uid").and_then(Value::as_u64) else {
        return vec!["class_uid: missing or not an integer".into()];
    };
    let Some(class) = schema["classes"]
        .as_object()
        .and_then(|c| c.values().find(|c| c["uid"].as_u64() == Some(class_uid)))
    else {
        return vec![format!(
            "class_uid {class_uid}: no such class in the schema"
        )];
    };
    let profiles: Vec<&str> = event
        .pointer("/metadata/profiles")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    check_object(
        event,
        &class["attributes"],
        &class["constraints"],
        "",
        &profiles,
        &mut out,
    );
    let activity = event.get("activity_id").and_then(Value::as_u64);
    let type_uid = event.get("type_uid").and_then(Value::as_u64);
    match (activity, type_uid) {
        (Some(a), Some(t)) if t == class_uid * 100 + a => {}
        _ => out.push(format!(
            "type_uid {type_uid:?} is not class_uid {class_uid} * 100 + activity_id {activity:?}"
        )),
    }
    out
}

fn check_object(
    v: &Value,
    attributes: &Value,
    constraints: &Value,
    at: &str,
    profiles: &[&str],
    out: &mut Vec<String>,
) {
    let Some(map) = v.as_object() else {
        out.push(format!("{at}: not an object"));
        return;
    };
    let Some(attrs) = attributes.as_object() else {
        return;
    };
    for (name, attr) in attrs {
        let applies = attr
            .get("profile")
            .and_then(Value::as_str)
            .is_none_or(|p| profiles.contains(&p));
        if attr["requirement"] == "required" && applies && !map.contains_key(name) {
            out.push(format!("{at}{name}: required attribute missing"));
        }
    }
    if let Some(any) = constraints.get("at_least_one").and_then(Value::as_array) {
        if !any
            .iter()
            .filter_map(Value::as_str)
            .any(|k| map.contains_key(k))
        {
            out.push(format!("{at}: needs at least one of {any:?}"));
        }
    }
    for (name, value) in map {
        let path = format!("{at}{name}");
        match attrs.get(name) {
            None => out.push(format!("{path}: not an attribute of this class or object")),
            Some(attr) => check_attribute(value, attr, name, &path, profiles, out),
        }
    }
}

fn check_attribute(
    v: &Value,
    attr: &Value,
    name: &str,
    path: &str,
    profiles: &[&str],
    out: &mut Vec<String>,
) {
    if attr["is_array"] == true {
        match v.as_array() {
            Some(items) => {
                for (i, item) in items.iter().enumerate() {
                    check_value(item, attr, name, &format!("{path}[{i}]"), profiles, out);
                }
            }
            None => out.push(format!("{path}: must be an array")),
        }
    } else {
        check_value(v, attr, name, path, profiles, out);
    }
}

fn check_value(
    v: &Value,
    attr: &Value,
    name: &str,
    path: &str,
    profiles: &[&str],
    out: &mut Vec<String>,
) {
    let schema = schema();
    let type_name = attr["type"].as_str().unwrap_or("");
    if type_name == "object" {
        // `unmapped` and the like: any object.
        if !v.is_object() {
            out.push(format!("{path}: must be an object"));
        }
        return;
    }
    if let Some(object) = schema["objects"].get(type_name) {
        check_object(
            v,
            &object["attributes"],
            &object["constraints"],
            &format!("{path}."),
            profiles,
            out,
        );
        return;
    }
    let Some(t) = schema["types"].get(type_name) else {
        out.push(format!("{path}: unknown type {type_name}"));
        return;
    };
    let base = t.get("type").and_then(Value::as_str).unwrap_or(type_name);
    let ok = match base {
        "string_t" => v.is_string(),
        "integer_t" | "long_t" => v.is_i64() || v.is_u64(),
        "float_t" => v.is_number(),
        "boolean_t" => v.is_boolean(),
        "json_t" => true,
        other => {
            out.push(format!("{path}: unhandled base type {other}"));
            true
        }
    };
    if !ok {
        out.push(format!("{path}: {v} is not a {type_name}"));
        return;
    }
    let text = v.as_str().unwrap_or("");
    let pattern_ok = match type_name {
        "email_t" => is_email(text),
        "ip_t" => text.trim().parse::<IpAddr>().is_ok(),
        "datetime_t" => chrono::DateTime::parse_from_rfc3339(text).is_ok(),
        "uuid_t" => is_uuid(text),
        "mac_t" => {
            text.len() == 17
                && text
                    .split([':', '-'])
                    .all(|p| p.len() == 2 && u8::from_str_radix(p, 16).is_ok())
        }
        _ => true,
    };
    if !pattern_ok {
        out.push(format!("{path}: {v} does not match {type_name}'s pattern"));
    }
    if let Some(max) = t.get("max_len").and_then(Value::as_u64) {
        if text.chars().count() as u64 > max {
            out.push(format!("{path}: longer than {max}"));
        }
    }
    if let Some([lo, hi]) = t.get("range").and_then(Value::as_array).map(Vec::as_slice) {
        let n = v.as_i64().unwrap_or(0);
        if n < lo.as_i64().unwrap_or(i64::MIN) || n > hi.as_i64().unwrap_or(i64::MAX) {
            out.push(format!("{path}: {n} out of range"));
        }
    }
    if name.ends_with("_id") {
        if let Some(values) = attr.get("enum").and_then(Value::as_array) {
            let key = match v {
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            if !values.iter().any(|e| e.as_str() == Some(key.as_str())) {
                out.push(format!("{path}: {key} is not a defined value"));
            }
        }
    }
}

/// OCSF `email_t`: `^[a-zA-Z0-9!#$%&'*+-/=?^_\`{|}~.]+@[a-zA-Z0-9-]+\.[a-zA-Z0-9-.]+$`.
fn is_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else {
        return false;
    };
    let Some((first, rest)) = domain.split_once('.') else {
        return false;
    };
    !local.is_empty()
        && local
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "!#$%&'*+,-./=?^_`{|}~".contains(c))
        && !first.is_empty()
        && first.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !rest.is_empty()
        && rest
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
}

fn is_uuid(s: &str) -> bool {
    let parts: Vec<&str> = s.split('-').collect();
    parts.iter().map(|p| p.len()).eq([8, 4, 4, 4, 12])
        && parts
            .iter()
            .all(|p| p.chars().all(|c| c.is_ascii_hexdigit()))
}

/// Panics naming every event that is not valid OCSF, with its problems.
pub fn assert_valid(events: &[Value]) {
    let bad: Vec<String> = events
        .iter()
        .filter_map(|e| {
            let p = problems(e);
            (!p.is_empty()).then(|| format!("{p:?} in {e}"))
        })
        .take(5)
        .collect();
    assert!(
        bad.is_empty(),
        "events not valid OCSF, e.g.:\n{}",
        bad.join("\n")
    );
}

#[test]
fn the_validator_rejects_what_it_should() {
    let good = serde_json::json!({
        "class_uid": 0, "category_uid": 0, "activity_id": 99, "type_uid": 99, "severity_id": 1,
        "time": 1, "metadata": {"product": {"name": "p"}, "version": "1.9.0-dev"}
    });
    assert_eq!(problems(&good), Vec::<String>::new());
    let broken = |f: &dyn Fn(&mut Value)| {
        let mut v = good.clone();
        f(&mut v);
        problems(&v)
    };
    assert!(!broken(&|v| v["class_uid"] = 42.into()).is_empty());
    assert!(!broken(&|v| v["type_uid"] = 98.into()).is_empty());
    assert!(!broken(&|v| v["severity_id"] = 7.into()).is_empty());
    assert!(!broken(&|v| v["time"] = "yesterday".into()).is_empty());
    assert!(!broken(&|v| v["metadata"]["version"] = 1.into()).is_empty());
    assert!(!broken(&|v| v["metadata"]["product"] = serde_json::json!({})).is_empty());
    assert!(!broken(&|v| {
        v.as_object_mut().unwrap().remove("metadata");
    })
    .is_empty());
    assert!(!broken(&|v| v["tenant"] = "acme".into()).is_empty());
    assert!(!broken(
        &|v| v["actor"] = serde_json::json!({"user": {"email_addr": "not an email", "uid": "u"}})
    )
    .is_empty());
    assert!(
        !broken(&|v| v["src_endpoint"] = serde_json::json!({"ip": "10.0.0.300", "name": "n"}))
            .is_empty()
    );
    assert!(!broken(&|v| v["metadata"]["tags"] = serde_json::json!({"name": "x"})).is_empty());
}
