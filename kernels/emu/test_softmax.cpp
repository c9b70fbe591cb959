// kernels/softmax.cu on the emulator: softmax / log-softmax forward (register-cached and online paths,
// chosen as src/backend/cuda/softmax.rs does) and backward, against double references.
#include "cuda_emu.h"
#include "../softmax.cu"
#include "check.h"
using namespace chk;

template <typename T> struct K;
#define KS(S, T) \
    template <> struct K<T> { \
        static constexpr auto rows = softmax_rows_##S, plain = softmax_##S, bwd = softmax_backward_##S, \
                              bwd_rows = softmax_backward_rows_##S; };
KS(f32, float) KS(f64, double) KS(bf16, bf16) KS(f16, f16)

// Forward over `rows` rows of n; x starts `shift` elements past an aligned address (a view's offset).
// mask: row 0 gets some -inf entries and, with 3+ rows, row 1 is all -inf (NaN output, as on the CPU).
// t > 0: the causal mask of t-row score matrices, row r seeing its first min(n, r % t + off + 1) columns.
// The ring kernel's launch (softmax.rs): as many blocks as the GPU holds (here `resident`), up to
// RING_STAGES rows of shared memory each within `ring_limit` bytes; 0 stages falls back to the plain kernel.
// direct: the register-cached kernel in direct mode (stages 0: a block per row, no ring).
template <typename T> void forward(int64_t n, int64_t rows, int log_, size_t shift, bool mask, int64_t t = 0,
                                   int64_t off = 0, size_t resident = 1000, size_t ring_limit = 227 * 1024,
                                   bool direct = false) {
    Buf<T> x(rows * n, shift), y(rows * n);
    x.fill_random(-4, 4);
    if (mask) {
        for (int64_t j = 0; j < n; j += 3) x[j] = from_d<T>(-INFINITY);
        if (rows >= 3) for (int64_t j = 0; j < n; ++j) x[n + j] = from_d<T>(-INFINITY);
    }
    unsigned th = cached_row_threads(n, sizeof(T), {x.ptr(), y.ptr()});
    size_t stage = th ? ((n / (16 / sizeof(T)) + th - 1) / th) * th * 16 : 0;
    int stages = th ? (int)std::min<size_t>(RING_STAGES, ring_limit / stage) : 0;
    char kn[48];
    snprintf(kn, sizeof kn, direct && th ? "softmax_rows(direct)" : stages ? "softmax_rows(stages=%d)" : "softmax", stages);
    if (direct && th)
        emu::launch(dim3(rows), dim3(th), K<T>::rows, x.ptr(), y.ptr(), rows, n, log_, t, off, 0);
    else if (stages)
        emu::launch_shared(dim3(std::min<size_t>(rows, resident)), dim3(th), stages * stage, K<T>::rows, x.ptr(), y.ptr(),
                           rows, n, log_, t, off, stages);
    else emu::launch(dim3(rows), dim3(row_threads(n)), K<T>::plain, x.ptr(), y.ptr(), n, log_, t, off);
    std::vector<double> ref(rows * n);
    for (int64_t r = 0; r < rows; ++r) {
        int64_t lim = t > 0 ? std::min(n, r % t + off + 1) : n;
        double m = -INFINITY, s = 0;
        for (int64_t j = 0; j < lim; ++j) m = std::max(m, x.d(r * n + j));
        for (int64_t j = 0; j < lim; ++j) s += m == -INFINITY ? 0 : std::exp(x.d(r * n + j) - m);
        for (int64_t j = 0; j < n; ++j) {
            double v = x.d(r * n + j);
            if (m == -INFINITY) ref[r * n + j] = NAN;
            else if (j >= lim) ref[r * n + j] = log_ ? -INFINITY : 0;
            else ref[r * n + j] = log_ ? v - m - std::log(s) : std::exp(v - m) / s;
        }
    }
    char name[160];
    snprintf(name, sizeof name, "%s_%s n=%ld rows=%ld log=%d shift=%zu%s causal t=%ld off=%ld", kn, tname<T>(), (long)n,
             (long)rows, log_, shift, mask ? " masked" : "", (long)t, (long)off);
    compare(name, y.ptr(), ref, tol<T>());
}

// `ring_limit` > 0: the ring kernel (softmax_backward_rows) as softmax.rs launches it when the rows fit,
// with `resident` blocks and as many of RING_STAGES stages (y and g rows each) as the limit holds.
template <typename T> void backward(int64_t n, int64_t rows, int log_, size_t resident = 0, size_t ring_limit = 0,
                                    bool direct = false) {
    Buf<T> y(rows * n), g(rows * n), dx(rows * n);
    g.fill_random(-1, 1);
    for (int64_t r = 0; r < rows; ++r) {  // y: a (log-)softmax of random logits
        std::vector<double> e(n);
        double s = 0;
        for (auto& v : e) s += (v = std::exp(uniform(-3, 3)));
        for (int64_t j = 0; j < n; ++j) y[r * n + j] = from_d<T>(log_ ? std::log(e[j] / s) : e[j] / s);
    }
    unsigned th = ring_limit ? cached_row_threads(n, sizeof(T), {y.ptr(), g.ptr(), dx.ptr()}) : 0;
    size_t stage = th ? 2 * ((n / (16 / sizeof(T)) + th - 1) / th) * th * 16 : 0;
    int stages = th ? (int)std::min<size_t>(RING_STAGES, ring_limit / stage) : 0;
    if (direct && th)
        emu::launch(dim3(rows), dim3(th), K<T>::bwd_rows, y.ptr(), g.ptr(), dx.ptr(), rows, n, log_, 0);
    else if (stages)
        emu::launch_shared(dim3(std::min<size_t>(rows, resident)), dim3(th), stages * stage, K<T>::bwd_rows, y.ptr(), g.ptr(),
                           dx.ptr(), rows, n, log_, stages);
    else emu::launch(dim3(rows), dim3(row_threads(n)), K<T>::bwd, y.ptr(), g.ptr(), dx.ptr(), n, log_);
    std::vector<double> ref(rows * n);
    for (int64_t r = 0; r < rows; ++r) {
        double acc = 0;
        for (int64_t j = 0; j < n; ++j) acc += log_ ? g.d(r * n + j) : g.d(r * n + j) * y.d(r * n + j);
        for (int64_t j = 0; j < n; ++j) {
            double yv = y.d(r * n + j), gv = g.d(r * n + j);
            ref[r * n + j] = log_ ? gv - std::exp(yv) * acc : yv * (gv - acc);
        }
    }
    char name[160];
    snprintf(name, sizeof name, "softmax_backward%s_%s n=%ld rows=%ld log=%d stages=%d", direct && th ? "_rows(direct)" : stages ? "_rows" : "",
             tname<T>(), (long)n, (long)rows, log_, stages);
    compare(name, dx.ptr(), ref, tol<T>());
}

template <typename T> void all() {
    for (int log_ = 0; log_ < 2; ++log_) {
        for (int64_t n : {64, 100, 1000, 1001, 4096, 8192})
            forward<T>(n, n > 2000 ? 3 : 5, log_, 0, false);
        forward<T>(256, 4, log_, 0, true);    // cached path, masked rows
        forward<T>(1000, 4, log_, 1, true);   // unaligned start: online path with a scalar head
        forward<T>(1000, 3, log_, 3, false);
        forward<T>(10000, 2, log_, 0, false); // past the cached limit: 1024 threads
        // Causal masks: square (off 0) and with keys ahead of the queries (a cache, off > 0), on both paths;
        // with `mask`, row 1 sees only -inf (NaN throughout) and row 0 some -inf.
        forward<T>(256, 12, log_, 0, true, 6, 0);
        forward<T>(64, 8, log_, 0, false, 8, 0);
        forward<T>(100, 9, log_, 0, false, 3, 95);
        forward<T>(1000, 7, log_, 1, true, 7, 500);
        forward<T>(10000, 3, log_, 0, false, 3, 4096);
        // Blocks walking rows through rings of 1 to RING_STAGES stages (3 blocks over 40 rows), causal included.
        for (size_t st : {1, 2, 3, 5, RING_STAGES}) {
            forward<T>(256, 40, log_, 0, true, 0, 0, 3, st * 256 * sizeof(T));
            forward<T>(256, 40, log_, 0, false, 5, 0, 3, st * 256 * sizeof(T));
        }
        for (int64_t n : {64, 100, 1001, 4096}) backward<T>(n, 4, log_);
        // The ring kernel: rings of 1 to RING_STAGES stages, 3 blocks over 31 rows; one-block-per-row widths.
        for (size_t st : {1, 2, 3, 5, RING_STAGES}) backward<T>(256, 31, log_, 3, st * 2 * 256 * sizeof(T));
        for (int64_t n : {64, 4096, 8192}) backward<T>(n, 5, log_, 1000, 227 * 1024);
        // Direct mode (MUNJA_RING_STAGES=0): a block per row, each with 1, 2 and all of its packs a thread,
        // masked or not.
        for (int64_t n : {256, 512, 4096, 8192}) {
            forward<T>(n, 4, log_, 0, true, 0, 0, 1000, 0, true);
            forward<T>(n, 9, log_, 0, false, 3, n / 3, 1000, 0, true);
            backward<T>(n, 4, log_, 1000, 227 * 1024, true);
        }
    }
}

int main() {
    all<float>();
    all<bf16>();
    all<double>();
    all<f16>();
    return finish("softmax");
}
