#![allow(dead_code)]
//! Shared integration-test support. `veza_fake` (a fake Veza export API) and
//! `webhook_receiver` run inside the test process on 127.0.0.1:0 and stop when
//! dropped; `http1` is their small hand-written HTTP/1.1 server layer.
//! `paged` is the core of the paged-JSON API fakes (`veza_fake`,
//! `veza_list_fake`, `certifyclouds_fake`, `pull_fake`, `quickztna_fake`):
//! each of them is its vendor's request and response shape on top of it.
//! `hec_fake` is a fake Splunk HTTP Event Collector; `tls` generates a CA
//! and puts a TLS front before any fake; `rsyslog` runs a real rsyslogd with
//! a generated config. `daemon` runs the real binary. `token_endpoint` is
//! an OAuth2 token endpoint whose access tokens `pull_fake` can require.
//! `lease_api` is a Kubernetes API server holding Leases, behind TLS.

pub mod certifyclouds_fake;
pub mod daemon;
pub mod engine_link;
pub mod etcd;
pub mod harness;
pub mod hec_fake;
pub mod http1;
pub mod kafka;
pub mod lease_api;
pub mod ocsf_schema;
pub mod paged;
pub mod pull_fake;
pub mod quickztna_fake;
pub mod redirect;
pub mod rsyslog;
pub mod sink;
pub mod syslog_receiver;
pub mod tls;
pub mod token_endpoint;
pub mod veza_events;
pub mod veza_fake;
pub mod veza_list_fake;
pub mod webhook_receiver;
