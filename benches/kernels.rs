//! Criterion micro-benchmarks of the fused CPU kernels against the eager
//! libtorch ops they replace, in bf16 on this machine's CPU, at SmolLM2-135M's
//! shapes (hidden 576, 9 query heads and 3 KV heads of 64, 16-position
//! blocks):
//! - residual add + RMSNorm, at 1 row (a decode step), 64 (a batch of decodes)
//!   and 512 (a prefill chunk);
//! - rotary in place on the fused qkv rows, at 1, 64 and 512 rows;
//! - paged decode attention at 200 cached positions for 1, 16 and 64
//!   sequences, against the eager path (gather the blocks, then SDPA with a
//!   key mask, as `attention.rs` does where the kernel does not apply), and
//!   at 704 positions for 16 sequences through 30 layers' pools, in bytes/s;
//! - a prefill chunk's attention over its cached prefix (130 new positions
//!   over 642, as in the compare's shared-prefix workload, 512 over 1024)
//!   and a first chunk (512 and 128 positions), `chunk_attention.cpp`
//!   against SDPA over the gathered blocks with an offset causal mask;
//! - the decode-row bf16 product (`gemv_bf16`) against oneDNN's call on the
//!   same packed weight, for the gate/up projection (3072x576) at 1, 4, 16 and
//!   64 rows (weights in cache: this is the per-call cost, not bandwidth),
//!   and on CPUs with AMX the AMX kernel (`amx_bf16`) beside them, also at a
//!   prefill chunk's 512 rows;
//! - `weight_stream`: one row through every product of a SmolLM2 decode step
//!   (30 layers' qkv, o, gate/up and down, then the 49152-row LM head: 269 MB
//!   of bf16, far beyond any cache) back to back on the decode pool, with
//!   nothing between them. Criterion's bytes/s is then the rate the row
//!   kernel streams weights from memory, to hold against the machine's read
//!   bandwidth (`benches/compare/membw.c`) and against a whole step
//!   (`benches/decode.rs`): the difference to the step is what the step
//!   spends outside the products.
//! - `layer_stream`: the 30 layers' products (212 MB in bf16) back to back
//!   at 1, 8 and 32 rows, bf16 (`gemv_bf16`) against the same shapes kept as
//!   GGUF Q4_1 blocks (`gemv_gguf`, 66 MB): what `quantization = "gguf"` buys
//!   at each batch size with nothing else in the step. On CPUs with AMX,
//!   `bf16` is the AMX kernel and `bf16_avx512` the AVX-512 row kernel up to
//!   64 rows and oneDNN beyond, what `INFERD_AMX=off` serves.
//!
//! `cargo bench --bench kernels`. Where the shim is not built (no libtorch
//! headers) the fused rows are skipped.

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion};
use criterion::Throughput;
use inferd::model::cpu_pool::{self, PoolScope};
use inferd::model::gemv_gguf::GgufWeight;
use inferd::model::loader::{dequant::GgmlType, QuantRows};
use inferd::model::{fused_cpu, gemv_bf16, gemv_gguf, packed_linear};
use inferd::model::inference_mode::InferenceMode;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

const HIDDEN: i64 = 576;
const HEADS: i64 = 9;
const KV_HEADS: i64 = 3;
const HEAD_DIM: i64 = 64;
const BLOCK: i64 = 16;
const EPS: f64 = 1e-5;

fn bf16(shape: &[i64]) -> Tensor {
    Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_kind(Kind::BFloat16)
}

/// transformers' LlamaRMSNorm after the residual add, as eager ops.
fn eager_add_norm(x: &Tensor, delta: &Tensor, w: &Tensor) -> (Tensor, Tensor) {
    let sum = x + delta;
    let f = sum.to_kind(Kind::Float);
    let inv = (f.pow_tensor_scalar(2).mean_dim(-1, true, Kind::Float) + EPS).rsqrt();
    let norm = w * (f * inv).to_kind(Kind::BFloat16);
    (sum, norm)
}

/// transformers' `x * cos + rotate_half(x) * sin` on the q and k heads.
fn eager_rotary(qk: &Tensor, cos: &Tensor, sin: &Tensor) -> Tensor {
    let half = HEAD_DIM / 2;
    let rot = Tensor::cat(&[-qk.narrow(2, half, half), qk.narrow(2, 0, half)], 2);
    qk * cos + rot * sin
}

fn norm_and_rotary(c: &mut Criterion) {
    let _mode = InferenceMode::enter();
    let shim = fused_cpu::applies(&bf16(&[1]));
    let mut group = c.benchmark_group("fused_cpu_bf16");
    group.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for rows in [1i64, 64, 512] {
        let (x, delta, w) = (bf16(&[rows, HIDDEN]), bf16(&[rows, HIDDEN]), bf16(&[HIDDEN]));
        group.bench_with_input(BenchmarkId::new("add_rms_norm/eager", rows), &rows, |b, _| {
            b.iter(|| eager_add_norm(&x, &delta, &w))
        });
        if shim {
            group.bench_with_input(BenchmarkId::new("add_rms_norm/fused", rows), &rows, |b, _| {
                b.iter(|| fused_cpu::add_rms_norm(&x, &delta, &w, EPS).expect("fused norm"))
            });
        }
        let qkv = bf16(&[rows, HEADS + 2 * KV_HEADS, HEAD_DIM]);
        // Real angles: a rotation keeps the values' size however often it is applied in place.
        let theta = Tensor::rand([rows, 1, HEAD_DIM], (Kind::Float, Device::Cpu)) * 6.28;
        let (cos, sin) = (theta.cos().to_kind(Kind::BFloat16), theta.sin().to_kind(Kind::BFloat16));
        let qk = qkv.narrow(1, 0, HEADS + KV_HEADS);
        group.bench_with_input(BenchmarkId::new("rotary/eager", rows), &rows, |b, _| {
            b.iter(|| eager_rotary(&qk, &cos, &sin))
        });
        if shim {
            // In place, on a fresh copy each time (untimed): rotating the same
            // rows again and again drifts them (bf16 cos and sin are not an
            // exact rotation) into subnormals, which measures the CPU's
            // subnormal assists instead.
            group.bench_with_input(BenchmarkId::new("rotary/fused", rows), &rows, |b, _| {
                b.iter_batched(
                    || qkv.copy(),
                    |fresh| fused_cpu::rotary_(&fresh, &cos, &sin, HEADS + KV_HEADS).expect("fused rotary"),
                    BatchSize::SmallInput,
                )
            });
        }
    }
    group.finish();
}

fn decode_attention(c: &mut Criterion) {
    let _mode = InferenceMode::enter();
    let shim = fused_cpu::attention_applies(&bf16(&[1]));
    let ctx = 200i64;
    let nb = (ctx + BLOCK - 1) / BLOCK;
    let pool_blocks = 64 * nb + 1;
    let k_pool = bf16(&[pool_blocks, BLOCK, KV_HEADS, HEAD_DIM]);
    let v_pool = bf16(&[pool_blocks, BLOCK, KV_HEADS, HEAD_DIM]);
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    let mut group = c.benchmark_group("decode_attention_bf16_ctx200");
    group.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for n in [1i64, 16, 64] {
        // Sequence i's blocks scattered over the pool, as the block manager leaves them.
        let table: Vec<i64> = (0..n * nb).map(|j| (j * 37) % pool_blocks).collect();
        let tables = Tensor::from_slice(&table);
        let lens = Tensor::from_slice(&vec![ctx; n as usize]);
        let q = bf16(&[n, HEADS, HEAD_DIM]);
        let padded = nb * BLOCK;
        let mask = Tensor::arange(padded, (Kind::Int64, Device::Cpu)).lt(ctx).view([1, 1, 1, padded]).expand([n, 1, 1, padded], false);
        group.bench_with_input(BenchmarkId::new("gather_sdpa", n), &n, |b, _| {
            b.iter(|| {
                let gather = |pool: &Tensor| pool.index_select(0, &tables).view([n, padded, KV_HEADS, HEAD_DIM]).transpose(1, 2);
                let qg = q.reshape([n, KV_HEADS, HEADS / KV_HEADS, HEAD_DIM]);
                Tensor::scaled_dot_product_attention(&qg, &gather(&k_pool), &gather(&v_pool), Some(&mask), 0.0, false, scale, false)
            })
        });
        if shim {
            group.bench_with_input(BenchmarkId::new("paged_kernel", n), &n, |b, _| {
                b.iter(|| fused_cpu::decode_attention(&q, &k_pool, &v_pool, &tables, &lens, scale).expect("decode attention"))
            });
        }
    }
    group.finish();
}

/// Decode attention at the shared-prefix workload's contexts: 16 sequences at
/// 704 positions through 30 layers' pools back to back (259 MB of K/V in
/// bf16, 518 MB in f32, far beyond the L2, as a step leaves them), to hold
/// the kernel's bytes/s against the machine's read bandwidth
/// (`benches/compare/membw.c`).
fn decode_attention_long(c: &mut Criterion) {
    let _mode = InferenceMode::enter();
    const LAYERS: usize = 30;
    let (n, ctx) = (16i64, 704i64);
    let nb = (ctx + BLOCK - 1) / BLOCK;
    let pool_blocks = n * nb + 1;
    // Blocks scattered over the pool, as the block manager leaves them.
    let table: Vec<i64> = (0..n * nb).map(|j| (j * 37) % pool_blocks).collect();
    let tables = Tensor::from_slice(&table);
    let lens = Tensor::from_slice(&vec![ctx; n as usize]);
    let scale = 1.0 / (HEAD_DIM as f64).sqrt();
    for (name, kind) in [("bf16", Kind::BFloat16), ("f32", Kind::Float)] {
        let make = |shape: &[i64]| Tensor::randn(shape, (Kind::Float, Device::Cpu)).to_kind(kind);
        if !fused_cpu::attention_applies(&make(&[1])) {
            continue;
        }
        let pools: Vec<(Tensor, Tensor)> = (0..LAYERS)
            .map(|_| (make(&[pool_blocks, BLOCK, KV_HEADS, HEAD_DIM]), make(&[pool_blocks, BLOCK, KV_HEADS, HEAD_DIM])))
            .collect();
        let q = make(&[n, HEADS, HEAD_DIM]);
        let bytes = LAYERS as u64 * 2 * (n * ctx * KV_HEADS * HEAD_DIM) as u64 * kind.elt_size_in_bytes() as u64;
        let mut group = c.benchmark_group(format!("decode_attention_{name}_ctx704_30_layers"));
        group.measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_millis(500)).sample_size(20);
        group.throughput(Throughput::Bytes(bytes));
        // A decode step runs on the decode pool; a step with a prefill chunk
        // in it on libtorch's threads (`Model::forward`).
        for pooled in [true, false] {
            let threads = if pooled { "decode_pool" } else { "libtorch_threads" };
            group.bench_function(BenchmarkId::new(threads, n), |b| {
                b.iter(|| {
                    let _pool = pooled.then(PoolScope::enter);
                    for (k, v) in &pools {
                        let _out = fused_cpu::decode_attention(&q, k, v, &tables, &lens, scale).expect("decode attention");
                    }
                })
            });
        }
        group.finish();
    }
}

/// A prefill chunk's attention over its cached prefix (prefix caching, or a
/// later chunk of a long prompt): SDPA over a gathered copy with an offset
/// causal mask (the path without the kernel) against chunk_attention.cpp.
fn chunk_attention(c: &mut Criterion) {
    let _mode = InferenceMode::enter();
    let mut group = c.benchmark_group("chunk_attention_bf16");
    group.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for (len, ctx) in [(130i64, 642i64), (512, 1024), (512, 512), (128, 128)] {
        let nb = (ctx + BLOCK - 1) / BLOCK;
        let pool_blocks = 2 * nb + 1;
        let k_pool = bf16(&[pool_blocks, BLOCK, KV_HEADS, HEAD_DIM]);
        let v_pool = bf16(&[pool_blocks, BLOCK, KV_HEADS, HEAD_DIM]);
        let table = Tensor::from_slice(&(0..nb).map(|j| (j * 37) % pool_blocks).collect::<Vec<_>>());
        let q = bf16(&[len, HEADS, HEAD_DIM]);
        let scale = 1.0 / (HEAD_DIM as f64).sqrt();
        let qpos = Tensor::arange(len, (Kind::Int64, Device::Cpu)).unsqueeze(1) + (ctx - len);
        let mask = Tensor::arange(ctx, (Kind::Int64, Device::Cpu)).unsqueeze(0).le_tensor(&qpos).view([1, 1, len, ctx]);
        let group_q = HEADS / KV_HEADS;
        let id = format!("{len}x{ctx}");
        group.bench_function(BenchmarkId::new("gather_sdpa", &id), |b| {
            b.iter(|| {
                // As attention.rs does without the kernel.
                let qg = q.transpose(0, 1).reshape([1, KV_HEADS, group_q * len, HEAD_DIM]);
                let gather = |pool: &Tensor| pool.index_select(0, &table).view([-1, KV_HEADS, HEAD_DIM]).narrow(0, 0, ctx).transpose(0, 1).unsqueeze(0);
                let m = mask.repeat([1, 1, group_q, 1]);
                Tensor::scaled_dot_product_attention(&qg, &gather(&k_pool), &gather(&v_pool), Some(&m), 0.0, false, scale, false)
            })
        });
        if fused_cpu::chunk_attention_applies(&q, HEAD_DIM) {
            group.bench_function(BenchmarkId::new("paged_kernel", &id), |b| {
                b.iter(|| fused_cpu::chunk_attention(&q, &k_pool, &v_pool, &table, ctx, scale).expect("chunk attention"))
            });
        }
    }
    group.finish();
}

fn decode_rows(c: &mut Criterion) {
    let _mode = InferenceMode::enter();
    let (n, k) = (3072i64, HIDDEN);
    let w = (Tensor::randn([n, k], (Kind::Float, Device::Cpu)) * 0.05).to_kind(Kind::BFloat16);
    let Ok(packed) = packed_linear::pack_onednn(&w, 16) else {
        eprintln!("oneDNN cannot pack bf16 on this CPU: nothing to compare");
        return;
    };
    let kernel = gemv_bf16::blocked_for_packed(&packed, n, k).expect("probe");
    let amx = gemv_bf16::for_packed(&packed, n, k).expect("probe").filter(|k| k.sums() == gemv_bf16::Sums::Amx);
    let mut group = c.benchmark_group("linear_bf16_3072x576");
    group.measurement_time(Duration::from_secs(2)).warm_up_time(Duration::from_millis(500));
    for rows in [1i64, 4, 16, 64, 512] {
        let x = bf16(&[rows, k]);
        group.bench_with_input(BenchmarkId::new("onednn", rows), &rows, |b, _| {
            b.iter(|| packed_linear::linear_onednn(&x, &packed, None).expect("onednn"))
        });
        if let Some(kernel) = kernel.as_ref().filter(|_| rows <= gemv_bf16::MAX_ROWS) {
            group.bench_with_input(BenchmarkId::new("row_kernel", rows), &rows, |b, _| b.iter(|| gemv_bf16::forward(&x, kernel).expect("kernel")));
        }
        if let Some(amx) = &amx {
            group.bench_with_input(BenchmarkId::new("amx", rows), &rows, |b, _| b.iter(|| gemv_bf16::forward(&x, amx).expect("amx")));
        }
    }
    group.finish();
}

fn weight_stream(c: &mut Criterion) {
    let _mode = InferenceMode::enter();
    let (layers, intermediate, vocab) = (30, 1536i64, 49152i64);
    let mut shapes = Vec::new();
    for _ in 0..layers {
        shapes.extend([(HIDDEN + 2 * KV_HEADS * HEAD_DIM, HIDDEN), (HIDDEN, HIDDEN), (2 * intermediate, HIDDEN), (HIDDEN, intermediate)]);
    }
    shapes.push((vocab, HIDDEN));
    let mut products = Vec::with_capacity(shapes.len());
    for &(n, k) in &shapes {
        let w = (Tensor::randn([n, k], (Kind::Float, Device::Cpu)) * 0.05).to_kind(Kind::BFloat16);
        let packed = match packed_linear::pack(&w, 16) {
            Ok(p) if p.row_kernel_rows() > 0 => p,
            _ => {
                eprintln!("no decode-row kernel here (needs the shim and AVX512_BF16): weight_stream skipped");
                return;
            }
        };
        products.push((packed, bf16(&[1, k])));
    }
    let bytes: i64 = shapes.iter().map(|(n, k)| n * k * 2).sum();
    let mut group = c.benchmark_group("weight_stream_bf16");
    group.sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    group.throughput(Throughput::Bytes(bytes as u64));
    group.bench_function("smollm2_step_products_1row", |b| {
        b.iter(|| {
            let _pool = PoolScope::enter();
            for (w, x) in &products {
                let _y = packed_linear::linear(x, w, None).expect("product");
            }
        })
    });
    group.finish();
}

/// Q4_1 rows of random nibbles with scales like SmolLM2's.
fn random_q4_1(n: i64, k: i64, seed: u64) -> QuantRows {
    let mut state = seed;
    let mut data = Vec::with_capacity((n * k / 32 * 20) as usize);
    for _ in 0..n * k / 32 {
        state = state.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        data.extend_from_slice(&half::f16::from_f32(0.004).to_le_bytes());
        data.extend_from_slice(&half::f16::from_f32(-0.03).to_le_bytes());
        data.extend((0..16).map(|i| (state >> (i * 4)) as u8));
    }
    QuantRows { ty: GgmlType::Q4_1, n, k, data }
}

fn layer_stream(c: &mut Criterion) {
    if !gemv_gguf::available() {
        eprintln!("no AVX512_BF16 here: layer_stream skipped");
        return;
    }
    let _mode = InferenceMode::enter();
    let intermediate = 1536i64;
    let mut shapes = Vec::new();
    for _ in 0..30 {
        shapes.extend([(HIDDEN + 2 * KV_HEADS * HEAD_DIM, HIDDEN), (HIDDEN, HIDDEN), (2 * intermediate, HIDDEN), (HIDDEN, intermediate)]);
    }
    let mut bf16_w = Vec::new();
    let mut avx512_w = Vec::new();
    let mut q4_w = Vec::new();
    for (i, &(n, k)) in shapes.iter().enumerate() {
        let rows = random_q4_1(n, k, i as u64 + 1);
        q4_w.push(GgufWeight::pack(&rows).expect("pack").expect("shape packs"));
        let dense = rows.dequantize().expect("dequantize").to_kind(Kind::BFloat16);
        let packed = packed_linear::pack_onednn(&dense, 16).expect("oneDNN packs bf16 here");
        avx512_w.push((gemv_bf16::blocked_for_packed(&packed, n, k).expect("probe"), packed));
        bf16_w.push(packed_linear::pack(&dense, 16).expect("oneDNN packs bf16 here"));
    }
    let amx = inferd::model::amx_bf16::wanted();
    let mut group = c.benchmark_group("layer_stream");
    group.sample_size(20).measurement_time(Duration::from_secs(4)).warm_up_time(Duration::from_secs(1));
    for rows in [1i64, 8, 32, 128, 512] {
        let xs: Vec<Tensor> = shapes.iter().map(|&(_, k)| bf16(&[rows, k])).collect();
        // As the model does: the decode pool for a few rows, at::parallel_for
        // (OpenMP) for a prefill chunk.
        let pooled = rows <= cpu_pool::MAX_ROWS;
        group.throughput(Throughput::Elements(rows as u64));
        group.bench_function(BenchmarkId::new("bf16", rows), |b| {
            b.iter(|| {
                let _pool = pooled.then(PoolScope::enter);
                for (w, x) in bf16_w.iter().zip(&xs) {
                    let _y = packed_linear::linear(x, w, None).expect("product");
                }
            })
        });
        if amx {
            group.bench_function(BenchmarkId::new("bf16_avx512", rows), |b| {
                b.iter(|| {
                    let _pool = pooled.then(PoolScope::enter);
                    for ((kernel, packed), x) in avx512_w.iter().zip(&xs) {
                        let _y = match kernel {
                            Some(kernel) if rows <= gemv_bf16::MAX_ROWS => gemv_bf16::forward(x, kernel),
                            _ => packed_linear::linear_onednn(x, packed, None),
                        }
                        .expect("product");
                    }
                })
            });
        }
        group.bench_function(BenchmarkId::new("q4_1", rows), |b| {
            b.iter(|| {
                let _pool = pooled.then(PoolScope::enter);
                for (w, x) in q4_w.iter().zip(&xs) {
                    let _y = w.forward(x).expect("product");
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, norm_and_rotary, decode_attention, decode_attention_long, chunk_attention, decode_rows, weight_stream, layer_stream);
criterion_main!(benches);
