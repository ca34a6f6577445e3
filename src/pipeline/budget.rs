//! `pipeline.max_in_flight_bytes`: fetch-ahead bounded by the bytes of
//! events on their way to the sinks, not by a page count that confirmation
//! latency would turn into a throughput ceiling.
//!
//! The source is asked for a page only while the page it is expected to
//! return (as large as the previous one) fits beside what is in flight; the
//! page is charged whole once fetched. So the pages in flight, and the one
//! being read, stay under the budget as long as pages are of similar size
//! (a page larger than the previous ones passes it by the difference), and
//! a page larger than the whole budget still goes (alone, once the ones
//! before it are committed): never a deadlock.

use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

/// The bytes of one source's batches in flight.
#[derive(Debug)]
pub struct ByteBudget {
    limit: u64,
    used: Mutex<u64>,
    freed: Notify,
}

/// Bytes of one batch, given back when it is committed (dropped).
#[derive(Debug)]
pub struct Charge {
    budget: Arc<ByteBudget>,
    bytes: u64,
}

impl ByteBudget {
    pub fn new(limit: u64) -> Arc<Self> {
        Arc::new(ByteBudget {
            limit: limit.max(1),
            used: Mutex::new(0),
            freed: Notify::new(),
        })
    }

    fn used(&self) -> u64 {
        *self.used.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits until `expected` more bytes fit in the budget, or nothing is
    /// in flight (a page larger than the budget goes alone).
    pub async fn room(&self, expected: u64) {
        loop {
            let freed = self.freed.notified();
            tokio::pin!(freed);
            // Registered before the check, so a release in between wakes us.
            freed.as_mut().enable();
            let used = self.used();
            if used == 0 || used.saturating_add(expected) <= self.limit {
                return;
            }
            freed.await;
        }
    }

    /// Charges `bytes` (which may pass the limit: the page is fetched).
    pub fn charge(self: &Arc<Self>, bytes: u64) -> Charge {
        *self.used.lock().unwrap_or_else(|p| p.into_inner()) += bytes;
        Charge {
            budget: self.clone(),
            bytes,
        }
    }

    #[cfg(test)]
    pub fn in_flight(&self) -> u64 {
        self.used()
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        {
            let mut used = self.budget.used.lock().unwrap_or_else(|p| p.into_inner());
            *used = used.saturating_sub(self.bytes);
        }
        self.budget.freed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn room_waits_until_the_expected_page_fits_and_wakes_on_release() {
        let budget = ByteBudget::new(100);
        let a = budget.charge(40);
        budget.room(60).await;
        let b = budget.charge(60);
        assert_eq!(budget.in_flight(), 100);
        let waiting = tokio::spawn({
            let budget = budget.clone();
            async move { budget.room(60).await }
        });
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "100 of 100 bytes in flight: no room for 60 more"
        );
        drop(a);
        tokio::task::yield_now().await;
        assert!(
            !waiting.is_finished(),
            "60 in flight: 60 more would pass the budget"
        );
        drop(b);
        tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("a release makes room")
            .expect("no panic");
        assert_eq!(budget.in_flight(), 0);
    }

    #[tokio::test]
    async fn a_batch_larger_than_the_budget_still_goes() {
        let budget = ByteBudget::new(10);
        budget.room(1_000).await;
        let big = budget.charge(1_000);
        assert_eq!(budget.in_flight(), 1_000);
        drop(big);
        tokio::time::timeout(Duration::from_secs(1), budget.room(1_000))
            .await
            .expect("room again once it is committed");
    }
}
