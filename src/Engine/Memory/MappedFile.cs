using System.IO.MemoryMappedFiles;

namespace TokenMill.Memory;

/// <summary>
/// A whole file mapped read-only, with a pointer to its first byte held until <see cref="Dispose"/>:
/// the storage behind every model file reader (GGUF, safetensors), so weights are read in place.
/// </summary>
public sealed unsafe class MappedFile : IDisposable
{
    readonly MemoryMappedFile _map;
    readonly MemoryMappedViewAccessor _view;
    bool _disposed;

    MappedFile(MemoryMappedFile map, MemoryMappedViewAccessor view, byte* pointer, long length)
    {
        _map = map;
        _view = view;
        Pointer = pointer;
        Length = length;
        lock (s_live) s_live.Add(this);
    }

    /// <summary>The mappings not yet disposed, for <see cref="Release"/>.</summary>
    static readonly List<MappedFile> s_live = [];

    const int MadvDontNeed = 4;

    /// <summary>
    /// Hands the whole pages inside [<paramref name="start"/>, +<paramref name="byteCount"/>) back to the kernel
    /// (<c>MADV_DONTNEED</c>, Linux) where the range lies in a live mapping: for weights that a repacked copy replaced,
    /// so the process does not hold them twice. A mapping is read-only and private, so a page read again is faulted
    /// back in from the file, unchanged: nothing is lost, only time. Anywhere else (memory of the process's own, other
    /// systems) it does nothing and returns false.
    /// </summary>
    public static bool Release(byte* start, long byteCount)
    {
        if (!OperatingSystem.IsLinux() || byteCount <= 0) return false;
        long page = Environment.SystemPageSize; // 4 KiB on x86-64; 16 or 64 KiB on some Arm kernels
        long first = ((long)start + page - 1) & ~(page - 1), end = ((long)start + byteCount) & ~(page - 1);
        lock (s_live)
        {
            if (!s_live.Exists(m => (long)start >= (long)m.Pointer && (long)start + byteCount <= (long)m.Pointer + m.Length)) return false;
            return end > first && NativeBuffer.madvise((void*)first, (nuint)(end - first), MadvDontNeed) == 0;
        }
    }

    public byte* Pointer { get; }
    public long Length { get; }

    /// <summary>
    /// The file <paramref name="path"/> names, symlinks followed: a Hugging Face cache snapshot is a symlink to its blob,
    /// and a link's own length is that of its target's name, not of the file.
    /// </summary>
    public static FileInfo Stat(string path)
    {
        var info = new FileInfo(path);
        return info.LinkTarget is not null && info.ResolveLinkTarget(returnFinalTarget: true) is FileInfo target ? target : info;
    }

    /// <summary>Maps <paramref name="path"/>, which must exist and be non-empty (a zero-length file cannot be mapped).</summary>
    public static MappedFile Open(string path, long length)
    {
        var map = MemoryMappedFile.CreateFromFile(path, FileMode.Open, null, 0, MemoryMappedFileAccess.Read);
        MemoryMappedViewAccessor? view = null;
        bool acquired = false;
        try
        {
            view = map.CreateViewAccessor(0, 0, MemoryMappedFileAccess.Read);
            byte* p = null;
            view.SafeMemoryMappedViewHandle.AcquirePointer(ref p);
            acquired = true;
            return new MappedFile(map, view, p + view.PointerOffset, length);
        }
        catch
        {
            if (acquired) view!.SafeMemoryMappedViewHandle.ReleasePointer();
            view?.Dispose();
            map.Dispose();
            throw;
        }
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        lock (s_live) s_live.Remove(this);
        _view.SafeMemoryMappedViewHandle.ReleasePointer();
        _view.Dispose();
        _map.Dispose();
    }
}
