// Cross-entropy from logits [N, C] against i64 targets, fused: no softmax tensor is materialised.
// The forward runs one block per row over the online (max, sum-exp) pass (row_max_sum in common.cuh, with
// the hardware exp: a GPT-2 row is 50257 wide, and the accurate expf made the bf16 forward compute-bound),
// writes log(sum) + max − x[target], and keeps (max, sum) per row; the backward reads the row once and
// writes (softmax − onehot)·g from them. Rows whose target is `ignore` give 0. A target outside [0, C)
// cannot become an Err without a host sync: the loss is NaN instead and its gradient row is 0, so the
// bad batch is visible in the loss.
#include "common.cuh"

// The hardware exp for f32 compute (f32, bf16, f16); f64 keeps the accurate path, which also keeps it
// within the 64 registers of a 1024-thread block (ROW_BOUNDS) without spilling.
template <typename A> constexpr bool CE_FAST = sizeof(A) == 4;

// stats[2r], stats[2r+1] = the row's max and sum of exp(x − max), kept for the backward.
template <typename T>
__device__ void ce_fwd(const T* x, const int64_t* t, T* loss, typename Acc<T>::type* stats, int64_t c, int64_t ignore) {
    typedef typename Acc<T>::type A;
    int64_t r = blockIdx.x;
    int64_t tv = t[r];
    if (tv == ignore) {
        if (threadIdx.x == 0) loss[r] = from_acc<T>((A)0), stats[2 * r] = 0, stats[2 * r + 1] = 1;
        return;
    }
    x += r * c;
    A m, s;
    row_max_sum<T, A, CE_FAST<A>>(x, c, m, s);
    if (threadIdx.x == 0) {
        A l = (tv < 0 || tv >= c) ? (A)NAN : log(s) + m - to_acc<A>(x[tv]);
        loss[r] = from_acc<T>(l);
        stats[2 * r] = m;
        stats[2 * r + 1] = s;
    }
}

// One read of the row: the forward's (max, sum) give softmax directly.
template <typename T>
__device__ void ce_bwd(const T* x, const int64_t* t, const typename Acc<T>::type* stats, const T* g, T* dx, int64_t c,
                       int64_t ignore) {
    typedef typename Acc<T>::type A;
    int64_t r = blockIdx.x;
    int64_t tv = t[r];
    x += r * c;
    dx += r * c;
    if (tv == ignore || tv < 0 || tv >= c) {
        for (int64_t j = threadIdx.x; j < c; j += blockDim.x) dx[j] = from_acc<T>((A)0);
        return;
    }
    A m = stats[2 * r], s = stats[2 * r + 1];
    A gr = to_acc<A>(g[r]), scale = gr / s;
    // x and dx rows share their alignment (same offsets, same element size): head, packed body, tail.
    RowSplit<T> rs(x, c);
    // All scalar when the rows' alignments differ, and for f64: its accurate exp, unrolled over packs, does
    // not fit the 64 registers of a 1024-thread block (ROW_BOUNDS).
    if ((((uintptr_t)x ^ (uintptr_t)dx) & 15) != 0 || sizeof(T) == 8) rs.head = rs.tail_start = c, rs.packs = 0;
    auto grad = [&](A v, int64_t j) { A p = fast_exp(v - m) * scale; return from_acc<T>(j == tv ? p - gr : p); };
    for (int64_t j = threadIdx.x; j < rs.head; j += blockDim.x) dx[j] = grad(to_acc<A>(x[j]), j);
    typedef Pack<T> P;
    P* pd = reinterpret_cast<P*>(dx + rs.head);
    // Loads batched ahead of the stores (the compiler may not move loads past stores to dx).
    for_packs_batched<4>(reinterpret_cast<const P*>(x + rs.head), rs.packs, [&](int64_t q, const P& in) {
        A v[P::N];
        widen(in, v);
        P out;
#pragma unroll
        for (int e = 0; e < P::N; ++e) out.v[e] = grad(v[e], rs.head + q * P::N + e);
        pd[q] = out;
    });
    for (int64_t j = rs.tail_start + threadIdx.x; j < c; j += blockDim.x) dx[j] = grad(to_acc<A>(x[j]), j);
}

// Blocks of CE_FORWARD_THREADS (src/backend/cuda/norm.rs) the forward keeps resident per SM: rows end in
// a block reduction with no loads in flight, so more rows per SM keep the memory busy. f32 fits the 32
// registers of 8 blocks; bf16 and f16 spill there and get the 40 of 6 blocks (unbounded they took 57:
// 4 blocks); f64 is left unbounded.
#define CE_FORWARD_THREADS 256
template <typename T> __host__ __device__ constexpr int ce_forward_blocks() { return sizeof(T) == 4 ? 8 : sizeof(T) == 2 ? 6 : 1; }

#define CE(S, T) \
    extern "C" __global__ void __launch_bounds__(CE_FORWARD_THREADS, ce_forward_blocks<T>()) \
    cross_entropy_forward_##S(const T* x, const int64_t* t, T* loss, Acc<T>::type* stats, int64_t c, int64_t ignore) { \
        ce_fwd<T>(x, t, loss, stats, c, ignore); } \
    extern "C" __global__ void ROW_BOUNDS cross_entropy_backward_##S(const T* x, const int64_t* t, const Acc<T>::type* stats, \
                                                          const T* g, T* dx, int64_t c, int64_t ignore) { \
        ce_bwd<T>(x, t, stats, g, dx, c, ignore); }
FOR_FLOATS(CE)
