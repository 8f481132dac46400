using TokenMill.Backends.Cpu;

namespace TokenMill.Tests.Backends;

public class CpuWorkerPoolTests
{
    [Theory]
    [InlineData(1, 1)]
    [InlineData(3, 1)]
    [InlineData(4, 1000)]
    [InlineData(2, 7)]
    public void Every_index_runs_exactly_once(int threads, int count)
    {
        using var pool = new CpuWorkerPool(threads);
        for (int round = 0; round < 50; round++)
        {
            var hits = new int[count];
            pool.For(count, (i, worker) =>
            {
                Assert.InRange(worker, 0, threads - 1);
                Interlocked.Increment(ref hits[i]);
            });
            Assert.All(hits, h => Assert.Equal(1, h));
        }
    }

    [Fact]
    public void A_failing_item_surfaces_as_an_exception_and_the_pool_stays_usable()
    {
        using var pool = new CpuWorkerPool(3);
        var e = Assert.Throws<AggregateException>(() => pool.For(100, (i, _) =>
        {
            if (i == 42) throw new InvalidOperationException("boom");
        }));
        Assert.IsType<InvalidOperationException>(e.InnerException);
        int sum = 0;
        pool.For(10, (i, _) => Interlocked.Add(ref sum, i));
        Assert.Equal(45, sum);
    }
}
