// kernels/index.cu on the emulator: index_select, index_add, gather and scatter_add, launched as
// src/backend/cuda/index.rs does (contiguous operands, 256-thread grid-stride launches; half-type
// index_add through f32), with repeated and out-of-range indices, against double references.
#include "cuda_emu.h"
#include "../index.cu"
#include "check.h"
using namespace chk;

constexpr unsigned THREADS = 256;

template <typename T> struct K;
#define KI(S, T) \
    template <> struct K<T> { \
        static constexpr auto select = index_select_##S, add = index_add_##S, add_segments = index_add_segments_##S, \
            add_finish = index_add_segments_finish_##S, \
            gather = gather_##S, scatter = scatter_add_##S; };
KI(f32, float) KI(f64, double) KI(bf16, bf16) KI(f16, f16) KI(i64, int64_t) KI(u8, uint8_t)

typedef std::vector<int64_t> Shape;
inline int64_t numel(const Shape& s) { int64_t n = 1; for (auto d : s) n *= d; return n; }
// (outer, size, inner) around `dim`, as split() in index.rs.
inline void split(const Shape& s, int dim, int64_t& outer, int64_t& size, int64_t& inner) {
    outer = 1, inner = 1, size = s[dim];
    for (int d = 0; d < dim; ++d) outer *= s[d];
    for (size_t d = dim + 1; d < s.size(); ++d) inner *= s[d];
}
// Strided::contiguous: the shape as given (no dims merged) with row-major strides.
inline Strided strided_contig(const Shape& s) {
    Strided v;
    v.rank = (int32_t)s.size();
    for (int d = 0; d < MAX_DIMS; ++d) v.shape[d] = 1, v.strides[d] = 0;
    int64_t st = 1;
    for (int d = (int)s.size() - 1; d >= 0; --d) v.shape[d] = s[d], v.strides[d] = st, st *= s[d];
    v.offset = 0;
    return v;
}
// Row-major coordinates of flat index p in shape s, and back.
inline Shape coords(const Shape& s, int64_t p) {
    Shape c(s.size());
    for (int d = (int)s.size() - 1; d >= 0; --d) c[d] = p % s[d], p /= s[d];
    return c;
}
inline int64_t flat(const Shape& s, const Shape& c) {
    int64_t p = 0;
    for (size_t d = 0; d < s.size(); ++d) p = p * s[d] + c[d];
    return p;
}
// Random values that are exact in every element type (small integers for i64/u8).
template <typename T> void fill(Buf<T>& b) {
    if constexpr (std::is_integral_v<T>) for (size_t i = 0; i < b.n; ++i) b[i] = (T)(uniform(0, 1) * 20);
    else b.fill_random(-2, 2);
}
// Indices in [-1, size]: each kernel must read 0 for / skip the two out-of-range values; with many more
// indices than `size`, destinations repeat. `skew`: that share of the indices goes to row size / 2, as the
// space of a character vocabulary takes a large share of the tokens (its sources then span many segments).
inline std::vector<int64_t> indices(size_t n, int64_t size, double skew = 0) {
    std::vector<int64_t> v(n);
    for (auto& i : v) i = uniform(0, 1) < skew ? size / 2 : (int64_t)std::floor(uniform(0, 1) * size);
    if (n > 2) v[1] = size, v[n - 1] = -1;
    return v;
}
inline std::string shape_str(const Shape& s) {
    std::string r;
    for (size_t d = 0; d < s.size(); ++d) r += (d ? "," : "") + std::to_string(s[d]);
    return "[" + r + "]";
}

// index_select along `dim` with `nidx` indices.
template <typename T> void select(Shape shape, int dim, size_t nidx) {
    int64_t outer, size, inner;
    split(shape, dim, outer, size, inner);
    Buf<T> x(numel(shape));
    fill(x);
    std::vector<int64_t> idx = indices(nidx, size);
    int64_t n = outer * nidx * inner;
    Buf<T> out(n);
    out.fill(99);
    emu::launch(dim3(grid_for(n, THREADS)), dim3(THREADS), K<T>::select, x.ptr(), idx.data(), out.ptr(), outer, size,
                inner, (int64_t)nidx);
    std::vector<double> ref(n);
    for (int64_t o = 0; o < outer; ++o)
        for (size_t k = 0; k < nidx; ++k)
            for (int64_t j = 0; j < inner; ++j) {
                int64_t i = idx[k];
                ref[(o * nidx + k) * inner + j] = (i >= 0 && i < size) ? x.d((o * size + i) * inner + j) : 0.0;
            }
    char name[160];
    snprintf(name, sizeof name, "index_select_%s %s dim=%d nidx=%zu", tname<T>(), shape_str(shape).c_str(), dim, nidx);
    compare(name, out.ptr(), ref, 0);
}

// index_add_sorted() on the host: the stable counting sort (checked against std::stable_sort), then blocks
// of INDEX_SEGMENT sorted positions and the rows spanning segments finished (index_add_segments, _finish),
// adding onto `out` or, `fresh`, storing into it with the rows no index names zeroed (by blocks after the
// segments' in index_add_segments).
template <typename T>
void launch_sorted(T* out, const int64_t* idx, const T* src, int64_t outer, int64_t size, int64_t inner, int64_t nidx,
                   bool fresh) {
    const int64_t chunk = 1024, slice = SORT_SLICE, chunks = (nidx + chunk - 1) / chunk, keys = size + 1;
    // The host zeroes the counts, the ranks and the totals (sort_rank adds into them); the rest starts as
    // garbage.
    std::vector<int32_t> cnt(chunks * keys, 0), rank(nidx, 0), total(keys, 0), base(keys, -1), sorted(nidx, -1);
    emu::launch(dim3(chunks, chunk / slice), dim3(chunk), sort_rank, idx, nidx, size, rank.data(), cnt.data(),
                total.data());
    emu::launch(dim3(1), dim3(1024), sort_base, (const int32_t*)total.data(), keys, base.data());
    emu::launch(dim3(grid_for(nidx, THREADS)), dim3(THREADS), sort_place, idx, nidx, size, (int)chunk,
                (const int32_t*)rank.data(), (const int32_t*)cnt.data(), (const int32_t*)base.data(), sorted.data());
    // The sort itself: every position once, grouped by index (out-of-range last), in index order within a group.
    std::vector<int64_t> want(nidx);
    for (int64_t k = 0; k < nidx; ++k) want[k] = k;
    auto key = [&](int64_t k) { return (idx[k] >= 0 && idx[k] < size) ? idx[k] : size; };
    std::stable_sort(want.begin(), want.end(), [&](int64_t a, int64_t b) { return key(a) < key(b); });
    bool same = true;
    for (int64_t k = 0; k < nidx; ++k) same = same && sorted[k] == want[k];
    check(std::string("stable counting sort of ") + std::to_string(nidx) + " indices into " + std::to_string(size) + " rows",
          same, same ? "" : "positions out of order");
    if (size == 0 || inner == 0) return;
    // A thread per column, or per 16-byte pack of columns (8 one-byte ones) when rows are whole packs.
    const int64_t pack = std::min<int64_t>(16 / sizeof(T), 8), cols = inner % pack == 0 ? inner / pack : inner;
    unsigned threads = (unsigned)std::min<int64_t>((cols + 31) / 32 * 32, THREADS);
    unsigned finish_threads = (unsigned)std::min<int64_t>((inner + 31) / 32 * 32, THREADS);
    const int64_t segments = (nidx + INDEX_SEGMENT - 1) / INDEX_SEGMENT;
    // NaN where no partial was written: a row reading a slot it does not own comes out NaN.
    std::vector<double> part(outer * segments * 2 * inner, NAN);
    // Into zeros, blocks after the segments' zero the unnamed rows, each warp about four.
    const int64_t zero_blocks = fresh ? std::min<int64_t>((size + 4 * threads / 32 - 1) / (4 * threads / 32), 4096) : 0;
    emu::launch(dim3(segments + zero_blocks, outer), dim3(threads), K<T>::add_segments, out, idx,
                (const int32_t*)sorted.data(), (const int32_t*)base.data(), (const int32_t*)total.data(), src,
                part.data(), size, inner, nidx, (int)fresh, (int)zero_blocks);
    emu::launch(dim3(segments, outer), dim3(finish_threads), K<T>::add_finish, out, idx, (const int32_t*)sorted.data(),
                (const int32_t*)base.data(), (const int32_t*)total.data(), (const double*)part.data(), size, inner, nidx,
                (int)fresh);
}

// A thread per column walking the indices (index_add), onto `out`.
template <typename T>
void launch_walking(T* out, const int64_t* idx, const T* src, int64_t outer, int64_t size, int64_t inner, int64_t nidx) {
    emu::launch(dim3(grid_for(outer * inner, THREADS)), dim3(THREADS), K<T>::add, out, idx, src, outer, size, inner, nidx);
}

// index_add along `dim` as index.rs runs it: out = x with src[o, k, j] added at [o, idx[k], j], k in order;
// `zeros`: index_add_to_zeros (x ignored). From 256 indices on the sorted path, in the tensor's own type
// (each destination gets its f64 sum rounded once), into zeros as a fresh buffer of garbage (NaN, or 99
// for integers) it must overwrite everywhere; below that, the walking kernel, half types through f32.
template <typename T> void add(Shape shape, int dim, size_t nidx, double skew = 0, bool zeros = false) {
    int64_t outer, size, inner;
    split(shape, dim, outer, size, inner);
    Buf<T> x(numel(shape)), src(outer * nidx * inner);
    fill(x);
    if (zeros) x.fill(0);
    fill(src);
    std::vector<int64_t> idx = indices(nidx, size, skew);
    Buf<T> out(x.n);
    const char* kn;
    if (nidx >= 256) {
        kn = zeros ? " (sorted, fresh)" : " (sorted)";
        if (zeros) out.fill(std::is_integral_v<T> ? 99.0 : NAN);
        else for (size_t i = 0; i < x.n; ++i) out[i] = x[i];  // the host's x.try_clone()
        launch_sorted<T>(out.ptr(), idx.data(), src.ptr(), outer, size, inner, (int64_t)nidx, zeros);
    } else if constexpr (sizeof(T) == 2 && !std::is_integral_v<T>) {
        Buf<float> wx(x.n), ws(src.n);
        for (size_t i = 0; i < x.n; ++i) wx[i] = (float)x.d(i);
        for (size_t i = 0; i < src.n; ++i) ws[i] = (float)src.d(i);
        launch_walking<float>(wx.ptr(), idx.data(), ws.ptr(), outer, size, inner, (int64_t)nidx);
        kn = " (f32 kernel)";
        for (size_t i = 0; i < x.n; ++i) out[i] = from_d<T>(wx.d(i));
    } else {
        for (size_t i = 0; i < x.n; ++i) out[i] = x[i];
        launch_walking<T>(out.ptr(), idx.data(), src.ptr(), outer, size, inner, (int64_t)nidx);
        kn = "";
    }
    std::vector<double> ref(x.n);
    for (size_t i = 0; i < x.n; ++i) ref[i] = x.d(i);
    for (int64_t o = 0; o < outer; ++o)
        for (size_t k = 0; k < nidx; ++k)
            for (int64_t j = 0; j < inner; ++j) {
                int64_t i = idx[k];
                if (i >= 0 && i < size) ref[(o * size + i) * inner + j] += src.d((o * nidx + k) * inner + j);
            }
    if constexpr (sizeof(T) == 2) for (auto& r : ref) r = to_d(from_d<T>(r));
    char name[160];
    snprintf(name, sizeof name, "index_add%s_%s%s %s dim=%d nidx=%zu skew=%g", zeros ? "_to_zeros" : "", tname<T>(), kn,
             shape_str(shape).c_str(), dim, nidx, skew);
    compare(name, out.ptr(), ref, tol<T>());
}

// gather (out[p] = x[p with p[dim] = idx[p]]) and scatter_add (the reverse, adding) along `dim`, with an
// index tensor of shape `is` (its dims other than `dim` at most x's).
template <typename T> void gather_scatter(Shape xs, Shape is, int dim) {
    int64_t ni = numel(is);
    Buf<T> x(numel(xs)), src(ni), out(ni);
    fill(x);
    fill(src);
    out.fill(99);
    std::vector<int64_t> idx = indices(ni, xs[dim]);
    Strided sx = strided_contig(xs), si = strided_contig(is);
    emu::launch(dim3(grid_for(ni, THREADS)), dim3(THREADS), K<T>::gather, x.ptr(), sx, idx.data(), si, dim, out.ptr(), ni);
    std::vector<double> ref(ni), sref(x.n);
    for (size_t i = 0; i < x.n; ++i) sref[i] = x.d(i);
    for (int64_t p = 0; p < ni; ++p) {
        Shape c = coords(is, p);
        int64_t i = idx[p];
        bool ok = i >= 0 && i < xs[dim];
        c[dim] = ok ? i : 0;
        ref[p] = ok ? x.d(flat(xs, c)) : 0.0;
        if (ok) sref[flat(xs, c)] += src.d(p);
    }
    // The reference is the CPU backend's: sums in f64, rounded once. The kernel would round bf16/f16
    // destinations after every add (1000 adds of 0.01 to one bf16 element stop growing at 4), so the host
    // runs half types through the f32 kernel and rounds once, as for index_add; so does this test.
    if constexpr (sizeof(T) == 2) for (auto& r : sref) r = to_d(from_d<T>(r));
    char name[160];
    snprintf(name, sizeof name, "gather_%s x=%s idx=%s dim=%d", tname<T>(), shape_str(xs).c_str(), shape_str(is).c_str(), dim);
    compare(name, out.ptr(), ref, 0);

    Buf<T> sout(x.n);
    int64_t lines = is[dim] ? ni / is[dim] : 0;
    if constexpr (sizeof(T) == 2 && !std::is_integral_v<T>) {
        Buf<float> wx(x.n), ws(src.n);
        for (size_t i = 0; i < x.n; ++i) wx[i] = (float)x.d(i);
        for (size_t i = 0; i < src.n; ++i) ws[i] = (float)src.d(i);
        emu::launch(dim3(grid_for(lines, THREADS)), dim3(THREADS), K<float>::scatter, wx.ptr(), sx, idx.data(), si, dim,
                    ws.ptr(), lines);
        for (size_t i = 0; i < x.n; ++i) sout[i] = from_d<T>(wx.d(i));
    } else {
        for (size_t i = 0; i < x.n; ++i) sout[i] = x[i];
        emu::launch(dim3(grid_for(lines, THREADS)), dim3(THREADS), K<T>::scatter, sout.ptr(), sx, idx.data(), si, dim,
                    src.ptr(), lines);
    }
    snprintf(name, sizeof name, "scatter_add_%s x=%s idx=%s dim=%d", tname<T>(), shape_str(xs).c_str(),
             shape_str(is).c_str(), dim);
    compare(name, sout.ptr(), sref, tol<T>());
}

template <typename T> void all() {
    // index_select: an embedding lookup (dim 0, more ids than rows), a middle and a last dim.
    select<T>({11, 40}, 0, 300);
    select<T>({3, 7, 9}, 1, 12);
    select<T>({4, 5, 6}, 2, 4);
    select<T>({50}, 0, 20);
    // index_add: the embedding backward (many repeats per row), middle and last dims, one index.
    add<T>({11, 40}, 0, 300);
    add<T>({3, 7, 9}, 1, 12);
    add<T>({4, 5, 6}, 2, 9);
    add<T>({6, 3}, 0, 1);
    // Past 256 indices, the sorted path: 3 sort chunks with out-of-range ones; and an outer dim.
    add<T>({7, 5}, 0, 2500);
    add<T>({2, 9, 3}, 1, 700);
    // Segments: one row taking 70% of the indices (its sources span most segments, beside rows inside one
    // segment), wider than a block (two column passes), an outer dim; a whole number of segments.
    add<T>({40, 300}, 0, 3000, 0.7);
    add<T>({3, 20, 2}, 1, 1024, 0.5);
    add<T>({64, 3}, 0, 256, 0.0);
    // Into zeros (the embedding backward): rows no index names must come out 0 from garbage; rows of whole
    // 16-byte packs, an outer dim, a short list (zeros then the walking kernel); all but the first leave
    // most rows unnamed.
    add<T>({40, 300}, 0, 3000, 0.7, true);
    add<T>({600, 6}, 0, 700, 0.1, true);
    add<T>({900, 16}, 0, 400, 0.3, true);
    add<T>({3, 200, 8}, 1, 1024, 0.5, true);
    add<T>({300, 40}, 0, 100, 0, true);
    // Packs of columns (rows of whole 16-byte packs for every type) with a row spanning segments, onto a
    // table and into zeros; more packs than a block's threads (two passes).
    add<T>({40, 304}, 0, 3000, 0.7);
    add<T>({40, 304}, 0, 3000, 0.7, true);
    add<T>({30, 2064}, 0, 600, 0.5, true);
    // gather / scatter_add: first, middle and last dims, index dims smaller than x's outside `dim` and
    // longer than x's along it (repeats); a 1-D case.
    gather_scatter<T>({5, 4, 3}, {9, 4, 3}, 0);
    gather_scatter<T>({4, 6, 5}, {3, 10, 4}, 1);
    gather_scatter<T>({3, 4, 7}, {3, 2, 12}, 2);
    gather_scatter<T>({30}, {70}, 0);
    gather_scatter<T>({4}, {2000}, 0);  // ~500 sources per destination: half types must add in f32
    gather_scatter<T>({2, 3, 4, 5}, {2, 2, 6, 5}, 2);
}

int main() {
    all<float>();
    all<bf16>();
    all<double>();
    all<int64_t>();
    select<uint8_t>({11, 40}, 0, 300);
    gather_scatter<uint8_t>({4, 6, 5}, {3, 10, 4}, 1);
    // An embedding-sized case: 250 blocks of lookups; its backward is 8 threads (one per column), each
    // walking all 8000 ids in order.
    select<float>({1000, 8}, 0, 8000);
    add<float>({1000, 8}, 0, 8000);
    // A vocabulary past one tile of sort_base (1024 threads × SCAN_KEYS keys): the scan's carry across tiles.
    add<float>({40000, 2}, 0, 3000);
    // Into a GPT-sized table gradient: most rows zeroed, 5000 ids with one taking 15%, rows of 8 packs.
    add<float>({20000, 32}, 0, 5000, 0.15, true);
    add<bf16>({20000, 16}, 0, 5000, 0.15, true);
    return finish("index");
}
