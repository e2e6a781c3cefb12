//! Rust loops split over libtorch's intra-op threads (`at::parallel_for`,
//! through `parallel_for.cpp`), for CPU work that sits between two forwards
//! on the worker thread. Sampling is the case: one sequence's sampler reads
//! its whole 49,152-logit row (35 us greedy, 181 us with temperature, top-k,
//! top-p and penalties on this project's machine, `cargo bench --bench
//! micro`), so 64 sequences cost up to 12 ms a step one after another, while
//! libtorch's threads, hot from the forward, sit idle. The threads are the
//! forward's own, so nothing else competes for the cores.
//!
//! Each item is handed to exactly one call of the body, so a body that only
//! touches its item gives the same results whatever the split. Without the
//! C++ shim the loop runs on the calling thread.

use std::any::Any;
#[cfg(inferd_torch_shim)]
use std::ffi::c_void;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};

use parking_lot::Mutex;

#[cfg(inferd_torch_shim)]
extern "C" {
    fn inferd_parallel_for(n: i64, grain: i64, body: extern "C" fn(*mut c_void, i64, i64), ctx: *mut c_void) -> std::ffi::c_int;
}

/// What the threads share: the items as a raw pointer (each range of them is
/// handed to one thread only), the body, and the first panic.
struct Job<'a, T, F> {
    items: *mut T,
    len: usize,
    body: &'a F,
    panic: Mutex<Option<Box<dyn Any + Send>>>,
}

/// Calls `body` once on every item and returns once all are done. Up to
/// `grain` items run on the calling thread; more are split into contiguous
/// ranges over at most `len / grain` (rounded up) of libtorch's threads
/// (at::parallel_for's rule). A panic in `body` is raised again here, after
/// every thread has stopped.
pub fn for_each_mut<T: Send, F: Fn(&mut T) + Sync>(items: &mut [T], grain: usize, body: F) {
    let job = Job {
        items: items.as_mut_ptr(),
        len: items.len(),
        body: &body,
        panic: Mutex::new(None),
    };
    run(&job, grain.max(1));
    if let Some(payload) = job.panic.into_inner() {
        resume_unwind(payload);
    }
}

/// The items of [begin, end), each to the body; a panic is kept, not raised.
fn run_range<T, F: Fn(&mut T)>(job: &Job<'_, T, F>, begin: usize, end: usize) {
    if begin >= end || end > job.len {
        return;
    }
    // SAFETY: [begin, end) lies within the slice `for_each_mut` borrowed
    // mutably for the whole call, and at::parallel_for hands out disjoint
    // ranges, each to one thread, so no item is reachable twice at once.
    let range = unsafe { std::slice::from_raw_parts_mut(job.items.add(begin), end - begin) };
    if let Err(payload) = catch_unwind(AssertUnwindSafe(|| range.iter_mut().for_each(job.body))) {
        job.panic.lock().get_or_insert(payload);
    }
}

#[cfg(inferd_torch_shim)]
fn run<T: Send, F: Fn(&mut T) + Sync>(job: &Job<'_, T, F>, grain: usize) {
    extern "C" fn trampoline<T: Send, F: Fn(&mut T) + Sync>(ctx: *mut c_void, begin: i64, end: i64) {
        // SAFETY: `ctx` is the `&Job<T, F>` passed below, alive until
        // inferd_parallel_for returns; the body never unwinds (run_range
        // catches panics), so nothing crosses into C++.
        let job = unsafe { &*(ctx as *const Job<'_, T, F>) };
        run_range(job, begin.max(0) as usize, end.max(0) as usize);
    }
    let ctx = job as *const Job<'_, T, F> as *mut c_void;
    // SAFETY: the trampoline matches the C signature and `ctx` outlives the call.
    let failed = unsafe { inferd_parallel_for(job.len as i64, grain as i64, trampoline::<T, F>, ctx) };
    if failed != 0 {
        // libtorch threw around the body (it does not in practice): some
        // items may not have run, so the loop fails as a panic would.
        job.panic.lock().get_or_insert(Box::new("at::parallel_for failed"));
    }
}

#[cfg(not(inferd_torch_shim))]
fn run<T: Send, F: Fn(&mut T) + Sync>(job: &Job<'_, T, F>, _grain: usize) {
    run_range(job, 0, job.len);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_item_is_visited_once_whatever_the_grain() {
        for (n, grain) in [(0usize, 1usize), (1, 1), (7, 1), (1000, 1), (1000, 64), (33, 100)] {
            let mut items: Vec<(usize, u32)> = (0..n).map(|i| (i, 0)).collect();
            for_each_mut(&mut items, grain, |(i, visits)| {
                *visits += 1;
                *i = *i * 3 + 1;
            });
            for (k, &(i, visits)) in items.iter().enumerate() {
                assert_eq!(visits, 1, "n {n} grain {grain}: item {k} visited {visits} times");
                assert_eq!(i, k * 3 + 1);
            }
        }
    }

    #[test]
    fn a_panic_in_the_body_is_raised_in_the_caller_after_the_loop() {
        let mut items: Vec<u32> = (0..256).collect();
        let caught = catch_unwind(AssertUnwindSafe(|| {
            for_each_mut(&mut items, 1, |x| {
                if *x == 200 {
                    panic!("item 200");
                }
                *x += 1000;
            })
        }));
        let payload = caught.expect_err("the panic comes back");
        assert_eq!(payload.downcast_ref::<&str>(), Some(&"item 200"));
        assert_eq!(items[200], 200, "the item that panicked was left as it was");
    }
}
