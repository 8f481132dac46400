namespace TokenMill.Memory;

/// <summary>How much memory the system can still give this process.</summary>
internal static class SystemMemory
{
    /// <summary>
    /// Bytes the system can give without swapping: Linux's <c>MemAvailable</c> (free memory and the page cache it can
    /// drop, the mapped model files' included), elsewhere what the GC reports as available to the process, less what it
    /// already holds.
    /// </summary>
    public static long AvailableBytes()
    {
        if (OperatingSystem.IsLinux() && MemAvailable(ReadMeminfo()) is { } bytes) return bytes;
        var info = GC.GetGCMemoryInfo();
        return Math.Max(0, info.TotalAvailableMemoryBytes - info.MemoryLoadBytes);
    }

    static string? ReadMeminfo()
    {
        try { return File.ReadAllText("/proc/meminfo"); }
        catch (IOException) { return null; }
        catch (UnauthorizedAccessException) { return null; }
    }

    /// <summary>The <c>MemAvailable:</c> line of /proc/meminfo in bytes, or null where it is missing or unreadable.</summary>
    internal static long? MemAvailable(string? meminfo)
    {
        if (meminfo is null) return null;
        foreach (var line in meminfo.Split('\n'))
        {
            if (!line.StartsWith("MemAvailable:", StringComparison.Ordinal)) continue;
            var parts = line["MemAvailable:".Length..].Split(' ', StringSplitOptions.RemoveEmptyEntries);
            if (parts.Length == 2 && parts[1] == "kB" && long.TryParse(parts[0], out long kb)) return kb * 1024;
            return null;
        }
        return null;
    }
}
