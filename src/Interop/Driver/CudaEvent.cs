namespace TokenMill.Interop.Driver;

/// <summary>
/// A CUDA event of the current context, for timing work on a stream: record one before and one after, then
/// <see cref="ElapsedMilliseconds"/> gives the device time between them (about 0.5 µs resolution).
/// </summary>
public sealed unsafe class CudaEvent : IDisposable
{
    readonly CudaEventHandle _handle;

    /// <summary>Creates an event in the context current on this thread.</summary>
    public CudaEvent()
    {
        CUevent e;
        CudaApi.cuEventCreate(&e, 0);
        _handle = new CudaEventHandle(e);
    }

    /// <summary>Queues the event on <paramref name="stream"/> (the default stream when null).</summary>
    public void Record(CudaStream? stream = null) => CudaApi.cuEventRecord(_handle.Event, stream?.Stream ?? default);

    /// <summary>Waits until the work queued before the event has run.</summary>
    public void Synchronize() => CudaApi.cuEventSynchronize(_handle.Event);

    /// <summary>Milliseconds of device time from <paramref name="start"/> to <paramref name="end"/>, both recorded and completed.</summary>
    public static float ElapsedMilliseconds(CudaEvent start, CudaEvent end)
    {
        float ms;
        CudaApi.cuEventElapsedTime(&ms, start._handle.Event, end._handle.Event);
        return ms;
    }

    public void Dispose() => _handle.Dispose();
}
