// Shared helpers for munja's kernels: element types, conversions to the f32/f64 compute type, the strided
// index struct every broadcasting kernel takes, and warp/block reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#ifdef __CUDACC_RTC__
// NVRTC (the CUDA 12 build of these kernels, build/nvrtc.rs) has no C library headers: the few integer
// types and float constants the kernels use, defined here to what <stdint.h> and <math.h> give nvcc.
typedef long long int64_t;
typedef unsigned long long uint64_t;
typedef int int32_t;
typedef unsigned int uint32_t;
typedef unsigned char uint8_t;
typedef unsigned long long uintptr_t;
#define INT64_MAX 9223372036854775807ll
#define INT64_MIN (-INT64_MAX - 1)
#define INFINITY __int_as_float(0x7f800000)
#define NAN __int_as_float(0x7fc00000)
#else
#include <stdint.h>
#endif

// std::conditional and std::is_same, written out so that NVRTC, which has no <type_traits>, compiles
// the same source.
template <bool B, typename T, typename F> struct Choose { typedef T type; };
template <typename T, typename F> struct Choose<false, T, F> { typedef F type; };
template <typename A, typename B> struct SameType { static const bool value = false; };
template <typename A> struct SameType<A, A> { static const bool value = true; };

typedef __nv_bfloat16 bf16;
typedef __half f16;

// Compute type: bf16/f16 are widened to f32 (as the CPU backend does); f32 and f64 compute in themselves.
template <typename T> struct Acc { typedef T type; };
template <> struct Acc<bf16> { typedef float type; };
template <> struct Acc<f16> { typedef float type; };
template <> struct Acc<int64_t> { typedef double type; };
template <> struct Acc<uint8_t> { typedef double type; };

template <typename A, typename T> __device__ __forceinline__ A to_acc(T x) { return (A)x; }
// bf16 is the top half of an f32: a shift. __bfloat162float's asm wants the half in a register of its
// own, so the compiler copied the high halves of every loaded pack out first (more registers, fewer
// blocks per SM in the row kernels).
template <> __device__ __forceinline__ float to_acc<float, bf16>(bf16 x) {
    return __uint_as_float((unsigned)__bfloat16_as_ushort(x) << 16);
}
template <> __device__ __forceinline__ float to_acc<float, f16>(f16 x) { return __half2float(x); }
template <> __device__ __forceinline__ double to_acc<double, bf16>(bf16 x) { return (double)__bfloat162float(x); }
template <> __device__ __forceinline__ double to_acc<double, f16>(f16 x) { return (double)__half2float(x); }

template <typename T, typename A> __device__ __forceinline__ T from_acc(A x) { return (T)x; }
template <> __device__ __forceinline__ bf16 from_acc<bf16, float>(float x) { return __float2bfloat16_rn(x); }
template <> __device__ __forceinline__ f16 from_acc<f16, float>(float x) { return __float2half_rn(x); }
// f64 -> bf16/f16 goes straight from double, as half::bf16::from_f64 does (no double rounding through f32).
template <> __device__ __forceinline__ bf16 from_acc<bf16, double>(double x) { return __double2bfloat16(x); }
template <> __device__ __forceinline__ f16 from_acc<f16, double>(double x) { return __double2half(x); }
// Float -> integer casts saturate and send NaN to 0, like Rust's `as`.
template <> __device__ __forceinline__ int64_t from_acc<int64_t, double>(double x) {
    if (x != x) return 0;
    if (x >= 9.2233720368547758e18) return INT64_MAX;
    if (x <= -9.2233720368547758e18) return INT64_MIN;
    return (int64_t)x;
}
template <> __device__ __forceinline__ uint8_t from_acc<uint8_t, double>(double x) {
    if (!(x > 0.0)) return 0;
    if (x >= 255.0) return 255;
    return (uint8_t)x;
}

// A value converted between element types. Same type: the value. Otherwise through f64, which matches the
// CPU backend's rounding for every pair (bf16/f16 <-> f32 are exact through f64 too).
template <typename S, typename D> __device__ __forceinline__ D convert(S x) {
    if constexpr (SameType<S, D>::value) return x;
    else return from_acc<D, double>(to_acc<double>(x));
}

// Up to this many dims after coalescing; the host rejects (or pre-copies) deeper views.
#define MAX_DIMS 8

// A view: logical shape (shared by all operands of one launch) and one operand's strides and offset.
struct Strided {
    int32_t rank;
    int64_t shape[MAX_DIMS];
    int64_t strides[MAX_DIMS];
    int64_t offset;
};

// Storage offset of logical (row-major) element i of a view.
__device__ __forceinline__ int64_t strided_offset(const Strided& s, int64_t i) {
    int64_t off = s.offset;
    for (int d = s.rank - 1; d >= 0; --d) {
        int64_t n = s.shape[d];
        off += (i % n) * s.strides[d];
        i /= n;
    }
    return off;
}

// strided_offset for launches of n elements: when n < 2^32 (so every dim and index fits too), the
// index arithmetic runs in 32 bits, several times cheaper on the GPU than 64-bit division.
__device__ __forceinline__ int64_t strided_offset_n(const Strided& s, int64_t i, int64_t n) {
    if (n > 0xffffffffll) return strided_offset(s, i);
    int64_t off = s.offset;
    uint32_t r = (uint32_t)i;
    for (int d = s.rank - 1; d >= 0; --d) {
        uint32_t m = (uint32_t)s.shape[d];
        uint32_t q = r / m;
        off += (int64_t)(r - q * m) * s.strides[d];
        r = q;
    }
    return off;
}

// Offset of the first element of row r of a view, rows being all dims but the last (n = element count).
__device__ __forceinline__ int64_t row_offset(const Strided& s, int64_t r, int64_t n) {
    int64_t off = s.offset;
    if (n <= 0xffffffffll) {
        uint32_t q = (uint32_t)r;
        for (int d = s.rank - 2; d >= 0; --d) {
            uint32_t m = (uint32_t)s.shape[d], t = q / m;
            off += (int64_t)(q - t * m) * s.strides[d];
            q = t;
        }
    } else {
        for (int d = s.rank - 2; d >= 0; --d) {
            off += (r % s.shape[d]) * s.strides[d];
            r /= s.shape[d];
        }
    }
    return off;
}

// The host launches the block-per-row kernels with up to 1024 threads (row_threads in softmax.rs): they
// must fit 65536 registers at that size, so at most 64 per thread, which this bound makes the compiler
// keep (tests/suite/cuda.rs checks the ptxas report).
#define ROW_BOUNDS __launch_bounds__(1024)

// Grid-stride loop over n elements.
#define GRID_LOOP(i, n) \
    for (int64_t i = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i < (n); i += (int64_t)gridDim.x * blockDim.x)

template <typename A> __device__ __forceinline__ A warp_sum(A v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffff, v, o);
    return v;
}
template <typename A> __device__ __forceinline__ A warp_max(A v) {
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) v = max(v, __shfl_xor_sync(0xffffffff, v, o));
    return v;
}

// Sum over a block (blockDim.x a multiple of 32, at most 1024); every thread gets the result.
// `shared` needs 32 slots. Ends with a barrier so `shared` can be reused right after.
template <typename A> __device__ A block_sum(A v, A* shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_sum(v);
    // One warp (the short rows of attention): the shuffles already gave every lane the sum.
    if (nwarps > 1) {
        if (lane == 0) shared[warp] = v;
        __syncthreads();
        v = lane < nwarps ? shared[lane] : (A)0;
        v = warp_sum(v);
    }
    __syncthreads();
    return v;
}

// block_sum2_of_warps with one barrier instead of two, for kernels that reduce once per row: `shared`
// holds 2 × 32 slots and consecutive calls alternate halves (`parity`, the row's count in the walk, & 1).
// A half is written again only two calls later, after every thread has passed the other call's barrier,
// which it reaches only once it has read this call's sums: so no trailing barrier is needed. In the
// layer-norm kernels the two barriers a row held 8 warps idle twice per row.
// NP pairs at once (the layer-norm backward over two rows): `shared` then holds 2 × 32 × NP slots, and
// each pair's sum adds the warps' values in warp order, as NP separate calls would.
template <int NP>
__device__ __forceinline__ void block_sum_pairs_of_warps_alternating(double2 (&v)[NP], double2* shared, int parity) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    if (nwarps > 1) {
        double2* half = shared + (parity & 1) * 32 * NP;
        if (lane == 0)
#pragma unroll
            for (int p = 0; p < NP; ++p) half[warp * NP + p] = v[p];
        __syncthreads();
        if (nwarps <= 8) {
            // Every thread adds the (at most 8) warp sums itself, in warp order: broadcast reads of shared
            // memory issued together, then two chains of adds. Five rounds of f64 shuffles (two shuffles
            // each per value) took about twice as long, every warp of the block waiting, once per row.
#pragma unroll
            for (int p = 0; p < NP; ++p) v[p] = half[p];
#pragma unroll
            for (int w = 1; w < 8; ++w)
                if (w < nwarps)
#pragma unroll
                    for (int p = 0; p < NP; ++p) {
                        double2 u = half[w * NP + p];
                        v[p].x += u.x, v[p].y += u.y;
                    }
        } else {
#pragma unroll
            for (int p = 0; p < NP; ++p) {
                double2 u = lane < nwarps ? half[lane * NP + p] : make_double2(0.0, 0.0);
                v[p] = make_double2(warp_sum(u.x), warp_sum(u.y));
            }
        }
    }
}

// One pair: a row's two sums.
__device__ __forceinline__ void block_sum2_of_warps_alternating(double& a, double& b, double2* shared, int parity) {
    double2 v[1] = {make_double2(a, b)};
    block_sum_pairs_of_warps_alternating<1>(v, shared, parity);
    a = v[0].x, b = v[0].y;
}

// Sums two values over a block in one round of barriers (a pair of reductions costs what one does);
// every thread gets both results. `shared` needs 32 slots. Ends with a barrier, as block_sum.
__device__ __forceinline__ void block_sum2(double& a, double& b, double2* shared) {
    a = warp_sum(a);
    b = warp_sum(b);
    block_sum2_of_warps_alternating(a, b, shared, 0);
    __syncthreads();
}

// The launch's dynamic shared memory as an array of T (16-byte aligned).
#ifdef MUNJA_EMU
#define DYNAMIC_SHARED(T, name) T* name = reinterpret_cast<T*>(emu::dynamic_shared())
#else
#define DYNAMIC_SHARED(T, name) \
    extern __shared__ __align__(16) unsigned char munja_dynamic_shared[]; \
    T* name = reinterpret_cast<T*>(munja_dynamic_shared)
#endif

// Asynchronous 16-byte copies from global to the dynamic shared memory (cp.async, sm_80+), bypassing L1:
// data in flight this way holds no registers, so a block can keep whole rows in flight ahead of the one
// it computes on. The copy takes the destination as a byte offset in the shared window (shared_offset of
// a pointer into it): the row rings keep one base offset a thread and add constants, where a generic
// pointer needed its conversion to the window redone at every copy. Copies issued between two
// async_commit() calls form a group; async_wait<N>() returns once all but this thread's newest N groups
// have landed (in this thread's view: other threads' copies need a barrier as well).
__device__ __forceinline__ unsigned shared_offset(const void* p) {
#if defined(MUNJA_EMU)
    return (unsigned)((const char*)p - (const char*)emu::dynamic_shared());
#elif defined(__CUDA_ARCH__)
    return (unsigned)__cvta_generic_to_shared(p);
#else
    return 0;
#endif
}
__device__ __forceinline__ void async_copy16_at(unsigned offset, const void* gmem) {
#if defined(MUNJA_EMU)
    emu::async_copy((char*)emu::dynamic_shared() + offset, gmem, 16);
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.cg.shared.global [%0], [%1], 16;" ::"r"(offset), "l"(gmem) : "memory");
#endif
}
__device__ __forceinline__ void async_commit() {
#if defined(MUNJA_EMU)
    emu::async_commit();
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.commit_group;" ::: "memory");
#endif
}
template <int N> __device__ __forceinline__ void async_wait() {
#if defined(MUNJA_EMU)
    emu::async_wait(N);
#elif defined(__CUDA_ARCH__)
    asm volatile("cp.async.wait_group %0;" ::"n"(N) : "memory");
#endif
}
// async_wait for a pipeline depth known only at run time (0 to RING_STAGES − 1 newer groups may stay in
// flight).
__device__ __forceinline__ void async_wait_newest(int n) {
    switch (n) {
        case 0: async_wait<0>(); break;
        case 1: async_wait<1>(); break;
        case 2: async_wait<2>(); break;
        case 3: async_wait<3>(); break;
        case 4: async_wait<4>(); break;
        case 5: async_wait<5>(); break;
        case 6: async_wait<6>(); break;
        default: async_wait<7>(); break;
    }
}

// 16 bytes of T: the unit of the 128-bit loads and stores of the contiguous fast paths.
template <typename T> struct alignas(16) Pack {
    static const int N = 16 / sizeof(T);
    T v[N];
};

// All values of a pack widened to A. bf16 -> f32 works on the pack's 32-bit words, two values each: the
// low one is word << 16, the high one word & 0xffff0000, one instruction apiece. Widened value by value,
// each high half was first extracted (PRMT), then shifted, often moved as well: in the bf16 layer-norm
// backward that was more instructions than its arithmetic.
template <typename A, typename T> __device__ __forceinline__ void widen(const Pack<T>& p, A (&out)[Pack<T>::N]) {
#pragma unroll
    for (int e = 0; e < Pack<T>::N; ++e) out[e] = to_acc<A>(p.v[e]);
}
template <> __device__ __forceinline__ void widen<float, bf16>(const Pack<bf16>& p, float (&out)[8]) {
    const uint4 u = reinterpret_cast<const uint4&>(p);
    const unsigned w[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
        out[2 * i] = __uint_as_float(w[i] << 16);
        out[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
}

__device__ __forceinline__ bool aligned16(const void* p) { return ((uintptr_t)p & 15) == 0; }

// Max over a block; every thread gets the result (same contract as block_sum).
template <typename A> __device__ A block_max(A v, A* shared) {
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    v = warp_max(v);
    if (nwarps > 1) {
        if (lane == 0) shared[warp] = v;
        __syncthreads();
        v = lane < nwarps ? shared[lane] : (A)-INFINITY;
        v = warp_max(v);
    }
    __syncthreads();
    return v;
}

// Row kernels that keep their row in registers: each thread holds ROW_VALS values of one contiguous,
// 16-byte-aligned row (as ROW_VALS / Pack<T>::N packs), so the row is read from memory once. The host
// uses them when n is a multiple of the pack width and n <= ROW_VALS * 1024.
#define ROW_VALS 32
template <typename T> struct RowPacks { static const int P = ROW_VALS / Pack<T>::N; };
// Those kernels run at most 256 threads a block (ROW_THREADS_MAX in softmax.rs). Blocks a multiprocessor
// must hold at that width, bounding registers: 64 for 16-bit rows, 80 for f32 (32 values a thread in
// either), none for f64, whose 32 values alone take 64 registers.
#define ROW_CACHED_THREADS 256
template <typename T> __host__ __device__ constexpr int row_cached_blocks() { return sizeof(T) == 2 ? 4 : sizeof(T) == 4 ? 3 : 1; }

// Loads this thread's packs of row `x` (n / Pack::N packs in total) widened to A; missing ones are `fill`.
template <typename T, typename A>
__device__ __forceinline__ void load_row(const T* x, int64_t n, A (&r)[ROW_VALS], A fill) {
    typedef Pack<T> P;
    int64_t np = n / P::N;
#pragma unroll
    for (int k = 0; k < RowPacks<T>::P; ++k) {
        int64_t p = threadIdx.x + (int64_t)k * blockDim.x;
        if (p < np) {
            A v[P::N];
            widen(reinterpret_cast<const P*>(x)[p], v);
#pragma unroll
            for (int e = 0; e < P::N; ++e) r[k * P::N + e] = v[e];
        } else {
#pragma unroll
            for (int e = 0; e < P::N; ++e) r[k * P::N + e] = fill;
        }
    }
}

template <typename T, typename A>
__device__ __forceinline__ void store_row(T* y, int64_t n, const A (&r)[ROW_VALS]) {
    typedef Pack<T> P;
    int64_t np = n / P::N;
#pragma unroll
    for (int k = 0; k < RowPacks<T>::P; ++k) {
        int64_t p = threadIdx.x + (int64_t)k * blockDim.x;
        if (p < np) {
            P pk;
#pragma unroll
            for (int e = 0; e < P::N; ++e) pk.v[e] = from_acc<T>(r[k * P::N + e]);
            reinterpret_cast<P*>(y)[p] = pk;
        }
    }
}

// Most rows a block keeps in its shared-memory ring (RowRing): the host picks 1 to RING_STAGES stages
// (ring_plan in src/backend/cuda/ring.rs); async_wait_newest covers them all.
#define RING_STAGES 8

// A block's ring of `stages` row slots in dynamic shared memory: slot s holds this thread's packs
// pk = threadIdx.x + k·blockDim.x (k < kpu) of `arrays` rows (x and g for the backward), each thread
// copying and later reading only its own packs, so the ring needs no barriers. Rows are fetched with
// cp.async `stages` − 1 rows ahead of the one being computed: in flight without holding registers.
// stages = 0 is the direct mode: no ring, each row's packs loaded from global memory where the body reads
// them (the host then launches a block per row, and the GPU's block scheduler keeps rows in flight).
// DIRECT = false compiles the direct mode out (the host then never plans it): walk() otherwise inlines its
// body twice, and the second copy of the layer-norm backward's body spilled a register.
template <typename T, int ARRAYS, bool DIRECT = true> struct RowRing {
    typedef Pack<T> P;
    P* mine;  // this thread's first pack in the ring
    const P* src[ARRAYS];
    int64_t np;
    int kpu, stages;
    unsigned base;  // shared_offset(mine)
    int k_bytes, a_bytes, slot_bytes;
    __device__ RowRing(P* shared, const T* const (&src_)[ARRAYS], int64_t n, int stages_)
        : mine(shared + threadIdx.x), np(n / P::N), stages(stages_) {
        kpu = (int)((np + blockDim.x - 1) / blockDim.x);
#pragma unroll
        for (int a = 0; a < ARRAYS; ++a) src[a] = reinterpret_cast<const P*>(src_[a]);
        base = shared_offset(mine);
        k_bytes = blockDim.x * (int)sizeof(P);
        a_bytes = kpu * k_bytes;
        slot_bytes = ARRAYS * a_bytes;
    }
    // This thread's pack k of array a of `row`, which walk() handed to the body with `slot`.
    __device__ P get(int64_t row, int slot, int a, int k) const {
        if (DIRECT && stages == 0) return src[a][row * np + threadIdx.x + (int64_t)k * blockDim.x];
        return mine[((slot * ARRAYS + a) * kpu + k) * (int)blockDim.x];
    }
    // Starts copying row r of each array into `slot` (nothing past the last row) and commits the group:
    // one group per call, so the wait below counts rows. KP: the most packs a thread has (kpu ≤ KP).
    template <int KP> __device__ void fetch(int64_t r, int64_t rows, int slot) {
        if (r < rows) {
            const unsigned at = base + slot * slot_bytes;
#pragma unroll
            for (int k = 0; k < KP; ++k)
                if (threadIdx.x + k * blockDim.x < np)
#pragma unroll
                    for (int a = 0; a < ARRAYS; ++a)
                        async_copy16_at(at + a * a_bytes + k * k_bytes, src[a] + r * np + threadIdx.x + k * blockDim.x);
        }
        async_commit();
    }
    // Walks rows blockIdx.x, +gridDim.x, ... below `rows`, calling body(row, slot) once the row has
    // landed in `slot`, with the next stages − 1 rows in flight meanwhile. A slot is refilled only after
    // the body that read it has returned (its values used), so no read can see the next row's copy.
    template <int KP, typename F> __device__ void walk(int64_t rows, F body) {
        const int64_t step = gridDim.x;
        int64_t row = blockIdx.x;
        if (DIRECT && stages == 0) {
            for (; row < rows; row += step) body(row, 0);
            return;
        }
        for (int s = 0; s + 1 < stages; ++s) fetch<KP>(row + s * step, rows, s);
        for (int slot = 0; row < rows; row += step, slot = slot + 1 == stages ? 0 : slot + 1) {
            fetch<KP>(row + (stages - 1) * step, rows, slot == 0 ? stages - 1 : slot - 1);
            // The oldest row in flight: all but the newest stages − 1 groups.
            async_wait_newest(stages - 1);
            body(row, slot);
        }
    }
    // walk() two rows at a time (the layer-norm backward's one reduction for two rows): body(row, slot,
    // slot2, second) gets rows row and row + gridDim.x (in slots slot and slot2; `second` false where the
    // block's rows run out first), walking row = blockIdx.x, +2·gridDim.x, ...; the next stages − 2 rows
    // are in flight meanwhile. Each pair's two fetches go into the two slots the pair before read, once
    // its body has returned. stages ≥ 2 (the host plans at least 2); the ring mode only.
    template <int KP, typename F> __device__ void walk_pairs(int64_t rows, F body) {
        const int64_t step = gridDim.x;
        int64_t row = blockIdx.x;
        for (int s = 0; s + 2 < stages; ++s) fetch<KP>(row + s * step, rows, s);
        for (int slot = 0; row < rows; row += 2 * step) {
            const int slot2 = slot + 1 == stages ? 0 : slot + 1;
            // The rows stages − 2 and stages − 1 steps ahead go into the two slots before `slot`.
            const int ahead = slot + stages - 2 >= stages ? slot - 2 : slot + stages - 2;
            fetch<KP>(row + (stages - 2) * step, rows, ahead);
            fetch<KP>(row + (stages - 1) * step, rows, ahead + 1 == stages ? 0 : ahead + 1);
            async_wait_newest(stages - 2);
            body(row, slot, slot2, row + step < rows);
            slot = slot2 + 1 == stages ? 0 : slot2 + 1;
        }
    }
};

// 2^x from the special-function unit (MUFU.EX2), results below 2^-126 flushed to 0. __expf is the same
// instruction wrapped in four more that scale subnormal results back; in a sum of exponentials that holds
// a term of 1 (the row's max) those results are noise, and the wrapping doubled the bf16 cross-entropy
// forward's instructions per value.
__device__ __forceinline__ float ex2_ftz(float x) {
#ifdef __CUDA_ARCH__
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
#else
    return exp2f(x);
#endif
}

// exp for the loss kernels' sums: the hardware ex2 for f32, whose ~2 ulp + 1.2·|x| ulp error only grows
// where exp(x) is negligible next to the row's largest term (x = v − max ≤ 0); accurate exp for f64.
template <typename A> __device__ __forceinline__ A fast_exp(A x) { return exp(x); }
template <> __device__ __forceinline__ float fast_exp<float>(float x) { return ex2_ftz(x * 1.44269504088896341f); }

// Folds `cnt` values into a running (max m, sum s of exp(v - m)): one rescale per call. -inf values
// contribute nothing; a NaN makes s NaN. FAST (the loss kernels): fast_exp, no per-value tests, and the
// max through fmax (one instruction; it skips NaN, which reaches s through its exp instead); with the
// shift taken as 0 while m is still -inf, exp(-inf) = 0, and the sum runs as two chains.
template <typename A, bool FAST = false>
__device__ __forceinline__ void max_sum_update(const A* v, int cnt, A& m, A& s) {
    A mx = m;
    for (int u = 0; u < cnt; ++u) mx = FAST ? fmax(mx, v[u]) : v[u] > mx ? v[u] : mx;
    if (mx > m) {
        // While m is -inf, s is 0 or NaN (a NaN seen before any finite value) and stays so.
        if (m != -INFINITY) s = s * (FAST ? fast_exp(m - mx) : exp(m - mx));
        m = mx;
    }
    if (FAST) {
        A shift = m == -INFINITY ? (A)0 : m, s0 = 0, s1 = 0;
        for (int u = 0; u + 1 < cnt; u += 2) s0 += fast_exp(v[u] - shift), s1 += fast_exp(v[u + 1] - shift);
        if (cnt & 1) s0 += fast_exp(v[cnt - 1] - shift);
        s += s0 + s1;
        return;
    }
    for (int u = 0; u < cnt; ++u) {
        if (v[u] != v[u]) s = NAN;
        else if (v[u] != -INFINITY) s += exp(v[u] - m);
    }
}

// Calls use(p, pack) for this thread's packs p = threadIdx.x, +blockDim.x, ... below np, in that order,
// U at a time: a group's U loads are all issued before `use` runs on any of them, so U loads are in flight
// per thread even when `use` holds a data-dependent branch or a store the compiler will not move loads past.
template <int U, typename P, typename F> __device__ __forceinline__ void for_packs_batched(const P* px, int64_t np, F use) {
    const int64_t step = blockDim.x;
    int64_t p0 = threadIdx.x;
    // Whole groups without per-load predicates: a predicated load must keep the register's old value, and
    // for 16-bit packs the compiler then copied each pack's high halves out (the bf16 cross-entropy
    // forward needed 57 registers, 4 blocks per SM, instead of 40).
    for (; p0 + (U - 1) * step < np; p0 += U * step) {
        P pk[U];
#pragma unroll
        for (int u = 0; u < U; ++u) pk[u] = px[p0 + u * step];
#pragma unroll
        for (int u = 0; u < U; ++u) use(p0 + u * step, pk[u]);
    }
    // The last, partial group, a pack at a time.
    for (; p0 < np; p0 += step) use(p0, px[p0]);
}

// A row of any alignment split into a scalar head up to the first 16-byte boundary, a body of whole
// packs (128-bit loads), and a scalar tail.
template <typename T> struct RowSplit {
    int64_t head, packs, tail_start;
    __device__ RowSplit(const T* x, int64_t n) {
        head = (int64_t)(((16 - ((uintptr_t)x & 15)) & 15) / sizeof(T));
        if (head > n) head = n;
        packs = (n - head) / Pack<T>::N;
        tail_start = head + packs * Pack<T>::N;
    }
};

// This thread's running (max m, sum s of exp(x - m)) over its share of a row, one 128-bit load per step
// in the body.
template <typename T, typename A, bool FAST = false>
__device__ __forceinline__ void thread_max_sum(const T* x, int64_t n, A& m, A& s) {
    typedef Pack<T> P;
    m = -INFINITY;
    s = 0;
    RowSplit<T> rs(x, n);
    for (int64_t j = threadIdx.x; j < rs.head; j += blockDim.x) {
        A v = to_acc<A>(x[j]);
        max_sum_update<A, FAST>(&v, 1, m, s);
    }
    // Batched: the fold's data-dependent rescale kept the compiler from hoisting the next load above it,
    // which left one load in flight per thread (the bf16 cross-entropy forward ran at 46% of copy
    // bandwidth on an H200). Same fold order as one pack at a time.
    for_packs_batched<4>(reinterpret_cast<const P*>(x + rs.head), rs.packs, [&](int64_t, const P& pk) {
        A v[P::N];
        widen(pk, v);
        max_sum_update<A, FAST>(v, P::N, m, s);
    });
    for (int64_t j = rs.tail_start + threadIdx.x; j < n; j += blockDim.x) {
        A v = to_acc<A>(x[j]);
        max_sum_update<A, FAST>(&v, 1, m, s);
    }
}

// Merges running (max, sum) pairs; -inf maxima contribute nothing (a fully masked row ends as (-inf, 0),
// and the output exp(-inf - -inf)/0 is NaN, as on the CPU and in PyTorch).
template <typename A> __device__ __forceinline__ void ms_merge(A& m, A& s, A m2, A s2) {
    A mm = m > m2 ? m : m2;
    if (mm == -INFINITY) return;
    A a = m == -INFINITY ? (A)0 : s * exp(m - mm);
    A b = m2 == -INFINITY ? (A)0 : s2 * exp(m2 - mm);
    if (m != m || m2 != m2) mm = m != m ? m : m2;  // keep NaN visible
    m = mm;
    s = a + b;
}

// The (max, sum) of one row, merged over the block; every thread gets the result.
// FAST: see max_sum_update (the cross-entropy kernels use it).
template <typename T, typename A, bool FAST = false> __device__ void row_max_sum(const T* x, int64_t n, A& m, A& s) {
    __shared__ A shm[32], shs[32];
    thread_max_sum<T, A, FAST>(x, n, m, s);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ms_merge(m, s, __shfl_xor_sync(0xffffffff, m, o), __shfl_xor_sync(0xffffffff, s, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) { shm[warp] = m; shs[warp] = s; }
    __syncthreads();
    m = lane < nw ? shm[lane] : (A)-INFINITY;
    s = lane < nw ? shs[lane] : (A)0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ms_merge(m, s, __shfl_xor_sync(0xffffffff, m, o), __shfl_xor_sync(0xffffffff, s, o));
    __syncthreads();
}

// Instantiates `NAME##_SUFFIX` entry points from a macro body for each float type.
#define FOR_FLOATS(M) M(f32, float) M(f64, double) M(bf16, bf16) M(f16, f16)
#define FOR_ALL(M) FOR_FLOATS(M) M(i64, int64_t) M(u8, uint8_t)
