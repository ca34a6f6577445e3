//! Events and times for the tests of the pull core.

use bytes::Bytes;
use chrono::{DateTime, Utc};

use crate::event::Event;

pub fn t(s: &str) -> DateTime<Utc> {
    DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
}

pub fn ev(id: Option<&str>, time: &str, raw: &str) -> Event {
    Event {
        raw: Bytes::from(raw.to_string()),
        id: id.map(Into::into),
        time: Some(t(time)),
        kind: None,
    }
}
