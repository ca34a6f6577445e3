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
//! system, and a single heap bounds what small blocks leave behind.
//!
//! An operator's `MALLOC_MMAP_THRESHOLD_` / `MALLOC_ARENA_MAX` (glibc's
//! own variables) win over these.

/// Blocks this large or larger are mapped on their own.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MMAP_THRESHOLD: libc::c_int = 256 * 1024;
/// Heaps for the small blocks of all threads: one. A second heap held
/// ~5 MiB more at the peak with HEC, webhook and syslog busy (65.9–66.2
/// against 60.3–61.5 MiB) for ~0.5 µs per event less lock contention
/// (docs/performance.md).
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const ARENA_MAX: libc::c_int = 1;

/// Applies the settings; call before any other thread starts.
pub fn tune() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: mallopt only changes allocator parameters; called
            // before other threads exist.
            unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, MMAP_THRESHOLD) };
        }
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: as above.
            unsafe { libc::mallopt(libc::M_ARENA_MAX, ARENA_MAX) };
        }
    }
}
