//! The binary's memory allocator: jemalloc, and giving its free pages back to the system.
//!
//! Part of the `onair` binary (and of the performance benchmark, which includes this file so
//! that it measures the engine with the allocator the daemon runs with), not of the library,
//! which uses no unsafe code.
//!
//! Why jemalloc: start-up with 100,000 broadcasts builds short-lived trees (the config file's
//! tables, the store's rows) on several threads between objects that stay. glibc's malloc kept
//! the freed chunks between live ones, even after `malloc_trim`: 433 MB resident at ready for
//! about 210 MB of live heap. jemalloc's size-class slabs keep what stays together and its purge
//! returns the rest (about 215 MB at ready), and the engine makes about a quarter more
//! decisions a second with it (`docs/performance.md`).

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Gives every page jemalloc holds unused back to the system now, instead of over its decay
/// time (10 s by default): `onair run` calls it once start-up's temporary trees are freed,
/// before it says ready, so that what a monitor reads then is what stays.
pub fn release_free_memory() {
    // `arena.<MALLCTL_ARENAS_ALL>.purge`: every arena; a command that reads and writes nothing.
    let name = c"arena.4096.purge";
    // SAFETY: the name is a NUL-terminated string that outlives the call; this control takes no
    // old or new value, so the null pointers and zero length are what jemalloc expects of it.
    let result = unsafe {
        jemalloc_sys::mallctl(name.as_ptr(), std::ptr::null_mut(), std::ptr::null_mut(), std::ptr::null_mut(), 0)
    };
    if result != 0 {
        tracing::debug!(errno = result, "jemalloc purge refused; the free pages go back over its decay time.");
    }
}
