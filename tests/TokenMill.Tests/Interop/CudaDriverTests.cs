using TokenMill.Interop;
using TokenMill.Interop.Driver;

namespace TokenMill.Tests.Interop;

public class CudaDriverTests
{
    [Fact]
    public void Kernel_arguments_are_packed_at_their_natural_alignment()
    {
        var args = new KernelArgs().Add(new CUdeviceptr(0x1000)).Add(7).Add(2.5f).Add(new CUdeviceptr(0x2000)).Add((byte)1).Add(3L);
        Assert.Equal(6, args.Count);
        Assert.Equal([0, 8, 12, 16, 24, 32], Enumerable.Range(0, args.Count).Select(args.OffsetOf));
        Assert.Equal(40, args.ByteLength);
        args.Clear().Add(1);
        Assert.Equal(1, args.Count);
        Assert.Equal(0, args.OffsetOf(0));
    }

    [Fact]
    public void Many_arguments_grow_the_buffers()
    {
        var args = new KernelArgs();
        for (int i = 0; i < 40; i++) args.Add((long)i);
        Assert.Equal(40, args.Count);
        Assert.Equal(39 * 8, args.OffsetOf(39));
    }

    /// <summary>Runs on a machine with an NVIDIA driver and GPU; here it skips.</summary>
    [SkippableFact]
    public void A_context_allocates_copies_and_frees_device_memory()
    {
        Skip.IfNot(NativeLibraryResolver.TryLoad(CudaLibrary.Driver, out _), "no CUDA driver (libcuda.so.1 not found)");
        Skip.If(CudaContext.DeviceCount() == 0, "the CUDA driver reports no device");
        using var ctx = CudaContext.Create();
        using var buffer = ctx.Allocate(4 * 1024);
        float[] data = [.. Enumerable.Range(0, 1024).Select(i => i * 0.5f)];
        buffer.CopyFrom<float>(data);
        var back = new float[1024];
        buffer.CopyTo<float>(back);
        Assert.Equal(data, back);
    }
}
