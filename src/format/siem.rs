//! What the SIEM bodies (CEF, LEEF) are built from: one event's identity,
//! its audit facts and the product names the SIEM keys its parsers on.

use chrono::{DateTime, Utc};

use super::fields::AuditFacts;
use super::syslog::Severity;

pub struct SiemEvent<'a> {
    pub vendor: &'a str,
    pub product: &'a str,
    pub version: &'a str,
    pub event_type: Option<&'a str>,
    pub id: Option<&'a str>,
    pub time: Option<DateTime<Utc>>,
    /// The auditrelay source the event came from.
    pub source: &'a str,
    pub severity: Severity,
    pub facts: &'a AuditFacts,
    /// Configured extra keys with their values, in order.
    pub extra: &'a [(String, String)],
}
