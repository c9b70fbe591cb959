// Shared helpers for munja's kernels: element types, conversions to the f32/f64 compute type, the strided
// index struct every broadcasting kernel takes, and warp/block reductions.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>
#include <type_traits>

typedef __nv_bfloat16 bf16;
typedef __half f16;

// Compute type: bf16/f16 are widened to f32 (as the CPU backend does); f32 and f64 compute in themselves.
template <typename T> struct Acc { typedef T type; };
template <> struct Acc<bf16> { typedef float type; };
template <> struct Acc<f16> { typedef float type; };
template <> struct Acc<int64_t> { typedef double type; };
template <> struct Acc<uint8_t> { typedef double type; };

template <typename A, typename T> __device__ __forceinline__ A to_acc(T x) { return (A)x; }
template <> __device__ __forceinline__ float to_acc<float, bf16>(bf16 x) { return __bfloat162float(x); }
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
    if (lane == 0) shared[warp] = v;
    __syncthreads();
    v = lane < nwarps ? shared[lane] : (A)0;
    v = warp_sum(v);
    __syncthreads();
    return v;
}

// Instantiates `NAME##_SUFFIX` entry points from a macro body for each float type.
#define FOR_FLOATS(M) M(f32, float) M(f64, double) M(bf16, bf16) M(f16, f16)
#define FOR_ALL(M) FOR_FLOATS(M) M(i64, int64_t) M(u8, uint8_t)
