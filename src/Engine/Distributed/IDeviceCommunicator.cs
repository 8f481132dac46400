using TokenMill.Interop;
using TokenMill.Interop.Driver;

namespace TokenMill.Distributed;

/// <summary>
/// The collectives of <see cref="ICommunicator"/> on device memory: one rank per GPU, buffers as device
/// pointers with an element count (floats), work ordered on a stream. Every rank calls the same operations in
/// the same order with the same counts. Each call returns once this rank's part has completed on the stream,
/// or throws a <see cref="CommunicatorException"/> naming the rank and the operation after
/// <see cref="Timeout"/>; a failed group stays failed, and every later call throws its first error.
/// </summary>
public interface IDeviceCommunicator : IDisposable
{
    int Rank { get; }
    int WorldSize { get; }
    TimeSpan Timeout { get; }

    /// <summary>buffer[0..count) ← Σ over ranks (elementwise), in place.</summary>
    void AllReduceSum(CUdeviceptr buffer, long count, CudaStream stream);

    /// <summary>receive[r·count .. (r+1)·count) ← rank r's send[0..count); receive holds count × <see cref="WorldSize"/> floats.</summary>
    void AllGather(CUdeviceptr send, CUdeviceptr receive, long count, CudaStream stream);

    /// <summary>buffer[0..count) ← rank <paramref name="root"/>'s buffer, in place.</summary>
    void Broadcast(CUdeviceptr buffer, long count, int root, CudaStream stream);

    /// <summary>Returns once every rank has called it (a one-float all-reduce).</summary>
    void Barrier(CudaStream stream);

    /// <summary>Marks the group failed with <paramref name="error"/> and releases the ranks waiting in a collective.</summary>
    void Abort(CommunicatorException error);

    CommunicatorStats Stats { get; }
}

/// <summary>The collectives of <see cref="IDeviceCommunicator"/> on whole <see cref="DeviceBuffer"/>s, with their sizes checked.</summary>
public static class DeviceCommunicatorExtensions
{
    /// <summary>All-reduces the first <paramref name="count"/> floats of <paramref name="buffer"/> (all of it by default).</summary>
    public static void AllReduceSum(this IDeviceCommunicator comm, DeviceBuffer buffer, CudaStream stream, long count = -1)
    {
        ArgumentNullException.ThrowIfNull(comm);
        ArgumentNullException.ThrowIfNull(buffer);
        comm.AllReduceSum(buffer.Pointer, Floats(buffer, count, nameof(buffer)), stream);
    }

    /// <summary>All-gathers <paramref name="count"/> floats of <paramref name="send"/> from every rank into <paramref name="receive"/>.</summary>
    public static void AllGather(this IDeviceCommunicator comm, DeviceBuffer send, DeviceBuffer receive, long count, CudaStream stream)
    {
        ArgumentNullException.ThrowIfNull(comm);
        ArgumentNullException.ThrowIfNull(send);
        ArgumentNullException.ThrowIfNull(receive);
        Floats(send, count, nameof(send));
        Floats(receive, count * comm.WorldSize, nameof(receive));
        comm.AllGather(send.Pointer, receive.Pointer, count, stream);
    }

    /// <summary>Broadcasts the first <paramref name="count"/> floats of <paramref name="buffer"/> (all of it by default) from <paramref name="root"/>.</summary>
    public static void Broadcast(this IDeviceCommunicator comm, DeviceBuffer buffer, int root, CudaStream stream, long count = -1)
    {
        ArgumentNullException.ThrowIfNull(comm);
        ArgumentNullException.ThrowIfNull(buffer);
        comm.Broadcast(buffer.Pointer, Floats(buffer, count, nameof(buffer)), root, stream);
    }

    static long Floats(DeviceBuffer buffer, long count, string name)
    {
        long capacity = buffer.Bytes / sizeof(float);
        if (count < 0) return capacity;
        if (count > capacity) throw new ArgumentOutOfRangeException(name, $"{count} floats do not fit the device buffer of {buffer.Bytes} bytes ({capacity} floats)");
        return count;
    }
}
