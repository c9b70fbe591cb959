// Cross-entropy from logits [N, C] against i64 targets, fused: no softmax tensor is materialised.
// One block per row runs the online (max, sum-exp) pass of softmax.cu, then the forward writes
// log(sum) + max − x[target] and the backward writes (softmax − onehot)·g. Rows whose target is `ignore`
// give 0. A target outside [0, C) cannot become an Err without a host sync: the loss is NaN instead and its
// gradient row is 0, so the bad batch is visible in the loss.
#include "common.cuh"

// Online (max, sum-exp) over one row, merged over the block (same scheme as softmax.cu).
template <typename A> __device__ __forceinline__ void ce_merge(A& m, A& s, A m2, A s2) {
    A mm = m > m2 ? m : m2;
    if (mm == -INFINITY) return;
    A a = m == -INFINITY ? (A)0 : s * exp(m - mm);
    A b = m2 == -INFINITY ? (A)0 : s2 * exp(m2 - mm);
    m = mm;
    s = a + b;
}
template <typename T, typename A> __device__ void ce_max_sum(const T* x, int64_t n, A& m, A& s) {
    __shared__ A shm[32], shs[32];
    thread_max_sum<T, A>(x, n, m, s);
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ce_merge(m, s, __shfl_xor_sync(0xffffffff, m, o), __shfl_xor_sync(0xffffffff, s, o));
    int lane = threadIdx.x & 31, warp = threadIdx.x >> 5, nw = blockDim.x >> 5;
    if (lane == 0) { shm[warp] = m; shs[warp] = s; }
    __syncthreads();
    m = lane < nw ? shm[lane] : (A)-INFINITY;
    s = lane < nw ? shs[lane] : (A)0;
#pragma unroll
    for (int o = 16; o > 0; o >>= 1) ce_merge(m, s, __shfl_xor_sync(0xffffffff, m, o), __shfl_xor_sync(0xffffffff, s, o));
    __syncthreads();
}

template <typename T> __device__ void ce_fwd(const T* x, const int64_t* t, T* loss, int64_t c, int64_t ignore) {
    typedef typename Acc<T>::type A;
    int64_t r = blockIdx.x;
    int64_t tv = t[r];
    if (tv == ignore) {
        if (threadIdx.x == 0) loss[r] = from_acc<T>((A)0);
        return;
    }
    x += r * c;
    A m, s;
    ce_max_sum<T, A>(x, c, m, s);
    if (threadIdx.x == 0) {
        A l = (tv < 0 || tv >= c) ? (A)NAN : log(s) + m - to_acc<A>(x[tv]);
        loss[r] = from_acc<T>(l);
    }
}

template <typename T> __device__ void ce_bwd(const T* x, const int64_t* t, const T* g, T* dx, int64_t c, int64_t ignore) {
    typedef typename Acc<T>::type A;
    int64_t r = blockIdx.x;
    int64_t tv = t[r];
    x += r * c;
    dx += r * c;
    if (tv == ignore || tv < 0 || tv >= c) {
        for (int64_t j = threadIdx.x; j < c; j += blockDim.x) dx[j] = from_acc<T>((A)0);
        return;
    }
    A m, s;
    ce_max_sum<T, A>(x, c, m, s);
    A gr = to_acc<A>(g[r]), inv = (A)1 / s;
    // x and dx rows share their alignment (same offsets, same element size): head, packed body, tail.
    RowSplit<T> rs(x, c);
    if ((((uintptr_t)x ^ (uintptr_t)dx) & 15) != 0) rs.head = rs.tail_start = c, rs.packs = 0;  // all scalar
    for (int64_t j = threadIdx.x; j < rs.head; j += blockDim.x) {
        A p = exp(to_acc<A>(x[j]) - m) * inv * gr;
        dx[j] = from_acc<T>(j == tv ? p - gr : p);
    }
    typedef Pack<T> P;
    const P* px = reinterpret_cast<const P*>(x + rs.head);
    P* pd = reinterpret_cast<P*>(dx + rs.head);
#pragma unroll 2
    for (int64_t q = threadIdx.x; q < rs.packs; q += blockDim.x) {
        P in = px[q], out;
#pragma unroll
        for (int e = 0; e < P::N; ++e) {
            A p = exp(to_acc<A>(in.v[e]) - m) * inv * gr;
            out.v[e] = from_acc<T>(rs.head + q * P::N + e == tv ? p - gr : p);
        }
        pd[q] = out;
    }
    for (int64_t j = rs.tail_start + threadIdx.x; j < c; j += blockDim.x) {
        A p = exp(to_acc<A>(x[j]) - m) * inv * gr;
        dx[j] = from_acc<T>(j == tv ? p - gr : p);
    }
}

#define CE(S, T) \
    extern "C" __global__ void cross_entropy_forward_##S(const T* x, const int64_t* t, T* loss, int64_t c, int64_t ignore) { \
        ce_fwd<T>(x, t, loss, c, ignore); } \
    extern "C" __global__ void cross_entropy_backward_##S(const T* x, const int64_t* t, const T* g, T* dx, int64_t c, int64_t ignore) { \
        ce_bwd<T>(x, t, g, dx, c, ignore); }
FOR_FLOATS(CE)
