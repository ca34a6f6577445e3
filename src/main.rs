//! The `auditrelay` command line.

mod cli;
mod malloc_tuning;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Parser, Subcommand};

use auditrelay::config_file::DEFAULT_CONFIG_PATH;
use cli::checkpoint::CheckpointAction;
use cli::cluster::ClusterAction;
use cli::dlq::DlqAction;
use cli::{load, with_runtime};

#[derive(Parser)]
#[command(
    name = "auditrelay",
    version,
    about = "Tails SaaS audit-log APIs and delivers every event, at least once, to SIEM sinks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon.
    Run {
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Check a config and report every problem with its key path.
    Validate {
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Also check that every sink is reachable now.
        #[arg(long)]
        online: bool,
    },
    /// Inspect, reset or set a source's checkpoint (refused while a daemon runs).
    Checkpoint {
        #[command(subcommand)]
        action: CheckpointAction,
    },
    /// A [cluster]'s members, source owners and checkpoints.
    Cluster {
        #[command(subcommand)]
        action: ClusterAction,
    },
    /// Inspect or re-send a sink's dead letters.
    Dlq {
        #[command(subcommand)]
        action: DlqAction,
    },
    /// Exit 0 when URL answers 2xx within 5 s (container HEALTHCHECK; the
    /// image has no shell or curl).
    Probe {
        #[arg(default_value = "http://127.0.0.1:9464/healthz")]
        url: String,
    },
    /// Deliver a past time range of a Veza source (its audit list, at most
    /// 90 days back) through that source's sinks, then exit; an interrupted
    /// backfill resumes when run again with the same range.
    Backfill {
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// A veza or veza_list source of the config.
        #[arg(long)]
        source: String,
        /// Start: RFC 3339, or a negative duration such as -7d.
        #[arg(long, allow_hyphen_values = true)]
        from: String,
        /// End (exclusive): RFC 3339, "now" or a negative duration; default now.
        #[arg(long, allow_hyphen_values = true)]
        to: Option<String>,
    },
    /// Send one synthetic event to each sink and report what each answered.
    SendTest {
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Only this sink.
        #[arg(long)]
        sink: Option<String>,
        /// How long a sink may take to confirm.
        #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

fn main() -> ExitCode {
    malloc_tuning::tune();
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config, online } => cli::validate::run(&config, online),
        Command::Run { config } => {
            auditrelay::daemon::hold_signals();
            let cfg = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            auditrelay::logging::init(cfg.log_format, &cfg.log_level);
            with_runtime(|| async move {
                match auditrelay::daemon::run(cfg).await {
                    Ok(()) => ExitCode::SUCCESS,
                    Err(e) => {
                        tracing::error!(error = %format!("{e:#}"), "fatal");
                        eprintln!("error: {e:#}");
                        ExitCode::FAILURE
                    }
                }
            })
        }
        Command::Checkpoint { action } => cli::checkpoint::run(action),
        Command::Dlq { action } => cli::dlq::run(action),
        Command::Cluster { action } => cli::cluster::run(action),
        Command::Probe { url } => cli::probe::run(&url),
        Command::SendTest {
            config,
            sink,
            timeout,
        } => cli::send_test::run(&config, sink, timeout),
        Command::Backfill {
            config,
            source,
            from,
            to,
        } => cli::backfill::run(&config, &source, &from, to.as_deref()),
    }
}
