//! OAuth2 client credentials for the HTTP sources and sinks: an `oauth2`
//! table ([`OAuth2Config`]) instead of a static token, and the client
//! ([`TokenClient`]) that fetches, caches and renews the access token.
//! Tokens live in memory only: never in a checkpoint, a file or a log.

mod client;
mod config;
mod metrics;
pub mod probe;

pub use client::{AccessToken, Failure, TokenClient, TokenClientOptions};
pub use config::{validate_exclusive, ClientAuth, OAuth2Config};
