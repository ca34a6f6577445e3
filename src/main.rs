//! The `auditrelay` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};

use auditrelay::checkpoint::{CheckpointStore, StateLock};
use auditrelay::config_file::{self, Config, DEFAULT_CONFIG_PATH};

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

#[derive(Subcommand)]
enum DlqAction {
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

/// Exit code for an unusable config, distinct from runtime failures.
const EXIT_CONFIG: u8 = 2;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Validate { config, online } => validate(&config, online),
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
        Command::Checkpoint { action } => checkpoint(action),
        Command::Dlq { action } => dlq(action),
        Command::Probe { url } => with_runtime(|| async move {
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build();
            let answered = match client {
                Ok(c) => c.get(&url).send().await.map(|r| r.status().is_success()),
                Err(e) => Err(e),
            };
            match answered {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => {
                    eprintln!("{url}: not healthy");
                    ExitCode::FAILURE
                }
                Err(e) => {
                    eprintln!("{url}: {}", auditrelay::http::describe_error(e));
                    ExitCode::FAILURE
                }
            }
        }),
        Command::SendTest {
            config,
            sink,
            timeout,
        } => send_test(&config, sink, timeout),
        Command::Backfill {
            config,
            source,
            from,
            to,
        } => backfill(&config, &source, &from, to.as_deref()),
    }
}

fn load(path: &Path) -> Result<Config, ExitCode> {
    config_file::load(path).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

fn with_runtime<F, Fut>(f: F) -> ExitCode
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ExitCode>,
{
    match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt.block_on(f()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

fn validate(path: &Path, online: bool) -> ExitCode {
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
        let sinks = match auditrelay::daemon::build_sinks(&cfg, &health) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        };
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
        if ok {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }
    })
}

fn backfill(path: &Path, source: &str, from: &str, to: Option<&str>) -> ExitCode {
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

fn send_test(path: &Path, only: Option<String>, timeout: Duration) -> ExitCode {
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
        let sinks = match auditrelay::daemon::build_sinks(&cfg, &health) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        };
        let event = auditrelay::source::demo::send_test_event();
        let mut ok = true;
        for (name, sink) in sinks
            .iter()
            .filter(|(n, _)| only.as_ref().is_none_or(|o| o == *n))
        {
            let started = Instant::now();
            let result = tokio::time::timeout(
                timeout,
                sink.deliver("send-test", std::slice::from_ref(&event)),
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

fn checkpoint(action: CheckpointAction) -> ExitCode {
    let (source, config_path) = match &action {
        CheckpointAction::Show { source, config }
        | CheckpointAction::Reset { source, config }
        | CheckpointAction::Set { source, config, .. } => (source.clone(), config.clone()),
    };
    let cfg = match load(&config_path) {
        Ok(c) => c,
        Err(code) => return code,
    };
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
    let _lock = match StateLock::acquire(&cfg.state_dir) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
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

fn dlq(action: DlqAction) -> ExitCode {
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
                let read = match auditrelay::sink::DeadLetters::read(&file) {
                    Ok(r) => r,
                    Err(e) => {
                        eprintln!("error: {e:#}");
                        return ExitCode::FAILURE;
                    }
                };
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
            let _lock = match StateLock::acquire(&cfg.state_dir) {
                Ok(l) => l,
                Err(e) => {
                    eprintln!("error: {e:#}");
                    return ExitCode::FAILURE;
                }
            };
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
    let sink = match auditrelay::daemon::build_sink(cfg, sink_name, &health) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    let (mut sent, mut failed) = (0usize, false);
    for file in files {
        let read = match auditrelay::sink::DeadLetters::read(&file) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("error: {e:#}");
                return ExitCode::FAILURE;
            }
        };
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
