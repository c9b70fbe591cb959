// Softmax / log-softmax over contiguous rows, and their backward. One block per row. The forward is an
// online softmax: each thread keeps a running (max, sum of exp(x - max)) over its elements in one read,
// the block merges the pairs (row_max_sum in common.cuh), then a second sweep writes the outputs (the row
// is hot in L2).
#include "common.cuh"

template <typename T> __device__ void softmax_fwd(const T* x, T* y, int64_t n, int log_) {
    typedef typename Acc<T>::type A;
    x += blockIdx.x * n;
    y += blockIdx.x * n;
    A m, s;
    row_max_sum<T, A>(x, n, m, s);
    if (log_) {
        A lse = m + log(s);
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) y[j] = from_acc<T>(to_acc<A>(x[j]) - lse);
    } else {
        A inv = (A)1 / s;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) y[j] = from_acc<T>(exp(to_acc<A>(x[j]) - m) * inv);
    }
}

// softmax: dx = y·(g − Σ g·y); log-softmax: dx = g − exp(y)·Σ g. One block per row, f64 row sums.
template <typename T> __device__ void softmax_bwd(const T* y, const T* g, T* dx, int64_t n, int log_) {
    typedef typename Acc<T>::type A;
    __shared__ double sh[32];
    y += blockIdx.x * n;
    g += blockIdx.x * n;
    dx += blockIdx.x * n;
    double acc = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        A gv = to_acc<A>(g[j]);
        acc += log_ ? (double)gv : (double)(to_acc<A>(y[j]) * gv);
    }
    A s = (A)block_sum(acc, sh);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        A yv = to_acc<A>(y[j]), gv = to_acc<A>(g[j]);
        dx[j] = from_acc<T>(log_ ? gv - exp(yv) * s : yv * (gv - s));
    }
}

// Register-cached variant for rows that fit (see load_row): one read of the row, max and sum-exp by
// block reductions over the registers, one write. One block per row.
template <typename T> __device__ void softmax_fwd_rows(const T* x, T* y, int64_t n, int log_) {
    typedef typename Acc<T>::type A;
    __shared__ A sh[32];
    x += blockIdx.x * n;
    y += blockIdx.x * n;
    A r[ROW_VALS];
    load_row<T, A>(x, n, r, (A)-INFINITY);
    A m = -INFINITY;
#pragma unroll
    for (int i = 0; i < ROW_VALS; ++i) m = r[i] > m ? r[i] : m;
    m = block_max(m, sh);
    A s = 0;
    if (m != -INFINITY) {
#pragma unroll
        for (int i = 0; i < ROW_VALS; ++i) {
            A e = r[i] == -INFINITY ? (A)0 : exp(r[i] - m);
            s += e;
            if (!log_) r[i] = e;
        }
    }
    s = block_sum(s, sh);
    if (log_) {
        A lse = m + log(s);
#pragma unroll
        for (int i = 0; i < ROW_VALS; ++i) r[i] = r[i] - lse;
    } else {
        A inv = (A)1 / s;
        // A fully masked row (m = -inf, s = 0) gives NaN, as on the CPU.
        if (m == -INFINITY) inv = NAN;
#pragma unroll
        for (int i = 0; i < ROW_VALS; ++i) r[i] = r[i] * inv;
    }
    store_row<T, A>(y, n, r);
}

#define SOFTMAX(S, T) \
    extern "C" __global__ void softmax_rows_##S(const T* x, T* y, int64_t n, int log_) { softmax_fwd_rows<T>(x, y, n, log_); } \
    extern "C" __global__ void ROW_BOUNDS softmax_##S(const T* x, T* y, int64_t n, int log_) { softmax_fwd<T>(x, y, n, log_); } \
    extern "C" __global__ void ROW_BOUNDS softmax_backward_##S(const T* y, const T* g, T* dx, int64_t n, int log_) { \
        softmax_bwd<T>(y, g, dx, n, log_); }
FOR_FLOATS(SOFTMAX)
