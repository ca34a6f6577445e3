//! auditrelay: tails the audit-log APIs of SaaS security platforms and
//! delivers every event, at least once, to SIEM sinks.
//!
//! Layout: [`source`] (one file per API), [`sink`] (one file per
//! destination), [`pipeline`] (delivery and in-order commit), [`checkpoint`]
//! (durable cursors), [`config`], [`server`] (metrics and health),
//! [`format`] (encoders that frame raw events).

pub mod backfill;
pub mod checkpoint;
pub mod cluster;
pub mod config;
pub mod config_file;
pub mod daemon;
pub mod disk_queue;
pub mod event;
pub mod format;
#[cfg(feature = "fuzzing")]
#[doc(hidden)]
pub mod fuzzing;
pub mod health;
pub mod http;
pub mod huge_pages;
pub mod logging;
pub mod metrics;
pub mod oauth2;
pub mod pipeline;
pub mod retry;
pub mod secret;
mod serde_defaults;
pub mod server;
pub mod sink;
pub mod source;
pub mod tls;
