// Softmax / log-softmax over contiguous rows, and their backward. One block per row. The forward is an
// online softmax: each thread keeps a running (max, sum of exp(x - max)) over its elements in one read,
// the block merges the pairs (row_max_sum in common.cuh), then a second sweep writes the outputs (the row
// is hot in L2).
// Causal mask (t > 0): the rows are the t query rows of [.., t, n] score matrices, and row r sees only
// its first visible(r) = min(n, r % t + off + 1) columns; the rest are not read and come out 0 (−inf for
// log-softmax), as if they had been set to −inf. Attention's mask, without the mask tensor or its pass.
#include "common.cuh"

// Columns visible to the query at position `pos` of its score matrix (its row % t): min(n, pos + off + 1).
__device__ __forceinline__ int64_t visible_cols(int64_t pos, int64_t n, int64_t off) {
    int64_t v = pos + off + 1;
    return v < n ? v : n;
}

template <typename T> __device__ void softmax_fwd(const T* x, T* y, int64_t n, int log_, int64_t t, int64_t off) {
    typedef typename Acc<T>::type A;
    x += blockIdx.x * n;
    y += blockIdx.x * n;
    const int64_t lim = t > 0 ? visible_cols((int64_t)blockIdx.x % t, n, off) : n;
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

// One row of the register-cached forward (softmax_fwd_rows): KP packs per thread, the row's packs over the
// block rounded up; CAUSAL masks the columns past visible_cols as −inf. The max skips NaN (fmax), which
// reaches the sum through its exp instead; exp(r − m) is fast_exp (the hardware ex2 for f32 and 16-bit
// rows). A row whose max is −inf (nothing visible but −inf) gets NaN throughout from −inf − (−inf), as on
// the CPU; masked columns otherwise come out exp(−inf) = 0 (−inf for log-softmax).
template <typename T, int KP, bool CAUSAL>
__device__ __forceinline__ void softmax_row(const RowRing<T, 1>& ring, int64_t row, int slot, T* y, int64_t n,
                                            int log_, int64_t vis_cols, typename Acc<T>::type* sh) {
    typedef typename Acc<T>::type A;
    typedef Pack<T> P;
    const int np = (int)ring.np;
    // Columns at or past `vis` count as −inf: the masked ones, and those of packs past the row's end.
    const int vis = CAUSAL ? (int)vis_cols : (int)n;
    A r[KP * P::N];
#pragma unroll
    for (int k = 0; k < KP; ++k) {
        const int pk = threadIdx.x + k * blockDim.x;
        P v{};
        if (pk < np) v = ring.get(row, slot, 0, k);
        const int left = vis - pk * P::N;
        A wide[P::N];
        widen(v, wide);
#pragma unroll
        for (int e = 0; e < P::N; ++e) r[k * P::N + e] = e < left ? wide[e] : (A)-INFINITY;
    }
    A m = -INFINITY;
#pragma unroll
    for (int i = 0; i < KP * P::N; ++i) m = fmax(m, r[i]);
    m = block_max(m, sh);
    A s0 = 0, s1 = 0;
#pragma unroll
    for (int i = 0; i < KP * P::N; i += 2) {
        A e0 = fast_exp(r[i] - m), e1 = fast_exp(r[i + 1] - m);
        s0 += e0, s1 += e1;
        if (!log_) r[i] = e0, r[i + 1] = e1;
    }
    const A s = block_sum(s0 + s1, sh);
    const A shift = log_ ? m + log(s) : (A)0, scale = log_ ? (A)1 : (A)1 / s;
#pragma unroll
    for (int k = 0; k < KP; ++k) {
        const int pk = threadIdx.x + k * blockDim.x;
        if (pk >= np) continue;
        P out;
#pragma unroll
        for (int e = 0; e < P::N; ++e) out.v[e] = from_acc<T>((r[k * P::N + e] - shift) * scale);
        reinterpret_cast<P*>(y)[row * np + pk] = out;
    }
}

template <typename T, int KP, bool CAUSAL>
__device__ void softmax_walk(RowRing<T, 1>& ring, T* y, int64_t rows, int64_t n, int log_, int64_t t, int64_t off,
                             typename Acc<T>::type* sh) {
    // The row's position in its score matrix (row % t) follows the walk's steps of gridDim.x rows: a 64-bit
    // remainder is a software routine of ~100 instructions, as many as a 256-wide row's whole softmax.
    int64_t pos = CAUSAL ? (int64_t)blockIdx.x % t : 0;
    const int64_t advance = CAUSAL ? (int64_t)gridDim.x % t : 0;
    ring.template walk<KP>(rows, [&](int64_t row, int slot) {
        const int64_t vis = CAUSAL ? visible_cols(pos, n, off) : n;
        softmax_row<T, KP, CAUSAL>(ring, row, slot, y, n, log_, vis, sh);
        if (CAUSAL) {
            pos += advance;
            if (pos >= t) pos -= t;
        }
    });
}

// Register-cached variant for rows that fit (cached_row_threads in softmax.rs: at most ROW_VALS values a
// thread), in resident blocks walking rows blockIdx.x, +gridDim.x, ... through a ring of rows in shared
// memory (RowRing in common.cuh), fetched stages − 1 rows ahead, or a block per row loading directly
// (stages = 0). Each row is widened into registers, max and sum-exp come from block reductions, and the
// row is written once. Instantiated for 1, 2 and ROW_VALS / Pack::N packs a thread, masked or not: the
// 256-wide rows of attention have one pack a thread, and looping over the full ROW_VALS there (masked
// values included) made the kernel issue-bound at 15% of copy bandwidth on an H200.
template <typename T>
__device__ void softmax_fwd_rows(const T* x, T* y, int64_t rows, int64_t n, int log_, int64_t t, int64_t off,
                                 int stages) {
    typedef typename Acc<T>::type A;
    typedef Pack<T> P;
    __shared__ A sh[32];
    DYNAMIC_SHARED(P, shared);
    const T* const src[1] = {x};
    RowRing<T, 1> ring(shared, src, n, stages);
    const int full = RowPacks<T>::P;
    if (t > 0) {
        if (ring.kpu == 1) softmax_walk<T, 1, true>(ring, y, rows, n, log_, t, off, sh);
        else if (ring.kpu == 2) softmax_walk<T, 2, true>(ring, y, rows, n, log_, t, off, sh);
        else softmax_walk<T, full, true>(ring, y, rows, n, log_, t, off, sh);
    } else {
        if (ring.kpu == 1) softmax_walk<T, 1, false>(ring, y, rows, n, log_, t, off, sh);
        else if (ring.kpu == 2) softmax_walk<T, 2, false>(ring, y, rows, n, log_, t, off, sh);
        else softmax_walk<T, full, false>(ring, y, rows, n, log_, t, off, sh);
    }
}

// Backward for rows that fit the ring (as softmax_fwd_rows): y and g through a RowRing of both, Σ g·y
// (Σ g for log-softmax) in one block reduction, dx written from the ring. Per-thread sums are f32 for
// 16-bit rows (at most ROW_VALS values) and f64 otherwise, the block's sum f64, as softmax_bwd.
template <typename T>
__device__ void softmax_bwd_rows(const T* y, const T* g, T* dx, int64_t rows, int64_t n, int log_, int stages) {
    typedef typename Acc<T>::type A;
    typedef Pack<T> P;
    typedef typename Choose<sizeof(T) == 2, float, double>::type S;
    __shared__ double sh[32];
    DYNAMIC_SHARED(P, shared);
    const T* const src[2] = {y, g};
    RowRing<T, 2> ring(shared, src, n, stages);
    const int64_t np = ring.np;
    ring.template walk<RowPacks<T>::P>(rows, [&](int64_t row, int slot) {
        S acc = 0;
#pragma unroll
        for (int k = 0; k < RowPacks<T>::P; ++k) {
            if (threadIdx.x + (int64_t)k * blockDim.x >= np) continue;
            A yv[P::N], gv[P::N];
            widen(ring.get(row, slot, 0, k), yv);
            widen(ring.get(row, slot, 1, k), gv);
#pragma unroll
            for (int e = 0; e < P::N; ++e) acc += log_ ? (S)gv[e] : (S)(yv[e] * gv[e]);
        }
        A sum = (A)block_sum((double)acc, sh);
#pragma unroll
        for (int k = 0; k < RowPacks<T>::P; ++k) {
            int64_t pk = threadIdx.x + (int64_t)k * blockDim.x;
            if (pk >= np) continue;
            A yv[P::N], gv[P::N];
            widen(ring.get(row, slot, 0, k), yv);
            widen(ring.get(row, slot, 1, k), gv);
            P out;
#pragma unroll
            for (int e = 0; e < P::N; ++e) out.v[e] = from_acc<T>(log_ ? gv[e] - exp(yv[e]) * sum : yv[e] * (gv[e] - sum));
            reinterpret_cast<P*>(dx)[row * np + pk] = out;
        }
    });
}

#define SOFTMAX(S, T) \
    extern "C" __global__ void __launch_bounds__(ROW_CACHED_THREADS, row_cached_blocks<T>()) softmax_rows_##S(const T* x, T* y, int64_t rows, int64_t n, int log_, int64_t t, \
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
