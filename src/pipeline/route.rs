//! Where a source's events go: one [`Route`] per routed sink.

use std::any::Any;
use std::sync::Arc;

use super::request::RequestSize;
use crate::health::Health;
use crate::sink::{FilterConfig, Sink};

/// One sink a source's events go to.
#[derive(Clone)]
pub struct Route {
    pub sink_name: Arc<str>,
    pub sink: Arc<dyn Sink>,
    pub filter: FilterConfig,
    /// Where a panicking sink is marked unready (`sink.NAME.delivery`).
    pub health: Health,
    /// The runs the sink is handed: one of its requests at most.
    pub request: RequestSize,
}

/// The text of a panic payload, for the log.
pub fn panic_message(payload: &(dyn Any + Send)) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic without a message".to_string())
}
