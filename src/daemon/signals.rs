//! SIGTERM/SIGINT (stop) and SIGHUP (reload): held from the first thing
//! `auditrelay run` does until the daemon's loop handles them.

pub(super) enum Signal {
    Stop(&'static str),
    Reload,
}

/// SIGTERM, SIGINT and SIGHUP, registered once at startup.
pub(super) struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
}

/// Blocks SIGTERM, SIGINT and SIGHUP in the calling thread and in every
/// thread it starts afterwards (the runtime's). Called first thing by
/// `auditrelay run`: a signal that arrives while the config loads and the
/// runtime starts stays pending until [`run`](super::run) handles it, instead of the
/// default action killing the process.
pub fn hold_signals() {
    set_signal_mask(libc::SIG_BLOCK);
}

fn set_signal_mask(how: libc::c_int) {
    // SAFETY: sigset_t is plain data initialised by sigemptyset; the calls
    // only change this thread's signal mask.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, sig);
        }
        libc::pthread_sigmask(how, &set, std::ptr::null_mut());
    }
}

impl Signals {
    /// Registers the handlers, then lets held signals through to this
    /// thread (the one that runs `run`), which delivers any pending one.
    pub(super) fn install() -> anyhow::Result<Self> {
        let signals = Self::register()?;
        set_signal_mask(libc::SIG_UNBLOCK);
        Ok(signals)
    }

    fn register() -> anyhow::Result<Self> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())
                .map_err(|e| anyhow::anyhow!("cannot handle SIGTERM: {e}"))?,
            int: signal(SignalKind::interrupt())
                .map_err(|e| anyhow::anyhow!("cannot handle SIGINT: {e}"))?,
            hup: signal(SignalKind::hangup())
                .map_err(|e| anyhow::anyhow!("cannot handle SIGHUP: {e}"))?,
        })
    }

    /// Cancel-safe: a signal that arrives while nobody waits is kept.
    pub(super) async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.term.recv() => Signal::Stop("SIGTERM"),
            _ = self.int.recv() => Signal::Stop("SIGINT"),
            _ = self.hup.recv() => Signal::Reload,
        }
    }
}
