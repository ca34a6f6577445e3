//! `auditrelay backfill`: delivers a past time range of a Veza source, then
//! exits; an interrupted backfill resumes when run again.

use std::path::Path;
use std::process::ExitCode;

use super::{load, with_runtime, EXIT_CONFIG};

pub fn run(path: &Path, source: &str, from: &str, to: Option<&str>) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    // Everything that can be checked without the network, before any request.
    if let Err(e) = auditrelay::backfill::list_config(&cfg, source) {
        eprintln!("error: {e}");
        return ExitCode::from(EXIT_CONFIG);
    }
    let range = match auditrelay::backfill::range(from, to, chrono::Utc::now()) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    auditrelay::logging::init(cfg.log_format, &cfg.log_level);
    with_runtime(|| async move {
        let stop = tokio_util::sync::CancellationToken::new();
        let on_signal = stop.clone();
        tokio::spawn(async move {
            use tokio::signal::unix::{signal, SignalKind};
            if let (Ok(mut term), Ok(mut int)) = (
                signal(SignalKind::terminate()),
                signal(SignalKind::interrupt()),
            ) {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                }
                on_signal.cancel();
            }
        });
        match auditrelay::backfill::run(&cfg, source, range, stop).await {
            Ok(auditrelay::backfill::Outcome::Complete { events }) => {
                println!(
                    "backfill of {source} from {} to {} complete: {events} events delivered",
                    range.from.to_rfc3339(),
                    range.to.to_rfc3339()
                );
                ExitCode::SUCCESS
            }
            Ok(auditrelay::backfill::Outcome::Interrupted) => {
                eprintln!("backfill interrupted; run the same command again to resume");
                ExitCode::from(130)
            }
            Err(e) => {
                eprintln!("error: {e:#}");
                ExitCode::FAILURE
            }
        }
    })
}
