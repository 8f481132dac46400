using System.Runtime.InteropServices;

namespace TokenMill.Tests.Fuzz;

/// <summary>
/// Memory whose last readable byte sits right before an inaccessible page (PROT_NONE), so a parser
/// that reads even one byte past the input faults at once instead of reading a neighbour's memory
/// unnoticed, as Electric Fence and Windows' page heap do for native code.
/// A fault ends the test process, which a campaign reports as a crash. On systems without mmap
/// (Windows) the buffer is plain native memory and only the parser's own checks apply.
/// </summary>
public sealed unsafe partial class GuardedBuffer : IDisposable
{
    const int ProtNone = 0, ProtRead = 1, ProtWrite = 2;
    const int MapPrivate = 0x02, MapAnonymousLinux = 0x20, MapAnonymousMac = 0x1000;

    readonly byte* _region;
    readonly nuint _regionBytes;
    readonly long _capacity;

    public GuardedBuffer(long capacity)
    {
        _capacity = capacity;
        long page = Environment.SystemPageSize;
        long dataPages = (capacity + page - 1) / page;
        _regionBytes = (nuint)((dataPages + 1) * page);
        if (IsGuarded)
        {
            int anonymous = OperatingSystem.IsMacOS() ? MapAnonymousMac : MapAnonymousLinux;
            _region = (byte*)mmap(null, _regionBytes, ProtRead | ProtWrite, MapPrivate | anonymous, -1, 0);
            if (_region == (byte*)-1) throw new InvalidOperationException($"mmap of {_regionBytes} bytes failed (errno {Marshal.GetLastPInvokeError()})");
            if (mprotect(_region + dataPages * page, (nuint)page, ProtNone) != 0)
                throw new InvalidOperationException($"mprotect of the guard page failed (errno {Marshal.GetLastPInvokeError()})");
        }
        else
        {
            _region = (byte*)NativeMemory.Alloc(_regionBytes);
        }
        GuardAt = _region + dataPages * page;
    }

    public static bool IsGuarded => OperatingSystem.IsLinux() || OperatingSystem.IsMacOS();

    /// <summary>The first byte that may not be read (the guard page).</summary>
    public byte* GuardAt { get; }

    /// <summary>Copies <paramref name="data"/> so that its last byte is the last readable one; returns where it starts.</summary>
    public byte* Place(ReadOnlySpan<byte> data)
    {
        if (data.Length > _capacity) throw new ArgumentException($"{data.Length} bytes do not fit in {_capacity}", nameof(data));
        byte* start = GuardAt - data.Length;
        data.CopyTo(new Span<byte>(start, data.Length));
        return start;
    }

    public void Dispose()
    {
        if (IsGuarded) _ = munmap(_region, _regionBytes);
        else NativeMemory.Free(_region);
    }

    [LibraryImport("libc", SetLastError = true)]
    private static partial void* mmap(void* addr, nuint length, int prot, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int mprotect(void* addr, nuint length, int prot);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(void* addr, nuint length);
}
