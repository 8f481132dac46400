using TokenMill.Interop.Driver;

namespace TokenMill.Backends.Cuda;

/// <summary>
/// How one step's decode attention runs on the GPU (paged_attention.cu): in one pass, one block per (head,
/// sequence) walking the whole context, or split-K, one block per (head, sequence, partition of
/// <see cref="PartitionSize"/> positions) followed by <c>paged_attention_reduce</c>.
/// </summary>
/// <remarks>
/// <para>The rule is vLLM's (<c>paged_attention_v1</c> vs <c>_v2</c> in its attention backend), with its numbers,
/// because the trade-off is the same shape here: the one-pass kernel walks a context serially in each block, so its
/// time grows with the longest context and its parallelism is only heads × sequences blocks; split-K adds a
/// second launch and writes/reads <c>heads × partitions × (head_dim + 2)</c> floats per sequence, small next to
/// the keys and values read, but not free for short contexts.</para>
/// <list type="bullet">
/// <item>A context of at most one partition (512 positions) has nothing to split: one pass.</item>
/// <item>Above <see cref="SplitContextThreshold"/> (8192 positions) always split: a long sequence's block would
/// otherwise run ~16 partitions' worth of work alone while the other SMs wait for it at the end of the step.</item>
/// <item>In between, split only when heads × sequences ≤ <see cref="OnePassMinBlocks"/> (512) — fewer blocks than
/// an A100 (108 SMs) or H100 (132 SMs) can hold at the one-pass kernel's 10 blocks per SM —, so that splitting
/// fills idle SMs; a larger batch keeps every SM busy already and the reduce would only add work.</item>
/// <item>Fewer than 512 blocks (a few sequences) also halve the partition, down to <see cref="MinPartitionSize"/> (64)
/// positions, until the split grid has 512 blocks: on an H100 one sequence of TinyLlama's shape (32 heads) at 512
/// positions took the one-pass kernel 97 µs (32 blocks, each warp walking 128 positions one after another, waiting on
/// memory), the split kernel 83 µs for eight times the context in 256 blocks. This is where vLLM's rule (fixed
/// partitions of 512) leaves a single sequence's decode slow.</item>
/// </list>
/// <para>The 512-block and 8192-position thresholds are vLLM's, not measured on ours; the small-batch halving was
/// (H100, README "Results on an H100": one sequence's TinyLlama decode 160 → 327 tokens/s with the GEMV changes of the
/// same session). The sliding window counts: a Gemma 3 local layer sees at most its window, however long the sequence.</para>
/// </remarks>
/// <param name="SplitK">Whether the step launches the split kernels (<c>paged_attention_decode_split_*</c> and
/// <c>paged_attention_reduce</c>) instead of the one-pass <c>paged_attention_decode_*</c>.</param>
/// <param name="MaxPartitions">Partitions of the longest seen context: the split grid's z extent and the partial
/// buffers' partition stride (1 for one pass).</param>
/// <param name="Partition">Positions per partition: the split and reduce kernels' <c>partition_size</c>.</param>
public readonly record struct PagedAttentionDecodePlan(bool SplitK, int MaxPartitions, int Partition = PagedAttentionDecodePlan.PartitionSize)
{
    /// <summary>Positions per split-K partition (vLLM's <c>PARTITION_SIZE</c>): 128 per warp of the block.</summary>
    public const int PartitionSize = 512;

    /// <summary>Seen context length above which decode is always split.</summary>
    public const int SplitContextThreshold = 8192;

    /// <summary>Blocks (heads × sequences) from which the one-pass grid fills the GPU by itself.</summary>
    public const int OnePassMinBlocks = 512;

    /// <summary>The smallest partition a small batch's split takes (16 positions per warp).</summary>
    public const int MinPartitionSize = 64;

    /// <summary>
    /// Partial results (sequence × head × partition) a small batch's split may need at most: its partitions stop halving
    /// once the grid reaches <see cref="OnePassMinBlocks"/>, so it stays under twice that, and under four times with the
    /// partition count rounded up to a power of two (a CUDA graph's).
    /// </summary>
    public const int SmallBatchSplitBlocks = 4 * OnePassMinBlocks;

    /// <summary>
    /// Chooses the decode kernel for a step whose longest sequence has <paramref name="maxContextLength"/> positions
    /// (its query included), over <paramref name="sequenceCount"/> sequences of <paramref name="headCount"/> query heads;
    /// <paramref name="slidingWindow"/> as the kernels take it (0 for none); partitions of <paramref name="partitionSize"/>
    /// positions, or fewer for a small batch (the tests use small ones, so that short contexts on the emulated driver split).
    /// </summary>
    public static PagedAttentionDecodePlan Choose(int maxContextLength, int sequenceCount, int headCount, int slidingWindow = 0,
                                                  int partitionSize = PartitionSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxContextLength, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(sequenceCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(headCount, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(slidingWindow);
        int seen = slidingWindow > 0 ? Math.Min(maxContextLength, slidingWindow) : maxContextLength;
        long blocks = (long)sequenceCount * headCount;
        int size = partitionSize, smallest = Math.Min(MinPartitionSize, partitionSize);
        if (blocks < OnePassMinBlocks)
            while (size / 2 >= smallest && blocks * Partitions(seen, size) < OnePassMinBlocks) size /= 2;
        int partitions = Partitions(seen, size);
        bool split = partitions > 1 && (seen > SplitContextThreshold || blocks <= OnePassMinBlocks);
        return split ? new PagedAttentionDecodePlan(true, partitions, size) : new PagedAttentionDecodePlan(false, 1, partitionSize);
    }

    /// <summary>Partitions of <paramref name="partitionSize"/> positions that <paramref name="seenPositions"/> positions make (the last one partial).</summary>
    public static int Partitions(int seenPositions, int partitionSize = PartitionSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(partitionSize, 1);
        return (seenPositions + partitionSize - 1) / partitionSize;
    }

    /// <summary>Floats of <c>max_logits</c> and of <c>exp_sums</c> (each) the split kernel writes: [sequences][heads][partitions].</summary>
    public long StatisticsLength(int sequenceCount, int headCount) => (long)sequenceCount * headCount * MaxPartitions;

    /// <summary>Floats of <c>partial_out</c> the split kernel writes: [sequences][heads][partitions][head_dim].</summary>
    public long PartialOutputLength(int sequenceCount, int headCount, int headDim) => StatisticsLength(sequenceCount, headCount) * headDim;

    /// <summary>The split kernel's grid: (heads, sequences, <see cref="MaxPartitions"/>).</summary>
    public Dim3 SplitGrid(int sequenceCount, int headCount) => new((uint)headCount, (uint)sequenceCount, (uint)MaxPartitions);
}

/// <summary>The launch of <c>paged_attention_prefill_*</c> (paged_attention_prefill.cu).</summary>
public static class PagedAttentionPrefill
{
    /// <summary>Query rows one block takes (<c>TM_PF_QUERIES</c>: 4 warps × 4 rows).</summary>
    public const int QueriesPerBlock = 16;

    /// <summary>
    /// The grid for <paramref name="sequenceCount"/> sequences of <paramref name="headCount"/> query heads whose longest
    /// has <paramref name="maxQueryLength"/> query rows: (⌈rows / 16⌉, heads, sequences); the blocks past a shorter
    /// sequence's rows return at once.
    /// </summary>
    public static Dim3 Grid(int maxQueryLength, int headCount, int sequenceCount)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(maxQueryLength, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(headCount, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(sequenceCount, 1);
        return new((uint)((maxQueryLength + QueriesPerBlock - 1) / QueriesPerBlock), (uint)headCount, (uint)sequenceCount);
    }
}
