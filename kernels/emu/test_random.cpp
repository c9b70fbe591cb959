// kernels/random.cu on the emulator: uniform and normal, launched as src/backend/cuda/random.rs does, against
// a port of src/rng.rs (Philox4x32-10, uniform_from, normal_from): uniform must match bit for bit in every
// float type (the CPU rounds its f32 draws to the dtype), normal to rounding, for several seeds and start
// blocks (high words of both in use) and lengths that are not a multiple of 4 (or of 2).
#include "cuda_emu.h"
#include "../random.cu"
#include "check.h"
using namespace chk;

constexpr unsigned THREADS = 256;

template <typename T> struct K;
#define KR(S, T) \
    template <> struct K<T> { \
        static constexpr auto uniform = uniform_##S, normal = normal_##S, dropout = dropout_mask_##S, \
                              apply = dropout_apply_##S; };
KR(f32, float) KR(f64, double) KR(bf16, bf16) KR(f16, f16)

// --- src/rng.rs ---
inline std::array<uint32_t, 4> philox4x32(std::array<uint32_t, 4> c, std::array<uint32_t, 2> k) {
    for (int r = 0; r < 10; ++r) {
        uint64_t p0 = (uint64_t)0xD2511F53u * c[0], p1 = (uint64_t)0xCD9E8D57u * c[2];
        c = {(uint32_t)(p1 >> 32) ^ c[1] ^ k[0], (uint32_t)p1, (uint32_t)(p0 >> 32) ^ c[3] ^ k[1], (uint32_t)p0};
        k = {k[0] + 0x9E3779B9u, k[1] + 0xBB67AE85u};
    }
    return c;
}
inline std::array<uint32_t, 4> philox_block(uint64_t seed, uint64_t block) {
    return philox4x32({(uint32_t)block, (uint32_t)(block >> 32), 0, 0}, {(uint32_t)seed, (uint32_t)(seed >> 32)});
}
inline float u32_to_unit(uint32_t x) { return (float)(x >> 8) * (1.0f / 16777216.0f); }
inline std::vector<float> uniform_from(uint64_t seed, uint64_t block, size_t n) {
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = u32_to_unit(philox_block(seed, block + i / 4)[i % 4]);
    return out;
}
inline std::vector<double> normal_from(uint64_t seed, uint64_t block, size_t n) {
    std::vector<double> out(n);
    const double inv53 = 1.0 / (double)(1ull << 53);
    for (size_t j = 0; 2 * j < n; ++j) {
        auto r = philox_block(seed, block + j);
        double u1 = 1.0 - (double)(((uint64_t)r[0] << 21) ^ ((uint64_t)r[1] >> 11)) * inv53;
        double u2 = (double)(((uint64_t)r[2] << 21) ^ ((uint64_t)r[3] >> 11)) * inv53;
        double rad = std::sqrt(-2.0 * std::log(u1)), theta = 2.0 * M_PI * u2;
        out[2 * j] = rad * std::cos(theta);
        if (2 * j + 1 < n) out[2 * j + 1] = rad * std::sin(theta);
    }
    return out;
}

// The Random123 known answers rng.rs tests (kat_vectors, philox4x32_10), for the port and for the kernel's
// own philox() (an ordinary function under the emulator), whose counter's upper words are always 0.
void known_answers() {
    auto a = philox4x32({0, 0, 0, 0}, {0, 0}), b = philox4x32({~0u, ~0u, ~0u, ~0u}, {~0u, ~0u});
    uint4 k = philox(0, 0);
    std::vector<double> got = {(double)a[0], (double)a[1], (double)a[2], (double)a[3], (double)b[0], (double)b[1],
                               (double)b[2], (double)b[3], (double)k.x, (double)k.y, (double)k.z, (double)k.w};
    std::vector<double> want = {0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8, 0x408f276d, 0x41c83b0e,
                                0xa20bc7c6, 0x6d5451fd, 0x6627e8d5, 0xe169c58d, 0xbc57ac4c, 0x9b00dbd8};
    compare("philox4x32-10 known answers (port, kernel)", got.data(), want, 0);
}

template <typename T> T nextafter_below_one() { return from_d<T>(std::is_same_v<T, bf16> ? 0.99609375 : 0.99951171875); }

// uniform(n) from block `start`: the CPU's f32 draws rounded to T, exactly.
template <typename T> void uniform(size_t n, uint64_t seed, uint64_t start) {
    Buf<T> y(n + 1);
    y.fill(-1);  // the element past the end must stay untouched
    emu::launch(dim3(grid_for((n + 3) / 4, THREADS)), dim3(THREADS), K<T>::uniform, y.ptr(), (int64_t)n, seed, start);
    std::vector<float> u = uniform_from(seed, start, n);
    // Rounded to a half type, a draw may reach 1.0; then it is the largest value below 1 (as on the CPU).
    if constexpr (sizeof(T) == 2)
        for (auto& x : u) x = to_d(from_d<T>(x)) >= 1.0 ? (float)to_d(nextafter_below_one<T>()) : x;
    std::vector<double> ref(n + 1, -1.0);
    for (size_t i = 0; i < n; ++i) ref[i] = to_d(from_d<T>((double)u[i]));
    char name[160];
    snprintf(name, sizeof name, "uniform_%s n=%zu seed=%#llx start=%#llx", tname<T>(), n, (unsigned long long)seed,
             (unsigned long long)start);
    compare(name, y.ptr(), ref, 0);
}

// dropout_mask(n, p): the uniform draw above (in T) compared with p stored in T, then 1 × scale in T's
// compute type (f32 for the half types and f32, f64 for f64) rounded to T, as the CPU's ge_scalar, cast
// and affine give it. Exact.
template <typename T> void dropout(size_t n, uint64_t seed, uint64_t start, double p) {
    Buf<T> y(n + 1);
    y.fill(-1);
    const double scale = 1.0 / (1.0 - p);
    emu::launch(dim3(grid_for((n + 3) / 4, THREADS)), dim3(THREADS), K<T>::dropout, y.ptr(), (int64_t)n, seed, start, p,
                scale);
    std::vector<float> u = uniform_from(seed, start, n);
    const double pt = to_d(from_d<T>(p));
    const double kept = sizeof(T) == 8 ? scale : to_d(from_d<T>((double)(float)scale));
    std::vector<double> ref(n + 1, -1.0);
    size_t dropped = 0;
    for (size_t i = 0; i < n; ++i) {
        double v = to_d(from_d<T>((double)u[i]));
        if (v >= 1.0) v = to_d(nextafter_below_one<T>());
        ref[i] = v >= pt ? kept : 0.0;
        dropped += ref[i] == 0.0;
    }
    char name[160];
    snprintf(name, sizeof name, "dropout_mask_%s n=%zu p=%g seed=%#llx start=%#llx (%zu dropped)", tname<T>(), n, p,
             (unsigned long long)seed, (unsigned long long)start, dropped);
    compare(name, y.ptr(), ref, 0);
}

// dropout_apply(x, n, p): x times dropout_mask's mask (checked above), each product formed as the binary
// mul forms it (in T's compute type, rounded once), bit for bit; with x at an aligned address (whole
// blocks as one access) and one element past it (element by element), and with infinities, NaN and
// negative zero among the inputs (a dropped NaN stays NaN, as x · 0 does).
template <typename T> void dropout_apply(size_t n, uint64_t seed, uint64_t start, double p, size_t shift) {
    typedef typename Acc<T>::type A;
    const double scale = 1.0 / (1.0 - p);
    Buf<T> x(n, shift), y(n + 1, shift), mask(n);
    x.fill_random(-3, 3);
    if (n > 9) x[3] = from_d<T>(INFINITY), x[5] = from_d<T>(NAN), x[8] = from_d<T>(-0.0), x[9] = from_d<T>(-INFINITY);
    y.fill(-1);
    emu::launch(dim3(grid_for((n + 3) / 4, THREADS)), dim3(THREADS), K<T>::dropout, mask.ptr(), (int64_t)n, seed, start, p,
                scale);
    emu::launch(dim3(grid_for((n + 3) / 4, THREADS)), dim3(THREADS), K<T>::apply, (const T*)x.ptr(), y.ptr(), (int64_t)n,
                seed, start, p, scale);
    bool same = y.d(n) == -1.0;  // nothing written past the end
    size_t first_bad = n;
    for (size_t i = 0; i < n && first_bad == n; ++i) {
        T want = from_acc<T>(to_acc<A>(x[i]) * to_acc<A>(mask[i]));
        if (std::memcmp(&want, &y[i], sizeof(T)) != 0) first_bad = i;
    }
    same = same && first_bad == n;
    char name[200];
    snprintf(name, sizeof name, "dropout_apply_%s n=%zu p=%g seed=%#llx start=%#llx shift=%zu == mask then mul", tname<T>(),
             n, p, (unsigned long long)seed, (unsigned long long)start, shift);
    check(name, same, first_bad == n ? "wrote past the end" : ("element " + std::to_string(first_bad)).c_str());
}

// normal(n) from block `start` (one block per pair): the CPU's f64 normals rounded to T. The device's
// sin/cos/log may differ from libm's by an ulp, hence a tolerance even in f64.
template <typename T> void normal(size_t n, uint64_t seed, uint64_t start) {
    Buf<T> y(n + 1);
    y.fill(-1);
    emu::launch(dim3(grid_for((n + 1) / 2, THREADS)), dim3(THREADS), K<T>::normal, y.ptr(), (int64_t)n, seed, start);
    std::vector<double> z = normal_from(seed, start, n), ref(n + 1, -1.0);
    for (size_t i = 0; i < n; ++i) ref[i] = to_d(from_d<T>(z[i]));
    char name[160];
    snprintf(name, sizeof name, "normal_%s n=%zu seed=%#llx start=%#llx", tname<T>(), n, (unsigned long long)seed,
             (unsigned long long)start);
    compare(name, y.ptr(), ref, sizeof(T) == 8 ? 1e-14 : tol<T>());
}

template <typename T> void all() {
    // (seed, start): the default generator's first draw; a later offset; both 64-bit values past 2^32.
    const uint64_t cases[][2] = {{0x5EED, 0}, {1, 7}, {(1ull << 40) + 123, (1ull << 32) + 5}};
    for (auto& c : cases) {
        for (size_t n : {1001, 6, 1}) uniform<T>(n, c[0], c[1]);
        for (size_t n : {1001, 2, 1}) normal<T>(n, c[0], c[1]);
        for (double p : {0.2, 0.1, 0.5}) dropout<T>(1001, c[0], c[1], p);
        for (size_t shift : {0, 1}) {
            dropout_apply<T>(1001, c[0], c[1], 0.2, shift);
            dropout_apply<T>(1024, c[0], c[1], 0.1, shift);
            dropout_apply<T>(3, c[0], c[1], 0.5, shift);
        }
    }
}

int main() {
    known_answers();
    all<float>();
    all<bf16>();
    all<double>();
    all<f16>();
    // A draw over more than one block of the grid: 2500 philox blocks, 10 thread blocks.
    uniform<float>(10001, 42, 3);
    // Enough half-type draws that some round to 1.0 (about 0.2% in bf16): all must stay below 1.
    uniform<bf16>(20001, 9, 0);
    uniform<f16>(20001, 9, 0);
    normal<float>(5001, 42, 3);
    return finish("random");
}
