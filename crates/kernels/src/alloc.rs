//! Keeps freed memory in the process instead of handing it back to the OS.
//!
//! A cramming step allocates and frees the same large buffers (activations,
//! logits, their gradients) every step. glibc's `malloc` serves blocks above
//! its mmap threshold with fresh `mmap`s and unmaps them on `free`, so every
//! step page-faults and zero-fills hundreds of megabytes again: on a 2-core
//! machine that was a fifth to a third of a step's time. [`tune`] turns that
//! off (all blocks come from the heap and freed memory is kept for reuse).
//! It changes the whole process, so only a program calls it (the `cram`
//! program does unless `CRAM_MALLOC=default`), never the library.

use std::sync::Once;

static TUNE: Once = Once::new();

/// Applies the allocator settings once per process (no-op where the C
/// library is not glibc).
pub fn tune() {
    TUNE.call_once(apply);
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn apply() {
    // SAFETY: `mallopt` only changes allocator parameters; it is safe to
    // call at any time, and failure (a zero return) leaves the defaults.
    unsafe {
        // One arena: blocks freed by candle's worker threads are reused by
        // the main thread (and per-thread arenas map large blocks anyway).
        libc::mallopt(libc::M_ARENA_MAX, 1);
        // Serve every block from the heap, never from a private mapping.
        libc::mallopt(libc::M_MMAP_MAX, 0);
        // Never give freed heap memory back to the OS (-1 disables
        // trimming, `man mallopt`).
        libc::mallopt(libc::M_TRIM_THRESHOLD, -1);
        // Grow the heap in large steps.
        libc::mallopt(libc::M_TOP_PAD, 256 << 20);
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn apply() {}
