//! The subcommands of the `auditrelay` binary, one file each (bin-only: the
//! library does not know them); `main.rs` holds the clap definitions.

/// The value of a result, or: `error: <the error>` on stderr and a failure
/// exit. (Defined before the modules, which use it.)
macro_rules! or_exit {
    ($result:expr) => {
        match $result {
            Ok(value) => value,
            Err(e) => {
                eprintln!("error: {e:#}");
                return std::process::ExitCode::FAILURE;
            }
        }
    };
}

pub mod backfill;
pub mod checkpoint;
pub mod cluster;
pub mod dlq;
pub mod probe;
pub mod send_test;
pub mod validate;

use std::path::Path;
use std::process::ExitCode;

use auditrelay::config_file::{self, Config};

const EXIT_CONFIG: u8 = 2;

pub fn load(path: &Path) -> Result<Config, ExitCode> {
    config_file::load(path).map_err(|e| {
        eprint!("{e}");
        ExitCode::from(EXIT_CONFIG)
    })
}

pub fn with_runtime<F, Fut>(f: F) -> ExitCode
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
