using System.Diagnostics;
using System.Numerics.Tensors;

namespace TokenMill.Distributed;

/// <summary>
/// A group of ranks that live in one process (one thread each) and exchange data through shared
/// memory: every rank publishes a pointer to its buffer, a barrier makes them visible, each rank reads
/// the others' directly. The same rank layout as GPUs under NCCL, so every tensor-parallel code path
/// runs on a laptop and in CI. <see cref="Communicator"/> gives each rank its view.
/// </summary>
/// <remarks>
/// All-reduce is a reduce-scatter followed by an all-gather over a shared scratch buffer: rank r sums
/// slice r of every rank's buffer in rank order 0, 1, …, N−1 (one fixed order, so every rank ends with
/// the same bits), then every rank copies the whole result. Two barriers per call: after the
/// pointers are published, and after the slices are summed; the next call's first barrier keeps the
/// scratch buffer from being overwritten while a slow rank still copies it.
/// </remarks>
public sealed unsafe class SharedMemoryGroup : IDisposable
{
    // A waiting rank spins this many rounds (yielding after the first few) before it blocks: a step of the
    // forward pass reaches the next collective within microseconds when ranks have cores of their own, but
    // ranks that share cores must give theirs up to the rank they wait for.
    const int SpinRounds = 30;

    readonly IntPtr[] _buffers;
    readonly int[] _lengths;
    readonly long[] _arrivals; // the barrier generation each rank last arrived at
    readonly float[] _scratch;
    readonly SharedMemoryCommunicator[] _ranks;
    readonly object _lock = new();
    int _count;
    long _generation;
    int _sleepers;
    CommunicatorException? _error;

    /// <param name="worldSize">Ranks in the group.</param>
    /// <param name="maxAllReduceElements">The longest all-reduce any rank will ask for (the shared scratch buffer's length).</param>
    /// <param name="timeout">How long one call waits for the other ranks before it fails.</param>
    public SharedMemoryGroup(int worldSize, int maxAllReduceElements, TimeSpan timeout)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(maxAllReduceElements);
        if (timeout <= TimeSpan.Zero && timeout != System.Threading.Timeout.InfiniteTimeSpan)
            throw new ArgumentOutOfRangeException(nameof(timeout), "the timeout must be positive or infinite");
        WorldSize = worldSize;
        Timeout = timeout;
        _buffers = new IntPtr[worldSize];
        _lengths = new int[worldSize];
        _arrivals = new long[worldSize];
        _scratch = GC.AllocateUninitializedArray<float>(maxAllReduceElements, pinned: true);
        _ranks = new SharedMemoryCommunicator[worldSize];
        for (int r = 0; r < worldSize; r++) _ranks[r] = new SharedMemoryCommunicator(this, r);
    }

    public int WorldSize { get; }
    public TimeSpan Timeout { get; }

    /// <summary>The error that stopped the group, or null while it is healthy.</summary>
    public CommunicatorException? Error => Volatile.Read(ref _error);

    public ICommunicator Communicator(int rank) => _ranks[rank];

    internal void Abort(CommunicatorException error)
    {
        Interlocked.CompareExchange(ref _error, error, null);
        lock (_lock) Monitor.PulseAll(_lock);
    }

    void ThrowIfFailed()
    {
        if (Volatile.Read(ref _error) is { } e)
            throw new CommunicatorException(e.Rank, e.Operation, e.Message, e.InnerException); // one instance per throwing thread
    }

    /// <summary>Waits until every rank has arrived (or the group failed, or the deadline passed).</summary>
    void Wait(int rank, string operation, long started)
    {
        ThrowIfFailed();
        long generation = Volatile.Read(ref _generation);
        Volatile.Write(ref _arrivals[rank], generation + 1);
        if (Interlocked.Increment(ref _count) == WorldSize)
        {
            _count = 0; // before the generation moves on: a rank that sees the new generation may arrive at the next barrier at once
            Interlocked.Exchange(ref _generation, generation + 1);
            if (Volatile.Read(ref _sleepers) > 0) lock (_lock) Monitor.PulseAll(_lock);
            return;
        }
        var spin = new SpinWait();
        for (int i = 0; i < SpinRounds; i++)
        {
            if (Volatile.Read(ref _generation) != generation) return;
            if (Volatile.Read(ref _error) is not null) ThrowIfFailed();
            spin.SpinOnce(sleep1Threshold: -1);
        }
        lock (_lock)
        {
            Interlocked.Increment(ref _sleepers);
            try
            {
                while (Volatile.Read(ref _generation) == generation)
                {
                    ThrowIfFailed();
                    if (Timeout == System.Threading.Timeout.InfiniteTimeSpan)
                    {
                        Monitor.Wait(_lock);
                        continue;
                    }
                    long remaining = (long)(Timeout - Stopwatch.GetElapsedTime(started)).TotalMilliseconds;
                    if ((remaining <= 0 || !Monitor.Wait(_lock, (int)Math.Min(remaining, int.MaxValue))) && Volatile.Read(ref _generation) == generation)
                        TimedOut(rank, operation, generation);
                }
            }
            finally
            {
                Interlocked.Decrement(ref _sleepers);
            }
        }
    }

    void TimedOut(int rank, string operation, long generation)
    {
        var missing = Enumerable.Range(0, WorldSize).Where(r => Volatile.Read(ref _arrivals[r]) <= generation).ToList();
        string who = missing.Count == 1 ? $"rank {missing[0]}" : $"ranks {string.Join(", ", missing)}";
        var error = new CommunicatorException(missing.Count > 0 ? missing[0] : rank, operation,
            $"tensor-parallel {operation} timed out after {Timeout.TotalSeconds:0.###} s on rank {rank}: {who} never reached it (stalled or dead)");
        Abort(error);
        ThrowIfFailed();
    }

    void CheckLengths(string operation)
    {
        for (int r = 1; r < WorldSize; r++)
            if (_lengths[r] != _lengths[0])
                throw new CommunicatorException(r, operation,
                    $"tensor-parallel {operation}: rank {r} passed {_lengths[r]} floats, rank 0 passed {_lengths[0]}; every rank must pass the same length");
    }

    internal void AllReduceSum(int rank, Span<float> buffer)
    {
        const string Op = "all-reduce";
        long started = Stopwatch.GetTimestamp(), arrived;
        fixed (float* p = buffer)
        {
            _buffers[rank] = (IntPtr)p;
            _lengths[rank] = buffer.Length;
            Wait(rank, Op, started);
            arrived = Stopwatch.GetTimestamp();
            CheckLengths(Op);
            int n = buffer.Length;
            if (n > _scratch.Length)
                throw new CommunicatorException(rank, Op, $"tensor-parallel {Op} of {n} floats exceeds the group's buffer of {_scratch.Length}");
            int slice = (n + WorldSize - 1) / WorldSize;
            int start = Math.Min(n, rank * slice), count = Math.Min(slice, n - start);
            if (count > 0)
            {
                var sum = _scratch.AsSpan(start, count);
                new ReadOnlySpan<float>((float*)_buffers[0] + start, count).CopyTo(sum);
                for (int r = 1; r < WorldSize; r++)
                    TensorPrimitives.Add(sum, new ReadOnlySpan<float>((float*)_buffers[r] + start, count), sum);
            }
            Wait(rank, Op, started);
            _scratch.AsSpan(0, n).CopyTo(buffer);
        }
        _ranks[rank].Stats.AddAllReduce(Stopwatch.GetTimestamp() - started, arrived - started);
    }

    internal void AllGather(int rank, ReadOnlySpan<float> send, Span<float> receive)
    {
        const string Op = "all-gather";
        long started = Stopwatch.GetTimestamp();
        if (receive.Length != send.Length * WorldSize)
            throw new ArgumentException($"all-gather of {send.Length} floats from {WorldSize} ranks needs a receive buffer of {send.Length * WorldSize}", nameof(receive));
        fixed (float* p = send)
        {
            _buffers[rank] = (IntPtr)p;
            _lengths[rank] = send.Length;
            Wait(rank, Op, started);
            CheckLengths(Op);
            int n = send.Length;
            for (int r = 0; r < WorldSize; r++)
                new ReadOnlySpan<float>((float*)_buffers[r], n).CopyTo(receive.Slice(r * n, n));
            Wait(rank, Op, started);
        }
        _ranks[rank].Stats.AddAllGather(Stopwatch.GetTimestamp() - started);
    }

    internal void Broadcast(int rank, Span<float> buffer, int root)
    {
        const string Op = "broadcast";
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual((uint)root, (uint)WorldSize, nameof(root));
        long started = Stopwatch.GetTimestamp();
        fixed (float* p = buffer)
        {
            _buffers[rank] = (IntPtr)p;
            _lengths[rank] = buffer.Length;
            Wait(rank, Op, started);
            CheckLengths(Op);
            if (rank != root) new ReadOnlySpan<float>((float*)_buffers[root], buffer.Length).CopyTo(buffer);
            Wait(rank, Op, started);
        }
    }

    internal void Barrier(int rank) => Wait(rank, "barrier", Stopwatch.GetTimestamp());

    public void Dispose() => Abort(new CommunicatorException(0, "dispose", "the tensor-parallel group was disposed"));
}

/// <summary>One rank's view of a <see cref="SharedMemoryGroup"/>.</summary>
public sealed class SharedMemoryCommunicator : ICommunicator
{
    readonly SharedMemoryGroup _group;

    internal SharedMemoryCommunicator(SharedMemoryGroup group, int rank)
    {
        _group = group;
        Rank = rank;
    }

    public int Rank { get; }
    public int WorldSize => _group.WorldSize;
    public TimeSpan Timeout => _group.Timeout;
    public CommunicatorStats Stats { get; } = new();

    public void AllReduceSum(Span<float> buffer) => _group.AllReduceSum(Rank, buffer);
    public void AllGather(ReadOnlySpan<float> send, Span<float> receive) => _group.AllGather(Rank, send, receive);
    public void Broadcast(Span<float> buffer, int root) => _group.Broadcast(Rank, buffer, root);
    public void Barrier() => _group.Barrier(Rank);
    public void Abort(CommunicatorException error) => _group.Abort(error);

    /// <summary>The group outlives its ranks' views: dispose the <see cref="SharedMemoryGroup"/>.</summary>
    public void Dispose() { }
}
