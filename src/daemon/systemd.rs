//! Talking to systemd: readiness and status notifications, and the watchdog.

use sd_notify::NotifyState;
use tracing::warn;

pub(super) fn notify(state: &[NotifyState]) {
    if let Err(e) = sd_notify::notify(state) {
        warn!(error = %e, "cannot notify systemd");
    }
}

/// WATCHDOG=1 every `WatchdogSec/2` when systemd asks for it.
pub(super) struct Watchdog {
    interval: Option<tokio::time::Interval>,
}

impl Watchdog {
    pub(super) fn new() -> Self {
        Watchdog {
            interval: sd_notify::watchdog_enabled().map(|d| tokio::time::interval(d / 2)),
        }
    }

    /// The next ping is due; never when the watchdog is off.
    pub(super) async fn tick(&mut self) {
        match &mut self.interval {
            Some(i) => {
                i.tick().await;
            }
            None => std::future::pending().await,
        }
    }

    /// Runs `work` (a drain, a reload) and keeps pinging meanwhile.
    pub(super) async fn keep_pinging<F: std::future::Future>(&mut self, work: F) -> F::Output {
        tokio::pin!(work);
        loop {
            tokio::select! {
                out = &mut work => return out,
                _ = self.tick() => notify(&[NotifyState::Watchdog]),
            }
        }
    }
}
