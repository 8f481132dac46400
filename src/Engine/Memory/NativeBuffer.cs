using System.Runtime.InteropServices;

namespace TokenMill.Memory;

/// <summary>
/// Long-lived, 64-byte aligned native memory (weights of dummy models, repacked and dequantized copies,
/// KV blocks) owned by a handle, so the GC never moves or scans it and its release is deterministic.
/// </summary>
/// <remarks>
/// On Linux a buffer of 2 MiB or more is aligned to 2 MiB and advised <c>MADV_HUGEPAGE</c> before it is first
/// touched, so that transparent huge pages back it where the system allows them (the common
/// <c>transparent_hugepage=madvise</c> setting gives them only to memory that asks). A decode step streams
/// every weight once; with 4 KiB pages the hardware prefetchers restart at every page and the TLB misses on
/// every one of them. The advice is best effort: where it is refused the memory is ordinary pages.
/// </remarks>
public sealed unsafe partial class NativeBuffer : SafeHandle
{
    /// <summary>One cache line: the alignment SIMD loads and cross-thread writes like best.</summary>
    public const int Alignment = 64;

    /// <summary>A transparent huge page on x86-64 (and the alignment large buffers get).</summary>
    const long HugePageBytes = 2 << 20;

    public NativeBuffer(long byteCount, bool zero = true) : base(IntPtr.Zero, ownsHandle: true)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(byteCount);
        ByteCount = byteCount;
        bool huge = byteCount >= HugePageBytes && OperatingSystem.IsLinux();
        void* p = NativeMemory.AlignedAlloc((nuint)Math.Max(byteCount, 1), huge ? (nuint)HugePageBytes : Alignment);
        if (huge) AdviseHugePages(p, byteCount);
        if (zero) NativeMemory.Clear(p, (nuint)byteCount);
        SetHandle((IntPtr)p);
    }

    const int MadvHugePage = 14;

    /// <summary>
    /// Advises <c>MADV_HUGEPAGE</c> for the whole 2 MiB pages inside [<paramref name="start"/>, +<paramref name="byteCount"/>),
    /// before they are first touched, on Linux. Best effort: a refusal changes nothing we do.
    /// </summary>
    internal static void AdviseHugePages(void* start, long byteCount)
    {
        if (!OperatingSystem.IsLinux()) return;
        long first = ((long)start + HugePageBytes - 1) & ~(HugePageBytes - 1), end = ((long)start + byteCount) & ~(HugePageBytes - 1);
        if (end > first) _ = madvise((void*)first, (nuint)(end - first), MadvHugePage);
    }

    /// <summary>
    /// A pinned, uninitialized array of <paramref name="byteCount"/> bytes for a copy of weights that kernels stream
    /// (the repacked matrices), its whole huge pages advised as <see cref="NativeBuffer"/>'s are. <paramref name="owner"/>
    /// names the caller in the error when the copy is larger than one array holds.
    /// </summary>
    internal static byte[] PinnedStreamingArray(long byteCount, string owner)
    {
        if (byteCount > Array.MaxLength) throw new NotSupportedException($"{owner}: {byteCount} bytes is more than one array holds");
        var data = GC.AllocateUninitializedArray<byte>((int)byteCount, pinned: true);
        fixed (byte* p = data) AdviseHugePages(p, byteCount);
        return data;
    }

    [LibraryImport("libc")]
    internal static partial int madvise(void* address, nuint length, int advice);

    public long ByteCount { get; }

    public byte* Pointer => (byte*)handle;

    public Span<T> AsSpan<T>() where T : unmanaged =>
        new(Pointer, checked((int)(ByteCount / sizeof(T))));

    public override bool IsInvalid => handle == IntPtr.Zero;

    protected override bool ReleaseHandle()
    {
        NativeMemory.AlignedFree((void*)handle);
        return true;
    }
}
