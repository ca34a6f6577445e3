//! One instance at a time: an open queue holds an OS lock on `dir/.lock`.

use std::fs::{File, OpenOptions, TryLockError};
use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

/// How long opening waits for a previous instance to let go of the spool.
const LOCK_WAIT: Duration = Duration::from_secs(10);

/// Takes the spool's lock, waiting up to [`LOCK_WAIT`] for a previous
/// instance to drop it.
pub(super) fn lock_dir(dir: &Path) -> io::Result<File> {
    let path = dir.join(".lock");
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(10));
            }
            Err(TryLockError::WouldBlock) => {
                return Err(io::Error::new(
                    io::ErrorKind::WouldBlock,
                    format!(
                        "{} is still locked after {}s by another instance of this spool \
                         (the one a reload replaces, still finishing a write)",
                        path.display(),
                        LOCK_WAIT.as_secs()
                    ),
                ))
            }
            Err(TryLockError::Error(e)) => return Err(e),
        }
    }
}
