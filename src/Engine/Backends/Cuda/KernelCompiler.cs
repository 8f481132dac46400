using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using TokenMill.Interop;

namespace TokenMill.Backends.Cuda;

/// <summary>A kernel file compiled for one architecture.</summary>
public sealed record CompiledKernel(string FileName, string Architecture, byte[] Ptx, string Log, TimeSpan Elapsed, bool FromCache);

/// <summary>
/// Compiles the CUDA C kernels to PTX with NVRTC for a virtual architecture (<c>compute_80</c>,
/// <c>compute_90</c> …; the driver JIT-compiles PTX for the device it loads on). Results are cached on disk
/// under <see cref="DefaultCacheDirectory"/>, keyed by SHA-256 of the source, every header it may include,
/// the options, the architecture and the NVRTC version — so an edited kernel or a new NVRTC recompiles.
/// </summary>
public sealed class KernelCompiler
{
    /// <summary>Options every compilation gets: device code by default, C++17 (NVRTC 11.2 and newer accept both).</summary>
    public static readonly IReadOnlyList<string> BaseOptions = ["-default-device", "--std=c++17"];

    readonly string? _cacheDirectory;

    /// <param name="cacheDirectory">Where PTX is cached; null disables the cache.</param>
    public KernelCompiler(string? cacheDirectory) => _cacheDirectory = cacheDirectory;

    /// <summary><c>TOKENMILL_CACHE_DIR</c>/kernels if set, else <c>~/.cache/tokenmill/kernels</c> (XDG_CACHE_HOME honoured).</summary>
    public static string DefaultCacheDirectory()
    {
        if (Environment.GetEnvironmentVariable("TOKENMILL_CACHE_DIR") is { Length: > 0 } dir) return Path.Combine(dir, "kernels");
        string cacheHome = Environment.GetEnvironmentVariable("XDG_CACHE_HOME") is { Length: > 0 } xdg
            ? xdg
            : Path.Combine(Environment.GetFolderPath(Environment.SpecialFolder.UserProfile), ".cache");
        return Path.Combine(cacheHome, "tokenmill", "kernels");
    }

    public static IReadOnlyList<string> OptionsFor(string architecture) => [$"--gpu-architecture={architecture}", .. BaseOptions];

    /// <summary>Compiles <paramref name="kernel"/> (a <c>.cu</c> file) with the headers among <paramref name="sources"/>.</summary>
    public CompiledKernel Compile(KernelSource kernel, IReadOnlyList<KernelSource> sources, string architecture)
    {
        var headers = sources.Where(s => s.IsHeader).Select(s => (s.FileName, s.Text)).ToList();
        var options = OptionsFor(architecture);
        var clock = Stopwatch.StartNew();
        var (major, minor) = Nvrtc.Version();
        string key = CacheKey(kernel, headers, options, architecture, $"{major}.{minor}");
        string? path = _cacheDirectory is null ? null : Path.Combine(_cacheDirectory, $"{Path.GetFileNameWithoutExtension(kernel.FileName)}-{architecture}-{key}.ptx");
        if (path is not null && File.Exists(path))
            return new CompiledKernel(kernel.FileName, architecture, File.ReadAllBytes(path), "", clock.Elapsed, FromCache: true);

        var output = Nvrtc.Compile(kernel.Text, kernel.FileName, headers, options);
        if (path is not null)
        {
            Directory.CreateDirectory(_cacheDirectory!);
            // Write-then-rename so a concurrent reader never sees half a file.
            string tmp = path + "." + Environment.ProcessId + ".tmp";
            File.WriteAllBytes(tmp, output.Ptx);
            File.Move(tmp, path, overwrite: true);
        }
        return new CompiledKernel(kernel.FileName, architecture, output.Ptx, output.Log, clock.Elapsed, FromCache: false);
    }

    /// <summary>Hex SHA-256 of everything that decides the PTX; each part length-prefixed so no two inputs collide by concatenation.</summary>
    public static string CacheKey(KernelSource kernel, IReadOnlyList<(string Name, string Text)> headers, IReadOnlyList<string> options,
                                  string architecture, string nvrtcVersion)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        void Add(string s)
        {
            var bytes = Encoding.UTF8.GetBytes(s);
            hash.AppendData(BitConverter.GetBytes(bytes.Length));
            hash.AppendData(bytes);
        }
        Add(kernel.FileName);
        Add(kernel.Text);
        foreach (var (name, text) in headers.OrderBy(h => h.Name, StringComparer.Ordinal)) { Add(name); Add(text); }
        foreach (var o in options) Add(o);
        Add(architecture);
        Add(nvrtcVersion);
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }
}
