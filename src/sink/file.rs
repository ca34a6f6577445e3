//! NDJSON to a local file, rotated by size (`events.ndjson` →
//! `events.ndjson.1` → … → `.N`). A batch is confirmed once written and,
//! with `fsync = true` (the default), on disk.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use serde::Deserialize;
use tracing::{info, warn};

use super::{Sink, SinkCommon, SinkContext};
use crate::config::Problems;
use crate::event::Event;
use crate::format::ndjson;
use crate::metrics::metrics;
use crate::retry::Backoff;

#[derive(Clone, Debug, Deserialize)]
pub struct FileConfig {
    pub path: PathBuf,
    /// Rotate when the file would grow past this many bytes.
    #[serde(default = "default_rotate_bytes")]
    pub rotate_bytes: u64,
    /// Rotated files kept (`path.1` … `path.N`).
    #[serde(default = "default_rotate_keep")]
    pub rotate_keep: usize,
    #[serde(default = "crate::config::yes")]
    pub fsync: bool,
}

crate::serde_defaults::serde_defaults! {
    fn default_rotate_bytes() -> u64 = 100 * 1024 * 1024;
    fn default_rotate_keep() -> usize = 5;
}

impl super::SinkType for FileConfig {
    const KIND: &'static str = "file";

    fn validate(&self, path: &str, _common: &SinkCommon, problems: &mut Problems) {
        if self.path.as_os_str().is_empty() {
            problems.push(format!("{path}.path"), "must not be empty");
        }
        if self.rotate_bytes == 0 {
            problems.push(format!("{path}.rotate_bytes"), "must be greater than 0");
        }
    }

    fn build(&self, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Box<dyn Sink>> {
        Ok(Box::new(FileSink::new(self.clone(), common, ctx)?))
    }
}

struct Writer {
    path: PathBuf,
    file: Option<File>,
    size: u64,
}

pub struct FileSink {
    name: Arc<str>,
    cfg: FileConfig,
    common: SinkCommon,
    writer: Arc<Mutex<Writer>>,
    health: crate::health::Health,
}

impl FileSink {
    pub fn new(cfg: FileConfig, common: &SinkCommon, ctx: SinkContext) -> anyhow::Result<Self> {
        if let Some(dir) = cfg.path.parent().filter(|d| !d.as_os_str().is_empty()) {
            fs::create_dir_all(dir).map_err(|e| {
                anyhow::anyhow!(
                    "sinks.{}.path: cannot create directory {}: {e}",
                    ctx.name,
                    dir.display()
                )
            })?;
        }
        ctx.health.register(&format!("sink.{}", ctx.name));
        Ok(FileSink {
            name: ctx.name.into(),
            writer: Arc::new(Mutex::new(Writer {
                path: cfg.path.clone(),
                file: None,
                size: 0,
            })),
            common: common.clone(),
            health: ctx.health,
            cfg,
        })
    }
}

impl Writer {
    fn open(&mut self) -> std::io::Result<&mut File> {
        if self.file.is_none() {
            let existed = self.path.exists();
            let f = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&self.path)?;
            if !existed {
                // The new file's name must survive a crash as its lines do.
                sync_parent(&self.path)?;
            }
            self.size = f.metadata()?.len();
            self.file = Some(f);
        }
        self.file
            .as_mut()
            .ok_or_else(|| std::io::Error::other("file not open"))
    }

    fn rotate(&mut self, keep: usize) -> std::io::Result<()> {
        self.file = None;
        let numbered = |n: usize| -> PathBuf {
            let mut p = self.path.clone().into_os_string();
            p.push(format!(".{n}"));
            PathBuf::from(p)
        };
        if keep == 0 {
            fs::remove_file(&self.path).or_else(ignore_missing)?;
        } else {
            fs::remove_file(numbered(keep)).or_else(ignore_missing)?;
            for n in (1..keep).rev() {
                fs::rename(numbered(n), numbered(n + 1)).or_else(ignore_missing)?;
            }
            fs::rename(&self.path, numbered(1)).or_else(ignore_missing)?;
        }
        sync_parent(&self.path)?;
        self.size = 0;
        Ok(())
    }

    fn append(&mut self, buf: &[u8], cfg: &FileConfig) -> std::io::Result<()> {
        self.open()?;
        if self.size > 0 && self.size + buf.len() as u64 > cfg.rotate_bytes {
            self.rotate(cfg.rotate_keep)?;
            info!(file = %self.path.display(), "rotated");
        }
        let size_before = self.size;
        let f = self.open()?;
        if let Err(e) = f.write_all(buf).and_then(|_| f.flush()) {
            // Forget the handle: reopening finds the true size; a partial
            // line may remain, followed by the whole batch on the retry.
            self.file = None;
            return Err(e);
        }
        if cfg.fsync {
            f.sync_data()?;
        }
        self.size = size_before + buf.len() as u64;
        Ok(())
    }
}

/// Fsyncs the directory holding `path`, so a created or renamed entry is
/// durable.
fn sync_parent(path: &Path) -> std::io::Result<()> {
    match path.parent().filter(|d| !d.as_os_str().is_empty()) {
        Some(dir) => File::open(dir)?.sync_all(),
        None => File::open(Path::new("."))?.sync_all(),
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

#[async_trait]
impl Sink for FileSink {
    async fn deliver(&self, source: &str, events: &[Event]) -> anyhow::Result<()> {
        let buf = Arc::new(ndjson::lines(events));
        let mut backoff = Backoff::new(self.common.retry);
        let m = metrics();
        loop {
            let writer = self.writer.clone();
            let cfg = self.cfg.clone();
            let data = buf.clone();
            let result = tokio::task::spawn_blocking(move || {
                let mut w = writer
                    .lock()
                    .map_err(|_| std::io::Error::other("writer lock poisoned"))?;
                w.append(&data, &cfg)
            })
            .await?;
            match result {
                Ok(()) => {
                    self.health.set_ready(&format!("sink.{}", self.name));
                    m.sink_requests.with_label_values(&[&self.name, "ok"]).inc();
                    m.events_delivered
                        .with_label_values(&[&self.name, source])
                        .inc_by(events.len() as u64);
                    return Ok(());
                }
                Err(e) => {
                    self.health.set_unready(
                        &format!("sink.{}", self.name),
                        format!("cannot write {}: {e}", self.cfg.path.display()),
                    );
                    m.sink_requests
                        .with_label_values(&[&self.name, "io_error"])
                        .inc();
                    m.sink_retries.with_label_values(&[&self.name]).inc();
                    m.events_failed
                        .with_label_values(&[&self.name, source])
                        .inc_by(events.len() as u64);
                    let delay = backoff.next_delay();
                    warn!(sink = %self.name, file = %self.cfg.path.display(), error = %e, retry_in_s = delay.as_secs_f64(), "write failed; retrying");
                    tokio::time::sleep(delay).await;
                }
            }
        }
    }

    async fn healthcheck(&self) -> anyhow::Result<()> {
        OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.cfg.path)
            .map(|_| ())
            .map_err(|e| {
                anyhow::anyhow!("cannot open {} for writing: {e}", self.cfg.path.display())
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[tokio::test]
    async fn writes_lines_and_rotates() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("out/events.ndjson");
        let cfg = FileConfig {
            path: path.clone(),
            rotate_bytes: 40,
            rotate_keep: 2,
            fsync: true,
        };
        let common: SinkCommon = serde_json::from_str(r#"{"inputs":["x"]}"#).unwrap();
        let ctx = SinkContext::in_dir(dir.path(), "f");
        let sink = FileSink::new(cfg, &common, ctx).unwrap();
        let ev = |i: u32| Event {
            raw: Bytes::from(format!("{{\"i\":{i:010}}}")),
            id: None,
            time: None,
            kind: None,
        };
        for i in 0..5 {
            sink.deliver("s", &[ev(i)]).await.unwrap();
        }
        // 17 bytes a line, 40-byte files: 2 lines each; the oldest line rotated away.
        let current = fs::read_to_string(&path).unwrap();
        assert_eq!(current.lines().count(), 1);
        let one = fs::read_to_string(dir.path().join("out/events.ndjson.1")).unwrap();
        let two = fs::read_to_string(dir.path().join("out/events.ndjson.2")).unwrap();
        assert_eq!(one.lines().count(), 2);
        assert!(two.starts_with("{\"i\":0000000000}"));
        assert!(!dir.path().join("out/events.ndjson.3").exists());
    }
}
