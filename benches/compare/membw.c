// Read bandwidth of this machine's memory, for the one-stream bound
// (membw.py compiles and runs it; `membw THREADS MIB STREAMS [AHEAD]` prints
// GB/s; STREAMS is 1, 2, 4 or 8; AHEAD, a multiple of 64, adds a
// non-temporal software prefetch that many bytes ahead of each stream).
//
// Why native: numpy's and torch's reductions are not written to saturate
// memory with every core (on the 2-core Zen 4 VM, in one sample of the
// 2026-11-29 20:02 comparison, numpy's max read 45 GB/s with two threads,
// torch's sum 49 and this loop 86), and a bound below what the machine can
// stream flatters whoever is measured against it. Each thread reads its share of a buffer far larger
// than any cache with the widest vector loads it has (AVX-512, else AVX)
// into independent accumulators, split into
// STREAMS interleaved sequential streams (more streams engage more hardware
// prefetchers); a pass is timed from the first thread's start to the last
// thread's end, so a thread that starts late does not make the pass look
// faster; the best of seven passes (the first only faults pages in) is printed.
// The buffer asks for transparent huge pages, as inferd's packed weights do
// (gemv_bf16.rs): under KVM a 4 KiB page's TLB miss is a two-level walk, and
// one stream read 27-34 GB/s on 4 KiB pages against 35-36 on huge ones in
// the same minutes.
#include <immintrin.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <time.h>

#define REPS 7

typedef struct {
    const char* p;
    size_t n;
    int streams;
    size_t ahead;
    pthread_barrier_t* barrier;
    double t0[REPS], t1[REPS];
    float sink;
} job_t;

static double now(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

// The widest loads this machine has (-march=native): AVX-512, else AVX.
#if defined(__AVX512F__)
typedef __m512 vec_t;
#define VZERO() _mm512_setzero_ps()
#define VADD(a, b) _mm512_add_ps(a, b)
#define VLOAD(p) _mm512_load_ps(p)
static inline float vsum(vec_t v) { return _mm512_reduce_add_ps(v); }
#else
typedef __m256 vec_t;
#define VZERO() _mm256_setzero_ps()
#define VADD(a, b) _mm256_add_ps(a, b)
#define VLOAD(p) _mm256_load_ps(p)
static inline float vsum(vec_t v) {
    float f[8];
    _mm256_storeu_ps(f, v);
    return f[0] + f[1] + f[2] + f[3] + f[4] + f[5] + f[6] + f[7];
}
#endif
#define VFLOATS ((int)(sizeof(vec_t) / sizeof(float)))

// S constant at each call site, so the accumulators stay in registers.
__attribute__((always_inline)) static inline float read_streams(const char* p, size_t n, const int S, const size_t ahead) {
    vec_t acc[8];
    for (int j = 0; j < 8; ++j) acc[j] = VZERO();
    const size_t part = n / S / 256 * 256;
    for (size_t i = 0; i < part; i += 256)
        for (int s = 0; s < S; ++s) {
            const float* q = (const float*)(p + s * part + i);
            if (ahead)
                for (int k = 0; k < 4; ++k) _mm_prefetch((const char*)q + ahead + 64 * k, _MM_HINT_NTA);
            for (int k = 0; k < 64 / VFLOATS; ++k) acc[(4 * s + k) & 7] = VADD(acc[(4 * s + k) & 7], VLOAD(q + VFLOATS * k));
        }
    vec_t t = acc[0];
    for (int j = 1; j < 8; ++j) t = VADD(t, acc[j]);
    return vsum(t);
}

static float read_all(const char* p, size_t n, int streams, size_t ahead) {
    // ahead == 0 gets its own constant call sites, so the plain loop has no
    // prefetch test in it and reads as it did before AHEAD existed.
    if (ahead == 0) switch (streams) {
            case 1: return read_streams(p, n, 1, 0);
            case 2: return read_streams(p, n, 2, 0);
            case 4: return read_streams(p, n, 4, 0);
            default: return read_streams(p, n, 8, 0);
        }
    switch (streams) {
        case 1: return read_streams(p, n, 1, ahead);
        case 2: return read_streams(p, n, 2, ahead);
        case 4: return read_streams(p, n, 4, ahead);
        default: return read_streams(p, n, 8, ahead);
    }
}

static void* worker(void* arg) {
    job_t* j = arg;
    for (int r = 0; r < REPS; ++r) {
        pthread_barrier_wait(j->barrier);
        j->t0[r] = now();
        j->sink += read_all(j->p, j->n, j->streams, j->ahead);
        j->t1[r] = now();
    }
    return NULL;
}

int main(int argc, char** argv) {
    if (argc != 4 && argc != 5) {
        fprintf(stderr, "usage: membw THREADS MIB STREAMS [AHEAD]\n");
        return 2;
    }
    const int threads = atoi(argv[1]), streams = atoi(argv[3]);
    const long ahead = argc == 5 ? atol(argv[4]) : 0;
    const size_t total = (size_t)atoi(argv[2]) << 20;
    if (threads < 1 || threads > 256 || (streams != 1 && streams != 2 && streams != 4 && streams != 8) || total == 0 || ahead < 0 || ahead % 64) return 2;
    unsigned* buf = aligned_alloc(1 << 21, total);
    if (!buf) return 1;
    madvise(buf, total, MADV_HUGEPAGE);  // a hint: without THP the pages stay 4 KiB
    // Distinct contents: pages of equal bytes could be merged by the host.
    for (size_t i = 0; i < total / 4; ++i) buf[i] = (unsigned)(i * 2654435761u) >> 9;
    pthread_barrier_t barrier;
    pthread_barrier_init(&barrier, NULL, threads);
    pthread_t tid[256];
    job_t* jobs = calloc(threads, sizeof *jobs);
    const size_t share = total / threads / 4096 * 4096;
    for (int t = 0; t < threads; ++t) {
        jobs[t] = (job_t){(const char*)buf + t * share, share, streams, (size_t)ahead, &barrier, {0}, {0}, 0};
        pthread_create(&tid[t], NULL, worker, &jobs[t]);
    }
    float sink = 0;
    for (int t = 0; t < threads; ++t) {
        pthread_join(tid[t], NULL);
        sink += jobs[t].sink;
    }
    double best = 1e30;
    for (int r = 1; r < REPS; ++r) {
        double lo = 1e30, hi = 0;
        for (int t = 0; t < threads; ++t) {
            if (jobs[t].t0[r] < lo) lo = jobs[t].t0[r];
            if (jobs[t].t1[r] > hi) hi = jobs[t].t1[r];
        }
        if (hi - lo < best) best = hi - lo;
    }
    printf("%.2f\n", (double)share * threads / best / 1e9);
    return sink == 12345.0f;  // keeps the reads
}
