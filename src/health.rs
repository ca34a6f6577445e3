//! Readiness of each component, for `/readyz` and the `auditrelay_ready` gauge.
//!
//! A component starts ready and turns unready while it is stuck in a failure
//! an operator must act on (a rejected token, a sink that keeps failing).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Clone, Debug)]
pub struct ComponentState {
    pub ready: bool,
    pub reason: String,
    pub since: Instant,
}

/// Shared readiness registry.
#[derive(Clone, Default)]
pub struct Health {
    inner: Arc<Mutex<BTreeMap<String, ComponentState>>>,
}

impl Health {
    pub fn register(&self, component: &str) {
        self.set(component, true, "starting");
    }

    pub fn set_ready(&self, component: &str) {
        self.set(component, true, "ok");
    }

    pub fn set_unready(&self, component: &str, reason: impl Into<String>) {
        self.set(component, false, reason);
    }

    /// A ready component with something to say (a past data gap): shown by
    /// `/readyz` without turning it unready.
    pub fn note(&self, component: &str, detail: impl Into<String>) {
        self.set(component, true, detail);
    }

    /// Forgets a component that no longer exists (a source or sink removed
    /// by a reload), so it cannot hold `/readyz` down.
    pub fn remove(&self, component: &str) {
        if let Ok(mut map) = self.inner.lock() {
            map.remove(component);
        }
    }

    /// Removes a component and its parts (`sink.NAME` and `sink.NAME.*`):
    /// what a removed source or sink registered must not hold `/readyz`.
    pub fn remove_with_parts(&self, component: &str) {
        let parts = format!("{component}.");
        if let Ok(mut map) = self.inner.lock() {
            map.retain(|k, _| k != component && !k.starts_with(&parts));
        }
    }

    fn set(&self, component: &str, ready: bool, reason: impl Into<String>) {
        let reason = reason.into();
        if let Ok(mut map) = self.inner.lock() {
            let changed = map
                .get(component)
                .is_none_or(|s| s.ready != ready || s.reason != reason);
            if changed {
                map.insert(
                    component.to_string(),
                    ComponentState {
                        ready,
                        reason,
                        since: Instant::now(),
                    },
                );
            }
        }
    }

    /// Every component and whether all are ready.
    pub fn snapshot(&self) -> (bool, BTreeMap<String, ComponentState>) {
        let map = self.inner.lock().map(|m| m.clone()).unwrap_or_default();
        let all = map.values().all(|s| s.ready);
        (all, map)
    }
}

#[cfg(test)]
mod tests {
    use super::Health;

    #[test]
    fn a_removed_component_takes_its_parts_and_only_those() {
        let health = Health::default();
        health.register("sink.a");
        health.set_unready("sink.a.dead_letter", "full");
        health.set_unready("sink.ab", "down");
        health.set_ready("source.a");
        health.remove_with_parts("sink.a");
        let (ready, map) = health.snapshot();
        let keys: Vec<&str> = map.keys().map(String::as_str).collect();
        assert_eq!(keys, ["sink.ab", "source.a"]);
        assert!(!ready, "sink.ab is still unready");
    }
}
