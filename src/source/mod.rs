//! Sources: where events come from.
//!
//! A source is a [`Source`] implementation in one file of this directory,
//! whose config implements [`SourceType`], plus its line in
//! `register_sources!` below (and the `pub mod` that declares the file). It
//! owns its cursor: each batch it returns carries the serialized state to
//! persist once that batch is delivered, and it is built from the last
//! persisted state.

pub mod certifyclouds;
mod component;
pub mod demo;
pub mod gap;
pub mod http_pull;
mod keys;
pub mod pull;
mod queued;
pub mod quickztna;
mod registry;
pub mod veza;
pub mod veza_list;
pub mod webhook_in;

pub use component::{
    read_checkpoint, AnySource, ManualPosition, Source, SourceContext, SourceType,
};
pub use keys::{Paths, StartAt};

registry::register_sources! {
    Veza(veza::VezaConfig),
    VezaList(veza_list::VezaListConfig),
    Quickztna(quickztna::QuickztnaConfig),
    Certifyclouds(certifyclouds::CertifycloudsConfig),
    HttpPull(http_pull::HttpPullConfig),
    WebhookIn(webhook_in::WebhookInConfig),
    Demo(demo::DemoConfig),
}
