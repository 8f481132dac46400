using System.Reflection;
using System.Text.RegularExpressions;

namespace TokenMill.Backends.Cuda;

/// <summary>One CUDA source file: a kernel file (<c>.cu</c>) or a header (<c>.cuh</c>) it includes.</summary>
public sealed partial record KernelSource(string FileName, string Text)
{
    public bool IsHeader => FileName.EndsWith(".cuh", StringComparison.Ordinal);

    /// <summary>The kernels this file defines (<c>extern "C" __global__ void [__launch_bounds__(…)] NAME(</c>), with the line each starts on (1-based), in file order.</summary>
    public IReadOnlyList<(string Name, int Line)> Kernels() =>
        [.. EntryPoint().Matches(Text).Select(m => (m.Groups[1].Value, 1 + Text.AsSpan(0, m.Index).Count('\n')))];

    [GeneratedRegex(@"extern\s+""C""\s+__global__\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(")]
    private static partial Regex EntryPoint();
}

/// <summary>
/// The CUDA C sources of <c>src/Kernels/cuda</c>: embedded in this assembly at build time, or read
/// from a folder so a kernel can be edited and rechecked without rebuilding (<c>--kernels-dir</c>).
/// </summary>
public static class KernelSources
{
    const string ResourcePrefix = "TokenMill.Kernels.cuda.";

    /// <summary>The embedded <c>.cu</c> and <c>.cuh</c> files, ordered by name.</summary>
    public static IReadOnlyList<KernelSource> Embedded()
    {
        var asm = typeof(KernelSources).Assembly;
        return [.. asm.GetManifestResourceNames()
            .Where(n => n.StartsWith(ResourcePrefix, StringComparison.Ordinal))
            .Order(StringComparer.Ordinal)
            .Select(n => new KernelSource(n[ResourcePrefix.Length..], Read(asm, n)))];
    }

    /// <summary>Every <c>.cu</c> and <c>.cuh</c> file of <paramref name="directory"/>, ordered by name.</summary>
    public static IReadOnlyList<KernelSource> FromDirectory(string directory)
    {
        if (!Directory.Exists(directory)) throw new DirectoryNotFoundException($"kernel folder '{directory}' does not exist");
        var files = Directory.GetFiles(directory)
            .Where(f => f.EndsWith(".cu", StringComparison.Ordinal) || f.EndsWith(".cuh", StringComparison.Ordinal))
            .Order(StringComparer.Ordinal)
            .Select(f => new KernelSource(Path.GetFileName(f), File.ReadAllText(f)))
            .ToList();
        if (!files.Any(f => !f.IsHeader)) throw new FileNotFoundException($"no .cu files in '{directory}'");
        return files;
    }

    static string Read(Assembly asm, string resource)
    {
        using var stream = asm.GetManifestResourceStream(resource)!;
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }
}
