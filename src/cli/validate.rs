//! `auditrelay validate [--online]`: the config's problems with their key
//! paths, and with `--online` whether every sink answers now and every `oauth2` table
//! gets a token.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use super::{load, with_runtime};

pub fn run(path: &Path, online: bool) -> ExitCode {
    let cfg = match load(path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    println!("config {} is valid: {}", path.display(), cfg.summary());
    if !online {
        return ExitCode::SUCCESS;
    }
    with_runtime(|| async move {
        let health = auditrelay::health::Health::default();
        let sinks = or_exit!(auditrelay::daemon::build_sinks(&cfg, &health));
        let mut ok = true;
        for (name, sink) in &sinks {
            match tokio::time::timeout(Duration::from_secs(15), sink.healthcheck()).await {
                Ok(Ok(())) => println!("sinks.{name}: reachable"),
                Ok(Err(e)) => {
                    ok = false;
                    println!("sinks.{name}: UNREACHABLE: {e:#}");
                }
                Err(_) => {
                    ok = false;
                    println!("sinks.{name}: UNREACHABLE: no answer within 15s");
                }
            }
        }
        let fig = auditrelay::config_file::figment(path);
        for component in auditrelay::oauth2::probe::components_with_oauth2(&fig, false) {
            match auditrelay::oauth2::probe::probe(&fig, &component).await {
                Ok(what) => println!("{component}.oauth2: {what}"),
                Err(e) => {
                    ok = false;
                    println!("{component}.oauth2: TOKEN REQUEST FAILED: {e}");
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
