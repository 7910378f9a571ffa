//! The operator's memory returned to the system. A compilation allocates and frees hundreds of
//! MiB on whichever thread runs it; glibc's malloc keeps an arena per thread and freed memory
//! in them, so resident memory grew with every plan (1.2 GiB after 40 changes at 5,000 chains,
//! for a heap of under 500 MiB). Fewer arenas and a trim after each plan keep it near the heap.

/// At most two malloc arenas (before any thread starts).
pub fn limit_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only sets an allocator parameter; called before other threads exist.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 2);
    }
}

/// Gives the free memory at the top of the heap and in free pages back to the system.
pub fn release() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim is thread-safe and only releases memory malloc holds free.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The heap in use (glibc's count of allocated blocks in every arena, and of mmapped blocks):
/// what the operator holds, apart from what malloc keeps free or the kernel counts besides.
pub fn heap_bytes() -> Option<u64> {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 only reads the allocator's counters.
        let m = unsafe { libc::mallinfo2() };
        Some((m.uordblks + m.hblkhd) as u64)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    None
}
