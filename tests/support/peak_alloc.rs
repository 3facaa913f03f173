//! A global allocator that tracks, per thread, the bytes currently allocated and the peak since
//! the last reset, for the tests that check a path's memory is bounded. Included with `#[path]`;
//! it installs itself as the `#[global_allocator]` of the test that includes it. Frees are
//! counted on the thread that frees, so a test measures a path it drives on its own thread (a
//! current-thread runtime).
#![allow(dead_code)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Peak;

thread_local! {
    static CURRENT: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn add(bytes: isize) {
    // `try_with`: a thread being torn down has no thread-locals left; its frees go uncounted.
    let _ = CURRENT.try_with(|c| {
        let now = c.get() + bytes;
        c.set(now);
        let _ = PEAK.try_with(|p| p.set(p.get().max(now)));
    });
}

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are
// thread-local `Cell`s of `const` initialisers, which never allocate.
unsafe impl GlobalAlloc for Peak {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        add(layout.size() as isize);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        add(-(layout.size() as isize));
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        add(new_size as isize - layout.size() as isize);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Peak = Peak;

/// Starts a measurement on this thread: the peak becomes the bytes allocated now.
pub fn reset_peak() {
    let now = CURRENT.with(Cell::get);
    PEAK.with(|p| p.set(now));
}

/// How many bytes above the level at the last [`reset_peak`] this thread's allocations reached.
pub fn peak_since_reset(level: isize) -> usize {
    (PEAK.with(Cell::get) - level).max(0) as usize
}

/// The bytes this thread has allocated and not freed (frees of other threads' blocks included).
pub fn current() -> isize {
    CURRENT.with(Cell::get)
}

/// Runs `f` and returns its result with the most memory this thread held during it, above what
/// it held before.
pub fn measure<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let level = current();
    reset_peak();
    let out = f();
    (out, peak_since_reset(level))
}

/// [`measure`] for a future: makes it with `f` and awaits it, and returns its output with the
/// most memory this thread held meanwhile, above what it held before.
pub async fn measure_async<F: std::future::Future>(f: impl FnOnce() -> F) -> (F::Output, usize) {
    let level = current();
    reset_peak();
    let out = f().await;
    (out, peak_since_reset(level))
}
