// Indexing on contiguous tensors: index_select (embedding lookup), index_add (its backward), gather and
// scatter_add. Indices live on the device, so an out-of-range one cannot be turned into an Err without a
// host sync; the kernels never read or write out of bounds: a bad index reads 0 and adds nothing.
// index_add and scatter_add are deterministic: each thread owns a set of destinations no other thread
// touches and adds its sources in index order (no float atomics; the sort's integer counts use atomics,
// whose sums do not depend on their order).
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

// index_add with a long index list (an embedding's backward: every token of the batch adds its row into
// one of `size` rows): index_add_k's thread per column would walk thousands of indices one after another,
// each a dependent read-modify-write of global memory. Instead the positions k are sorted by index with
// a stable counting sort (so each row's sources stay in index order: deterministic), then blocks of
// INDEX_SEGMENT sorted positions sum each row's sources column by column in f64, and each row gets its
// sum added once (as the CPU backend), a row that spans segments through index_add_segments_finish.
// The sort, with keys idx[k] (or `size` for an out-of-range index, a bucket nothing reads), over chunks
// of blockDim.x positions:
//   sort_rank:  rank[k], the number of positions of k's chunk before k with its key; cnt[c][key], the
//               key's count in chunk c; total[key], its count in all (all three zeroed by the host);
//   sort_base:  one block: base[key] = exclusive prefix sum of the totals;
//   sort_place: sorted[base[key] + cnt[0][key] + ... + cnt[c-1][key] + rank[k]] = k.
// Keys and positions fit in 32 bits (the host checks).
__device__ __forceinline__ int32_t sort_key(const int64_t* idx, int64_t k, int64_t size) {
    int64_t i = idx[k];
    return (i >= 0 && i < size) ? (int32_t)i : (int32_t)size;
}

// Positions of a chunk one block of sort_rank compares against. Ranking a chunk is a comparison of each
// position with every one before it; one block per 1024-position chunk left GPT-2's 16 chunks on 16 of an
// H200's 132 SMs, each thread walking up to 1023 keys (about 8 instructions a key in its SASS: some
// 30 µs by that count, not measured; as long as writing the whole 154 MB table gradient). Slices of the chunk spread that over chunk / SORT_SLICE blocks.
#define SORT_SLICE 64

// Grid (chunks, chunk / SORT_SLICE), block (chunk): block (c, s) adds to rank[k], for each position k of
// chunk c, how many positions of slice s before k have k's key, and counts slice s's keys into cnt[c][..]
// and total[..]. The sums are of integers, so atomics give the same result in any order: the sort stays
// deterministic.
extern "C" __global__ void ROW_BOUNDS sort_rank(const int64_t* idx, int64_t n, int64_t size, int32_t* rank, int32_t* cnt,
                                                int32_t* total) {
    __shared__ int32_t keys[SORT_SLICE];
    const int64_t c0 = (int64_t)blockIdx.x * blockDim.x;  // the chunk's first position
    const int m = (int)min((int64_t)blockDim.x, n - c0), s0 = blockIdx.y * SORT_SLICE, t = threadIdx.x;
    const int sm = min(SORT_SLICE, m - s0);  // the slice's positions (none past the end of a last chunk)
    if (t < sm) keys[t] = sort_key(idx, c0 + s0 + t, size);
    __syncthreads();
    // Positions before the slice have nothing of it before them.
    if (t >= m || t < s0) return;
    const bool in_slice = t < s0 + sm;
    const int32_t key = in_slice ? keys[t - s0] : sort_key(idx, c0 + t, size);
    if (in_slice) {
        atomicAdd(&cnt[(int64_t)blockIdx.x * (size + 1) + key], 1);
        atomicAdd(&total[key], 1);
    }
    const int upto = min(sm, t - s0);
    int before = 0;
    for (int u = 0; u < upto; ++u) before += keys[u] == key;
    if (before) atomicAdd(&rank[c0 + t], before);
}

// Keys each thread of sort_base scans per tile: with one key a thread, GPT-2's 50258 keys took 50 tiles
// of four barriers each in the kernel's single block; with 32, two tiles, each mostly one round trip to
// memory (54 registers on sm_90, under the 64 a 1024-thread block allows).
#define SCAN_KEYS 32

// One block: base[i] = total[0] + ... + total[i-1], for i < m, tile by tile with a running carry; in a
// tile each thread takes SCAN_KEYS consecutive keys: their sum, the block's exclusive scan of those sums,
// then the keys' prefixes from it.
extern "C" __global__ void ROW_BOUNDS sort_base(const int32_t* total, int64_t m, int32_t* base) {
    __shared__ int32_t warp_sums[32];
    __shared__ int32_t carry;
    if (threadIdx.x == 0) carry = 0;
    __syncthreads();
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nwarps = blockDim.x >> 5;
    for (int64_t t0 = 0; t0 < m; t0 += (int64_t)blockDim.x * SCAN_KEYS) {
        const int64_t i0 = t0 + (int64_t)threadIdx.x * SCAN_KEYS;
        int32_t v[SCAN_KEYS], mine = 0;
#pragma unroll
        for (int u = 0; u < SCAN_KEYS; ++u) {
            v[u] = i0 + u < m ? total[i0 + u] : 0;
            mine += v[u];
        }
        // Inclusive scan of the threads' sums within the warp, then across the warps' sums.
        int32_t x = mine;
#pragma unroll
        for (int o = 1; o < 32; o <<= 1) {
            int32_t y = __shfl_up_sync(0xffffffff, x, o);
            if (lane >= o) x += y;
        }
        if (lane == 31) warp_sums[warp] = x;
        __syncthreads();
        if (warp == 0) {
            int32_t w = lane < nwarps ? warp_sums[lane] : 0, z = w;
#pragma unroll
            for (int o = 1; o < 32; o <<= 1) {
                int32_t y = __shfl_up_sync(0xffffffff, z, o);
                if (lane >= o) z += y;
            }
            if (lane < nwarps) warp_sums[lane] = z - w;  // exclusive: the warps before this one
        }
        __syncthreads();
        int32_t run = carry + warp_sums[warp] + x - mine;
#pragma unroll
        for (int u = 0; u < SCAN_KEYS; ++u) {
            if (i0 + u < m) base[i0 + u] = run;
            run += v[u];
        }
        __syncthreads();
        if (threadIdx.x == blockDim.x - 1) carry = run;
        __syncthreads();
    }
}

// A position's place: its key's base, the key's counts in the chunks before its own, and its rank in its
// chunk. Summing the counts here takes positions × chunks / 2 loads, where a pass over the count table
// read and wrote keys × chunks counts, in a launch of its own (GPT-2, 16384 ids: 131 thousand loads
// against 1.6 million).
extern "C" __global__ void sort_place(const int64_t* idx, int64_t n, int64_t size, int chunk, const int32_t* rank,
                                      const int32_t* cnt, const int32_t* base, int32_t* sorted) {
    GRID_LOOP(k, n) {
        const int32_t key = sort_key(idx, k, size);
        int32_t at = base[key] + rank[k];
        for (int64_t c = 0; c < k / chunk; ++c) at += cnt[c * (size + 1) + key];
        sorted[at] = (int32_t)k;
    }
}

// out[d] gets a destination's whole f64 sum, rounded once: stored (fresh) or added to what is there.
template <typename T> __device__ __forceinline__ void store_sum(T* out, int64_t d, double sum, int fresh) {
    out[d] = from_acc<T, double>(fresh ? sum : to_acc<double>(out[d]) + sum);
}

// Rows of out [size, inner] (one outer index's) that no index names (total[row] == 0) set to 0, by
// `blocks` blocks of which this is `block`: with index_add_segments storing every named row once, an
// index_add into zeros writes the table once (GPT-2's 154 MB in f32), where filling it and then adding
// into it wrote it once and read and wrote again every row the batch names. A warp per row (an
// element-wise loop would divide by the row length per element), in 16-byte stores when rows are whole
// packs.
template <typename T>
__device__ void zero_untouched_rows(T* out, const int32_t* total, int64_t size, int64_t inner, int64_t block,
                                    int64_t blocks) {
    typedef Pack<T> P;
    const bool packed = aligned16(out) && inner % P::N == 0;
    P zero;
#pragma unroll
    for (int e = 0; e < P::N; ++e) zero.v[e] = from_acc<T, double>(0.0);
    const int lane = threadIdx.x & 31, warps = blockDim.x >> 5;
    for (int64_t r = block * warps + (threadIdx.x >> 5); r < size; r += blocks * warps) {
        if (total[r] != 0) continue;
        T* row = out + r * inner;
        if (packed)
            for (int64_t j = lane; j < inner / P::N; j += 32) reinterpret_cast<P*>(row)[j] = zero;
        else
            for (int64_t j = lane; j < inner; j += 32) row[j] = zero.v[0];
    }
}

// Sources a thread loads before adding any: a run's sources are a chain of dependent adds, and one load
// at a time left a thread waiting a memory latency per source.
#define SORTED_BATCH 8
// Sorted positions a block of index_add_segments takes. A block per destination row instead left the
// rows that take many sources (the space of a character vocabulary takes ~15% of the tokens) to one block
// each, walking thousands of sources in a chain: 235 µs a call in the shakespeare-char bf16 step on an
// H200, against 31 µs for the same shapes with uniformly random tokens.
#define INDEX_SEGMENT 64

// One segment's sorted positions and their keys (in shared memory), and whether its first run's row
// began in an earlier segment and its last run's goes on into a later one.
struct SegmentRuns {
    const int32_t *pos, *key;
    int m;
    bool starts_before, goes_on;
};

// W consecutive columns of a row: one 16-byte load or store when W is a pack's worth, which keeps 16
// bytes a source in flight per thread instead of one value (GPT-2's 768-wide f32 rows: 192 threads of
// 4 columns, one pass).
template <typename T, int W> struct alignas(W * sizeof(T)) Cols {
    T v[W];
};

// A segment's sums, W columns a thread: each run's sources in order, in f64, SORTED_BATCH loads in flight;
// a run's sum goes to out's row (stored when fresh, else added), or to the segment's head or tail
// partials (head[0..inner] then tail[0..inner]) when its row spans segments.
template <typename T, int W>
__device__ void sum_segment_runs(T* out, const T* src, double* head, const SegmentRuns& r, int64_t size, int64_t inner,
                                 int fresh) {
    typedef Cols<T, W> C;
    double* tail = head + inner;
    for (int64_t j = (int64_t)threadIdx.x * W; j < inner; j += (int64_t)blockDim.x * W) {
        double acc[W];
#pragma unroll
        for (int w = 0; w < W; ++w) acc[w] = 0;
        int lo = 0;
        for (int p = 0; p < r.m; p += SORTED_BATCH) {
            C b[SORTED_BATCH];
#pragma unroll
            for (int u = 0; u < SORTED_BATCH; ++u)
                if (p + u < r.m) b[u] = *reinterpret_cast<const C*>(src + (int64_t)r.pos[p + u] * inner + j);
#pragma unroll
            for (int u = 0; u < SORTED_BATCH; ++u) {
                const int q = p + u;
                if (q >= r.m) break;
#pragma unroll
                for (int w = 0; w < W; ++w) acc[w] += to_acc<double>(b[u].v[w]);
                if (q + 1 < r.m && r.key[q + 1] == r.key[q]) continue;
                // The run [lo, q] ends here.
                const int32_t v = r.key[q];
                if (v < size) {
                    double* partial = lo == 0 && r.starts_before ? head : q + 1 == r.m && r.goes_on ? tail : nullptr;
                    if (partial) {
#pragma unroll
                        for (int w = 0; w < W; ++w) partial[j + w] = acc[w];
                    } else {
                        // store_sum's rule for W columns, written out: through a store_sums helper the
                        // f32 kernel took 88 registers instead of 79.
                        C& d = *reinterpret_cast<C*>(out + v * inner + j);
                        C sum;
#pragma unroll
                        for (int w = 0; w < W; ++w)
                            sum.v[w] = from_acc<T, double>(fresh ? acc[w] : to_acc<double>(d.v[w]) + acc[w]);
                        d = sum;
                    }
                }
#pragma unroll
                for (int w = 0; w < W; ++w) acc[w] = 0;
                lo = q + 1;
            }
        }
    }
}

// The sum over the sorted positions of one segment, column by column, run by run (a run: the segment's
// positions of one destination row), in f64 in index order. A run wholly inside the segment is added to
// its row at once; the segment's first run, if its row began in an earlier segment, goes to
// part[.., 0, ..] (head), and its last run, if its row goes on into a later segment, to part[.., 1, ..]
// (tail), for index_add_segments_finish. Out-of-range indices (key `size`) add nothing. `fresh`: out
// holds nothing yet (an index_add into zeros), so a row's sum is stored, not added to what is there, and
// the last `zero_blocks` blocks of each grid row zero the rows no index names (zero_untouched_rows): the
// table is written once, and those writes stream beside the segments' reads, not in a launch of their own.
// Grid (segments + zero_blocks, outer); threads walk the columns, a 16-byte pack at a time when rows are
// whole packs (8 values for one-byte types).
template <typename T>
__device__ void index_add_segments_k(T* out, const int64_t* idx, const int32_t* sorted, const int32_t* base,
                                     const int32_t* total, const T* src, double* part, int64_t size, int64_t inner,
                                     int64_t nidx, int fresh, int zero_blocks) {
    __shared__ int32_t pos[INDEX_SEGMENT], key[INDEX_SEGMENT];
    const int64_t seg = blockIdx.x, o = blockIdx.y, first = seg * INDEX_SEGMENT, segments = gridDim.x - zero_blocks;
    if (seg >= segments) {
        zero_untouched_rows(out + o * size * inner, total, size, inner, seg - segments, zero_blocks);
        return;
    }
    const int m = (int)min((int64_t)INDEX_SEGMENT, nidx - first);
    for (int u = threadIdx.x; u < m; u += blockDim.x) {
        pos[u] = sorted[first + u];
        key[u] = sort_key(idx, pos[u], size);
    }
    __syncthreads();
    // Whether the first run's row began in an earlier segment, and the last run's goes on into a later one.
    const bool starts_before = base[key[0]] < first;
    const bool goes_on = (int64_t)base[key[m - 1]] + total[key[m - 1]] > first + m;
    src += o * nidx * inner;
    double* head = part + (o * segments + seg) * 2 * inner;
    const SegmentRuns runs{pos, key, m, starts_before, goes_on};
    // At most 8 columns a thread: 16 one-byte columns took 230 registers (f64 sums of 8 loads of 16).
    constexpr int W = Pack<T>::N < 8 ? Pack<T>::N : 8;
    if (aligned16(src) && aligned16(out) && inner % W == 0)
        sum_segment_runs<T, W>(out + o * size * inner, src, head, runs, size, inner, fresh);
    else
        sum_segment_runs<T, 1>(out + o * size * inner, src, head, runs, size, inner, fresh);
}

// The rows that span segments: out[o, v, j] += tail of the row's first segment + the heads of the
// following ones, in segment order (so in index order: deterministic). Grid (segments, outer): block s
// takes the row of its segment's last position when the row begins in segment s and goes on past it;
// every spanning row has exactly one such segment. A block per destination row instead launched 50257
// blocks for GPT-2's vocabulary, nearly all of them with nothing to do.
template <typename T>
__device__ void index_add_segments_finish_k(T* out, const int64_t* idx, const int32_t* sorted, const int32_t* base,
                                            const int32_t* total, const double* part, int64_t size, int64_t inner,
                                            int64_t nidx, int fresh) {
    const int64_t s = blockIdx.x, o = blockIdx.y, segments = gridDim.x;
    const int64_t last = min((s + 1) * INDEX_SEGMENT, nidx) - 1;
    const int64_t v = sort_key(idx, sorted[last], size);
    if (v == size) return;  // the bucket of out-of-range indices: nothing to add
    const int64_t cnt = total[v], s0 = base[v] / INDEX_SEGMENT, s1 = ((int64_t)base[v] + cnt - 1) / INDEX_SEGMENT;
    if (s0 != s || s1 == s0) return;
    const double* at = part + o * segments * 2 * inner;
    for (int64_t j = threadIdx.x; j < inner; j += blockDim.x) {
        double acc = at[(s0 * 2 + 1) * inner + j];
        int64_t q = s0 + 1;
        for (; q + SORTED_BATCH - 1 <= s1; q += SORTED_BATCH) {
            double b[SORTED_BATCH];
#pragma unroll
            for (int u = 0; u < SORTED_BATCH; ++u) b[u] = at[(q + u) * 2 * inner + j];
#pragma unroll
            for (int u = 0; u < SORTED_BATCH; ++u) acc += b[u];
        }
        for (; q <= s1; ++q) acc += at[q * 2 * inner + j];
        store_sum(out, (o * size + v) * inner + j, acc, fresh);
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
    extern "C" __global__ void index_add_segments_##S(T* out, const int64_t* idx, const int32_t* sorted, const int32_t* base, \
                                                      const int32_t* total, const T* src, double* part, int64_t size, \
                                                      int64_t inner, int64_t nidx, int fresh, int zero_blocks) { \
        index_add_segments_k<T>(out, idx, sorted, base, total, src, part, size, inner, nidx, fresh, zero_blocks); } \
    extern "C" __global__ void index_add_segments_finish_##S(T* out, const int64_t* idx, const int32_t* sorted, \
                                                             const int32_t* base, const int32_t* total, const double* part, \
                                                             int64_t size, int64_t inner, int64_t nidx, int fresh) { \
        index_add_segments_finish_k<T>(out, idx, sorted, base, total, part, size, inner, nidx, fresh); } \
    extern "C" __global__ void gather_##S(const T* x, Strided xs, const int64_t* idx, Strided is, int dim, T* out, int64_t n) { \
        gather_k<T>(x, xs, idx, is, dim, out, n); } \
    extern "C" __global__ void scatter_add_##S(T* out, Strided xs, const int64_t* idx, Strided is, int dim, const T* src, int64_t lines) { \
        scatter_add_k<T>(out, xs, idx, is, dim, src, lines); }
FOR_ALL(INDEX)
