// Shared helpers for the emulator tests: seeded random fills, element conversions, the host's launch-shape
// rules (mirrors of src/backend/cuda), and a compare that prints PASS/FAIL lines and sets the exit code.
#pragma once
#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <type_traits>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace chk {

inline std::mt19937_64 rng(12345);
inline double uniform(double lo, double hi) { return std::uniform_real_distribution<double>(lo, hi)(rng); }

// Element <-> double.
inline double to_d(float x) { return x; }
inline double to_d(double x) { return x; }
inline double to_d(__nv_bfloat16 x) { return (double)__bfloat162float(x); }
inline double to_d(__half x) { return (double)__half2float(x); }
inline double to_d(int64_t x) { return (double)x; }  // index and integer kernels (values well below 2^53)
inline double to_d(uint8_t x) { return x; }
template <typename T> T from_d(double x) {
    if constexpr (std::is_same_v<T, __nv_bfloat16>) return __double2bfloat16(x);
    else if constexpr (std::is_same_v<T, __half>) return __double2half(x);
    else return (T)x;
}
template <typename T> const char* tname() {
    if constexpr (std::is_same_v<T, float>) return "f32";
    else if constexpr (std::is_same_v<T, double>) return "f64";
    else if constexpr (std::is_same_v<T, __nv_bfloat16>) return "bf16";
    else if constexpr (std::is_same_v<T, int64_t>) return "i64";
    else if constexpr (std::is_same_v<T, uint8_t>) return "u8";
    else return "f16";
}
// Tolerance relative to the largest reference magnitude, per element type.
template <typename T> double tol() { return sizeof(T) == 2 ? 1e-2 : sizeof(T) == 4 ? 1e-5 : 1e-12; }

// A buffer of T with a spare leading element, so tests can hand kernels a pointer that is not 16-byte
// aligned (`at(1)`) the way a view with an offset would. Storage starts 64-byte aligned like cudaMalloc.
template <typename T> struct Buf {
    std::vector<T> v;
    T* base;
    size_t n;
    explicit Buf(size_t n_, size_t shift = 0) : v(n_ + shift + 64 / sizeof(T)), n(n_) {
        uintptr_t p = ((uintptr_t)v.data() + 63) & ~(uintptr_t)63;
        base = (T*)p + shift;
    }
    T* ptr() { return base; }
    T& operator[](size_t i) { return base[i]; }
    void fill_random(double lo, double hi) { for (size_t i = 0; i < n; ++i) base[i] = from_d<T>(uniform(lo, hi)); }
    void fill(double x) { for (size_t i = 0; i < n; ++i) base[i] = from_d<T>(x); }
    double d(size_t i) const { return to_d(base[i]); }
};

// --- Host launch-shape rules (src/backend/cuda/softmax.rs, device.rs) ---
inline unsigned row_threads(size_t n) {
    size_t t = (n + 3) / 4;
    t = (t + 31) / 32 * 32;
    return (unsigned)std::clamp<size_t>(t, 32, 1024);
}
// cached_row_threads: whole 16-byte packs, aligned pointers, n <= 32 * 256; 0 when it does not apply.
inline unsigned cached_row_threads(size_t n, size_t elem, std::initializer_list<const void*> ptrs) {
    size_t pack = 16 / elem;
    bool fits = n > 0 && n % pack == 0 && n <= 32 * 256;
    for (const void* p : ptrs) fits = fits && ((uintptr_t)p % 16 == 0);
    if (!fits) return 0;
    size_t t = ((n + 31) / 32 + 31) / 32 * 32;
    return (unsigned)std::clamp<size_t>(t, 32, 1024);
}
inline unsigned grid_for(size_t n, unsigned threads) {
    return (unsigned)std::clamp<size_t>((n + threads - 1) / threads, 1, 65535 * 8);
}

// --- Results ---
inline int failures = 0, checks = 0;

// Compares got against a double reference: NaN must match NaN, infinities must match exactly, finite
// values within tol * max|ref| (absolute floor 1e-30 for all-zero references).
template <typename T> bool compare(const std::string& name, const T* got, const std::vector<double>& ref, double tl) {
    double scale = 0;
    for (double r : ref) if (std::isfinite(r)) scale = std::max(scale, std::fabs(r));
    scale = std::max(scale, 1e-30);
    double worst = 0;
    size_t bad = ref.size(), nbad = 0;
    for (size_t i = 0; i < ref.size(); ++i) {
        double g = to_d(got[i]), r = ref[i];
        bool ok;
        if (std::isnan(r) || std::isnan(g)) ok = std::isnan(r) && std::isnan(g);
        else if (std::isinf(r) || std::isinf(g)) ok = g == r;
        else {
            double e = std::fabs(g - r) / scale;
            worst = std::max(worst, e);
            ok = e <= tl;
        }
        if (!ok && nbad++ == 0) bad = i;
    }
    ++checks;
    if (nbad) {
        ++failures;
        printf("  FAIL %-58s %zu bad, first at %zu: got %.9g want %.9g (max rel err %.3g)\n", name.c_str(), nbad, bad,
               to_d(got[bad]), ref[bad], worst);
        return false;
    }
    if (getenv("EMU_VERBOSE")) printf("  ok   %-58s max rel err %.3g\n", name.c_str(), worst);
    return true;
}

// A yes/no check (for results that are not numbers, like a permutation).
inline bool check(const std::string& name, bool ok, const std::string& why) {
    ++checks;
    if (!ok) {
        ++failures;
        printf("  FAIL %-58s %s\n", name.c_str(), why.c_str());
    } else if (getenv("EMU_VERBOSE")) {
        printf("  ok   %s\n", name.c_str());
    }
    return ok;
}

// Prints the file's summary line and returns the process exit code.
inline int finish(const char* test) {
    printf("%s: %d/%d checks passed%s\n", test, checks - failures, checks, failures ? "  FAILED" : "");
    return failures ? 1 : 0;
}

}  // namespace chk
