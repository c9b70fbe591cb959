// Indexing on contiguous tensors: index_select (embedding lookup), index_add (its backward), gather and
// scatter_add. Indices live on the device, so an out-of-range one cannot be turned into an Err without a
// host sync; the kernels never read or write out of bounds: a bad index reads 0 and adds nothing.
// index_add and scatter_add are deterministic: each thread owns a set of destinations no other thread
// touches and adds its sources in index order (no atomics).
#include "common.cuh"

// out[o, k, j] = x[o, idx[k], j]; one thread per output element.
template <typename T>
__device__ void index_select_k(const T* x, const int64_t* idx, T* out, int64_t outer, int64_t size, int64_t inner, int64_t nidx) {
    int64_t total = outer * nidx * inner;
    GRID_LOOP(e, total) {
        int64_t j = e % inner, k = (e / inner) % nidx, o = e / (inner * nidx);
        int64_t i = idx[k];
        out[e] = (i >= 0 && i < size) ? x[(o * size + i) * inner + j] : from_acc<T, double>(0.0);
    }
}

// out (a copy of x) [o, idx[k], j] += src[o, k, j] for k in order; one thread per (o, j).
template <typename T>
__device__ void index_add_k(T* out, const int64_t* idx, const T* src, int64_t outer, int64_t size, int64_t inner, int64_t nidx) {
    typedef typename Acc<T>::type A;
    GRID_LOOP(e, outer * inner) {
        int64_t j = e % inner, o = e / inner;
        for (int64_t k = 0; k < nidx; ++k) {
            int64_t i = idx[k];
            if (i < 0 || i >= size) continue;
            int64_t d = (o * size + i) * inner + j;
            out[d] = from_acc<T>(to_acc<A>(out[d]) + to_acc<A>(src[(o * nidx + k) * inner + j]));
        }
    }
}

// Offset in x (contiguous, shape xs) of index position p (coords in shape is), with coord `dim` = i.
__device__ __forceinline__ int64_t gather_off(const Strided& xs, const Strided& is, int dim, int64_t p, int64_t i) {
    int64_t off = 0;
    for (int d = is.rank - 1; d >= 0; --d) {
        int64_t c = p % is.shape[d];
        p /= is.shape[d];
        off += (d == dim ? i : c) * xs.strides[d];
    }
    return off;
}

// out[p] = x[p with p[dim] = idx[p]]; one thread per index position.
template <typename T>
__device__ void gather_k(const T* x, Strided xs, const int64_t* idx, Strided is, int dim, T* out, int64_t n) {
    GRID_LOOP(p, n) {
        int64_t i = idx[p];
        out[p] = (i >= 0 && i < xs.shape[dim]) ? x[gather_off(xs, is, dim, p, i)] : from_acc<T, double>(0.0);
    }
}

// out (a copy of x) [p with p[dim] = idx[p]] += src[p]. One thread per index line (all coords but `dim`):
// a line's destinations differ from every other line's, and the thread walks its line in order.
template <typename T>
__device__ void scatter_add_k(T* out, Strided xs, const int64_t* idx, Strided is, int dim, const T* src, int64_t lines) {
    typedef typename Acc<T>::type A;
    int64_t len = is.shape[dim], inner = 1;
    for (int d = dim + 1; d < is.rank; ++d) inner *= is.shape[d];
    GRID_LOOP(l, lines) {
        int64_t o = l / inner, j = l % inner;
        for (int64_t k = 0; k < len; ++k) {
            int64_t p = (o * len + k) * inner + j;
            int64_t i = idx[p];
            if (i < 0 || i >= xs.shape[dim]) continue;
            int64_t d = gather_off(xs, is, dim, p, i);
            out[d] = from_acc<T>(to_acc<A>(out[d]) + to_acc<A>(src[p]));
        }
    }
}

#define INDEX(S, T) \
    extern "C" __global__ void index_select_##S(const T* x, const int64_t* idx, T* out, int64_t outer, int64_t size, int64_t inner, int64_t nidx) { \
        index_select_k<T>(x, idx, out, outer, size, inner, nidx); } \
    extern "C" __global__ void index_add_##S(T* out, const int64_t* idx, const T* src, int64_t outer, int64_t size, int64_t inner, int64_t nidx) { \
        index_add_k<T>(out, idx, src, outer, size, inner, nidx); } \
    extern "C" __global__ void gather_##S(const T* x, Strided xs, const int64_t* idx, Strided is, int dim, T* out, int64_t n) { \
        gather_k<T>(x, xs, idx, is, dim, out, n); } \
    extern "C" __global__ void scatter_add_##S(T* out, Strided xs, const int64_t* idx, Strided is, int dim, const T* src, int64_t lines) { \
        scatter_add_k<T>(out, xs, idx, is, dim, src, lines); }
FOR_ALL(INDEX)
