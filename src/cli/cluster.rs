//! `auditrelay cluster status`: the members of the config's cluster, who
//! owns which source (and who would), and each source's checkpoint.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;

use super::{load, with_runtime};
use auditrelay::cluster::{connect, rank};
use auditrelay::config_file::DEFAULT_CONFIG_PATH;

#[derive(Subcommand)]
pub enum ClusterAction {
    /// Members, owners and checkpoints as the engine holds them now.
    Status {
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
    },
}

/// Longest checkpoint text shown per source.
const SHOWN: usize = 120;

pub fn run(action: ClusterAction) -> ExitCode {
    let ClusterAction::Status { config } = action;
    let cfg = match load(&config) {
        Ok(c) => c,
        Err(code) => return code,
    };
    let Some(cluster) = cfg.cluster.clone() else {
        eprintln!("error: {} has no [cluster] section", config.display());
        return ExitCode::FAILURE;
    };
    with_runtime(|| async move {
        let engine = or_exit!(connect(&cluster).await);
        let view = or_exit!(engine.view().await);
        println!(
            "cluster {} ({:?}), {} member{}: {}",
            cluster.name,
            cluster.backend,
            view.members.len(),
            if view.members.len() == 1 { "" } else { "s" },
            view.members.join(", ")
        );
        println!(
            "{:<24} {:<20} {:<20} checkpoint",
            "source", "owner", "preferred"
        );
        for source in cfg.sources.keys() {
            let owner = view.owners.get(source).map(String::as_str).unwrap_or("-");
            let preferred = rank(source, &view.members)
                .first()
                .map(|m| m.as_str())
                .unwrap_or("-")
                .to_string();
            let checkpoint = match view.checkpoints.get(source) {
                Some(state) => {
                    let text = String::from_utf8_lossy(state);
                    if text.chars().count() > SHOWN {
                        format!("{}…", text.chars().take(SHOWN).collect::<String>())
                    } else {
                        text.into_owned()
                    }
                }
                None => "(none: starts at start_at)".to_string(),
            };
            println!("{source:<24} {owner:<20} {preferred:<20} {checkpoint}");
        }
        ExitCode::SUCCESS
    })
}
