using TokenMill.Distributed;

namespace TokenMill.Backends;

/// <summary>
/// How a tensor-parallel executor runs a step on its N ranks, whatever the backend (<see cref="Cpu.CpuExecutor"/>,
/// <see cref="Cuda.CudaExecutor"/>): rank 0 on the caller's thread (the engine loop), ranks 1…N−1 on threads of their
/// own, each started once per step with the same batch. A rank that throws anything but a
/// <see cref="CommunicatorException"/> aborts its group with an error naming it and the operation "forward"; a rank
/// that stalls makes the others' next collective time out. Either way the step throws one
/// <see cref="CommunicatorException"/>, and the ranks stay failed (<see cref="Failure"/>): their states no longer agree.
/// </summary>
internal sealed class TensorParallelRanks
{
    /// <summary>One rank's part of a step: its forward pass into <paramref name="logits"/>, then a barrier, after which no rank reads the batch.</summary>
    public delegate void RankStep(int rank, Span<float> logits);

    readonly RankStep _step;
    readonly Action<int, CommunicatorException> _abort;
    readonly Func<CommunicatorException?>? _groupError;
    readonly Thread[] _threads;
    readonly SemaphoreSlim[] _start;
    readonly float[][] _rankLogits;
    int _logitsLength;
    volatile bool _stopping;
    CommunicatorException? _failure;

    /// <param name="worldSize">N, the number of ranks (at least 2: one rank needs no threads).</param>
    /// <param name="step">A rank's part of a step (called on that rank's thread).</param>
    /// <param name="abort">Aborts the group from rank r's side with the error of a rank that threw.</param>
    /// <param name="groupError">The group's first error, where the communicator keeps one apart from what rank 0 throws (the one to report); null where rank 0 throws it.</param>
    public TensorParallelRanks(int worldSize, RankStep step, Action<int, CommunicatorException> abort, Func<CommunicatorException?>? groupError)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(worldSize, 2);
        _step = step;
        _abort = abort;
        _groupError = groupError;
        _threads = new Thread[worldSize];
        _start = new SemaphoreSlim[worldSize];
        _rankLogits = new float[worldSize][];
        for (int r = 1; r < worldSize; r++)
        {
            int rank = r;
            _start[r] = new SemaphoreSlim(0);
            _rankLogits[r] = [];
            _threads[r] = new Thread(() => RankLoop(rank)) { IsBackground = true, Name = $"tokenmill-tp-rank-{rank}" };
            _threads[r].Start();
        }
    }

    public int WorldSize => _threads.Length;

    /// <summary>Rank <paramref name="rank"/>'s view of an executor's layer hook (rank, layer): the forward pass's hook (layer).</summary>
    public static Action<int>? LayerHookOf(Action<int, int>? hook, int rank) => hook is null ? null : layer => hook(rank, layer);

    /// <summary>The error that stopped the ranks, or null while they work.</summary>
    public CommunicatorException? Failure => Volatile.Read(ref _failure);

    /// <summary>Throws (a copy of) <see cref="Failure"/> when the ranks have failed.</summary>
    public void ThrowIfFailed()
    {
        if (Failure is { } failed) throw new CommunicatorException(failed.Rank, failed.Operation, failed.Message, failed.InnerException);
    }

    /// <summary>One step on every rank; rank 0's logits land in <paramref name="logits"/> (the other ranks' in scratch of the same size).</summary>
    /// <exception cref="CommunicatorException">A rank failed or stalled; these ranks are done for.</exception>
    public void Step(Span<float> logits)
    {
        ThrowIfFailed();
        _logitsLength = logits.Length;
        for (int r = 1; r < WorldSize; r++) _start[r].Release();
        try
        {
            Run(0, logits);
        }
        catch (CommunicatorException e)
        {
            Interlocked.CompareExchange(ref _failure, _groupError?.Invoke() ?? e, null);
            throw;
        }
    }

    void Run(int rank, Span<float> logits)
    {
        try
        {
            _step(rank, logits);
        }
        catch (CommunicatorException)
        {
            throw;
        }
        catch (Exception e)
        {
            var error = new CommunicatorException(rank, "forward", $"tensor-parallel rank {rank} failed in its forward pass: {e.Message}", e);
            _abort(rank, error);
            throw new CommunicatorException(rank, "forward", error.Message, e);
        }
    }

    void RankLoop(int rank)
    {
        while (true)
        {
            _start[rank].Wait();
            if (_stopping) return;
            if (_rankLogits[rank].Length < _logitsLength) _rankLogits[rank] = new float[_logitsLength];
            try
            {
                Run(rank, _rankLogits[rank].AsSpan(0, _logitsLength));
            }
            catch (CommunicatorException)
            {
                // The group is aborted and rank 0 reports it; this rank waits to be stopped.
            }
        }
    }

    /// <summary>
    /// Stops the rank threads, after <paramref name="wake"/> has released any rank blocked in a collective, and returns
    /// how many ranks, from rank 0 on, have stopped: only theirs may free their buffers. A rank stuck outside any
    /// collective (a stalled kernel) is left behind after 5 s rather than waited for, and so are the ranks after it.
    /// </summary>
    public int Stop(Action? wake)
    {
        if (_stopping) return 0;
        _stopping = true;
        wake?.Invoke();
        int stopped = 1;
        for (int r = 1; r < WorldSize; r++)
        {
            _start[r].Release();
            if (_threads[r].Join(TimeSpan.FromSeconds(5))) stopped++;
            else break;
        }
        return stopped;
    }
}
