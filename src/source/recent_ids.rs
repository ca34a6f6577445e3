//! A bounded, ordered set of the ids a source returned most recently.
//!
//! It is part of the checkpoint so that after a cursor restart (an expired
//! page token, a time-window poll) events already delivered inside the
//! overlap window can be recognised and dropped instead of sent twice.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;

use serde::ser::SerializeSeq;
use serde::{Serialize, Serializer};

#[derive(Clone, Debug, Default)]
pub struct RecentIds {
    // One allocation per id, shared by the order and the set.
    order: VecDeque<Arc<str>>,
    set: HashSet<Arc<str>>,
    cap: usize,
}

impl RecentIds {
    pub fn new(cap: usize) -> Self {
        RecentIds {
            order: VecDeque::new(),
            set: HashSet::new(),
            cap: cap.max(1),
        }
    }

    pub fn from_list(cap: usize, ids: impl IntoIterator<Item = String>) -> Self {
        let mut r = RecentIds::new(cap);
        for id in ids {
            r.insert(&id);
        }
        r
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    /// Records `id`; returns false when it was already present.
    pub fn insert(&mut self, id: &str) -> bool {
        if self.set.contains(id) {
            return false;
        }
        let id: Arc<str> = id.into();
        self.set.insert(id.clone());
        self.order.push_back(id);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }

    pub fn len(&self) -> usize {
        self.order.len()
    }

    pub fn is_empty(&self) -> bool {
        self.order.is_empty()
    }
}

/// Serialized as a JSON array, oldest first.
impl Serialize for RecentIds {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.order.len()))?;
        for id in &self.order {
            seq.serialize_element(&**id)?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_and_ordered() {
        let mut r = RecentIds::new(3);
        assert!(r.insert("a"));
        assert!(!r.insert("a"));
        r.insert("b");
        r.insert("c");
        r.insert("d");
        assert!(!r.contains("a"));
        assert!(r.contains("d"));
        assert_eq!(serde_json::to_string(&r).unwrap(), r#"["b","c","d"]"#);
        let back = RecentIds::from_list(3, vec!["b".into(), "c".into(), "d".into()]);
        assert!(back.contains("b") && back.len() == 3);
    }
}
