#![allow(dead_code)]
//! Shared integration-test support. `veza_fake` (a fake Veza export API) and
//! `webhook_receiver` run inside the test process on 127.0.0.1:0 and stop when
//! dropped; `http1` is their small hand-written HTTP/1.1 server layer;
//! `rsyslog` runs a real rsyslogd with a generated config.
//! `daemon` runs the real binary.

pub mod daemon;
pub mod http1;
pub mod rsyslog;
pub mod veza_fake;
pub mod webhook_receiver;
