// Self-test of the emulator's primitives (before trusting it on kernels): indices of 3-D blocks and grids,
// every shuffle flavour with and without `width`, ballot/any/all, __syncthreads with threads that returned
// early, shared memory across barriers, atomics; and that a divergent __syncthreads or a shuffle from an
// exited lane is reported (exit 3) rather than hanging or passing.
#include "cuda_emu.h"
#include "check.h"
#include <fcntl.h>
#include <sys/wait.h>
#include <unistd.h>
using namespace chk;

extern "C" __global__ void k_index(int* out) {
    int t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    int b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    out[b * blockDim.x * blockDim.y * blockDim.z + t] = b * 10000 + t;
}

// Per thread: 8 results of shuffles, written to out[t*8 + k].
extern "C" __global__ void k_shfl(double* out) {
    int t = threadIdx.x, lane = t & 31;
    double v = 100.0 * t;
    double* o = out + t * 8;
    o[0] = __shfl_xor_sync(0xffffffff, v, 5);
    o[1] = __shfl_sync(0xffffffff, v, 7);
    o[2] = __shfl_down_sync(0xffffffff, v, 3);
    o[3] = __shfl_up_sync(0xffffffff, v, 3);
    o[4] = __shfl_xor_sync(0xffffffff, v, 2, 8);
    o[5] = __shfl_sync(0xffffffff, v, 9, 16);
    o[6] = __shfl_down_sync(0xffffffff, v, 2, 8);
    o[7] = (double)__ballot_sync(0xffffffff, lane % 3 == 0) + __any_sync(0xffffffff, lane == 31) * 0.25 +
           __all_sync(0xffffffff, lane < 32) * 0.5 + __all_sync(0xffffffff, lane < 31) * 0.125;
}
inline double want_shfl(int t, int k) {
    int lane = t & 31, w = t - lane;
    auto at = [&](int l) { return 100.0 * (w + l); };
    switch (k) {
    case 0: return at(lane ^ 5);
    case 1: return at(7);
    case 2: return lane + 3 < 32 ? at(lane + 3) : at(lane);
    case 3: return lane >= 3 ? at(lane - 3) : at(lane);
    case 4: return at(lane ^ 2);
    case 5: return at((lane & ~15) + 9);
    case 6: return (lane & 7) + 2 < 8 ? at(lane + 2) : at(lane);
    default: {
        unsigned m = 0;
        for (int l = 0; l < 32; l += 3) m |= 1u << l;
        return m + 0.25 + 0.5;
    }
    }
}

// Threads >= keep return at once; the rest sum their indices through shared memory over two phases, so
// __syncthreads must count only live threads. Also atomics on global memory.
extern "C" __global__ void k_early(int keep, long long* sums, float* acc) {
    __shared__ long long sh[1024];
    if ((int)threadIdx.x >= keep) return;
    sh[threadIdx.x] = threadIdx.x;
    __syncthreads();
    if (threadIdx.x == 0) {
        long long s = 0;
        for (int i = 0; i < keep; ++i) s += sh[i];
        sums[blockIdx.x] = s;
    }
    __syncthreads();
    sh[threadIdx.x] = -1;  // overwrite only after thread 0 has read
    atomicAdd(acc, 1.0f);
}

// Half of warp 0 waits at __syncthreads, the other half at __syncwarp: a deadlock on the device.
// (Threads that *return* instead are fine: exited threads leave the barrier, as on sm_70+.)
extern "C" __global__ void k_divergent_sync(int* out) {
    if (threadIdx.x < 16) __syncthreads();
    else __syncwarp();
    out[threadIdx.x] = 1;
}
extern "C" __global__ void k_shfl_exited(int* out) {
    if (threadIdx.x == 3) return;
    out[threadIdx.x] = __shfl_xor_sync(0xffffffff, (int)threadIdx.x, 1);
}

// Runs f in a child process; true when it exits with status 3 (the emulator's error).
template <typename F> bool reports_error(F f) {
    fflush(stdout);
    pid_t p = fork();
    if (p == 0) {
        int fd = open("/dev/null", O_WRONLY);
        dup2(fd, 2);
        f();
        _exit(0);
    }
    int st = 0;
    waitpid(p, &st, 0);
    return WIFEXITED(st) && WEXITSTATUS(st) == 3;
}

static void expect(const char* name, bool ok) {
    ++checks;
    if (!ok) ++failures, printf("  FAIL %s\n", name);
    else if (getenv("EMU_VERBOSE")) printf("  ok   %s\n", name);
}

int main() {
    {
        dim3 g(3, 2, 2), b(8, 4, 2);
        std::vector<int> out(12 * 64, -1);
        emu::launch(g, b, k_index, out.data());
        bool ok = true;
        for (int i = 0; i < 12 * 64; ++i) ok = ok && out[i] == (i / 64) * 10000 + i % 64;
        expect("3-D grid and block indices", ok);
    }
    for (int threads : {32, 96, 1024}) {
        std::vector<double> out(threads * 8);
        emu::launch(dim3(2), dim3(threads), k_shfl, out.data());
        std::vector<double> ref(threads * 8);
        for (int t = 0; t < threads; ++t) for (int k = 0; k < 8; ++k) ref[t * 8 + k] = want_shfl(t, k);
        compare("shuffles, ballot/any/all, threads=" + std::to_string(threads), out.data(), ref, 0);
    }
    {
        std::vector<long long> sums(3);
        float acc = 0;
        emu::launch(dim3(3), dim3(256), k_early, 100, sums.data(), &acc);
        expect("__syncthreads after early returns", sums[0] == 4950 && sums[2] == 4950 && acc == 300.0f);
    }
    std::vector<int> o(64);
    expect("divergent __syncthreads is reported",
           reports_error([&] { emu::launch(dim3(1), dim3(64), k_divergent_sync, o.data()); }));
    expect("shuffle from an exited lane is reported",
           reports_error([&] { emu::launch(dim3(1), dim3(32), k_shfl_exited, o.data()); }));
    return finish("emu");
}
