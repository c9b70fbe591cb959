// Views for the emulator tests, as the Rust host builds them: crate::shape::Layout, and
// storage.rs::views (dims merged where every operand allows, the `Strided` structs the kernels take).
// Included after a kernels/*.cu file (for Strided and MAX_DIMS).
#pragma once
#include <array>
#include <utility>
#include <vector>

// A layout: shape, strides, offset (in elements), as crate::shape::Layout.
struct Layout {
    std::vector<int64_t> shape, strides;
    int64_t offset = 0;
    int64_t numel() const { int64_t n = 1; for (auto d : shape) n *= d; return n; }
    int64_t at(int64_t i) const {  // storage index of logical element i
        int64_t off = offset;
        for (int d = (int)shape.size() - 1; d >= 0; --d) off += (i % shape[d]) * strides[d], i /= shape[d];
        return off;
    }
    int64_t span() const {  // elements a buffer must hold for this view
        int64_t m = offset;
        for (size_t d = 0; d < shape.size(); ++d) m += (shape[d] - 1) * strides[d];
        return m + 1;
    }
};
inline Layout contiguous(std::vector<int64_t> shape, int64_t offset = 0) {
    Layout l{shape, std::vector<int64_t>(shape.size()), offset};
    int64_t s = 1;
    for (int d = (int)shape.size() - 1; d >= 0; --d) l.strides[d] = s, s *= shape[d];
    return l;
}

// storage.rs::views: dims merged where every operand allows (shape.rs::coalesce), contig when every operand
// is one dense run.
template <size_t N> std::pair<std::array<Strided, N>, bool> views(std::array<const Layout*, N> ls) {
    std::vector<int64_t> shape;
    std::array<std::vector<int64_t>, N> cs;
    const auto& s0 = ls[0]->shape;
    for (size_t d = 0; d < s0.size(); ++d) {
        if (s0[d] == 1) continue;
        bool merge = !shape.empty();
        for (size_t k = 0; k < N && merge; ++k) merge = cs[k].back() == ls[k]->strides[d] * s0[d];
        if (merge) {
            shape.back() *= s0[d];
            for (size_t k = 0; k < N; ++k) cs[k].back() = ls[k]->strides[d];
        } else {
            shape.push_back(s0[d]);
            for (size_t k = 0; k < N; ++k) cs[k].push_back(ls[k]->strides[d]);
        }
    }
    if (shape.empty()) { shape.push_back(1); for (auto& c : cs) c.push_back(0); }
    bool contig = shape.size() == 1;
    for (size_t k = 0; k < N; ++k) contig = contig && (cs[k][0] == 1 || shape[0] == 1);
    std::array<Strided, N> out;
    for (size_t k = 0; k < N; ++k) {
        Strided& s = out[k];
        s.rank = (int32_t)shape.size();
        for (int d = 0; d < MAX_DIMS; ++d) s.shape[d] = 1, s.strides[d] = 0;
        for (size_t d = 0; d < shape.size(); ++d) s.shape[d] = shape[d], s.strides[d] = cs[k][d];
        s.offset = ls[k]->offset;
    }
    return {out, contig};
}
