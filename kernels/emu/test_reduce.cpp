// kernels/reduce.cu on the emulator: sum/max/min over last, middle, first and several dims of contiguous,
// transposed and offset views, through each path src/backend/cuda/reduce.rs picks (reduce_small for short
// rows, reduce_rows one block per row, reduce_rows split over slices + reduce_finish), with NaN and inf
// rows; and argmax with ties, NaNs and all -inf rows. Against double references.
#include "cuda_emu.h"
#include "../reduce.cu"
#include "check.h"
#include "views.h"
using namespace chk;

constexpr unsigned THREADS = 256;
constexpr size_t TARGET_BLOCKS = 1024;

template <typename T> struct K;
#define KR(S, T) \
    template <> struct K<T> { \
        static constexpr auto rows = reduce_rows_##S, finish = reduce_finish_##S, small = reduce_small_##S, cols = reduce_cols_##S; \
        static constexpr auto argmax = argmax_##S; };
KR(f32, float) KR(f64, double) KR(bf16, bf16) KR(f16, f16) KR(i64, int64_t) KR(u8, uint8_t)

// storage.rs::views for one operand.
inline Strided view(const Layout& l) { return views<1>({&l}).first[0]; }
// reduce.rs::permuted: kept dims first, reduced dims last; contig when the reduced dims are one dense run.
struct Permuted {
    Layout lp;
    int64_t n_out, n_red;
    bool contig;
};
inline Permuted permuted(const Layout& l, const std::vector<int>& dims) {
    std::vector<int> perm;
    for (int d = 0; d < (int)l.shape.size(); ++d)
        if (std::find(dims.begin(), dims.end(), d) == dims.end()) perm.push_back(d);
    perm.insert(perm.end(), dims.begin(), dims.end());
    Permuted p{Layout{{}, {}, l.offset}, 1, 1, false};
    for (int d : perm) p.lp.shape.push_back(l.shape[d]), p.lp.strides.push_back(l.strides[d]);
    std::vector<int64_t> rs, rst;
    for (int d : dims) rs.push_back(l.shape[d]), rst.push_back(l.strides[d]), p.n_red *= l.shape[d];
    p.n_out = l.numel() / std::max<int64_t>(p.n_red, 1);
    Layout reduced{rs, rst, 0};
    p.contig = views<1>({&reduced}).second;  // the reduced dims merge into one dense run
    return p;
}

// reduce.rs::cols_slices: reduce_cols's row slices when the reduced dims are exactly the leading dims of a
// contiguous view with more than 32 rows and at least 32 columns; 0 when it does not apply.
inline size_t cols_slices(const Layout& l, const std::vector<int>& dims, int64_t cols, int64_t rows) {
    bool leading = !dims.empty() && dims.size() < l.shape.size();
    for (int d = 0; d < (int)dims.size(); ++d) leading = leading && std::find(dims.begin(), dims.end(), d) != dims.end();
    bool contiguous = true;
    int64_t acc = 1;
    for (int d = (int)l.shape.size() - 1; d >= 0; --d) {
        if (l.shape[d] != 1 && l.strides[d] != acc) contiguous = false;
        acc *= l.shape[d];
    }
    if (!leading || !contiguous || rows <= 32 || cols < 32) return 0;
    size_t blocks = (size_t)(cols + 31) / 32;
    return std::clamp<size_t>(std::min<size_t>((TARGET_BLOCKS + blocks - 1) / blocks, (size_t)(rows + 63) / 64), 1, 1024);
}

inline std::string desc(const Layout& l, const std::vector<int>& dims) {
    std::string r = "[";
    for (size_t d = 0; d < l.shape.size(); ++d) r += (d ? "," : "") + std::to_string(l.shape[d]);
    r += "] strides [";
    for (size_t d = 0; d < l.shape.size(); ++d) r += (d ? "," : "") + std::to_string(l.strides[d]);
    r += "] off " + std::to_string(l.offset) + " dims {";
    for (size_t d = 0; d < dims.size(); ++d) r += (d ? "," : "") + std::to_string(dims[d]);
    return r + "}";
}

// Values for a view's buffer: floats in [-2, 3] (or few distinct ones, for argmax ties); small integers
// for i64/u8, so sums stay exact.
template <typename T> void fill(Buf<T>& b, bool ties) {
    for (size_t i = 0; i < b.n; ++i) {
        double u = uniform(0, 1);
        if constexpr (std::is_integral_v<T>) b[i] = (T)(u * (ties ? 4 : 100));
        else b[i] = from_d<T>(ties ? std::floor(u * 4) : -2 + 5 * u);
    }
}

const char* OPS[] = {"sum", "max", "min"};
double ref_combine(int op, double acc, double v) {
    if (op == R_SUM) return acc + v;
    if (op == R_MAX) return (v != v || v > acc) ? v : acc;
    return (v != v || v < acc) ? v : acc;
}

// reduce() over `dims` of view l, for op in {sum, max, min}. Float types get a NaN in output row 1 and a
// +inf in row 2 (where those rows exist).
template <typename T> void reduce(Layout l, std::vector<int> dims) {
    Buf<T> x(l.span());
    fill(x, false);
    auto [lp, n_out, n_red, contig] = permuted(l, dims);
    if constexpr (!std::is_integral_v<T>) {
        if (n_out > 1) x[lp.at(1 * n_red + n_red / 2)] = from_d<T>(NAN);
        if (n_out > 2) x[lp.at(2 * n_red + n_red / 3)] = from_d<T>(INFINITY);
    }
    Strided s = view(lp);
    for (int op = R_SUM; op <= R_MIN; ++op) {
        if (std::is_same_v<T, uint8_t> && op == R_SUM) continue;  // the host sums u8 as i64
        Buf<T> out(n_out);
        out.fill(77);
        std::string kn;
        size_t slices = std::clamp<size_t>(std::min<size_t>((TARGET_BLOCKS + n_out - 1) / n_out,
                                                            (n_red + 8 * THREADS - 1) / (8 * THREADS)), 1, 1024);
        if (size_t cs = cols_slices(l, dims, n_out, n_red)) {
            kn = std::string("reduce_cols_") + tname<T>() + (cs > 1 ? "+finish slices=" + std::to_string(cs) : "");
            dim3 grid((unsigned)((n_out + 31) / 32), (unsigned)cs);
            Buf<double> partial(cs > 1 ? n_out * cs : 1);
            emu::launch(grid, dim3(32, 8), K<T>::cols, x.ptr() + l.offset, n_red, n_out, op, out.ptr(),
                        cs > 1 ? partial.ptr() : nullptr);
            if (cs > 1)
                emu::launch(dim3(grid_for(n_out, THREADS)), dim3(THREADS), K<T>::finish, partial.ptr(), n_out, (int)cs, op,
                            out.ptr());
        } else if (n_red <= 32) {
            kn = std::string("reduce_small_") + tname<T>();
            emu::launch(dim3(grid_for(n_out, THREADS)), dim3(THREADS), K<T>::small, x.ptr(), s, n_out, n_red, op, out.ptr());
        } else if (slices == 1) {
            kn = std::string("reduce_rows_") + tname<T>();
            emu::launch(dim3((unsigned)n_out), dim3(THREADS), K<T>::rows, x.ptr(), s, n_red, op, (int)contig, out.ptr(), nullptr);
        } else {
            kn = std::string("reduce_rows_") + tname<T>() + "+finish slices=" + std::to_string(slices);
            Buf<double> partial(n_out * slices);
            emu::launch(dim3((unsigned)n_out, (unsigned)slices), dim3(THREADS), K<T>::rows, x.ptr(), s, n_red, op,
                        (int)contig, out.ptr(), partial.ptr());
            emu::launch(dim3(grid_for(n_out, THREADS)), dim3(THREADS), K<T>::finish, partial.ptr(), n_out, (int)slices, op,
                        out.ptr());
        }
        std::vector<double> ref(n_out);
        for (int64_t o = 0; o < n_out; ++o) {
            double acc = op == R_SUM ? 0.0 : op == R_MAX ? -INFINITY : INFINITY;
            for (int64_t j = 0; j < n_red; ++j) acc = ref_combine(op, acc, x.d(lp.at(o * n_red + j)));
            ref[o] = to_d(from_d<T>(acc));
        }
        char name[200];
        snprintf(name, sizeof name, "%s %s %s contig=%d", kn.c_str(), OPS[op], desc(l, dims).c_str(), (int)contig);
        // max/min return one of the inputs; sums differ from the reference only by summation order in f64.
        compare(name, out.ptr(), ref, op == R_SUM ? tol<T>() : 0);
    }
}

// argmax over `dim`: few distinct values (ties: the first index wins); float types also get a row with two
// NaNs (the first wins), an all -inf row (index 0) and a row whose max is +inf, twice.
template <typename T> void argmax(Layout l, int dim) {
    Buf<T> x(l.span());
    fill(x, true);
    auto [lp, n_out, n_red, contig] = permuted(l, {dim});
    if constexpr (!std::is_integral_v<T>) {
        auto at = [&](int64_t o, int64_t j) -> T& { return x[lp.at(o * n_red + j)]; };
        if (n_out > 1) at(1, n_red - 1) = from_d<T>(NAN), at(1, n_red / 2) = from_d<T>(NAN);
        if (n_out > 2) for (int64_t j = 0; j < n_red; ++j) at(2, j) = from_d<T>(-INFINITY);
        if (n_out > 3) at(3, n_red - 1) = from_d<T>(INFINITY), at(3, (n_red - 1) / 3) = from_d<T>(INFINITY);
    }
    size_t p2 = 1;
    while (p2 < (size_t)n_red) p2 *= 2;
    unsigned threads = (unsigned)std::clamp<size_t>(p2, 32, THREADS);
    Buf<int64_t> out(n_out);
    out.fill(-7);
    emu::launch(dim3((unsigned)n_out), dim3(threads), K<T>::argmax, x.ptr(), view(lp), n_red, out.ptr());
    // The CPU backend's loop: strictly greater, or the first NaN.
    std::vector<double> ref(n_out);
    for (int64_t o = 0; o < n_out; ++o) {
        double best = -INFINITY;
        int64_t bi = 0;
        for (int64_t j = 0; j < n_red; ++j) {
            double v = x.d(lp.at(o * n_red + j));
            if (v > best || v != v) { best = v, bi = j; if (v != v) break; }
        }
        ref[o] = (double)bi;
    }
    char name[200];
    snprintf(name, sizeof name, "argmax_%s %s threads=%u", tname<T>(), desc(l, {dim}).c_str(), threads);
    compare(name, out.ptr(), ref, 0);
}

template <typename T> void all() {
    reduce<T>(contiguous({6, 300}), {1});               // last dim: block per row
    reduce<T>(contiguous({4, 50, 7}), {1});             // middle dim, stride 7: block per row, not contig
    reduce<T>(contiguous({20, 65}), {0});               // first dim, 20 long: thread per output
    reduce<T>(contiguous({8, 16, 9}), {1});             // middle dim, short
    reduce<T>(contiguous({10, 1}), {1});                // a size-1 dim (dropped by coalescing)
    reduce<T>(contiguous({5, 6, 7}), {0, 2});           // two dims that do not merge
    reduce<T>(contiguous({3, 40, 50}), {1, 2});         // two dims that merge into one dense run of 2000
    reduce<T>(contiguous({7, 9}), {0, 1});              // everything, one output
    reduce<T>(contiguous({3, 5000}), {1});              // long rows: split in 3 slices + finish
    reduce<T>(contiguous({20000}), {0});                // one very long row: 10 slices
    reduce<T>(contiguous({4100, 2}), {0});              // split, strided
    reduce<T>(Layout{{300, 6}, {1, 300}, 0}, {0});      // transposed view: reduced dim has stride 1
    reduce<T>(Layout{{6, 100}, {100, 1}, 5}, {1});      // view at an offset
    reduce<T>(Layout{{9, 40}, {1, 9}, 0}, {1});         // transposed view, reduced dim strided
    reduce<T>(contiguous({300, 40}), {0});              // leading dim over contiguous columns: reduce_cols
    reduce<T>(contiguous({5, 70, 33}), {1, 0});         // two leading dims (given out of order), 33 columns
    reduce<T>(contiguous({4100, 64}), {0});             // reduce_cols split in slices + finish
    reduce<T>(Layout{{100, 40}, {40, 1}, 7}, {0});      // reduce_cols on a view at an offset
    argmax<T>(contiguous({6, 5}), 1);                   // 32 threads for 5 values
    argmax<T>(contiguous({4, 100, 3}), 1);              // middle dim: 128 threads
    argmax<T>(contiguous({5, 1000}), 1);                // 256 threads, 4 values each
    argmax<T>(contiguous({37, 4}), 0);                  // first dim: 64 threads
    argmax<T>(Layout{{40, 6}, {1, 40}, 3}, 0);          // transposed view at an offset
}

int main() {
    all<float>();
    all<bf16>();
    all<double>();
    all<int64_t>();
    reduce<uint8_t>(contiguous({6, 300}), {1});
    reduce<uint8_t>(contiguous({20, 65}), {0});
    reduce<uint8_t>(contiguous({4100, 2}), {0});
    argmax<uint8_t>(contiguous({4, 100, 3}), 1);
    return finish("reduce");
}
