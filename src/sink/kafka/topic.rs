//! Topic names with per-event placeholders (`audit.{type}`).

use serde_json::value::RawValue;

use crate::event::{get_field, scalar_text, Event, FieldPath};
use crate::format::ocsf::class_slug;

/// A topic name with per-event placeholders.
#[derive(Clone, Debug)]
enum Piece {
    Text(String),
    Type,
    Source,
    /// The OCSF class of an event shaped with `schema = "ocsf"`.
    Class,
    Field(FieldPath),
}

#[derive(Clone, Debug)]
pub(super) struct TopicTemplate(Vec<Piece>);

impl TopicTemplate {
    pub(super) fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("must not be empty".into());
        }
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..]
                .find('}')
                .ok_or_else(|| format!("\"{text}\": '{{' without a closing '}}'"))?;
            let name = &rest[open + 1..open + close];
            pieces.push(match name {
                "type" => Piece::Type,
                "source" => Piece::Source,
                "class" => Piece::Class,
                _ => Piece::Field(FieldPath::parse(name).map_err(|e| format!("\"{text}\": {e}"))?),
            });
            rest = &rest[open + close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(TopicTemplate(pieces))
    }

    pub(super) fn is_fixed(&self) -> bool {
        self.0.iter().all(|p| matches!(p, Piece::Text(_)))
    }

    pub(super) fn uses_class(&self) -> bool {
        self.0.iter().any(|p| matches!(p, Piece::Class))
    }

    pub(super) fn render(&self, source: &str, event: &Event, parsed: Option<&RawValue>) -> String {
        let mut out = String::new();
        for p in &self.0 {
            match p {
                Piece::Text(t) => out.push_str(t),
                Piece::Type => out.push_str(
                    event
                        .kind
                        .as_deref()
                        .map(topic_safe)
                        .as_deref()
                        .unwrap_or("unknown"),
                ),
                Piece::Source => out.push_str(source),
                Piece::Class => {
                    let name = parsed
                        .and_then(|r| get_field(r, "class_name"))
                        .and_then(scalar_text);
                    out.push_str(
                        name.as_deref()
                            .map(class_slug)
                            .as_deref()
                            .unwrap_or("unknown"),
                    );
                }
                Piece::Field(path) => {
                    let v = parsed.and_then(|r| path.lookup(r)).and_then(scalar_text);
                    out.push_str(v.as_deref().map(topic_safe).as_deref().unwrap_or("unknown"));
                }
            }
        }
        out
    }
}

/// Kafka topic names allow `[a-zA-Z0-9._-]`; anything else becomes `_`.
fn topic_safe(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn topic_templates() {
        let ev = Event {
            raw: Bytes::from_static(br#"{"tenant":{"id":"t/1"}}"#),
            id: None,
            time: None,
            kind: Some("auth login".into()),
        };
        let raw: &RawValue = serde_json::from_slice(&ev.raw).unwrap();
        let t = TopicTemplate::parse("audit.{type}.{source}.{tenant.id}.{missing}").unwrap();
        assert_eq!(
            t.render("veza", &ev, Some(raw)),
            "audit.auth_login.veza.t_1.unknown"
        );
        assert!(TopicTemplate::parse("audit.{type").is_err());
        assert!(TopicTemplate::parse("fixed").unwrap().is_fixed());
        let t = TopicTemplate::parse("ocsf.{class}").unwrap();
        assert!(t.uses_class());
        let ocsf = Event {
            raw: Bytes::from_static(br#"{"class_uid":6003,"class_name":"API Activity"}"#),
            ..ev.clone()
        };
        let raw: &RawValue = serde_json::from_slice(&ocsf.raw).unwrap();
        assert_eq!(t.render("veza", &ocsf, Some(raw)), "ocsf.api_activity");
        let raw: &RawValue = serde_json::from_slice(&ev.raw).unwrap();
        assert_eq!(t.render("veza", &ev, Some(raw)), "ocsf.unknown");
    }
}
