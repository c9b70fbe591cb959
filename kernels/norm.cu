// Layer norm and RMS norm over contiguous rows of length n, forward and backward. Statistics are kept in
// the compute type (f32, or f64 for f64 tensors) and row sums accumulate in f64, as on the CPU.
// Forward and the input gradient use one block per row; the weight/bias gradients are column sums over
// rows, done deterministically in two steps: 32-column x many-row tiles write f64 partials per row slice
// (or the fused backward writes f32 partials per block), then one thread per column folds them in order.
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

// This thread's pack k of a row-long parameter (w or b) widened to A; 1 (w) or 0 (b) when absent. The
// host checks the parameters' 16-byte alignment with the rows'. `widen` for 16-bit packs only: the same
// values either way, but through it ptxas gave the f64 forward 204 registers instead of 168 (sm_90).
template <typename T, typename A>
__device__ __forceinline__ void load_param_pack(const T* p, int64_t pk, A fill, A (&out)[Pack<T>::N]) {
    if (p) {
        const Pack<T> v = reinterpret_cast<const Pack<T>*>(p)[pk];
        if (sizeof(T) == 2) {
            widen(v, out);
        } else {
#pragma unroll
            for (int e = 0; e < Pack<T>::N; ++e) out[e] = to_acc<A>(v.v[e]);
        }
    } else {
#pragma unroll
        for (int e = 0; e < Pack<T>::N; ++e) out[e] = fill;
    }
}

// Forward for rows that fit the ring, in blocks that stay resident and walk rows blockIdx.x, +gridDim.x,
// ...: each row is read once, and the next stages − 1 rows are in flight while this one is reduced and
// written. A block per row with the row in registers kept in flight only the rows of blocks being started
// (the bf16 forward reached 69% of copy bandwidth on an H200). Weight and bias are read per row (L1 hits:
// the rows bypass L1); held in registers, the compiler kept them widened, 119 registers for bf16 against
// 54. Both statistics come from one block reduction of the sums of d = x − c and d², shifted by
// the row's first value c (0 for RMS) so that E[d²] − E[d]² does not cancel catastrophically: the
// variance is E[d²] − E[d]², the mean c + E[d].
//
// PAIRS: two rows per block reduction (RowRing::walk_pairs), as the fused backward's; the same bits as a
// row at a time.
template <typename T, bool PAIRS>
__device__ void norm_fwd_rows(const T* x, const T* w, const T* b, T* y, typename Acc<T>::type* mean,
                              typename Acc<T>::type* rstd, int64_t rows, int64_t n, double eps, int rms, int stages) {
    typedef typename Acc<T>::type A;
    typedef Pack<T> P;
    const int KP = RowPacks<T>::P;
    // Per-thread sums: f64 from the first value on for f32 and f64 (the cancellation in E[d²] − E[d]² then
    // eats into f64's digits); 16-bit rows (8 or 11 bits of mantissa) sum their at most ROW_VALS values in
    // f32 and reduce across threads in f64, sparing a conversion per value.
    typedef typename Choose<sizeof(T) == 2, float, double>::type S;
    const int NR = PAIRS ? 2 : 1;  // rows per reduction
    __shared__ double2 sh[64 * NR];  // two halves, alternating by reduction (block_sum2_of_warps_alternating)
    int parity = 0;
    DYNAMIC_SHARED(P, shared);
    const T* const src[1] = {x};
    RowRing<T, 1> ring(shared, src, n, stages);
    const int64_t np = ring.np;
    const int64_t step = (int64_t)gridDim.x;
    // Each row's shift c (its first value), loaded a step (a row, or a pair) ahead.
    T c_next[NR];
#pragma unroll
    for (int i = 0; i < NR; ++i) c_next[i] = blockIdx.x + i * step < rows ? x[(blockIdx.x + i * step) * n] : T();
    // Row means as products: an f64 division is a call of some twenty instructions, twice a row.
    const double inv_n = 1.0 / (double)n;
    // This thread's sums of d = x − c and d² over a row, summed over the warp.
    auto sums = [&](int64_t row, int slot, A c) -> double2 {
        S ts = 0, tq = 0;
#pragma unroll
        for (int k = 0; k < KP; ++k) {
            if (threadIdx.x + (int64_t)k * blockDim.x >= np) continue;
            A v[P::N];
            widen(ring.get(row, slot, 0, k), v);
#pragma unroll
            for (int e = 0; e < P::N; ++e) {
                S d = (S)(v[e] - c);
                ts += d, tq += d * d;
            }
        }
        double bs = ts, bq = tq;
        return make_double2(warp_sum(bs), warp_sum(bq));
    };
    // The row's statistics from its block-wide sums, and its output.
    auto write = [&](int64_t row, int slot, A c, double2 s) {
        // RMS: c = 0 and no centring, so the variance is E[x²] itself.
        double md = rms ? 0.0 : s.x * inv_n, var = s.y * inv_n - md * md;
        double mu = rms ? 0.0 : (double)c + md;
        double rs = 1.0 / sqrt((var > 0.0 ? var : 0.0) + eps);
        if (threadIdx.x == 0) {
            mean[row] = (A)mu;
            rstd[row] = (A)rs;
        }
        A m = (A)mu, qs = (A)rs;
#pragma unroll
        for (int k = 0; k < KP; ++k) {
            int64_t pk = threadIdx.x + (int64_t)k * blockDim.x;
            if (pk >= np) continue;
            A wv[P::N], bv[P::N];
            load_param_pack<T, A>(w, pk, (A)1, wv);
            load_param_pack<T, A>(b, pk, (A)0, bv);
            A v[P::N];
            widen(ring.get(row, slot, 0, k), v);
            P out;
#pragma unroll
            for (int e = 0; e < P::N; ++e) out.v[e] = from_acc<T>((v[e] - m) * qs * wv[e] + bv[e]);
            reinterpret_cast<P*>(y)[row * np + pk] = out;
        }
    };
    if constexpr (PAIRS) {
        ring.template walk_pairs<KP>(rows, [&](int64_t row, int slot, int slot2, bool second) {
            const A c0 = rms ? (A)0 : to_acc<A>(c_next[0]), c1 = rms ? (A)0 : to_acc<A>(c_next[NR - 1]);
#pragma unroll
            for (int i = 0; i < NR; ++i)
                if (row + (2 + i) * step < rows) c_next[i] = x[(row + (2 + i) * step) * n];
            double2 s[NR];
            s[0] = sums(row, slot, c0);
            s[NR - 1] = second ? sums(row + step, slot2, c1) : make_double2(0.0, 0.0);
            block_sum_pairs_of_warps_alternating<NR>(s, sh, parity++);
            write(row, slot, c0, s[0]);
            if (second) write(row + step, slot2, c1, s[NR - 1]);
        });
    } else {
        ring.template walk<KP>(rows, [&](int64_t row, int slot) {
            const A c = rms ? (A)0 : to_acc<A>(c_next[0]);
            if (row + step < rows) c_next[0] = x[(row + step) * n];
            double2 s[1] = {sums(row, slot, c)};
            block_sum_pairs_of_warps_alternating<1>(s, sh, parity++);
            write(row, slot, c, s[0]);
        });
    }
}

// Register-cached input gradient: x and g are read once each; Σd and Σd·h in one block reduction.
template <typename T>
__device__ void norm_bwd_x_rows(const T* x, const T* w, const typename Acc<T>::type* mean,
                                const typename Acc<T>::type* rstd, const T* g, T* dx, int64_t n, int rms) {
    typedef typename Acc<T>::type A;
    typedef Pack<T> P;
    __shared__ double2 sh[32];
    int64_t row = blockIdx.x;
    x += row * n;
    g += row * n;
    dx += row * n;
    A mu = mean[row], rs = rstd[row];
    A h[ROW_VALS], d[ROW_VALS];
    load_row<T, A>(x, n, h, (A)0);
    load_row<T, A>(g, n, d, (A)0);
    A sd = 0, sdh = 0;
    int64_t np = n / P::N;
#pragma unroll
    for (int k = 0; k < RowPacks<T>::P; ++k) {
        int64_t pk = threadIdx.x + (int64_t)k * blockDim.x;
        A wv[P::N];
        load_param_pack<T, A>(pk < np ? w : nullptr, pk, (A)1, wv);
#pragma unroll
        for (int e = 0; e < P::N; ++e) {
            int i = k * P::N + e;
            h[i] = (h[i] - mu) * rs;
            d[i] = d[i] * wv[e];
            sd += d[i];
            sdh += d[i] * h[i];
        }
    }
    double tsd = sd, tsdh = sdh;
    block_sum2(tsd, tsdh, sh);
    A mean_d = rms ? (A)0 : (A)(tsd / (double)n), mean_dh = (A)(tsdh / (double)n);
#pragma unroll
    for (int i = 0; i < ROW_VALS; ++i) d[i] = rs * (d[i] - mean_d - h[i] * mean_dh);
    store_row<T, A>(dx, n, d);
}

// Values of a row each thread of the fused backward owns: the columns whose weight/bias gradients it sums
// in registers. The host launches ceil(n / FUSED_VALS) threads, at most FUSED_THREADS (rows up to 8192).
#define FUSED_VALS 16
#define FUSED_THREADS 512

// Fused backward: each block walks rows blockIdx.x, +gridDim.x, ... and writes their input gradients,
// while each thread sums g·h and g for the columns it owns (the same columns on every row) in registers;
// the block then writes one f32 partial row per block (its sums are f32 already), which
// norm_backward_fused_finish folds in block order in f64 (deterministic). x and g are read once, through
// a ring of rows in shared memory (RowRing) fetched stages − 1 rows ahead. With the next row prefetched
// into registers instead, 122 registers per thread allowed 512 threads per SM, and the bf16 backward,
// with half of f32's bytes per row in flight, reached 54% of copy bandwidth on an H200 (f32: 91%).
//
// PAIRS: two rows per block reduction (RowRing::walk_pairs), one barrier for two rows instead of one a
// row, and the second row's loads and sums independent of the first's. A block walks the same rows in the
// same order as with one row at a time, and every sum adds in the same order, so for the same grid the
// results are the same bits. 16-bit rows only: f32 rows of 4096 run at 81-86% of copy bandwidth already.
template <typename T, bool PAIRS>
__device__ void norm_bwd_fused_rows(const T* x, const T* w, const typename Acc<T>::type* mean,
                                    const typename Acc<T>::type* rstd, const T* g, T* dx, int64_t rows, int64_t n,
                                    int rms, float* pw, float* pb, int stages) {
    typedef typename Acc<T>::type A;
    typedef Pack<T> P;
    const int KP = FUSED_VALS / P::N;
    const bool SHORT = sizeof(T) == 2;
    const int NR = PAIRS ? 2 : 1;  // rows per reduction
    __shared__ double2 sh[64 * NR];  // two halves, alternating by reduction (block_sum2_of_warps_alternating)
    int parity = 0;
    DYNAMIC_SHARED(P, shared);
    const T* const src[2] = {x, g};
    RowRing<T, 2, false> ring(shared, src, n, stages);  // the host plans no direct mode (ring.rs)
    const int64_t np = ring.np;
    A aw[FUSED_VALS], ab[FUSED_VALS];
#pragma unroll
    for (int i = 0; i < FUSED_VALS; ++i) aw[i] = ab[i] = 0;
    // 16-bit rows: the weight of this thread's columns (1 without one), the same every row, held as packs
    // (8 registers) and widened where used. Loaded per row in both passes, each load came with its
    // address, a test for a missing weight and a default per value: about 70 instructions a row for bf16.
    // f32 rows still load it per row (no widening to save; held, it would take 16 registers).
    P wk[KP];
#pragma unroll
    for (int k = 0; k < KP; ++k) {
        int64_t pk = threadIdx.x + (int64_t)k * blockDim.x;
        if (!SHORT) continue;
#pragma unroll
        for (int e = 0; e < P::N; ++e) wk[k].v[e] = from_acc<T>((A)1);
        if (w && pk < np) wk[k] = reinterpret_cast<const P*>(w)[pk];
    }
    auto weights = [&](int k, int64_t pk, A(&wv)[P::N]) {
        if (SHORT) widen(wk[k], wv);
        else load_param_pack<T, A>(w, pk, (A)1, wv);
    };
    // The statistics of the next row (or pair) are loaded a step ahead.
    const int64_t step = (int64_t)gridDim.x;
    A nmu[NR], nrs[NR];
#pragma unroll
    for (int i = 0; i < NR; ++i) {
        const int64_t r = blockIdx.x + i * step;
        nmu[i] = r < rows ? mean[r] : (A)0, nrs[i] = r < rows ? rstd[r] : (A)0;
    }
    const double inv_n = 1.0 / (double)n;  // as in norm_fwd_rows
    // The first pass over a row: the weight/bias gradient sums of this thread's columns, and its share
    // of the row sums Σd and Σd·h (d = g·w), returned summed over the warp.
    auto accumulate = [&](int64_t row, int slot, A mu, A rs) -> double2 {
        // 16-bit rows (SHORT): h = x·rs − μ·rs in one FFMA, whose rounding (|x·rs| ulps of f32) stays far
        // below the 8-11 bits the outputs keep; f32 rows subtract first.
        const A mrs = -mu * rs;
        A sd = 0, sdh = 0;
#pragma unroll
        for (int k = 0; k < KP; ++k) {
            int64_t pk = threadIdx.x + (int64_t)k * blockDim.x;
            if (pk >= np) continue;
            A wv[P::N], xv[P::N], gv[P::N];
            weights(k, pk, wv);
            widen(ring.get(row, slot, 0, k), xv);
            widen(ring.get(row, slot, 1, k), gv);
#pragma unroll
            for (int e = 0; e < P::N; ++e) {
                int i = k * P::N + e;
                A xe = xv[e], d = gv[e];
                A h = SHORT ? fma(xe, rs, mrs) : (xe - mu) * rs;
                aw[i] += d * h;
                ab[i] += d;
                d = d * wv[e];
                sd += d;
                sdh += d * h;
            }
        }
        // The row sums: across a warp in f32 for 16-bit rows (at most 32 × FUSED_VALS values), in f64
        // otherwise; across warps in f64 (by the caller).
        if (SHORT) {
            sd = warp_sum(sd), sdh = warp_sum(sdh);
            return make_double2(sd, sdh);
        }
        return make_double2(warp_sum((double)sd), warp_sum((double)sdh));
    };
    // The second pass: the row's input gradient from its block-wide sums.
    auto write = [&](int64_t row, int slot, A mu, A rs, double2 sums) {
        A mean_d = rms ? (A)0 : (A)(sums.x * inv_n), mean_dh = (A)(sums.y * inv_n);
        // dx = rs·(g·w − mean_d − h·mean_dh). For 16-bit rows, expanded to (rs·w)·g + c1·x + c0 with
        // c1 = −rs²·mean_dh and c0 = −rs·mean_d − c1·μ: two FFMAs and a multiply a value. Where |μ| ≫ the
        // row's spread, c1·x and c0 cancel, losing log2(|μ|·rs) bits of f32's 24, still below bf16's 8.
        const A c1 = -rs * rs * mean_dh, c0 = -rs * mean_d - c1 * mu;
#pragma unroll
        for (int k = 0; k < KP; ++k) {
            int64_t pk = threadIdx.x + (int64_t)k * blockDim.x;
            if (pk >= np) continue;
            A wv[P::N], xv[P::N], gv[P::N];
            weights(k, pk, wv);
            widen(ring.get(row, slot, 0, k), xv);
            widen(ring.get(row, slot, 1, k), gv);
            P out;
#pragma unroll
            for (int e = 0; e < P::N; ++e) {
                A xe = xv[e], ge = gv[e];
                if (SHORT) {
                    out.v[e] = from_acc<T>(fma(rs * wv[e], ge, fma(c1, xe, c0)));
                } else {
                    A h = (xe - mu) * rs, d = ge * wv[e];
                    out.v[e] = from_acc<T>(rs * (d - mean_d - h * mean_dh));
                }
            }
            reinterpret_cast<P*>(dx)[row * np + pk] = out;
        }
    };
    if constexpr (PAIRS) {
        ring.template walk_pairs<KP>(rows, [&](int64_t row, int slot, int slot2, bool second) {
            const A mu0 = nmu[0], rs0 = nrs[0], mu1 = nmu[NR - 1], rs1 = nrs[NR - 1];
#pragma unroll
            for (int i = 0; i < NR; ++i) {
                const int64_t r = row + (2 + i) * step;
                if (r < rows) nmu[i] = mean[r], nrs[i] = rstd[r];
            }
            double2 sums[NR];
            sums[0] = accumulate(row, slot, mu0, rs0);
            // A block whose rows run out on the first of a pair reduces zeros for the second.
            sums[NR - 1] = second ? accumulate(row + step, slot2, mu1, rs1) : make_double2(0.0, 0.0);
            block_sum_pairs_of_warps_alternating<NR>(sums, sh, parity++);
            write(row, slot, mu0, rs0, sums[0]);
            if (second) write(row + step, slot2, mu1, rs1, sums[NR - 1]);
        });
    } else {
        ring.template walk<KP>(rows, [&](int64_t row, int slot) {
            const A mu = nmu[0], rs = nrs[0];
            if (row + step < rows) nmu[0] = mean[row + step], nrs[0] = rstd[row + step];
            double2 sums[1] = {accumulate(row, slot, mu, rs)};
            block_sum_pairs_of_warps_alternating<1>(sums, sh, parity++);
            write(row, slot, mu, rs, sums[0]);
        });
    }
#pragma unroll
    for (int k = 0; k < KP; ++k) {
        int64_t pk = threadIdx.x + (int64_t)k * blockDim.x;
        if (pk >= np) continue;
#pragma unroll
        for (int e = 0; e < P::N; ++e) {
            int64_t j = pk * P::N + e;
            pw[(int64_t)blockIdx.x * n + j] = (float)aw[k * P::N + e];
            pb[(int64_t)blockIdx.x * n + j] = (float)ab[k * P::N + e];
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

// Thread rows of the finish kernels' blocks (block (32, FINISH_ROWS); norm.rs launches the same).
#define FINISH_ROWS 32

// gw[col] = Σ_slices pw in f64, gb likewise (either output may be null); the partials are f64 (row
// slices) or f32 (the fused backward's blocks). Block (32, FINISH_ROWS), grid ceil(n/32): thread row y
// sums slices y, y + FINISH_ROWS, ... in order, then row 0 adds the rows' sums in order, so the result
// does not depend on timing. One thread per column walking all ~400 slices of an H200 had ~16 times
// fewer loads in flight; 8 thread rows left a 4096-column finish 128 blocks of 8 warps, each thread
// walking ~50 slices of L2 hits four at a time.
template <typename W, typename Part>
__device__ void norm_bwd_wb_finish(const Part* pw, const Part* pb, int slices, int64_t n, W* gw, W* gb) {
    __shared__ double sw[FINISH_ROWS][32], sb[FINISH_ROWS][32];
    const int64_t col = (int64_t)blockIdx.x * 32 + threadIdx.x;
    double aw = 0, ab = 0;
    if (col < n)
        for (int k = threadIdx.y; k < slices; k += FINISH_ROWS) {
            aw += (double)pw[k * n + col];
            ab += (double)pb[k * n + col];
        }
    sw[threadIdx.y][threadIdx.x] = aw;
    sb[threadIdx.y][threadIdx.x] = ab;
    __syncthreads();
    if (threadIdx.y == 0 && col < n) {
        for (int k = 1; k < FINISH_ROWS; ++k) { aw += sw[k][threadIdx.x]; ab += sb[k][threadIdx.x]; }
        if (gw) gw[col] = from_acc<W, double>(aw);
        if (gb) gb[col] = from_acc<W, double>(ab);
    }
}

#define NORM(S, T) \
    extern "C" __global__ void norm_forward_rows_##S(const T* x, const T* w, const T* b, T* y, Acc<T>::type* mean, \
                                                     Acc<T>::type* rstd, int64_t rows, int64_t n, double eps, int rms, \
                                                     int stages) { \
        norm_fwd_rows<T, false>(x, w, b, y, mean, rstd, rows, n, eps, rms, stages); } \
    extern "C" __global__ void norm_backward_x_rows_##S(const T* x, const T* w, const Acc<T>::type* mean, \
                                                        const Acc<T>::type* rstd, const T* g, T* dx, int64_t n, int rms) { \
        norm_bwd_x_rows<T>(x, w, mean, rstd, g, dx, n, rms); } \
    extern "C" __global__ void ROW_BOUNDS norm_forward_##S(const T* x, const T* w, const T* b, T* y, Acc<T>::type* mean, \
                                                Acc<T>::type* rstd, int64_t n, double eps, int rms) { \
        norm_fwd<T, T>(x, w, b, y, mean, rstd, n, eps, rms); } \
    extern "C" __global__ void ROW_BOUNDS norm_backward_x_##S(const T* x, const T* w, const Acc<T>::type* mean, \
                                                   const Acc<T>::type* rstd, const T* g, T* dx, int64_t n, int rms) { \
        norm_bwd_x<T>(x, w, mean, rstd, g, dx, n, rms); } \
    extern "C" __global__ void norm_backward_wb_partial_##S(const T* x, const Acc<T>::type* mean, const Acc<T>::type* rstd, \
                                                            const T* g, int64_t rows, int64_t n, double* pw, double* pb) { \
        norm_bwd_wb_partial<T>(x, mean, rstd, g, rows, n, pw, pb); } \
    extern "C" __global__ void __launch_bounds__(32 * FINISH_ROWS) norm_backward_wb_finish_##S(const double* pw, const double* pb, int slices, int64_t n, T* gw, T* gb) { \
        norm_bwd_wb_finish<T, double>(pw, pb, slices, n, gw, gb); }
FOR_FLOATS(NORM)

// The fused backward: f32/bf16/f16 only (f64 would need twice the registers). At most FUSED_THREADS
// threads, and each thread within 65536 / FUSED_THREADS registers (FUSED_BOUNDS), so every launch fits.
// 16-bit rows on sm_90 get at most 80 registers (SHORT_FUSED_BOUNDS), so that three 256-thread blocks
// share an SM, not two at 85. On an H200 the bf16 backward measured 62% of copy bandwidth at 85 and 60%
// at 80, no gain beyond noise; the one-barrier reduction measured later (66%) ran with the cap. f32 rows
// of 4096 fill 96 KiB of ring a block, so shared memory holds two blocks an SM whatever the registers: a
// cap would only make the f32 kernel spill. On older GPUs the bound is the one FUSED_THREADS sets (sm_80
// spills at 80). The kernels compile for the device only, one architecture at a time, so the two
// declarations never meet.
#define FUSED_BOUNDS __launch_bounds__(FUSED_THREADS)
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
#define SHORT_FUSED_BOUNDS __maxnreg__(80)
#else
#define SHORT_FUSED_BOUNDS FUSED_BOUNDS
#endif
#define NORM_FUSED(S, T, BOUNDS) \
    extern "C" __global__ void BOUNDS norm_backward_fused_rows_##S( \
        const T* x, const T* w, const Acc<T>::type* mean, const Acc<T>::type* rstd, const T* g, T* dx, int64_t rows, \
        int64_t n, int rms, float* pw, float* pb, int stages) { \
        norm_bwd_fused_rows<T, false>(x, w, mean, rstd, g, dx, rows, n, rms, pw, pb, stages); } \
    extern "C" __global__ void __launch_bounds__(32 * FINISH_ROWS) norm_backward_fused_finish_##S(const float* pw, const float* pb, int slices, int64_t n, T* gw, T* gb) { \
        norm_bwd_wb_finish<T, float>(pw, pb, slices, n, gw, gb); }
NORM_FUSED(f32, float, FUSED_BOUNDS) NORM_FUSED(bf16, bf16, SHORT_FUSED_BOUNDS) NORM_FUSED(f16, f16, SHORT_FUSED_BOUNDS)
// The pair walks of the forward and the fused backward, for 16-bit rows (MUNJA_NORM_PAIRS=1 on the host).
#define NORM_PAIRS(S, T) \
    extern "C" __global__ void norm_forward_pairs_rows_##S(const T* x, const T* w, const T* b, T* y, Acc<T>::type* mean, \
                                                           Acc<T>::type* rstd, int64_t rows, int64_t n, double eps, \
                                                           int rms, int stages) { \
        norm_fwd_rows<T, true>(x, w, b, y, mean, rstd, rows, n, eps, rms, stages); } \
    extern "C" __global__ void SHORT_FUSED_BOUNDS norm_backward_fused_pairs_rows_##S( \
        const T* x, const T* w, const Acc<T>::type* mean, const Acc<T>::type* rstd, const T* g, T* dx, int64_t rows, \
        int64_t n, int rms, float* pw, float* pb, int stages) { \
        norm_bwd_fused_rows<T, true>(x, w, mean, rstd, g, dx, rows, n, rms, pw, pb, stages); }
NORM_PAIRS(bf16, bf16) NORM_PAIRS(f16, f16)
