//! glibc malloc settings for a daemon that moves ~10 MB pages and ~1 MB
//! request bodies through a few threads (measurements: docs/performance.md,
//! issue 16).
//!
//! By default glibc serves a large block from a heap once a block that
//! size was freed (its mmap threshold rises up to 32 MiB), and keeps up to
//! eight heaps per core, one per thread that allocated: freed pages and
//! request bodies stay resident in whichever heap they came from, so peak
//! RSS was up to twice the memory in use. Blocks from `MMAP_THRESHOLD` up
//! are mapped and unmapped on their own, so what is freed goes back to the
//! system, and two heaps bound what small blocks leave behind.
//!
//! An operator's setting wins over these: glibc's own variables
//! (`MALLOC_MMAP_THRESHOLD_`, `MALLOC_ARENA_MAX`) or the same tunables in
//! `GLIBC_TUNABLES` (`glibc.malloc.mmap_threshold`, `glibc.malloc.arena_max`).

use std::ffi::OsString;

/// Blocks this large or larger are mapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;
/// Heaps for the small blocks of all threads: two. One heap holds ~5 MiB
/// less at the peak with HEC, webhook and syslog busy (61 against 66 MiB)
/// but its lock costs 1–5 µs per event there and ~15 % of the throughput
/// (idle-machine runs in docs/performance.md); `MALLOC_ARENA_MAX=1` trades
/// that back for the smaller peak.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 2;

/// Applies the settings; call before any other thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        let env = |name: &str| std::env::var_os(name);
        if !set_by_operator("MALLOC_MMAP_THRESHOLD_", "glibc.malloc.mmap_threshold", env) {
            // SAFETY: mallopt only changes allocator parameters; called
            // before other threads exist.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        }
        if !set_by_operator("MALLOC_ARENA_MAX", "glibc.malloc.arena_max", env) {
            // SAFETY: as above.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) };
        }
    }
}

/// Whether the operator set this allocator parameter, through glibc's
/// variable `var` or `tunable` in `GLIBC_TUNABLES` (`name=value` pairs
/// separated by `:`): `mallopt` would override either.
#[cfg_attr(not(all(target_os = "linux", target_env = "gnu")), allow(dead_code))]
fn set_by_operator(var: &str, tunable: &str, env: impl Fn(&str) -> Option<OsString>) -> bool {
    if env(var).is_some() {
        return true;
    }
    env("GLIBC_TUNABLES").is_some_and(|list| {
        list.to_string_lossy().split(':').any(|pair| {
            pair.split_once('=')
                .is_some_and(|(name, _)| name == tunable)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<OsString> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| OsString::from(v))
        }
    }

    const VAR: &str = "MALLOC_ARENA_MAX";
    const TUNABLE: &str = "glibc.malloc.arena_max";

    #[test]
    fn the_variable_or_the_tunable_set_by_the_operator_wins() {
        assert!(!set_by_operator(VAR, TUNABLE, env(&[])));
        assert!(set_by_operator(VAR, TUNABLE, env(&[(VAR, "8")])));
        assert!(set_by_operator(
            VAR,
            TUNABLE,
            env(&[("GLIBC_TUNABLES", "glibc.malloc.arena_max=8")])
        ));
        assert!(set_by_operator(
            VAR,
            TUNABLE,
            env(&[(
                "GLIBC_TUNABLES",
                "glibc.malloc.trim_threshold=1:glibc.malloc.arena_max=8"
            )])
        ));
        // Another tunable, or one whose name only starts the same way.
        assert!(!set_by_operator(
            VAR,
            TUNABLE,
            env(&[(
                "GLIBC_TUNABLES",
                "glibc.malloc.mmap_threshold=1:glibc.malloc.arena_max_x=8"
            )])
        ));
    }
}
