//! `auditrelay checkpoint show|reset|set`: a source's stored state, changed
//! only while no daemon holds the state directory.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{load, EXIT_CONFIG};
use auditrelay::checkpoint::{CheckpointStore, StateLock};
use auditrelay::config_file::DEFAULT_CONFIG_PATH;

#[derive(Subcommand)]
pub enum CheckpointAction {
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
    /// Make the source resume from a page token or from a time.
    Set {
        #[arg(long)]
        source: String,
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// A page token (Veza) or sequence number (demo).
        #[arg(long, conflicts_with = "time")]
        token: Option<String>,
        /// An RFC 3339 time to resume from.
        #[arg(long)]
        time: Option<String>,
    },
}

pub fn run(action: CheckpointAction) -> ExitCode {
    let (source, config_path) = match &action {
        CheckpointAction::Show { source, config }
        | CheckpointAction::Reset { source, config }
        | CheckpointAction::Set { source, config, .. } => (source.clone(), config.clone()),
    };
    let cfg = match load(&config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if cfg.cluster.is_some() {
        // The files of state_dir are not the checkpoints of a cluster.
        eprintln!(
            "error: {} has [cluster]: its checkpoints live in the cluster's engine; \
             see them with `auditrelay cluster status --config {}`",
            config_path.display(),
            config_path.display()
        );
        return ExitCode::FAILURE;
    }
    let Some(source_cfg) = cfg.sources.get(&source) else {
        eprintln!(
            "error: no source named \"{source}\" in {}",
            config_path.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    };
    if let CheckpointAction::Show { .. } = action {
        let store = CheckpointStore::open_for_reading(&cfg.state_dir);
        return match store.load(&source) {
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
        };
    }
    // Changing a checkpoint under a running daemon would be overwritten by
    // its next commit: refuse while the state directory is locked.
    let _lock = or_exit!(StateLock::acquire(&cfg.state_dir));
    let store = match CheckpointStore::open(&cfg.state_dir) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: state_dir {}: {e}", cfg.state_dir.display());
            return ExitCode::FAILURE;
        }
    };
    match action {
        CheckpointAction::Reset { .. } => match store.reset(&source) {
            Ok(true) => {
                println!(
                    "checkpoint of {source} removed ({}); it restarts from start_at",
                    store.path(&source).display()
                );
                ExitCode::SUCCESS
            }
            Ok(false) => {
                println!("source {source} had no checkpoint");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!(
                    "error: cannot remove {}: {e}",
                    store.path(&source).display()
                );
                ExitCode::FAILURE
            }
        },
        CheckpointAction::Set { token, time, .. } => {
            let time = match time
                .as_deref()
                .map(chrono::DateTime::parse_from_rfc3339)
                .transpose()
            {
                Ok(t) => t.map(|t| t.with_timezone(&chrono::Utc)),
                Err(e) => {
                    eprintln!("error: --time is not an RFC 3339 time: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            let state = match source_cfg.manual_checkpoint(token, time) {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("error: {e}");
                    return ExitCode::from(EXIT_CONFIG);
                }
            };
            // Confirmations of the old position must not skip events of the
            // new one; forgotten first, so a failed save costs duplicates only.
            if let Err(e) = store.forget_progress(&source) {
                eprintln!(
                    "error: cannot remove {}: {e}",
                    store.progress_path(&source).display()
                );
                return ExitCode::FAILURE;
            }
            match store.save(&source, &state) {
                Ok(()) => {
                    println!(
                        "checkpoint of {source} set: {}",
                        String::from_utf8_lossy(&state)
                    );
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("error: cannot write {}: {e}", store.path(&source).display());
                    ExitCode::FAILURE
                }
            }
        }
        CheckpointAction::Show { .. } => ExitCode::SUCCESS,
    }
}
