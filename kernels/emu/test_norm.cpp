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
        static constexpr auto fwd_rows = norm_forward_rows_##S, fwd = norm_forward_##S; \
        static constexpr auto bwd_rows = norm_backward_x_rows_##S, bwd = norm_backward_x_##S; \
        static constexpr auto partial = norm_backward_wb_partial_##S, finish = norm_backward_wb_finish_##S; \
        static constexpr auto fused = FUSED_##S; };
#define FUSED_f32 norm_backward_fused_rows_f32
#define FUSED_bf16 norm_backward_fused_rows_bf16
#define FUSED_f16 norm_backward_fused_rows_f16
#define FUSED_f64 (void (*)(const double*, const double*, const double*, const double*, const double*, double*, \
                            int64_t, int64_t, int, double*, double*))nullptr
KN(f32, float) KN(f64, double) KN(bf16, bf16) KN(f16, f16)

constexpr size_t FUSED_BLOCKS = 264;

// One forward + backward case. shift > 0 offsets x (and g) from 16-byte alignment, as a view would,
// which sends the host to the plain kernels.
template <typename T>
void run(int64_t n, int64_t rows, bool rms, bool has_w, bool has_b, size_t shift = 0) {
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
    unsigned t = cached_row_threads(n, sizeof(T), {x.ptr(), y.ptr()});
    const char* fk = t ? "norm_forward_rows" : "norm_forward";
    if (t) emu::launch(dim3(rows), dim3(t), K<T>::fwd_rows, x.ptr(), wp, bp, y.ptr(), mean.ptr(), rstd.ptr(), n, eps, (int)rms);
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
    unsigned ct = cached_row_threads(n, sizeof(T), {x.ptr(), g.ptr(), gx.ptr()});
    const char* bk;
    if (ct && !std::is_same_v<T, double> && rows > 0 && (has_w || has_b)) {
        bk = "norm_backward_fused_rows+wb_finish";
        size_t blocks = std::min<size_t>(rows, FUSED_BLOCKS);
        Buf<double> pw(blocks * n), pb(blocks * n);
        emu::launch(dim3(blocks), dim3(ct), K<T>::fused, x.ptr(), wp, mean.ptr(), rstd.ptr(), g.ptr(), gx.ptr(), rows, n,
                    (int)rms, pw.ptr(), pb.ptr());
        emu::launch(dim3(grid_for(n, 256)), dim3(256), K<T>::finish, pw.ptr(), pb.ptr(), (int)blocks, n,
                    has_w ? gw.ptr() : nullptr, has_b ? gb.ptr() : nullptr);
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
            emu::launch(dim3(grid_for(n, 256)), dim3(256), K<T>::finish, pw.ptr(), pb.ptr(), (int)slices, n,
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
    run<T>(64, 300, 0, true, true);  // more rows than FUSED_BLOCKS: fused blocks stride over rows
}

int main() {
    all<float>();
    all<bf16>();
    all<double>();
    all<f16>();
    return finish("norm");
}
