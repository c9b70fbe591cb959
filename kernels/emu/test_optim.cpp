// kernels/optim.cu on the emulator: adam_update (Adam with L2 weight decay, AdamW with decoupled decay) and
// sgd_update (plain, momentum with dampening, Nesterov, weight decay), launched for several steps as
// src/backend/cuda/optim.rs does (bias corrections and 1 - dampening on the host, in f64), against f64
// references of the formulas in src/optim/{adam,sgd}.rs (PyTorch's), and Adam bit for bit against the CPU
// backend's loop (src/backend/cpu/optim.rs) run in T. The list kernels (src/backend/cuda/lists.rs):
// sum_squares, clip_scale, cast_list, adam_update_list and sgd_update_list over lists with empty runs, runs of several
// chunks and more runs than one launch holds, bit for bit against their one-tensor counterparts.
#include "cuda_emu.h"
#include "../optim.cu"
#include "check.h"
using namespace chk;

constexpr unsigned THREADS = 256;
constexpr int STEPS = 5;

template <typename T> struct K;
#define KO(S, T) \
    template <> struct K<T> { \
        static constexpr auto adam = adam_update_##S, adam_list = adam_update_list_##S, sgd = sgd_update_##S, \
                              sgd_list = sgd_update_list_##S; \
        static constexpr auto sum_squares = sum_squares_##S, clip_scale = clip_scale_##S; };
KO(f32, float) KO(f64, double)
template <> struct K<bf16> { static constexpr auto sum_squares = sum_squares_bf16, clip_scale = clip_scale_bf16; };
template <> struct K<f16> { static constexpr auto sum_squares = sum_squares_f16, clip_scale = clip_scale_f16; };

struct AdamP { double lr, b1, b2, eps, wd; bool decoupled; };

// `STEPS` steps of Adam/AdamW on n parameters, a fresh gradient each step; p, m and v compared after
// every step. Slightly unaligned buffers, as parameters at an offset in a shared allocation would be.
template <typename T> void adam(size_t n, AdamP h) {
    Buf<T> p(n, 1), g(n), m(n), v(n);
    p.fill_random(-1, 1);
    m.fill(0), v.fill(0);  // Adam's state starts at zero (zeros_like)
    std::vector<double> rp(n), rm(n, 0.0), rv(n, 0.0);
    std::vector<T> cp(n), cm(n, T(0)), cv(n, T(0));  // the CPU backend's loop, in T
    for (size_t i = 0; i < n; ++i) rp[i] = p.d(i), cp[i] = p[i];
    for (int t = 1; t <= STEPS; ++t) {
        g.fill_random(-0.5, 0.5);
        if (t == 3) g[0] = 0;  // a zero gradient: v may stay tiny, eps matters
        // adam_update's host constants.
        double bc1 = 1 - std::pow(h.b1, t), bc2 = 1 - std::pow(h.b2, t);
        double step_size = h.lr / bc1, bc2_sqrt = std::sqrt(bc2), decay = 1 - h.lr * h.wd;
        emu::launch(dim3(grid_for(n, THREADS)), dim3(THREADS), K<T>::adam, p.ptr(), g.ptr(), m.ptr(), v.ptr(), (int64_t)n,
                    h.b1, h.b2, h.eps, h.wd, step_size, bc2_sqrt, decay, (int)h.decoupled);
        // torch.optim.Adam / AdamW, in f64.
        for (size_t i = 0; i < n; ++i) {
            double gi = g.d(i);
            if (h.decoupled) rp[i] *= 1 - h.lr * h.wd;
            else gi += h.wd * rp[i];
            rm[i] = h.b1 * rm[i] + (1 - h.b1) * gi;
            rv[i] = h.b2 * rv[i] + (1 - h.b2) * gi * gi;
            double mhat = rm[i] / bc1, vhat = rv[i] / bc2;
            // PyTorch divides by (sqrt(v) / sqrt(bc2) + eps), not sqrt(vhat) + eps; the two agree exactly.
            rp[i] -= h.lr * mhat / (std::sqrt(vhat) + h.eps);
        }
        // src/backend/cpu/optim.rs adam_chunk: constants rounded to T, one branch-free loop (decay 1 or
        // l2 0). Same operations in the same order, and x86-64 without -mfma cannot fuse a multiply-add, so
        // here the kernel must agree bit for bit. (On the device nvcc fuses by default, --fmad=true, so
        // there the two agree to rounding only.)
        T b1 = h.b1, b2 = h.b2, omb1 = 1 - h.b1, omb2 = 1 - h.b2, eps = h.eps, ss = step_size, bs = bc2_sqrt;
        T dc = h.decoupled ? (T)decay : (T)1, l2 = h.decoupled ? (T)0 : (T)h.wd;
        for (size_t i = 0; i < n; ++i) {
            T gi = g[i] + l2 * cp[i];
            cm[i] = b1 * cm[i] + omb1 * gi;
            cv[i] = b2 * cv[i] + omb2 * gi * gi;
            cp[i] = cp[i] * dc - ss * (cm[i] / (std::sqrt(cv[i]) / bs + eps));
        }
        char name[160];
        snprintf(name, sizeof name, "adam_update_%s %s n=%zu lr=%g wd=%g step %d", tname<T>(), h.decoupled ? "AdamW" : "Adam",
                 n, h.lr, h.wd, t);
        std::string base = name;
        compare(base + " p", p.ptr(), rp, tol<T>());
        compare(base + " m", m.ptr(), rm, tol<T>());
        compare(base + " v", v.ptr(), rv, tol<T>());
        std::vector<double> cpd(n);
        for (size_t i = 0; i < n; ++i) cpd[i] = cp[i];
        compare(base + " p == CPU backend", p.ptr(), cpd, 0);
    }
}

struct SgdP { double lr, mom, damp, wd; bool nesterov; };

// `STEPS` steps of SGD; with momentum the first step initialises the buffer (first = 1), as Sgd::step.
template <typename T> void sgd(size_t n, SgdP h) {
    bool has_buf = h.mom != 0;
    Buf<T> p(n), g(n), b(n);
    p.fill_random(-1, 1);
    b.fill(0);  // zeros_like: the first step must overwrite it, not blend with it
    std::vector<double> rp(n), rb(n, 0.0);
    for (size_t i = 0; i < n; ++i) rp[i] = p.d(i);
    for (int t = 1; t <= STEPS; ++t) {
        g.fill_random(-0.5, 0.5);
        emu::launch(dim3(grid_for(n, THREADS)), dim3(THREADS), K<T>::sgd, p.ptr(), g.ptr(), has_buf ? b.ptr() : nullptr,
                    (int64_t)n, h.lr, h.mom, 1 - h.damp, h.wd, (int)h.nesterov, (int)(t == 1));
        // torch.optim.SGD, in f64.
        for (size_t i = 0; i < n; ++i) {
            double gi = g.d(i) + h.wd * rp[i];
            if (has_buf) {
                rb[i] = t == 1 ? gi : h.mom * rb[i] + (1 - h.damp) * gi;
                gi = h.nesterov ? gi + h.mom * rb[i] : rb[i];
            }
            rp[i] -= h.lr * gi;
        }
        char name[160];
        snprintf(name, sizeof name, "sgd_update_%s n=%zu mom=%g damp=%g wd=%g nesterov=%d step %d", tname<T>(), n, h.mom,
                 h.damp, h.wd, (int)h.nesterov, t);
        std::string base = name;
        compare(base + " p", p.ptr(), rp, tol<T>());
        if (has_buf) compare(base + " buf", b.ptr(), rb, tol<T>());
    }
}

template <typename T> void all() {
    adam<T>(1003, {1e-3, 0.9, 0.999, 1e-8, 0.0, false});   // torch.optim.Adam defaults
    adam<T>(1003, {1e-2, 0.9, 0.999, 1e-8, 0.1, false});   // L2 weight decay through the gradient
    adam<T>(1003, {1e-2, 0.9, 0.999, 1e-8, 0.01, true});   // AdamW
    adam<T>(300, {3e-2, 0.8, 0.99, 1e-6, 0.5, true});      // AdamW, strong decay, other betas
    sgd<T>(1003, {0.1, 0, 0, 0, false});                   // plain: no buffer
    sgd<T>(1003, {0.1, 0, 0, 0.05, false});                // plain with weight decay
    sgd<T>(1003, {0.05, 0.9, 0.1, 0.01, false});           // momentum, dampening, weight decay
    sgd<T>(1003, {0.05, 0.9, 0, 0, true});                 // Nesterov
    sgd<T>(300, {0.05, 0.5, 0, 0.1, true});                // Nesterov with weight decay
}

// sum_squares over a list of tensors of sizes `sizes`, split into launches of TENSOR_LIST_MAX as
// src/backend/cuda/lists.rs does, partials summed in order on the host, against an f64 reference.
template <typename T> void sum_squares(std::vector<size_t> sizes) {
    typedef typename Acc<T>::type A;
    std::vector<Buf<T>> xs;
    for (size_t n : sizes) {
        xs.emplace_back(n);
        xs.back().fill_random(-2, 2);
    }
    double want = 0;
    for (auto& x : xs)
        for (size_t j = 0; j < x.n; ++j) {
            A v = to_acc<A>(x[j]);
            want += (double)(v * v);
        }
    size_t chunks = 0;
    for (size_t n : sizes) chunks += (n + TENSOR_LIST_CHUNK - 1) / TENSOR_LIST_CHUNK;
    std::vector<double> partial(chunks, NAN);
    size_t base = 0;
    for (size_t i0 = 0; i0 < xs.size(); i0 += TENSOR_LIST_MAX) {
        TensorList tl{};
        int64_t blocks = 0;
        for (size_t i = i0; i < std::min(xs.size(), i0 + TENSOR_LIST_MAX); ++i) {
            if (sizes[i] == 0) continue;  // the host leaves empty tensors out
            tl.ptr[tl.chunks.count] = xs[i].ptr();
            tl.chunks.len[tl.chunks.count] = (int64_t)sizes[i];
            tl.chunks.first_chunk[tl.chunks.count++] = blocks;
            blocks += (int64_t)((sizes[i] + TENSOR_LIST_CHUNK - 1) / TENSOR_LIST_CHUNK);
        }
        tl.chunks.first_chunk[tl.chunks.count] = blocks;
        if (blocks == 0) continue;
        emu::launch(dim3(blocks), dim3(THREADS), K<T>::sum_squares, tl, partial.data(), (int64_t)base);
        base += blocks;
    }
    double got = 0;
    for (double p : partial) got += p;
    char name[120];
    snprintf(name, sizeof name, "sum_squares_%s %zu tensors, %zu chunks", tname<T>(), sizes.size(), chunks);
    compare(name, &got, std::vector<double>{want}, 1e-12);
}

// adam_update_list over tensors of sizes `sizes` (launches of TENSOR_LIST_MAX, empty ones left out, as
// src/backend/cuda/lists.rs adam_update_many does) against adam_update on copies of them, one launch
// each: every element must agree bit for bit after each of STEPS steps.
template <typename T> void adam_list(std::vector<size_t> sizes, AdamP h) {
    struct Param { Buf<T> p, g, m, v, p1, m1, v1; };
    std::vector<std::unique_ptr<Param>> ts;
    for (size_t n : sizes) {
        ts.push_back(std::unique_ptr<Param>(new Param{Buf<T>(n), Buf<T>(n), Buf<T>(n), Buf<T>(n), Buf<T>(n), Buf<T>(n), Buf<T>(n)}));
        Param& q = *ts.back();
        q.p.fill_random(-1, 1), q.m.fill(0), q.v.fill(0), q.m1.fill(0), q.v1.fill(0);
        for (size_t j = 0; j < n; ++j) q.p1[j] = q.p[j];
    }
    for (int t = 1; t <= STEPS; ++t) {
        double bc1 = 1 - std::pow(h.b1, t), bc2 = 1 - std::pow(h.b2, t);
        double step_size = h.lr / bc1, bc2_sqrt = std::sqrt(bc2), decay = 1 - h.lr * h.wd;
        for (size_t i = 0; i < ts.size(); ++i) {
            Param& q = *ts[i];
            q.g.fill_random(-0.5, 0.5);
            if (sizes[i] == 0) continue;
            emu::launch(dim3(grid_for(sizes[i], THREADS)), dim3(THREADS), K<T>::adam, q.p1.ptr(), q.g.ptr(), q.m1.ptr(),
                        q.v1.ptr(), (int64_t)sizes[i], h.b1, h.b2, h.eps, h.wd, step_size, bc2_sqrt, decay, (int)h.decoupled);
        }
        for (size_t i0 = 0; i0 < ts.size(); i0 += TENSOR_LIST_MAX) {
            AdamList l{};
            int64_t blocks = 0;
            for (size_t i = i0; i < std::min(ts.size(), i0 + TENSOR_LIST_MAX); ++i) {
                if (sizes[i] == 0) continue;
                Param& q = *ts[i];
                l.p[l.chunks.count] = q.p.ptr(), l.g[l.chunks.count] = q.g.ptr(), l.m[l.chunks.count] = q.m.ptr(), l.v[l.chunks.count] = q.v.ptr();
                l.chunks.len[l.chunks.count] = (int64_t)sizes[i];
                l.chunks.first_chunk[l.chunks.count++] = blocks;
                blocks += (int64_t)((sizes[i] + TENSOR_LIST_CHUNK - 1) / TENSOR_LIST_CHUNK);
            }
            l.chunks.first_chunk[l.chunks.count] = blocks;
            if (blocks == 0) continue;
            emu::launch(dim3(blocks), dim3(THREADS), K<T>::adam_list, l, h.b1, h.b2, h.eps, h.wd, step_size, bc2_sqrt,
                        decay, (int)h.decoupled);
        }
        for (size_t i = 0; i < ts.size(); ++i) {
            Param& q = *ts[i];
            std::vector<double> p1(sizes[i]), m1(sizes[i]), v1(sizes[i]);
            for (size_t j = 0; j < sizes[i]; ++j) p1[j] = q.p1.d(j), m1[j] = q.m1.d(j), v1[j] = q.v1.d(j);
            char name[160];
            snprintf(name, sizeof name, "adam_update_list_%s %s tensor %zu of %zu (n=%zu) step %d", tname<T>(),
                     h.decoupled ? "AdamW" : "Adam", i, sizes.size(), sizes[i], t);
            std::string base = name;
            compare(base + " p", q.p.ptr(), p1, 0.0);
            compare(base + " m", q.m.ptr(), m1, 0.0);
            compare(base + " v", q.v.ptr(), v1, 0.0);
        }
    }
}

// sgd_update_list over parameters of sizes `sizes` (launches of TENSOR_LIST_MAX, empty ones left out,
// as src/backend/cuda/lists.rs sgd_update_many does) against sgd_update on copies, one launch each, bit
// for bit after each of STEPS steps. Parameter i receives its first gradient at step 1 + i % 3, so one
// launch mixes buffers on their first step (bit i of `first`) with buffers under way; before that it is
// left out, as Sgd::step leaves out a parameter without a gradient.
template <typename T> void sgd_list(std::vector<size_t> sizes, SgdP h) {
    const bool has_buf = h.mom != 0;
    struct Param { Buf<T> p, g, b, p1, b1; };
    std::vector<std::unique_ptr<Param>> ts;
    for (size_t n : sizes) {
        ts.push_back(std::unique_ptr<Param>(new Param{Buf<T>(n), Buf<T>(n), Buf<T>(n), Buf<T>(n), Buf<T>(n)}));
        Param& q = *ts.back();
        q.p.fill_random(-1, 1), q.b.fill(0), q.b1.fill(0);
        for (size_t j = 0; j < n; ++j) q.p1[j] = q.p[j];
    }
    auto starts = [](size_t i) { return 1 + (int)(i % 3); };
    for (int t = 1; t <= STEPS; ++t) {
        for (size_t i = 0; i < ts.size(); ++i) {
            Param& q = *ts[i];
            q.g.fill_random(-0.5, 0.5);
            if (sizes[i] == 0 || t < starts(i)) continue;
            emu::launch(dim3(grid_for(sizes[i], THREADS)), dim3(THREADS), K<T>::sgd, q.p1.ptr(), q.g.ptr(),
                        has_buf ? q.b1.ptr() : nullptr, (int64_t)sizes[i], h.lr, h.mom, 1 - h.damp, h.wd, (int)h.nesterov,
                        (int)(t == starts(i)));
        }
        for (size_t i0 = 0; i0 < ts.size(); i0 += TENSOR_LIST_MAX) {
            SgdList l{};
            uint32_t first = 0;
            int64_t blocks = 0;
            for (size_t i = i0; i < std::min(ts.size(), i0 + TENSOR_LIST_MAX); ++i) {
                if (sizes[i] == 0 || t < starts(i)) continue;
                Param& q = *ts[i];
                int c = l.chunks.count++;
                l.p[c] = q.p.ptr(), l.g[c] = q.g.ptr(), l.b[c] = has_buf ? q.b.ptr() : nullptr;
                if (t == starts(i)) first |= 1u << c;
                l.chunks.len[c] = (int64_t)sizes[i];
                l.chunks.first_chunk[c] = blocks;
                blocks += (int64_t)((sizes[i] + TENSOR_LIST_CHUNK - 1) / TENSOR_LIST_CHUNK);
            }
            l.chunks.first_chunk[l.chunks.count] = blocks;
            if (blocks == 0) continue;
            emu::launch(dim3(blocks), dim3(THREADS), K<T>::sgd_list, l, h.lr, h.mom, 1 - h.damp, h.wd, (int)h.nesterov, first);
        }
        for (size_t i = 0; i < ts.size(); ++i) {
            Param& q = *ts[i];
            std::vector<double> p1(sizes[i]), b1(sizes[i]);
            for (size_t j = 0; j < sizes[i]; ++j) p1[j] = q.p1.d(j), b1[j] = q.b1.d(j);
            char name[160];
            snprintf(name, sizeof name, "sgd_update_list_%s mom=%g damp=%g nesterov=%d tensor %zu of %zu (n=%zu) step %d",
                     tname<T>(), h.mom, h.damp, (int)h.nesterov, i, sizes.size(), sizes[i], t);
            std::string base = name;
            compare(base + " p", q.p.ptr(), p1, 0.0);
            if (has_buf) compare(base + " buf", q.b.ptr(), b1, 0.0);
        }
    }
}

// Launches `launch(list, blocks)` for (source, destination, length) runs as src/backend/cuda/lists.rs
// does: lists of up to TENSOR_LIST_MAX non-empty runs.
template <typename F> void for_copy_lists(const std::vector<std::tuple<const void*, void*, size_t>>& runs, F launch) {
    for (size_t i0 = 0; i0 < runs.size(); i0 += TENSOR_LIST_MAX) {
        CopyList l{};
        int64_t blocks = 0;
        for (size_t i = i0; i < std::min(runs.size(), i0 + TENSOR_LIST_MAX); ++i) {
            auto [src, dst, n] = runs[i];
            if (n == 0) continue;
            int c = l.chunks.count++;
            l.src[c] = src, l.dst[c] = dst, l.chunks.len[c] = (int64_t)n, l.chunks.first_chunk[c] = blocks;
            blocks += (int64_t)((n + TENSOR_LIST_CHUNK - 1) / TENSOR_LIST_CHUNK);
        }
        l.chunks.first_chunk[l.chunks.count] = blocks;
        if (blocks > 0) launch(l, blocks);
    }
}

// clip_scale over tensors of sizes `sizes` (launches of TENSOR_LIST_MAX, empty ones left out, as
// src/backend/cuda/lists.rs does) for a device-side total: each output is its input times
// max_norm / (sqrt(total) + 1e-6) rounded to the compute type when that is below 1, else a copy, bit for
// bit; the inputs stay as they were.
template <typename T> void clip_scale(std::vector<size_t> sizes, double total, double max_norm) {
    typedef typename Acc<T>::type A;
    std::vector<std::unique_ptr<Buf<T>>> xs, ys;
    for (size_t n : sizes) {
        xs.emplace_back(new Buf<T>(n)), ys.emplace_back(new Buf<T>(n));
        xs.back()->fill_random(-3, 3), ys.back()->fill(777);
    }
    std::vector<std::tuple<const void*, void*, size_t>> runs;
    for (size_t i = 0; i < sizes.size(); ++i) runs.emplace_back(xs[i]->ptr(), ys[i]->ptr(), sizes[i]);
    for_copy_lists(runs, [&](const CopyList& l, int64_t blocks) {
        emu::launch(dim3(blocks), dim3(THREADS), K<T>::clip_scale, l, &total, max_norm);
    });
    const double coef = max_norm / (std::sqrt(total) + 1e-6);
    for (size_t i = 0; i < sizes.size(); ++i) {
        std::vector<double> want(sizes[i]);
        for (size_t j = 0; j < sizes[i]; ++j) {
            T x = (*xs[i])[j];
            want[j] = coef < 1.0 ? to_d(from_acc<T>(to_acc<A>(x) * (A)coef)) : to_d(x);
        }
        char name[160];
        snprintf(name, sizeof name, "clip_scale_%s total=%g max_norm=%g tensor %zu of %zu (n=%zu)", tname<T>(), total,
                 max_norm, i, sizes.size(), sizes[i]);
        compare(name, ys[i]->ptr(), want, 0.0);
    }
}

// cast_list_<S>_<D> over runs of sizes `sizes` at offsets into their buffers (launches of
// TENSOR_LIST_MAX, empty ones left out): each value as the cast kernel converts it (through f64), bit for
// bit, and nothing outside the runs written.
template <typename S, typename D> void cast_list(std::vector<size_t> sizes, void (*kernel)(CopyList)) {
    std::vector<std::unique_ptr<Buf<S>>> xs;
    std::vector<std::unique_ptr<Buf<D>>> ys;
    const size_t off = 3;
    for (size_t n : sizes) {
        xs.emplace_back(new Buf<S>(n + off)), ys.emplace_back(new Buf<D>(n + 2 * off));
        xs.back()->fill_random(-70000, 70000), ys.back()->fill(7);
    }
    std::vector<std::tuple<const void*, void*, size_t>> runs;
    for (size_t i = 0; i < sizes.size(); ++i) runs.emplace_back(xs[i]->ptr() + off, ys[i]->ptr() + off, sizes[i]);
    for_copy_lists(runs, [&](const CopyList& l, int64_t blocks) { emu::launch(dim3(blocks), dim3(THREADS), kernel, l); });
    for (size_t i = 0; i < sizes.size(); ++i) {
        std::vector<double> want(sizes[i] + 2 * off, to_d(from_d<D>(7)));
        for (size_t j = 0; j < sizes[i]; ++j) want[off + j] = to_d(from_acc<D, double>(to_acc<double>((*xs[i])[off + j])));
        char name[160];
        snprintf(name, sizeof name, "cast_list %s -> %s tensor %zu of %zu (n=%zu)", tname<S>(), tname<D>(), i, sizes.size(),
                 sizes[i]);
        compare(name, ys[i]->ptr(), want, 0.0);
    }
}

int main() {
    // Mixed precision's list casts: 40 runs (two launches) with empty ones; one over three chunks.
    std::vector<size_t> runs;
    for (size_t i = 0; i < 40; ++i) runs.push_back(i % 9 == 4 ? 0 : (i * 613) % 3000 + 1);
    cast_list<float, bf16>(runs, cast_list_f32_bf16);
    cast_list<float, f16>({150000, 9}, cast_list_f32_f16);
    cast_list<bf16, float>(runs, cast_list_bf16_f32);
    cast_list<f16, float>({70000, 2}, cast_list_f16_f32);
    // Clipping: 40 gradients (two launches) with empty ones; no clipping (a copy); a NaN total (a copy).
    std::vector<size_t> grads;
    for (size_t i = 0; i < 40; ++i) grads.push_back(i % 7 == 3 ? 0 : (i * 977) % 5000 + 1);
    clip_scale<float>(grads, 400.0, 1.0);
    clip_scale<float>({150000, 5}, 0.25, 1.0);
    clip_scale<float>({70, 3}, NAN, 1.0);
    clip_scale<bf16>(grads, 1e6, 0.5);
    clip_scale<f16>({70000, 3}, 9.0, 2.0);
    clip_scale<double>({65537, 1}, 2.0, 1.0);
    // Lists: 40 parameters (two launches) with empty ones; one over three chunks beside small ones.
    std::vector<size_t> params;
    for (size_t i = 0; i < 40; ++i) params.push_back(i % 9 == 4 ? 0 : (i * 613) % 3000 + 1);
    adam_list<float>(params, {1e-2, 0.9, 0.999, 1e-8, 0.01, true});
    adam_list<float>({150000, 7, 65536}, {1e-3, 0.9, 0.999, 1e-8, 0.1, false});
    adam_list<double>({65537, 33}, {3e-2, 0.8, 0.99, 1e-6, 0.5, true});
    sgd_list<float>(params, {0.05, 0.9, 0.1, 0.01, false});  // momentum with dampening: first steps differ
    sgd_list<float>({150000, 7, 65536}, {0.05, 0.9, 0, 0.1, true});
    sgd_list<float>(params, {0.1, 0, 0, 0.05, false});     // no buffers
    sgd_list<double>({65537, 33, 5}, {0.05, 0.5, 0.2, 0, false});
    all<float>();
    all<double>();
    // One tensor over three chunks; 40 tensors (two launches) with empty ones; chunk-sized ones.
    sum_squares<float>({150000});
    std::vector<size_t> many;
    for (size_t i = 0; i < 40; ++i) many.push_back(i % 7 == 3 ? 0 : (i * 977) % 5000 + 1);
    sum_squares<float>(many);
    sum_squares<bf16>(many);
    sum_squares<double>({65536, 65537, 1});
    sum_squares<f16>({70000, 3});
    return finish("optim");
}
