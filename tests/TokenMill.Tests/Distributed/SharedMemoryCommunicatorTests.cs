using System.Diagnostics;
using TokenMill.Distributed;

namespace TokenMill.Tests.Distributed;

/// <summary>The shared-memory communicator against plain sequential references, and its failure modes.</summary>
public class SharedMemoryCommunicatorTests
{
    /// <summary>Runs <paramref name="body"/> on one thread per rank and returns each rank's exception (null when it returned).</summary>
    static Exception?[] OnRanks(SharedMemoryGroup group, Action<ICommunicator> body)
    {
        var errors = new Exception?[group.WorldSize];
        var threads = Enumerable.Range(0, group.WorldSize).Select(r => new Thread(() =>
        {
            try { body(group.Communicator(r)); }
            catch (Exception e) { errors[r] = e; }
        })).ToList();
        threads.ForEach(t => t.Start());
        foreach (var t in threads) Assert.True(t.Join(TimeSpan.FromSeconds(20)), "a rank hung");
        return errors;
    }

    static float[] RankData(int rank, int length, int round) =>
        [.. Enumerable.Range(0, length).Select(i => MathF.Sin(rank * 7.1f + i * 0.37f + round) * (1 + rank))];

    [Theory]
    [InlineData(1)]
    [InlineData(2)]
    [InlineData(3)]
    [InlineData(4)]
    public void All_reduce_all_gather_and_broadcast_match_the_sequential_result_on_every_rank(int worldSize)
    {
        using var group = new SharedMemoryGroup(worldSize, 64, TimeSpan.FromSeconds(10));
        var reduced = new float[worldSize][][];
        var gathered = new float[worldSize][][];
        var broadcast = new float[worldSize][][];
        int[] lengths = [0, 1, 2, 3, 5, 17, 64];
        var errors = OnRanks(group, comm =>
        {
            int r = comm.Rank;
            reduced[r] = new float[lengths.Length][];
            gathered[r] = new float[lengths.Length][];
            broadcast[r] = new float[lengths.Length][];
            for (int i = 0; i < lengths.Length; i++)
            {
                var x = RankData(r, lengths[i], i);
                comm.AllReduceSum(x);
                reduced[r][i] = x;
                var g = new float[lengths[i] * worldSize];
                comm.AllGather(RankData(r, lengths[i], i), g);
                gathered[r][i] = g;
                var b = RankData(r, lengths[i], i);
                comm.Broadcast(b, root: i % worldSize);
                broadcast[r][i] = b;
                comm.Barrier();
            }
        });
        Assert.All(errors, Assert.Null);
        for (int i = 0; i < lengths.Length; i++)
        {
            // The reference: rank 0 + rank 1 + … in that order, in float, as the communicator promises.
            var sum = new float[lengths[i]];
            for (int r = 0; r < worldSize; r++)
            {
                var x = RankData(r, lengths[i], i);
                for (int k = 0; k < sum.Length; k++) sum[k] += x[k];
            }
            var all = Enumerable.Range(0, worldSize).SelectMany(r => RankData(r, lengths[i], i)).ToArray();
            for (int r = 0; r < worldSize; r++)
            {
                Assert.Equal(sum, reduced[r][i]); // exact: every rank ends with the same bits
                Assert.Equal(all, gathered[r][i]);
                Assert.Equal(RankData(i % worldSize, lengths[i], i), broadcast[r][i]);
            }
        }
    }

    [Fact]
    public void Thousands_of_back_to_back_all_reduces_neither_hang_nor_mix_up_rounds()
    {
        const int Ranks = 4, Rounds = 1000;
        using var group = new SharedMemoryGroup(Ranks, 8, TimeSpan.FromSeconds(10));
        var wrong = new int[Ranks];
        var errors = OnRanks(group, comm =>
        {
            var x = new float[8];
            for (int round = 0; round < Rounds; round++)
            {
                Array.Fill(x, round + comm.Rank);
                comm.AllReduceSum(x);
                // Σ_r (round + r) = 4·round + 6, exact in float for these magnitudes.
                if (x.Any(v => v != Ranks * round + 6)) wrong[comm.Rank]++;
            }
        });
        Assert.All(errors, Assert.Null);
        Assert.All(wrong, w => Assert.Equal(0, w));
        Assert.Equal(Rounds, group.Communicator(0).Stats.AllReduceCalls);
    }

    [Fact]
    public void A_rank_that_never_arrives_makes_the_others_time_out_naming_it_and_the_operation()
    {
        // 3 s: rank 1 must arrive within it however loaded the machine is, or it would be named too.
        using var group = new SharedMemoryGroup(3, 16, TimeSpan.FromSeconds(3));
        var clock = Stopwatch.StartNew();
        var errors = OnRanks(group, comm =>
        {
            if (comm.Rank == 2) return; // stalled or dead: never calls
            comm.AllReduceSum(new float[4]);
        });
        Assert.InRange(clock.Elapsed, TimeSpan.FromSeconds(2.9), TimeSpan.FromSeconds(20));
        foreach (int r in new[] { 0, 1 })
        {
            var e = Assert.IsType<CommunicatorException>(errors[r]);
            Assert.Equal(2, e.Rank);
            Assert.Equal("all-reduce", e.Operation);
            Assert.Contains("rank 2 never reached it", e.Message);
        }
        // The group stays failed: a later call throws at once instead of waiting again.
        var later = Assert.Throws<CommunicatorException>(() => group.Communicator(0).Barrier());
        Assert.Equal(2, later.Rank);
    }

    [Fact]
    public void A_rank_that_aborts_releases_the_ranks_waiting_for_it_at_once_with_its_error()
    {
        using var group = new SharedMemoryGroup(2, 16, TimeSpan.FromSeconds(30));
        var clock = Stopwatch.StartNew();
        var errors = OnRanks(group, comm =>
        {
            if (comm.Rank == 1)
            {
                Thread.Sleep(100);
                comm.Abort(new CommunicatorException(1, "forward", "rank 1 failed: injected"));
                return;
            }
            comm.AllGather(new float[3], new float[6]);
        });
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(10), "the waiting rank was not released by the abort");
        var e = Assert.IsType<CommunicatorException>(errors[0]);
        Assert.Equal((1, "forward"), (e.Rank, e.Operation));
        Assert.Contains("injected", e.Message);
    }

    [Fact]
    public void Ranks_that_pass_different_lengths_all_get_an_error_naming_the_odd_rank()
    {
        using var group = new SharedMemoryGroup(2, 16, TimeSpan.FromSeconds(10));
        var errors = OnRanks(group, comm => comm.AllReduceSum(new float[comm.Rank == 0 ? 4 : 5]));
        foreach (var error in errors)
        {
            var e = Assert.IsType<CommunicatorException>(error);
            Assert.Equal(1, e.Rank);
            Assert.Contains("rank 1 passed 5 floats, rank 0 passed 4", e.Message);
        }
    }

    [Fact]
    public void The_single_rank_communicator_is_the_identity()
    {
        var c = SingleRankCommunicator.Instance;
        float[] x = [1, 2, 3];
        c.AllReduceSum(x);
        c.Broadcast(x, 0);
        c.Barrier();
        var y = new float[3];
        c.AllGather(x, y);
        Assert.Equal([1f, 2, 3], x);
        Assert.Equal(x, y);
    }
}
