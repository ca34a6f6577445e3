//! Runs the real `auditrelay` binary as an operator would: a config file, a
//! state directory, signals. Output goes to a log file the test can grep.

use std::fs::OpenOptions;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use tokio::process::{Child, Command};

pub struct Daemon {
    child: Child,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `auditrelay run --config CONFIG`, appending stderr to `log`.
    pub fn spawn(config: &Path, log: &Path) -> Daemon {
        Self::spawn_with_env(config, log, &[])
    }

    /// Like `spawn`, with extra environment variables (`NOTIFY_SOCKET`, …).
    pub fn spawn_with_env(config: &Path, log: &Path, env: &[(&str, &Path)]) -> Daemon {
        let err = OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .expect("open daemon log");
        // `BENCH_DAEMON`: another build (a release one for measurements).
        let bin = std::env::var_os("BENCH_DAEMON")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_auditrelay").into());
        let child = Command::new(bin)
            .arg("run")
            .arg("--config")
            .arg(config)
            .env("RUST_LOG", "info,auditrelay=debug")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(err)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn auditrelay");
        Daemon {
            child,
            log: log.to_path_buf(),
        }
    }

    pub fn pid(&self) -> i32 {
        self.child.id().map(|p| p as i32).unwrap_or(0)
    }

    /// SIGKILL: no chance to flush or commit anything.
    pub async fn kill(&mut self) {
        let _ = self.child.start_kill();
        let _ = tokio::time::timeout(Duration::from_secs(10), self.child.wait()).await;
    }

    /// Sends a signal (SIGHUP: reload the config).
    pub fn signal(&self, signal: i32) {
        let pid = self.pid();
        if pid > 0 {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid, signal);
            }
        }
    }

    /// SIGTERM, then the exit status (or None if it did not exit in time).
    pub async fn terminate(&mut self, within: Duration) -> Option<ExitStatus> {
        let pid = self.pid();
        if pid > 0 {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
        }
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()?
            .ok()
    }

    /// Waits for the process to exit by itself.
    pub async fn wait(&mut self, within: Duration) -> Option<ExitStatus> {
        tokio::time::timeout(within, self.child.wait())
            .await
            .ok()?
            .ok()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Waits (bounded by `within`) until the log holds `text`; whether it did.
    pub async fn wait_for_log(&self, text: &str, within: Duration) -> bool {
        let deadline = tokio::time::Instant::now() + within;
        while !self.log_text().contains(text) {
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        true
    }
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("bind an ephemeral port")
}

/// GETs a URL on loopback and returns status and body.
pub async fn http_get(url: &str) -> Option<(u16, String)> {
    let resp = reqwest::get(url).await.ok()?;
    let status = resp.status().as_u16();
    Some((status, resp.text().await.ok()?))
}
