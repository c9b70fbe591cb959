// A small CPU emulator for munja's CUDA kernels: force-include it before a kernels/*.cu file compiled as
// C++ (g++ -std=c++20 -x c++ -include kernels/emu/cuda_emu.h -I$CUDA_HOME/include ...) and launch entry
// points with emu::launch(grid, block, kernel, args...). It checks kernel *logic* (indexing, reductions,
// barriers, warp shuffles), not performance or the device memory model.
//
// Execution model. Blocks run one after another (z, y, x order). The threads of a block are fibers
// (ucontext) on the calling OS thread, not OS threads: a 1024-thread block with a dozen warp shuffles
// costs tens of thousands of switches, which fibers do in microseconds, and one OS thread makes runs
// deterministic and lets the scheduler *detect* deadlocks (a __syncthreads some threads never reach, a
// shuffle inside divergent code) instead of hanging. A fiber runs until it reaches a barrier (
// __syncthreads, or a warp barrier inside a shuffle/ballot/__syncwarp) or returns; the scheduler sweeps
// the runnable fibers, alternating forward and backward order, so a missing barrier between a write and
// another thread's read tends to show up as a wrong result whichever thread writes. EMU_SEED=<n> switches
// to a seeded random warp-at-a-time schedule (see run_block) that also catches shared memory reused too
// early. Memory is sequentially consistent and blocks never overlap: races *between blocks*, fences and
// atomics' contention are not exercised at all.
// A thread that returns early leaves its block and warp barriers (like std::barrier::arrive_and_drop),
// as exited threads do on sm_70+.
#pragma once
// Tells kernels/common.cuh to route dynamic shared memory and cp.async through the emulator.
#define MUNJA_EMU 1
// The fp16/bf16 headers compile for the host (they fall back to their software conversions); include them
// first so their include guards stop common.cuh from re-including them after the macros below change.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <vector_types.h>
#include <vector_functions.h>
#include <ucontext.h>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <tuple>
#include <type_traits>
#include <vector>

// Execution-space keywords. host_defines.h already makes __device__/__host__/__global__ empty for a host
// compile; __shared__ becomes `static`: blocks run one at a time, so a function-static array is exactly one
// block's shared memory (it is NOT cleared between blocks, and dynamic `extern __shared__` is unsupported).
#undef __shared__
#define __shared__ static
#undef __launch_bounds__
#define __launch_bounds__(...)
#undef __forceinline__
#define __forceinline__ inline
#ifndef __restrict__
#define __restrict__ __restrict
#endif
#ifndef __noinline__
#define __noinline__ __attribute__((noinline))
#endif

// Built-in indices: globals the scheduler sets before resuming each fiber (all fibers share one OS thread).
// Every switch goes through swapcontext, an opaque call, so the compiler reloads them after a barrier.
inline uint3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;
constexpr int warpSize = 32;

namespace emu {

// A barrier over `expected` live fibers; the waiters are fiber indices.
struct Barrier {
    int expected = 0, arrived = 0;
    std::vector<int> waiters;
};
struct Fiber {
    ucontext_t ctx;
    uint3 tid;
    int warp, lane;
    enum { RUN, WAIT, DONE } st;
    unsigned gen;  // warp-exchange count: selects the slot buffer and tags what this lane wrote
    // cp.async: copies issued since the last commit, and the committed groups not yet waited for. The
    // copies happen at the wait that retires their group, so a read of shared memory before that wait
    // sees the old contents, as it may on the device.
    std::vector<std::tuple<void*, const void*, size_t>> pending;
    std::vector<std::vector<std::tuple<void*, const void*, size_t>>> groups;
};
struct Warp {
    Barrier bar;
    uint64_t slot[2][32];  // double-buffered exchange slots: exchange k uses buffer k & 1 (no second barrier)
    unsigned tag[2][32];   // the gen each lane wrote with, to catch reads from lanes that did not take part
};
struct Block {
    std::vector<Fiber> f;
    std::vector<Warp> warps;
    Barrier bar;
    ucontext_t sched;
    int cur = 0, done = 0;
    std::function<void()> body;
    std::vector<std::unique_ptr<char[]>> stacks;  // kept across launches
};
inline Block B;
constexpr size_t STACK = 256 * 1024;

[[noreturn]] inline void fail(const char* what) {
    Fiber& f = B.f[B.cur];
    fprintf(stderr, "emu: %s (block %u,%u,%u thread %u,%u,%u)\n", what, blockIdx.x, blockIdx.y, blockIdx.z, f.tid.x,
            f.tid.y, f.tid.z);
    fflush(nullptr);  // _Exit: exit() would run destructors that free the fiber stack we may be on
    std::_Exit(3);
}

inline void release(Barrier& b) {
    for (int w : b.waiters) B.f[w].st = Fiber::RUN;
    b.waiters.clear();
    b.arrived = 0;
}
// The last arriver releases the others and carries on; the rest yield to the scheduler until released.
inline void wait(Barrier& b) {
    if (++b.arrived == b.expected) return release(b);
    b.waiters.push_back(B.cur);
    B.f[B.cur].st = Fiber::WAIT;
    swapcontext(&B.f[B.cur].ctx, &B.sched);
}
// arrive_and_drop for an exiting fiber: it no longer counts, which may complete a pending phase.
inline void drop(Barrier& b) {
    --b.expected;
    if (b.arrived > 0 && b.arrived == b.expected) release(b);
}

inline void fiber_main() {
    B.body();
    Fiber& f = B.f[B.cur];
    drop(B.bar);
    drop(B.warps[f.warp].bar);
    f.st = Fiber::DONE;
    ++B.done;
    // returns to B.sched through uc_link
}

inline void run_block(int nt) {
    B.done = 0;
    B.bar = Barrier{nt, 0, {}};
    B.warps.assign((nt + 31) / 32, Warp{});
    for (int w = 0; w < (int)B.warps.size(); ++w) B.warps[w].bar.expected = std::min(32, nt - 32 * w);
    B.f.resize(nt);
    while ((int)B.stacks.size() < nt) B.stacks.emplace_back(new char[STACK]);
    for (int i = 0; i < nt; ++i) {
        Fiber& f = B.f[i];
        f.tid = make_uint3(i % blockDim.x, i / blockDim.x % blockDim.y, i / (blockDim.x * blockDim.y));
        f.warp = i / 32;
        f.lane = i % 32;
        f.st = Fiber::RUN;
        f.gen = 0;
        f.pending.clear();
        f.groups.clear();
        getcontext(&f.ctx);
        f.ctx.uc_stack.ss_sp = B.stacks[i].get();
        f.ctx.uc_stack.ss_size = STACK;
        f.ctx.uc_link = &B.sched;
        makecontext(&f.ctx, fiber_main, 0);
    }
    // Default schedule: sweeps over the runnable fibers, forward and backward in turn. With EMU_SEED set,
    // warps run one at a time, in random order, each as far as it can (lanes in random order): some warps
    // then get whole phases ahead of others, which exposes missing barriers (e.g. shared memory reused
    // before every warp has read it) that lock-step sweeps hide.
    static const char* seed = getenv("EMU_SEED");
    static std::mt19937 rng(seed ? (unsigned)atoi(seed) : 0);
    auto resume = [&](int i) {
        B.cur = i;
        threadIdx = B.f[i].tid;
        swapcontext(&B.sched, &B.f[i].ctx);
    };
    int nw = (int)B.warps.size();
    std::vector<int> order(nt), worder(nw);
    for (bool fwd = true; B.done < nt; fwd = !fwd) {
        bool ran = false;
        if (seed) {
            for (int w = 0; w < nw; ++w) worder[w] = w;
            std::shuffle(worder.begin(), worder.end(), rng);
            for (int w : worder) {
                int lo = 32 * w, hi = std::min(nt, lo + 32);
                for (int k = lo; k < hi; ++k) order[k - lo] = k;
                for (bool any = true; any;) {
                    any = false;
                    std::shuffle(order.begin(), order.begin() + (hi - lo), rng);
                    for (int k = 0; k < hi - lo; ++k)
                        if (B.f[order[k]].st == Fiber::RUN) resume(order[k]), any = ran = true;
                }
            }
        } else {
            for (int k = 0; k < nt; ++k) {
                int i = fwd ? k : nt - 1 - k;
                if (B.f[i].st == Fiber::RUN) resume(i), ran = true;
            }
        }
        if (!ran) {
            int at_block = (int)B.bar.waiters.size();
            fprintf(stderr, "emu: deadlock in block (%u,%u,%u): %d of %d threads at __syncthreads, %d at a warp barrier, %d exited\n",
                    blockIdx.x, blockIdx.y, blockIdx.z, at_block, nt, nt - B.done - at_block, B.done);
            fflush(nullptr);
            std::_Exit(3);
        }
    }
}

// The launch's dynamic shared memory (`extern __shared__` on the device; DYNAMIC_SHARED in common.cuh). Each
// block starts with it filled with 0xff bytes (NaN for floats), so a read before any write shows.
inline std::vector<unsigned char> dynamic_shared_mem;
inline size_t dynamic_shared_bytes = 0;
inline void* dynamic_shared() { return dynamic_shared_mem.data(); }

// cp.async of `n` bytes into shared memory, commit_group and wait_group (see Fiber::pending).
inline void async_copy(void* dst, const void* src, size_t n) {
    if (((uintptr_t)dst | (uintptr_t)src) % n != 0) fail("cp.async address not aligned to its size");
    B.f[B.cur].pending.emplace_back(dst, src, n);
}
inline void async_commit() {
    Fiber& f = B.f[B.cur];
    f.groups.push_back(std::move(f.pending));
    f.pending.clear();
}
inline void async_wait(size_t newest_pending) {
    Fiber& f = B.f[B.cur];
    size_t retire = f.groups.size() > newest_pending ? f.groups.size() - newest_pending : 0;
    for (size_t g = 0; g < retire; ++g)
        for (auto& [dst, src, n] : f.groups[g]) memcpy(dst, src, n);
    f.groups.erase(f.groups.begin(), f.groups.begin() + retire);
}

// Runs kernel<<<grid, block>>>(args...) to completion. Arguments are converted to the kernel's parameter
// types first (as the driver copies them), so e.g. a 0 passes as a null pointer.
template <typename... P, typename... Args> void launch(dim3 grid, dim3 block, void (*kernel)(P...), Args&&... args) {
    static_assert(sizeof...(P) == sizeof...(Args), "argument count does not match the kernel");
    std::tuple<std::decay_t<P>...> params(std::forward<Args>(args)...);
    int nt = (int)(block.x * block.y * block.z);
    if (nt < 1 || nt > 1024 || block.z > 64 || grid.y > 65535 || grid.z > 65535) {
        fprintf(stderr, "emu: invalid launch configuration\n");
        fflush(nullptr);
        std::_Exit(3);
    }
    B.body = [&] { std::apply(kernel, params); };
    gridDim = grid;
    blockDim = block;
    for (unsigned z = 0; z < grid.z; ++z)
        for (unsigned y = 0; y < grid.y; ++y)
            for (unsigned x = 0; x < grid.x; ++x) {
                blockIdx = make_uint3(x, y, z);
                dynamic_shared_mem.assign(dynamic_shared_bytes, 0xff);
                run_block(nt);
            }
    B.body = nullptr;
}

// kernel<<<grid, block, shared_bytes>>>(args...): launch with `shared_bytes` of dynamic shared memory.
template <typename... P, typename... Args>
void launch_shared(dim3 grid, dim3 block, size_t shared_bytes, void (*kernel)(P...), Args&&... args) {
    dynamic_shared_bytes = shared_bytes;
    launch(grid, block, kernel, std::forward<Args>(args)...);
    dynamic_shared_bytes = 0;
}

// One warp exchange: every live lane of the warp publishes v, then reads lane src_of(lane)'s value.
// Masks are assumed full (all live lanes take part); a read from a lane that exited or did not take part
// is reported, as it is undefined on the device.
template <typename T, typename F> T exchange(T v, F src_of) {
    static_assert(std::is_trivially_copyable_v<T> && sizeof(T) <= 8, "shuffle of a type over 8 bytes");
    Fiber& f = B.f[B.cur];
    Warp& w = B.warps[f.warp];
    unsigned g = f.gen++, buf = g & 1;
    memcpy(&w.slot[buf][f.lane], &v, sizeof(T));
    w.tag[buf][f.lane] = g;
    wait(w.bar);
    int src = src_of(f.lane);
    if (src == f.lane) return v;
    if (src >= 32 || 32 * f.warp + src >= (int)B.f.size() || w.tag[buf][src] != g || B.f[32 * f.warp + src].gen <= g)
        fail("warp shuffle reads a lane that did not take part");
    T r;
    memcpy(&r, &w.slot[buf][src], sizeof(T));
    return r;
}
// Lanes of the warp that took part in this lane's current exchange (after wait): for ballots.
inline unsigned participants(const Warp& w, unsigned buf, unsigned g, int warp) {
    unsigned m = 0;
    for (int l = 0; l < 32; ++l)
        if (32 * warp + l < (int)B.f.size() && w.tag[buf][l] == g && B.f[32 * warp + l].gen > g) m |= 1u << l;
    return m;
}
inline unsigned ballot(bool p) {
    Fiber& f = B.f[B.cur];
    Warp& w = B.warps[f.warp];
    unsigned g = f.gen++, buf = g & 1;
    w.slot[buf][f.lane] = p;
    w.tag[buf][f.lane] = g;
    wait(w.bar);
    unsigned m = participants(w, buf, g, f.warp), r = 0;
    for (int l = 0; l < 32; ++l)
        if ((m >> l & 1) && w.slot[buf][l]) r |= 1u << l;
    return r;
}
inline unsigned active_mask() {
    unsigned m = 0;
    int w = B.f[B.cur].warp;
    for (int l = 0; l < 32 && 32 * w + l < (int)B.f.size(); ++l)
        if (B.f[32 * w + l].st != Fiber::DONE) m |= 1u << l;
    return m;
}
}  // namespace emu

inline void __syncthreads() { emu::wait(emu::B.bar); }
inline void __syncwarp(unsigned = 0xffffffffu) { emu::wait(emu::B.warps[emu::B.f[emu::B.cur].warp].bar); }
// Blocks never overlap and fibers never preempt each other: fences are no-ops, atomics plain updates.
inline void __threadfence() {}
inline void __threadfence_block() {}

template <typename T> T __shfl_xor_sync(unsigned, T v, int m, int width = 32) {
    return emu::exchange(v, [&](int l) { return (l ^ m) >= ((l & ~(width - 1)) + width) ? l : l ^ m; });
}
template <typename T> T __shfl_sync(unsigned, T v, int src, int width = 32) {
    return emu::exchange(v, [&](int l) { return (l & ~(width - 1)) + (src & (width - 1)); });
}
template <typename T> T __shfl_down_sync(unsigned, T v, unsigned d, int width = 32) {
    return emu::exchange(v, [&](int l) { return (l & (width - 1)) + (int)d < width ? l + (int)d : l; });
}
template <typename T> T __shfl_up_sync(unsigned, T v, unsigned d, int width = 32) {
    return emu::exchange(v, [&](int l) { return (l & (width - 1)) >= (int)d ? l - (int)d : l; });
}
inline unsigned __ballot_sync(unsigned, int p) { return emu::ballot(p != 0); }
inline int __any_sync(unsigned, int p) { return emu::ballot(p != 0) != 0; }
inline int __all_sync(unsigned, int p) { return emu::ballot(p == 0) == 0; }
inline unsigned __activemask() { return emu::active_mask(); }

template <typename T> T __ldg(const T* p) { return *p; }
template <typename T> T atomicAdd(T* p, T v) { T o = *p; *p = o + v; return o; }
template <typename T> T atomicMax(T* p, T v) { T o = *p; *p = std::max(o, v); return o; }
template <typename T> T atomicMin(T* p, T v) { T o = *p; *p = std::min(o, v); return o; }
template <typename T> T atomicExch(T* p, T v) { T o = *p; *p = v; return o; }
template <typename T> T atomicCAS(T* p, T c, T v) { T o = *p; if (o == c) *p = v; return o; }

// Device math: exp(float) etc. resolve to the float overloads, as in device code (<cmath> only puts the
// double versions in the global namespace).
using std::exp; using std::exp2; using std::expm1; using std::log; using std::log2; using std::log1p;
using std::sqrt; using std::cbrt; using std::pow; using std::tanh; using std::sinh; using std::cosh;
using std::sin; using std::cos; using std::tan; using std::erf; using std::erfc; using std::fabs;
using std::fmin; using std::fmax; using std::floor; using std::ceil; using std::round; using std::trunc;
using std::fma; using std::isnan; using std::isinf; using std::isfinite; using std::copysign;
// min/max: the float versions are fmin/fmax (NaN-ignoring), as CUDA's.
inline float min(float a, float b) { return fminf(a, b); }
inline float max(float a, float b) { return fmaxf(a, b); }
inline double min(double a, double b) { return fmin(a, b); }
inline double max(double a, double b) { return fmax(a, b); }
#define EMU_MINMAX(T) \
    inline T min(T a, T b) { return a < b ? a : b; } \
    inline T max(T a, T b) { return a > b ? a : b; }
EMU_MINMAX(int) EMU_MINMAX(unsigned) EMU_MINMAX(long) EMU_MINMAX(unsigned long) EMU_MINMAX(long long)
EMU_MINMAX(unsigned long long)
#undef EMU_MINMAX

// Intrinsics, computed exactly (the device's fast approximations are less accurate than these).
inline float __expf(float x) { return expf(x); }
inline float __logf(float x) { return logf(x); }
inline float __log2f(float x) { return log2f(x); }
inline float __powf(float a, float b) { return powf(a, b); }
inline float __sinf(float x) { return sinf(x); }
inline float __cosf(float x) { return cosf(x); }
inline float __tanhf(float x) { return tanhf(x); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __frcp_rn(float x) { return 1.0f / x; }
inline double __drcp_rn(double x) { return 1.0 / x; }
inline float rsqrtf(float x) { return 1.0f / sqrtf(x); }
inline double rsqrt(double x) { return 1.0 / sqrt(x); }
inline float __frsqrt_rn(float x) { return 1.0f / sqrtf(x); }
inline float __fsqrt_rn(float x) { return sqrtf(x); }
inline float __saturatef(float x) { return x != x ? 0.0f : fminf(fmaxf(x, 0.0f), 1.0f); }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return fmaf(a, b, c); }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __fma_rn(double a, double b, double c) { return fma(a, b, c); }
inline float __int_as_float(int x) { float f; memcpy(&f, &x, 4); return f; }
inline int __float_as_int(float x) { int i; memcpy(&i, &x, 4); return i; }
inline unsigned __float_as_uint(float x) { unsigned i; memcpy(&i, &x, 4); return i; }
inline float __uint_as_float(unsigned x) { float f; memcpy(&f, &x, 4); return f; }
inline long long __double_as_longlong(double x) { long long i; memcpy(&i, &x, 8); return i; }
inline double __longlong_as_double(long long x) { double d; memcpy(&d, &x, 8); return d; }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(unsigned x) { return x ? __builtin_clz(x) : 32; }
inline int __ffs(unsigned x) { return __builtin_ffs(x); }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
