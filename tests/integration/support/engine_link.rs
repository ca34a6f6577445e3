//! The network between one instance and its real engine (etcd), as tests
//! need it to misbehave: cut (a partition or a paused etcd: every request
//! hangs for the client's request timeout, then fails, as the etcd client
//! does; optionally from the next renewal on), or holding checkpoint writes in flight (a slow link) until the
//! test lets them arrive. It records when each renewal was sent, so a test
//! knows the earliest moment the engine may expire the lease.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use auditrelay::cluster::{Engine, EngineError, Fence, View};
use tokio::sync::{watch, Semaphore};

pub struct EngineLink {
    inner: Arc<dyn Engine>,
    /// How long a request hangs before the client gives up.
    request_timeout: Duration,
    cut: AtomicBool,
    /// Cut the link when the next renewal is sent (it hangs).
    cut_at_renewal: AtomicBool,
    /// When set, writes wait for a permit before reaching the engine.
    held_writes: Mutex<Option<Arc<Semaphore>>>,
    /// Writes now waiting at the link.
    writes_waiting: watch::Sender<usize>,
    /// When the last renewal that succeeded was sent.
    renewed: watch::Sender<Option<Instant>>,
    /// Acquisitions the engine applies but whose answer is lost (the client
    /// times out after the engine applied the request).
    lost_acquire_answers: AtomicUsize,
}

impl EngineLink {
    pub fn new(inner: Arc<dyn Engine>, request_timeout: Duration) -> Arc<EngineLink> {
        Arc::new(EngineLink {
            inner,
            request_timeout,
            cut: AtomicBool::new(false),
            cut_at_renewal: AtomicBool::new(false),
            held_writes: Mutex::new(None),
            writes_waiting: watch::channel(0).0,
            renewed: watch::channel(None).0,
            lost_acquire_answers: AtomicUsize::new(0),
        })
    }

    /// Cuts (or restores) the link.
    pub fn set_cut(&self, cut: bool) {
        self.cut.store(cut, Ordering::SeqCst);
    }

    /// Cuts the link when the next renewal is sent: the renewal hangs.
    pub fn cut_at_next_renewal(&self) {
        self.cut_at_renewal.store(true, Ordering::SeqCst);
    }

    /// From now on checkpoint writes wait at the link until released.
    pub fn hold_writes(&self) {
        *self.held_writes.lock().expect("lock") = Some(Arc::new(Semaphore::new(0)));
    }

    /// Lets the held writes through (and the next ones).
    pub fn release_writes(&self) {
        if let Some(gate) = self.held_writes.lock().expect("lock").take() {
            gate.add_permits(Semaphore::MAX_PERMITS);
        }
    }

    /// The answers of the next `n` acquisitions are lost on the way back.
    pub fn lose_acquire_answers(&self, n: usize) {
        self.lost_acquire_answers.store(n, Ordering::SeqCst);
    }

    pub fn writes_waiting(&self) -> watch::Receiver<usize> {
        self.writes_waiting.subscribe()
    }

    pub fn renewals(&self) -> watch::Receiver<Option<Instant>> {
        self.renewed.subscribe()
    }

    async fn through<T>(
        &self,
        call: impl std::future::Future<Output = Result<T, EngineError>>,
    ) -> Result<T, EngineError> {
        if self.cut.load(Ordering::SeqCst) {
            tokio::time::sleep(self.request_timeout).await;
            return Err(EngineError::Unreachable("request timed out".into()));
        }
        call.await
    }
}

#[async_trait]
impl Engine for EngineLink {
    async fn join(&self) -> Result<(), EngineError> {
        let sent = Instant::now();
        self.through(self.inner.join()).await?;
        self.renewed.send_replace(Some(sent));
        Ok(())
    }
    async fn renew(&self) -> Result<(), EngineError> {
        if self.cut_at_renewal.swap(false, Ordering::SeqCst) {
            self.set_cut(true);
        }
        let sent = Instant::now();
        self.through(self.inner.renew()).await?;
        self.renewed.send_replace(Some(sent));
        Ok(())
    }
    async fn view(&self) -> Result<View, EngineError> {
        self.through(self.inner.view()).await
    }
    async fn acquire(&self, source: &str) -> Result<Option<Fence>, EngineError> {
        let answer = self.through(self.inner.acquire(source)).await?;
        let lost = self
            .lost_acquire_answers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if lost {
            tokio::time::sleep(self.request_timeout).await;
            return Err(EngineError::Unreachable("request timed out".into()));
        }
        Ok(answer)
    }
    async fn release(&self, source: &str, fence: &Fence) -> Result<(), EngineError> {
        self.through(self.inner.release(source, fence)).await
    }
    async fn load(&self, source: &str) -> Result<Option<Vec<u8>>, EngineError> {
        self.through(self.inner.load(source)).await
    }
    async fn save(&self, source: &str, fence: &Fence, state: &[u8]) -> Result<(), EngineError> {
        let gate = self.held_writes.lock().expect("lock").clone();
        if let Some(gate) = gate {
            self.writes_waiting.send_modify(|n| *n += 1);
            let permit = gate.acquire().await;
            self.writes_waiting.send_modify(|n| *n -= 1);
            drop(permit);
        }
        self.through(self.inner.save(source, fence, state)).await
    }
    async fn reset(&self, source: &str) -> Result<bool, EngineError> {
        self.through(self.inner.reset(source)).await
    }
    async fn leave(&self) {
        if self.cut.load(Ordering::SeqCst) {
            // The revocation hangs, then the client gives up.
            tokio::time::sleep(self.request_timeout).await;
            return;
        }
        self.inner.leave().await;
    }
    fn describe(&self, source: &str) -> String {
        self.inner.describe(source)
    }
}
