using TokenMill.Backends;
using TokenMill.Backends.Cuda;

namespace TokenMill.Tests.Backends;

/// <summary>
/// How CudaForward's attention launches are picked per chunk (<see cref="ChunkAttentionPlan"/>), and the metadata the
/// kernels read, on the host alone: the emulated runs of CudaForwardEmulationTests check that these launches compute the
/// CPU's attention.
/// </summary>
public sealed class ChunkAttentionPlanTests
{
    const int BlockSize = 4;

    /// <summary>A batch of (block table, first position, rows) sequences, their rows in that order.</summary>
    static ForwardBatch Batch(params (int[] Table, int First, int Rows)[] sequences)
    {
        var batch = new ForwardBatch();
        foreach (var (table, first, rows) in sequences)
        {
            int s = batch.AddSequence(table);
            for (int p = first; p < first + rows; p++) batch.AddToken(s, 0, p, table[p / BlockSize] * BlockSize + p % BlockSize, wantLogits: false);
        }
        return batch;
    }

    static ChunkAttentionPlan Plan(ForwardBatch batch, int start, int count, int heads = 8, int partitionSize = PagedAttentionDecodePlan.PartitionSize,
                                   int maxSplitSequences = 64, bool fixedWidth = false)
    {
        var plan = new ChunkAttentionPlan(16, 8, heads, partitionSize, maxSplitSequences);
        plan.Build(batch, start, count, BlockSize, fixedWidth);
        return plan;
    }

    [Fact]
    public void Decode_rows_share_a_decode_launch_and_prompt_chunks_a_prefill_launch()
    {
        // Two decodes (contexts 11 and 4), a prompt of 5 rows, and a chunked prefill continuing at position 6.
        var batch = Batch(([7, 2, 9], 10, 1), ([5], 3, 1), ([1, 3], 0, 5), ([0, 6, 4], 6, 3));
        var plan = Plan(batch, 0, batch.TokenCount);

        Assert.Equal(4, plan.GroupCount);
        Assert.Equal([0, 1, 2, 7, 10], plan.QueryStart.ToArray());
        Assert.Equal([11, 4, 5, 9], plan.ContextLens.ToArray());
        Assert.Equal(3, plan.Width);   // context 11 takes 3 blocks of 4
        Assert.Equal([7, 2, 9, 5, 0, 0, 1, 3, 0, 0, 6, 4], plan.BlockTables.ToArray());
        Assert.Equal(
            [
                new AttentionRun(AttentionKernels.Decode, 0, 2, 0, 1, new PagedAttentionDecodePlan(false, 1)),
                new AttentionRun(AttentionKernels.Prefill, 2, 2, 2, 5, default),
            ],
            plan.Runs);
        Assert.Equal(AttentionKernels.Decode | AttentionKernels.Prefill, plan.Kernels);
    }

    [Fact]
    public void A_decode_after_a_prompt_chunk_gets_its_own_launch_and_splits_when_its_context_is_long()
    {
        // Partitions of 4 positions: the decode at context 10 is three of them, and 8 heads × 1 sequence is a small grid.
        var batch = Batch(([1, 3], 0, 6), ([7, 2, 9], 9, 1));
        var plan = Plan(batch, 0, batch.TokenCount, partitionSize: 4);
        Assert.Equal(
            [
                new AttentionRun(AttentionKernels.Prefill, 0, 1, 0, 6, default),
                new AttentionRun(AttentionKernels.DecodeSplitK, 1, 1, 6, 1, new PagedAttentionDecodePlan(true, 3, 4)),
            ],
            plan.Runs);
        Assert.Equal(AttentionKernels.Prefill | AttentionKernels.DecodeSplitK, plan.Kernels);
    }

    [Fact]
    public void A_split_K_run_is_cut_into_launches_that_fit_the_partial_buffers_each_with_its_own_partitions()
    {
        // Five decodes at contexts 9, 2, 13, 5, 4; partitions of 4; two sequences per split launch.
        var batch = Batch(([0, 1, 2], 8, 1), ([3], 1, 1), ([4, 5, 6, 7], 12, 1), ([8, 9], 4, 1), ([10], 3, 1));
        var plan = Plan(batch, 0, batch.TokenCount, partitionSize: 4, maxSplitSequences: 2);
        Assert.Equal(
            [
                new AttentionRun(AttentionKernels.DecodeSplitK, 0, 2, 0, 1, new PagedAttentionDecodePlan(true, 3, 4)),
                new AttentionRun(AttentionKernels.DecodeSplitK, 2, 2, 2, 1, new PagedAttentionDecodePlan(true, 4, 4)),
                new AttentionRun(AttentionKernels.DecodeSplitK, 4, 1, 4, 1, new PagedAttentionDecodePlan(true, 1, 4)),
            ],
            plan.Runs);
    }

    [Fact]
    public void A_chunk_a_CUDA_graph_captures_has_the_longest_block_table_stride_and_partitions_rounded_up_to_a_power_of_two()
    {
        // The same five decodes: the stride is the plan's 8 blocks whatever the contexts, and 3 partitions become 4
        // (1 stays 1, 4 stays 4), never more than the 8 of a full 32-position context. The tables' unused entries are zero.
        var batch = Batch(([0, 1, 2], 8, 1), ([3], 1, 1), ([4, 5, 6, 7], 12, 1), ([8, 9], 4, 1), ([10], 3, 1));
        var plan = Plan(batch, 0, batch.TokenCount, partitionSize: 4, maxSplitSequences: 2, fixedWidth: true);
        Assert.Equal(8, plan.Width);
        Assert.Equal([0, 1, 2, 0, 0, 0, 0, 0], plan.BlockTables[..8].ToArray());
        Assert.Equal([4, 4, 1], plan.Runs.Select(r => r.Decode.MaxPartitions));
        // Contexts of 20 and 32 positions: 5 partitions round to 8, which a 32-position context has anyway.
        var longer = Batch(([0, 1, 2, 3, 4], 19, 1), ([5, 6, 7, 8, 9, 10, 11, 12], 31, 1));
        Assert.Equal(8, Plan(longer, 0, 2, partitionSize: 4, maxSplitSequences: 1, fixedWidth: true).Runs[0].Decode.MaxPartitions);
        Assert.Equal(5, Plan(longer, 0, 2, partitionSize: 4, maxSplitSequences: 1).Runs[0].Decode.MaxPartitions);
    }

    [Fact]
    public void Decodes_that_fill_the_GPU_by_themselves_stay_one_pass()
    {
        // 9 sequences × 64 heads = 576 blocks > 512, at a context of 5 partitions of 4 (vLLM's rule, scaled down).
        var tables = Enumerable.Range(0, 9).Select(s => new[] { 5 * s, 5 * s + 1, 5 * s + 2, 5 * s + 3, 5 * s + 4 }).ToArray();
        var batch = Batch([.. tables.Select(t => (t, 19, 1))]);
        Assert.Equal(AttentionKernels.Decode, Plan(batch, 0, 9, heads: 64, partitionSize: 4).Kernels);
        Assert.Equal(AttentionKernels.DecodeSplitK, Plan(batch, 0, 8, heads: 64, partitionSize: 4).Kernels);   // 512 blocks: split
    }

    [Fact]
    public void A_chunk_that_starts_inside_a_sequence_plans_its_rows_from_the_chunk_start()
    {
        // Rows 0…6 are a 7-token prompt, row 7 a decode; the chunk [3, 8) holds the prompt's positions 3…6 and the decode.
        var batch = Batch(([1, 3], 0, 7), ([6, 2], 4, 1));
        var plan = Plan(batch, 3, 5);
        Assert.Equal([0, 4, 5], plan.QueryStart.ToArray());
        Assert.Equal([7, 5], plan.ContextLens.ToArray());
        Assert.Equal([1, 3, 6, 2], plan.BlockTables.ToArray());
        Assert.Equal(
            [
                new AttentionRun(AttentionKernels.Prefill, 0, 1, 0, 4, default),
                new AttentionRun(AttentionKernels.Decode, 1, 1, 4, 1, new PagedAttentionDecodePlan(false, 1)),
            ],
            plan.Runs);
        // The same prompt's last row alone in a chunk is a one-row group: a decode launch at context 7.
        var last = Plan(batch, 6, 1);
        Assert.Equal([7], last.ContextLens.ToArray());
        Assert.Equal(AttentionKernels.Decode, last.Kernels);
    }

    [Fact]
    public void Rows_of_one_sequence_that_other_rows_separate_are_two_groups()
    {
        var batch = new ForwardBatch();
        int a = batch.AddSequence([4, 5]), b = batch.AddSequence([9]);
        batch.AddToken(a, 0, 0, 16, false);
        batch.AddToken(a, 0, 1, 17, false);
        batch.AddToken(b, 0, 0, 36, false);
        batch.AddToken(a, 0, 2, 18, false);
        var plan = Plan(batch, 0, 4);
        Assert.Equal([0, 2, 3, 4], plan.QueryStart.ToArray());
        Assert.Equal([2, 1, 3], plan.ContextLens.ToArray());
        Assert.Equal([AttentionKernels.Prefill, AttentionKernels.Decode], plan.Runs.Select(r => r.Kind));
        Assert.Equal(2, plan.Runs[1].GroupCount);   // b's row and a's third: one decode launch
    }

    [Fact]
    public void Rows_of_a_sequence_out_of_position_order_are_refused_by_row()
    {
        var batch = new ForwardBatch();
        int a = batch.AddSequence([4, 5]), b = batch.AddSequence([9]);
        batch.AddToken(a, 0, 0, 16, false);
        batch.AddToken(a, 0, 1, 17, false);
        batch.AddToken(b, 0, 0, 36, false);
        batch.AddToken(a, 0, 2, 18, false);   // a again after b: a group of its own, in order
        ChunkAttentionPlan.CheckPositionOrder(batch);
        batch.AddToken(a, 0, 2, 18, false);
        var e = Assert.Throws<ArgumentException>(() => ChunkAttentionPlan.CheckPositionOrder(batch));
        Assert.StartsWith("rows 3 and 4 of sequence 0 are at positions 2 and 2: a sequence's rows must be in increasing position order", e.Message);
    }

    [Fact]
    public void Bad_sizes_are_errors()
    {
        var batch = Batch(([1, 3, 5], 0, 3));
        Assert.Throws<ArgumentOutOfRangeException>(() => Plan(batch, 0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ChunkAttentionPlan(2, 8, 8, 512, 1).Build(batch, 0, 3, BlockSize));
        // Context 3 at blocks of 1 position needs 3 blocks; the plan was made for 2.
        Assert.Throws<ArgumentOutOfRangeException>(() => new ChunkAttentionPlan(4, 2, 8, 512, 1).Build(batch, 0, 3, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ChunkAttentionPlan(4, 2, 8, 0, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => new ChunkAttentionPlan(4, 2, 8, 512, 0));
    }

    [Fact]
    public void A_small_batch_splits_at_smaller_partitions_when_the_buffers_hold_them()
    {
        // One decode at context 200 over 8 heads: 8 blocks, far from the 512 that fill a GPU. Partitions of 512 halve
        // down to 64 (8 × 4 = 32 blocks still), so it splits into 4 — if the buffers hold 8 heads × 4 partial results.
        var batch = Batch(([.. Enumerable.Range(0, 50)], 199, 1));
        var fits = new ChunkAttentionPlan(16, 64, 8, PagedAttentionDecodePlan.PartitionSize, 64, splitBlocks: 32);
        fits.Build(batch, 0, 1, BlockSize);
        Assert.Equal([new AttentionRun(AttentionKernels.DecodeSplitK, 0, 1, 0, 1, new PagedAttentionDecodePlan(true, 4, 64))], fits.Runs);

        // One partial result short: the full partitions (one of 512 for 200 positions) take it, in one pass.
        var tight = new ChunkAttentionPlan(16, 64, 8, PagedAttentionDecodePlan.PartitionSize, 64, splitBlocks: 31);
        tight.Build(batch, 0, 1, BlockSize);
        Assert.Equal([new AttentionRun(AttentionKernels.Decode, 0, 1, 0, 1, new PagedAttentionDecodePlan(false, 1))], tight.Runs);

        // Under a CUDA graph the 4 partitions stay 4 (a power of two); 200 → 260 positions would be 5, rounded to 8.
        var graph = new ChunkAttentionPlan(16, 128, 8, PagedAttentionDecodePlan.PartitionSize, 64);
        graph.Build(Batch(([.. Enumerable.Range(0, 65)], 259, 1)), 0, 1, BlockSize, fixedWidth: true);
        Assert.Equal(new PagedAttentionDecodePlan(true, 8, 64), graph.Runs[0].Decode);
    }
}
