//! A real etcd (Debian's `etcd-server`) on free loopback ports in a temp
//! directory, for the cluster tests: started per test, killed when dropped,
//! and stoppable / restartable on the same ports and data to model an
//! engine outage.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::process::{Child, Command};

use super::daemon::{free_port, http_get};

pub struct Etcd {
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// The binary: `$ETCD_BIN` or `etcd` on the PATH.
fn binary() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_string())
}

/// Whether etcd is installed (`apt-get install etcd-server`).
pub fn available() -> bool {
    std::process::Command::new(binary())
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

impl Etcd {
    /// Starts etcd and waits until it answers `/health` (at most 20 s).
    pub async fn start() -> Etcd {
        let mut etcd = Etcd {
            dir: tempfile::tempdir().expect("tempdir"),
            client_port: free_port(),
            peer_port: free_port(),
            child: None,
        };
        etcd.resume().await;
        etcd
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn log(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(self.log()).unwrap_or_default()
    }

    /// Starts (again) on the same ports and data directory.
    pub async fn resume(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("etcd log");
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(binary())
            .arg("--name=test")
            .arg(format!(
                "--data-dir={}",
                self.dir.path().join("data").display()
            ))
            .arg(format!("--listen-client-urls={client}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn etcd (apt-get install etcd-server)");
        self.child = Some(child);
        let health = format!("{}/health", self.endpoint());
        // Generous: a loaded 2-core CI machine starts etcd slowly.
        for _ in 0..400 {
            if let Some((200, body)) = http_get(&health).await {
                if body.contains("true") {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("etcd did not become healthy in 40 s:\n{}", self.log_text());
    }

    /// Kills etcd (an outage); `resume` brings it back with its data.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }
}
