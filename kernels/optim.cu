// Fused optimizer updates: one grid-stride pass reads parameter, gradient and state once and writes them
// once, in place, with the CPU backend's arithmetic order (PyTorch's). Hyper-parameters derived from the
// step (bias corrections) are computed on the host in f64.
#include "common.cuh"

template <typename T>
__device__ void adam_k(T* p, const T* g, T* m, T* v, int64_t n, double b1_, double b2_, double eps_, double wd_,
                       double step_size_, double bc2_sqrt_, double decay_, int decoupled) {
    T b1 = b1_, b2 = b2_, eps = eps_, wd = wd_, step_size = step_size_, bc2_sqrt = bc2_sqrt_, decay = decay_;
    // 1 - beta in double, rounded once, as PyTorch does (and the CPU backend): in f32 after rounding
    // beta2 = 0.999 it is off by 1.3e-5 relative, which compounds over steps.
    T omb1 = 1.0 - b1_, omb2 = 1.0 - b2_;
    GRID_LOOP(i, n) {
        T gi = g[i], pi = p[i];
        if (decoupled) pi = pi * decay;
        else if (wd_ != 0.0) gi = gi + wd * pi;
        T mi = b1 * m[i] + omb1 * gi;
        T vi = b2 * v[i] + omb2 * gi * gi;
        m[i] = mi;
        v[i] = vi;
        // PyTorch's order: p - step_size * (m / (sqrt(v) / sqrt(bc2) + eps)).
        p[i] = pi - step_size * (mi / (sqrt(vi) / bc2_sqrt + eps));
    }
}

// SGD: b = first ? g' : mom·b + (1−dampening)·g' with g' = g + wd·p; p −= lr·(nesterov ? g' + mom·b : b).
// Without a buffer (`b` null): p −= lr·g'.
template <typename T>
__device__ void sgd_k(T* p, const T* g, T* b, int64_t n, double lr_, double mom_, double damp_, double wd_, int nesterov, int first) {
    T lr = lr_, mom = mom_, damp = damp_, wd = wd_;
    GRID_LOOP(i, n) {
        T pi = p[i];
        T gi = g[i] + wd * pi;
        if (!b) {
            p[i] = pi - lr * gi;
            continue;
        }
        T bi = first ? gi : mom * b[i] + damp * gi;
        b[i] = bi;
        T d = nesterov ? gi + mom * bi : bi;
        p[i] = pi - lr * d;
    }
}

// Up to TENSOR_LIST_MAX tensors of one dtype for one launch (PyTorch's multi_tensor_apply idea): the list
// travels in the kernel's parameters, and block b takes chunk b − first_chunk[i] of the tensor i whose
// chunks it falls in. A model's gradients are then a handful of launches instead of several per tensor.
#define TENSOR_LIST_MAX 32
#define TENSOR_LIST_CHUNK 65536
struct TensorList {
    const void* ptr[TENSOR_LIST_MAX];
    int64_t len[TENSOR_LIST_MAX];
    int64_t first_chunk[TENSOR_LIST_MAX + 1];  // first_chunk[count] = the launch's blocks
    int32_t count;
};

// partial[base + b] = Σ x² over block b's chunk: squares in the compute type (f32, or f64 for f64), sums
// in f64 in a fixed order (threads stride the chunk, then one block reduction), so the total is
// deterministic. The host sums the partials (gradient clipping's global norm).
template <typename T> __device__ void sum_squares_k(const TensorList& tl, double* partial, int64_t base) {
    typedef typename Acc<T>::type A;
    __shared__ double sh[32];
    int64_t b = blockIdx.x;
    int i = 0;
    while (i + 1 < tl.count && tl.first_chunk[i + 1] <= b) ++i;
    const T* x = static_cast<const T*>(tl.ptr[i]);
    int64_t lo = (b - tl.first_chunk[i]) * TENSOR_LIST_CHUNK, hi = lo + TENSOR_LIST_CHUNK;
    if (hi > tl.len[i]) hi = tl.len[i];
    double acc = 0;
    for (int64_t j = lo + threadIdx.x; j < hi; j += blockDim.x) {
        A v = to_acc<A>(x[j]);
        acc += (double)(v * v);
    }
    acc = block_sum(acc, sh);
    if (threadIdx.x == 0) partial[base + b] = acc;
}

#define SUM_SQUARES(S, T) \
    extern "C" __global__ void sum_squares_##S(TensorList tl, double* partial, int64_t base) { \
        sum_squares_k<T>(tl, partial, base); }
FOR_FLOATS(SUM_SQUARES)

#define OPTIM(S, T) \
    extern "C" __global__ void adam_update_##S(T* p, const T* g, T* m, T* v, int64_t n, double b1, double b2, double eps, \
                                               double wd, double step_size, double bc2_sqrt, double decay, int decoupled) { \
        adam_k<T>(p, g, m, v, n, b1, b2, eps, wd, step_size, bc2_sqrt, decay, decoupled); } \
    extern "C" __global__ void sgd_update_##S(T* p, const T* g, T* b, int64_t n, double lr, double mom, double damp, \
                                              double wd, int nesterov, int first) { \
        sgd_k<T>(p, g, b, n, lr, mom, damp, wd, nesterov, first); }
OPTIM(f32, float) OPTIM(f64, double)
