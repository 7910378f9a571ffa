//! The operator's memory allocator and what it returns to the system.
//!
//! The operator runs on jemalloc, declared by its binary (`main.rs`) with [`MALLOC_CONF`]. A
//! compilation allocates and frees hundreds of MiB on whichever thread runs it, among objects
//! that live on (the mirrors' copies of chains and pods). glibc's malloc, even with two arenas
//! and a trim after each plan, kept 1,253 MiB resident for a heap of 889 MiB at 100,000 chains
//! (`bench/run --only sim`): pages that a few live blocks kept from being returned. jemalloc
//! keeps blocks of one size class together in their own pages and returns unused pages on
//! its own as [`MALLOC_CONF`] says.

use std::ffi::CStr;

/// The allocator the operator's binaries declare as their `#[global_allocator]`.
pub type Allocator = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its first allocation (a binary exports them as
/// `_rjem_malloc_conf`): two arenas (the operator's work is mostly one compilation at a
/// time; an arena per CPU times four kept more pages partly used), and unused pages returned
/// to the system as soon as they are unused, not after a decay: with a second's decay the
/// cold start at 100,000 chains peaked some 130 MiB above its heap (runs J and K, RSS 1,013
/// and 1,059 MiB), with none 57 MiB above it (run L, 977 MiB; docs/performance.md).
pub const MALLOC_CONF: &CStr = c"narenas:2,dirty_decay_ms:0,muzzy_decay_ms:0";

/// What a binary exports as `_rjem_malloc_conf` (a C `const char *`).
#[repr(transparent)]
pub struct Conf(pub *const std::ffi::c_char);

// SAFETY: a pointer to a constant C string, never written.
unsafe impl Sync for Conf {}

/// [`MALLOC_CONF`] as a binary exports it: `#[export_name = "_rjem_malloc_conf"] static
/// MALLOC_CONF: Conf = CONF;`.
pub const CONF: Conf = Conf(MALLOC_CONF.as_ptr());

/// Gives every arena's unused pages back to the system now (a plan's transients are freed):
/// what [`MALLOC_CONF`]'s decay of 0 already does as pages fall unused; kept as a guarantee
/// where a plan's memory changes hands (and for binaries with other options, the bench's).
pub fn release() {
    // SAFETY: "arena.<MALLCTL_ARENAS_ALL>.purge" takes and returns nothing.
    unsafe {
        tikv_jemalloc_sys::mallctl(c"arena.4096.purge".as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0);
    }
}

/// The heap in use: jemalloc's count of the bytes allocated by the process (its statistics
/// refreshed first). What the operator holds, apart from what the allocator keeps free.
pub fn heap_bytes() -> Option<u64> {
    tikv_jemalloc_ctl::epoch::advance().ok()?;
    tikv_jemalloc_ctl::stats::allocated::read().ok().map(|b| b as u64)
}

/// With the `heap-profiling` feature and jemalloc's profiler on (`_RJEM_MALLOC_CONF=prof:true,
/// prof_prefix:DIR/op,...`): a heap profile each time the heap passes its last profiled size
/// by `step` bytes, looked at every 100 ms on a thread of its own. jemalloc's own `prof_gdump`
/// dumps at every new high of its mapped memory, 16,000 profiles in 4 minutes of a cold start
/// at 100,000 chains; this keeps the few that tell where a peak went.
#[cfg(feature = "heap-profiling")]
pub fn profile_highs(step: u64) {
    std::thread::spawn(move || {
        let mut last = 0;
        loop {
            std::thread::sleep(std::time::Duration::from_millis(100));
            let Some(heap) = heap_bytes() else { continue };
            if heap < last + step {
                continue;
            }
            // SAFETY: "prof.dump" takes a `const char *` file name; none given, jemalloc
            // names the file after `prof_prefix`.
            let rc = unsafe {
                tikv_jemalloc_sys::mallctl(c"prof.dump".as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0)
            };
            if rc != 0 {
                tracing::warn!(rc, "no heap profile: jemalloc's profiler is off (_RJEM_MALLOC_CONF=prof:true,...)");
                return;
            }
            tracing::info!(heap_mib = heap >> 20, "heap profile written");
            last = heap;
        }
    });
}
