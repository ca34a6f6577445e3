//! The keys that tell events apart in the progress log (see
//! `pipeline::progress`): a keyed HighwayHash of each event's id and bytes.
//!
//! Hashing every event's bytes is the price of never mistaking one event
//! for another; SHA-256 made it a sixth of a HEC run's CPU. HighwayHash
//! costs about a seventh of that, and with its key secret (random, kept in
//! the state directory, never logged) nobody who writes audit events can
//! craft one that collides with another, which would let one event's
//! confirmation skip the other. Should the key change or be lost, earlier
//! confirmations simply stop matching: duplicates, never loss.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use highway::{HighwayHash, HighwayHasher, Key};

use super::progress::EventKey;
use crate::event::Event;

/// The key file's name, next to the checkpoints: no source's file name
/// (`<source>.checkpoint`, `<source>.progress`) can take it.
pub(super) const KEY_FILE: &str = "event-key.secret";

/// Numbers this process's key temp files: sources starting at once each
/// write their own.
static KEY_TEMP_SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Computes [`EventKey`]s under one secret key.
#[derive(Clone)]
pub struct EventKeyer(Key);

impl EventKeyer {
    /// A keyer of a fresh random key (used when the key file cannot be read:
    /// confirmations recorded before this start are then not recognised).
    pub fn random() -> Self {
        EventKeyer(Key(rand::random()))
    }

    /// The key of `ev`: its bytes, and its id when it has a non-blank one.
    /// Never the id alone: two events sharing an id (an `id_path` naming a
    /// field that is not unique, or a changed `id_path`) would let one's
    /// confirmation skip the other, which was never sent.
    pub fn key(&self, ev: &Event) -> EventKey {
        key_by(HighwayHasher::new(self.0), ev)
    }

    /// The key kept at `path`, created (random, mode 0600, fsynced) when
    /// absent. Two creators racing agree: the file is linked into place
    /// only if none is there, and the loser reads the winner's. Each
    /// creator writes a temp file of its own (several sources start at
    /// once in one process): one sharing it would truncate the file the
    /// winner already linked into place. Errors name the key file.
    pub fn load_or_create(path: &Path, temp_dir: &Path) -> io::Result<Self> {
        Self::load_or_create_inner(path, temp_dir).map_err(|e| {
            if e.kind() == io::ErrorKind::InvalidData {
                return e;
            }
            io::Error::new(e.kind(), format!("event key {}: {e}", path.display()))
        })
    }

    fn load_or_create_inner(path: &Path, temp_dir: &Path) -> io::Result<Self> {
        match fs::read_to_string(path) {
            Ok(text) => return parse(&text, path),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        fs::create_dir_all(temp_dir)?;
        // Named like the checkpoints' temp files, so a start of this process
        // never takes it for an earlier crash's leftover.
        let temp = temp_dir.join(format!(
            "{KEY_FILE}.{}.{}.new",
            std::process::id(),
            KEY_TEMP_SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        ));
        let fresh = Self::random();
        let created = (|| {
            let mut options = OpenOptions::new();
            options.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
            let mut f = options.open(&temp)?;
            f.write_all(format(&fresh.0).as_bytes())?;
            f.sync_all()?;
            fs::hard_link(&temp, path)
        })();
        let _ = fs::remove_file(&temp);
        match created {
            Ok(()) => {
                if let Some(dir) = path.parent() {
                    File::open(dir)?.sync_all()?;
                }
                Ok(fresh)
            }
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {
                parse(&fs::read_to_string(path)?, path)
            }
            Err(e) => Err(e),
        }
    }
}

fn format(key: &Key) -> String {
    let mut text: String = key.0.iter().map(|w| format!("{w:016x}")).collect();
    text.push('\n');
    text
}

fn parse(text: &str, path: &Path) -> io::Result<EventKeyer> {
    let bad = || {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{}: not an event key (64 hex digits); remove it to have a new one made",
                path.display()
            ),
        )
    };
    let text = text.trim();
    if text.len() != 64 || !text.is_ascii() {
        return Err(bad());
    }
    let mut words = [0u64; 4];
    for (i, w) in words.iter_mut().enumerate() {
        *w = u64::from_str_radix(&text[i * 16..(i + 1) * 16], 16).map_err(|_| bad())?;
    }
    Ok(EventKeyer(Key(words)))
}

/// The key `hasher` (seeded with the keyer's key) gives `ev`: the same
/// whichever HighwayHash implementation it is, so a key outlives the CPU.
fn key_by(mut hasher: impl HighwayHash, ev: &Event) -> EventKey {
    if let Some(id) = ev.id.as_deref().filter(|id| !id.trim().is_empty()) {
        hasher.append(b"id\0");
        hasher.append(&(id.len() as u64).to_le_bytes());
        hasher.append(id.as_bytes());
    }
    hasher.append(b"raw\0");
    hasher.append(&ev.raw);
    let [low, high] = hasher.finalize128();
    let mut key = [0u8; 16];
    key[..8].copy_from_slice(&low.to_le_bytes());
    key[8..].copy_from_slice(&high.to_le_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(id: Option<&str>, raw: &str) -> Event {
        Event {
            raw: bytes::Bytes::copy_from_slice(raw.as_bytes()),
            id: id.map(Into::into),
            time: None,
            kind: None,
        }
    }

    #[test]
    fn keys_tell_apart_ids_bytes_and_a_missing_id() {
        let keyer = EventKeyer::random();
        let a = keyer.key(&event(Some("1"), r#"{"a":1}"#));
        assert_eq!(a, keyer.key(&event(Some("1"), r#"{"a":1}"#)));
        assert_ne!(a, keyer.key(&event(Some("2"), r#"{"a":1}"#)));
        assert_ne!(a, keyer.key(&event(Some("1"), r#"{"a":2}"#)));
        assert_ne!(a, keyer.key(&event(None, r#"{"a":1}"#)));
        // A blank id is no id.
        assert_eq!(
            keyer.key(&event(Some(" "), r#"{"a":1}"#)),
            keyer.key(&event(None, r#"{"a":1}"#))
        );
        // Another key, other keys.
        assert_ne!(a, EventKeyer::random().key(&event(Some("1"), r#"{"a":1}"#)));
    }

    #[test]
    fn the_key_is_made_once_kept_private_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        let temp = dir.path().join(".tmp");
        let ev = event(Some("1"), "{}");
        let first = EventKeyer::load_or_create(&path, &temp).unwrap();
        let again = EventKeyer::load_or_create(&path, &temp).unwrap();
        assert_eq!(first.key(&ev), again.key(&ev));
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        assert_eq!(fs::read_dir(&temp).unwrap().count(), 0);
    }

    #[test]
    fn a_damaged_key_file_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::write(&path, "not hex\n").unwrap();
        let e = EventKeyer::load_or_create(&path, &dir.path().join(".tmp"))
            .err()
            .expect("a damaged key is refused");
        assert!(e.to_string().contains(KEY_FILE), "{e}");
    }
}

#[cfg(test)]
mod review_tests {
    use super::*;
    use std::sync::{Arc, Barrier};

    fn event(raw: &str) -> Event {
        Event {
            raw: bytes::Bytes::copy_from_slice(raw.as_bytes()),
            id: Some("1".into()),
            time: None,
            kind: None,
        }
    }

    /// Every source pipeline starts its `Progress` at once, in one process
    /// (one pid, so one temp file name): each must end up with the key the
    /// file keeps, or its confirmations stop matching after a restart.
    #[test]
    fn sources_starting_at_once_in_one_process_all_get_the_kept_key() {
        let ev = event("{}");
        for round in 0..200 {
            let dir = tempfile::tempdir().unwrap();
            let path = Arc::new(dir.path().join(KEY_FILE));
            let temp = Arc::new(dir.path().join(".tmp"));
            let n = 8;
            let barrier = Arc::new(Barrier::new(n));
            let threads: Vec<_> = (0..n)
                .map(|_| {
                    let (path, temp, barrier) = (path.clone(), temp.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        EventKeyer::load_or_create(&path, &temp)
                    })
                })
                .collect();
            let kept = |keyer: &EventKeyer| keyer.key(&ev);
            let results: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
            let on_disk = EventKeyer::load_or_create(&path, &temp)
                .unwrap_or_else(|e| panic!("round {round}: the kept key is unreadable: {e}"));
            for (i, r) in results.into_iter().enumerate() {
                let keyer = r.unwrap_or_else(|e| panic!("round {round}, source {i}: {e}"));
                assert_eq!(
                    kept(&keyer),
                    kept(&on_disk),
                    "round {round}, source {i} keys events by a key the file does not keep"
                );
            }
        }
    }

    /// The key file cannot be read (here: a directory stands in its place;
    /// elsewhere, permissions or a full disk): the warning each source logs
    /// must say which file, or the operator cannot act on it.
    #[test]
    fn a_key_file_that_cannot_be_read_or_made_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(KEY_FILE);
        fs::create_dir(&path).unwrap();
        let e = EventKeyer::load_or_create(&path, &dir.path().join(".tmp"))
            .err()
            .expect("a directory is no key");
        assert!(e.to_string().contains(KEY_FILE), "{e}");

        let dir = tempfile::tempdir().unwrap();
        let temp = dir.path().join(".tmp");
        fs::write(&temp, "a file where the temp directory goes").unwrap();
        let e = EventKeyer::load_or_create(&dir.path().join(KEY_FILE), &temp)
            .err()
            .expect("no temp directory, no key");
        assert!(e.to_string().contains(KEY_FILE), "{e}");
    }

    /// The progress log outlives the CPU it was written on (a restore on
    /// another host, a VM moved to one without AVX2): the keys must not
    /// depend on which implementation `HighwayHasher` picks at run time.
    #[test]
    fn keys_are_the_same_whatever_implementation_the_cpu_gets() {
        let keyer = EventKeyer(Key([1, 2, 3, 0xdead_beef_0000_0001]));
        for id_len in [0usize, 1, 7, 31, 32, 33, 64] {
            for raw_len in 0..140usize {
                let id = "i".repeat(id_len);
                let raw = "r".repeat(raw_len);
                let ev = Event {
                    raw: bytes::Bytes::copy_from_slice(raw.as_bytes()),
                    id: (id_len > 0).then(|| id.clone().into()),
                    time: None,
                    kind: None,
                };
                let expected = keyer.key(&ev);
                let mut keys = vec![("portable", key_by(highway::PortableHash::new(keyer.0), &ev))];
                #[cfg(target_arch = "x86_64")]
                {
                    keys.extend(highway::SseHash::new(keyer.0).map(|h| ("sse", key_by(h, &ev))));
                    keys.extend(highway::AvxHash::new(keyer.0).map(|h| ("avx", key_by(h, &ev))));
                }
                for (implementation, key) in keys {
                    assert_eq!(key, expected, "{implementation} {id_len}/{raw_len}");
                }
            }
        }
    }
}
