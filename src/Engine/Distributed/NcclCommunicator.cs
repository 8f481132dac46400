using System.Diagnostics;
using TokenMill.Interop;
using TokenMill.Interop.Driver;

namespace TokenMill.Distributed;

/// <summary>
/// One rank of an NCCL communicator (one rank per GPU) over the generated bindings of <c>src/Interop</c>. NCCL
/// collectives are asynchronous: a call only enqueues a kernel on the stream, and a peer that never arrives
/// shows as a stream that never completes. So each operation here enqueues, then polls the stream and the
/// communicator's asynchronous error against a deadline of <see cref="Timeout"/>; past it, the communicator is
/// aborted (<c>ncclCommAbort</c>, which releases the pending kernels) and the call throws a
/// <see cref="CommunicatorException"/> naming the rank and the operation. Ranks of one process (see
/// <see cref="CreateInProcess"/>) share a record of their calls, so the error names the rank that never arrived;
/// across processes NCCL cannot tell which peer stalled, and the error names the rank that gave up waiting.
/// Run with one rank on an H100 (NCCL 2.28, `kernels nccl --ranks 1`); several ranks only against the fake NCCL of tools/cuda-emu.
/// </summary>
public sealed unsafe class NcclCommunicator : IDeviceCommunicator
{
    // Waiting for a collective: yield the core for the first few milliseconds (a decode step's all-reduce takes
    // tens of microseconds, and a 1 ms sleep would cost more than the collective), then poll once per millisecond
    // so a long prefill or a stalled peer does not burn a core for the whole timeout.
    static readonly long YieldTicks = Stopwatch.Frequency / 100;

    readonly NcclCommHandle _comm;
    readonly DeviceBuffer _barrier;
    readonly InProcessRecord? _group;
    // Abort may come from another thread (the engine stopping the group) while this rank polls: ncclCommAbort frees
    // the communicator, so every native call on it and the abort itself are serialized, and a poll after the abort
    // sees the handle closed instead of touching freed memory.
    readonly Lock _native = new();
    CommunicatorException? _failure;

    NcclCommunicator(NcclCommHandle comm, DeviceBuffer barrier, int rank, int worldSize, TimeSpan timeout, InProcessRecord? group)
    {
        _comm = comm;
        _barrier = barrier;
        Rank = rank;
        WorldSize = worldSize;
        Timeout = timeout;
        _group = group;
    }

    public int Rank { get; }
    public int WorldSize { get; }
    public TimeSpan Timeout { get; }
    public CommunicatorStats Stats { get; } = new();

    /// <summary>NCCL's version code (e.g. 21805 for 2.18.5), as the loaded library reports it.</summary>
    public static int Version()
    {
        int v;
        NcclApi.ncclGetVersion(&v);
        return v;
    }

    /// <summary>A fresh unique id, made by the rank that starts a group (rank 0) and given to every other rank.</summary>
    public static byte[] CreateUniqueId()
    {
        ncclUniqueId id;
        NcclApi.ncclGetUniqueId(&id);
        return new ReadOnlySpan<byte>(id.Bytes, ncclUniqueId.Size).ToArray();
    }

    /// <summary>
    /// Joins rank <paramref name="rank"/> of <paramref name="worldSize"/> to the group of <paramref name="uniqueId"/> on
    /// <paramref name="context"/>'s device (made current on the calling thread). NCCL's initialization blocks until every
    /// rank has joined, so it runs on a helper thread that is given up after <paramref name="timeout"/>, with an error
    /// (NCCL offers no way to cancel a blocking initialization: that thread stays blocked until the process exits).
    /// </summary>
    public static NcclCommunicator Create(CudaContext context, ReadOnlySpan<byte> uniqueId, int rank, int worldSize, TimeSpan timeout) =>
        Create(context, uniqueId, rank, worldSize, timeout, group: null);

    static NcclCommunicator Create(CudaContext context, ReadOnlySpan<byte> uniqueId, int rank, int worldSize, TimeSpan timeout, InProcessRecord? group)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 1);
        if (rank < 0 || rank >= worldSize) throw new ArgumentOutOfRangeException(nameof(rank), $"rank {rank} is outside a group of {worldSize}");
        if (uniqueId.Length != ncclUniqueId.Size) throw new ArgumentException($"an NCCL unique id is {ncclUniqueId.Size} bytes, got {uniqueId.Length}", nameof(uniqueId));
        if (timeout <= TimeSpan.Zero) throw new ArgumentOutOfRangeException(nameof(timeout), "the timeout must be positive");
        byte[] idBytes = uniqueId.ToArray();

        context.MakeCurrent();
        ncclComm_t comm = default;
        Exception? error = null;
        var init = new Thread(() =>
        {
            try
            {
                context.MakeCurrent();
                ncclUniqueId id;
                idBytes.CopyTo(new Span<byte>(id.Bytes, ncclUniqueId.Size));
                ncclComm_t c;
                NcclApi.ncclCommInitRank(&c, worldSize, id, rank);
                comm = c;
            }
            catch (Exception e) { error = e; }
        }) { IsBackground = true, Name = $"nccl-init-rank{rank}" };
        init.Start();
        if (!init.Join(timeout))
            throw new CommunicatorException(rank, "init",
                $"NCCL initialization of rank {rank} of {worldSize} timed out after {timeout.TotalSeconds:0.###} s: not every rank joined the group " +
                "(a rank did not start, has a different unique id, or cannot reach the others)");
        if (error is not null)
            throw new CommunicatorException(rank, "init", $"NCCL initialization of rank {rank} of {worldSize} failed: {error.Message}", error);

        var handle = new NcclCommHandle(comm);
        DeviceBuffer barrier;
        try { barrier = context.Allocate(sizeof(float)); }
        catch
        {
            handle.Dispose();
            throw;
        }
        return new NcclCommunicator(handle, barrier, rank, worldSize, timeout, group);
    }

    /// <summary>
    /// A group of <paramref name="contexts"/>.Count ranks in this process, rank r on contexts[r]'s device (one GPU
    /// each on real hardware: NCCL refuses two ranks on one device). Each rank initializes on its own thread, as
    /// NCCL's blocking initialization requires; the communicators are then used from one thread per rank.
    /// </summary>
    public static NcclCommunicator[] CreateInProcess(IReadOnlyList<CudaContext> contexts, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(contexts);
        if (contexts.Count == 0) throw new ArgumentException("a group needs at least one rank", nameof(contexts));
        byte[] id = CreateUniqueId();
        var record = new InProcessRecord(contexts.Count);
        var ranks = new NcclCommunicator?[contexts.Count];
        var errors = new Exception?[contexts.Count];
        var threads = Enumerable.Range(0, contexts.Count).Select(r => new Thread(() =>
        {
            try { ranks[r] = Create(contexts[r], id, r, contexts.Count, timeout, record); }
            catch (Exception e) { errors[r] = e; }
        }) { IsBackground = true, Name = $"nccl-create-rank{r}" }).ToList();
        threads.ForEach(t => t.Start());
        threads.ForEach(t => t.Join());
        if (errors.FirstOrDefault(e => e is not null) is { } first)
        {
            foreach (var c in ranks) c?.Dispose();
            throw first;
        }
        return [.. ranks.Select(c => c!)];
    }

    /// <summary>
    /// The rank of a multi-process group described by a torchrun-style <paramref name="environment"/>: rank 0 makes
    /// the unique id and hands it to the others over <see cref="UniqueIdRendezvous"/> (the id only; NCCL carries the
    /// traffic), then every rank joins on <paramref name="context"/> (by convention the device of LOCAL_RANK).
    /// </summary>
    public static NcclCommunicator FromEnvironment(TorchrunEnvironment environment, CudaContext context, TimeSpan timeout)
    {
        ArgumentNullException.ThrowIfNull(environment);
        byte[] id = UniqueIdRendezvous.Exchange(environment, CreateUniqueId, timeout);
        return Create(context, id, environment.Rank, environment.WorldSize, timeout);
    }

    public void AllReduceSum(CUdeviceptr buffer, long count, CudaStream stream)
    {
        const string Op = "all-reduce";
        long start = Begin(Op, count, stream);
        lock (_native)
        {
            try { NcclApi.ncclAllReduce((void*)buffer.Value, (void*)buffer.Value, (nuint)count, ncclDataType_t.ncclFloat32, ncclRedOp_t.ncclSum, Comm(), stream.Stream); }
            catch (NcclException e) { throw EnqueueFailed(Op, e); }
        }
        Complete(Op, stream, start);
        Stats.AddAllReduce(Stopwatch.GetTimestamp() - start, 0);
    }

    public void AllGather(CUdeviceptr send, CUdeviceptr receive, long count, CudaStream stream)
    {
        const string Op = "all-gather";
        long start = Begin(Op, count, stream);
        lock (_native)
        {
            try { NcclApi.ncclAllGather((void*)send.Value, (void*)receive.Value, (nuint)count, ncclDataType_t.ncclFloat32, Comm(), stream.Stream); }
            catch (NcclException e) { throw EnqueueFailed(Op, e); }
        }
        Complete(Op, stream, start);
        Stats.AddAllGather(Stopwatch.GetTimestamp() - start);
    }

    public void Broadcast(CUdeviceptr buffer, long count, int root, CudaStream stream)
    {
        const string Op = "broadcast";
        if (root < 0 || root >= WorldSize) throw new ArgumentOutOfRangeException(nameof(root), $"broadcast root {root} is outside the group of {WorldSize}");
        long start = Begin(Op, count, stream);
        lock (_native)
        {
            try { NcclApi.ncclBroadcast((void*)buffer.Value, (void*)buffer.Value, (nuint)count, ncclDataType_t.ncclFloat32, root, Comm(), stream.Stream); }
            catch (NcclException e) { throw EnqueueFailed(Op, e); }
        }
        Complete(Op, stream, start);
    }

    public void Barrier(CudaStream stream)
    {
        const string Op = "barrier";
        long start = Begin(Op, 1, stream);
        var p = _barrier.Pointer;
        lock (_native)
        {
            try { NcclApi.ncclAllReduce((void*)p.Value, (void*)p.Value, 1, ncclDataType_t.ncclFloat32, ncclRedOp_t.ncclSum, Comm(), stream.Stream); }
            catch (NcclException e) { throw EnqueueFailed(Op, e); }
        }
        Complete(Op, stream, start);
    }

    public void Abort(CommunicatorException error)
    {
        ArgumentNullException.ThrowIfNull(error);
        Fail(error);
    }

    /// <summary>Checks the call, counts it for the in-process record, and returns the start timestamp.</summary>
    long Begin(string operation, long count, CudaStream stream)
    {
        ArgumentNullException.ThrowIfNull(stream);
        ArgumentOutOfRangeException.ThrowIfNegative(count);
        if ((_group?.Failure ?? _failure) is { } failed)
        {
            Fail(failed);
            throw failed;
        }
        ObjectDisposedException.ThrowIf(_comm.IsClosed, this);
        _group?.Arrive(Rank);
        return Stopwatch.GetTimestamp();
    }

    /// <summary>The communicator for a native call, under <see cref="_native"/>; throws the group's error once it was aborted.</summary>
    ncclComm_t Comm() => _comm.IsClosed ? throw Closed() : _comm.Comm;

    CommunicatorException EnqueueFailed(string operation, NcclException e) =>
        Fail(new CommunicatorException(Rank, operation, $"tensor-parallel {operation} failed on rank {Rank}: {e.Message}", e));

    /// <summary>Waits for the stream with the deadline; on a timeout, an NCCL error or a CUDA error, aborts and throws.</summary>
    void Complete(string operation, CudaStream stream, long start)
    {
        long deadline = start + (long)(Timeout.TotalSeconds * Stopwatch.Frequency);
        for (;;)
        {
            CUresult status;
            ncclResult_t async;
            lock (_native)
            {
                var comm = Comm();
                status = CudaApi.cuStreamQuery(stream.Stream);
                NcclApi.ncclCommGetAsyncError(comm, &async);
            }
            // A rank of this process that failed releases the others at once, whether or not NCCL tells them.
            if (_group?.Failure is { } peerFailure) throw Fail(peerFailure);
            if (async is not (ncclResult_t.ncclSuccess or ncclResult_t.ncclInProgress))
                throw Fail(_group?.Failure ?? new CommunicatorException(Rank, operation,
                    $"tensor-parallel {operation} failed on rank {Rank}: {NcclException.FromStatus(async, "ncclCommGetAsyncError").Message}"));
            if (status == CUresult.CUDA_SUCCESS) return;
            if (status != CUresult.CUDA_ERROR_NOT_READY)
                throw Fail(new CommunicatorException(Rank, operation, $"tensor-parallel {operation} failed on rank {Rank}: {CudaException.FromStatus(status, "cuStreamQuery").Message}"));
            long now = Stopwatch.GetTimestamp();
            if (now > deadline)
            {
                var late = _group?.Behind(Rank) ?? [];
                throw Fail(late.Count > 0
                    ? new CommunicatorException(late[0], operation,
                        $"tensor-parallel {operation} timed out after {Timeout.TotalSeconds:0.###} s on rank {Rank}: rank {string.Join(", rank ", late)} never reached it (stalled or dead)")
                    : new CommunicatorException(Rank, operation,
                        $"tensor-parallel {operation} timed out after {Timeout.TotalSeconds:0.###} s on rank {Rank}: the NCCL collective did not complete " +
                        "(a peer rank stalled or died; NCCL does not say which)"));
            }
            if (now - start < YieldTicks) Thread.Yield();
            else Thread.Sleep(1);
        }
    }

    /// <summary>Records the group's first error, aborts the NCCL communicator once, and returns the error to throw.</summary>
    CommunicatorException Fail(CommunicatorException error)
    {
        error = _group?.Fail(error) ?? error;
        lock (_native)
        {
            _failure ??= error;
            if (!_comm.IsClosed)
            {
                // After ncclCommAbort the communicator is freed: the handle must not call ncclCommDestroy on it again.
                NcclApi.ncclCommAbort(_comm.Comm);
                _comm.SetHandleAsInvalid();
            }
            return _failure;
        }
    }

    Exception Closed() => (Exception?)_failure ?? new ObjectDisposedException(nameof(NcclCommunicator));

    public void Dispose()
    {
        lock (_native) _comm.Dispose();
        _barrier.Dispose();
    }

    /// <summary>
    /// What the ranks of one process know about each other: how many collectives each has called (so a timeout can
    /// name the ranks that never arrived) and the group's first error (so every rank throws the same one).
    /// </summary>
    sealed class InProcessRecord(int worldSize)
    {
        readonly long[] _calls = new long[worldSize];
        CommunicatorException? _failure;

        public CommunicatorException? Failure => Volatile.Read(ref _failure);

        public void Arrive(int rank) => Interlocked.Increment(ref _calls[rank]);

        public List<int> Behind(int rank)
        {
            long mine = Volatile.Read(ref _calls[rank]);
            return [.. Enumerable.Range(0, _calls.Length).Where(r => Volatile.Read(ref _calls[r]) < mine)];
        }

        public CommunicatorException Fail(CommunicatorException error) =>
            Interlocked.CompareExchange(ref _failure, error, null) ?? error;
    }
}
