//! Decode-sized bf16 products on the bytes oneDNN packed (`gemv_bf16.cpp`).
//!
//! A decode step multiplies a few rows (one per running sequence) by each
//! weight; oneDNN's per-call set-up (~5 us) then costs as much as reading a
//! small weight, 121 times a step for SmolLM2. The kernel reads oneDNN's
//! packed bytes directly, so it needs no second copy of the weights.
//!
//! Batched greedy decoding must give a sequence the same tokens alone as in a
//! batch, so a row must get the same bits here as from oneDNN in a larger
//! batch. The kernel sums in oneDNN's order; the one free parameter, how
//! many inputs oneDNN sums per fresh accumulator (its K blocking, chosen
//! from the shape), is found per weight shape by [`matching_step`]: it runs
//! both on a probe built so that any other blocking changes the result, and
//! on random data, at several row counts, and keeps oneDNN for a shape where
//! no candidate reproduces every bit.

use std::collections::HashMap;
use std::ffi::c_void;
#[cfg(inferd_torch_shim)]
use std::ffi::c_int;
use std::sync::OnceLock;

use parking_lot::Mutex;
use tch::{Device, Kind, TchError, Tensor};

#[cfg(inferd_torch_shim)]
extern "C" {
    fn inferd_gemv_bf16_available() -> c_int;
    fn inferd_onednn_weight_bytes(w: *const c_void, ptr: *mut usize, nbytes: *mut i64) -> c_int;
    fn inferd_gemv_bf16(x: *const c_void, w: usize, n: i64, k: i64, step: i64) -> *mut c_void;
}

/// Rows up to which the kernel takes the product. It is faster than oneDNN by
/// oneDNN's per-call set-up up to about 48 rows and even with it from there
/// (both then bound by VDPBF16PS throughput): SmolLM2's shapes, weights in
/// cache, 2 threads, kernel against oneDNN: 1 row 3.0 vs 10.8 us (576x576),
/// 17.6 vs 31.8 (3072x576); 16 rows 12.5 vs 18.9, 63.6 vs 71.0; 64 rows 46.8
/// vs 53.5, 236.5 vs 242.5; 128 and 256 rows within 5% either way. Prefill
/// chunks (hundreds of rows) stay with oneDNN. (The AMX kernel, [`Sums::Amx`],
/// takes every row count.)
pub const MAX_ROWS: i64 = 64;

/// Whether this build has the kernel and this CPU has AVX512_BF16.
pub fn available() -> bool {
    #[cfg(inferd_torch_shim)]
    {
        // SAFETY: no arguments; reads CPUID.
        unsafe { inferd_gemv_bf16_available() == 1 }
    }
    #[cfg(not(inferd_torch_shim))]
    {
        false
    }
}

/// Where a oneDNN-packed bf16 [n, k] weight's bytes are, and how to sum them.
/// Holds a handle to the packed tensor, so the bytes live as long as it does.
#[derive(Debug)]
pub struct RowKernel {
    _packed: Tensor,
    ptr: usize,
    n: i64,
    k: i64,
    sums: Sums,
}

/// How a kernel sums a row, which decides the rows it takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sums {
    /// oneDNN's AVX-512 order, a fresh accumulator per `step` inputs (its K
    /// blocking for the shape): a row gets oneDNN's bits, so the kernel takes
    /// decode-sized inputs and oneDNN the prefill chunks.
    Blocked { step: i64 },
    /// AMX tiles (`amx_bf16`): every row summed alike at any row count, so
    /// the kernel takes every product and oneDNN none.
    Amx,
}

/// The kernel for `packed` (oneDNN's packing of a bf16 [n, k] weight), or None
/// when it does not apply: no AVX512_BF16, a shape the kernel does not cover,
/// a layout other than the one it reads, or no blocking that reproduces
/// oneDNN's bits. On CPUs with AMX (unless `INFERD_AMX=off`) it is the AMX
/// kernel.
pub fn for_packed(packed: &Tensor, n: i64, k: i64) -> Result<Option<RowKernel>, TchError> {
    if !available() || n % 64 != 0 || k % 16 != 0 {
        return Ok(None);
    }
    let Some(ptr) = packed_bytes(packed, n, k)? else { return Ok(None) };
    let kernel = RowKernel { _packed: packed.shallow_clone(), ptr, n, k, sums: Sums::Amx };
    if super::amx_bf16::wanted() && k % 32 == 0 && super::amx_bf16::reads_as_onednn(packed, &kernel)? {
        huge_pages(ptr, (n * k * 2) as usize);
        return Ok(Some(kernel));
    }
    blocked_for_packed(packed, n, k)
}

/// The oneDNN-order kernel for `packed`, on any CPU with AVX512_BF16.
pub fn blocked_for_packed(packed: &Tensor, n: i64, k: i64) -> Result<Option<RowKernel>, TchError> {
    if !available() || n % 64 != 0 || k % 16 != 0 {
        return Ok(None);
    }
    let Some(ptr) = packed_bytes(packed, n, k)? else { return Ok(None) };
    let Some(step) = matching_step(packed, n, k)? else { return Ok(None) };
    huge_pages(ptr, (n * k * 2) as usize);
    Ok(Some(RowKernel { _packed: packed.shallow_clone(), ptr, n, k, sums: Sums::Blocked { step } }))
}

impl RowKernel {
    /// The weight as `decode_stack` hands it to the kernel: the packed
    /// bytes (alive as long as `self`), n, k and how to sum.
    pub(crate) fn stack_product(&self) -> super::decode_stack::Product {
        match self.sums {
            Sums::Blocked { step } => super::decode_stack::Product::bf16_rows(self.ptr, self.n, self.k, step),
            Sums::Amx => super::decode_stack::Product::bf16_amx(self.ptr, self.n, self.k),
        }
    }

    pub fn sums(&self) -> Sums {
        self.sums
    }

    /// The weight's [n, k].
    pub fn shape(&self) -> (i64, i64) {
        (self.n, self.k)
    }

    /// A kernel over any bytes `keep` holds, for tests of the checks.
    #[cfg(test)]
    pub(crate) fn for_test(keep: &Tensor, ptr: usize, n: i64, k: i64, sums: Sums) -> RowKernel {
        RowKernel { _packed: keep.shallow_clone(), ptr, n, k, sums }
    }

    /// Rows up to which this kernel takes a product (oneDNN the rest).
    pub fn max_rows(&self) -> i64 {
        match self.sums {
            Sums::Blocked { .. } => MAX_ROWS,
            Sums::Amx => i64::MAX,
        }
    }
}

/// Ask Linux to back `len` bytes at `ptr` (and the rest of the 2 MiB pages
/// they touch) with transparent huge pages. Streaming a weight through 4 KiB
/// pages costs a page walk every 4 KiB: 2 MiB pages read a 453 MB weight 7%
/// faster (68.6 -> 73.4 GB/s, this 2-core Zen 4). Collapsing runs at about
/// 0.5 GB/s, so a background thread does it and loading does not wait; the
/// kernel reads the same bytes before, during and after. Best effort: with
/// THP off, or no memory to compact, or the weight already freed, the pages
/// stay as they are.
fn huge_pages(ptr: usize, len: usize) {
    #[cfg(target_os = "linux")]
    {
        static QUEUE: OnceLock<Option<std::sync::mpsc::Sender<(usize, usize)>>> = OnceLock::new();
        let queue = QUEUE.get_or_init(|| {
            let (tx, rx) = std::sync::mpsc::channel::<(usize, usize)>();
            let spawned = std::thread::Builder::new().name("inferd-thp".into()).spawn(move || {
                for (ptr, len) in rx {
                    collapse(ptr, len);
                }
            });
            spawned.ok().map(|_| tx)
        });
        if let Some(tx) = queue {
            let _ = tx.send((ptr, len));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (ptr, len);
}

#[cfg(target_os = "linux")]
fn collapse(ptr: usize, len: usize) {
    extern "C" {
        fn madvise(addr: *mut c_void, len: usize, advice: std::ffi::c_int) -> std::ffi::c_int;
    }
    const MADV_HUGEPAGE: std::ffi::c_int = 14;
    const MADV_COLLAPSE: std::ffi::c_int = 25; // Linux 6.1
    const HUGE: usize = 2 << 20;
    let start = ptr & !(HUGE - 1);
    let end = (ptr + len + HUGE - 1) & !(HUGE - 1);
    // SAFETY: both advices only change how the kernel maps these pages (the
    // heap's own, rounded out to 2 MiB); contents and addresses stay as they
    // are, and a range no longer mapped is an error return, not a fault.
    unsafe {
        madvise(start as *mut c_void, end - start, MADV_HUGEPAGE);
        if madvise(start as *mut c_void, end - start, MADV_COLLAPSE) != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "weight pages not collapsed to huge pages");
        }
    }
}

/// `x W^T` for x [rows, k] bf16, rows <= `w.max_rows()` for speed (any count
/// works).
pub fn forward(x: &Tensor, w: &RowKernel) -> Result<Tensor, TchError> {
    match w.sums {
        // SAFETY: `w.ptr` points at the n*k bf16 values of `w._packed`, which
        // `w` keeps alive and nothing writes; the shim checks x's shape and
        // dtype and returns a new owned tensor or null.
        Sums::Blocked { step } => wrap(unsafe { ffi_gemv(x, w.ptr, w.n, w.k, step) }),
        Sums::Amx => super::amx_bf16::forward(x, w.ptr, w.n, w.k),
    }
}

/// Inputs per fresh accumulator that make the kernel match oneDNN bit for bit
/// on bf16 [n, k] weights (`packed` is one of them); found once per shape.
fn matching_step(packed: &Tensor, n: i64, k: i64) -> Result<Option<i64>, TchError> {
    static FOUND: OnceLock<Mutex<HashMap<(i64, i64), Option<i64>>>> = OnceLock::new();
    let cache = FOUND.get_or_init(Default::default);
    if let Some(found) = cache.lock().get(&(n, k)) {
        return Ok(*found);
    }
    let found = probe(packed, n, k)?;
    if found.is_none() {
        tracing::info!(n, k, "no blocking reproduces oneDNN's bf16 sums; this shape keeps oneDNN at every row count");
    }
    cache.lock().insert((n, k), found);
    Ok(found)
}

/// Try the candidate blockings at several row counts on two probes: the
/// adversarial one below (at most 1024 outputs wide, to bound its memory),
/// and random inputs against the weight itself (as sensitive as it is wide:
/// a wrong blocking changes about one output in 30,000).
fn probe(packed: &Tensor, n: i64, k: i64) -> Result<Option<i64>, TchError> {
    let mut candidates: Vec<i64> = [512, 1024, 256, 2048, k].into_iter().filter(|s| *s <= k).collect();
    candidates.dedup();
    let mut rows = vec![1, 2, 3, 64];
    if n * k <= 1 << 22 {
        rows.push(300);
    }
    let most = rows.iter().copied().max().unwrap_or(1);
    let narrow = n.min(1024);
    let (adv_x, adv_w) = adversarial(narrow, k, most)?;
    let adv_packed = super::packed_linear::pack_onednn(&adv_w, 16)?;
    let Some(adv_ptr) = packed_bytes(&adv_packed, narrow, k)? else { return Ok(None) };
    let Some(ptr) = packed_bytes(packed, n, k)? else { return Ok(None) };
    let random_x = Tensor::f_randn([most, k], (Kind::Float, Device::Cpu))?.f_to_kind(Kind::BFloat16)?;
    let probes = [(&adv_x, &adv_packed, adv_ptr, narrow), (&random_x, packed, ptr, n)];
    'candidates: for step in candidates {
        for (x, packed, ptr, n) in probes {
            for &m in &rows {
                let xm = x.f_narrow(0, 0, m)?;
                let want = super::packed_linear::linear_onednn(&xm, packed, None)?;
                if !forward(&xm, &RowKernel { _packed: packed.shallow_clone(), ptr, n, k, sums: Sums::Blocked { step } })?.equal(&want) {
                    continue 'candidates;
                }
            }
        }
        return Ok(Some(step));
    }
    Ok(None)
}

/// A probe on which any change of blocking changes the result: each output row
/// holds +2^10 at one input pair and -2^10 at a later one, and 2^-15-sized
/// values elsewhere (exact in bf16), against inputs of 1. A running f32 sum
/// near 2^10 loses each small value added to it; a fresh accumulator started
/// between the two large values keeps them, so how many survive into the
/// output depends on where the blocks start.
fn adversarial(n: i64, k: i64, rows: i64) -> Result<(Tensor, Tensor), TchError> {
    let pairs = k / 2;
    let mut w = vec![0f32; (n * k) as usize];
    for (i, v) in w.iter_mut().enumerate() {
        *v = 2f32.powi(-15) * (1.0 + (i % 8) as f32 / 8.0);
    }
    for row in 0..n {
        let first = (row * 37) % (pairs - 1).max(1);
        let span = (pairs - first - 1).max(1);
        let last = (first + 1 + (row * 101) % span).min(pairs - 1);
        w[(row * k + 2 * first) as usize] = 1024.0;
        w[(row * k + 2 * last + 1) as usize] = -1024.0;
    }
    let w = Tensor::f_from_slice(&w)?.f_view([n, k])?.f_to_kind(Kind::BFloat16)?;
    let x = Tensor::f_ones([rows, k], (Kind::BFloat16, Device::Cpu))?;
    Ok((x, w))
}

/// The address of the bytes behind a oneDNN-packed bf16 [n, k] tensor, None
/// without the shim or when they are not n*k values (BA16a64b2a has no
/// padding at the shapes the kernel takes; other sizes mean another layout).
pub(crate) fn packed_bytes(packed: &Tensor, n: i64, k: i64) -> Result<Option<usize>, TchError> {
    #[cfg(inferd_torch_shim)]
    {
        let (mut ptr, mut nbytes) = (0usize, 0i64);
        // SAFETY: `packed` is live for the call; the shim writes the two outputs
        // or returns 1 with a message.
        if unsafe { inferd_onednn_weight_bytes(packed.as_ptr().cast(), &mut ptr, &mut nbytes) } != 0 {
            return Err(TchError::Torch(format!("gemv_bf16: {}", super::packed_linear::last_error())));
        }
        Ok((nbytes == n * k * 2).then_some(ptr))
    }
    #[cfg(not(inferd_torch_shim))]
    {
        let _ = (packed, n, k);
        Ok(None)
    }
}

#[cfg(inferd_torch_shim)]
unsafe fn ffi_gemv(x: &Tensor, w: usize, n: i64, k: i64, step: i64) -> *mut c_void {
    inferd_gemv_bf16(x.as_ptr().cast(), w, n, k, step)
}

#[cfg(not(inferd_torch_shim))]
unsafe fn ffi_gemv(_: &Tensor, _: usize, _: i64, _: i64, _: i64) -> *mut c_void {
    std::ptr::null_mut()
}

pub(crate) fn wrap(ptr: *mut c_void) -> Result<Tensor, TchError> {
    if ptr.is_null() {
        return Err(TchError::Torch(format!("gemv_bf16: {}", super::packed_linear::last_error())));
    }
    // SAFETY: a non-null return is a fresh `new at::Tensor` (a tch handle).
    Ok(unsafe { Tensor::from_ptr(ptr.cast()) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::packed_linear::{linear_onednn, pack_onednn};

    /// The kernel for a random bf16 weight, or None (with a note) on a CPU without AVX512_BF16.
    fn kernel_for(w: &Tensor) -> Option<(Tensor, RowKernel)> {
        if !available() {
            eprintln!("no AVX512_BF16 on this CPU: the row kernel is off and oneDNN serves every row count");
            return None;
        }
        let packed = pack_onednn(w, 16).unwrap();
        let (n, k) = (w.size()[0], w.size()[1]);
        // The oneDNN-order kernel, also on CPUs where `for_packed` picks AMX.
        let kernel = blocked_for_packed(&packed, n, k).unwrap().unwrap_or_else(|| panic!("no blocking reproduces oneDNN at [{n}, {k}]"));
        Some((packed, kernel))
    }

    #[test]
    fn a_row_gets_the_bits_onednn_gives_it_in_a_batch() {
        tch::manual_seed(21);
        // SmolLM2's projections (q/k/v fused, o, gate/up fused, down, LM head
        // sliced to 4096) and a 1024-wide model's; both K blockings occur.
        for (n, k) in [(960, 576), (576, 576), (3072, 576), (576, 1536), (4096, 576), (2048, 2048), (1024, 5632)] {
            let w = (Tensor::randn([n, k], (Kind::Float, Device::Cpu)) * 0.05).to_kind(Kind::BFloat16);
            let Some((packed, kernel)) = kernel_for(&w) else { return };
            let x = Tensor::randn([64, k], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
            let batch = linear_onednn(&x, &packed, None).unwrap();
            for (start, rows) in [(0, 1), (5, 1), (63, 1), (10, 2), (0, 3), (0, 64)] {
                // On libtorch's threads, then on the decode pool's.
                for pooled in [false, true] {
                    let _pool = pooled.then(crate::model::cpu_pool::PoolScope::enter);
                    let got = forward(&x.narrow(0, start, rows), &kernel).unwrap();
                    assert_eq!(got.size(), [rows, n]);
                    let want = batch.narrow(0, start, rows);
                    let differ = got.ne_tensor(&want).sum(Kind::Int64).int64_value(&[]);
                    assert_eq!(differ, 0, "[{n}, {k}] {:?} pool {pooled}: {differ} of {} outputs differ from oneDNN's batch of 64", kernel.sums, rows * n);
                }
            }
        }
    }

    #[test]
    fn two_threads_in_the_pool_at_once_get_the_same_bits() {
        // One holds the pool's workers and the other runs its products alone;
        // both must see exactly oneDNN's bits, loop after loop, while a
        // successor (prefetch) chain forms on each thread.
        tch::manual_seed(22);
        let ws: Vec<Tensor> = [(960, 576), (576, 576), (3072, 576)]
            .iter()
            .map(|&(n, k)| (Tensor::randn([n, k], (Kind::Float, Device::Cpu)) * 0.05).to_kind(Kind::BFloat16))
            .collect();
        if !available() {
            eprintln!("no AVX512_BF16 on this CPU: the row kernel is off");
            return;
        }
        let x = Tensor::randn([4, 576], (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16);
        // Tensors move between threads but are not shared: each thread packs its own copies.
        let inputs: Vec<(Vec<Tensor>, Tensor)> = (0..2).map(|_| (ws.iter().map(Tensor::copy).collect(), x.copy())).collect();
        let threads: Vec<_> = inputs
            .into_iter()
            .enumerate()
            .map(|(t, (ws, x))| {
                std::thread::spawn(move || {
                    let _g = tch::no_grad_guard();
                    let kernels: Vec<(Tensor, RowKernel)> = ws.iter().map(|w| kernel_for(w).unwrap()).collect();
                    let want: Vec<Tensor> = kernels.iter().map(|(packed, _)| linear_onednn(&x, packed, None).unwrap()).collect();
                    let _pool = crate::model::cpu_pool::PoolScope::enter();
                    for i in 0..60 {
                        let rows = 1 + (i + t as i64) % 4;
                        for ((_, kernel), want) in kernels.iter().zip(&want) {
                            let got = forward(&x.narrow(0, 0, rows), kernel).unwrap();
                            assert!(got.equal(&want.narrow(0, 0, rows)), "thread {t} loop {i}: {rows} rows differ from oneDNN");
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
    }

    #[test]
    fn the_probe_tells_the_blockings_apart() {
        // If every candidate passed the probe, it could not catch a wrong one.
        if !available() {
            eprintln!("no AVX512_BF16 on this CPU: nothing to probe");
            return;
        }
        let (n, k) = (128, 2048);
        let (x, w) = adversarial(n, k, 2).unwrap();
        let packed = pack_onednn(&w, 16).unwrap();
        let ptr = packed_bytes(&packed, n, k).unwrap().expect("BA16a64b2a bytes");
        let outs: Vec<Tensor> =
            [512, 1024, 2048].iter().map(|&step| forward(&x, &RowKernel { _packed: packed.shallow_clone(), ptr, n, k, sums: Sums::Blocked { step } }).unwrap()).collect();
        for (a, b) in [(0, 1), (1, 2), (0, 2)] {
            let differ = outs[a].ne_tensor(&outs[b]).sum(Kind::Int64).int64_value(&[]);
            // Most rows have a block start between their two large values.
            assert!(differ * 2 > n, "blockings {a} and {b} differ in only {differ} of {n} outputs");
        }
    }

    #[test]
    fn a_bad_input_is_an_error_not_an_abort() {
        let w = (Tensor::randn([64, 32], (Kind::Float, Device::Cpu)) * 0.05).to_kind(Kind::BFloat16);
        let Some((_packed, kernel)) = kernel_for(&w) else { return };
        let err = forward(&Tensor::ones([1, 48], (Kind::BFloat16, Device::Cpu)), &kernel).unwrap_err();
        assert!(err.to_string().contains("48 features"), "{err}");
        let err = forward(&Tensor::ones([1, 32], (Kind::Float, Device::Cpu)), &kernel).unwrap_err();
        assert!(err.to_string().contains("bf16"), "{err}");
    }
}
