//! The decode-step thread pool (`cpu_pool.cpp`): while a [`PoolScope`] is
//! held, the row kernel (`gemv_bf16`) and decode attention split their loops
//! over inferd's own spinning workers instead of libtorch's OpenMP team, and
//! libtorch's parallel loops are off for the holding thread.
//!
//! Why: a one-stream decode step is ~150 short parallel loops with serial
//! element-wise work between them, and memory sits idle during that serial
//! work. Between loops a pool worker streams the start of the next product's
//! weights into its cache (the product that followed last time on this
//! thread), so the serial work overlaps the next product's memory traffic;
//! chunks of a product go to whichever thread is free, not a fixed half. On
//! the 2-core Zen 4 a one-row SmolLM2 step takes 5-10% less time
//! (`benches/decode.rs`, see [`MAX_ROWS`]). Results are the same bits: each
//! output is computed the same way whichever thread computes it.
//!
//! The scope is for steps whose products all go to the row kernel: a product
//! that falls back to oneDNN inside it would run on one thread.

use std::marker::PhantomData;

/// Steps of up to this many rows run under the pool. Above it the serial
/// element-wise work and the logits' conversion, which libtorch would
/// otherwise split over its threads, grow with the rows and cost more than
/// the pool saves: alternating in one run (decode bench, one step, ms), 1
/// row 5.79/5.70 with the pool against 6.39/6.47 without, 4 rows 6.88/6.69
/// against 7.75/8.38, 8 rows even, 32 rows 24.6/22.1 against 19.9/20.3.
pub const MAX_ROWS: i64 = 4;

#[cfg(inferd_torch_shim)]
extern "C" {
    fn inferd_pool_enter();
    fn inferd_pool_exit();
}

/// Holds the pool for the current thread; released on drop. Not `Send`: the
/// scope belongs to the thread that entered it.
#[must_use]
pub struct PoolScope {
    _thread_bound: PhantomData<*const ()>,
}

impl PoolScope {
    /// Enter the scope on this thread (scopes nest). Creates the pool on first
    /// use, sized by libtorch's thread count at that moment.
    pub fn enter() -> PoolScope {
        #[cfg(inferd_torch_shim)]
        // SAFETY: no arguments; sets this thread's OpenMP thread count and a
        // thread-local depth, which `drop` on the same thread undoes.
        unsafe {
            inferd_pool_enter()
        };
        PoolScope { _thread_bound: PhantomData }
    }
}

impl Drop for PoolScope {
    fn drop(&mut self) {
        #[cfg(inferd_torch_shim)]
        // SAFETY: pairs with the `inferd_pool_enter` of `enter`, on the same
        // thread (PoolScope is not Send).
        unsafe {
            inferd_pool_exit()
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_scope_turns_libtorch_threads_off_for_its_thread_only_and_restores_them() {
        let before = tch::get_num_threads();
        {
            let _outer = PoolScope::enter();
            let _inner = PoolScope::enter();
            if cfg!(inferd_torch_shim) {
                assert_eq!(tch::get_num_threads(), 1, "inside the scope libtorch's loops run on the caller");
                // Another thread keeps its own count.
                let other = std::thread::spawn(tch::get_num_threads).join().unwrap();
                assert_eq!(other, before);
            }
            drop(_inner);
            if cfg!(inferd_torch_shim) {
                assert_eq!(tch::get_num_threads(), 1, "the outer scope still holds");
            }
        }
        assert_eq!(tch::get_num_threads(), before);
    }
}
