// fake_cuda.cpp — an emulated CUDA driver (libcuda) for machines without a GPU: the driver-API
// entry points TokenMill calls, with "device" memory in host RAM and cuLaunchKernel running the
// kernels of src/Kernels/cuda on the CPU through cuda_emu.h. 'tokenmill kernels test --emulate' builds it
// at run time (one translation unit per .cu file registers that file's kernels in emu::registry(), so a
// file the shim cannot compile fails only its own kernels) and points the resolver at it, so the whole
// host path runs for real — NVRTC compilation of PTX for the reported compute_90, module loading (the
// PTX must declare every kernel looked up), argument packing, launch shapes, copies — and only the
// kernels' execution is emulated. Streams (emu_stream.h) are queues with a worker thread, so the fake NCCL
// (fake_nccl.cpp, linked into the same library) can leave a collective pending on one. The fake cuBLAS
// (fake_cublas.cpp) is in the same library too.
#include "cuda_emu.h"
#include "emu_stream.h"
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <string>
#include <utility>

typedef int CUresult;
enum { OK = 0, INVALID_VALUE = 1, OUT_OF_MEMORY = 2, INVALID_DEVICE = 101, NOT_FOUND = 500, NOT_READY = 600,
       CAPTURE_UNSUPPORTED = 900, CAPTURE_UNMATCHED = 903, CAPTURE_IMPLICIT = 906, CAPTURE_WRONG_THREAD = 908 };

namespace {
struct Module { std::string ptx; };
struct Function { std::string name; const emu::Invoker* run; const emu::Binder* bind; };
// A captured stream's work, in order: an instantiated graph is a copy of it.
struct Graph { std::vector<std::function<void()>> nodes; };
// Tensor parallelism puts rank r on device r, so the driver reports several devices. Every one is this CPU, with
// its own 1 GiB: an allocation belongs to the device of the context current on the calling thread, and
// cuMemGetInfo counts that device's allocations only (each rank sizes its KV cache from its own device).
constexpr int device_count = 8;
constexpr size_t device_bytes = size_t(1) << 30;
struct Context { int device; };
thread_local Context* current_context;
int current_device() { return current_context ? current_context->device : 0; }
struct Allocation { size_t bytes; int device; };
// Tensor-parallel ranks are threads of one process that allocate and copy at once: the map needs a lock.
std::mutex allocations_lock;
std::map<unsigned long long, Allocation> allocations;
// The kernels run on the calling thread through one fiber scheduler, with their static __shared__ arrays in global
// memory: two ranks' launches at once would share both, so launches from any thread run one at a time.
std::mutex launch_lock;
std::mutex streams_lock;
std::set<emu::Stream*> streams;
} // namespace

namespace emu {
Stream& default_stream() { static Stream s; return s; }
Stream* stream_of(void* handle) { return handle ? static_cast<Stream*>(handle) : &default_stream(); }
void wait_all_streams()
{
    default_stream().Wait();
    std::set<Stream*> live;
    { std::lock_guard<std::mutex> lock(streams_lock); live = streams; }
    for (Stream* s : live) s->Wait();
}
} // namespace emu

extern "C" {
CUresult cuGetErrorName(CUresult e, const char** s)
{
    *s = e == OK ? "CUDA_SUCCESS" : e == INVALID_VALUE ? "CUDA_ERROR_INVALID_VALUE" : e == OUT_OF_MEMORY ? "CUDA_ERROR_OUT_OF_MEMORY"
       : e == INVALID_DEVICE ? "CUDA_ERROR_INVALID_DEVICE" : e == NOT_FOUND ? "CUDA_ERROR_NOT_FOUND" : e == NOT_READY ? "CUDA_ERROR_NOT_READY"
       : e == CAPTURE_UNSUPPORTED ? "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED" : e == CAPTURE_UNMATCHED ? "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED"
       : e == CAPTURE_IMPLICIT ? "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT" : e == CAPTURE_WRONG_THREAD ? "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD" : "CUDA_ERROR_UNKNOWN";
    return OK;
}
CUresult cuGetErrorString(CUresult e, const char** s)
{
    *s = e == OK ? "no error"
       : e == NOT_FOUND ? "the emulated driver has no such kernel (its file did not build in the CPU shim, or the PTX does not declare it)"
       : e == INVALID_VALUE ? "invalid value (the emulated driver checks launch shapes, shared memory and copy bounds)"
       : e == CAPTURE_IMPLICIT ? "a synchronizing call (a synchronous copy, an allocation, work on the legacy stream) while this thread captures a stream"
       : "error in the emulated driver";
    return OK;
}
CUresult cuInit(unsigned) { return OK; }
CUresult cuDriverGetVersion(int* v) { *v = 12000; return OK; }
CUresult cuDeviceGetCount(int* n) { *n = device_count; return OK; }
CUresult cuDeviceGet(int* d, int ordinal) { if (ordinal < 0 || ordinal >= device_count) return INVALID_DEVICE; *d = ordinal; return OK; }
CUresult cuDeviceGetName(char* name, int len, int) { std::snprintf(name, len, "TokenMill CPU emulation (no GPU)"); return OK; }
CUresult cuDeviceGetAttribute(int* v, int attr, int)
{
    switch (attr)
    {
    case 75: *v = 9; return OK;     // compute capability 9.0: the PTX is compiled for compute_90
    case 76: *v = 0; return OK;
    case 1: *v = 1024; return OK;
    case 10: *v = 32; return OK;
    default: *v = 0; return OK;
    }
}
CUresult cuDeviceTotalMem_v2(size_t* b, int) { *b = device_bytes; return OK; }
CUresult cuCtxCreate_v2(void** ctx, unsigned, int device)
{
    if (device < 0 || device >= device_count) return INVALID_DEVICE;
    current_context = new Context{device};
    *ctx = current_context;
    return OK;
}
CUresult cuCtxDestroy_v2(void* ctx)
{
    if (current_context == ctx) current_context = nullptr;
    delete static_cast<Context*>(ctx);
    return OK;
}
CUresult cuCtxSetCurrent(void* ctx) { current_context = static_cast<Context*>(ctx); return OK; }
CUresult cuCtxGetCurrent(void** ctx) { *ctx = current_context; return OK; }
CUresult cuCtxSynchronize() { if (emu::capturing_on_this_thread()) return CAPTURE_IMPLICIT; emu::wait_all_streams(); return OK; }

CUresult cuModuleLoadData(void** module, const void* image)
{
    const char* ptx = static_cast<const char*>(image);
    if (std::string(ptx).find(".entry") == std::string::npos) return INVALID_VALUE;   // not PTX
    *module = new Module{ptx};
    return OK;
}
CUresult cuModuleUnload(void* module) { delete static_cast<Module*>(module); return OK; }
CUresult cuModuleGetFunction(void** f, void* module, const char* name)
{
    auto* m = static_cast<Module*>(module);
    auto it = emu::registry().find(name);
    if (it == emu::registry().end() || m->ptx.find(std::string(".entry ") + name + "(") == std::string::npos) return NOT_FOUND;
    *f = new Function{name, &it->second, &emu::binders().at(name)};   // leaked: a handful per process
    return OK;
}
CUresult cuFuncGetAttribute(int* v, int, void*) { *v = 0; return OK; }
CUresult cuFuncSetAttribute(void*, int, int) { return OK; }
CUresult cuLaunchKernel(void* f, unsigned gx, unsigned gy, unsigned gz, unsigned bx, unsigned by, unsigned bz,
                        unsigned shared, void* stream, void** params, void** extra)
{
    if (!stream && emu::capturing_on_this_thread()) return CAPTURE_IMPLICIT;   // the legacy stream would join the capture
    if (bx * by * bz == 0 || bx * by * bz > 1024 || shared > 48 * 1024 || extra != nullptr) return INVALID_VALUE;
    auto* fn = static_cast<Function*>(f);
    auto* s = emu::stream_of(stream);
    if (s->capture)
    {
        // A kernel node: the arguments as they are now; it runs when the graph is launched.
        auto body = (*fn->bind)(params);
        std::string name = fn->name;
        dim3 grid{gx, gy, gz}, block{bx, by, bz};
        s->capture->push_back([name, body, grid, block] {
            std::lock_guard<std::mutex> lock(launch_lock);
            emu::current_kernel = name;
            emu::launch(grid, block, body);
        });
        return OK;
    }
    s->Wait();   // after whatever was queued on the stream before it
    std::lock_guard<std::mutex> lock(launch_lock);
    emu::current_kernel = fn->name;
    emu::launch({gx, gy, gz}, {bx, by, bz}, [&] { (*fn->run)(params); });
    return OK;
}

// 1 GiB per device, of which what is allocated on it is not free: the backend sizes its KV cache from what the weights leave.
CUresult cuMemGetInfo_v2(size_t* free, size_t* total)
{
    size_t used = 0;
    int device = current_device();
    {
        std::lock_guard<std::mutex> lock(allocations_lock);   // ranks of the fake NCCL allocate from other threads
        for (auto& a : allocations)
            if (a.second.device == device) used += a.second.bytes;
    }
    *total = device_bytes;
    *free = used < *total ? *total - used : 0;
    return OK;
}
CUresult cuMemAlloc_v2(unsigned long long* p, size_t bytes)
{
    if (emu::capturing_on_this_thread()) return CAPTURE_UNSUPPORTED;   // what a GPU answers an allocation during a capture
    void* m = std::aligned_alloc(256, (bytes + 255) / 256 * 256);   // device allocations are 256-byte aligned
    if (!m) return OUT_OF_MEMORY;
    std::memset(m, 0xCD, bytes);                                   // like the GPU: fresh memory is not zero
    *p = reinterpret_cast<unsigned long long>(m);
    std::lock_guard<std::mutex> lock(allocations_lock);
    allocations[*p] = {bytes, current_device()};
    return OK;
}
CUresult cuMemFree_v2(unsigned long long p)
{
    if (emu::capturing_on_this_thread()) return CAPTURE_UNSUPPORTED;
    std::lock_guard<std::mutex> lock(allocations_lock);
    if (!allocations.erase(p)) return INVALID_VALUE;
    std::free(reinterpret_cast<void*>(p));
    return OK;
}
static bool inside(unsigned long long p, size_t n)
{
    std::lock_guard<std::mutex> lock(allocations_lock);
    auto it = allocations.upper_bound(p);
    if (it == allocations.begin()) return false;
    --it;
    return p >= it->first && p + n <= it->first + it->second.bytes;
}
// Synchronous copies and memsets wait for the default stream only. On a GPU they would also wait for the blocking
// streams of their own context, but here streams are not tracked per context: waiting for another rank's stream,
// whose collective waits for this rank, would deadlock ranks that real GPUs keep apart.
CUresult cuMemcpyHtoD_v2(unsigned long long d, const void* h, size_t n) { if (emu::capturing_on_this_thread()) return CAPTURE_IMPLICIT; emu::default_stream().Wait(); if (!inside(d, n)) return INVALID_VALUE; std::memcpy((void*)d, h, n); return OK; }
CUresult cuMemcpyDtoH_v2(void* h, unsigned long long d, size_t n) { if (emu::capturing_on_this_thread()) return CAPTURE_IMPLICIT; emu::default_stream().Wait(); if (!inside(d, n)) return INVALID_VALUE; std::memcpy(h, (void*)d, n); return OK; }
CUresult cuMemcpyDtoD_v2(unsigned long long d, unsigned long long s, size_t n) { if (emu::capturing_on_this_thread()) return CAPTURE_IMPLICIT; emu::default_stream().Wait(); if (!inside(d, n) || !inside(s, n)) return INVALID_VALUE; std::memmove((void*)d, (void*)s, n); return OK; }
CUresult cuMemcpyHtoDAsync_v2(unsigned long long d, const void* h, size_t n, void* s)
{
    emu::stream_of(s)->Wait();
    if (!inside(d, n)) return INVALID_VALUE;
    std::memcpy((void*)d, h, n);
    return OK;
}
CUresult cuMemcpyDtoHAsync_v2(void* h, unsigned long long d, size_t n, void* s)
{
    emu::stream_of(s)->Wait();
    if (!inside(d, n)) return INVALID_VALUE;
    std::memcpy(h, (void*)d, n);
    return OK;
}
CUresult cuMemsetD8_v2(unsigned long long d, unsigned char v, size_t n) { if (emu::capturing_on_this_thread()) return CAPTURE_IMPLICIT; emu::default_stream().Wait(); if (!inside(d, n)) return INVALID_VALUE; std::memset((void*)d, v, n); return OK; }
CUresult cuMemsetD32_v2(unsigned long long d, unsigned v, size_t n)
{
    if (emu::capturing_on_this_thread()) return CAPTURE_IMPLICIT;
    emu::default_stream().Wait();
    if (!inside(d, n * 4)) return INVALID_VALUE;
    for (size_t i = 0; i < n; i++) reinterpret_cast<unsigned*>(d)[i] = v;
    return OK;
}
CUresult cuStreamCreate(void** s, unsigned)
{
    auto* stream = new emu::Stream();
    { std::lock_guard<std::mutex> lock(streams_lock); streams.insert(stream); }
    *s = stream;
    return OK;
}
CUresult cuStreamDestroy_v2(void* s)
{
    auto* stream = static_cast<emu::Stream*>(s);
    { std::lock_guard<std::mutex> lock(streams_lock); if (!streams.erase(stream)) return INVALID_VALUE; }
    delete stream;
    return OK;
}
CUresult cuStreamSynchronize(void* s) { if (emu::capturing_on_this_thread()) return CAPTURE_IMPLICIT; emu::stream_of(s)->Wait(); return OK; }

// CUDA graphs: a capturing stream collects its launches (cuLaunchKernel above, the fake cuBLAS's GEMMs); the graph
// runs them in order on the stream it is launched on. Thread-local mode's rule is enforced: while a thread captures,
// its synchronizing calls fail with CUDA_ERROR_STREAM_CAPTURE_IMPLICIT, as on a GPU they would invalidate the capture.
CUresult cuStreamBeginCapture_v2(void* stream, int)
{
    if (!stream) return CAPTURE_UNSUPPORTED;   // the legacy stream cannot be captured
    auto* s = emu::stream_of(stream);
    s->Wait();
    std::lock_guard<std::mutex> lock(streams_lock);   // capturing_on_this_thread reads the capture fields under it
    if (s->capture) return INVALID_VALUE;
    s->capture = new std::vector<std::function<void()>>();
    s->capture_thread = std::this_thread::get_id();
    return OK;
}
CUresult cuStreamEndCapture(void* stream, void** graph)
{
    auto* s = emu::stream_of(stream);
    std::lock_guard<std::mutex> lock(streams_lock);
    if (!s->capture) return CAPTURE_UNMATCHED;
    if (s->capture_thread != std::this_thread::get_id()) return CAPTURE_WRONG_THREAD;
    *graph = new Graph{std::move(*s->capture)};
    delete s->capture;
    s->capture = nullptr;
    return OK;
}
CUresult cuGraphInstantiateWithFlags(void** exec, void* graph, unsigned long long) { *exec = new Graph(*static_cast<Graph*>(graph)); return OK; }
CUresult cuGraphLaunch(void* exec, void* stream)
{
    if (!stream && emu::capturing_on_this_thread()) return CAPTURE_IMPLICIT;
    auto* s = emu::stream_of(stream);
    if (s->capture) return INVALID_VALUE;   // a graph launched into a capture (a child graph): not emulated
    s->Wait();
    for (auto& node : static_cast<Graph*>(exec)->nodes) node();
    return OK;
}
CUresult cuGraphExecDestroy(void* exec) { delete static_cast<Graph*>(exec); return OK; }
CUresult cuGraphDestroy(void* graph) { delete static_cast<Graph*>(graph); return OK; }
CUresult cuStreamQuery(void* s) { return emu::stream_of(s)->Idle() ? OK : NOT_READY; }
// Launches run to completion inside cuLaunchKernel, so an event records the host clock once the work queued on
// its stream before it is done, and the time between two events is the CPU time the emulated kernels took
// ('kernels bench --emulate').
CUresult cuEventCreate(void** e, unsigned) { *e = new std::chrono::steady_clock::time_point(); return OK; }
CUresult cuEventDestroy_v2(void* e) { delete static_cast<std::chrono::steady_clock::time_point*>(e); return OK; }
CUresult cuEventRecord(void* e, void* stream)
{
    emu::stream_of(stream)->Wait();
    *static_cast<std::chrono::steady_clock::time_point*>(e) = std::chrono::steady_clock::now();
    return OK;
}
CUresult cuEventSynchronize(void*) { return OK; }
CUresult cuEventElapsedTime(float* ms, void* start, void* end)
{
    auto* a = static_cast<std::chrono::steady_clock::time_point*>(start);
    auto* b = static_cast<std::chrono::steady_clock::time_point*>(end);
    *ms = std::chrono::duration<float, std::milli>(*b - *a).count();
    return OK;
}
}

bool emu::device_range(unsigned long long p, size_t n) { return inside(p, n); }

bool emu::capturing_on_this_thread()
{
    std::lock_guard<std::mutex> lock(streams_lock);
    for (emu::Stream* s : streams)
        if (s->capture && s->capture_thread == std::this_thread::get_id()) return true;
    return false;
}
