// Elementwise kernels: unary maps, broadcasting binary maps, comparisons, where, casts/strided copies,
// copy_into and fill. Every launch is a grid-stride loop with one thread per output element, except the
// tiled transposing copy. Operands
// arrive as `Strided` views (the host coalesces dims and sets broadcast dims' stride to 0); when every
// operand is contiguous and 16-byte aligned, a fast path moves 128 bits per load/store.
#include "common.cuh"

// Unary op codes, in the order of munja::UnaryOp.
enum {
    U_NEG, U_EXP, U_LOG, U_SQRT, U_RSQRT, U_RECIP, U_ABS, U_SIGN, U_TANH, U_SIGMOID, U_RELU, U_GELU_TANH,
    U_GELU_ERF, U_SILU, U_GELU_TANH_GRAD, U_GELU_ERF_GRAD, U_SILU_GRAD, U_POWF, U_CLAMP, U_IN_RANGE, U_AFFINE
};

template <typename A> __device__ __forceinline__ A sigmoid_(A x) { return (A)1 / ((A)1 + exp(-x)); }

// The scalar function of a unary op in the compute type A; `p`, `q` are the op's scalars.
template <typename A> __device__ __forceinline__ A unary_fn(int op, A x, A p, A q) {
    const A SQRT_2_OVER_PI = (A)0.7978845608028654, GELU_C = (A)0.044715;
    const A INV_SQRT_2 = (A)0.7071067811865476, INV_SQRT_2PI = (A)0.3989422804014327;
    switch (op) {
    case U_NEG: return -x;
    case U_EXP: return exp(x);
    case U_LOG: return log(x);
    case U_SQRT: return sqrt(x);
    case U_RSQRT: return (A)1 / sqrt(x);
    case U_RECIP: return (A)1 / x;
    case U_ABS: return fabs(x);
    case U_SIGN: return x > (A)0 ? (A)1 : (x < (A)0 ? (A)-1 : (A)0);
    case U_TANH: return tanh(x);
    case U_SIGMOID: return sigmoid_(x);
    case U_RELU: return x > (A)0 ? x : (A)0;
    case U_GELU_TANH: {
        A inner = SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
        return (A)0.5 * x * ((A)1 + tanh(inner));
    }
    case U_GELU_ERF: return (A)0.5 * x * ((A)1 + erf(x * INV_SQRT_2));
    case U_SILU: return x * sigmoid_(x);
    case U_GELU_TANH_GRAD: {
        A inner = SQRT_2_OVER_PI * (x + GELU_C * x * x * x);
        A t = tanh(inner);
        A dinner = SQRT_2_OVER_PI * ((A)1 + (A)3 * GELU_C * x * x);
        return (A)0.5 * ((A)1 + t) + (A)0.5 * x * ((A)1 - t * t) * dinner;
    }
    case U_GELU_ERF_GRAD:
        return (A)0.5 * ((A)1 + erf(x * INV_SQRT_2)) + x * INV_SQRT_2PI * exp((A)-0.5 * x * x);
    case U_SILU_GRAD: {
        A s = sigmoid_(x);
        return s * ((A)1 + x * ((A)1 - s));
    }
    case U_POWF: return pow(x, p);
    case U_CLAMP: return fmin(fmax(x, p), q);
    case U_IN_RANGE: return (x >= p && x <= q) ? (A)1 : (A)0;
    case U_AFFINE: return x * p + q;
    }
    return x;
}

// Packs per thread per step of the vector paths: several 128-bit loads in flight per thread hide latency.
#define UNROLL 4

// y[i] = f(x[i]). Fast path: x contiguous (`contig`), pointers 16-byte aligned: one Pack per thread step.
template <typename T>
__device__ void unary_kernel(const T* x, Strided sx, T* y, int64_t n, int op, double p_, double q_, int contig) {
    typedef typename Acc<T>::type A;
    A p = (A)p_, q = (A)q_;
    if (contig) {
        x += sx.offset;
        if (aligned16(x) && aligned16(y)) {
            typedef Pack<T> P;
            int64_t nv = n / P::N;
            int64_t stride = (int64_t)gridDim.x * blockDim.x;
            for (int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i0 < nv; i0 += stride * UNROLL) {
                P a[UNROLL];
#pragma unroll
                for (int u = 0; u < UNROLL; ++u)
                    if (i0 + u * stride < nv) a[u] = reinterpret_cast<const P*>(x)[i0 + u * stride];
#pragma unroll
                for (int u = 0; u < UNROLL; ++u) {
                    if (i0 + u * stride >= nv) break;
                    P r;
#pragma unroll
                    for (int k = 0; k < P::N; ++k) r.v[k] = from_acc<T>(unary_fn<A>(op, to_acc<A>(a[u].v[k]), p, q));
                    reinterpret_cast<P*>(y)[i0 + u * stride] = r;
                }
            }
            GRID_LOOP(i, n - nv * P::N) {
                int64_t j = nv * P::N + i;
                y[j] = from_acc<T>(unary_fn<A>(op, to_acc<A>(x[j]), p, q));
            }
        } else {
            GRID_LOOP(i, n) y[i] = from_acc<T>(unary_fn<A>(op, to_acc<A>(x[i]), p, q));
        }
        return;
    }
    GRID_LOOP(i, n) y[i] = from_acc<T>(unary_fn<A>(op, to_acc<A>(x[strided_offset_n(sx, i, n)]), p, q));
}

// Binary op codes, in the order of munja::BinaryOp.
enum { B_ADD, B_SUB, B_MUL, B_DIV, B_MAX, B_MIN };

template <typename A> __device__ __forceinline__ A binary_fn(int op, A x, A y) {
    switch (op) {
    case B_ADD: return x + y;
    case B_SUB: return x - y;
    case B_MUL: return x * y;
    case B_DIV: return x / y;
    case B_MAX: return (x != x || x > y) ? x : y;  // NaN propagates, as in PyTorch
    case B_MIN: return (x != x || x < y) ? x : y;
    }
    return x;
}
// Integers: add/sub/mul wrap (two's complement, as Rust's wrapping ops); the host allows only those.
template <> __device__ __forceinline__ int64_t binary_fn<int64_t>(int op, int64_t x, int64_t y) {
    uint64_t a = (uint64_t)x, b = (uint64_t)y;
    switch (op) {
    case B_ADD: return (int64_t)(a + b);
    case B_SUB: return (int64_t)(a - b);
    default: return (int64_t)(a * b);
    }
}

template <typename T> struct BinAcc { typedef typename Acc<T>::type type; };
template <> struct BinAcc<int64_t> { typedef int64_t type; };

// out[i] = a[i] op b[i] with both views broadcast to the output shape. Fast path: both contiguous.
template <typename T>
__device__ void binary_kernel(const T* a, Strided sa, const T* b, Strided sb, T* y, int64_t n, int op, int contig) {
    typedef typename BinAcc<T>::type A;
    if (contig) {
        a += sa.offset;
        b += sb.offset;
        if (aligned16(a) && aligned16(b) && aligned16(y)) {
            typedef Pack<T> P;
            int64_t nv = n / P::N;
            int64_t stride = (int64_t)gridDim.x * blockDim.x;
            for (int64_t i0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x; i0 < nv; i0 += stride * UNROLL) {
                P u[UNROLL], v[UNROLL];
#pragma unroll
                for (int j = 0; j < UNROLL; ++j)
                    if (i0 + j * stride < nv) {
                        u[j] = reinterpret_cast<const P*>(a)[i0 + j * stride];
                        v[j] = reinterpret_cast<const P*>(b)[i0 + j * stride];
                    }
#pragma unroll
                for (int j = 0; j < UNROLL; ++j) {
                    if (i0 + j * stride >= nv) break;
                    P r;
#pragma unroll
                    for (int k = 0; k < P::N; ++k) r.v[k] = from_acc<T>(binary_fn<A>(op, to_acc<A>(u[j].v[k]), to_acc<A>(v[j].v[k])));
                    reinterpret_cast<P*>(y)[i0 + j * stride] = r;
                }
            }
            GRID_LOOP(i, n - nv * P::N) {
                int64_t j = nv * P::N + i;
                y[j] = from_acc<T>(binary_fn<A>(op, to_acc<A>(a[j]), to_acc<A>(b[j])));
            }
        } else {
            GRID_LOOP(i, n) y[i] = from_acc<T>(binary_fn<A>(op, to_acc<A>(a[i]), to_acc<A>(b[i])));
        }
        return;
    }
    GRID_LOOP(i, n) {
        A u = to_acc<A>(a[strided_offset_n(sa, i, n)]), v = to_acc<A>(b[strided_offset_n(sb, i, n)]);
        y[i] = from_acc<T>(binary_fn<A>(op, u, v));
    }
}

// Bias-style broadcasts, a [rows, inner] view whose operands are each the whole contiguous tensor or one
// contiguous row repeated (row stride 0), all 16-byte aligned with whole packs per row: one flat loop
// over the output's packs with UNROLL of them in flight per thread, as binary_kernel's fast path, the
// repeated row indexed modulo its packs. False (nothing done) when the views are not of that form.
template <typename T>
__device__ bool binary_rows_flat(const T* a, const Strided& sa, const T* b, const Strided& sb, T* y, int64_t n, int op) {
    typedef typename BinAcc<T>::type A;
    typedef Pack<T> P;
    if (sa.rank != 2) return false;
    const int64_t inner = sa.shape[1];
    const bool fa = sa.strides[0] == inner, fb = sb.strides[0] == inner;
    if (sa.strides[1] != 1 || sb.strides[1] != 1 || inner % P::N != 0 || !(fa || sa.strides[0] == 0) ||
        !(fb || sb.strides[0] == 0))
        return false;
    a += sa.offset;
    b += sb.offset;
    if (!aligned16(a) || !aligned16(b) || !aligned16(y)) return false;
    const P* pa = reinterpret_cast<const P*>(a);
    const P* pb = reinterpret_cast<const P*>(b);
    const int64_t np = n / P::N, ip = inner / P::N;
    const bool small = np <= 0xffffffffll;  // 32-bit modulo when it fits: several times cheaper
    auto row_pack = [&](int64_t q) -> int64_t { return small ? (int64_t)((uint32_t)q % (uint32_t)ip) : q % ip; };
    const int64_t stride = (int64_t)gridDim.x * gridDim.y * blockDim.x;
    const int64_t t0 = ((int64_t)blockIdx.y * gridDim.x + blockIdx.x) * blockDim.x + threadIdx.x;
    for (int64_t q0 = t0; q0 < np; q0 += stride * UNROLL) {
        P u[UNROLL], v[UNROLL];
#pragma unroll
        for (int j = 0; j < UNROLL; ++j) {
            int64_t q = q0 + j * stride;
            if (q < np) {
                u[j] = pa[fa ? q : row_pack(q)];
                v[j] = pb[fb ? q : row_pack(q)];
            }
        }
#pragma unroll
        for (int j = 0; j < UNROLL; ++j) {
            int64_t q = q0 + j * stride;
            if (q >= np) break;
            P r;
#pragma unroll
            for (int k = 0; k < P::N; ++k) r.v[k] = from_acc<T>(binary_fn<A>(op, to_acc<A>(u[j].v[k]), to_acc<A>(v[j].v[k])));
            reinterpret_cast<P*>(y)[q] = r;
        }
    }
    return true;
}

// Strided/broadcast operands with a long last dim (bias adds, row/column broadcasts): blockIdx.y walks
// rows, threads walk the last dim, so the index arithmetic is paid once per row, not per element.
template <typename T>
__device__ void binary_rows_kernel(const T* a, Strided sa, const T* b, Strided sb, T* y, int64_t n, int op) {
    typedef typename BinAcc<T>::type A;
    if (binary_rows_flat(a, sa, b, sb, y, n, op)) return;
    int last = sa.rank - 1;
    int64_t inner = sa.shape[last], rows = n / inner;
    int64_t ia = sa.strides[last], ib = sb.strides[last];
    typedef Pack<T> P;
    const int64_t t0 = (int64_t)blockIdx.x * blockDim.x + threadIdx.x, step = (int64_t)gridDim.x * blockDim.x;
    for (int64_t r = blockIdx.y; r < rows; r += gridDim.y) {
        int64_t oa = row_offset(sa, r, n), ob = row_offset(sb, r, n);
        const T *ar = a + oa, *br = b + ob;
        T* yr = y + r * inner;
        // Rows of whole aligned packs with unit (or, for b, zero) inner strides: 128-bit loads and stores.
        if (ia == 1 && (ib == 1 || ib == 0) && inner % P::N == 0 && aligned16(ar) && aligned16(yr) &&
            (ib == 0 || aligned16(br))) {
            A bs = to_acc<A>(br[0]);
            for (int64_t q = t0; q < inner / P::N; q += step) {
                P u = reinterpret_cast<const P*>(ar)[q], v, o;
                if (ib == 1) v = reinterpret_cast<const P*>(br)[q];
#pragma unroll
                for (int k = 0; k < P::N; ++k)
                    o.v[k] = from_acc<T>(binary_fn<A>(op, to_acc<A>(u.v[k]), ib == 1 ? to_acc<A>(v.v[k]) : bs));
                reinterpret_cast<P*>(yr)[q] = o;
            }
            continue;
        }
        for (int64_t j = t0; j < inner; j += step)
            yr[j] = from_acc<T>(binary_fn<A>(op, to_acc<A>(ar[j * ia]), to_acc<A>(br[j * ib])));
    }
}

// Comparison codes, in the order of munja::CmpOp. Compared in the element's own precision (bf16/f16 as f32).
template <typename T> struct CmpT { typedef T type; };
template <> struct CmpT<bf16> { typedef float type; };
template <> struct CmpT<f16> { typedef float type; };
template <typename T> __device__ __forceinline__ typename CmpT<T>::type cmp_val(T x) { return (typename CmpT<T>::type)x; }
template <> __device__ __forceinline__ float cmp_val<bf16>(bf16 x) { return __bfloat162float(x); }
template <> __device__ __forceinline__ float cmp_val<f16>(f16 x) { return __half2float(x); }

// mask[i] = a[i] cmp b[i] as 0/1 bytes.
// A view read at flat output index i without strided_offset_n's division per dim, for the forms that
// broadcasting leaves once dims are merged (storage.rs::views): dense (i), one row repeated over the rows
// (i mod inner: a causal mask over batch and heads), one value (a scalar operand), one value per row
// (i / inner). kind -1 is none of these, and anything past 2^32 elements: the per-dim path.
// compare and where took 86 and 234 µs on the 25M-element attention scores of a GPT step on an H200,
// 3 to 8 times a copy's time, on those divisions.
struct FlatView {
    int kind;
    int64_t off;
    uint32_t inner;
};
enum { FLAT_DENSE, FLAT_ROW_REPEAT, FLAT_SCALAR, FLAT_PER_ROW };
__device__ __forceinline__ FlatView flat_view(const Strided& s, int64_t n) {
    FlatView f{-1, s.offset, 1};
    if (n > 0xffffffffll || s.rank > 2) return f;
    if (s.rank == 0) {
        f.kind = FLAT_SCALAR;
    } else if (s.rank == 1) {
        if (s.strides[0] == 1) f.kind = FLAT_DENSE;
        else if (s.strides[0] == 0) f.kind = FLAT_SCALAR;
    } else {
        const int64_t inner = s.shape[1], sr = s.strides[0], sc = s.strides[1];
        f.inner = (uint32_t)inner;
        if (sc == 1 && sr == inner) f.kind = FLAT_DENSE;
        else if (sc == 1 && sr == 0) f.kind = FLAT_ROW_REPEAT;
        else if (sc == 0 && sr == 0) f.kind = FLAT_SCALAR;
        else if (sc == 0 && sr == 1) f.kind = FLAT_PER_ROW;
    }
    return f;
}
__device__ __forceinline__ int64_t flat_at(const FlatView& f, const Strided& s, int64_t i, int64_t n) {
    switch (f.kind) {
    case FLAT_DENSE: return f.off + i;
    case FLAT_ROW_REPEAT: return f.off + (uint32_t)i % f.inner;
    case FLAT_SCALAR: return f.off;
    case FLAT_PER_ROW: return f.off + (uint32_t)i / f.inner;
    default: return strided_offset_n(s, i, n);
    }
}

template <typename T>
__device__ void compare_kernel(const T* a, Strided sa, const T* b, Strided sb, uint8_t* y, int64_t n, int op) {
    const FlatView fa = flat_view(sa, n), fb = flat_view(sb, n);
    GRID_LOOP(i, n) {
        auto u = cmp_val(a[flat_at(fa, sa, i, n)]);
        auto v = cmp_val(b[flat_at(fb, sb, i, n)]);
        bool r;
        switch (op) {
        case 0: r = u == v; break;
        case 1: r = u != v; break;
        case 2: r = u < v; break;
        case 3: r = u <= v; break;
        case 4: r = u > v; break;
        default: r = u >= v; break;
        }
        y[i] = r ? 1 : 0;
    }
}

// out[i] = m[i] ? a[i] : b[i] with all three views broadcast to the output shape.
template <typename T>
__device__ void where_kernel(const uint8_t* m, Strided sm, const T* a, Strided sa, const T* b, Strided sb, T* y, int64_t n) {
    const FlatView fm = flat_view(sm, n), fa = flat_view(sa, n), fb = flat_view(sb, n);
    GRID_LOOP(i, n) y[i] = m[flat_at(fm, sm, i, n)] ? a[flat_at(fa, sa, i, n)] : b[flat_at(fb, sb, i, n)];
}

// Contiguous out[i] = convert(x[view i]) (common.cuh).
template <typename S, typename D> __device__ void cast_kernel(const S* x, Strided sx, D* y, int64_t n, int contig) {
    if (contig) {
        x += sx.offset;
        GRID_LOOP(i, n) y[i] = convert<S, D>(x[i]);
        return;
    }
    GRID_LOOP(i, n) y[i] = convert<S, D>(x[strided_offset_n(sx, i, n)]);
}

// dst[view i] = src[view i]: both views of one logical shape.
template <typename T> __device__ void copy_into_kernel(T* d, Strided sd, const T* s, Strided ss, int64_t n) {
    GRID_LOOP(i, n) d[strided_offset_n(sd, i, n)] = s[strided_offset_n(ss, i, n)];
}

// Contiguous y = a view whose last two dims are transposed in memory (the second-to-last has unit
// stride, the last does not), e.g. x.t().contiguous(): TRANSPOSE_TILE² tiles through shared memory, so
// both the reads (along the source's unit-stride dim) and the writes (along the output's) are coalesced.
// Block (32, 8): each thread issues all 16 of its loads before it stores any. 32x32 tiles, four loads per
// thread, kept too few bytes in flight: 57% of copy bandwidth on an H200 (43% with the loads one by one).
// Grid (ceil(C/64), ceil(R/64), batches, capped); dims before the last two are batches.
#define TRANSPOSE_TILE 64
template <typename T> __device__ void transpose_copy_kernel(const T* x, Strided sx, T* y, int64_t n) {
    constexpr int TT = TRANSPOSE_TILE, RX = TT / 32, CY = TT / 8;  // per thread: RX × CY values
    __shared__ T tile[TT][TT + 1];  // +1 column: the transposed reads hit different banks
    const int rank = sx.rank;
    const int64_t R = sx.shape[rank - 2], C = sx.shape[rank - 1], sc = sx.strides[rank - 1];
    const int64_t batches = n / (R * C), r0 = (int64_t)blockIdx.y * TT, c0 = (int64_t)blockIdx.x * TT;
    for (int64_t bt = blockIdx.z; bt < batches; bt += gridDim.z) {
        int64_t base = sx.offset, q = bt;
        for (int d = rank - 3; d >= 0; --d) {
            base += (q % sx.shape[d]) * sx.strides[d];
            q /= sx.shape[d];
        }
        // One running pointer (not 16 64-bit addresses): the loads need few registers to be in flight.
        const int64_t r = r0 + threadIdx.x, c = c0 + threadIdx.y;
        const T* p = x + base + r + c * sc;
        const bool full = r0 + TT <= R && c0 + TT <= C;
        T v[CY][RX];
#pragma unroll
        for (int k = 0; k < CY; ++k) {
#pragma unroll
            for (int j = 0; j < RX; ++j)
                v[k][j] = (full || (c + 8 * k < C && r + 32 * j < R)) ? p[32 * j] : T();
            p += 8 * sc;
        }
#pragma unroll
        for (int k = 0; k < CY; ++k)
#pragma unroll
            for (int j = 0; j < RX; ++j) tile[threadIdx.y + 8 * k][threadIdx.x + 32 * j] = v[k][j];
        __syncthreads();
#pragma unroll
        for (int k = 0; k < CY; ++k) {
            const int64_t r = r0 + threadIdx.y + 8 * k;
#pragma unroll
            for (int j = 0; j < RX; ++j) {
                const int64_t c = c0 + threadIdx.x + 32 * j;
                if (r < R && c < C) y[(bt * R + r) * C + c] = tile[threadIdx.x + 32 * j][threadIdx.y + 8 * k];
            }
        }
        __syncthreads();
    }
}

// Strided copies whose innermost dim is contiguous and made of whole 16-byte packs at 16-byte-aligned
// offsets (attention's head split and merge, cat's slices): the host passes the views in units of packs,
// so each thread moves 16 bytes and pays the index arithmetic once per pack, whatever the element type.
__device__ void copy_packs_kernel(const uint4* x, Strided sx, uint4* y, int64_t n) {
    GRID_LOOP(i, n) y[i] = x[strided_offset_n(sx, i, n)];
}
__device__ void copy_into_packs_kernel(uint4* d, Strided sd, const uint4* s, Strided ss, int64_t n) {
    GRID_LOOP(i, n) d[strided_offset_n(sd, i, n)] = s[strided_offset_n(ss, i, n)];
}

// y[i] = v for i < n: 16-byte stores from an aligned start (one 2-byte store per thread made the bf16
// zero fills of a GPT step run at about a third of copy bandwidth on an H200), then the tail.
template <typename T> __device__ void fill_kernel(T* y, int64_t n, double v) {
    const T x = from_acc<T, double>(v);
    if (aligned16(y)) {
        typedef Pack<T> P;
        P pk;
#pragma unroll
        for (int k = 0; k < P::N; ++k) pk.v[k] = x;
        const int64_t np = n / P::N;
        GRID_LOOP(i, np) reinterpret_cast<P*>(y)[i] = pk;
        GRID_LOOP(i, n - np * P::N) y[np * P::N + i] = x;
        return;
    }
    GRID_LOOP(i, n) y[i] = x;
}

#define UNARY(S, T) \
    extern "C" __global__ void unary_##S(const T* x, Strided sx, T* y, int64_t n, int op, double p, double q, int c) { \
        unary_kernel<T>(x, sx, y, n, op, p, q, c); }
FOR_FLOATS(UNARY)

#define BINARY(S, T) \
    extern "C" __global__ void binary_##S(const T* a, Strided sa, const T* b, Strided sb, T* y, int64_t n, int op, int c) { \
        binary_kernel<T>(a, sa, b, sb, y, n, op, c); }
FOR_FLOATS(BINARY) BINARY(i64, int64_t)

#define BINARY_ROWS(S, T) \
    extern "C" __global__ void binary_rows_##S(const T* a, Strided sa, const T* b, Strided sb, T* y, int64_t n, int op) { \
        binary_rows_kernel<T>(a, sa, b, sb, y, n, op); }
FOR_FLOATS(BINARY_ROWS) BINARY_ROWS(i64, int64_t)

#define COMPARE(S, T) \
    extern "C" __global__ void compare_##S(const T* a, Strided sa, const T* b, Strided sb, uint8_t* y, int64_t n, int op) { \
        compare_kernel<T>(a, sa, b, sb, y, n, op); }
FOR_ALL(COMPARE)

#define WHERE(S, T) \
    extern "C" __global__ void where_##S(const uint8_t* m, Strided sm, const T* a, Strided sa, const T* b, Strided sb, T* y, int64_t n) { \
        where_kernel<T>(m, sm, a, sa, b, sb, y, n); }
FOR_ALL(WHERE)

#define COPY_INTO(S, T) \
    extern "C" __global__ void copy_into_##S(T* d, Strided sd, const T* s, Strided ss, int64_t n) { copy_into_kernel<T>(d, sd, s, ss, n); }
FOR_ALL(COPY_INTO)

#define TRANSPOSE_COPY(S, T) \
    extern "C" __global__ void __launch_bounds__(256, 4) transpose_copy_##S(const T* x, Strided sx, T* y, int64_t n) { transpose_copy_kernel<T>(x, sx, y, n); }
FOR_ALL(TRANSPOSE_COPY)

extern "C" __global__ void copy_packs(const uint4* x, Strided sx, uint4* y, int64_t n) { copy_packs_kernel(x, sx, y, n); }
extern "C" __global__ void copy_into_packs(uint4* d, Strided sd, const uint4* s, Strided ss, int64_t n) {
    copy_into_packs_kernel(d, sd, s, ss, n);
}

#define FILL(S, T) extern "C" __global__ void fill_##S(T* y, int64_t n, double v) { fill_kernel<T>(y, n, v); }
FOR_ALL(FILL)

#define CAST_TO(S, T, D, DT) \
    extern "C" __global__ void cast_##S##_##D(const T* x, Strided sx, DT* y, int64_t n, int c) { cast_kernel<T, DT>(x, sx, y, n, c); }
#define CAST_FROM(S, T) \
    CAST_TO(S, T, f32, float) CAST_TO(S, T, f64, double) CAST_TO(S, T, bf16, bf16) CAST_TO(S, T, f16, f16) \
    CAST_TO(S, T, i64, int64_t) CAST_TO(S, T, u8, uint8_t)
FOR_ALL(CAST_FROM)
