// cuda_emu.h — just enough of CUDA to run TokenMill's kernels on the CPU with g++, for checking their
// logic where no GPU exists ('tokenmill kernels test --emulate' compiles it with the .cu files at run time).
// Every CUDA thread of a block is an OS thread; blocks run one after another, so `__shared__` can be
// `static` (one instance, reused block by block).
//
// Two schedules:
//  - serialized warps (the default): only one warp of a block runs at a time; it runs until each of its
//    threads has reached __syncthreads or returned, then the next warp runs. Even blocks run their warps in
//    ascending order, odd blocks in descending order. A missing __syncthreads then fails deterministically:
//    the warp that runs first reads shared memory the others have not written yet (ascending), or a warp
//    overwrites what another has not read yet (descending).
//  - free-running (TM_EMU_FREE_RUNNING): all threads of a block run at once, for ThreadSanitizer, which
//    reports shared-memory accesses not ordered by a barrier whatever the timing.
// The 32 threads of a warp always run together; warp shuffles exchange through two per-warp slot arrays, used
// alternately, with one warp barrier each. Barriers are a mutex and a condition variable (which ThreadSanitizer understands).
// Threads that return early drop out of both barriers, as on hardware.
// This checks indexing, reductions, barriers and formulas — not timing or memory coalescing.
#pragma once
#include <cmath>
#include <chrono>
#include <condition_variable>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <tuple>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>
#include <algorithm>
#include <atomic>
#include <cstdint>
#if !defined(TM_EMU_FREE_RUNNING) && (!defined(__x86_64__) || defined(TM_EMU_UCONTEXT))
#include <ucontext.h>
#endif

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
// Round-to-nearest products that nvcc may not contract into an FMA: on the host (no -ffp-contract) every product rounds.
inline float __fmul_rn(float a, float b) { return a * b; }
inline unsigned __umulhi(unsigned a, unsigned b) { return (unsigned)(((unsigned long long)a * b) >> 32); }
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline void sincos(double x, double* s, double* c) { *s = std::sin(x); *c = std::cos(x); }

inline _Float16 tm_emu_bits_to_half(unsigned short b) { _Float16 h; std::memcpy(&h, &b, 2); return h; }
inline unsigned short tm_emu_half_to_bits(_Float16 h) { unsigned short b; std::memcpy(&b, &h, 2); return b; }

namespace emu {
#ifdef TM_EMU_FREE_RUNNING
inline constexpr bool serialize_warps = false;
#else
inline constexpr bool serialize_warps = true;
#endif

// A barrier over a fixed set of threads; a thread that leaves for good calls drop() and is no longer waited for.
class Barrier
{
public:
    explicit Barrier(int n) : _expected(n) {}
    void arrive_and_wait()
    {
        std::unique_lock lock(_m);
        long long gen = _generation;
        if (++_arrived == _expected) release();
        else _cv.wait(lock, [&] { return _generation != gen; });
    }
    void drop()
    {
        std::lock_guard lock(_m);
        if (--_expected > 0 && _arrived == _expected) release();
    }
private:
    void release() { _arrived = 0; _generation++; _cv.notify_all(); }
    std::mutex _m;
    std::condition_variable _cv;
    int _expected, _arrived = 0;
    long long _generation = 0;
};

// One block's threads: __syncthreads, and (serialized) which warp may run.
class Block
{
public:
    Block(int threads, bool descending) : _live_total(threads), _descending(descending)
    {
        for (int t = 0; t < threads; t += 32) _live.push_back(threads - t < 32 ? threads - t : 32);
        _waiting.assign(_live.size(), 0);
        _warp_cv = std::make_unique<std::condition_variable[]>(_live.size());
        _running = first_runnable(descending ? (int)_live.size() - 1 : 0);
    }
    // Free-running, threads wait at a gate of their own (not _m) until all exist: a thread that has already
    // returned then orders nothing before another's start, so ThreadSanitizer sees only the barriers' ordering.
    void start(int warp)
    {
        if (!serialize_warps)
        {
            std::unique_lock lock(_gate_m);
            _gate_cv.wait(lock, [&] { return _open; });
            return;
        }
        std::unique_lock lock(_m);
        _warp_cv[warp].wait(lock, [&] { return _running == warp; });
    }
    void open()
    {
        std::lock_guard lock(_gate_m);
        _open = true;
        _gate_cv.notify_all();
    }
    void sync(int warp)
    {
        std::unique_lock lock(_m);
        long long gen = _generation;
        _waiting[warp]++;
        _waiting_total++;
        if (_waiting_total == _live_total) release();
        else if (serialize_warps && _waiting[warp] == _live[warp]) hand_over(warp);
        (serialize_warps ? _warp_cv[warp] : _cv).wait(lock, [&] { return _generation != gen && (!serialize_warps || _running == warp); });
    }
    void exit(int warp)
    {
        std::lock_guard lock(_m);
        _live[warp]--;
        _live_total--;
        if (_waiting_total > 0 && _waiting_total == _live_total) release();
        else if (serialize_warps && _running == warp && _waiting[warp] == _live[warp]) hand_over(warp);
    }
private:
    int step() const { return _descending ? -1 : 1; }
    // The first warp from `from` on (in schedule order) that still has threads that are not waiting; -1 if none.
    int first_runnable(int from) const
    {
        int n = (int)_live.size();
        for (int i = 0, w = from; i < n; i++, w = ((w + step()) % n + n) % n)
            if (_waiting[w] < _live[w]) return w;
        return -1;
    }
    void hand_over(int warp) { _running = first_runnable(((warp + step()) % (int)_live.size() + (int)_live.size()) % (int)_live.size()); wake(); }
    // Serialized, only the warp that may run next is woken: waking every thread of the block at each hand-over made
    // a __syncthreads cost (warps × threads) wake-ups, most of a 1024-thread launch's time.
    void wake()
    {
        if (!serialize_warps) _cv.notify_all();
        else if (_running >= 0) _warp_cv[_running].notify_all();
    }
    void release()
    {
        _waiting_total = 0;
        for (auto& w : _waiting) w = 0;
        _generation++;
        _running = first_runnable(_descending ? (int)_live.size() - 1 : 0);
        wake();
    }
    std::mutex _m, _gate_m;
    std::condition_variable _cv, _gate_cv;
    std::unique_ptr<std::condition_variable[]> _warp_cv;   // one per warp: serialized, each waits on its own
    bool _open = false;
    std::vector<int> _live, _waiting;
    int _live_total, _waiting_total = 0, _running = 0;
    long long _generation = 0;
    bool _descending;
};

struct Warp
{
    explicit Warp(int n) : bar(n) {}
    Barrier bar;
    long long slot[2][32];
};
inline std::unique_ptr<Block> block;
inline std::vector<std::unique_ptr<Warp>> warps;

inline int linear_thread() { return threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z); }

// How many shuffles this thread has made in the current block: consecutive shuffles alternate between the two
// slot arrays, so one barrier per shuffle suffices. A lane writes array p again only two shuffles later, after the
// barrier of the shuffle in between, which every lane reaches only once it has read array p: the barriers order
// each read before the next write, as ThreadSanitizer checks. Reset per block (lanes that returned early made fewer).
inline thread_local unsigned shuffles;

#ifndef TM_EMU_FREE_RUNNING
namespace fiber {
enum State { Ready, AtSync, AtWarp, Done };
#if defined(__x86_64__) && !defined(TM_EMU_UCONTEXT)   // TM_EMU_UCONTEXT: the portable switch, to test it here
// A switch of stacks that saves only what the ABI says a call preserves (rbx, rbp, r12–r15): swapcontext also
// saves and restores the signal mask, a system call on every switch, and that was most of a launch's time.
// The caller's other registers are dead across the call, as across any call.
__attribute__((naked, noinline)) static void switch_stack(void** /* rdi: where to save this stack */, void* /* rsi: the stack to run */)
{
    asm volatile("pushq %rbp\n\tpushq %rbx\n\tpushq %r12\n\tpushq %r13\n\tpushq %r14\n\tpushq %r15\n\t"
                 "movq %rsp, (%rdi)\n\tmovq %rsi, %rsp\n\t"
                 "popq %r15\n\tpopq %r14\n\tpopq %r13\n\tpopq %r12\n\tpopq %rbx\n\tpopq %rbp\n\tret\n\t");
}
struct Context
{
    void* sp = nullptr;
};
inline void switch_to(Context& from, Context& to) { switch_stack(&from.sp, to.sp); }
// A fresh stack that "returns" into entry with the alignment of a call (rsp ≡ 8 mod 16 on entry), popping six
// zeroed registers first, as switch_stack restores them.
inline void start(Context& c, char* stack, size_t bytes, void (*entry)())
{
    auto top = reinterpret_cast<uintptr_t>(stack + bytes) & ~uintptr_t(15);
    void** p = reinterpret_cast<void**>(top);
    *--p = nullptr;                               // entry's return address: it never returns
    *--p = reinterpret_cast<void*>(entry);
    for (int i = 0; i < 6; i++) *--p = nullptr;   // rbp rbx r12 r13 r14 r15
    c.sp = p;
}
#else
struct Context
{
    ucontext_t uc;
};
inline void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
inline void start(Context& c, char* stack, size_t bytes, void (*entry)())
{
    getcontext(&c.uc);
    c.uc.uc_stack.ss_sp = stack;
    c.uc.uc_stack.ss_size = bytes;
    c.uc.uc_link = nullptr;
    makecontext(&c.uc, entry, 0);
}
#endif
struct Fiber { Context ctx; State state = Ready; dim3 index; };
struct Scheduler
{
    Context main;
    std::vector<Fiber> fibers;
    std::vector<std::unique_ptr<char[]>> stacks;
    std::vector<long long> slots;   // a shuffle's values, one per thread
    int current = -1;
    const std::function<void()>* body = nullptr;
};
// Kernels keep a few registers' worth of locals; libm's pow/sincos are the deepest calls they make.
inline constexpr size_t stack_bytes = 256 * 1024;
inline Scheduler& scheduler() { static Scheduler s; return s; }

inline void entry()
{
    Scheduler& s = scheduler();
    (*s.body)();
    s.fibers[s.current].state = Done;
    switch_to(s.fibers[s.current].ctx, s.main);   // never resumed
}

inline void resume(int t)
{
    Scheduler& s = scheduler();
    s.current = t;
    threadIdx = s.fibers[t].index;
    switch_to(s.main, s.fibers[t].ctx);
}

// The running thread waits at a barrier: back to the scheduler, which resumes it once the barrier completes.
inline void wait(State at)
{
    Scheduler& s = scheduler();
    Fiber& f = s.fibers[s.current];
    f.state = at;
    switch_to(f.ctx, s.main);
}

// Runs one block to its end; false on a deadlock (threads waiting at barriers that can never complete).
inline bool run_block(int n, bool descending)
{
    Scheduler& s = scheduler();
    for (int t = 0; t < n; t++)
    {
        start(s.fibers[t].ctx, s.stacks[t].get(), stack_bytes, entry);
        s.fibers[t].state = Ready;
    }
    const int warps = (n + 31) / 32;
    while (true)
    {
        for (int k = 0; k < warps; k++)
        {
            int w = descending ? warps - 1 - k : k, first = w * 32, last = std::min(n, first + 32);
            while (true)
            {
                bool ran = false;
                for (int t = first; t < last; t++)
                    if (s.fibers[t].state == Ready) { resume(t); ran = true; }
                // A shuffle's barrier: every lane of the warp that has not returned is waiting at it.
                int live = 0, waiting = 0;
                for (int t = first; t < last; t++)
                {
                    live += s.fibers[t].state != Done;
                    waiting += s.fibers[t].state == AtWarp;
                }
                if (waiting > 0 && waiting == live)
                {
                    for (int t = first; t < last; t++) if (s.fibers[t].state == AtWarp) s.fibers[t].state = Ready;
                    continue;
                }
                if (!ran) break;
            }
        }
        int live = 0, synced = 0;
        for (int t = 0; t < n; t++)
        {
            live += s.fibers[t].state != Done;
            synced += s.fibers[t].state == AtSync;
        }
        if (live == 0) return true;
        if (synced != live) return false;
        for (int t = 0; t < n; t++) if (s.fibers[t].state == AtSync) s.fibers[t].state = Ready;
    }
}

inline int unfinished(int n)
{
    int count = 0;
    for (int t = 0; t < n; t++) count += scheduler().fibers[t].state != Done;
    return count;
}
} // namespace fiber
#endif

template <typename T>
T shfl_xor(T v, int mask)
{
#ifndef TM_EMU_FREE_RUNNING
    {
        // Fibers: write this lane's value, wait until every lane of the warp has, read the partner's, and wait again
        // so that no lane overwrites its slot (next shuffle) before every lane has read.
        fiber::Scheduler& s = fiber::scheduler();
        int self = s.current, lane = self % 32;
        long long bits = 0;
        std::memcpy(&bits, &v, sizeof(T));
        s.slots[self] = bits;
        fiber::wait(fiber::AtWarp);
        long long other = s.slots[self - lane + ((lane ^ (mask & 31)))];
        fiber::wait(fiber::AtWarp);
        T r;
        std::memcpy(&r, &other, sizeof(T));
        return r;
    }
#endif
    int t = linear_thread();
    Warp& w = *warps[t / 32];
    long long* slot = w.slot[shuffles++ & 1];
    long long bits = 0;
    std::memcpy(&bits, &v, sizeof(T));
    slot[t % 32] = bits;
    w.bar.arrive_and_wait();
    long long other = slot[(t % 32) ^ (mask & 31)];
    T r;
    std::memcpy(&r, &other, sizeof(T));
    return r;
}

// Runs body once per thread of every block of the grid; blocks in order, the threads of a block together.
// One OS thread per thread of a block, reused block after block (creating threads is what costs, above all
// under ThreadSanitizer): the launching thread publishes block i, waits until every thread has returned from
// it, then publishes block i + 1 — so one block's accesses to the static __shared__ arrays are ordered
// before the next block's, as separate shared memories would be. Publication and completion use their own
// mutexes, never a block's barrier mutex, so they add no ordering between the threads of one block.
// A launch that does not finish within TM_EMU_LAUNCH_TIMEOUT_S seconds (default 120) is a deadlock — threads of
// one block waiting at different barriers, say a shuffle some lanes skip while others wait at __syncthreads —
// or an endless loop: the process says which kernel and block, and exits with status 124 rather than hang.
inline std::string current_kernel = "kernel";

inline int launch_timeout_seconds()
{
    const char* s = std::getenv("TM_EMU_LAUNCH_TIMEOUT_S");
    int v = s ? std::atoi(s) : 0;
    return v > 0 ? v : 120;
}

#ifdef TM_EMU_FREE_RUNNING
inline void launch(dim3 grid, dim3 blockShape, const std::function<void()>& body)
{
    gridDim = grid;
    blockDim = blockShape;
    const int n = blockShape.x * blockShape.y * blockShape.z;
    const long long blocks = (long long)grid.x * grid.y * grid.z;
    std::mutex publish_m, done_m;
    std::condition_variable publish_cv, done_cv;
    long long published = -1;
    int done = 0;
    auto setup = [&](long long i) {
        block = std::make_unique<Block>(n, i % 2 == 1);
        warps.clear();
        for (int w = 0; w < n; w += 32) warps.push_back(std::make_unique<Warp>(n - w < 32 ? n - w : 32));
    };
    std::vector<std::thread> threads;
    threads.reserve(n);
    for (int t = 0; t < n; t++)
        threads.emplace_back([&, t] {
            threadIdx = {(unsigned)(t % blockShape.x), (unsigned)(t / blockShape.x % blockShape.y), (unsigned)(t / (blockShape.x * blockShape.y))};
            for (long long i = 0; i < blocks; i++)
            {
                {
                    std::unique_lock lock(publish_m);
                    publish_cv.wait(lock, [&] { return published == i; });
                }
                blockIdx = {(unsigned)(i % grid.x), (unsigned)(i / grid.x % grid.y), (unsigned)(i / ((long long)grid.x * grid.y))};
                block->start(t / 32);
                shuffles = 0;
                body();
                warps[t / 32]->bar.drop();
                block->exit(t / 32);
                std::lock_guard lock(done_m);
                if (++done == n) done_cv.notify_one();
            }
        });
    for (long long i = 0; i < blocks; i++)
    {
        setup(i);
        {
            std::lock_guard lock(publish_m);
            published = i;
            publish_cv.notify_all();
        }
        block->open();
        std::unique_lock lock(done_m);
        if (!done_cv.wait_for(lock, std::chrono::seconds(launch_timeout_seconds()), [&] { return done == n; }))
        {
            std::fprintf(stderr, "cuda-emu: %s, block %lld of %lld (%d threads): %d of %d threads did not finish within %d s "
                                 "(a deadlock: threads of the block waiting at different barriers, or an endless loop)\n",
                         current_kernel.c_str(), i, blocks, n, n - done, n, launch_timeout_seconds());
            std::fflush(stderr);
            std::_Exit(124);
        }
        done = 0;
    }
    for (auto& th : threads) th.join();
}

#else
// Serialized warps on fibers: every CUDA thread of the block is a ucontext fiber on the launching OS thread, and a
// barrier is a switch back to the scheduler below instead of a condition variable that wakes OS threads — the same
// schedule as the thread version (one warp at a time until each of its threads reaches __syncthreads or returns;
// even blocks ascending, odd blocks descending; lanes of a warp in order between shuffles), at a small fraction of
// its cost: a launch of many blocks (a model's forward pass on --device cuda-emulated) spent nearly all its time
// in wake-ups. A deadlock shows at once (no fiber can run); an endless loop is caught by a watchdog thread.

inline void launch(dim3 grid, dim3 blockShape, const std::function<void()>& body)
{
    gridDim = grid;
    blockDim = blockShape;
    const int n = blockShape.x * blockShape.y * blockShape.z;
    const long long blocks = (long long)grid.x * grid.y * grid.z;
    fiber::Scheduler& s = fiber::scheduler();
    s.body = &body;
    s.fibers.resize(std::max<size_t>(s.fibers.size(), n));
    s.slots.resize(std::max<size_t>(s.slots.size(), n));
    while ((int)s.stacks.size() < n) s.stacks.push_back(std::make_unique<char[]>(fiber::stack_bytes));
    for (int t = 0; t < n; t++)
        s.fibers[t].index = {(unsigned)(t % blockShape.x), (unsigned)(t / blockShape.x % blockShape.y), (unsigned)(t / (blockShape.x * blockShape.y))};

    std::atomic<long long> running_block{0};
    auto report = [&](long long i) {
        std::fprintf(stderr, "cuda-emu: %s, block %lld of %lld (%d threads): %d of %d threads did not finish within %d s "
                             "(a deadlock: threads of the block waiting at different barriers, or an endless loop)\n",
                     current_kernel.c_str(), i, blocks, n, fiber::unfinished(n), n, launch_timeout_seconds());
        std::fflush(stderr);
        std::_Exit(124);
    };
    std::mutex done_m;
    std::condition_variable done_cv;
    bool done = false;
    std::thread watchdog([&] {
        std::unique_lock lock(done_m);
        if (!done_cv.wait_for(lock, std::chrono::seconds(launch_timeout_seconds()), [&] { return done; })) report(running_block.load());
    });
    for (long long i = 0; i < blocks; i++)
    {
        running_block = i;
        blockIdx = {(unsigned)(i % grid.x), (unsigned)(i / grid.x % grid.y), (unsigned)(i / ((long long)grid.x * grid.y))};
        if (!fiber::run_block(n, i % 2 == 1)) report(i);
    }
    {
        std::lock_guard lock(done_m);
        done = true;
    }
    done_cv.notify_one();
    watchdog.join();
}
#endif

// Kernels by name, for the emulated driver: each kernel file's translation unit registers its kernels.
using Invoker = std::function<void(void**)>;
inline std::map<std::string, Invoker>& registry() { static std::map<std::string, Invoker> r; return r; }

// kernelParams[i] points at argument i: read each as the kernel's parameter type.
template <typename... A, size_t... I>
void call(void (*k)(A...), void** p, std::index_sequence<I...>) { k(*static_cast<std::remove_cv_t<A>*>(p[I])...); }

// Stream capture (CUDA graphs): a launch into a capturing stream is recorded with copies of its arguments, as a
// graph's kernel node holds them, and runs when the graph is launched.
using Binder = std::function<std::function<void()>(void**)>;
inline std::map<std::string, Binder>& binders() { static std::map<std::string, Binder> b; return b; }

template <typename... A, size_t... I>
std::function<void()> bound(void (*k)(A...), void** p, std::index_sequence<I...>)
{
    auto args = std::make_tuple(*static_cast<std::remove_cv_t<A>*>(p[I])...);
    return [k, args] { std::apply(k, args); };
}

struct Registration
{
    template <typename... A>
    Registration(const char* name, void (*k)(A...))
    {
        registry()[name] = [k](void** p) { call(k, p, std::index_sequence_for<A...>{}); };
        binders()[name] = [k](void** p) { return emu::bound(k, p, std::index_sequence_for<A...>{}); };
    }
};
} // namespace emu

#ifdef TM_EMU_FREE_RUNNING
inline void __syncthreads() { emu::block->sync(emu::linear_thread() / 32); }
#else
inline void __syncthreads() { emu::fiber::wait(emu::fiber::AtSync); }
#endif
inline float __shfl_xor_sync(unsigned, float v, int mask) { return emu::shfl_xor(v, mask); }
inline int __shfl_xor_sync(unsigned, int v, int mask) { return emu::shfl_xor(v, mask); }
inline unsigned __shfl_xor_sync(unsigned, unsigned v, int mask) { return emu::shfl_xor(v, mask); }
inline double __shfl_xor_sync(unsigned, double v, int mask) { return emu::shfl_xor(v, mask); }
