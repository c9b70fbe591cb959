// Fused optimizer updates: one grid-stride pass reads parameter, gradient and state once and writes them
// once, in place, with the CPU backend's arithmetic order (PyTorch's). Hyper-parameters derived from the
// step (bias corrections) are computed on the host in f64.
#include "common.cuh"

// Adam's constants in the parameter's type, from the host's f64 values.
template <typename T> struct AdamConsts {
    T b1, b2, omb1, omb2, eps, wd, step_size, bc2_sqrt, decay;
    bool decoupled, l2;
    __device__ AdamConsts(double b1_, double b2_, double eps_, double wd_, double step_size_, double bc2_sqrt_,
                          double decay_, int decoupled_)
        : b1(b1_), b2(b2_),
          // 1 - beta in double, rounded once, as PyTorch does (and the CPU backend): in f32 after rounding
          // beta2 = 0.999 it is off by 1.3e-5 relative, which compounds over steps.
          omb1(1.0 - b1_), omb2(1.0 - b2_), eps(eps_), wd(wd_), step_size(step_size_), bc2_sqrt(bc2_sqrt_),
          decay(decay_), decoupled(decoupled_ != 0), l2(wd_ != 0.0) {}
};

// One element of the update, in place.
template <typename T> __device__ __forceinline__ void adam_elem(T* p, const T* g, T* m, T* v, int64_t i, const AdamConsts<T>& k) {
    T gi = g[i], pi = p[i];
    if (k.decoupled) pi = pi * k.decay;
    else if (k.l2) gi = gi + k.wd * pi;
    T mi = k.b1 * m[i] + k.omb1 * gi;
    T vi = k.b2 * v[i] + k.omb2 * gi * gi;
    m[i] = mi;
    v[i] = vi;
    // PyTorch's order: p - step_size * (m / (sqrt(v) / sqrt(bc2) + eps)).
    p[i] = pi - k.step_size * (mi / (sqrt(vi) / k.bc2_sqrt + k.eps));
}

template <typename T>
__device__ void adam_k(T* p, const T* g, T* m, T* v, int64_t n, const AdamConsts<T>& k) {
    GRID_LOOP(i, n) adam_elem(p, g, m, v, i, k);
}

// SGD's constants in the parameter's type; `damp` is 1 − dampening, computed on the host in f64.
template <typename T> struct SgdConsts {
    T lr, mom, damp, wd;
    bool nesterov;
    __device__ SgdConsts(double lr_, double mom_, double damp_, double wd_, int nesterov_)
        : lr(lr_), mom(mom_), damp(damp_), wd(wd_), nesterov(nesterov_ != 0) {}
};

// One element of SGD, in place: b = first ? g' : mom·b + (1−dampening)·g' with g' = g + wd·p;
// p −= lr·(nesterov ? g' + mom·b : b). Without a buffer (`b` null): p −= lr·g'.
template <typename T>
__device__ __forceinline__ void sgd_elem(T* p, const T* g, T* b, int64_t i, const SgdConsts<T>& k, bool first) {
    T pi = p[i];
    T gi = g[i] + k.wd * pi;
    if (!b) {
        p[i] = pi - k.lr * gi;
        return;
    }
    T bi = first ? gi : k.mom * b[i] + k.damp * gi;
    b[i] = bi;
    T d = k.nesterov ? gi + k.mom * bi : bi;
    p[i] = pi - k.lr * d;
}

template <typename T> __device__ void sgd_k(T* p, const T* g, T* b, int64_t n, const SgdConsts<T>& k, bool first) {
    GRID_LOOP(i, n) sgd_elem(p, g, b, i, k, first);
}

// Up to TENSOR_LIST_MAX tensors of one dtype for one launch (PyTorch's multi_tensor_apply idea): the list
// travels in the kernel's parameters, and block b takes chunk b − first_chunk[i] of the tensor i whose
// chunks it falls in. A model's gradients are then a handful of launches instead of several per tensor.
#define TENSOR_LIST_MAX 32
#define TENSOR_LIST_CHUNK 65536
// What every list ends with (src/backend/cuda/lists.rs mirrors it): the runs' lengths and first blocks.
struct Chunks {
    int64_t len[TENSOR_LIST_MAX];
    int64_t first_chunk[TENSOR_LIST_MAX + 1];  // first_chunk[count] = the launch's blocks
    int32_t count;
};
struct TensorList {
    const void* ptr[TENSOR_LIST_MAX];
    Chunks chunks;
};

// The run whose chunks block b falls in, and the chunk's element range [lo, hi) in it.
__device__ __forceinline__ int list_chunk(const Chunks& c, int64_t b, int64_t& lo, int64_t& hi) {
    int i = 0;
    while (i + 1 < c.count && c.first_chunk[i + 1] <= b) ++i;
    lo = (b - c.first_chunk[i]) * TENSOR_LIST_CHUNK;
    hi = lo + TENSOR_LIST_CHUNK < c.len[i] ? lo + TENSOR_LIST_CHUNK : c.len[i];
    return i;
}

// Adam over up to TENSOR_LIST_MAX parameters with one set of hyper-parameters (one step of one
// optimizer): a launch per TENSOR_LIST_MAX parameters where a launch per parameter spent most of a small
// model's optimizer time between launches. Each element gets exactly adam_k's arithmetic.
struct AdamList {
    void* p[TENSOR_LIST_MAX];
    const void* g[TENSOR_LIST_MAX];
    void* m[TENSOR_LIST_MAX];
    void* v[TENSOR_LIST_MAX];
    Chunks chunks;
};

template <typename T> __device__ void adam_list_k(const AdamList& l, const AdamConsts<T>& k) {
    int64_t lo, hi;
    const int i = list_chunk(l.chunks, blockIdx.x, lo, hi);
    T *p = static_cast<T*>(l.p[i]), *m = static_cast<T*>(l.m[i]), *v = static_cast<T*>(l.v[i]);
    const T* g = static_cast<const T*>(l.g[i]);
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) adam_elem(p, g, m, v, j, k);
}

// SGD over up to TENSOR_LIST_MAX parameters with one set of hyper-parameters, each element exactly as
// sgd_k computes it. Bit i of `first` says parameter i's momentum buffer is new (its first step copies
// the gradient in); b[i] is null without momentum.
struct SgdList {
    void* p[TENSOR_LIST_MAX];
    const void* g[TENSOR_LIST_MAX];
    void* b[TENSOR_LIST_MAX];
    Chunks chunks;
};

template <typename T> __device__ void sgd_list_k(const SgdList& l, const SgdConsts<T>& k, uint32_t first) {
    int64_t lo, hi;
    const int i = list_chunk(l.chunks, blockIdx.x, lo, hi);
    T *p = static_cast<T*>(l.p[i]), *b = static_cast<T*>(l.b[i]);
    const T* g = static_cast<const T*>(l.g[i]);
    const bool is_first = (first >> i) & 1u;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) sgd_elem(p, g, b, j, k, is_first);
}

// partial[base + b] = Σ x² over block b's chunk: squares in the compute type (f32, or f64 for f64), sums
// in f64 in a fixed order (threads stride the chunk, then one block reduction), so the total is
// deterministic. The host sums the partials (gradient clipping's global norm).
template <typename T> __device__ void sum_squares_k(const TensorList& tl, double* partial, int64_t base) {
    typedef typename Acc<T>::type A;
    __shared__ double sh[32];
    int64_t lo, hi;
    const T* x = static_cast<const T*>(tl.ptr[list_chunk(tl.chunks, blockIdx.x, lo, hi)]);
    double acc = 0;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        A v = to_acc<A>(x[j]);
        acc += (double)(v * v);
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) partial[base + blockIdx.x] = acc;
}

// Up to TENSOR_LIST_MAX (source, destination) pairs of runs for one launch, chunked as TensorList.
struct CopyList {
    const void* src[TENSOR_LIST_MAX];
    void* dst[TENSOR_LIST_MAX];
    Chunks chunks;
};

// Gradient clipping's scaling: dst = src · max_norm / (sqrt(total) + 1e-6) where that factor is below 1,
// else a copy (also for a NaN total), `total` being sum_squares' sum on the device. Every block derives
// the factor itself, so clipping reads nothing back to the host. The factor is rounded to the compute
// type, as `mul_scalar` rounds its scalar. New gradients rather than scaling in place: a gradient may
// share its buffer with a tensor the caller holds.
template <typename T> __device__ void clip_scale_k(const CopyList& l, const double* total, double max_norm) {
    typedef typename Acc<T>::type A;
    const double coef = max_norm / (sqrt(*total) + 1e-6);
    const bool clip = coef < 1.0;
    const A f = (A)coef;
    int64_t lo, hi;
    const int i = list_chunk(l.chunks, blockIdx.x, lo, hi);
    const T* x = static_cast<const T*>(l.src[i]);
    T* y = static_cast<T*>(l.dst[i]);
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) y[j] = clip ? from_acc<T>(to_acc<A>(x[j]) * f) : x[j];
}

// Mixed precision's casts between f32 masters and 16-bit working copies, a launch per TENSOR_LIST_MAX
// pairs (the working gradients widened onto the masters, the masters rounded into the working weights):
// each value as the cast kernel converts it. One cast launch per parameter had been 160 of a GPT step's
// 781 launches.
template <typename S, typename D> __device__ void cast_list_k(const CopyList& l) {
    int64_t lo, hi;
    const int i = list_chunk(l.chunks, blockIdx.x, lo, hi);
    const S* x = static_cast<const S*>(l.src[i]);
    D* y = static_cast<D*>(l.dst[i]);
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) y[j] = convert<S, D>(x[j]);
}

#define SUM_SQUARES(S, T) \
    extern "C" __global__ void sum_squares_##S(TensorList tl, double* partial, int64_t base) { \
        sum_squares_k<T>(tl, partial, base); } \
    extern "C" __global__ void clip_scale_##S(CopyList l, const double* total, double max_norm) { \
        clip_scale_k<T>(l, total, max_norm); }
FOR_FLOATS(SUM_SQUARES)

#define OPTIM(S, T) \
    extern "C" __global__ void adam_update_##S(T* p, const T* g, T* m, T* v, int64_t n, double b1, double b2, double eps, \
                                               double wd, double step_size, double bc2_sqrt, double decay, int decoupled) { \
        adam_k<T>(p, g, m, v, n, AdamConsts<T>(b1, b2, eps, wd, step_size, bc2_sqrt, decay, decoupled)); } \
    extern "C" __global__ void adam_update_list_##S(AdamList l, double b1, double b2, double eps, double wd, \
                                                    double step_size, double bc2_sqrt, double decay, int decoupled) { \
        adam_list_k<T>(l, AdamConsts<T>(b1, b2, eps, wd, step_size, bc2_sqrt, decay, decoupled)); } \
    extern "C" __global__ void sgd_update_##S(T* p, const T* g, T* b, int64_t n, double lr, double mom, double damp, \
                                              double wd, int nesterov, int first) { \
        sgd_k<T>(p, g, b, n, SgdConsts<T>(lr, mom, damp, wd, nesterov), first != 0); } \
    extern "C" __global__ void sgd_update_list_##S(SgdList l, double lr, double mom, double damp, double wd, int nesterov, \
                                                   uint32_t first) { \
        sgd_list_k<T>(l, SgdConsts<T>(lr, mom, damp, wd, nesterov), first); }
OPTIM(f32, float) OPTIM(f64, double)

#define CAST_LIST(S, TS, D, TD) \
    extern "C" __global__ void cast_list_##S##_##D(CopyList l) { cast_list_k<TS, TD>(l); }
CAST_LIST(f32, float, bf16, bf16) CAST_LIST(f32, float, f16, f16) CAST_LIST(bf16, bf16, f32, float) CAST_LIST(f16, f16, f32, float)
