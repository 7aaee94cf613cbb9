//! The process allocator: [`tune`] keeps freed memory in the process instead
//! of handing it back to the OS; [`Counting`] counts the bytes in use.
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

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting the bytes in use and their peak, so that
/// a program can measure the memory of a step (`cram bench memory
/// --measure`). A program installs it with `#[global_allocator]`; the cost is
/// two relaxed atomic operations per allocation.
pub struct Counting;

fn grow(n: usize) {
    let now = LIVE.fetch_add(n, Relaxed) + n;
    PEAK.fetch_max(now, Relaxed);
}

fn shrink(n: usize) {
    LIVE.fetch_sub(n, Relaxed);
}

// SAFETY: every call is forwarded to `System` unchanged; only counters are
// updated around it.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            grow(l.size());
        }
        p
    }

    unsafe fn alloc_zeroed(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc_zeroed(l) };
        if !p.is_null() {
            grow(l.size());
        }
        p
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        shrink(l.size());
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        let q = unsafe { System.realloc(p, l, new) };
        if !q.is_null() {
            if new >= l.size() {
                grow(new - l.size());
            } else {
                shrink(l.size() - new);
            }
        }
        q
    }
}

/// Bytes allocated and not yet freed (0 unless the program installed
/// [`Counting`]).
pub fn live_bytes() -> usize {
    LIVE.load(Relaxed)
}

/// The most bytes in use at once since the last [`reset_peak`].
pub fn peak_bytes() -> usize {
    PEAK.load(Relaxed)
}

/// Starts a new peak measurement from the bytes in use now.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Relaxed), Relaxed);
}
