// kernels/loss.cu on the emulator: fused cross-entropy forward and backward, launched as
// src/backend/cuda/norm.rs does (one block of row_threads(C) per row; the forward's per-row (max, sum)
// feed the backward), against double references.
#include "cuda_emu.h"
#include "../loss.cu"
#include "check.h"
using namespace chk;

template <typename T> struct K;
#define KL(S, T) \
    template <> struct K<T> { static constexpr auto fwd = cross_entropy_forward_##S, bwd = cross_entropy_backward_##S; };
KL(f32, float) KL(f64, double) KL(bf16, bf16) KL(f16, f16)

// Rows: 0 plain; 1 ignored; 2 target out of range (NaN loss, zero grad row); 3 some -inf logits; 4 target
// -3 (out of range); 5 all -inf (NaN, as log(0) - -inf - -inf); 6 one NaN logit; further rows plain. `special` = false
// keeps every row plain.
template <typename T> void run(int64_t c, int64_t rows, bool special) {
    const int64_t ignore = -100;
    Buf<T> x(rows * c), g(rows), loss(rows), dx(rows * c);
    x.fill_random(-5, 5);
    g.fill_random(0.1, 2);
    std::vector<int64_t> t(rows);
    for (int64_t r = 0; r < rows; ++r) t[r] = (int64_t)(uniform(0, 1) * c) % c;
    if (special) {
        if (rows > 1) t[1] = ignore;
        if (rows > 2) t[2] = c;
        if (rows > 3) {
            for (int64_t j = 0; j < c; j += 2) x[3 * c + j] = from_d<T>(-INFINITY);
            t[3] = 1;
        }
        if (rows > 4) t[4] = -3;
        if (rows > 5) for (int64_t j = 0; j < c; ++j) x[5 * c + j] = from_d<T>(-INFINITY);
        if (rows > 6) x[6 * c + c / 2] = from_d<T>(NAN);  // NaN loss, NaN gradient row
    }
    unsigned threads = row_threads(c);
    typedef typename Acc<T>::type A;
    Buf<A> stats(2 * rows);  // (max, sum) per row, from the forward to the backward
    // norm.rs caps the forward at CE_FORWARD_THREADS (256) threads per row.
    emu::launch(dim3(rows), dim3(std::min(threads, 256u)), K<T>::fwd, x.ptr(), t.data(), loss.ptr(), stats.ptr(), c, ignore);
    emu::launch(dim3(rows), dim3(threads), K<T>::bwd, x.ptr(), t.data(), (const A*)stats.ptr(), g.ptr(), dx.ptr(), c,
                ignore);

    std::vector<double> rl(rows), rdx(rows * c);
    for (int64_t r = 0; r < rows; ++r) {
        int64_t tv = t[r];
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < c; ++j) m = std::max(m, x.d(r * c + j));
        for (int64_t j = 0; j < c; ++j) s += m == -INFINITY ? 0 : std::exp(x.d(r * c + j) - m);
        bool skip = tv == ignore || tv < 0 || tv >= c;
        rl[r] = tv == ignore ? 0 : skip ? NAN : m == -INFINITY ? NAN : std::log(s) + m - x.d(r * c + tv);
        for (int64_t j = 0; j < c; ++j) {
            double p = m == -INFINITY ? NAN : std::exp(x.d(r * c + j) - m) / s * g.d(r);
            rdx[r * c + j] = skip ? 0 : j == tv ? p - g.d(r) : p;
        }
    }
    char name[160];
    snprintf(name, sizeof name, "cross_entropy_%%s_%s C=%ld rows=%ld threads=%u%s", tname<T>(), (long)c, (long)rows,
             threads, special ? " special-rows" : "");
    char fn[200], bn[200];
    snprintf(fn, sizeof fn, name, "forward");
    snprintf(bn, sizeof bn, name, "backward");
    compare(fn, loss.ptr(), rl, tol<T>());
    compare(bn, dx.ptr(), rdx, tol<T>());
}

template <typename T> void all() {
    run<T>(10, 3, false);
    run<T>(100, 6, true);
    run<T>(1000, 7, true);
    run<T>(1001, 6, true);    // odd C: rows start at every alignment (scalar heads and tails)
    run<T>(50257, 3, false);  // GPT-2 vocabulary: 1024 threads, unaligned rows after the first
    run<T>(50257, 6, true);
}

int main() {
    all<float>();
    all<bf16>();
    all<double>();
    all<f16>();
    return finish("loss");
}
