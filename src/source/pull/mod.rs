//! The pull-source core: what every source that asks an HTTP API for its
//! events shares. A vendor file keeps only what is its API's own (the
//! request, the answer, the cursor rules); docs/writing-a-source.md shows
//! one written on this core.
//!
//! - [`common`]: the shared keys ([`PullCommon`]) and how a section is read.
//! - [`fetch`]: the request loop (rate limits, backoff, refused tokens).
//! - [`rate_limit`]: what an answer says about the API's limit.
//! - [`dedup`]: the seen-set and the choice of a response's new events.
//! - [`window`]: the checkpoint of a walk through time windows.
//! - [`paging`]: when a page is the last, offset walks, times in queries.
//! - [`walk`]: the loop of a window walk, page to batch.

pub mod common;
pub mod dedup;
pub mod fetch;
pub mod paging;
pub mod rate_limit;
pub mod scan;
pub mod walk;
pub mod window;

pub use common::{PullCommon, PullConfig, PullDefaults, PullKind};
pub use dedup::{count_fresh, dedup_key, fresh, report_before_window, Fresh, SeenSet};
pub use fetch::{snippet, AuthAdvice, Fetcher, FetcherConfig, Reply, Verdict};
pub use paging::{find_items, page_is_last, Stop, TimeFormat};
pub use rate_limit::RateLimitConfig;
pub use walk::{After, Walker};
pub use window::{chrono_of, Next, Pass, WindowState};

#[cfg(test)]
pub(crate) mod test_support;

#[cfg(test)]
mod tests;

/// The example source of docs/writing-a-source.md, kept compiling.
#[cfg(test)]
#[path = "../../../docs/examples/acme_source.rs"]
mod acme_example;
