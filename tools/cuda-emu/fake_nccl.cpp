// fake_nccl.cpp — an emulated libnccl for machines without GPUs, linked into the emulated driver's library
// (KernelEmulation builds both; TOKENMILL_CUDA_LIBRARY and TOKENMILL_NCCL_LIBRARY both point at it). The ranks of
// a communicator are threads of one process that meet in shared memory keyed by the 128-byte unique id; device
// memory is host memory, so a collective really sums, gathers or broadcasts the ranks' buffers. As with NCCL, a
// collective is only enqueued on the caller's stream: it completes on the stream's worker once every rank has
// called it, and a rank that never calls leaves the others' streams pending until ncclCommAbort. What it does not
// model: transports, several processes, and any data type but ncclFloat32 (the only one TokenMill reduces).
#include "emu_stream.h"
#include <atomic>
#include <cstdint>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <string>
#include <vector>

typedef int ncclResult_t;
enum { ncclSuccess = 0, ncclSystemError = 2, ncclInternalError = 3, ncclInvalidArgument = 4, ncclInvalidUsage = 5, ncclRemoteError = 6 };
enum { ncclFloat32 = 7 };
enum { ncclSum = 0 };
struct ncclUniqueId { char internal[128]; };

namespace {

enum class Kind { AllReduce, AllGather, Broadcast, ReduceScatter };

struct Call
{
    Kind kind;
    const float* send;
    float* recv;
    size_t count;   // all-reduce and broadcast: the buffer; all-gather: each rank's part; reduce-scatter: the result
    int root;
};

// One communicator's ranks. Collectives are numbered in call order per rank; round k completes when all ranks
// have arrived with their k-th call, and round k+1 starts only after every rank has left round k.
struct Group
{
    explicit Group(int n) : nranks(n), joined(n, false), calls(n) {}
    const int nranks;
    std::mutex m;
    std::condition_variable cv;
    std::vector<bool> joined;
    int joinedCount = 0;
    uint64_t round = 0;
    int arrived = 0, left = 0;
    bool done = false;
    ncclResult_t roundError = ncclSuccess;
    std::vector<Call> calls;
    bool aborted = false;
};

struct Comm
{
    std::shared_ptr<Group> group;
    int rank;
    uint64_t next = 0;                    // this rank's next round number
    std::atomic<int> asyncError{ncclSuccess};
    std::atomic<int> inFlight{0};
};

std::mutex groups_lock;
std::map<std::string, std::shared_ptr<Group>> groups;

// The round's result, computed once by the last rank to arrive, from copies of every send buffer first (the
// buffers may be in place: all-reduce with send == recv, all-gather with send inside recv).
ncclResult_t Compute(Group& g)
{
    const Call& first = g.calls[0];
    for (int r = 1; r < g.nranks; r++)
    {
        const Call& c = g.calls[r];
        if (c.kind != first.kind || c.count != first.count || c.root != first.root) return ncclInvalidUsage;
    }
    size_t n = first.count;
    std::vector<std::vector<float>> in(g.nranks);
    for (int r = 0; r < g.nranks; r++)
    {
        size_t len = first.kind == Kind::ReduceScatter ? n * g.nranks : n;
        in[r].assign(g.calls[r].send, g.calls[r].send + len);
    }
    switch (first.kind)
    {
    case Kind::AllReduce:
    {
        std::vector<float> sum(n, 0.0f);
        for (int r = 0; r < g.nranks; r++)   // rank 0 + rank 1 + …, in float: the same bits on every rank
            for (size_t i = 0; i < n; i++) sum[i] += in[r][i];
        for (int r = 0; r < g.nranks; r++) std::memcpy(g.calls[r].recv, sum.data(), n * sizeof(float));
        break;
    }
    case Kind::AllGather:
        for (int r = 0; r < g.nranks; r++)
            for (int s = 0; s < g.nranks; s++) std::memcpy(g.calls[r].recv + s * n, in[s].data(), n * sizeof(float));
        break;
    case Kind::Broadcast:
        for (int r = 0; r < g.nranks; r++) std::memcpy(g.calls[r].recv, in[first.root].data(), n * sizeof(float));
        break;
    case Kind::ReduceScatter:
        for (int r = 0; r < g.nranks; r++)
            for (size_t i = 0; i < n; i++)
            {
                float sum = 0;
                for (int s = 0; s < g.nranks; s++) sum += in[s][r * n + i];
                g.calls[r].recv[i] = sum;
            }
        break;
    }
    return ncclSuccess;
}

// Runs on the stream's worker: waits for this rank's round, arrives, waits for the others, leaves.
void Participate(const std::shared_ptr<Comm>& comm, uint64_t round, Call call)
{
    Group& g = *comm->group;
    std::unique_lock<std::mutex> lock(g.m);
    g.cv.wait(lock, [&] { return g.aborted || g.round == round; });
    if (g.aborted) { comm->asyncError = ncclRemoteError; return; }
    g.calls[comm->rank] = call;
    if (++g.arrived == g.nranks)
    {
        g.roundError = Compute(g);
        g.done = true;
        g.cv.notify_all();
    }
    else g.cv.wait(lock, [&] { return g.aborted || g.done; });
    if (!g.done) { comm->asyncError = ncclRemoteError; return; }   // aborted while waiting for a peer
    if (g.roundError != ncclSuccess) comm->asyncError = g.roundError;
    if (++g.left == g.nranks)
    {
        g.arrived = g.left = 0;
        g.done = false;
        g.roundError = ncclSuccess;
        g.round++;
        g.cv.notify_all();
    }
}

ncclResult_t Enqueue(void* handle, Call call, void* stream)
{
    if (!handle) return ncclInvalidArgument;
    auto comm = *static_cast<std::shared_ptr<Comm>*>(handle);
    if (call.count > 0 && (!call.send || !call.recv)) return ncclInvalidArgument;
    if (call.root < 0 || call.root >= comm->group->nranks) return ncclInvalidArgument;
    if (comm->asyncError != ncclSuccess) return comm->asyncError;
    uint64_t round = comm->next++;
    comm->inFlight++;
    emu::stream_of(stream)->Enqueue([comm, round, call] {
        Participate(comm, round, call);
        comm->inFlight--;
    });
    return ncclSuccess;
}

} // namespace

extern "C" {
const char* ncclGetErrorString(ncclResult_t r)
{
    switch (r)
    {
    case ncclSuccess: return "no error";
    case ncclInvalidArgument: return "invalid argument (the fake NCCL of tools/cuda-emu)";
    case ncclInvalidUsage: return "invalid usage: the ranks' calls do not match (kind, count or root), or a rank joined twice";
    case ncclRemoteError: return "remote process exited or there was a network error (the fake NCCL: the communicator was aborted)";
    default: return "error in the fake NCCL";
    }
}
ncclResult_t ncclGetVersion(int* version) { *version = 21805; return ncclSuccess; }   // NCCL 2.18.5's code, for the record
ncclResult_t ncclGetUniqueId(ncclUniqueId* id)
{
    static std::atomic<uint64_t> counter{0};
    std::random_device device;
    std::memset(id, 0, sizeof *id);
    uint64_t words[3] = {counter++, (uint64_t(device()) << 32) | device(), (uint64_t(device()) << 32) | device()};
    std::memcpy(id->internal, words, sizeof words);
    return ncclSuccess;
}
// Blocks until all nranks ranks have joined, as NCCL's blocking initialization does.
ncclResult_t ncclCommInitRank(void** comm, int nranks, ncclUniqueId id, int rank)
{
    if (!comm || nranks < 1 || rank < 0 || rank >= nranks) return ncclInvalidArgument;
    std::shared_ptr<Group> group;
    {
        std::lock_guard<std::mutex> lock(groups_lock);
        auto& slot = groups[std::string(id.internal, sizeof id.internal)];
        if (!slot) slot = std::make_shared<Group>(nranks);
        group = slot;
    }
    std::unique_lock<std::mutex> lock(group->m);
    if (group->nranks != nranks || group->joined[rank]) return ncclInvalidUsage;
    group->joined[rank] = true;
    if (++group->joinedCount == nranks)
    {
        std::lock_guard<std::mutex> glock(groups_lock);
        groups.erase(std::string(id.internal, sizeof id.internal));   // the id is spent; a new group needs a new one
        group->cv.notify_all();
    }
    group->cv.wait(lock, [&] { return group->joinedCount == nranks; });
    auto c = std::make_shared<Comm>();
    c->group = group;
    c->rank = rank;
    *comm = new std::shared_ptr<Comm>(c);
    return ncclSuccess;
}
ncclResult_t ncclCommInitAll(void**, int, const int*) { return ncclInvalidUsage; }   // one process, one device: use ncclCommInitRank per thread
ncclResult_t ncclCommCount(void* comm, int* count) { if (!comm) return ncclInvalidArgument; *count = (*static_cast<std::shared_ptr<Comm>*>(comm))->group->nranks; return ncclSuccess; }
ncclResult_t ncclCommUserRank(void* comm, int* rank) { if (!comm) return ncclInvalidArgument; *rank = (*static_cast<std::shared_ptr<Comm>*>(comm))->rank; return ncclSuccess; }
ncclResult_t ncclGroupStart() { return ncclSuccess; }
ncclResult_t ncclGroupEnd() { return ncclSuccess; }
ncclResult_t ncclAllReduce(const void* send, void* recv, size_t count, int datatype, int op, void* comm, void* stream)
{
    if (datatype != ncclFloat32 || op != ncclSum) return ncclInvalidArgument;
    return Enqueue(comm, {Kind::AllReduce, static_cast<const float*>(send), static_cast<float*>(recv), count, 0}, stream);
}
ncclResult_t ncclBroadcast(const void* send, void* recv, size_t count, int datatype, int root, void* comm, void* stream)
{
    if (datatype != ncclFloat32) return ncclInvalidArgument;
    return Enqueue(comm, {Kind::Broadcast, static_cast<const float*>(send), static_cast<float*>(recv), count, root}, stream);
}
ncclResult_t ncclAllGather(const void* send, void* recv, size_t sendcount, int datatype, void* comm, void* stream)
{
    if (datatype != ncclFloat32) return ncclInvalidArgument;
    return Enqueue(comm, {Kind::AllGather, static_cast<const float*>(send), static_cast<float*>(recv), sendcount, 0}, stream);
}
ncclResult_t ncclReduceScatter(const void* send, void* recv, size_t recvcount, int datatype, int op, void* comm, void* stream)
{
    if (datatype != ncclFloat32 || op != ncclSum) return ncclInvalidArgument;
    return Enqueue(comm, {Kind::ReduceScatter, static_cast<const float*>(send), static_cast<float*>(recv), recvcount, 0}, stream);
}
ncclResult_t ncclCommGetAsyncError(void* comm, ncclResult_t* error)
{
    if (!comm || !error) return ncclInvalidArgument;
    *error = (*static_cast<std::shared_ptr<Comm>*>(comm))->asyncError;
    return ncclSuccess;
}
// Marks the whole group aborted (the peers' pending and later collectives fail with ncclRemoteError, as a real
// peer sees a dead rank), waits for this rank's own pending collectives to return, and frees the communicator.
ncclResult_t ncclCommAbort(void* handle)
{
    if (!handle) return ncclInvalidArgument;
    auto* owner = static_cast<std::shared_ptr<Comm>*>(handle);
    auto comm = *owner;
    {
        std::lock_guard<std::mutex> lock(comm->group->m);
        comm->group->aborted = true;
    }
    comm->group->cv.notify_all();
    while (comm->inFlight > 0) std::this_thread::yield();
    delete owner;
    return ncclSuccess;
}
// A rank's collectives must all have completed (the caller synchronized its stream); a pending one keeps the
// group alive through its own reference until it returns.
ncclResult_t ncclCommDestroy(void* handle)
{
    if (!handle) return ncclInvalidArgument;
    delete static_cast<std::shared_ptr<Comm>*>(handle);
    return ncclSuccess;
}
}
