//! Transparent huge pages for the largest buffers (page bodies of ~10 MiB).
//!
//! A fresh buffer of that size is mapped on its own (src/malloc_tuning.rs)
//! and faulted in 4 KiB at a time as it is filled: 3,000 page faults per
//! 10,000-event page, a fifth of a HEC run's CPU. Where the kernel's THP
//! mode is `madvise` (the common default), asking for huge pages makes that
//! a handful. The memory used is the same: the buffer is filled whole.

/// Huge pages bring nothing below this size.
const HUGE_PAGE: usize = 2 << 20;

/// Asks for huge pages behind the 2 MiB-aligned part of `buf`'s allocation.
/// Only a hint: where the kernel has none to give, nothing changes.
pub fn advise(buf: &Vec<u8>) {
    #[cfg(target_os = "linux")]
    {
        let start = buf.as_ptr() as usize;
        let first = start.next_multiple_of(HUGE_PAGE);
        let end = (start + buf.capacity()) / HUGE_PAGE * HUGE_PAGE;
        if end > first {
            // SAFETY: the range lies inside `buf`'s own allocation, and
            // MADV_HUGEPAGE changes how the kernel backs it, never what it
            // holds; a failure (no THP support) leaves it as it was.
            unsafe {
                libc::madvise(first as *mut libc::c_void, end - first, libc::MADV_HUGEPAGE);
            }
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = buf;
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_large_buffer_advised_keeps_its_contents_and_a_small_one_is_left_alone() {
        let mut large = Vec::with_capacity(12 << 20);
        super::advise(&large);
        large.extend((0..12 << 20).map(|i: usize| i as u8));
        assert!(large.iter().enumerate().all(|(i, b)| *b == i as u8));
        let small = vec![7u8; 4096];
        super::advise(&small);
        assert_eq!(small, vec![7u8; 4096]);
    }
}
