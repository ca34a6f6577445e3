//! Encoders that wrap raw event bytes for a destination. None of them
//! re-serialises an event; they only frame it (the SIEM bodies, CEF and
//! LEEF, are built from fields read out of the event).

pub mod cef;
pub mod fields;
pub mod leef;
pub mod ndjson;
pub mod rfc3164;
pub mod rfc5424;
pub mod siem;
pub mod syslog;
