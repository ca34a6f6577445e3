//! The end-to-end suites, one test binary (ripgrep's layout): the support
//! code and the crate's dependencies are compiled and linked once instead
//! of once per suite. Suites share this process, so none may rely on
//! process-wide state another could change: each names its own sinks and
//! sources (the metrics registry is process-wide), picks free ports, and
//! sets no environment variables or working directory.
//!
//! Run one suite with `cargo test --test integration <suite>::`.

mod support;

mod architecture;
mod certifyclouds_to_webhook;
mod chaos;
mod cli;
mod cluster;
mod config_reference;
mod dead_letter_full;
mod dlq_replay;
mod hec_ack_polling;
mod hec_ack_throughput;
mod hec_pending_restart;
mod hec_throughput;
mod http_pull_to_webhook;
mod kafka_sink;
mod kill_duplicates;
mod oauth2_client;
mod oauth2_hec;
mod oauth2_pull;
mod oauth2_webhook;
mod ocsf;
mod offset_paging_under_change;
mod operations;
mod quickztna_journal;
mod quickztna_to_webhook;
mod real_api_behaviour;
mod reload;
mod sink_spool;
mod source_fakes;
mod source_redirects;
mod splunk_hec_sink;
mod support_selftest;
mod syslog_replay_disk;
mod syslog_sink;
mod veza_backfill;
mod veza_to_kafka;
mod veza_to_splunk;
mod veza_to_webhook;
mod webhook_in_spool_full;
mod webhook_in_to_webhook;
mod webhook_sink;
