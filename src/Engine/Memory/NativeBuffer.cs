using System.Runtime.InteropServices;

namespace TokenMill.Memory;

/// <summary>
/// Long-lived, 64-byte aligned native memory (weights of dummy models, dequantized copies, KV
/// blocks) owned by a handle, so the GC never moves or scans it and its release is deterministic.
/// </summary>
public sealed unsafe class NativeBuffer : SafeHandle
{
    /// <summary>One cache line: the alignment SIMD loads and cross-thread writes like best.</summary>
    public const int Alignment = 64;

    public NativeBuffer(long byteCount, bool zero = true) : base(IntPtr.Zero, ownsHandle: true)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(byteCount);
        ByteCount = byteCount;
        void* p = NativeMemory.AlignedAlloc((nuint)Math.Max(byteCount, 1), Alignment);
        if (zero) NativeMemory.Clear(p, (nuint)byteCount);
        SetHandle((IntPtr)p);
    }

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
