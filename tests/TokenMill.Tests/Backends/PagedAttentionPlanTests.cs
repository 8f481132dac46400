using TokenMill.Backends.Cuda;
using TokenMill.Interop.Driver;

namespace TokenMill.Tests.Backends;

/// <summary>The host's choice between one-pass and split-K decode attention, and the launch shapes it implies.</summary>
public sealed class PagedAttentionPlanTests
{
    [Theory]
    // context, sequences, heads, window → split, partitions
    [InlineData(1, 1, 32, 0, false, 1)]
    [InlineData(64, 1, 32, 0, false, 1)]           // one partition of the smallest size: nothing to split
    [InlineData(512, 1, 32, 0, true, 8)]           // a small grid (32 blocks): partitions halve to 64 positions
    [InlineData(513, 1, 32, 0, true, 9)]
    [InlineData(4000, 2, 32, 0, true, 8)]          // 64 blocks × 8 partitions of 512 = 512: no halving
    [InlineData(4000, 1, 32, 0, true, 16)]         // 32 blocks × 8 = 256: halved to 256 positions
    [InlineData(4000, 16, 32, 0, true, 8)]         // 512 blocks: still fewer than the GPU holds
    [InlineData(4000, 17, 32, 0, false, 1)]        // 544 blocks fill the GPU in one pass
    [InlineData(8192, 64, 32, 0, false, 1)]
    [InlineData(8193, 64, 32, 0, true, 17)]        // long context: always split
    [InlineData(32768, 256, 64, 0, true, 64)]
    [InlineData(32768, 1, 32, 1024, true, 16)]     // a sliding window bounds what is seen: 1024 positions in 64s
    [InlineData(32768, 1, 32, 64, false, 1)]
    [InlineData(100, 1, 8, 4096, true, 2)]         // a window longer than the context changes nothing
    public void Chooses_split_K_for_long_contexts_and_grids_too_small_to_fill_the_GPU(int context, int sequences, int heads, int window, bool split, int partitions)
    {
        var plan = PagedAttentionDecodePlan.Choose(context, sequences, heads, window);
        Assert.Equal(split, plan.SplitK);
        Assert.Equal(partitions, plan.MaxPartitions);
    }

    [Theory]
    // context, sequences, heads, partition size → split, partitions
    [InlineData(16, 1, 8, 16, false, 1)]
    [InlineData(17, 1, 8, 16, true, 2)]
    [InlineData(32, 64, 8, 16, true, 2)]           // 512 blocks
    [InlineData(32, 65, 8, 16, false, 1)]
    [InlineData(8193, 65, 8, 16, true, 513)]       // the long-context threshold is in positions, whatever the partition
    public void A_smaller_partition_size_splits_shorter_contexts_by_the_same_rule(int context, int sequences, int heads, int partitionSize, bool split, int partitions)
    {
        var plan = PagedAttentionDecodePlan.Choose(context, sequences, heads, 0, partitionSize);
        Assert.Equal(split, plan.SplitK);
        Assert.Equal(partitions, plan.MaxPartitions);
    }

    [Theory]
    // context, sequences, heads → partition positions, partitions
    [InlineData(512, 1, 32, 64, 8)]                // 32 × 8 = 256 blocks at the smallest partition
    [InlineData(4096, 1, 32, 256, 16)]             // 32 × 16 = 512: halving stops once the grid is full
    [InlineData(4096, 4, 32, 512, 8)]              // 128 × 8 = 1024 already
    [InlineData(2048, 15, 32, 512, 4)]             // 480 × 4 ≥ 512
    public void A_small_batch_halves_its_partitions_until_the_grid_fills_the_GPU(int context, int sequences, int heads, int positions, int partitions)
    {
        var plan = PagedAttentionDecodePlan.Choose(context, sequences, heads);
        Assert.True(plan.SplitK);
        Assert.Equal(positions, plan.Partition);
        Assert.Equal(partitions, plan.MaxPartitions);
        Assert.True((long)sequences * heads * partitions < PagedAttentionDecodePlan.SmallBatchSplitBlocks / 2 || positions == PagedAttentionDecodePlan.PartitionSize);
    }

    [Fact]
    public void Split_buffers_and_grid_follow_the_partitions()
    {
        var plan = PagedAttentionDecodePlan.Choose(1100, 64, 8);   // 512 blocks: full partitions
        Assert.Equal(new PagedAttentionDecodePlan(true, 3), plan);
        Assert.Equal(3 * 8 * 3, plan.StatisticsLength(3, 8));
        Assert.Equal(3 * 8 * 3 * 128, plan.PartialOutputLength(3, 8, 128));
        Assert.Equal(new Dim3(8, 3, 3), plan.SplitGrid(3, 8));
        Assert.Equal(new Dim3(2, 8, 4), PagedAttentionPrefill.Grid(17, 8, 4));   // 17 rows: a full tile of 16 and one more
        Assert.Equal(new Dim3(1, 8, 4), PagedAttentionPrefill.Grid(16, 8, 4));
    }

    [Fact]
    public void Bad_shapes_are_errors()
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => PagedAttentionDecodePlan.Choose(0, 1, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => PagedAttentionDecodePlan.Choose(10, 0, 1));
        Assert.Throws<ArgumentOutOfRangeException>(() => PagedAttentionDecodePlan.Choose(10, 1, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => PagedAttentionDecodePlan.Choose(10, 1, 1, -1));
        Assert.Throws<ArgumentOutOfRangeException>(() => PagedAttentionDecodePlan.Choose(10, 1, 1, 0, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => PagedAttentionDecodePlan.Partitions(10, 0));
        Assert.Throws<ArgumentOutOfRangeException>(() => PagedAttentionPrefill.Grid(0, 1, 1));
    }
}
