using TokenMill.Distributed;
using TokenMill.KvCache;
using TokenMill.Models;

namespace TokenMill.Backends.Cpu;

/// <summary>
/// Runs the model on the CPU as one or several tensor-parallel ranks. Each rank has its shard of the
/// weights (<see cref="TensorParallelShard"/>), its own <see cref="CpuForward"/>, worker pool and KV store
/// (only its KV heads); the block tables are the scheduler's, the same for every rank, so each step's
/// <see cref="ForwardBatch"/> is handed to all ranks as it is. Rank 0 runs on the caller's thread (the engine
/// loop), ranks 1…N−1 on threads of their own, joined through a <see cref="SharedMemoryGroup"/>.
/// With one rank nothing changes: the caller runs the one forward pass directly.
/// </summary>
/// <remarks>
/// A rank that throws aborts the group; a rank that stalls makes the others' next collective time out.
/// Either way the step throws one <see cref="CommunicatorException"/> naming the rank and the operation, and
/// the executor stays failed (<see cref="Failure"/>): its ranks' states no longer agree.
/// </remarks>
public sealed class CpuExecutor : IModelExecutor
{
    readonly TensorParallelShard[] _shards;
    readonly CpuWorkerPool[] _pools;
    readonly CpuForward[] _forwards;
    readonly PagedKvStore[] _kvStores;
    readonly SharedMemoryGroup? _group;
    readonly TensorParallelRanks? _ranks;
    ForwardBatch? _batch;
    bool _disposed;

    /// <param name="model">The whole model; each rank takes its shard of it.</param>
    /// <param name="tensorParallelSize">N, the number of ranks (1: no tensor parallelism).</param>
    /// <param name="threads">CPU threads in all: each rank's pool gets threads / N of them (at least one).</param>
    /// <param name="maxBatchTokens">The most tokens one forward pass takes.</param>
    /// <param name="kvBlocks">KV blocks of each rank's paged store (the same block tables on every rank).</param>
    /// <param name="blockSize">Tokens per KV block.</param>
    /// <param name="timeout">How long a rank waits in one collective for the others.</param>
    /// <param name="kvDtype">How the paged stores hold keys and values.</param>
    /// <param name="spinMicroseconds">How long the pools' idle threads spin before they block (<see cref="CpuWorkerPool"/>).</param>
    public CpuExecutor(Model model, int tensorParallelSize, int threads, int maxBatchTokens, int kvBlocks, int blockSize, TimeSpan timeout,
        KvCacheDtype kvDtype = KvCacheDtype.F32, int spinMicroseconds = CpuWorkerPool.DefaultSpinMicroseconds)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(tensorParallelSize, 1);
        int n = tensorParallelSize;
        TensorParallelShard.CheckSplit(model.Config, model.Weights, n, model.Name);
        WorldSize = n;
        ThreadsPerRank = Math.Max(1, (threads > 0 ? threads : Environment.ProcessorCount) / n);
        _shards = new TensorParallelShard[n];
        _pools = new CpuWorkerPool[n];
        _forwards = new CpuForward[n];
        _kvStores = new PagedKvStore[n];
        try
        {
            if (n > 1) _group = new SharedMemoryGroup(n, maxBatchTokens * model.Config.EmbeddingLength, timeout);
            for (int r = 0; r < n; r++)
            {
                _shards[r] = TensorParallelShard.Create(model, r, n);
                _pools[r] = new CpuWorkerPool(n == 1 ? threads : ThreadsPerRank, spinMicroseconds);
                ICommunicator comm = _group?.Communicator(r) ?? SingleRankCommunicator.Instance;
                _forwards[r] = new CpuForward(_shards[r], comm, maxBatchTokens, _pools[r]);
                _kvStores[r] = new PagedKvStore(_shards[r].Config, kvBlocks, blockSize, kvDtype);
            }
        }
        catch
        {
            DisposeRanks(n);
            throw;
        }
        if (_group is { } group)
            _ranks = new TensorParallelRanks(n, RunRank, (rank, error) => group.Communicator(rank).Abort(error), () => group.Error);
    }

    public int WorldSize { get; }

    /// <summary>How the ranks' paged stores hold keys and values.</summary>
    public KvCacheDtype KvCacheDtype => _kvStores.Select(kv => kv.Dtype).Distinct().Single();

    public int ThreadsPerRank { get; }

    /// <summary>The error that stopped the ranks, or null while they work.</summary>
    public CommunicatorException? Failure => _ranks?.Failure;

    Exception? IModelExecutor.Failure => Failure;

    /// <summary>Rank 0's collective calls: how much of a step tensor parallelism costs.</summary>
    public CommunicatorStats CommunicatorStats => _group?.Communicator(0).Stats ?? SingleRankCommunicator.Instance.Stats;

    /// <summary>Test hook (fault injection): runs on rank <c>rank</c>'s thread at the start of every layer (rank, layer).</summary>
    internal Action<int, int>? LayerHook
    {
        set
        {
            for (int r = 0; r < WorldSize; r++) _forwards[r].LayerHook = TensorParallelRanks.LayerHookOf(value, r);
        }
    }

    /// <summary>One step on every rank; the logits (gathered from all ranks) land in <paramref name="logits"/>.</summary>
    /// <exception cref="ArgumentException">The batch is invalid; nothing ran, the ranks are unharmed.</exception>
    /// <exception cref="CommunicatorException">A rank failed or stalled; this executor is done for.</exception>
    public void Forward(ForwardBatch batch, Span<float> logits)
    {
        if (_ranks is null)
        {
            _forwards[0].Forward(batch, _kvStores[0], logits);
            return;
        }
        _ranks.ThrowIfFailed();
        _forwards[0].Validate(batch, _kvStores[0], logits.Length); // every rank would refuse the same batch: refuse it here, before any rank starts
        _batch = batch;
        try
        {
            _ranks.Step(logits);
        }
        finally
        {
            _batch = null;
        }
    }

    /// <summary>Copy-on-write of a KV block, on every rank's store (between steps, when no rank runs).</summary>
    public void CopyBlock(int source, int destination)
    {
        foreach (var kv in _kvStores) kv.CopyBlock(source, destination);
    }

    /// <summary>One rank's step: its forward pass, then a barrier, after which no rank reads the batch any more.</summary>
    void RunRank(int rank, Span<float> logits)
    {
        _forwards[rank].Forward(_batch!, _kvStores[rank], logits);
        _group!.Communicator(rank).Barrier();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        // Disposing the group wakes a rank blocked in a collective; a rank that does not stop keeps its buffers.
        DisposeRanks(_ranks?.Stop(() => _group!.Dispose()) ?? WorldSize);
    }

    void DisposeRanks(int count)
    {
        for (int r = 0; r < count; r++)
        {
            _forwards[r]?.Dispose();
            _kvStores[r]?.Dispose();
            _pools[r]?.Dispose();
            _shards[r]?.Dispose();
        }
    }
}
