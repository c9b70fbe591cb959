// kernels/norm.cu on the emulator: layer norm and RMS norm forward and backward, launched as
// src/backend/cuda/norm.rs does (register-cached or plain row kernels; fused backward + finish, or
// row backward + wb_partial + finish), against double references.
#include "cuda_emu.h"
#include "../norm.cu"
#include "check.h"
using namespace chk;

template <typename T> struct K;
#define KN(S, T) \
    template <> struct K<T> { \
        static constexpr auto fwd_rows = norm_forward_rows_##S, fwd = norm_forward_##S, fwd_pairs = FWD_PAIRS_##S; \
        static constexpr auto bwd_rows = norm_backward_x_rows_##S, bwd = norm_backward_x_##S; \
        static constexpr auto partial = norm_backward_wb_partial_##S, finish = norm_backward_wb_finish_##S; \
        static constexpr auto fused = FUSED_##S, fused_finish = FUSED_FINISH_##S, fused_pairs = FUSED_PAIRS_##S; };
#define FUSED_f32 norm_backward_fused_rows_f32
#define FUSED_bf16 norm_backward_fused_rows_bf16
#define FUSED_f16 norm_backward_fused_rows_f16
#define FUSED_f64 (void (*)(const double*, const double*, const double*, const double*, const double*, double*, \
                            int64_t, int64_t, int, float*, float*, int))nullptr
#define FWD_PAIRS_bf16 norm_forward_pairs_rows_bf16
#define FWD_PAIRS_f16 norm_forward_pairs_rows_f16
#define FWD_PAIRS_f32 nullptr
#define FWD_PAIRS_f64 nullptr
#define FUSED_PAIRS_bf16 norm_backward_fused_pairs_rows_bf16
#define FUSED_PAIRS_f16 norm_backward_fused_pairs_rows_f16
#define FUSED_PAIRS_f32 nullptr
#define FUSED_PAIRS_f64 nullptr
#define FUSED_FINISH_f32 norm_backward_fused_finish_f32
#define FUSED_FINISH_bf16 norm_backward_fused_finish_bf16
#define FUSED_FINISH_f16 norm_backward_fused_finish_f16
#define FUSED_FINISH_f64 (void (*)(const float*, const float*, int, int64_t, double*, double*))nullptr
KN(f32, float) KN(f64, double) KN(bf16, bf16) KN(f16, f16)

// The fused backward's launch (fused_threads in norm.rs): 16 values per thread, at most 512 threads;
// its grid is min(blocks the GPU holds, ceil(rows / 16)); here the GPU is taken to hold `resident`.
inline unsigned fused_threads(size_t n, size_t elem, std::initializer_list<const void*> ptrs) {
    bool fits = elem != 8 && n > 0 && n % (16 / elem) == 0 && n <= 16 * 512;
    for (const void* p : ptrs) fits = fits && ((uintptr_t)p % 16 == 0);
    return fits ? (unsigned)std::clamp<size_t>(((n + 15) / 16 + 31) / 32 * 32, 32, 512) : 0;
}

// Stages of the row ring (ring_plan in norm.rs): `arrays` rows of n values per stage in `threads`-thread
// blocks, as many stages as `limit` bytes hold, at most RING_STAGES; 0 when none fits.
inline int ring_stages(size_t n, size_t elem, unsigned threads, size_t arrays, size_t limit, size_t* bytes) {
    size_t packs = n / (16 / elem), stage = arrays * ((packs + threads - 1) / threads) * threads * 16;
    size_t stages = std::min<size_t>(RING_STAGES, limit / stage);
    *bytes = stages * stage;
    return (int)stages;
}

// The first `len` values of a buffer, for bit-for-bit comparisons (tolerance 0).
template <typename B> std::vector<double> as_doubles(const B& buf, size_t len) {
    std::vector<double> v(len);
    for (size_t i = 0; i < len; ++i) v[i] = buf.d(i);
    return v;
}

// One forward + backward case. shift > 0 offsets x (and g) from 16-byte alignment, as a view would,
// which sends the host to the plain kernels. `resident`: blocks the GPU is taken to hold (the grid of
// the kernels whose blocks walk rows); `ring_limit`: the shared memory a block may take (an H100's 227 KiB
// gives every ring its RING_STAGES stages; smaller limits test shallower rings). `direct`: the ring
// kernels in direct mode (stages 0, MUNJA_RING_STAGES=0): the forward a block per row; the fused backward,
// which has no direct mode, a ring of one stage.
template <typename T>
void run(int64_t n, int64_t rows, bool rms, bool has_w, bool has_b, size_t shift = 0, size_t resident = 264,
         size_t ring_limit = 227 * 1024, bool direct = false) {
    typedef typename Acc<T>::type A;
    const double eps = 1e-5;
    Buf<T> x(rows * n, shift), w(n), b(n), y(rows * n), g(rows * n, shift), gx(rows * n);
    Buf<A> mean(rows), rstd(rows);
    x.fill_random(-2, 3);
    w.fill_random(0.5, 1.5);
    b.fill_random(-0.5, 0.5);
    g.fill_random(-1, 1);
    T* wp = has_w ? w.ptr() : nullptr;
    T* bp = has_b ? b.ptr() : nullptr;

    // Forward, as norm_forward.
    unsigned t = cached_row_threads(n, sizeof(T), {x.ptr(), y.ptr(), wp, bp});
    size_t ring_bytes = 0;
    int stages = t ? ring_stages(n, sizeof(T), t, 1, ring_limit, &ring_bytes) : 0;
    char fk[64];
    snprintf(fk, sizeof fk, direct && t ? "norm_forward_rows(direct)" : stages ? "norm_forward_rows(stages=%d)" : "norm_forward",
             stages);
    if (direct && t)
        emu::launch(dim3(rows), dim3(t), K<T>::fwd_rows, x.ptr(), wp, bp, y.ptr(), mean.ptr(), rstd.ptr(), rows, n, eps,
                    (int)rms, 0);
    else if (stages)
        emu::launch_shared(dim3(std::min<size_t>(rows, resident)), dim3(t), ring_bytes, K<T>::fwd_rows, x.ptr(), wp, bp,
                           y.ptr(), mean.ptr(), rstd.ptr(), rows, n, eps, (int)rms, stages);
    else emu::launch(dim3(rows), dim3(row_threads(n)), K<T>::fwd, x.ptr(), wp, bp, y.ptr(), mean.ptr(), rstd.ptr(), n, eps, (int)rms);

    std::vector<double> ry(rows * n), rmu(rows), rrs(rows), rgx(rows * n), rgw(n, 0.0), rgb(n, 0.0);
    for (int64_t r = 0; r < rows; ++r) {
        double mu = 0, v = 0;
        if (!rms) { for (int64_t j = 0; j < n; ++j) mu += x.d(r * n + j); mu /= n; }
        for (int64_t j = 0; j < n; ++j) v += (x.d(r * n + j) - mu) * (x.d(r * n + j) - mu);
        double rs = 1 / std::sqrt(v / n + eps);
        rmu[r] = mu, rrs[r] = rs;
        for (int64_t j = 0; j < n; ++j) {
            double h = (x.d(r * n + j) - mu) * rs;
            ry[r * n + j] = h * (has_w ? w.d(j) : 1) + (has_b ? b.d(j) : 0);
        }
    }
    char name[200];
    snprintf(name, sizeof name, "%s_%s n=%ld rows=%ld %s w=%d b=%d shift=%zu", fk, tname<T>(), (long)n, (long)rows,
             rms ? "rms" : "ln", has_w, has_b, shift);
    std::string base = name;
    compare(base + " y", y.ptr(), ry, tol<T>());
    compare(base + " mean", mean.ptr(), rmu, tol<A>());
    compare(base + " rstd", rstd.ptr(), rrs, tol<A>() * 10);
    if constexpr (sizeof(T) == 2) {
        if (t) {
            // The pair walk: each row's statistics and output do not depend on the block that computes
            // them, so the same bits as a row at a time on any grid; a ring one stage deeper (at least 2).
            const int ps = std::max(2, std::min(RING_STAGES, stages + 1));
            size_t packs = n / (16 / sizeof(T)), stage = (packs + t - 1) / t * t * 16;
            Buf<T> y2(rows * n);
            Buf<A> mean2(rows), rstd2(rows);
            emu::launch_shared(dim3(std::min<size_t>(rows, resident)), dim3(t), stage * ps, K<T>::fwd_pairs, x.ptr(), wp,
                               bp, y2.ptr(), mean2.ptr(), rstd2.ptr(), rows, n, eps, (int)rms, ps);
            char pn[200];
            snprintf(pn, sizeof pn, "norm_forward_pairs_rows(stages=%d)_%s n=%ld rows=%ld %s w=%d b=%d", ps, tname<T>(),
                     (long)n, (long)rows, rms ? "rms" : "ln", has_w, has_b);
            std::string pb = pn;
            compare(pb + " y = one row at a time", y2.ptr(), as_doubles(y, rows * n), 0.0);
            compare(pb + " mean = one row at a time", mean2.ptr(), as_doubles(mean, rows), 0.0);
            compare(pb + " rstd = one row at a time", rstd2.ptr(), as_doubles(rstd, rows), 0.0);
        }
    }

    // Backward, as norm_backward (stats from the forward above, as autograd passes them).
    for (int64_t r = 0; r < rows; ++r) {
        double mu = to_d(mean[r]), rs = to_d(rstd[r]), sd = 0, sdh = 0;
        for (int64_t j = 0; j < n; ++j) {
            double h = (x.d(r * n + j) - mu) * rs, gv = g.d(r * n + j), d = gv * (has_w ? w.d(j) : 1);
            sd += d, sdh += d * h;
            rgw[j] += gv * h, rgb[j] += gv;
        }
        for (int64_t j = 0; j < n; ++j) {
            double h = (x.d(r * n + j) - mu) * rs, d = g.d(r * n + j) * (has_w ? w.d(j) : 1);
            rgx[r * n + j] = rs * (d - (rms ? 0 : sd / n) - h * sdh / n);
        }
    }
    Buf<T> gw(n), gb(n);
    gw.fill(777), gb.fill(777);  // must be overwritten where requested
    unsigned ct = cached_row_threads(n, sizeof(T), {x.ptr(), g.ptr(), gx.ptr(), wp});
    unsigned ft = fused_threads(n, sizeof(T), {x.ptr(), g.ptr(), gx.ptr(), wp});
    const char* bk;
    size_t fused_bytes = 0;
    // The fused backward has no direct mode: MUNJA_RING_STAGES=0 gives it one stage (ring.rs).
    int fused_stages = ft ? ring_stages(n, sizeof(T), ft, 2, direct ? SIZE_MAX : ring_limit, &fused_bytes) : 0;
    if (direct && fused_stages) fused_bytes /= fused_stages, fused_stages = 1;
    char fused_name[80];
    snprintf(fused_name, sizeof fused_name, "norm_backward_fused_rows(stages=%d)+fused_finish", fused_stages);
    if (fused_stages && rows > 0 && (has_w || has_b)) {
        bk = fused_name;
        size_t blocks = std::max<size_t>(1, std::min<size_t>(resident, (rows + 15) / 16));
        Buf<float> pw(blocks * n), pb(blocks * n);
        emu::launch_shared(dim3(blocks), dim3(ft), fused_bytes, K<T>::fused, x.ptr(), wp, mean.ptr(), rstd.ptr(), g.ptr(),
                           gx.ptr(), rows, n, (int)rms, pw.ptr(), pb.ptr(), fused_stages);
        emu::launch(dim3((n + 31) / 32), dim3(32, FINISH_ROWS), K<T>::fused_finish, pw.ptr(), pb.ptr(), (int)blocks, n,
                    has_w ? gw.ptr() : nullptr, has_b ? gb.ptr() : nullptr);
        if constexpr (sizeof(T) == 2) {
            // The pair walk on the same grid: the same rows in the same order, the same sums in the same
            // order, so the same bits as a row at a time; its ring one stage deeper (at least 2).
            const int ps = std::min(RING_STAGES, fused_stages + 1);
            Buf<T> gx2(rows * n);
            Buf<float> pw2(blocks * n), pb2(blocks * n);
            emu::launch_shared(dim3(blocks), dim3(ft), fused_bytes / fused_stages * ps, K<T>::fused_pairs, x.ptr(), wp,
                               mean.ptr(), rstd.ptr(), g.ptr(), gx2.ptr(), rows, n, (int)rms, pw2.ptr(), pb2.ptr(), ps);
            char pn[200];
            snprintf(pn, sizeof pn, "norm_backward_fused_pairs_rows(stages=%d)_%s n=%ld rows=%ld %s w=%d b=%d", ps,
                     tname<T>(), (long)n, (long)rows, rms ? "rms" : "ln", has_w, has_b);
            compare(std::string(pn) + " gx = one row at a time", gx2.ptr(), as_doubles(gx, rows * n), 0.0);
            compare(std::string(pn) + " pw = one row at a time", pw2.ptr(), as_doubles(pw, blocks * n), 0.0);
            compare(std::string(pn) + " pb = one row at a time", pb2.ptr(), as_doubles(pb, blocks * n), 0.0);
        }
    } else {
        if (ct) {
            bk = "norm_backward_x_rows";
            emu::launch(dim3(rows), dim3(ct), K<T>::bwd_rows, x.ptr(), wp, mean.ptr(), rstd.ptr(), g.ptr(), gx.ptr(), n, (int)rms);
        } else {
            bk = "norm_backward_x";
            emu::launch(dim3(rows), dim3(row_threads(n)), K<T>::bwd, x.ptr(), wp, mean.ptr(), rstd.ptr(), g.ptr(), gx.ptr(), n,
                        (int)rms);
        }
        if (has_w || has_b) {
            bk = ct ? "norm_backward_x_rows+wb_partial+finish" : "norm_backward_x+wb_partial+finish";
            size_t slices = std::clamp<size_t>((rows + 31) / 32, 1, 256);
            Buf<double> pw(slices * n), pb(slices * n);
            emu::launch(dim3((n + 31) / 32, slices), dim3(32, 8), K<T>::partial, x.ptr(), mean.ptr(), rstd.ptr(), g.ptr(), rows,
                        n, pw.ptr(), pb.ptr());
            emu::launch(dim3((n + 31) / 32), dim3(32, FINISH_ROWS), K<T>::finish, pw.ptr(), pb.ptr(), (int)slices, n,
                        has_w ? gw.ptr() : nullptr, has_b ? gb.ptr() : nullptr);
        }
    }
    snprintf(name, sizeof name, "%s_%s n=%ld rows=%ld %s w=%d b=%d shift=%zu", bk, tname<T>(), (long)n, (long)rows,
             rms ? "rms" : "ln", has_w, has_b, shift);
    base = name;
    compare(base + " gx", gx.ptr(), rgx, tol<T>());
    std::vector<double> untouched(n, to_d(from_d<T>(777)));
    compare(base + " gw", gw.ptr(), has_w ? rgw : untouched, tol<T>());
    compare(base + " gb", gb.ptr(), has_b ? rgb : untouched, tol<T>());
}

template <typename T> void all() {
    for (int rms = 0; rms < 2; ++rms) {
        for (int64_t n : {64, 100, 256, 1000, 1001, 4096}) run<T>(n, n > 2000 ? 3 : 6, rms, true, !rms);
        run<T>(256, 5, rms, true, false);
        run<T>(256, 5, rms, false, true);
        run<T>(100, 7, rms, false, false);
        run<T>(1000, 4, rms, true, true, 1);   // unaligned x and g: plain kernels + wb_partial
        run<T>(72, 70, rms, true, true, 1);    // 3 row slices in wb_partial
        run<T>(10000, 2, rms, true, true);     // past the cached limit: 1024 threads
    }
    run<T>(64, 300, 0, true, true);        // 19 fused blocks, each walking 15-16 rows (prefetching the next)
    run<T>(64, 1100, 0, true, true);       // 69 fused blocks: the finish's 32 thread rows fold 2-3 partials each
    run<T>(72, 1100, 1, true, true, 1);    // 35 row slices of wb_partial: the finish folds 1-2 a thread row
    run<T>(128, 37, 0, true, true, 0, 3);  // 3 fused blocks over 37 rows: uneven last rows
    run<T>(8192, 2, 0, true, true);        // the widest fused row: 512 threads
    run<T>(4000, 3, 1, true, false);       // columns not a multiple of the block's 16-value stride
    // Rings of 1, 2 and 3 stages walking more rows than they hold: the forward's grid is 4 blocks here
    // (its stage is one row, the fused backward's two: limits of 2 and 4 rows give it 1 and 2 stages).
    size_t stage = 1024 * sizeof(T);
    for (size_t st = 1; st <= 3; ++st) run<T>(1024, 19, 0, true, true, 0, 4, st * stage);
    for (size_t st = 2; st <= 6; st += 2) run<T>(1024, 70, 1, true, false, 0, 3, st * stage);
    run<T>(96, 23, 1, true, false, 0, 2);  // one warp per row (3 packs each for 16-bit types), 2 blocks
    run<T>(16384, 2, 0, true, true, 0, 1, 64 * 1024);  // past the cached limit: the plain kernels
    // Direct mode: 3 fused blocks over 37 rows; one warp per row; the widest rows.
    run<T>(128, 37, 0, true, true, 0, 3, 0, true);
    run<T>(96, 23, 1, true, false, 0, 2, 0, true);
    run<T>(8192, 3, 0, true, true, 0, 2, 0, true);
}

int main() {
    all<float>();
    all<bf16>();
    all<double>();
    all<f16>();
    return finish("norm");
}
