//! Events pushed to `webhook_in`. QuickZTNA and CertifyClouds push
//! violation and alert notifications: those become Detection Findings
//! (2004). Pushed audit entries are mapped as their vendor's pull API
//! entries are; anything else is a Base Event.
//!
//! | pushed event | OCSF |
//! |---|---|
//! | type/`event_type`/`action`/`category` naming a violation, alert, finding, threat or anomaly, or carrying `alert`/`violation`/`rule` | Detection Finding 2004 (Create), `finding_info` = id, title, description |
//! | a CertifyClouds entry (`event_type`) | as [`super::certifyclouds`] |
//! | a QuickZTNA entry (`action` + `resource_type`) | as [`super::quickztna`] |
//! | a Zaita-style event (`action` + `actor`) | as [`super::http_pull`] |

use serde_json::{json, Value};

use super::build::{endpoint, text, user, Mapped};
use super::schema::{self, finding, severity};

const FINDING_WORDS: [&str; 6] = [
    "violation",
    "alert",
    "finding",
    "threat",
    "anomal",
    "detect",
];

pub(super) fn map(ev: &Value) -> Option<Mapped> {
    if let Some(m) = detection(ev) {
        return Some(m);
    }
    if ev.get("event_type").is_some() {
        return super::certifyclouds::map(ev);
    }
    if ev.get("resource_type").is_some() {
        return super::quickztna::map(ev);
    }
    super::http_pull::map(ev)
}

fn detection(ev: &Value) -> Option<Mapped> {
    let kind = ["type", "event_type", "action", "category", "kind"]
        .iter()
        .find_map(|k| text(ev, k));
    let named = kind.is_some_and(|k| {
        let k = k.to_ascii_lowercase();
        FINDING_WORDS.iter().any(|w| k.contains(w))
    });
    let nested = ["alert", "violation", "finding"]
        .iter()
        .find(|k| ev.get(**k).is_some_and(Value::is_object));
    if !named && nested.is_none() && ev.get("rule").is_none() {
        return None;
    }
    // The details may sit in a nested `alert`/`violation` object.
    let body = nested.and_then(|k| ev.get(*k)).unwrap_or(ev);
    let pick = |keys: &[&str]| {
        keys.iter()
            .find_map(|k| text(body, k).or_else(|| text(ev, k)))
    };
    let mut m = Mapped::new(schema::DETECTION_FINDING, finding::CREATE);
    m.status_id = Some(finding::STATUS_NEW);
    let uid = pick(&["id", "alert_id", "violation_id", "event_id", "uid"]);
    let title = pick(&[
        "title",
        "name",
        "rule_name",
        "rule",
        "policy",
        "message",
        "summary",
    ])
    .or(kind)
    .unwrap_or("alert");
    let mut info = json!({ "uid": uid.unwrap_or(title), "title": title });
    if let Some(desc) = pick(&["description", "details", "reason", "message"]) {
        info["desc"] = json!(desc);
    }
    if let Some(kind) = kind {
        info["types"] = json!([kind]);
    }
    m.set("finding_info", Some(info));
    if let Some(word) = pick(&["severity", "level", "priority"]) {
        let id = severity::from_word(word);
        if id != severity::UNKNOWN {
            m.severity_id = id;
        }
    } else {
        m.severity_id = severity::MEDIUM;
    }
    let who = user(
        pick(&["user_id", "actor.id", "user.id"]),
        pick(&[
            "user_email",
            "actor.email",
            "actor.name",
            "user.email",
            "user.name",
            "email",
        ]),
    );
    if let Some(u) = who {
        m.set("actor", Some(json!({ "user": u })));
    }
    m.set(
        "src_endpoint",
        endpoint(pick(&["ip_address", "source_ip", "ip", "client_ip"])),
    );
    m.set("message", Some(json!(title)));
    m.set("is_alert", Some(json!(true)));
    Some(m)
}
