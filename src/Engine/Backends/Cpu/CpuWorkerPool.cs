namespace TokenMill.Backends.Cpu;

/// <summary>
/// A persistent pool of worker threads for the CPU kernels. <see cref="For"/> runs
/// <c>body(index, worker)</c> for every index in [0, count), the calling thread taking part, with
/// indices handed out dynamically so uneven rows balance. Threads are created once: a forward pass
/// makes hundreds of parallel calls per token, and neither thread start-up nor per-call allocation
/// may be paid each time. Between calls a helper spins for <see cref="SpinBudget"/> before it sleeps, as
/// llama.cpp's threads poll between graph nodes: a decode step's calls come microseconds apart, and a
/// helper woken through the kernel each time joins most calls too late to take a share of them.
/// </summary>
public sealed class CpuWorkerPool : IDisposable
{
    readonly Thread[] _threads;
    // One wake-up event per helper, set only for a helper that said it sleeps (_sleeping[i] == 1).
    readonly ManualResetEventSlim[] _wake;
    readonly int[] _sleeping;
    readonly long _spinTicks;
    // Set by the helper that brings _active to 0; the caller blocks on it (after a short spin) so that on a
    // busy machine it gives its core to the helper it waits for instead of spinning.
    readonly ManualResetEventSlim _idle = new(false);
    readonly object _callLock = new();

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
    /// <param name="spinBudget">How long a helper polls for the next call before it sleeps; default
    /// <see cref="DefaultSpinBudget"/>, zero to sleep at once.</param>
    public CpuWorkerPool(int threadCount = 0, TimeSpan? spinBudget = null)
    {
        ThreadCount = threadCount > 0 ? threadCount : Environment.ProcessorCount;
        SpinBudget = spinBudget ?? DefaultSpinBudget;
        _spinTicks = (long)(SpinBudget.TotalSeconds * System.Diagnostics.Stopwatch.Frequency);
        _threads = new Thread[ThreadCount - 1];
        _wake = new ManualResetEventSlim[_threads.Length];
        _sleeping = new int[_threads.Length];
        for (int i = 0; i < _wake.Length; i++) _wake[i] = new ManualResetEventSlim(false, spinCount: 1);
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

    /// <summary>How long an idle helper polls for the next call before it blocks.</summary>
    public TimeSpan SpinBudget { get; }

    /// <summary>Two milliseconds: longer than the gap between the calls of one decode step (sampling and
    /// scheduling included), short enough that an idle engine stops using its cores at once.</summary>
    public static readonly TimeSpan DefaultSpinBudget = TimeSpan.FromMilliseconds(2);

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
            Interlocked.Exchange(ref _generation, generation);   // a full fence before WakeSleepers reads _sleeping
            WakeSleepers(count - 1);
            RunItems(0, generation);
            // Every index is claimed; close the call before _body and _count can change, so that a helper
            // that read this generation late cannot claim an index of the next call with them.
            Interlocked.Exchange(ref _ticket, ((long)generation << 32) | int.MaxValue);
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

    // Wakes up to `wanted` sleeping helpers. The caller published the new generation with a full fence
    // (the ticket exchange) before it reads _sleeping, and a helper sets _sleeping with a full fence before
    // it re-reads the generation: one of the two always sees the other, so no call is missed.
    void WakeSleepers(int wanted)
    {
        for (int i = 0; i < _sleeping.Length && wanted > 0; i++, wanted--)
            if (Volatile.Read(ref _sleeping[i]) == 1 && Interlocked.Exchange(ref _sleeping[i], 0) == 1)
                _wake[i].Set();
    }

    void WorkerLoop(int worker)
    {
        int slot = worker - 1;
        int seen = 0;
        while (true)
        {
            AwaitCall(slot, seen);
            if (_stopping) return;
            // Join first, then read the generation: a caller that has seen _active == 0 has finished, and a
            // helper that joins after that finds its call closed (or joins the next one, which waits for it).
            Interlocked.Increment(ref _active);
            seen = _generation;
            RunItems(worker, seen);
            if (Interlocked.Decrement(ref _active) == 0) _idle.Set();
        }
    }

    // Polls for a generation other than `seen` for the spin budget, then sleeps until a caller wakes it.
    void AwaitCall(int slot, int seen)
    {
        long deadline = System.Diagnostics.Stopwatch.GetTimestamp() + _spinTicks;
        int polls = 0;
        while (true)
        {
            if (_generation != seen || _stopping) return;
            if (++polls < 64 || System.Diagnostics.Stopwatch.GetTimestamp() < deadline)
            {
                Thread.SpinWait(16);
                if ((polls & 1023) == 0) Thread.Yield();   // let an oversubscribed machine's other threads run
                continue;
            }
            _wake[slot].Reset();
            Interlocked.Exchange(ref _sleeping[slot], 1);
            if (_generation == seen && !_stopping) _wake[slot].Wait();
            Interlocked.Exchange(ref _sleeping[slot], 0);
            deadline = System.Diagnostics.Stopwatch.GetTimestamp() + _spinTicks;
            polls = 0;
        }
    }

    public void Dispose()
    {
        if (s_shared.IsValueCreated && ReferenceEquals(this, s_shared.Value)) return; // the shared pool lives as long as the process
        _stopping = true;
        foreach (var wake in _wake) wake.Set();
        foreach (var t in _threads) t.Join();
        foreach (var wake in _wake) wake.Dispose();
        _idle.Dispose();
    }
}
