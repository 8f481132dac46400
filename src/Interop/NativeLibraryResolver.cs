using System.Reflection;
using System.Runtime.InteropServices;

namespace TokenMill.Interop;

/// <summary>The native libraries the bindings use, by the logical names of the <c>.decl</c> files.</summary>
public enum CudaLibrary
{
    /// <summary>The CUDA driver API (libcuda), installed with the NVIDIA driver.</summary>
    Driver,
    /// <summary>NVRTC, the run-time CUDA C++ compiler.</summary>
    Nvrtc,
    Cublas,
    Nccl,
}

/// <summary>Nothing loaded for a library: the message lists every name and path tried and how to install it.</summary>
public sealed class NativeLibraryNotFoundException : DllNotFoundException
{
    public NativeLibraryNotFoundException(CudaLibrary library, IReadOnlyList<string> tried, string installHint)
        : base(Format(library, tried, installHint))
    {
        Library = library;
        Tried = tried;
    }

    public NativeLibraryNotFoundException() { Tried = []; }
    public NativeLibraryNotFoundException(string message) : base(message) { Tried = []; }
    public NativeLibraryNotFoundException(string message, Exception inner) : base(message, inner) { Tried = []; }

    public CudaLibrary Library { get; }
    public IReadOnlyList<string> Tried { get; }

    static string Format(CudaLibrary library, IReadOnlyList<string> tried, string hint) =>
        $"could not load {NativeLibraryResolver.Describe(library)}; tried: {string.Join(", ", tried)}. {hint}";
}

/// <summary>
/// Maps the logical names of the generated imports ("cuda", "nvrtc", "cublas", "nccl") to the sonames of
/// CUDA 13, 12 and 11 (newest first), after the environment overrides: <c>TOKENMILL_&lt;LIB&gt;_LIBRARY</c>
/// (a full path: <c>TOKENMILL_CUDA_LIBRARY</c>, <c>TOKENMILL_NVRTC_LIBRARY</c>, <c>TOKENMILL_CUBLAS_LIBRARY</c>,
/// <c>TOKENMILL_NCCL_LIBRARY</c>) and <c>TOKENMILL_CUDA_LIB_DIR</c> (a folder tried before the loader's
/// search path). When nothing loads, one <see cref="NativeLibraryNotFoundException"/> says what was tried.
/// </summary>
public static class NativeLibraryResolver
{
    public const string LibDirVariable = "TOKENMILL_CUDA_LIB_DIR";

    static int _registered;
    static readonly Dictionary<CudaLibrary, nint> Loaded = [];
    static readonly Lock Gate = new();

    /// <summary>Installs the resolver for the Interop assembly; the generated classes call this from their static constructors.</summary>
    public static void Register()
    {
        if (Interlocked.Exchange(ref _registered, 1) == 0)
            NativeLibrary.SetDllImportResolver(typeof(NativeLibraryResolver).Assembly, Resolve);
    }

    static nint Resolve(string name, Assembly assembly, DllImportSearchPath? searchPath) =>
        FromLogicalName(name) is { } lib ? Load(lib) : 0;

    internal static CudaLibrary? FromLogicalName(string name) => name switch
    {
        CudaApi.Library => CudaLibrary.Driver,
        NvrtcApi.Library => CudaLibrary.Nvrtc,
        CublasApi.Library => CudaLibrary.Cublas,
        NcclApi.Library => CudaLibrary.Nccl,
        _ => null,
    };

    /// <summary>Loads (once) and returns the library's handle, or throws <see cref="NativeLibraryNotFoundException"/>.</summary>
    public static nint Load(CudaLibrary library)
    {
        lock (Gate)
        {
            if (Loaded.TryGetValue(library, out nint h)) return h;
            var tried = new List<string>();
            foreach (string candidate in Candidates(library, Environment.GetEnvironmentVariable))
            {
                tried.Add(candidate);
                if (NativeLibrary.TryLoad(candidate, out h))
                {
                    Loaded[library] = h;
                    return h;
                }
            }
            throw new NativeLibraryNotFoundException(library, tried, InstallHint(library));
        }
    }

    /// <summary>
    /// Makes <paramref name="library"/> the one at <paramref name="path"/> for the rest of the process (the emulated
    /// driver of <c>kernels test --emulate</c>). Throws when that library is already loaded, so a process that has
    /// loaded the real driver never silently mixes in another.
    /// </summary>
    public static void UseLibrary(CudaLibrary library, string path)
    {
        lock (Gate)
        {
            if (Loaded.ContainsKey(library)) throw new InvalidOperationException($"{Describe(library)} is already loaded in this process; cannot switch it to {path}");
            Loaded[library] = NativeLibrary.Load(path);
        }
    }

    /// <summary>True when the library loads; otherwise <paramref name="reason"/> is the resolver's message (for test skips and diagnostics).</summary>
    public static bool TryLoad(CudaLibrary library, out string reason)
    {
        try
        {
            Load(library);
            reason = "";
            return true;
        }
        catch (NativeLibraryNotFoundException e)
        {
            reason = e.Message;
            return false;
        }
    }

    /// <summary>The names and paths tried, in order, given an environment (a parameter so tests can vary it).</summary>
    public static IReadOnlyList<string> Candidates(CudaLibrary library, Func<string, string?> environment)
    {
        var list = new List<string>();
        if (environment(OverrideVariable(library)) is { Length: > 0 } path) list.Add(path);
        var names = SonamesFor(library);
        if (environment(LibDirVariable) is { Length: > 0 } dir)
            list.AddRange(names.Select(n => Path.Combine(dir, n)));
        list.AddRange(names);
        return list;
    }

    /// <summary>The environment variable holding a full path for one library.</summary>
    public static string OverrideVariable(CudaLibrary library) => library switch
    {
        CudaLibrary.Driver => "TOKENMILL_CUDA_LIBRARY",
        CudaLibrary.Nvrtc => "TOKENMILL_NVRTC_LIBRARY",
        CudaLibrary.Cublas => "TOKENMILL_CUBLAS_LIBRARY",
        _ => "TOKENMILL_NCCL_LIBRARY",
    };

    /// <summary>Sonames newest first. NVRTC's soname carries major.minor only for CUDA 11 (11.2 onwards is ABI-stable).</summary>
    public static IReadOnlyList<string> SonamesFor(CudaLibrary library)
    {
        bool windows = OperatingSystem.IsWindows();
        return library switch
        {
            CudaLibrary.Driver => windows ? ["nvcuda.dll"] : ["libcuda.so.1", "libcuda.so"],
            CudaLibrary.Nvrtc => windows
                ? ["nvrtc64_130_0.dll", "nvrtc64_120_0.dll", "nvrtc64_112_0.dll"]
                : ["libnvrtc.so.13", "libnvrtc.so.12", "libnvrtc.so.11.2", "libnvrtc.so"],
            CudaLibrary.Cublas => windows
                ? ["cublas64_13.dll", "cublas64_12.dll", "cublas64_11.dll"]
                : ["libcublas.so.13", "libcublas.so.12", "libcublas.so.11", "libcublas.so"],
            _ => windows ? ["nccl.dll"] : ["libnccl.so.2", "libnccl.so"],
        };
    }

    public static string Describe(CudaLibrary library) => library switch
    {
        CudaLibrary.Driver => "the CUDA driver library (libcuda)",
        CudaLibrary.Nvrtc => "NVRTC, the CUDA run-time compiler (libnvrtc)",
        CudaLibrary.Cublas => "cuBLAS (libcublas)",
        _ => "NCCL (libnccl)",
    };

    static string Overrides(CudaLibrary library) =>
        $"Or point {OverrideVariable(library)} at the library file, or {LibDirVariable} at its folder.";

    public static string InstallHint(CudaLibrary library) => library switch
    {
        CudaLibrary.Driver =>
            "libcuda.so.1 comes with the NVIDIA driver, not the CUDA toolkit: install the driver for your GPU " +
            "(Debian: 'nvidia-driver' from non-free; elsewhere NVIDIA's installer). A machine without an NVIDIA GPU has none. " + Overrides(library),
        CudaLibrary.Nvrtc =>
            "Debian 12: enable the non-free component (see .ci/install-deps) and 'apt-get install libnvrtc11.2 libnvrtc-builtins11.8'; " +
            "Ubuntu/NVIDIA's repository: 'apt-get install cuda-nvrtc-12-x' (or 'pip install nvidia-cuda-nvrtc-cu12' and set " + LibDirVariable + "). " + Overrides(library),
        CudaLibrary.Cublas =>
            "Debian 12 (non-free): 'apt-get install libcublas11'; NVIDIA's repository: 'apt-get install libcublas-12-x'. " + Overrides(library),
        _ =>
            "NVIDIA's repository: 'apt-get install libnccl2' (Debian 12 non-free: 'libnccl2'). " + Overrides(library),
    };
}
