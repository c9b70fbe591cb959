// Reductions (sum/max/min) and argmax. The host permutes the view so the kept dims come first and the
// reduced dims last: output o reduces logical elements [o*n_red, (o+1)*n_red). Sums accumulate in f64 (as
// the CPU backend does), so long f32 rows keep full precision; max/min propagate NaN.
#include "common.cuh"

enum { R_SUM, R_MAX, R_MIN };

__device__ __forceinline__ double r_init(int op) { return op == R_SUM ? 0.0 : (op == R_MAX ? -INFINITY : INFINITY); }
__device__ __forceinline__ double r_combine(int op, double acc, double v) {
    if (op == R_SUM) return acc + v;
    if (op == R_MAX) return (v != v || v > acc) ? v : acc;
    return (v != v || v < acc) ? v : acc;
}

// Offset of element j of reduced row o: `contig` means the reduced dims coalesce to one stride-1 run.
__device__ __forceinline__ int64_t red_offset(const Strided& s, int64_t o, int64_t n_red, int64_t j, int64_t base, int contig) {
    return contig ? base + j : strided_offset(s, o * n_red + j);
}

// One block per (output row, slice): each thread folds a strided subset of the slice's elements, then a
// warp-shuffle/shared-memory tree combines them. With gridDim.y == 1 the block writes the output; otherwise
// it writes a partial (f64) that reduce_finish folds, so a long row is spread over many SMs.
template <typename T>
__device__ void reduce_rows(const T* x, Strided s, int64_t n_red, int op, int contig, T* out, double* partial) {
    __shared__ double sh[32];
    int64_t o = blockIdx.x;
    int64_t base = contig ? strided_offset(s, o * n_red) : 0;
    int64_t per = (n_red + gridDim.y - 1) / gridDim.y;
    int64_t lo = blockIdx.y * per, hi = min(n_red, lo + per);
    double acc = r_init(op);
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) acc = r_combine(op, acc, to_acc<double>(x[red_offset(s, o, n_red, j, base, contig)]));
    // Block combine through shared memory (sum, max or min with NaN propagation).
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
#pragma unroll
    for (int k = 16; k > 0; k >>= 1) acc = r_combine(op, acc, __shfl_xor_sync(0xffffffff, acc, k));
    if (lane == 0) sh[warp] = acc;
    __syncthreads();
    if (warp == 0) {
        acc = lane < nw ? sh[lane] : r_init(op);
#pragma unroll
        for (int k = 16; k > 0; k >>= 1) acc = r_combine(op, acc, __shfl_xor_sync(0xffffffff, acc, k));
        if (lane == 0) {
            if (gridDim.y == 1) out[o] = from_acc<T, double>(acc);
            else partial[o * gridDim.y + blockIdx.y] = acc;
        }
    }
}

// Folds (sum, max or min) over the leading dims of a contiguous [rows, cols] block, e.g. a bias gradient
// summed over the batch, with threads along the columns so that each warp reads 32 adjacent values
// (reduce_rows, one block per output, read them `cols` apart: one memory sector per value). Block (32, 8),
// grid (ceil(cols/32), slices): thread row y folds rows y, y+8, ... of its slice in order, then row 0 of
// the block folds the eight in order; with slices > 1 it leaves f64 partials for reduce_finish. The order
// is fixed, so results do not depend on timing.
template <typename T> __device__ void reduce_cols(const T* x, int64_t rows, int64_t cols, int op, T* out, double* partial) {
    __shared__ double sh[8][32];
    const int64_t c = (int64_t)blockIdx.x * 32 + threadIdx.x;
    const int64_t per = (rows + gridDim.y - 1) / gridDim.y, lo = (int64_t)blockIdx.y * per, hi = min(rows, lo + per);
    double acc = r_init(op);
    if (c < cols)
        for (int64_t r = lo + threadIdx.y; r < hi; r += 8) acc = r_combine(op, acc, to_acc<double>(x[r * cols + c]));
    sh[threadIdx.y][threadIdx.x] = acc;
    __syncthreads();
    if (threadIdx.y == 0 && c < cols) {
        for (int k = 1; k < 8; ++k) acc = r_combine(op, acc, sh[k][threadIdx.x]);
        if (gridDim.y == 1) out[c] = from_acc<T, double>(acc);
        else partial[c * gridDim.y + blockIdx.y] = acc;
    }
}

// Folds `slices` f64 partials per output row (in a fixed order: deterministic).
template <typename T> __device__ void reduce_finish(const double* partial, int64_t n_out, int slices, int op, T* out) {
    GRID_LOOP(o, n_out) {
        double acc = r_init(op);
        for (int k = 0; k < slices; ++k) acc = r_combine(op, acc, partial[o * slices + k]);
        out[o] = from_acc<T, double>(acc);
    }
}

// Short rows (n_red <= 32): one thread per output, so wide outputs (a sum over a batch dim) stay parallel.
template <typename T> __device__ void reduce_small(const T* x, Strided s, int64_t n_out, int64_t n_red, int op, T* out) {
    GRID_LOOP(o, n_out) {
        double acc = r_init(op);
        for (int64_t j = 0; j < n_red; ++j) acc = r_combine(op, acc, to_acc<double>(x[strided_offset(s, o * n_red + j)]));
        out[o] = from_acc<T, double>(acc);
    }
}

// argmax over the last (permuted) dim: one block per output row; first index on ties, the first NaN wins.
template <typename T> __device__ void argmax_rows(const T* x, Strided s, int64_t n_red, int64_t* out) {
    __shared__ double sv[1024];
    __shared__ int64_t si[1024];
    int64_t o = blockIdx.x;
    double best = -INFINITY;
    int64_t bi = -1;
    for (int64_t j = threadIdx.x; j < n_red; j += blockDim.x) {
        double v = to_acc<double>(x[strided_offset(s, o * n_red + j)]);
        bool vn = v != v, bn = best != best;
        if (bi < 0 || (vn && !bn) || (!bn && v > best)) { best = v; bi = j; }
    }
    sv[threadIdx.x] = best;
    si[threadIdx.x] = bi;
    __syncthreads();
    for (int w = blockDim.x / 2; w > 0; w >>= 1) {
        if (threadIdx.x < w) {
            double a = sv[threadIdx.x], b = sv[threadIdx.x + w];
            int64_t ia = si[threadIdx.x], ib = si[threadIdx.x + w];
            bool an = a != a, bn = b != b;
            bool take_b = ib >= 0 && (ia < 0 || (bn && !an) || (bn && an && ib < ia) ||
                                      (!an && !bn && (b > a || (b == a && ib < ia))));
            if (take_b) { sv[threadIdx.x] = b; si[threadIdx.x] = ib; }
        }
        __syncthreads();
    }
    if (threadIdx.x == 0) out[o] = si[0] < 0 ? 0 : si[0];
}

#define REDUCE(S, T) \
    extern "C" __global__ void reduce_rows_##S(const T* x, Strided s, int64_t n_red, int op, int contig, T* out, double* partial) { \
        reduce_rows<T>(x, s, n_red, op, contig, out, partial); } \
    extern "C" __global__ void reduce_cols_##S(const T* x, int64_t rows, int64_t cols, int op, T* out, double* partial) { \
        reduce_cols<T>(x, rows, cols, op, out, partial); } \
    extern "C" __global__ void reduce_finish_##S(const double* p, int64_t n_out, int slices, int op, T* out) { \
        reduce_finish<T>(p, n_out, slices, op, out); } \
    extern "C" __global__ void reduce_small_##S(const T* x, Strided s, int64_t n_out, int64_t n_red, int op, T* out) { \
        reduce_small<T>(x, s, n_out, n_red, op, out); } \
    extern "C" __global__ void argmax_##S(const T* x, Strided s, int64_t n_red, int64_t* out) { argmax_rows<T>(x, s, n_red, out); }
FOR_ALL(REDUCE)
