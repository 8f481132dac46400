namespace TokenMill.Distributed;

/// <summary>
/// The collective operations tensor parallelism needs, seen from one rank of a group (NCCL's and
/// torch.distributed's vocabulary). Every rank of the group calls the same operations in the same
/// order with the same lengths; each call returns once this rank's part is done. Each call waits at
/// most <see cref="Timeout"/> for the other ranks, then throws a <see cref="CommunicatorException"/>
/// that names the rank and the operation; a rank that failed aborts the group and every other rank's
/// pending or next call throws that rank's error.
/// </summary>
public interface ICommunicator : IDisposable
{
    int Rank { get; }
    int WorldSize { get; }
    TimeSpan Timeout { get; }

    /// <summary>buffer ← Σ over ranks of buffer (elementwise), the same bits on every rank.</summary>
    void AllReduceSum(Span<float> buffer);

    /// <summary>receive[r·n .. (r+1)·n) ← rank r's <paramref name="send"/> (n = send.Length, equal on every rank).</summary>
    void AllGather(ReadOnlySpan<float> send, Span<float> receive);

    /// <summary>buffer ← rank <paramref name="root"/>'s buffer.</summary>
    void Broadcast(Span<float> buffer, int root);

    /// <summary>Returns once every rank has called it.</summary>
    void Barrier();

    /// <summary>Marks the group failed: every rank's pending and later calls throw <paramref name="error"/>.</summary>
    void Abort(CommunicatorException error);

    /// <summary>Time this rank spent in each operation, waiting for the others included.</summary>
    CommunicatorStats Stats { get; }
}

/// <summary>Counts and cumulative wall time of one rank's collective calls.</summary>
public sealed class CommunicatorStats
{
    long _allReduceCalls, _allReduceTicks, _allReduceArrivalTicks, _allGatherCalls, _allGatherTicks;

    public long AllReduceCalls => Volatile.Read(ref _allReduceCalls);
    public TimeSpan AllReduceTime => System.Diagnostics.Stopwatch.GetElapsedTime(0, Volatile.Read(ref _allReduceTicks));
    /// <summary>
    /// The part of <see cref="AllReduceTime"/> spent waiting for the other ranks to arrive (their compute running
    /// longer, or their threads not scheduled); the rest is the reduction itself (sum, copy, the second barrier).
    /// </summary>
    public TimeSpan AllReduceArrivalWait => System.Diagnostics.Stopwatch.GetElapsedTime(0, Volatile.Read(ref _allReduceArrivalTicks));

    public long AllGatherCalls => Volatile.Read(ref _allGatherCalls);
    public TimeSpan AllGatherTime => System.Diagnostics.Stopwatch.GetElapsedTime(0, Volatile.Read(ref _allGatherTicks));

    internal void AddAllReduce(long ticks, long arrivalTicks)
    {
        Interlocked.Increment(ref _allReduceCalls);
        Interlocked.Add(ref _allReduceTicks, ticks);
        Interlocked.Add(ref _allReduceArrivalTicks, arrivalTicks);
    }

    internal void AddAllGather(long ticks)
    {
        Interlocked.Increment(ref _allGatherCalls);
        Interlocked.Add(ref _allGatherTicks, ticks);
    }

    public void Reset()
    {
        Volatile.Write(ref _allReduceCalls, 0);
        Volatile.Write(ref _allReduceTicks, 0);
        Volatile.Write(ref _allReduceArrivalTicks, 0);
        Volatile.Write(ref _allGatherCalls, 0);
        Volatile.Write(ref _allGatherTicks, 0);
    }
}

/// <summary>
/// A tensor-parallel group failed: <see cref="Rank"/> is the rank at fault (the one that threw, or the
/// one the others waited for in vain) and <see cref="Operation"/> what it was doing (all-reduce,
/// all-gather, broadcast, barrier, forward).
/// </summary>
public sealed class CommunicatorException(int rank, string operation, string message, Exception? inner = null)
    : Exception(message, inner)
{
    public int Rank { get; } = rank;
    public string Operation { get; } = operation;
}

/// <summary>
/// The communicator of a group of one (tensor-parallel size 1): every collective is the identity,
/// so the forward pass calls them unconditionally at no cost.
/// </summary>
public sealed class SingleRankCommunicator : ICommunicator
{
    public static SingleRankCommunicator Instance { get; } = new();

    public int Rank => 0;
    public int WorldSize => 1;
    public TimeSpan Timeout => System.Threading.Timeout.InfiniteTimeSpan;
    public CommunicatorStats Stats { get; } = new();

    public void AllReduceSum(Span<float> buffer) { }

    public void AllGather(ReadOnlySpan<float> send, Span<float> receive)
    {
        if (receive.Length != send.Length) throw new ArgumentException($"all-gather of {send.Length} floats needs a receive buffer of {send.Length}", nameof(receive));
        send.CopyTo(receive);
    }

    public void Broadcast(Span<float> buffer, int root) => ArgumentOutOfRangeException.ThrowIfNotEqual(root, 0);

    public void Barrier() { }

    public void Abort(CommunicatorException error) => throw error;

    public void Dispose() { }
}
