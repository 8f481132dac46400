using System.Text;

namespace TokenMill.Interop.Driver;

/// <summary>
/// One device's CUDA context through the driver API: the owner of modules, device memory and streams
/// made from it. Creating one makes it current on the calling thread; the engine's single loop
/// thread is the one that uses it. Dispose everything made from it before the context.
/// Run on an H100 (driver 580, 2026-11-26) by scripts/gpu-check.sh, and on the emulated driver of tools/cuda-emu in the tests.
/// </summary>
public sealed unsafe class CudaContext : IDisposable
{
    readonly CudaContextHandle _handle;

    CudaContext(CUdevice device, CudaContextHandle handle)
    {
        Device = device;
        _handle = handle;
        var name = new byte[256];
        fixed (byte* p = name) CudaApi.cuDeviceGetName(p, name.Length, device);
        DeviceName = Encoding.UTF8.GetString(name, 0, Math.Max(0, Array.IndexOf(name, (byte)0)));
        ComputeCapability = (Attribute(CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR),
                             Attribute(CUdevice_attribute.CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR));
        nuint total;
        CudaApi.cuDeviceTotalMem_v2(&total, device);
        TotalMemory = (long)total;
    }

    public CUdevice Device { get; }
    public string DeviceName { get; }
    public (int Major, int Minor) ComputeCapability { get; }
    public long TotalMemory { get; }

    /// <summary>The NVRTC architecture for this device, e.g. <c>compute_90</c> for an H100.</summary>
    public string Architecture => $"compute_{ComputeCapability.Major}{ComputeCapability.Minor}";

    /// <summary>Initializes the driver and counts devices. Throws <see cref="NativeLibraryNotFoundException"/> without libcuda.</summary>
    public static int DeviceCount()
    {
        CudaApi.cuInit(0);
        int n;
        CudaApi.cuDeviceGetCount(&n);
        return n;
    }

    /// <summary>Creates a context on device <paramref name="ordinal"/> and makes it current on this thread.</summary>
    public static CudaContext Create(int ordinal = 0)
    {
        CudaApi.cuInit(0);
        CUdevice device;
        CudaApi.cuDeviceGet(&device, ordinal);
        CUcontext ctx;
        CudaApi.cuCtxCreate_v2(&ctx, 0, device);
        return new CudaContext(device, new CudaContextHandle(ctx));
    }

    public int Attribute(CUdevice_attribute attribute)
    {
        int v;
        CudaApi.cuDeviceGetAttribute(&v, attribute, Device);
        return v;
    }

    /// <summary>Makes this context current on the calling thread (needed once per thread that uses it).</summary>
    public void MakeCurrent() => CudaApi.cuCtxSetCurrent(_handle.Context);

    /// <summary>Waits for all work of this context.</summary>
    public void Synchronize()
    {
        EnsureOpen();
        CudaApi.cuCtxSynchronize();
    }

    /// <summary>Calls act on the context current on this thread; this one must not be disposed (call <see cref="MakeCurrent"/> on other threads).</summary>
    void EnsureOpen() => ObjectDisposedException.ThrowIf(_handle.IsClosed, this);

    /// <summary>(free, total) device memory in bytes.</summary>
    public (long Free, long Total) MemoryInfo()
    {
        EnsureOpen();
        nuint free, total;
        CudaApi.cuMemGetInfo_v2(&free, &total);
        return ((long)free, (long)total);
    }

    /// <summary>Loads PTX (as NVRTC produced it; a terminating NUL is added if missing). The driver JIT-compiles it for the device.</summary>
    public CudaModule LoadModule(ReadOnlySpan<byte> ptx)
    {
        EnsureOpen();
        byte[] image = ptx.Length > 0 && ptx[^1] == 0 ? ptx.ToArray() : [.. ptx, 0];
        CUmodule module;
        fixed (byte* p = image) CudaApi.cuModuleLoadData(&module, p);
        return new CudaModule(new CudaModuleHandle(module));
    }

    public DeviceBuffer Allocate(long bytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(bytes, 1);
        EnsureOpen();
        CUdeviceptr p;
        CudaApi.cuMemAlloc_v2(&p, (nuint)bytes);
        return new DeviceBuffer(new DeviceMemoryHandle(p, bytes));
    }

    public CudaStream CreateStream()
    {
        EnsureOpen();
        CUstream s;
        CudaApi.cuStreamCreate(&s, 0);
        return new CudaStream(new CudaStreamHandle(s));
    }

    public void Dispose() => _handle.Dispose();
}

/// <summary>A loaded module; its kernels are looked up by their <c>extern "C"</c> names.</summary>
public sealed unsafe class CudaModule(CudaModuleHandle handle) : IDisposable
{
    public CudaKernel GetKernel(string name)
    {
        CUfunction f;
        byte[] utf8 = [.. Encoding.UTF8.GetBytes(name), 0];
        fixed (byte* p = utf8) CudaApi.cuModuleGetFunction(&f, handle.Module, p);
        return new CudaKernel(name, f);
    }

    public void Dispose() => handle.Dispose();
}

/// <summary>A stream: launches and async copies on it run in order.</summary>
public sealed class CudaStream(CudaStreamHandle handle) : IDisposable
{
    public CUstream Stream => handle.Stream;
    public void Synchronize() => CudaApi.cuStreamSynchronize(handle.Stream);
    public void Dispose() => handle.Dispose();
}

/// <summary>Device memory of a known size with synchronous copies to and from host spans.</summary>
public sealed unsafe class DeviceBuffer(DeviceMemoryHandle handle) : IDisposable
{
    public CUdeviceptr Pointer => handle.Pointer;
    public long Bytes => handle.Bytes;

    public void CopyFrom<T>(ReadOnlySpan<T> source, long byteOffset = 0) where T : unmanaged
    {
        long bytes = (long)source.Length * sizeof(T);
        CheckRange(byteOffset, bytes);
        fixed (T* p = source) CudaApi.cuMemcpyHtoD_v2(new CUdeviceptr(Pointer.Value + (ulong)byteOffset), p, (nuint)bytes);
    }

    public void CopyTo<T>(Span<T> destination, long byteOffset = 0) where T : unmanaged
    {
        long bytes = (long)destination.Length * sizeof(T);
        CheckRange(byteOffset, bytes);
        fixed (T* p = destination) CudaApi.cuMemcpyDtoH_v2(p, new CUdeviceptr(Pointer.Value + (ulong)byteOffset), (nuint)bytes);
    }

    /// <summary>Copies <paramref name="bytes"/> bytes from <paramref name="sourceOffset"/> of this buffer to <paramref name="destinationOffset"/> of <paramref name="destination"/>, on the device.</summary>
    /// <param name="destination">The buffer written (may be this one, for non-overlapping ranges).</param>
    /// <param name="sourceOffset">Byte offset in this buffer.</param>
    /// <param name="destinationOffset">Byte offset in <paramref name="destination"/>.</param>
    /// <param name="bytes">How many bytes.</param>
    public void CopyTo(DeviceBuffer destination, long sourceOffset, long destinationOffset, long bytes)
    {
        CheckRange(sourceOffset, bytes);
        destination.CheckRange(destinationOffset, bytes);
        CudaApi.cuMemcpyDtoD_v2(new CUdeviceptr(destination.Pointer.Value + (ulong)destinationOffset), new CUdeviceptr(Pointer.Value + (ulong)sourceOffset), (nuint)bytes);
    }

    public void Clear() => CudaApi.cuMemsetD8_v2(Pointer, 0, (nuint)Bytes);

    void CheckRange(long offset, long bytes)
    {
        if (offset < 0 || bytes < 0 || offset + bytes > Bytes)
            throw new ArgumentOutOfRangeException(nameof(offset), $"[{offset}, {offset + bytes}) is outside the buffer of {Bytes} bytes");
    }

    public void Dispose() => handle.Dispose();
}
