//! `auditrelay dlq list|replay`: a sink's dead letters, counted by reason or
//! sent again (refused ones go back to a fresh dead-letter file).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::Subcommand;

use super::{load, with_runtime, EXIT_CONFIG};
use auditrelay::checkpoint::StateLock;
use auditrelay::config_file::{Config, DEFAULT_CONFIG_PATH};

#[derive(Subcommand)]
pub enum DlqAction {
    /// Count a sink's dead letters by reason.
    List {
        #[arg(long)]
        sink: String,
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// Print every record too.
        #[arg(long)]
        verbose: bool,
    },
    /// Send a sink's dead letters again (stop the daemon first); events the
    /// destination still refuses go back to a fresh dead-letter file.
    Replay {
        #[arg(long)]
        sink: String,
        #[arg(long, short, default_value = DEFAULT_CONFIG_PATH)]
        config: PathBuf,
        /// How long the sink may take to confirm each group of events.
        #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
        timeout: Duration,
    },
}

pub fn run(action: DlqAction) -> ExitCode {
    let (sink, config_path) = match &action {
        DlqAction::List { sink, config, .. } | DlqAction::Replay { sink, config, .. } => {
            (sink.clone(), config.clone())
        }
    };
    let cfg = match load(&config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
    if !cfg.sinks.contains_key(&sink) {
        eprintln!(
            "error: no sink named \"{sink}\" in {}",
            config_path.display()
        );
        return ExitCode::from(EXIT_CONFIG);
    }
    let path = auditrelay::sink::DeadLetters::path_for(&cfg.state_dir, &sink);
    match action {
        DlqAction::List { verbose, .. } => {
            let files = dead_letter_files(&path);
            let keep = unreadable_path(&path);
            if let Ok(text) = std::fs::read_to_string(&keep) {
                println!(
                    "{}: {} unreadable lines kept by earlier replays (never replayed)",
                    keep.display(),
                    text.lines().count()
                );
            }
            if files.is_empty() {
                println!(
                    "sink {sink} has no dead letters ({} does not exist)",
                    path.display()
                );
                return ExitCode::SUCCESS;
            }
            for file in files {
                let read = or_exit!(auditrelay::sink::DeadLetters::read(&file));
                println!("{}: {} dead letters", file.display(), read.records.len());
                let mut by_error: std::collections::BTreeMap<&str, usize> =
                    std::collections::BTreeMap::new();
                for r in &read.records {
                    *by_error.entry(r.error.as_str()).or_default() += 1;
                }
                for (error, n) in by_error {
                    println!("  {n:>8}  {error}");
                }
                if let (Some(first), Some(last)) = (read.records.first(), read.records.last()) {
                    println!("  from {} to {}", first.time, last.time);
                }
                for (line, _) in &read.unreadable {
                    println!("  line {line}: unreadable (torn write?); kept as is");
                }
                if verbose {
                    for r in &read.records {
                        println!(
                            "  {} {} {} {}",
                            r.time,
                            r.source,
                            r.id.as_deref().unwrap_or("-"),
                            r.error
                        );
                    }
                }
            }
            ExitCode::SUCCESS
        }
        DlqAction::Replay { timeout, .. } => {
            let _lock = or_exit!(StateLock::acquire(&cfg.state_dir));
            auditrelay::logging::init(cfg.log_format, "warn");
            with_runtime(|| async move { replay(&cfg, &sink, &path, timeout).await })
        }
    }
}

/// The sink's dead-letter file and any replay left unfinished by a crash.
fn dead_letter_files(path: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) {
        if let Ok(entries) = std::fs::read_dir(dir) {
            let mut pending: Vec<PathBuf> = entries
                .filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| is_replay_aside(name, n))
                })
                .collect();
            pending.sort();
            out.extend(pending);
        }
    }
    if path.exists() {
        out.push(path.to_path_buf());
    }
    out
}

/// `NAME.replaying-<UTC stamp>`, exactly as [`replay`] names the live file
/// it moves aside: nothing else (an `.unreadable` file of an earlier version)
/// is ever replayed and removed.
fn is_replay_aside(name: &str, file: &str) -> bool {
    file.strip_prefix(name)
        .and_then(|rest| rest.strip_prefix(".replaying-"))
        .is_some_and(|stamp| {
            stamp.ends_with('Z')
                && stamp
                    .bytes()
                    .all(|b| b.is_ascii_digit() || b == b'T' || b == b'Z' || b == b'.')
        })
}

/// Where replays keep the lines they cannot read: `NAME.unreadable` next to
/// the dead-letter file, appended to and never removed by a tool.
fn unreadable_path(path: &Path) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".unreadable");
    path.with_file_name(name)
}

/// Appends `lines` durably (file and, when new, its directory).
fn keep_lines(keep: &Path, lines: &[(usize, String)]) -> std::io::Result<()> {
    use std::io::Write;
    let existed = keep.exists();
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(keep)?;
    let text: String = lines.iter().map(|(_, l)| format!("{l}\n")).collect();
    f.write_all(text.as_bytes())?;
    f.sync_all()?;
    if !existed {
        if let Some(dir) = keep.parent() {
            std::fs::File::open(dir)?.sync_all()?;
        }
    }
    Ok(())
}

async fn replay(cfg: &Config, sink_name: &str, path: &Path, timeout: Duration) -> ExitCode {
    let mut files = dead_letter_files(path);
    if files.is_empty() {
        println!("sink {sink_name} has no dead letters");
        return ExitCode::SUCCESS;
    }
    // Move the live file aside first: events refused again are appended
    // to a fresh file, and a crash mid-replay leaves the aside file for the
    // next replay.
    if files.last().is_some_and(|p| p == path) {
        let aside = path.with_file_name(format!(
            "{}.replaying-{}",
            path.file_name()
                .and_then(|n| n.to_str())
                .unwrap_or("dead_letter.ndjson"),
            chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ")
        ));
        if let Err(e) = std::fs::rename(path, &aside) {
            eprintln!("error: cannot move {} aside: {e}", path.display());
            return ExitCode::FAILURE;
        }
        files.pop();
        files.push(aside);
    }
    let health = auditrelay::health::Health::default();
    let sink = or_exit!(auditrelay::daemon::build_sink(cfg, sink_name, &health));
    let (mut sent, mut failed) = (0usize, false);
    for file in files {
        let read = or_exit!(auditrelay::sink::DeadLetters::read(&file));
        // Deliver per source, in file order, in groups of 500.
        let mut groups: Vec<(String, Vec<auditrelay::event::Event>)> = Vec::new();
        for r in &read.records {
            match groups.last_mut() {
                Some((source, events)) if *source == r.source && events.len() < 500 => {
                    events.push(r.to_event())
                }
                _ => groups.push((r.source.clone(), vec![r.to_event()])),
            }
        }
        let mut file_ok = true;
        for (source, events) in &groups {
            match tokio::time::timeout(timeout, sink.deliver(source, events)).await {
                Ok(Ok(())) => sent += events.len(),
                Ok(Err(e)) => {
                    file_ok = false;
                    eprintln!("error: {e:#}");
                    break;
                }
                Err(_) => {
                    file_ok = false;
                    eprintln!(
                        "error: sink {sink_name} did not confirm within {}; {} kept for the next replay",
                        humantime::format_duration(timeout),
                        file.display()
                    );
                    break;
                }
            }
        }
        if !file_ok {
            failed = true;
            break;
        }
        if !read.unreadable.is_empty() {
            let keep = unreadable_path(path);
            if let Err(e) = keep_lines(&keep, &read.unreadable) {
                eprintln!(
                    "error: cannot keep unreadable lines in {}: {e}; {} is left as it is",
                    keep.display(),
                    file.display()
                );
                return ExitCode::FAILURE;
            }
            println!(
                "{} unreadable lines of {} kept in {} (not replayed; inspect them there)",
                read.unreadable.len(),
                file.display(),
                keep.display()
            );
        }
        if let Err(e) = std::fs::remove_file(&file) {
            eprintln!("error: cannot remove {}: {e}", file.display());
            return ExitCode::FAILURE;
        }
    }
    let again = auditrelay::sink::DeadLetters::read(path)
        .map(|r| r.records.len())
        .unwrap_or(0);
    println!(
        "replayed {sent} dead letters to {sink_name}; {again} refused again (in {})",
        path.display()
    );
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
