//! `auditrelay send-test`: one synthetic event to each sink, and what each
//! answered.

use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use super::{load, with_runtime, EXIT_CONFIG};

/// The source name the test event is delivered under.
const SEND_TEST_SOURCE: &str = "send-test";

pub fn run(path: &Path, only: Option<String>, timeout: Duration) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if let Some(name) = &only {
        if !cfg.sinks.contains_key(name) {
            eprintln!("error: no sink named \"{name}\" in {}", path.display());
            return ExitCode::from(EXIT_CONFIG);
        }
    }
    auditrelay::logging::init(cfg.log_format, "warn");
    with_runtime(|| async move {
        let health = auditrelay::health::Health::default();
        let sinks = or_exit!(shaped_sinks(&cfg, &health));
        let event = auditrelay::source::demo::send_test_event();
        let mut ok = true;
        let fig = auditrelay::config_file::figment(path);
        for component in auditrelay::oauth2::probe::components_with_oauth2(&fig, true) {
            if only
                .as_ref()
                .is_some_and(|o| component != format!("sinks.{o}"))
            {
                continue;
            }
            match auditrelay::oauth2::probe::probe(&fig, &component).await {
                Ok(what) => println!("{component}.oauth2: {what}"),
                Err(e) => {
                    ok = false;
                    println!("{component}.oauth2: TOKEN REQUEST FAILED: {e}");
                }
            }
        }
        for (name, sink) in sinks
            .iter()
            .filter(|(n, _)| only.as_ref().is_none_or(|o| o == *n))
        {
            let started = Instant::now();
            let result = tokio::time::timeout(
                timeout,
                sink.deliver(SEND_TEST_SOURCE, std::slice::from_ref(&event)),
            )
            .await;
            match result {
                Ok(Ok(())) => println!("{name}: ok ({} ms)", started.elapsed().as_millis()),
                Ok(Err(e)) => {
                    ok = false;
                    println!("{name}: FAILED: {e:#}");
                }
                Err(_) => {
                    ok = false;
                    let (_, states) = health.snapshot();
                    let reason = states
                        .get(&format!("sink.{name}"))
                        .filter(|s| !s.ready)
                        .map(|s| s.reason.clone())
                        .unwrap_or_else(|| {
                            "the destination kept failing (see the log above)".into()
                        });
                    println!(
                        "{name}: FAILED: not confirmed within {}: {reason}",
                        humantime::format_duration(timeout)
                    );
                }
            }
        }
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

/// The sinks as the daemon shapes their events (`schema`, `redact`, …), so
/// the test event arrives as the real ones will. The test event has
/// Veza's shape: it is mapped as a Veza event.
fn shaped_sinks(
    cfg: &auditrelay::config_file::Config,
    health: &auditrelay::health::Health,
) -> anyhow::Result<std::collections::BTreeMap<String, std::sync::Arc<dyn auditrelay::sink::Sink>>>
{
    use auditrelay::daemon::{build_sinks, source_kinds, with_shaping};
    let mut kinds = source_kinds(cfg);
    kinds.insert(SEND_TEST_SOURCE.to_string(), "veza".to_string());
    build_sinks(cfg, health)?
        .into_iter()
        .map(|(name, sink)| {
            let shaped = with_shaping(cfg, &name, sink, kinds.clone())?;
            Ok((name, shaped))
        })
        .collect()
}
