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
    readonly Thread[] _threads;
    readonly SemaphoreSlim _start = new(0);
    readonly ManualResetEventSlim _done = new(false);
    readonly object _callLock = new();

    Action<int, int>? _body;
    int _count;
    int _next;
    int _pending;
    Exception? _error;
    volatile bool _stopping;

    /// <param name="threadCount">Threads including the caller; default: one per processor.</param>
    public CpuWorkerPool(int threadCount = 0)
    {
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

    /// <summary>Runs <paramref name="body"/>(index, worker) for index in [0, count); worker is in [0, ThreadCount).</summary>
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
            _next = 0;
            _error = null;
            int helpers = Math.Min(_threads.Length, count - 1);
            _pending = helpers;
            _done.Reset();
            _start.Release(helpers);
            RunItems(0);
            if (helpers > 0) _done.Wait();
            _body = null;
            if (_error is { } e) throw new AggregateException("a CPU kernel failed", e);
        }
    }

    void RunItems(int worker)
    {
        try
        {
            var body = _body!;
            int i;
            while ((i = Interlocked.Increment(ref _next) - 1) < _count) body(i, worker);
        }
        catch (Exception e)
        {
            Interlocked.CompareExchange(ref _error, e, null);
            _next = int.MaxValue / 2; // stop handing out work
        }
    }

    void WorkerLoop(int worker)
    {
        while (true)
        {
            _start.Wait();
            if (_stopping) return;
            RunItems(worker);
            if (Interlocked.Decrement(ref _pending) == 0) _done.Set();
        }
    }

    public void Dispose()
    {
        if (s_shared.IsValueCreated && ReferenceEquals(this, s_shared.Value)) return; // the shared pool lives as long as the process
        _stopping = true;
        if (_threads.Length > 0) _start.Release(_threads.Length);
        foreach (var t in _threads) t.Join();
        _start.Dispose();
        _done.Dispose();
    }
}
