using TokenMill.Backends.Cpu;

namespace TokenMill.Tests.Backends;

public class CpuWorkerPoolTests
{
    [Theory]
    [InlineData(1, 1, CpuWorkerPool.DefaultSpinMicroseconds)]
    [InlineData(3, 1, CpuWorkerPool.DefaultSpinMicroseconds)]
    [InlineData(4, 1000, CpuWorkerPool.DefaultSpinMicroseconds)]
    [InlineData(2, 7, CpuWorkerPool.DefaultSpinMicroseconds)]
    [InlineData(4, 1000, 0)]
    [InlineData(2, 7, 0)]
    public void Every_index_runs_exactly_once(int threads, int count, int spinMicroseconds)
    {
        using var pool = new CpuWorkerPool(threads, spinMicroseconds);
        for (int round = 0; round < 50; round++)
        {
            if (round % 10 == 9) Thread.Sleep(2); // past the spin: the helpers block and this call must wake them
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

    /// <summary>
    /// Helpers spin only briefly for the next call: an idle pool's helpers block, so an idle engine gives its cores back,
    /// and a call after that wakes them (each index still runs once, and the helpers take items).
    /// </summary>
    [Fact]
    public void Idle_helpers_block_and_a_later_call_wakes_them()
    {
        const int threads = 3;
        using var pool = new CpuWorkerPool(threads);
        for (int round = 0; round < 5; round++)
        {
            pool.For(4, (_, _) => { });
            var deadline = DateTime.UtcNow.AddSeconds(10);
            while (pool.SleepingHelpers != threads - 1 && DateTime.UtcNow < deadline) Thread.Sleep(1);
            Assert.Equal(threads - 1, pool.SleepingHelpers);
            var workers = new int[threads];
            var hits = new int[64];
            int callerWaited = 0;
            bool HelpersTookAny() => Enumerable.Range(1, threads - 1).Any(w => Volatile.Read(ref workers[w]) > 0);
            pool.For(hits.Length, (i, worker) =>
            {
                Interlocked.Increment(ref hits[i]);
                Interlocked.Increment(ref workers[worker]);
                // The caller's first item waits (10 s at most) for a woken helper to take one: on a loaded machine the
                // caller alone could otherwise finish every item before a helper is scheduled.
                if (worker == 0 && Interlocked.Exchange(ref callerWaited, 1) == 0)
                    SpinWait.SpinUntil(HelpersTookAny, TimeSpan.FromSeconds(10));
                else
                    Thread.Sleep(1); // long enough items that the woken helpers find some left
            });
            Assert.All(hits, h => Assert.Equal(1, h));
            Assert.True(HelpersTookAny(), "no helper took an item after being woken");
        }
    }

    [Fact]
    public void A_negative_spin_is_refused() =>
        Assert.Throws<ArgumentOutOfRangeException>(() => new CpuWorkerPool(2, -1));
}
