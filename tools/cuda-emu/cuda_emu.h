// cuda_emu.h — just enough of CUDA to run TokenMill's kernels on the CPU with g++, for checking their
// logic where no GPU exists. Every CUDA thread of a block is an OS thread; blocks run one after
// another, so `__shared__` can be `static` (one instance, reused block by block). __syncthreads is a
// barrier over the block; warp shuffles exchange through a per-warp slot array between two barriers.
// Threads that return early drop out of both barriers, as on hardware.
// This checks indexing, reductions and formulas — not timing, memory coalescing or races the real
// memory model would expose.
#pragma once
#include <barrier>
#include <cmath>
#include <cstring>
#include <functional>
#include <memory>
#include <thread>
#include <vector>

#define TM_HOST_EMULATION 1
#define __global__
#define __device__
#define __forceinline__ inline
#define __restrict__ __restrict
#define __shared__ static
#define __launch_bounds__(...)

struct dim3 { unsigned x = 1, y = 1, z = 1; };
inline thread_local dim3 threadIdx, blockIdx;
inline dim3 blockDim, gridDim;

inline float __int_as_float(int i) { float f; std::memcpy(&f, &i, 4); return f; }
inline float __uint_as_float(unsigned u) { float f; std::memcpy(&f, &u, 4); return f; }
inline unsigned __float_as_uint(float f) { unsigned u; std::memcpy(&u, &f, 4); return u; }
inline float __expf(float x) { return std::exp(x); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline void sincos(double x, double* s, double* c) { *s = std::sin(x); *c = std::cos(x); }


inline _Float16 tm_emu_bits_to_half(unsigned short b) { _Float16 h; std::memcpy(&h, &b, 2); return h; }
inline unsigned short tm_emu_half_to_bits(_Float16 h) { unsigned short b; std::memcpy(&b, &h, 2); return b; }

namespace emu {
struct Warp
{
    explicit Warp(int n) : bar(n) {}
    std::barrier<> bar;
    long long slot[32];
};
inline std::unique_ptr<std::barrier<>> block_barrier;
inline std::vector<std::unique_ptr<Warp>> warps;

inline int linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

template <typename T>
T shfl_xor(T v, int mask)
{
    int t = linear_thread();
    Warp& w = *warps[t / 32];
    long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    w.slot[t % 32] = bits;
    w.bar.arrive_and_wait();
    long long other = w.slot[(t % 32) ^ mask];
    w.bar.arrive_and_wait();
    T r;
    std::memcpy(&r, &other, sizeof(T));
    return r;
}

// Runs body once per thread of every block of the grid; blocks in order, threads of a block together.
inline void launch(dim3 grid, dim3 block, const std::function<void()>& body)
{
    gridDim = grid;
    blockDim = block;
    int n = block.x * block.y * block.z;
    for (unsigned bz = 0; bz < grid.z; bz++)
        for (unsigned by = 0; by < grid.y; by++)
            for (unsigned bx = 0; bx < grid.x; bx++)
            {
                block_barrier = std::make_unique<std::barrier<>>(n);
                warps.clear();
                for (int w = 0; w < n; w += 32) warps.push_back(std::make_unique<Warp>(n - w < 32 ? n - w : 32));
                std::vector<std::thread> threads;
                for (int t = 0; t < n; t++)
                    threads.emplace_back([=] {
                        blockIdx = {bx, by, bz};
                        threadIdx = {(unsigned)(t % block.x), (unsigned)(t / block.x % block.y), (unsigned)(t / (block.x * block.y))};
                        body();
                        block_barrier->arrive_and_drop();
                        warps[t / 32]->bar.arrive_and_drop();
                    });
                for (auto& th : threads) th.join();
            }
}
} // namespace emu

inline void __syncthreads() { emu::block_barrier->arrive_and_wait(); }
inline float __shfl_xor_sync(unsigned, float v, int mask) { return emu::shfl_xor(v, mask); }
inline int __shfl_xor_sync(unsigned, int v, int mask) { return emu::shfl_xor(v, mask); }
