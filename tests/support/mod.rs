#![allow(dead_code)]
//! Shared integration-test support. `veza_fake` (a fake Veza export API) and
//! `webhook_receiver` run inside the test process on 127.0.0.1:0 and stop when
//! dropped; `http1` is their small hand-written HTTP/1.1 server layer.
//! `daemon` runs the real binary.

pub mod certifyclouds_fake;
pub mod daemon;
pub mod harness;
pub mod http1;
pub mod kafka;
pub mod pull_fake;
pub mod quickztna_fake;
pub mod sink;
pub mod veza_fake;
pub mod veza_list_fake;
pub mod webhook_receiver;
