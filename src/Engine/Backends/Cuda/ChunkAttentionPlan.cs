namespace TokenMill.Backends.Cuda;

/// <summary>How a forward pass used CUDA graphs: captured a chunk's launches into a new graph, replayed one, or neither.</summary>
[Flags]
public enum GraphUse
{
    None = 0,
    Captured = 1,
    Replayed = 2,
}

/// <summary>The attention kernels a forward pass launched (<see cref="CudaForward.LastAttention"/>).</summary>
[Flags]
public enum AttentionKernels
{
    None = 0,
    /// <summary><c>paged_attention_prefill_f32</c>: the rows of a prompt chunk.</summary>
    Prefill = 1,
    /// <summary><c>paged_attention_decode_f32</c>: one pass over each decode row's context.</summary>
    Decode = 2,
    /// <summary><c>paged_attention_decode_split_f32</c> then <c>paged_attention_reduce</c>: split-K decode.</summary>
    DecodeSplitK = 4,
}

/// <summary>
/// One attention launch of a chunk: groups <see cref="FirstGroup"/> … + <see cref="GroupCount"/> − 1, all of one
/// <see cref="Kind"/>, whose rows start at chunk row <see cref="FirstRow"/>.
/// </summary>
/// <param name="Kind">Which kernel (one flag).</param>
/// <param name="FirstGroup">The run's first group: its offset into the context lengths, block tables and query starts.</param>
/// <param name="GroupCount">Groups of the run: the launch's sequences.</param>
/// <param name="FirstRow">The chunk row of the run's first query: a decode launch's q and output start there.</param>
/// <param name="MaxQueryLength">Rows of the run's longest group (1 for a decode run): the prefill grid's x extent.</param>
/// <param name="Decode">The split-K plan of a decode run (<see cref="PagedAttentionDecodePlan.MaxPartitions"/> is the split grid's z).</param>
internal readonly record struct AttentionRun(AttentionKernels Kind, int FirstGroup, int GroupCount, int FirstRow, int MaxQueryLength,
                                             PagedAttentionDecodePlan Decode);

/// <summary>
/// How the rows of one chunk of a step attend, decided once on the host and launched the same way by every layer.
/// The chunk's rows are cut into groups, each the consecutive rows of one sequence; a group of several rows is a prompt
/// chunk and goes to <c>paged_attention_prefill</c> (a flash-style kernel: a block takes 16 query rows and loads each key
/// tile once for all of them), a group of one row is a decode and goes to <c>paged_attention_decode</c>, in one pass or
/// split-K as <see cref="PagedAttentionDecodePlan.Choose"/> decides from the run's longest context. Consecutive groups of
/// one kind share a launch (a run): the scheduler puts a step's decodes before its prefill chunks, so a chunk is at
/// most a decode run and a prefill run, two launches per layer (three kernels when the decodes split).
/// </summary>
/// <remarks>
/// A split-K run of more than <c>maxSplitSequences</c> groups is cut into launches of that many, so the partial results
/// (heads × partitions × (head_dim + 2) floats a sequence) fit the buffers <see cref="CudaForward"/> allocates once.
/// Metadata per group, as the kernels read it: its context length (last position + 1), its sequence's block table
/// (rows <see cref="Width"/> blocks apart) and its first row (<see cref="QueryStart"/>, vLLM's <c>cu_seqlens_q</c>).
/// </remarks>
internal sealed class ChunkAttentionPlan
{
    readonly int _headCount, _partitionSize, _maxSplitSequences, _maxBlocksPerSequence;
    readonly long _splitBlocks;
    readonly int[] _contextLens, _blockTables, _queryStart;
    readonly List<AttentionRun> _runs = [];

    /// <param name="maxRows">Rows of the largest chunk (and so the most groups).</param>
    /// <param name="maxBlocksPerSequence">The longest block table a group may need.</param>
    /// <param name="headCount">Query heads: the split-K choice counts heads × sequences blocks.</param>
    /// <param name="partitionSize">Positions per split-K partition.</param>
    /// <param name="maxSplitSequences">Sequences one split-K launch may take at <paramref name="partitionSize"/> (its partial buffers' size).</param>
    /// <param name="splitBlocks">Partial results (sequence × head × partition) the buffers hold: a small batch's split at smaller
    /// partitions that would need more takes <paramref name="partitionSize"/> instead (no limit by default).</param>
    public ChunkAttentionPlan(int maxRows, int maxBlocksPerSequence, int headCount, int partitionSize, int maxSplitSequences, long splitBlocks = long.MaxValue)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxRows, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxBlocksPerSequence, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(headCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(partitionSize, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(maxSplitSequences, 1);
        _headCount = headCount;
        _partitionSize = partitionSize;
        _maxSplitSequences = maxSplitSequences;
        _maxBlocksPerSequence = maxBlocksPerSequence;
        _splitBlocks = splitBlocks;
        _contextLens = new int[maxRows];
        _blockTables = new int[maxRows * maxBlocksPerSequence];
        _queryStart = new int[maxRows + 1];
    }

    /// <summary>Groups of the chunk: runs of consecutive rows of one sequence.</summary>
    public int GroupCount { get; private set; }

    /// <summary>Blocks per block-table row: the most any group of the chunk needs.</summary>
    public int Width { get; private set; }

    /// <summary>The kernels the chunk's runs launch.</summary>
    public AttentionKernels Kernels { get; private set; }

    /// <summary>Each group's context length: its last row's position + 1.</summary>
    public ReadOnlySpan<int> ContextLens => _contextLens.AsSpan(0, GroupCount);

    /// <summary>Each group's block table, [group][<see cref="Width"/>], unused entries 0.</summary>
    public ReadOnlySpan<int> BlockTables => _blockTables.AsSpan(0, GroupCount * Width);

    /// <summary>Each group's first chunk row, and the chunk's row count last: [groups + 1].</summary>
    public ReadOnlySpan<int> QueryStart => _queryStart.AsSpan(0, GroupCount + 1);

    /// <summary>The chunk's launches, in row order.</summary>
    public IReadOnlyList<AttentionRun> Runs => _runs;

    /// <summary>
    /// Plans rows [<paramref name="start"/>, <paramref name="start"/> + <paramref name="count"/>) of
    /// <paramref name="batch"/>, whose rows <see cref="CudaForward.Validate"/> accepted (a sequence's rows in increasing
    /// position order, every block they need in their table). With <paramref name="fixedWidth"/> (a chunk a CUDA graph
    /// captures, which fixes its launches' arguments) the block table rows are the longest sequence's wide whatever the
    /// chunk's contexts, and split-K's partition count is rounded up to a power of two (at most the longest sequence's):
    /// a graph is then recaptured at 2, 4, 8 … partitions as contexts grow, not at every one. The kernels skip the
    /// partitions past a sequence's context, so the extra ones cost an early return.
    /// </summary>
    public void Build(ForwardBatch batch, int start, int count, int blockSize, bool fixedWidth = false)
    {
        if (count < 1 || count > _contextLens.Length) throw new ArgumentOutOfRangeException(nameof(count), $"{count} rows: the plan takes 1 to {_contextLens.Length}");
        var sequenceOf = batch.SequenceOf.Slice(start, count);
        var positions = batch.Positions.Slice(start, count);
        int groups = 0;
        for (int t = 0; t < count; t++)
            if (t == 0 || sequenceOf[t] != sequenceOf[t - 1]) _queryStart[groups++] = t;
        _queryStart[groups] = count;
        GroupCount = groups;

        int width = 1;
        for (int g = 0; g < groups; g++)
        {
            _contextLens[g] = positions[_queryStart[g + 1] - 1] + 1;
            width = Math.Max(width, (_contextLens[g] - 1) / blockSize + 1);
        }
        if (width > _maxBlocksPerSequence)
            throw new ArgumentOutOfRangeException(nameof(batch), $"a context of {width} blocks: the plan takes at most {_maxBlocksPerSequence}");
        Width = fixedWidth ? _maxBlocksPerSequence : width;
        width = Width;
        for (int g = 0; g < groups; g++)
        {
            var table = batch.BlockTable(sequenceOf[_queryStart[g]]);
            int blocks = (_contextLens[g] - 1) / blockSize + 1;
            var row = _blockTables.AsSpan(g * width, width);
            for (int i = 0; i < blocks; i++) row[i] = table[i];
            row[blocks..].Clear();   // never read (beyond the context), but defined
        }

        _runs.Clear();
        Kernels = AttentionKernels.None;
        for (int g = 0; g < groups;)
        {
            bool prefill = Rows(g) > 1;
            int end = g + 1;
            while (end < groups && Rows(end) > 1 == prefill) end++;
            if (prefill)
            {
                int longest = 0;
                for (int i = g; i < end; i++) longest = Math.Max(longest, Rows(i));
                Add(new AttentionRun(AttentionKernels.Prefill, g, end - g, _queryStart[g], longest, default));
            }
            else
            {
                var plan = PagedAttentionDecodePlan.Choose(MaxContext(g, end), end - g, _headCount, 0, _partitionSize);
                // The buffers always hold the full partitions' split: take those when the small batch's would not fit.
                if (plan.SplitK && plan.Partition != _partitionSize && !SmallSplitFits(g, end, plan.Partition, blockSize, fixedWidth))
                    plan = new PagedAttentionDecodePlan(PagedAttentionDecodePlan.Partitions(MaxContext(g, end), _partitionSize) > 1, 1, _partitionSize);
                if (!plan.SplitK) Add(new AttentionRun(AttentionKernels.Decode, g, end - g, _queryStart[g], 1, plan));
                else
                    for (int first = g; first < end; first += _maxSplitSequences)
                    {
                        int last = Math.Min(end, first + _maxSplitSequences);
                        var part = new PagedAttentionDecodePlan(true, LaunchPartitions(first, last, plan.Partition, blockSize, fixedWidth), plan.Partition);
                        Add(new AttentionRun(AttentionKernels.DecodeSplitK, first, last - first, _queryStart[first], 1, part));
                    }
            }
            g = end;
        }
    }

    /// <summary>
    /// Throws <see cref="ArgumentException"/> for consecutive rows of one sequence whose positions do not increase: the
    /// prefill kernel sees a group's keys up to its last row's position, so a row after it would miss some of its own.
    /// </summary>
    public static void CheckPositionOrder(ForwardBatch batch)
    {
        var positions = batch.Positions;
        var sequenceOf = batch.SequenceOf;
        for (int t = 1; t < positions.Length; t++)
            if (sequenceOf[t] == sequenceOf[t - 1] && positions[t] <= positions[t - 1])
                throw new ArgumentException(
                    $"rows {t - 1} and {t} of sequence {sequenceOf[t]} are at positions {positions[t - 1]} and {positions[t]}: a sequence's rows must be in increasing position order",
                    nameof(batch));
    }

    int Rows(int group) => _queryStart[group + 1] - _queryStart[group];

    /// <summary>
    /// The split grid's z extent for groups [first, last): their longest context's partitions, rounded up to a power of two
    /// with <paramref name="fixedWidth"/> (at most the longest possible sequence's).
    /// </summary>
    int LaunchPartitions(int first, int last, int partition, int blockSize, bool fixedWidth)
    {
        int partitions = PagedAttentionDecodePlan.Partitions(MaxContext(first, last), partition);
        return fixedWidth
            ? Math.Min((int)System.Numerics.BitOperations.RoundUpToPowerOf2((uint)partitions),
                       PagedAttentionDecodePlan.Partitions(_maxBlocksPerSequence * blockSize, partition))
            : partitions;
    }

    /// <summary>Whether every launch of a split of groups [first, end) at <paramref name="partition"/> positions fits the partial buffers.</summary>
    bool SmallSplitFits(int first, int end, int partition, int blockSize, bool fixedWidth)
    {
        for (int g = first; g < end; g += _maxSplitSequences)
        {
            int last = Math.Min(end, g + _maxSplitSequences);
            if ((long)(last - g) * _headCount * LaunchPartitions(g, last, partition, blockSize, fixedWidth) > _splitBlocks) return false;
        }
        return true;
    }

    int MaxContext(int firstGroup, int endGroup)
    {
        int max = 1;
        for (int g = firstGroup; g < endGroup; g++) max = Math.Max(max, _contextLens[g]);
        return max;
    }

    void Add(AttentionRun run)
    {
        _runs.Add(run);
        Kernels |= run.Kind;
    }
}
