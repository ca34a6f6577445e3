//! The `auditrelay` command line.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use auditrelay::checkpoint::CheckpointStore;
use auditrelay::config::{self, DEFAULT_CONFIG_PATH};

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
    },
    /// Inspect or reset a source's checkpoint (stop the daemon first).
    Checkpoint {
        #[command(subcommand)]
        action: CheckpointAction,
    },
}

#[derive(Subcommand)]
enum CheckpointAction {
    /// Print the stored state of a source.
    Show {
        #[arg(long)]
        source: String,
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
    /// Delete the checkpoint: the source restarts from its start_at.
    Reset {
        #[arg(long)]
        source: String,
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

/// Exit code for an unusable config, distinct from runtime failures.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config } => match config::load(&config) {
            Ok(cfg) => {
                println!("config {} is valid: {}", config.display(), cfg.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprint!("{e}");
                ExitCode::from(EXIT_CONFIG)
            }
        },
        Command::Run { config } => {
            let cfg = match config::load(&config) {
                Ok(c) => c,
                Err(e) => {
                    eprint!("{e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            auditrelay::logging::init(cfg.log_format, &cfg.log_level);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => {
                    eprintln!("error: cannot start the async runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(auditrelay::daemon::run(cfg)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %format!("{e:#}"), "fatal");
                    eprintln!("error: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Checkpoint { action } => checkpoint(action),
    }
}

fn checkpoint(action: CheckpointAction) -> ExitCode {
    let (source, config_path) = match &action {
        CheckpointAction::Show { source, config } | CheckpointAction::Reset { source, config } => {
            (source, config)
        }
    };
    let cfg = match config::load(config_path) {
        Ok(c) => c,
        Err(e) => {
            eprint!("{e}");
            return ExitCode::from(EXIT_CONFIG);
        }
    };
    if !cfg.sources.contains_key(source) {
        eprintln!(
            "error: no source named \"{source}\" in {}",
            config_path.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let store = match CheckpointStore::open(&cfg.state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: state_dir {}: {e}", cfg.state_dir.display());
            return ExitCode::FAILURE;
        }
    };
    match action {
        CheckpointAction::Show { .. } => match store.load(source) {
            Ok(Some(state)) => {
                println!("{}", String::from_utf8_lossy(&state));
                ExitCode::SUCCESS
            }
            Ok(None) => {
                println!("source {source} has no checkpoint yet (it starts from start_at)");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        },
        CheckpointAction::Reset { .. } => match store.reset(source) {
            Ok(true) => {
                println!(
                    "checkpoint of {source} removed ({}); it restarts from start_at",
                    store.path(source).display()
                );
                ExitCode::SUCCESS
            }
            Ok(false) => {
                println!("source {source} had no checkpoint");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: cannot remove {}: {e}", store.path(source).display());
                ExitCode::FAILURE
            }
        },
    }
}
