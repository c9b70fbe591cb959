// Philox4x32-10 random numbers, the same stream as src/rng.rs: element i of a uniform draw is word i%4 of
// block (start + i/4); normal pair i uses block (start + i) through Box-Muller in f64. One thread per block.
#include "common.cuh"

__device__ __forceinline__ uint4 philox(uint64_t seed, uint64_t block) {
    uint32_t c0 = (uint32_t)block, c1 = (uint32_t)(block >> 32), c2 = 0, c3 = 0;
    uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
#pragma unroll
    for (int r = 0; r < 10; ++r) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c0, p1 = (uint64_t)0xCD9E8D57u * c2;
        uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0, n1 = (uint32_t)p1, n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1, n3 = (uint32_t)p0;
        c0 = n0; c1 = n1; c2 = n2; c3 = n3;
        k0 += 0x9E3779B9u;
        k1 += 0xBB67AE85u;
    }
    return make_uint4(c0, c1, c2, c3);
}

// 24 random bits as a float in [0, 1), exact in f32.
__device__ __forceinline__ float unit(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }

// The largest value below 1 in T. A 24-bit draw rounded to bf16 or f16 can reach 1.0; it takes this value
// instead, so draws stay in [0, 1) (the CPU backend does the same). f32/f64 hold every draw exactly.
template <typename T> __device__ __forceinline__ double below_one() { return 1.0; }
template <> __device__ __forceinline__ double below_one<bf16>() { return 0.99609375; }    // 1 − 2^-8
template <> __device__ __forceinline__ double below_one<f16>() { return 0.99951171875; }  // 1 − 2^-11

// One uniform draw from a Philox word, rounded to T and kept below 1.
template <typename T> __device__ __forceinline__ T uniform_value(uint32_t w) {
    T v = from_acc<T, double>((double)unit(w));
    return to_acc<double>(v) >= 1.0 ? from_acc<T, double>(below_one<T>()) : v;
}

template <typename T> __device__ void uniform_k(T* y, int64_t n, uint64_t seed, uint64_t start) {
    GRID_LOOP(b, (n + 3) / 4) {
        uint4 r = philox(seed, start + (uint64_t)b);
        uint32_t w[4] = {r.x, r.y, r.z, r.w};
        for (int k = 0; k < 4 && 4 * b + k < n; ++k) y[4 * b + k] = uniform_value<T>(w[k]);
    }
}

// Dropout's scaled keep mask: element i is (u_i >= p) ? scale : 0 with u_i element i of uniform_k's draw,
// and p and scale rounded as the ops it replaces round them (ge_scalar compares with p stored in T; the
// affine multiplies the 0/1 cast in T's compute type): bit for bit uniform → ge_scalar → cast → affine.
template <typename T> struct DropoutDraw {
    double pt;
    T keep, drop;
    __device__ DropoutDraw(double p, double scale) {
        typedef typename Acc<T>::type A;
        const A s = (A)scale;
        pt = to_acc<double>(from_acc<T, double>(p));
        keep = from_acc<T>((A)1 * s + (A)0), drop = from_acc<T>((A)0 * s + (A)0);
    }
    // The mask value for Philox word w.
    __device__ __forceinline__ T at(uint32_t w) const { return to_acc<double>(uniform_value<T>(w)) >= pt ? keep : drop; }
};

template <typename T>
__device__ void dropout_mask_k(T* y, int64_t n, uint64_t seed, uint64_t start, double p, double scale) {
    const DropoutDraw<T> draw(p, scale);
    GRID_LOOP(b, (n + 3) / 4) {
        uint4 r = philox(seed, start + (uint64_t)b);
        uint32_t w[4] = {r.x, r.y, r.z, r.w};
        for (int k = 0; k < 4 && 4 * b + k < n; ++k) y[4 * b + k] = draw.at(w[k]);
    }
}

// Four consecutive elements, one Philox block's worth, loaded and stored as one access where aligned.
template <typename T> struct alignas(4 * sizeof(T)) Quad {
    T v[4];
};

// Dropout applied: y[i] = x[i] · mask_i, the mask as dropout_mask_k draws it and the product as the binary
// mul forms it (in T's compute type, rounded once): bit for bit dropout_mask then mul, with no mask in
// memory. Forward, that saves writing the mask and reading it back; backward, the gradient gets the same
// draw again instead of reading a stored mask, and autograd keeps no mask alive between the passes.
template <typename T>
__device__ void dropout_apply_k(const T* x, T* y, int64_t n, uint64_t seed, uint64_t start, double p, double scale) {
    typedef typename Acc<T>::type A;
    const DropoutDraw<T> draw(p, scale);
    const bool quads = ((uintptr_t)x % sizeof(Quad<T>)) == 0 && ((uintptr_t)y % sizeof(Quad<T>)) == 0;
    GRID_LOOP(b, (n + 3) / 4) {
        uint4 r = philox(seed, start + (uint64_t)b);
        uint32_t w[4] = {r.x, r.y, r.z, r.w};
        if (quads && 4 * b + 3 < n) {
            Quad<T> in = reinterpret_cast<const Quad<T>*>(x)[b], out;
#pragma unroll
            for (int k = 0; k < 4; ++k) out.v[k] = from_acc<T>(to_acc<A>(in.v[k]) * to_acc<A>(draw.at(w[k])));
            reinterpret_cast<Quad<T>*>(y)[b] = out;
        } else {
            for (int k = 0; k < 4 && 4 * b + k < n; ++k)
                y[4 * b + k] = from_acc<T>(to_acc<A>(x[4 * b + k]) * to_acc<A>(draw.at(w[k])));
        }
    }
}

template <typename T> __device__ void normal_k(T* y, int64_t n, uint64_t seed, uint64_t start) {
    const double inv53 = 1.0 / 9007199254740992.0;
    GRID_LOOP(b, (n + 1) / 2) {
        uint4 r = philox(seed, start + (uint64_t)b);
        double u1 = 1.0 - (double)((((uint64_t)r.x) << 21) ^ ((uint64_t)r.y >> 11)) * inv53;
        double u2 = (double)((((uint64_t)r.z) << 21) ^ ((uint64_t)r.w >> 11)) * inv53;
        double rad = sqrt(-2.0 * log(u1));
        double theta = 2.0 * 3.141592653589793 * u2;
        y[2 * b] = from_acc<T, double>(rad * cos(theta));
        if (2 * b + 1 < n) y[2 * b + 1] = from_acc<T, double>(rad * sin(theta));
    }
}

#define RANDOM(S, T) \
    extern "C" __global__ void uniform_##S(T* y, int64_t n, uint64_t seed, uint64_t start) { uniform_k<T>(y, n, seed, start); } \
    extern "C" __global__ void normal_##S(T* y, int64_t n, uint64_t seed, uint64_t start) { normal_k<T>(y, n, seed, start); } \
    extern "C" __global__ void dropout_mask_##S(T* y, int64_t n, uint64_t seed, uint64_t start, double p, double scale) { \
        dropout_mask_k<T>(y, n, seed, start, p, scale); } \
    extern "C" __global__ void dropout_apply_##S(const T* x, T* y, int64_t n, uint64_t seed, uint64_t start, double p, \
                                                 double scale) { \
        dropout_apply_k<T>(x, y, n, seed, start, p, scale); }
FOR_FLOATS(RANDOM)
