using System.Diagnostics;
using TokenMill.Interop.Driver;

namespace TokenMill.Distributed;

/// <summary>One check of <see cref="NcclSelfTest"/>: what ran, on which rank, and what went wrong (null when it passed).</summary>
public sealed record NcclCheck(string Name, int Rank, string? Failure, string? Detail = null)
{
    public bool Passed => Failure is null;
}

/// <summary>
/// The communicator tests of the CPU communicator (SharedMemoryCommunicatorTests), on device buffers through
/// <see cref="NcclCommunicator"/>: every rank all-reduces, all-gathers and broadcasts buffers of several lengths and
/// compares what comes back with the sequential result computed on the host (all-gather and broadcast exactly, the
/// all-reduce within a few ulps: NCCL may add in another order than rank 0, 1, …), then meets the others at a barrier.
/// With a stalled rank, that rank first never calls the all-reduce, and each other rank must fail after the timeout
/// with a <see cref="CommunicatorException"/> naming it and the all-reduce instead of hanging; then, in a new group, it
/// aborts with an error of its own, which the others waiting in an all-gather must get at once. <c>tokenmill kernels
/// nccl</c> runs it.
/// </summary>
public static class NcclSelfTest
{
    /// <summary>Buffer lengths in floats: one element, odd sizes that no vector width divides, and one past a 4 KiB page.</summary>
    public static readonly int[] Lengths = [1, 2, 3, 5, 17, 64, 1025];

    /// <summary>
    /// Runs the checks on one thread per rank (rank r on <paramref name="contexts"/>[r]) and returns them in rank order.
    /// <paramref name="stallRank"/>: the rank that skips the all-reduce, or null for the full test.
    /// </summary>
    public static IReadOnlyList<NcclCheck> Run(IReadOnlyList<CudaContext> contexts, TimeSpan timeout, int? stallRank = null)
    {
        ArgumentNullException.ThrowIfNull(contexts);
        int n = contexts.Count;
        if (stallRank is not { } s) return OnRanks(contexts, timeout, (context, comm) => Full(context, comm));
        if (s < 0 || s >= n) throw new ArgumentOutOfRangeException(nameof(stallRank), $"rank {s} is outside the group of {n}");
        // The two ways a rank fails, each in a group of its own (a failed group stays failed): it stalls, and the others
        // time out; it throws and aborts the group, and the others get its error at once, long before the timeout.
        return [.. OnRanks(contexts, timeout, (context, comm) => Stall(context, comm, s)),
                .. OnRanks(contexts, timeout, (context, comm) => Fail(context, comm, s))];
    }

    static List<NcclCheck> OnRanks(IReadOnlyList<CudaContext> contexts, TimeSpan timeout, Func<CudaContext, NcclCommunicator, List<NcclCheck>> body)
    {
        int n = contexts.Count;
        NcclCommunicator[] comms;
        try { comms = NcclCommunicator.CreateInProcess(contexts, timeout); }
        catch (CommunicatorException e) { return [new NcclCheck("init", e.Rank, e.Message)]; }

        var results = new List<NcclCheck>[n];
        var threads = Enumerable.Range(0, n).Select(r => new Thread(() =>
        {
            try
            {
                contexts[r].MakeCurrent();
                results[r] = body(contexts[r], comms[r]);
            }
            catch (Exception e) when (e is CommunicatorException or Interop.CudaInteropException or ArgumentException)
            {
                results[r] = [new NcclCheck("setup", r, $"{e.GetType().Name}: {e.Message}")];   // e.g. a device allocation failed
            }
        }) { IsBackground = true, Name = $"nccl-selftest-rank{r}" }).ToList();
        threads.ForEach(t => t.Start());
        // Each collective waits at most the timeout; a rank still running long after that is the hang the timeout must prevent.
        var limit = Stopwatch.StartNew();
        var patience = TimeSpan.FromSeconds(30) + timeout * 4 * Lengths.Length;
        var hung = new List<NcclCheck>();
        for (int r = 0; r < n; r++)
            if (!threads[r].Join(patience > limit.Elapsed ? patience - limit.Elapsed : TimeSpan.Zero))
                hung.Add(new NcclCheck("finish", r, $"rank {r} is still running long after the timeout: it hangs"));
        if (hung.Count > 0) return hung;   // the communicators are in use by the hung threads: leave them
        foreach (var c in comms) c.Dispose();
        return [.. results.SelectMany(x => x)];
    }

    /// <summary>
    /// The full checks on this process's one rank of a group whose other ranks are other processes running the same
    /// checks (a multi-process group from <see cref="NcclCommunicator.FromEnvironment"/>); the calling thread must
    /// have <paramref name="context"/> current.
    /// </summary>
    public static IReadOnlyList<NcclCheck> RunRank(CudaContext context, NcclCommunicator comm)
    {
        ArgumentNullException.ThrowIfNull(context);
        ArgumentNullException.ThrowIfNull(comm);
        return Full(context, comm);
    }

    static float[] RankData(int rank, int length, int round) =>
        [.. Enumerable.Range(0, length).Select(i => MathF.Sin(rank * 7.1f + i * 0.37f + round) * (1 + rank))];

    static List<NcclCheck> Full(CudaContext context, NcclCommunicator comm)
    {
        var checks = new List<NcclCheck>();
        int n = comm.WorldSize, r = comm.Rank;
        using var stream = context.CreateStream();
        for (int i = 0; i < Lengths.Length; i++)
        {
            int len = Lengths[i];
            using var buffer = context.Allocate(len * sizeof(float));
            using var gathered = context.Allocate((long)len * n * sizeof(float));
            checks.Add(Check($"all-reduce {len}", r, () =>
            {
                buffer.CopyFrom<float>(RankData(r, len, i));
                comm.AllReduceSum(buffer, stream);
                var got = new float[len];
                buffer.CopyTo<float>(got);
                // The reference: rank 0 + rank 1 + … in float. NCCL's ring may add in another order for 3+ ranks, so
                // compare within a few ulps of the magnitudes summed rather than bit for bit.
                var sum = new float[len];
                var magnitude = new float[len];
                for (int q = 0; q < n; q++)
                {
                    var x = RankData(q, len, i);
                    for (int k = 0; k < len; k++) { sum[k] += x[k]; magnitude[k] += MathF.Abs(x[k]); }
                }
                return Compare(got, sum, magnitude, n);
            }));
            checks.Add(Check($"all-gather {len}", r, () =>
            {
                buffer.CopyFrom<float>(RankData(r, len, i));
                comm.AllGather(buffer, gathered, len, stream);
                var got = new float[len * n];
                gathered.CopyTo<float>(got);
                var all = Enumerable.Range(0, n).SelectMany(q => RankData(q, len, i)).ToArray();
                return Compare(got, all, null, 0);
            }));
            int root = i % n;
            checks.Add(Check($"broadcast {len} from rank {root}", r, () =>
            {
                buffer.CopyFrom<float>(RankData(r, len, i));
                comm.Broadcast(buffer, root, stream);
                var got = new float[len];
                buffer.CopyTo<float>(got);
                return Compare(got, RankData(root, len, i), null, 0);
            }));
            checks.Add(Check($"barrier {i}", r, () => { comm.Barrier(stream); return null; }));
        }
        return checks;
    }

    static List<NcclCheck> Stall(CudaContext context, NcclCommunicator comm, int stalled)
    {
        if (comm.Rank == stalled) return [];   // stalled: never calls
        string? detail = null;
        return [Check($"rank {stalled} stalls: all-reduce times out", comm.Rank, () =>
        {
            using var stream = context.CreateStream();
            using var buffer = context.Allocate(16 * sizeof(float));
            var clock = Stopwatch.StartNew();
            try
            {
                comm.AllReduceSum(buffer, stream);
                return "the all-reduce completed although a rank never called it";
            }
            catch (CommunicatorException e)
            {
                // The rank that timed out itself must have waited the timeout; the others are released by its abort, which
                // may come sooner after their own call when they called later.
                if (e.Message.Contains($" on rank {comm.Rank}:", StringComparison.Ordinal) && clock.Elapsed < comm.Timeout * 0.9)
                    return $"failed after {clock.Elapsed.TotalSeconds:0.###} s, before the timeout: {e.Message}";
                if (!e.Message.Contains("timed out", StringComparison.Ordinal)) return $"not a timeout: {e.Message}";
                if (e.Operation != "all-reduce") return $"the error names operation '{e.Operation}', not the all-reduce: {e.Message}";
                if (e.Rank != stalled) return $"the error names rank {e.Rank}, not the stalled rank {stalled}: {e.Message}";
                detail = e.Message;
                return null;
            }
        }) with { Detail = detail }];
    }

    static List<NcclCheck> Fail(CudaContext context, NcclCommunicator comm, int failing)
    {
        string? detail = null;
        if (comm.Rank == failing)
        {
            // Fails in its own work (its forward pass, say) while the others already wait in an all-gather.
            Thread.Sleep(comm.Timeout / 10);
            comm.Abort(new CommunicatorException(failing, "forward", $"tensor-parallel rank {failing} failed in its forward pass: injected by the self test"));
            return [];
        }
        return [Check($"rank {failing} aborts: all-gather fails with its error", comm.Rank, () =>
        {
            using var stream = context.CreateStream();
            using var send = context.Allocate(4 * sizeof(float));
            using var receive = context.Allocate(4L * comm.WorldSize * sizeof(float));
            var clock = Stopwatch.StartNew();
            try
            {
                comm.AllGather(send, receive, 4, stream);
                return "the all-gather completed although a rank aborted the group";
            }
            catch (CommunicatorException e)
            {
                if (clock.Elapsed > comm.Timeout * 0.6) return $"released only after {clock.Elapsed.TotalSeconds:0.###} s, not at the abort: {e.Message}";
                if ((e.Rank, e.Operation) != (failing, "forward")) return $"the error names rank {e.Rank} and '{e.Operation}', not rank {failing}'s forward pass: {e.Message}";
                detail = e.Message;
                return null;
            }
        }) with { Detail = detail }];
    }

    static NcclCheck Check(string name, int rank, Func<string?> body)
    {
        try { return new NcclCheck(name, rank, body()); }
        catch (Exception e) when (e is CommunicatorException or Interop.CudaInteropException or ArgumentException)
        {
            return new NcclCheck(name, rank, $"{e.GetType().Name}: {e.Message}");
        }
    }

    static string? Compare(float[] got, float[] want, float[]? magnitude, int terms)
    {
        if (got.Length != want.Length) return $"{got.Length} floats, expected {want.Length}";
        for (int k = 0; k < got.Length; k++)
        {
            float tolerance = magnitude is null ? 0 : terms * magnitude[k] * 1.2e-7f;   // 1.2e-7: float's machine epsilon, 2^-23
            if (!(MathF.Abs(got[k] - want[k]) <= tolerance))
                return $"element {k}: {got[k]:R}, expected {want[k]:R}" + (tolerance > 0 ? $" (tolerance {tolerance:G3})" : "");
        }
        return null;
    }
}
