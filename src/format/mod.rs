//! Encoders that wrap raw event bytes for a destination. None of them
//! re-serialises an event; they only frame it.

pub mod ndjson;
