//! Reading an answer: where its items are, and where the walk goes next
//! (a token in the body or a header, an offset, a page number, a `Link`).

use bytes::Bytes;
use reqwest::header::HeaderMap;
use serde_json::value::RawValue;

use super::config::{HttpPullConfig, Mode, PaginationConfig};
use crate::event::{scalar_text, Event, FieldExtractor, FieldPath};
use crate::source::pull::{find_items, page_is_last, snippet, Next};

const ITEM_CANDIDATES: &[&str] = &[
    "data", "items", "events", "results", "entries", "records", "logs", "values",
];

/// The target of `Link: <...>; rel="next"` (RFC 8288), resolved against `base`.
pub fn link_next(headers: &HeaderMap, base: &url::Url) -> Option<url::Url> {
    for value in headers.get_all(reqwest::header::LINK) {
        let Ok(text) = value.to_str() else { continue };
        let mut rest = text;
        // Each round consumes one link-value: bounded by the header length.
        while let Some(open) = rest.find('<') {
            let after = &rest[open + 1..];
            let close = after.find('>')?;
            let target = &after[..close];
            let params_end = after[close..].find('<').map_or(after.len(), |i| close + i);
            let params = &after[close + 1..params_end];
            let is_next = params.split(';').any(|p| {
                let p = p.trim().trim_end_matches(',').trim();
                p.split_once('=').is_some_and(|(k, v)| {
                    k.trim().eq_ignore_ascii_case("rel")
                        && v.trim()
                            .trim_matches('"')
                            .split_ascii_whitespace()
                            .any(|r| r.eq_ignore_ascii_case("next"))
                })
            });
            if is_next {
                return base.join(target).ok();
            }
            rest = &after[params_end..];
        }
    }
    None
}

/// What reading a page needs of the config, checked once at start.
pub(super) struct PageReader {
    pagination: PaginationConfig,
    page_size: u32,
    /// Where the source's requests go: a next link elsewhere is refused.
    endpoint: url::Url,
    extractor: FieldExtractor,
    items_path: Option<FieldPath>,
    token_path: Option<FieldPath>,
    limit_path: Option<FieldPath>,
}

impl PageReader {
    /// `path` is the section's key path, for errors.
    pub(super) fn new(
        cfg: &HttpPullConfig,
        endpoint: url::Url,
        path: &str,
    ) -> anyhow::Result<PageReader> {
        let items_path = match cfg.items_path.as_deref() {
            None | Some("") | Some(".") => None,
            Some(p) => {
                Some(FieldPath::parse(p).map_err(|e| anyhow::anyhow!("{path}.items_path: {e}"))?)
            }
        };
        let optional_path = |p: &Option<String>, key: &str| {
            p.as_deref()
                .map(FieldPath::parse)
                .transpose()
                .map_err(|e| anyhow::anyhow!("{path}.pagination.{key}: {e}"))
        };
        Ok(PageReader {
            token_path: optional_path(&cfg.pagination.token_path, "token_path")?,
            limit_path: optional_path(&cfg.pagination.limit_path, "limit_path")?,
            extractor: cfg.common.extractor(path)?,
            pagination: cfg.pagination.clone(),
            page_size: cfg.page_size,
            endpoint,
            items_path,
        })
    }

    /// The events of one page and where the walk goes next, or why the
    /// page is not understood. `asked` is the URL the page was requested
    /// with, `cursor` the walk's position it was asked at.
    pub(super) fn parse(
        &self,
        body: &Bytes,
        headers: &HeaderMap,
        asked: &url::Url,
        cursor: Option<&str>,
    ) -> Result<(Vec<Event>, Next), String> {
        let root = serde_json::from_slice::<&RawValue>(body)
            .map_err(|e| format!("body is not JSON ({e}): {}", snippet(body)))?;
        let items = find_items(
            root,
            self.items_path.as_ref(),
            ITEM_CANDIDATES,
            "items",
            true,
        )?;
        let next = self.next(root, headers, asked, cursor, items.len())?;
        let events = items
            .into_iter()
            .map(|i| self.extractor.event(body, i))
            .collect();
        Ok((events, next))
    }

    /// Where the walk goes after this page.
    fn next(
        &self,
        root: &RawValue,
        headers: &HeaderMap,
        asked: &url::Url,
        cursor: Option<&str>,
        returned: usize,
    ) -> Result<Next, String> {
        let p = &self.pagination;
        Ok(match p.mode {
            Mode::None => Next::Done,
            Mode::Offset | Mode::Page => {
                let echoed = self
                    .limit_path
                    .as_ref()
                    .and_then(|lp| lp.lookup(root))
                    .and_then(|v| scalar_text(v)?.parse::<usize>().ok());
                let asked = self.page_size as usize;
                if page_is_last(p.stop, asked, returned, echoed) {
                    Next::Done
                } else if p.mode == Mode::Offset {
                    // By what the server returned: a clamped page must
                    // not make the walk skip the entries after it.
                    let at: u64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(0);
                    Next::Cursor((at + returned as u64).to_string())
                } else {
                    // The server numbers pages by its own (clamped) size.
                    let at: u64 = cursor.and_then(|c| c.parse().ok()).unwrap_or(p.first_page);
                    Next::Cursor((at + 1).to_string())
                }
            }
            // An empty page ends the pass whatever token or link it
            // carries: some APIs hand out a new one on every empty page,
            // and following it would ask again without waiting.
            Mode::Token | Mode::Link if returned == 0 => Next::Done,
            Mode::Token => {
                let token = match (&p.token_header, &self.token_path) {
                    (Some(h), _) => headers
                        .get(h.as_str())
                        .and_then(|v| v.to_str().ok())
                        .map(|s| s.trim().to_string()),
                    (None, Some(tp)) => tp
                        .lookup(root)
                        .and_then(|v| scalar_text(v).map(|t| t.into_owned())),
                    (None, None) => None,
                };
                match token.filter(|t| !t.is_empty()) {
                    Some(t) => Next::Cursor(t),
                    None => Next::Done,
                }
            }
            Mode::Link => match link_next(headers, asked) {
                Some(next) => {
                    if next.origin() != self.endpoint.origin() {
                        return Err(format!(
                            "the next link points to another origin ({}); not following it with the token",
                            next.origin().ascii_serialization()
                        ));
                    }
                    Next::Cursor(next.to_string())
                }
                None => Next::Done,
            },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use reqwest::header::HeaderValue;

    #[test]
    fn link_headers_are_parsed_per_rfc_8288() {
        let base = url::Url::parse("https://api.example/v1/events?page=1").unwrap();
        let mut h = HeaderMap::new();
        h.append(
            reqwest::header::LINK,
            HeaderValue::from_static(
                r#"<https://api.example/v1/events?page=1>; rel="prev first", </v1/events?page=3&x=a,b>; title="x;y"; rel=next"#,
            ),
        );
        assert_eq!(
            link_next(&h, &base).unwrap().as_str(),
            "https://api.example/v1/events?page=3&x=a,b"
        );
        let mut h = HeaderMap::new();
        h.append(
            reqwest::header::LINK,
            HeaderValue::from_static(r#"<https://api.example/a>; rel="last""#),
        );
        assert_eq!(link_next(&h, &base), None);
        h.append(
            reqwest::header::LINK,
            HeaderValue::from_static(r#"<?page=2>; REL="Next""#),
        );
        assert_eq!(
            link_next(&h, &base).unwrap().as_str(),
            "https://api.example/v1/events?page=2"
        );
    }
}
