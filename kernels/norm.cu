// Layer norm and RMS norm over contiguous rows of length n, forward and backward. Statistics are kept in
// the compute type (f32, or f64 for f64 tensors) and row sums accumulate in f64, as on the CPU.
// Forward and the input gradient use one block per row; the weight/bias gradients are column sums over
// rows, done deterministically in two steps: 32-column x many-row tiles write f64 partials per row slice,
// then one thread per column folds the slices in order.
#include "common.cuh"

template <typename T, typename W>
__device__ void norm_fwd(const T* x, const W* w, const W* b, T* y, typename Acc<T>::type* mean,
                         typename Acc<T>::type* rstd, int64_t n, double eps, int rms) {
    typedef typename Acc<T>::type A;
    __shared__ double sh[32];
    int64_t r = blockIdx.x;
    x += r * n;
    y += r * n;
    double mu = 0;
    if (!rms) {
        double s = 0;
        for (int64_t j = threadIdx.x; j < n; j += blockDim.x) s += to_acc<double>(x[j]);
        mu = block_sum(s, sh) / (double)n;
    }
    double v = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        double d = to_acc<double>(x[j]) - mu;
        v += d * d;
    }
    double var = block_sum(v, sh) / (double)n;
    double rs = 1.0 / sqrt(var + eps);
    if (threadIdx.x == 0) {
        mean[r] = (A)mu;
        rstd[r] = (A)rs;
    }
    A m = (A)mu, q = (A)rs;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        A h = (to_acc<A>(x[j]) - m) * q;
        if (w) h = h * to_acc<A>(w[j]);
        if (b) h = h + to_acc<A>(b[j]);
        y[j] = from_acc<T>(h);
    }
}

// Register-cached forward for rows that fit (see load_row): the row is read once.
template <typename T>
__device__ void norm_fwd_rows(const T* x, const T* w, const T* b, T* y, typename Acc<T>::type* mean,
                              typename Acc<T>::type* rstd, int64_t n, double eps, int rms) {
    typedef typename Acc<T>::type A;
    __shared__ double sh[32];
    int64_t row = blockIdx.x;
    x += row * n;
    y += row * n;
    A r[ROW_VALS];
    load_row<T, A>(x, n, r, (A)0);
    double mu = 0;
    if (!rms) {
        A s = 0;
#pragma unroll
        for (int i = 0; i < ROW_VALS; ++i) s += r[i];
        mu = block_sum((double)s, sh) / (double)n;
    }
    A m = (A)mu, v = 0;
#pragma unroll
    for (int k = 0; k < RowPacks<T>::P; ++k)
#pragma unroll
        for (int e = 0; e < Pack<T>::N; ++e) {
            A d = r[k * Pack<T>::N + e] - m;
            if (row_index<T>(k, e) < n) v += d * d;
        }
    double var = block_sum((double)v, sh) / (double)n;
    double rs = 1.0 / sqrt(var + eps);
    if (threadIdx.x == 0) {
        mean[row] = (A)mu;
        rstd[row] = (A)rs;
    }
    A q = (A)rs;
#pragma unroll
    for (int k = 0; k < RowPacks<T>::P; ++k)
#pragma unroll
        for (int e = 0; e < Pack<T>::N; ++e) {
            int64_t j = row_index<T>(k, e);
            if (j >= n) continue;
            A h = (r[k * Pack<T>::N + e] - m) * q;
            if (w) h = h * to_acc<A>(w[j]);
            if (b) h = h + to_acc<A>(b[j]);
            r[k * Pack<T>::N + e] = h;
        }
    store_row<T, A>(y, n, r);
}

// Register-cached input gradient: x and g are read once each.
template <typename T>
__device__ void norm_bwd_x_rows(const T* x, const T* w, const typename Acc<T>::type* mean,
                                const typename Acc<T>::type* rstd, const T* g, T* dx, int64_t n, int rms) {
    typedef typename Acc<T>::type A;
    __shared__ double sh[32];
    int64_t row = blockIdx.x;
    x += row * n;
    g += row * n;
    dx += row * n;
    A mu = mean[row], rs = rstd[row];
    A h[ROW_VALS], d[ROW_VALS];
    load_row<T, A>(x, n, h, (A)0);
    load_row<T, A>(g, n, d, (A)0);
    A sd = 0, sdh = 0;
#pragma unroll
    for (int k = 0; k < RowPacks<T>::P; ++k)
#pragma unroll
        for (int e = 0; e < Pack<T>::N; ++e) {
            int i = k * Pack<T>::N + e;
            int64_t j = row_index<T>(k, e);
            h[i] = (h[i] - mu) * rs;
            if (w && j < n) d[i] = d[i] * to_acc<A>(w[j]);
            sd += d[i];
            sdh += d[i] * h[i];
        }
    double tsd = block_sum((double)sd, sh), tsdh = block_sum((double)sdh, sh);
    A mean_d = rms ? (A)0 : (A)(tsd / (double)n), mean_dh = (A)(tsdh / (double)n);
#pragma unroll
    for (int i = 0; i < ROW_VALS; ++i) d[i] = rs * (d[i] - mean_d - h[i] * mean_dh);
    store_row<T, A>(dx, n, d);
}

// Fused backward for rows that fit in registers: each block walks rows blockIdx.x, +gridDim.x, ... and
// writes their input gradients, while each thread sums g·h and g for the columns it owns (the same
// columns on every row) in registers; the block then writes one f64 partial row per block, which
// norm_backward_wb_finish folds in block order (deterministic). x and g are read once.
template <typename T>
__device__ void norm_bwd_fused_rows(const T* x, const T* w, const typename Acc<T>::type* mean,
                                    const typename Acc<T>::type* rstd, const T* g, T* dx, int64_t rows, int64_t n,
                                    int rms, double* pw, double* pb) {
    typedef typename Acc<T>::type A;
    __shared__ double sh[32];
    A aw[ROW_VALS], ab[ROW_VALS];
#pragma unroll
    for (int i = 0; i < ROW_VALS; ++i) aw[i] = ab[i] = 0;
    for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
        A mu = mean[row], rs = rstd[row];
        A h[ROW_VALS], d[ROW_VALS];
        load_row<T, A>(x + row * n, n, h, (A)0);
        load_row<T, A>(g + row * n, n, d, (A)0);
        A sd = 0, sdh = 0;
#pragma unroll
        for (int k = 0; k < RowPacks<T>::P; ++k)
#pragma unroll
            for (int e = 0; e < Pack<T>::N; ++e) {
                int i = k * Pack<T>::N + e;
                int64_t j = row_index<T>(k, e);
                h[i] = (h[i] - mu) * rs;
                aw[i] += d[i] * h[i];
                ab[i] += d[i];
                if (w && j < n) d[i] = d[i] * to_acc<A>(w[j]);
                sd += d[i];
                sdh += d[i] * h[i];
            }
        double tsd = block_sum((double)sd, sh), tsdh = block_sum((double)sdh, sh);
        A mean_d = rms ? (A)0 : (A)(tsd / (double)n), mean_dh = (A)(tsdh / (double)n);
#pragma unroll
        for (int i = 0; i < ROW_VALS; ++i) d[i] = rs * (d[i] - mean_d - h[i] * mean_dh);
        store_row<T, A>(dx + row * n, n, d);
    }
#pragma unroll
    for (int k = 0; k < RowPacks<T>::P; ++k)
#pragma unroll
        for (int e = 0; e < Pack<T>::N; ++e) {
            int64_t j = row_index<T>(k, e);
            if (j < n) {
                pw[(int64_t)blockIdx.x * n + j] = (double)aw[k * Pack<T>::N + e];
                pb[(int64_t)blockIdx.x * n + j] = (double)ab[k * Pack<T>::N + e];
            }
        }
}

// dx = rstd·(d − mean(d) − h·mean(d·h)) with d = g·w and h the normalised input (mean(d) = 0 for RMS).
template <typename T>
__device__ void norm_bwd_x(const T* x, const T* w, const typename Acc<T>::type* mean, const typename Acc<T>::type* rstd,
                           const T* g, T* dx, int64_t n, int rms) {
    typedef typename Acc<T>::type A;
    __shared__ double sh[32];
    int64_t r = blockIdx.x;
    x += r * n;
    g += r * n;
    dx += r * n;
    A mu = mean[r], rs = rstd[r];
    double sd = 0, sdh = 0;
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        A h = (to_acc<A>(x[j]) - mu) * rs;
        A d = to_acc<A>(g[j]);
        if (w) d = d * to_acc<A>(w[j]);
        sd += (double)d;
        sdh += (double)(d * h);
    }
    sd = block_sum(sd, sh);
    sdh = block_sum(sdh, sh);
    A mean_d = rms ? (A)0 : (A)(sd / (double)n), mean_dh = (A)(sdh / (double)n);
    for (int64_t j = threadIdx.x; j < n; j += blockDim.x) {
        A h = (to_acc<A>(x[j]) - mu) * rs;
        A d = to_acc<A>(g[j]);
        if (w) d = d * to_acc<A>(w[j]);
        dx[j] = from_acc<T>(rs * (d - mean_d - h * mean_dh));
    }
}

// Partial column sums of g·h (weight grad) and g (bias grad): block (32, 8) covers 32 columns; block row
// slice blockIdx.y takes rows y*8+ty, y*8+ty + 8*gridDim.y, ...; writes pw/pb[blockIdx.y][col].
template <typename T>
__device__ void norm_bwd_wb_partial(const T* x, const typename Acc<T>::type* mean, const typename Acc<T>::type* rstd,
                                    const T* g, int64_t rows, int64_t n, double* pw, double* pb) {
    typedef typename Acc<T>::type A;
    __shared__ double sw[8][33], sb[8][33];
    int64_t col = (int64_t)blockIdx.x * 32 + threadIdx.x;
    double aw = 0, ab = 0;
    if (col < n) {
        for (int64_t r = (int64_t)blockIdx.y * 8 + threadIdx.y; r < rows; r += 8 * (int64_t)gridDim.y) {
            A h = (to_acc<A>(x[r * n + col]) - mean[r]) * rstd[r];
            A gv = to_acc<A>(g[r * n + col]);
            aw += (double)(gv * h);
            ab += (double)gv;
        }
    }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && col < n) {
        for (int k = 1; k < 8; ++k) { aw += sw[k][threadIdx.x]; ab += sb[k][threadIdx.x]; }
        pw[(int64_t)blockIdx.y * n + col] = aw;
        pb[(int64_t)blockIdx.y * n + col] = ab;
    }
}

// gw[col] = Σ_slices pw, gb likewise (either output may be null).
template <typename W>
__device__ void norm_bwd_wb_finish(const double* pw, const double* pb, int slices, int64_t n, W* gw, W* gb) {
    GRID_LOOP(col, n) {
        double aw = 0, ab = 0;
        for (int k = 0; k < slices; ++k) { aw += pw[k * n + col]; ab += pb[k * n + col]; }
        if (gw) gw[col] = from_acc<W, double>(aw);
        if (gb) gb[col] = from_acc<W, double>(ab);
    }
}

#define NORM(S, T) \
    extern "C" __global__ void norm_forward_rows_##S(const T* x, const T* w, const T* b, T* y, Acc<T>::type* mean, \
                                                     Acc<T>::type* rstd, int64_t n, double eps, int rms) { \
        norm_fwd_rows<T>(x, w, b, y, mean, rstd, n, eps, rms); } \
    extern "C" __global__ void norm_backward_x_rows_##S(const T* x, const T* w, const Acc<T>::type* mean, \
                                                        const Acc<T>::type* rstd, const T* g, T* dx, int64_t n, int rms) { \
        norm_bwd_x_rows<T>(x, w, mean, rstd, g, dx, n, rms); } \
    extern "C" __global__ void norm_forward_##S(const T* x, const T* w, const T* b, T* y, Acc<T>::type* mean, \
                                                Acc<T>::type* rstd, int64_t n, double eps, int rms) { \
        norm_fwd<T, T>(x, w, b, y, mean, rstd, n, eps, rms); } \
    extern "C" __global__ void norm_backward_x_##S(const T* x, const T* w, const Acc<T>::type* mean, \
                                                   const Acc<T>::type* rstd, const T* g, T* dx, int64_t n, int rms) { \
        norm_bwd_x<T>(x, w, mean, rstd, g, dx, n, rms); } \
    extern "C" __global__ void norm_backward_wb_partial_##S(const T* x, const Acc<T>::type* mean, const Acc<T>::type* rstd, \
                                                            const T* g, int64_t rows, int64_t n, double* pw, double* pb) { \
        norm_bwd_wb_partial<T>(x, mean, rstd, g, rows, n, pw, pb); } \
    extern "C" __global__ void norm_backward_wb_finish_##S(const double* pw, const double* pb, int slices, int64_t n, T* gw, T* gb) { \
        norm_bwd_wb_finish<T>(pw, pb, slices, n, gw, gb); }
FOR_FLOATS(NORM)

// The fused backward keeps 4 x 32 values per thread: f32/bf16/f16 only (f64 would spill).
#define NORM_FUSED(S, T) \
    extern "C" __global__ void norm_backward_fused_rows_##S(const T* x, const T* w, const Acc<T>::type* mean, \
                                                            const Acc<T>::type* rstd, const T* g, T* dx, int64_t rows, \
                                                            int64_t n, int rms, double* pw, double* pb) { \
        norm_bwd_fused_rows<T>(x, w, mean, rstd, g, dx, rows, n, rms, pw, pb); }
NORM_FUSED(f32, float) NORM_FUSED(bf16, bf16) NORM_FUSED(f16, f16)
