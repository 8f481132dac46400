using System.Runtime.CompilerServices;

namespace TokenMill.Interop.Driver;

/// <summary>A grid or block shape (CUDA's dim3).</summary>
public readonly record struct Dim3(uint X, uint Y = 1, uint Z = 1);

/// <summary>
/// A kernel's arguments packed the way <c>cuLaunchKernel</c> takes them: each value stored at its
/// natural alignment in one buffer, and <c>kernelParams[i]</c> pointing at argument i. Reusable:
/// <see cref="Clear"/> keeps the buffer, so a launch per step allocates nothing.
/// </summary>
public sealed unsafe class KernelArgs
{
    byte[] _data = new byte[128];
    int[] _offsets = new int[16];

    public int Count { get; private set; }
    public int ByteLength { get; private set; }

    /// <summary>Byte offset of argument <paramref name="index"/> in the packed buffer.</summary>
    public int OffsetOf(int index) => (uint)index < (uint)Count ? _offsets[index] : throw new ArgumentOutOfRangeException(nameof(index));

    public KernelArgs Clear()
    {
        Count = 0;
        ByteLength = 0;
        return this;
    }

    /// <summary>Appends a value: int, float, long, a device pointer (<see cref="CUdeviceptr"/>) …</summary>
    public KernelArgs Add<T>(T value) where T : unmanaged
    {
        int size = sizeof(T);
        int align = Math.Min(size, 8);
        int offset = (ByteLength + align - 1) / align * align;
        if (offset + size > _data.Length) Array.Resize(ref _data, Math.Max(_data.Length * 2, offset + size));
        if (Count == _offsets.Length) Array.Resize(ref _offsets, _offsets.Length * 2);
        Unsafe.WriteUnaligned(ref _data[offset], value);
        _offsets[Count++] = offset;
        ByteLength = offset + size;
        return this;
    }

    public KernelArgs Add(DeviceBuffer buffer) => Add(buffer.Pointer);

    internal void Launch(CUfunction function, Dim3 grid, Dim3 block, uint sharedBytes, CUstream stream)
    {
        void** pointers = stackalloc void*[Math.Max(Count, 1)];
        fixed (byte* data = _data)
        {
            for (int i = 0; i < Count; i++) pointers[i] = data + _offsets[i];
            CudaApi.cuLaunchKernel(function, grid.X, grid.Y, grid.Z, block.X, block.Y, block.Z, sharedBytes, stream, pointers, null);
        }
    }
}

/// <summary>A kernel of a loaded module.</summary>
public sealed class CudaKernel(string name, CUfunction function)
{
    public string Name { get; } = name;
    public CUfunction Function { get; } = function;

    /// <summary>Queues the kernel on <paramref name="stream"/> (default stream when null); errors of the run itself surface at the next synchronize.</summary>
    public void Launch(Dim3 grid, Dim3 block, KernelArgs args, uint sharedBytes = 0, CudaStream? stream = null) =>
        args.Launch(Function, grid, block, sharedBytes, stream?.Stream ?? default);
}
