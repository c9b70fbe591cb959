// kernels/elementwise.cu on the emulator: binary_rows (bias add, column broadcast), binary (contiguous
// vector and scalar paths, small strided broadcast), compare and where (each FlatView form and the per-dim
// path), casts and copy_into on transposed views, launched as
// src/backend/cuda/elementwise.rs does, with `Strided` views built as storage.rs::views does.
#include "cuda_emu.h"
#include "../elementwise.cu"
#include "check.h"
#include "views.h"
using namespace chk;

constexpr unsigned THREADS = 256;
constexpr int64_t ROWS_MIN_INNER = 128;

inline unsigned grid_ew(int64_t n, size_t elem, bool contig) {
    return contig ? grid_for((n + 4 * (16 / elem) - 1) / (4 * (16 / elem)), THREADS) : grid_for(n, THREADS);
}

template <typename T> struct K;
#define KE(S, T) \
    template <> struct K<T> { \
        static constexpr auto bin = binary_##S, rows = binary_rows_##S, copy = copy_into_##S, tr = transpose_copy_##S; \
        static constexpr auto cmp = compare_##S, wh = where_##S, fill = fill_##S; };
KE(f32, float) KE(f64, double) KE(bf16, bf16) KE(f16, f16)

double ref_op(int op, double x, double y) {
    switch (op) {
    case B_ADD: return x + y;
    case B_SUB: return x - y;
    case B_MUL: return x * y;
    case B_DIV: return x / y;
    case B_MAX: return (x != x || x > y) ? x : y;
    default: return (x != x || x < y) ? x : y;
    }
}

// out = a op b over la's shape, both operands broadcast views of their buffers; dispatched as binary().
template <typename T> void binary(const char* what, Layout la, Layout lb, size_t bn, int op, bool nans = false) {
    size_t an = 0;
    for (int64_t i = 0; i < la.numel(); ++i) an = std::max<size_t>(an, la.at(i) + 1);
    Buf<T> a(an), b(bn);
    a.fill_random(-3, 3);
    b.fill_random(0.5, 2);
    if (nans) a[3] = from_d<T>(NAN), b[5] = from_d<T>(NAN);
    int64_t n = la.numel();
    Buf<T> y(n);
    auto [v, contig] = views<2>({&la, &lb});
    auto [sa, sb] = v;
    int64_t inner = sa.shape[std::max(sa.rank, 1) - 1];
    const char* kn;
    if (!contig && inner >= ROWS_MIN_INNER && n > 0) {
        kn = "binary_rows";
        int64_t rows = n / inner, per_block = THREADS * (16 / sizeof(T));
        dim3 grid((unsigned)std::min<int64_t>((inner + per_block - 1) / per_block, 64), (unsigned)std::min<int64_t>(rows, 2048));
        emu::launch(grid, dim3(THREADS), K<T>::rows, a.ptr(), sa, b.ptr(), sb, y.ptr(), n, op);
    } else {
        kn = "binary";
        emu::launch(dim3(grid_ew(n, sizeof(T), contig)), dim3(THREADS), K<T>::bin, a.ptr(), sa, b.ptr(), sb, y.ptr(), n, op,
                    (int)contig);
    }
    std::vector<double> ref(n);
    for (int64_t i = 0; i < n; ++i) ref[i] = to_d(from_d<T>(ref_op(op, a.d(la.at(i)), b.d(lb.at(i)))));
    char name[160];
    snprintf(name, sizeof name, "%s_%s %s op=%d n=%ld contig=%d", kn, tname<T>(), what, op, (long)n, (int)contig);
    compare(name, y.ptr(), ref, tol<T>());
}

template <typename T> void binaries() {
    for (int64_t inner : {1000, 130, 4096}) {
        int64_t rows = 5;
        // Bias add: a [rows, inner] + b [inner] broadcast over rows (row stride 0, inner stride 1).
        binary<T>("bias-add", contiguous({rows, inner}), Layout{{rows, inner}, {0, 1}, 0}, inner, B_ADD);
        // Column broadcast: b [rows, 1] over the inner dim (inner stride 0).
        binary<T>("col-bcast", contiguous({rows, inner}), Layout{{rows, inner}, {1, 0}, 0}, rows, B_MUL);
        // Unaligned a (a view starting one element in): scalar row loop.
        binary<T>("bias-add a+1", contiguous({rows, inner}, 1), Layout{{rows, inner}, {0, 1}, 0}, inner, B_SUB);
        binary<T>("col-bcast b+1", contiguous({rows, inner}), Layout{{rows, inner}, {1, 0}, 1}, rows + 1, B_DIV);
    }
    // The repeated row first (bias − x): binary_rows' flat path with a broadcast a and a whole b; and
    // more packs than threads, so each thread loops (4096 x 40 rows).
    binary<T>("bias-first", Layout{{7, 256}, {0, 1}, 0}, contiguous({7, 256}), 7 * 256, B_SUB);
    binary<T>("bias-add 40x4096", contiguous({40, 4096}), Layout{{40, 4096}, {0, 1}, 0}, 4096, B_MUL);
    // Many rows: grid.y capped at 2048, blocks stride over rows.
    binary<T>("bias-add 2100 rows", contiguous({2100, 128}), Layout{{2100, 128}, {0, 1}, 0}, 128, B_ADD);
    // Short inner dim: flat strided path of `binary`.
    binary<T>("bias-add inner=7", contiguous({10, 7}), Layout{{10, 7}, {0, 1}, 0}, 7, B_ADD);
    // Contiguous: vector path (and its tail), then the unaligned scalar path.
    for (int op = B_ADD; op <= B_MIN; ++op) {
        binary<T>("contig", contiguous({1000}), contiguous({1000}), 1000, op, op >= B_MAX);
        binary<T>("contig", contiguous({3, 1003}), contiguous({3, 1003}), 3009, op);
        binary<T>("contig a+1", contiguous({1003}, 1), contiguous({1003}), 1003, op);
    }
}

// A transposed 2-D view: logical [r, c] over a row-major [c, r] buffer (strides [1, r]), plus offset.
inline Layout transposed(int64_t r, int64_t c, int64_t off = 0) { return Layout{{r, c}, {1, r}, off}; }
// One value broadcast to every element of `shape`.
inline Layout scalar_of(std::vector<int64_t> shape) { return Layout{shape, std::vector<int64_t>(shape.size(), 0), 0}; }

// Strided::transpose_grid (storage.rs): unit stride in the second-to-last merged dim, not in the last.
inline bool transpose_grid(const Strided& s, dim3& g) {
    int r = s.rank;
    if (r < 2 || s.strides[r - 2] != 1 || s.strides[r - 1] == 1) return false;
    int64_t batches = 1;
    for (int d = 0; d < r - 2; ++d) batches *= s.shape[d];
    const int64_t tt = TRANSPOSE_TILE;
    g = dim3((unsigned)((s.shape[r - 1] + tt - 1) / tt), (unsigned)((s.shape[r - 2] + tt - 1) / tt),
             (unsigned)std::min<int64_t>(batches, 65535));
    return s.shape[r - 2] * s.shape[r - 1] > 0;
}

// Strided::in_packs (storage.rs): the view in units of k elements when its innermost dim is contiguous
// and every row starts on a pack.
inline bool in_packs(const Strided& s, int64_t k, Strided& p) {
    int r = s.rank;
    if (r == 0 || s.strides[r - 1] != 1 || s.shape[r - 1] % k != 0 || s.offset % k != 0) return false;
    for (int d = 0; d < r - 1; ++d)
        if (s.strides[d] % k != 0) return false;
    p = s;
    p.shape[r - 1] /= k;
    for (int d = 0; d < r - 1; ++d) p.strides[d] /= k;
    p.offset /= k;
    return true;
}
inline bool aligned(const void* p) { return (uintptr_t)p % 16 == 0; }

// cast_S_D (x view -> contiguous y), as cast(); same dtype on a non-contiguous view is the strided copy.
template <typename S, typename D, typename F> void cast(const char* kn, F kernel, Layout lx) {
    size_t xn = 0;
    for (int64_t i = 0; i < lx.numel(); ++i) xn = std::max<size_t>(xn, lx.at(i) + 1);
    Buf<S> x(xn);
    x.fill_random(-100, 100);
    int64_t n = lx.numel();
    Buf<D> y(n);
    auto [v, contig] = views<1>({&lx});
    dim3 tg;
    Strided pv;
    const int64_t k = 16 / sizeof(S);
    if (std::is_same_v<S, D> && transpose_grid(v[0], tg)) {
        kn = "transpose_copy";  // as cast() on the host: same dtype and a transposing view
        emu::launch(tg, dim3(32, 8), K<S>::tr, x.ptr(), v[0], reinterpret_cast<S*>(y.ptr()), n);
    } else if (std::is_same_v<S, D> && in_packs(v[0], k, pv) && aligned(x.ptr()) && aligned(y.ptr())) {
        kn = "copy_packs";  // same dtype, rows of whole aligned packs
        emu::launch(dim3(grid_for(n / k, THREADS)), dim3(THREADS), copy_packs, reinterpret_cast<const uint4*>(x.ptr()), pv,
                    reinterpret_cast<uint4*>(y.ptr()), n / k);
    } else {
        emu::launch(dim3(grid_for(n, THREADS)), dim3(THREADS), kernel, x.ptr(), v[0], y.ptr(), n, (int)contig);
    }
    std::vector<double> ref(n);
    for (int64_t i = 0; i < n; ++i) ref[i] = to_d(from_d<D>(x.d(lx.at(i))));
    char name[160];
    std::string sh, st;
    for (size_t d = 0; d < lx.shape.size(); ++d)
        sh += (d ? "," : "") + std::to_string(lx.shape[d]), st += (d ? "," : "") + std::to_string(lx.strides[d]);
    snprintf(name, sizeof name, "%s shape=[%s] strides=[%s] off=%ld contig=%d", kn, sh.c_str(), st.c_str(),
             (long)lx.offset, (int)contig);
    compare(name, y.ptr(), ref, 0);  // conversions are exact functions of the input
}

// copy_into: dst view <- src view, both of one logical shape.
template <typename T> void copy_into(const char* what, Layout ld, Layout ls) {
    size_t dn = 0, sn = 0;
    for (int64_t i = 0; i < ld.numel(); ++i) dn = std::max<size_t>(dn, ld.at(i) + 1), sn = std::max<size_t>(sn, ls.at(i) + 1);
    Buf<T> d(dn), s(sn);
    d.fill(-1);
    s.fill_random(-10, 10);
    int64_t n = ld.numel();
    auto [v, contig] = views<2>({&ld, &ls});
    if (contig) { printf("  (copy_into %s is a memcpy on the host; not a kernel launch)\n", what); return; }
    Strided pd, ps;
    const int64_t k = 16 / sizeof(T);
    const char* kn = "copy_into";
    if (in_packs(v[0], k, pd) && in_packs(v[1], k, ps) && aligned(d.ptr()) && aligned(s.ptr())) {
        kn = "copy_into_packs";
        emu::launch(dim3(grid_for(n / k, THREADS)), dim3(THREADS), copy_into_packs, reinterpret_cast<uint4*>(d.ptr()), pd,
                    reinterpret_cast<const uint4*>(s.ptr()), ps, n / k);
    } else {
        emu::launch(dim3(grid_for(n, THREADS)), dim3(THREADS), K<T>::copy, d.ptr(), v[0], s.ptr(), v[1], n);
    }
    std::vector<double> ref(dn, to_d(from_d<T>(-1)));
    for (int64_t i = 0; i < n; ++i) ref[ld.at(i)] = s.d(ls.at(i));
    char name[160];
    snprintf(name, sizeof name, "%s_%s %s n=%ld", kn, tname<T>(), what, (long)n);
    compare(name, d.ptr(), ref, 0);
}

// Values in {0, 1, 2, 3}: comparisons meet ties.
template <typename T> void fill_levels(Buf<T>& b) {
    for (size_t i = 0; i < b.n; ++i) b[i] = from_d<T>(std::floor(uniform(0, 4)));
}

// y = a op b (as 0/1 bytes) over la's shape, both broadcast views; dispatched as compare() does.
template <typename T> void compare_test(const char* what, Layout la, Layout lb, int op) {
    Buf<T> a(la.span()), b(lb.span());
    fill_levels(a), fill_levels(b);
    int64_t n = la.numel();
    Buf<uint8_t> y(n);
    auto [v, contig] = views<2>({&la, &lb});
    emu::launch(dim3(grid_for(n, THREADS)), dim3(THREADS), K<T>::cmp, a.ptr(), v[0], b.ptr(), v[1], y.ptr(), n, op);
    std::vector<double> ref(n);
    for (int64_t i = 0; i < n; ++i) {
        double u = a.d(la.at(i)), w = b.d(lb.at(i));
        bool r = op == 0 ? u == w : op == 1 ? u != w : op == 2 ? u < w : op == 3 ? u <= w : op == 4 ? u > w : u >= w;
        ref[i] = r ? 1 : 0;
    }
    char name[160];
    snprintf(name, sizeof name, "compare_%s %s op=%d n=%ld rank=%d", tname<T>(), what, op, (long)n, v[0].rank);
    compare(name, y.ptr(), ref, 0);
}

// y = m ? a : b over la's shape, all three broadcast views; dispatched as where_cond() does.
template <typename T> void where_test(const char* what, Layout lm, Layout la, Layout lb) {
    Buf<uint8_t> m(lm.span());
    for (size_t i = 0; i < m.n; ++i) m[i] = uniform(0, 1) < 0.5;
    Buf<T> a(la.span()), b(lb.span());
    a.fill_random(-3, 3), b.fill_random(5, 9);
    int64_t n = la.numel();
    Buf<T> y(n);
    auto [v, contig] = views<3>({&lm, &la, &lb});
    emu::launch(dim3(grid_for(n, THREADS)), dim3(THREADS), K<T>::wh, m.ptr(), v[0], a.ptr(), v[1], b.ptr(), v[2], y.ptr(), n);
    std::vector<double> ref(n);
    for (int64_t i = 0; i < n; ++i) ref[i] = m[lm.at(i)] ? a.d(la.at(i)) : b.d(lb.at(i));
    char name[160];
    snprintf(name, sizeof name, "where_%s %s n=%ld rank=%d", tname<T>(), what, (long)n, v[0].rank);
    compare(name, y.ptr(), ref, 0);
}

// fill over n elements from an aligned start (packed stores and a tail) or an unaligned one, launched as
// elementwise.rs::full does; the element past the end stays untouched.
template <typename T> void fill_test(size_t n, size_t shift) {
    Buf<T> y(n + 1, shift);
    y.fill(-1);
    emu::launch(dim3(grid_for((n + 16 / sizeof(T) - 1) / (16 / sizeof(T)), THREADS)), dim3(THREADS), K<T>::fill, y.ptr(),
                (int64_t)n, 2.5);
    std::vector<double> ref(n + 1, 2.5);
    ref[n] = -1;
    char name[96];
    snprintf(name, sizeof name, "fill_%s n=%zu shift=%zu", tname<T>(), n, shift);
    compare(name, y.ptr(), ref, 0);
}

template <typename T> void compares_and_wheres() {
    for (size_t n : {1, 7, 1001, 4096}) fill_test<T>(n, 0), fill_test<T>(n, 1);
    // [4, 3, 20, 20] attention scores: a causal [20, 20] mask repeated over batch and heads (row repeat),
    // a scalar fill value (all strides 0), dense scores.
    Layout scores = contiguous({4, 3, 20, 20}), mask{{4, 3, 20, 20}, {0, 0, 20, 1}, 0},
           scalar{{4, 3, 20, 20}, {0, 0, 0, 0}, 0};
    where_test<T>("causal mask, scalar fill", mask, scores, scalar);
    where_test<T>("dense, per-row value", contiguous({50, 30}), Layout{{50, 30}, {1, 0}, 3}, contiguous({50, 30}, 1));
    where_test<T>("transposed (per-dim path)", transposed(17, 23), contiguous({17, 23}), transposed(17, 23, 2));
    where_test<T>("rank 3 after merging", Layout{{3, 4, 5}, {0, 5, 1}, 0}, Layout{{3, 4, 5}, {40, 5, 1}, 0}, scalar_of({3, 4, 5}));
    for (int op = 0; op < 6; ++op) compare_test<T>("dense vs scalar", contiguous({777}), Layout{{777}, {0}, 2}, op);
    compare_test<T>("row repeat", contiguous({9, 40}), Layout{{9, 40}, {0, 1}, 0}, 5);
    compare_test<T>("per row", contiguous({9, 40}, 1), Layout{{9, 40}, {1, 0}, 0}, 2);
    compare_test<T>("transposed (per-dim path)", transposed(13, 31), contiguous({13, 31}), 3);
}

int main() {
    compares_and_wheres<float>();
    compares_and_wheres<bf16>();
    compares_and_wheres<double>();
    binaries<float>();
    binaries<bf16>();
    binaries<double>();
    binaries<f16>();
    cast<float, float>("cast_f32_f32", cast_f32_f32, transposed(37, 300));
    cast<float, float>("cast_f32_f32", cast_f32_f32, transposed(150, 129));  // several tiles both ways
    cast<float, float>("cast_f32_f32", cast_f32_f32, transposed(5, 7, 3));
    cast<float, float>("cast_f32_f32", cast_f32_f32, Layout{{4, 50}, {100, 2}, 1});  // every other column
    // Batched transposes: [3, 37, 45] over [3, 45, 37] buffers, and the batch dim itself strided.
    cast<float, float>("cast_f32_f32", cast_f32_f32, Layout{{3, 37, 45}, {37 * 45, 1, 37}, 5});
    cast<double, double>("cast_f64_f64", cast_f64_f64, Layout{{4, 33, 64}, {2 * 33 * 64, 1, 33}, 0});
    cast<bf16, bf16>("cast_bf16_bf16", cast_bf16_bf16, transposed(64, 96, 1));
    cast<float, float>("cast_f32_f32", cast_f32_f32, Layout{{70, 2}, {1, 0}, 0});  // broadcast columns
    cast<float, bf16>("cast_f32_bf16", cast_f32_bf16, transposed(37, 300));
    cast<bf16, float>("cast_bf16_f32", cast_bf16_f32, transposed(37, 300));
    cast<float, bf16>("cast_f32_bf16", cast_f32_bf16, contiguous({1000}, 1));          // contiguous flag path
    cast<double, bf16>("cast_f64_bf16", cast_f64_bf16, transposed(9, 130));
    // Attention's head split/merge: [b, t, h, d] seen as [b, h, t, d] (rows of d contiguous): copy_packs;
    // with d not a whole number of packs, or an odd offset, the per-element path.
    cast<float, float>("cast_f32_f32", cast_f32_f32, Layout{{2, 3, 5, 8}, {120, 8, 24, 1}, 0});
    cast<bf16, bf16>("cast_bf16_bf16", cast_bf16_bf16, Layout{{2, 3, 5, 16}, {240, 16, 48, 1}, 8});
    cast<double, double>("cast_f64_f64", cast_f64_f64, Layout{{4, 6, 2}, {24, 2, 1}, 2});
    cast<float, float>("cast_f32_f32", cast_f32_f32, Layout{{2, 3, 5, 6}, {90, 6, 18, 1}, 0});
    cast<float, float>("cast_f32_f32", cast_f32_f32, Layout{{2, 3, 5, 8}, {120, 8, 24, 1}, 1});
    // cat's slices and the narrow backward: rows of packs into a wider destination.
    copy_into<float>("slice of wider rows", Layout{{6, 32}, {64, 1}, 16}, contiguous({6, 32}));
    copy_into<bf16>("head merge", Layout{{2, 5, 3, 16}, {240, 48, 16, 1}, 0}, Layout{{2, 5, 3, 16}, {240, 16, 80, 1}, 0});
    copy_into<float>("dst transposed", transposed(37, 300), contiguous({37, 300}));
    copy_into<float>("src transposed", contiguous({37, 300}, 2), transposed(37, 300, 1));
    copy_into<bf16>("dst transposed", transposed(20, 33), contiguous({20, 33}));
    copy_into<double>("both strided", Layout{{6, 40}, {80, 2}, 0}, transposed(6, 40));
    return finish("elementwise");
}
