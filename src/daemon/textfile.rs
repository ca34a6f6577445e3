//! The metrics textfile for node_exporter's textfile collector.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use tracing::warn;

use crate::health::Health;
use crate::metrics::metrics;

/// Writes the metrics for node_exporter's textfile collector: temp file,
/// then rename, so the collector never reads half a file.
pub(super) async fn write_textfile(
    path: PathBuf,
    every: Duration,
    health: Health,
    stop: CancellationToken,
) {
    let mut tick = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tick.tick() => {}
        }
        metrics().ready.set(i64::from(health.snapshot().0));
        let text = metrics().render();
        let tmp = path.with_extension("prom.tmp");
        let written = tokio::fs::write(&tmp, text.as_bytes())
            .await
            .and(tokio::fs::rename(&tmp, &path).await);
        if let Err(e) = written {
            warn!(file = %path.display(), error = %e, "cannot write metrics textfile");
        }
    }
}
