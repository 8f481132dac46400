using System.Diagnostics;

namespace TokenMill.Backends.Cpu;

/// <summary>
/// A persistent pool of worker threads for the CPU kernels. <see cref="For"/> runs
/// <c>body(index, worker)</c> for every index in [0, count), the calling thread taking part, with
/// indices handed out dynamically so uneven rows balance. Threads are created once: a forward pass
/// makes hundreds of parallel calls per token, and neither thread start-up nor per-call allocation
/// may be paid each time.
/// </summary>
public sealed class CpuWorkerPool : IDisposable
{
    /// <summary>
    /// How long a helper that finished a call spins for the next one, and the caller for the last helper, before
    /// blocking: a decode step makes ~110 calls per token a few microseconds apart, and a blocked thread takes
    /// 25–30 µs to wake on this project's KVM guest (measured: a helper joined each decode call 26 µs late and the
    /// caller then waited 32 µs for it, ~4% of the step). Short enough that an idle engine gives its cores back at once.
    /// </summary>
    public const int DefaultSpinMicroseconds = 100;

    /// <summary>The longest spin a pool takes: 100 ms.</summary>
    public const int MaxSpinMicroseconds = 100_000;

    readonly Thread[] _threads;
    // Helpers that found no call after spinning wait here; the caller pulses only when one is waiting.
    readonly object _gate = new();
    int _sleepers;
    // Set by the helper that brings _active to 0; the caller blocks on it (after spinning) so that on a
    // busy machine it gives its core to the helper it waits for instead of spinning.
    readonly ManualResetEventSlim _idle = new(false);
    readonly object _callLock = new();
    readonly long _spinTicks;

    Action<int, int>? _body;
    int _count;
    // The current call's generation (high 32 bits) and next unclaimed index (low 32): a helper claims an
    // index with one compare-exchange that also proves the call is still the one it joined.
    long _ticket;
    volatile int _generation;
    // Helpers between joining a call and leaving it; the caller waits only for these.
    int _active;
    Exception? _error;
    volatile bool _stopping;

    /// <param name="threadCount">Threads including the caller; default: one per processor.</param>
    /// <param name="spinMicroseconds">How long an idle thread spins before it blocks (<see cref="DefaultSpinMicroseconds"/>); 0: block at once.</param>
    public CpuWorkerPool(int threadCount = 0, int spinMicroseconds = DefaultSpinMicroseconds)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(spinMicroseconds);
        ArgumentOutOfRangeException.ThrowIfGreaterThan(spinMicroseconds, MaxSpinMicroseconds);
        _spinTicks = spinMicroseconds * Stopwatch.Frequency / 1_000_000;
        ThreadCount = threadCount > 0 ? threadCount : Environment.ProcessorCount;
        _threads = new Thread[ThreadCount - 1];
        for (int i = 0; i < _threads.Length; i++)
        {
            int worker = i + 1;
            _threads[i] = new Thread(() => WorkerLoop(worker)) { IsBackground = true, Name = $"tokenmill-cpu-{worker}" };
            _threads[i].Start();
        }
    }

    static readonly Lazy<CpuWorkerPool> s_shared = new(() => new CpuWorkerPool());

    /// <summary>One pool per process, sized to the machine.</summary>
    public static CpuWorkerPool Shared => s_shared.Value;

    public int ThreadCount { get; }

    /// <summary>Helpers blocked for want of a call (after their spin ran out).</summary>
    internal int SleepingHelpers => Volatile.Read(ref _sleepers);

    /// <summary>Runs <paramref name="body"/>(index, worker) for index in [0, count); worker is in [0, ThreadCount).</summary>
    /// <remarks>
    /// The caller claims items too and, once every index is claimed, waits only for helpers still running
    /// one: a helper that has not woken up by then (a busy or oversubscribed machine) is not waited for,
    /// and finds nothing left when it does. That keeps the hundreds of calls per token from each paying a
    /// thread wake-up.
    /// </remarks>
    public void For(int count, Action<int, int> body)
    {
        if (count <= 0) return;
        if (count == 1 || _threads.Length == 0)
        {
            for (int i = 0; i < count; i++) body(i, 0);
            return;
        }
        lock (_callLock)
        {
            _body = body;
            _count = count;
            _error = null;
            int generation = _generation + 1;
            Interlocked.Exchange(ref _ticket, (long)generation << 32);
            _generation = generation;
            // No lost wake-up: a helper counts itself a sleeper before it re-reads _generation, and this reads
            // _sleepers only after publishing it (both sides fenced), so one of the two sees the other.
            Interlocked.MemoryBarrier();
            if (Volatile.Read(ref _sleepers) != 0)
                lock (_gate) Monitor.PulseAll(_gate);
            RunItems(0, generation);
            // Every index is claimed; close the call before _body and _count can change, so that a helper
            // that read this generation late cannot claim an index of the next call with them.
            Interlocked.Exchange(ref _ticket, ((long)generation << 32) | int.MaxValue);
            long until = Stopwatch.GetTimestamp() + _spinTicks;
            while (Volatile.Read(ref _active) != 0 && Stopwatch.GetTimestamp() < until) Thread.SpinWait(SpinIterations);
            // No lost wake-up: a helper decrements before it sets, and the event is reset only before a re-check.
            while (Volatile.Read(ref _active) != 0)
            {
                _idle.Wait();
                _idle.Reset();
            }
            if (_error is { } e) throw new AggregateException("a CPU kernel failed", e);
        }
    }

    void RunItems(int worker, int generation)
    {
        try
        {
            while (true)
            {
                long ticket = Volatile.Read(ref _ticket);
                if ((int)(ticket >> 32) != generation || (int)ticket >= _count) return;
                if (Interlocked.CompareExchange(ref _ticket, ticket + 1, ticket) != ticket) continue;
                _body!((int)ticket, worker);
            }
        }
        catch (Exception e)
        {
            Interlocked.CompareExchange(ref _error, e, null);
            Interlocked.Exchange(ref _ticket, ((long)generation << 32) | int.MaxValue); // stop handing out work
        }
    }

    /// <summary>Pause instructions between two looks at a word another thread will write.</summary>
    const int SpinIterations = 16;

    void WorkerLoop(int worker)
    {
        int seen = 0;
        while (true)
        {
            AwaitCall(seen);
            if (_stopping) return;
            // Join first, then read the generation: a caller that has seen _active == 0 has finished, and a
            // helper that joins after that finds its call closed (or joins the next one, which waits for it).
            Interlocked.Increment(ref _active);
            seen = _generation;
            RunItems(worker, seen);
            if (Interlocked.Decrement(ref _active) == 0) _idle.Set();
        }
    }

    /// <summary>Returns once a call after generation <paramref name="seen"/> has started (or the pool stops): spinning for up to the spin time, then blocked.</summary>
    void AwaitCall(int seen)
    {
        long until = Stopwatch.GetTimestamp() + _spinTicks;
        while (_generation == seen && !_stopping)
        {
            if (Stopwatch.GetTimestamp() >= until)
            {
                lock (_gate)
                {
                    Interlocked.Increment(ref _sleepers);
                    while (_generation == seen && !_stopping) Monitor.Wait(_gate);
                    Interlocked.Decrement(ref _sleepers);
                }
                return;
            }
            Thread.SpinWait(SpinIterations);
        }
    }

    public void Dispose()
    {
        if (s_shared.IsValueCreated && ReferenceEquals(this, s_shared.Value)) return; // the shared pool lives as long as the process
        _stopping = true;
        lock (_gate) Monitor.PulseAll(_gate);
        foreach (var t in _threads) t.Join();
        _idle.Dispose();
    }
}
