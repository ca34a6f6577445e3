//! The reload plan: which sinks and sources a new config adds, changes,
//! removes or keeps (a pipeline whose source, routes and `[pipeline]`
//! settings are unchanged keeps running untouched).

use std::collections::BTreeSet;

use crate::config::Config;

/// What a reload changes.
#[derive(Debug, Default)]
pub(super) struct Plan {
    pub(super) sinks_added: Vec<String>,
    pub(super) sinks_changed: Vec<String>,
    pub(super) sinks_removed: Vec<String>,
    pub(super) sources_added: Vec<String>,
    pub(super) sources_restarted: Vec<String>,
    pub(super) sources_removed: Vec<String>,
    pub(super) sources_kept: Vec<String>,
}

impl Plan {
    pub(super) fn new(old: &Config, new: &Config, not_running: &BTreeSet<String>) -> Plan {
        let mut plan = Plan::default();
        for name in new.sinks.keys() {
            match old.sections.sinks.get(name) {
                None => plan.sinks_added.push(name.clone()),
                Some(section) if new.sections.sinks.get(name) != Some(section) => {
                    plan.sinks_changed.push(name.clone())
                }
                Some(_) => {}
            }
        }
        plan.sinks_removed = old
            .sinks
            .keys()
            .filter(|n| !new.sinks.contains_key(*n))
            .cloned()
            .collect();
        for name in new.sources.keys() {
            if !old.sources.contains_key(name) {
                plan.sources_added.push(name.clone());
            } else if old.sections.sources.get(name) != new.sections.sources.get(name)
                || routes(old, name) != routes(new, name)
                || old.pipeline != new.pipeline
                || not_running.contains(name)
            {
                plan.sources_restarted.push(name.clone());
            } else {
                plan.sources_kept.push(name.clone());
            }
        }
        plan.sources_removed = old
            .sources
            .keys()
            .filter(|n| !new.sources.contains_key(*n))
            .cloned()
            .collect();
        plan
    }

    pub(super) fn is_empty(&self) -> bool {
        self.sinks_added.is_empty()
            && self.sinks_changed.is_empty()
            && self.sinks_removed.is_empty()
            && self.sources_added.is_empty()
            && self.sources_restarted.is_empty()
            && self.sources_removed.is_empty()
    }
}

/// The sinks a source feeds, with their sections: a pipeline is kept only
/// when this is unchanged.
fn routes<'a>(
    config: &'a Config,
    source: &str,
) -> Vec<(&'a str, Option<&'a figment::value::Value>)> {
    config
        .sinks
        .iter()
        .filter(|(_, s)| s.common.inputs.iter().any(|i| i == source))
        .map(|(name, _)| (name.as_str(), config.sections.sinks.get(name)))
        .collect()
}
