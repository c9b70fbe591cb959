// Softmax / log-softmax over contiguous rows, and their backward. One block per row. The forward is an
// online softmax: each thread keeps a running (max, sum of exp(x - max)) over its elements in one read,
// the block merges the pairs (row_max_sum in common.cuh), then a second sweep writes the outputs (the row
// is hot in L2).
// Causal mask (t > 0): the rows are the t query rows of [.., t, n] score matrices, and row r sees only
// its first visible(r) = min(n, r % t + off + 1) columns; the rest are not read and come out 0 (−inf for
// log-softmax), as if they had been set to −inf. Attention's mask, without the mask tensor or its pass.
#include "common.cuh"

__device__ __forceinline__ int64_t visible_cols(int64_t row, int64_t n, int64_t t, int64_t off) {
    if (t <= 0) return n;
    int64_t v = row % t + off + 1;
    return v < n ? v : n;
}

template <typename T> __device__ void softmax_fwd(const T* x, T* y, int64_t n, int log_, int64_t t, int64_t off) {
    typedef typename Acc<T>::type A;
    x += blockIdx.x * n;
    y += blockIdx.x * n;
    const int64_t lim = visible_cols(blockIdx.x, n, t, off);
    A m, s;
    row_max_sum<T, A>(x, lim, m, s);
    // A row with nothing visible but −inf is NaN throughout, masked columns included, as when the mask
    // is applied with −inf first (and as the register-cached kernel gives).
    const T hidden = from_acc<T>(m == -INFINITY ? (A)NAN : log_ ? (A)-INFINITY : (A)0);
    if (log_) {
        A lse = m + log(s);
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) y[j] = j < lim ? from_acc<T>(to_acc<A>(x[j]) - lse) : hidden;
    } else {
        A inv = (A)1 / s;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x)
            y[j] = j < lim ? from_acc<T>(exp(to_acc<A>(x[j]) - m) * inv) : hidden;
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

// Register-cached variant for rows that fit (see load_row), in resident blocks walking rows
// blockIdx.x, +gridDim.x, ... through a ring of rows in shared memory (RowRing in common.cuh), fetched
// stages − 1 rows ahead: a block per row kept only the rows of blocks being started in flight (bf16 at
// 4096 wide reached 78% of copy bandwidth on an H200; attention's 256-wide rows, one 32-thread block
// each, about 1.1 TB/s). Each row is widened into registers from the ring, max and sum-exp come from
// block reductions, and the row is written once.
template <typename T>
__device__ void softmax_fwd_rows(const T* x, T* y, int64_t rows, int64_t n, int log_, int64_t t, int64_t off,
                                 int stages) {
    typedef typename Acc<T>::type A;
    typedef Pack<T> P;
    __shared__ A sh[32];
    DYNAMIC_SHARED(P, shared);
    RowRing<T, 1> ring(shared, n, stages);
    const int64_t np = ring.np;
    const T* const src[1] = {x};
    ring.walk(src, rows, [&](int64_t row, int slot) {
        // Causally masked columns count as −inf.
        const int64_t lim = visible_cols(row, n, t, off);
        A r[ROW_VALS];
#pragma unroll
        for (int k = 0; k < RowPacks<T>::P; ++k) {
            int64_t pk = threadIdx.x + (int64_t)k * blockDim.x;
            P v;
            if (pk < np) v = *ring.at(slot, 0, k);
#pragma unroll
            for (int e = 0; e < P::N; ++e)
                r[k * P::N + e] = pk < np && pk * P::N + e < lim ? to_acc<A>(v.v[e]) : (A)-INFINITY;
        }
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
        store_row<T, A>(y + row * n, n, r);
    });
}

// Backward for rows that fit the ring (as softmax_fwd_rows): y and g through a RowRing of both, Σ g·y
// (Σ g for log-softmax) in one block reduction, dx written from the ring. Per-thread sums are f32 for
// 16-bit rows (at most ROW_VALS values) and f64 otherwise, the block's sum f64, as softmax_bwd.
template <typename T>
__device__ void softmax_bwd_rows(const T* y, const T* g, T* dx, int64_t rows, int64_t n, int log_, int stages) {
    typedef typename Acc<T>::type A;
    typedef Pack<T> P;
    typedef typename std::conditional<sizeof(T) == 2, float, double>::type S;
    __shared__ double sh[32];
    DYNAMIC_SHARED(P, shared);
    RowRing<T, 2> ring(shared, n, stages);
    const int64_t np = ring.np;
    const T* const src[2] = {y, g};
    ring.walk(src, rows, [&](int64_t row, int slot) {
        S acc = 0;
#pragma unroll
        for (int k = 0; k < RowPacks<T>::P; ++k) {
            if (threadIdx.x + (int64_t)k * blockDim.x >= np) continue;
            P yv = *ring.at(slot, 0, k), gv = *ring.at(slot, 1, k);
#pragma unroll
            for (int e = 0; e < P::N; ++e) {
                A gi = to_acc<A>(gv.v[e]);
                acc += log_ ? (S)gi : (S)(to_acc<A>(yv.v[e]) * gi);
            }
        }
        A sum = (A)block_sum((double)acc, sh);
#pragma unroll
        for (int k = 0; k < RowPacks<T>::P; ++k) {
            int64_t pk = threadIdx.x + (int64_t)k * blockDim.x;
            if (pk >= np) continue;
            P yv = *ring.at(slot, 0, k), gv = *ring.at(slot, 1, k), out;
#pragma unroll
            for (int e = 0; e < P::N; ++e) {
                A yi = to_acc<A>(yv.v[e]), gi = to_acc<A>(gv.v[e]);
                out.v[e] = from_acc<T>(log_ ? gi - exp(yi) * sum : yi * (gi - sum));
            }
            reinterpret_cast<P*>(dx)[row * np + pk] = out;
        }
    });
}

#define SOFTMAX(S, T) \
    extern "C" __global__ void softmax_rows_##S(const T* x, T* y, int64_t rows, int64_t n, int log_, int64_t t, \
                                                int64_t off, int stages) { \
        softmax_fwd_rows<T>(x, y, rows, n, log_, t, off, stages); } \
    extern "C" __global__ void ROW_BOUNDS softmax_##S(const T* x, T* y, int64_t n, int log_, int64_t t, int64_t off) { \
        softmax_fwd<T>(x, y, n, log_, t, off); } \
    extern "C" __global__ void ROW_BOUNDS softmax_backward_##S(const T* y, const T* g, T* dx, int64_t n, int log_) { \
        softmax_bwd<T>(y, g, dx, n, log_); } \
    extern "C" __global__ void softmax_backward_rows_##S(const T* y, const T* g, T* dx, int64_t rows, int64_t n, int log_, \
                                                         int stages) { \
        softmax_bwd_rows<T>(y, g, dx, rows, n, log_, stages); }
FOR_FLOATS(SOFTMAX)
