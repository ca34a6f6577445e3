//! The reload plan: which sinks and sources a new config adds, changes,
//! removes or keeps (a pipeline whose source, routes and `[pipeline]`
//! settings are unchanged keeps running untouched).

use std::collections::{BTreeMap, BTreeSet};

use crate::config_file::Config;

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
        plan.sinks_removed = removed(&old.sinks, &new.sinks);
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
        plan.sources_removed = removed(&old.sources, &new.sources);
        plan
    }

    /// Sources whose pipelines stop: restarted or removed.
    pub(super) fn stopping(&self) -> Vec<String> {
        let removed = self.sources_removed.iter();
        self.sources_restarted
            .iter()
            .chain(removed)
            .cloned()
            .collect()
    }

    /// Sources whose pipelines start: restarted or added.
    pub(super) fn starting(&self) -> Vec<String> {
        let added = self.sources_added.iter();
        self.sources_restarted
            .iter()
            .chain(added)
            .cloned()
            .collect()
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

/// The names in `old` that `new` no longer has.
fn removed<A, B>(old: &BTreeMap<String, A>, new: &BTreeMap<String, B>) -> Vec<String> {
    old.keys()
        .filter(|n| !new.contains_key(*n))
        .cloned()
        .collect()
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
