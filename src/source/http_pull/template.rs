//! Request templates: `{since}`, `{until}`, `{cursor}` and `{page_size}`
//! in query values and a JSON body.

use serde_json::Value;

/// The placeholders a template may use.
pub(super) const PLACEHOLDERS: &[&str] = &["since", "until", "cursor", "page_size"];

/// The values of one request's placeholders (`None` = absent).
pub(super) struct Vars {
    pub(super) since: String,
    pub(super) until: String,
    pub(super) cursor: Option<String>,
    pub(super) page_size: u32,
    /// Whether `{cursor}` and the times are numbers in a JSON body.
    pub(super) cursor_is_number: bool,
    pub(super) times_are_numbers: bool,
}

impl Vars {
    fn get(&self, name: &str) -> Option<String> {
        match name {
            "since" => Some(self.since.clone()),
            "until" => Some(self.until.clone()),
            "cursor" => self.cursor.clone(),
            "page_size" => Some(self.page_size.to_string()),
            _ => None,
        }
    }

    /// A placeholder's value in a JSON body, typed.
    fn json(&self, name: &str) -> Option<Value> {
        let text = self.get(name)?;
        let number = match name {
            "page_size" => true,
            "cursor" => self.cursor_is_number,
            "since" | "until" => self.times_are_numbers,
            _ => false,
        };
        if number {
            if let Ok(n) = text.parse::<i64>() {
                return Some(Value::from(n));
            }
        }
        Some(Value::String(text))
    }
}

/// The `{name}`s of a template (known or not).
pub(super) fn placeholders(template: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close)
                if !after[..close].is_empty()
                    && after[..close]
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_') =>
            {
                out.push(&after[..close]);
                rest = &after[close + 1..];
            }
            _ => rest = after,
        }
    }
    out
}

/// Fills a template; `None` when it names an absent value.
pub(super) fn render(template: &str, vars: &Vars) -> Option<String> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        let after = &rest[open + 1..];
        match after.find('}') {
            Some(close) if PLACEHOLDERS.contains(&&after[..close]) => {
                out.push_str(&vars.get(&after[..close])?);
                rest = &after[close + 1..];
            }
            _ => {
                out.push('{');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    Some(out)
}

/// Fills a JSON body template; absent values drop their key.
pub(super) fn render_json(template: &Value, vars: &Vars) -> Option<Value> {
    match template {
        Value::String(s) => {
            let exact = s
                .strip_prefix('{')
                .and_then(|r| r.strip_suffix('}'))
                .filter(|n| PLACEHOLDERS.contains(n));
            match exact {
                Some(name) => vars.json(name),
                None => render(s, vars).map(Value::String),
            }
        }
        Value::Object(map) => Some(Value::Object(
            map.iter()
                .filter_map(|(k, v)| render_json(v, vars).map(|v| (k.clone(), v)))
                .collect(),
        )),
        Value::Array(items) => Some(Value::Array(
            items
                .iter()
                .map(|v| render_json(v, vars).unwrap_or(Value::Null))
                .collect(),
        )),
        other => Some(other.clone()),
    }
}

/// Every string in a JSON body template.
pub(super) fn body_strings<'a>(v: &'a Value, out: &mut Vec<&'a str>) {
    match v {
        Value::String(s) => out.push(s),
        Value::Object(m) => m.values().for_each(|v| body_strings(v, out)),
        Value::Array(a) => a.iter().for_each(|v| body_strings(v, out)),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(cursor: Option<&str>) -> Vars {
        Vars {
            since: "2026-01-01T00:00:00Z".into(),
            until: "2026-01-01T01:00:00Z".into(),
            cursor: cursor.map(Into::into),
            page_size: 50,
            cursor_is_number: false,
            times_are_numbers: false,
        }
    }

    #[test]
    fn templates_fill_and_drop_absent_values() {
        assert_eq!(
            render("from={since}&n={page_size}", &vars(None)).as_deref(),
            Some("from=2026-01-01T00:00:00Z&n=50")
        );
        assert_eq!(render("{cursor}", &vars(None)), None);
        assert_eq!(render("{cursor}", &vars(Some("t1"))).as_deref(), Some("t1"));
        assert_eq!(
            render("{not_ours}", &vars(None)).as_deref(),
            Some("{not_ours}")
        );
        assert_eq!(placeholders("a{since}b{x_y}{}{ c }"), vec!["since", "x_y"]);
        let body = serde_json::json!({
            "filter": {"from": "{since}", "to": "{until}"},
            "limit": "{page_size}",
            "page_token": "{cursor}",
            "note": "until {until}",
            "fixed": 3
        });
        let out = render_json(&body, &vars(None)).unwrap();
        assert_eq!(
            out,
            serde_json::json!({
                "filter": {"from": "2026-01-01T00:00:00Z", "to": "2026-01-01T01:00:00Z"},
                "limit": 50,
                "note": "until 2026-01-01T01:00:00Z",
                "fixed": 3
            })
        );
        let mut v = vars(Some("40"));
        v.cursor_is_number = true;
        assert_eq!(render_json(&body, &v).unwrap()["page_token"], 40);
    }
}
