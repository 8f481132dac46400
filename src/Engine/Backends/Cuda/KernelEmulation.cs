using System.Diagnostics;
using System.Globalization;
using System.Reflection;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;

namespace TokenMill.Backends.Cuda;

/// <summary>A kernel the CPU shim could not build: its name, its file and the compiler's complaint.</summary>
public sealed record EmulationFailure(string Kernel, string FileName, string Message);

/// <summary>The emulated driver built from one set of kernel sources, and the kernels that did not make it in.</summary>
public sealed record EmulatedDriver(string LibraryPath, IReadOnlyList<EmulationFailure> Failures, TimeSpan Elapsed);

/// <summary>
/// Builds the emulated CUDA driver (tools/cuda-emu: cuda_emu.h + fake_cuda.cpp, embedded in this assembly)
/// with the host C++ compiler, around the given kernel sources, so the CUDA backend's host path (NVRTC, module
/// loading, argument packing, launches, copies) runs for real and only the kernels' execution is emulated.
/// Each <c>.cu</c> file is its own translation unit that registers its kernels: a construct the shim cannot
/// express fails that file's kernels by name (with g++'s error, attributed to the kernel whose lines it is
/// in), and every other kernel still runs. Objects are cached by a hash of everything that goes into them.
/// The same library is also the fake NCCL (fake_nccl.cpp: ranks as threads meeting in memory), so the NCCL
/// communicator runs without GPUs when both <c>TOKENMILL_CUDA_LIBRARY</c> and <c>TOKENMILL_NCCL_LIBRARY</c> point at it,
/// and the fake cuBLAS (fake_cublas.cpp: the GEMMs on the CPU, as BLAS defines them) — <see cref="Use"/> points all three at it.
/// </summary>
public static partial class KernelEmulation
{
    const string ResourcePrefix = "TokenMill.Kernels.emulation.";

    /// <summary>What the emulated driver calls its device (fake_cuda.cpp's cuDeviceGetName): the proof a context really is the shim.</summary>
    public const string DeviceName = "TokenMill CPU emulation (no GPU)";
    /// <summary>C++20 and _Float16 (the shim's f16 conversions): g++ 12 or newer.</summary>
    static readonly string[] CompileFlags = ["-std=c++20", "-O1", "-fPIC", "-pthread", "-Wall", "-Wno-unknown-pragmas", "-Wno-unused-function", "-Wno-unused-variable"];

    /// <summary>The shim's own translation units, after the kernel files': the driver, NCCL and cuBLAS it stands in for.</summary>
    static readonly string[] Libraries = ["fake_cuda", "fake_nccl", "fake_cublas"];

    /// <summary>The embedded shim sources: cuda_emu.h, emu_stream.h, fake_cuda.cpp, fake_nccl.cpp and fake_cublas.cpp.</summary>
    public static IReadOnlyList<KernelSource> Shim()
    {
        var asm = typeof(KernelEmulation).Assembly;
        return [.. asm.GetManifestResourceNames()
            .Where(n => n.StartsWith(ResourcePrefix, StringComparison.Ordinal))
            .Order(StringComparer.Ordinal)
            .Select(n => new KernelSource(n[ResourcePrefix.Length..], Read(asm, n)))];
    }

    /// <summary>
    /// Compiles <paramref name="sources"/> against the shim with <paramref name="compiler"/> (g++) into
    /// <paramref name="cacheDirectory"/> and links the emulated driver. <paramref name="extraFlags"/> go to every
    /// compile and the link (<c>-fsanitize=thread</c>, <c>-DTM_EMU_FREE_RUNNING</c>). Throws
    /// <see cref="InvalidOperationException"/> when the compiler cannot be run or the driver itself does not build.
    /// </summary>
    public static EmulatedDriver Build(IReadOnlyList<KernelSource> sources, string cacheDirectory, string compiler = "g++",
                                       IReadOnlyList<string>? extraFlags = null)
    {
        var clock = Stopwatch.StartNew();
        extraFlags ??= [];
        ExternalTool.Output version;
        try { version = ExternalTool.Run(compiler, ["-dumpfullversion"], TimeSpan.FromSeconds(30)); }
        catch (System.ComponentModel.Win32Exception e)
        {
            throw new InvalidOperationException($"cannot run the host C++ compiler '{compiler}' ({e.Message}): the CPU shim needs g++ 12 or newer (Debian: apt-get install g++)", e);
        }
        if (version.ExitCode != 0) throw new InvalidOperationException($"{compiler} -dumpfullversion failed: {version.Text.Trim()}");
        var shim = Shim();
        string objects = Path.Combine(cacheDirectory, "emulation");
        Directory.CreateDirectory(objects);
        string src = Directory.CreateTempSubdirectory("tokenmill-emu").FullName;
        try
        {
            foreach (var s in sources.Concat(shim)) File.WriteAllText(Path.Combine(src, s.FileName), s.Text);
            string common = string.Join('\0', [version.Text.Trim(), .. CompileFlags, .. extraFlags, .. shim.Select(s => s.Text),
                                               .. sources.Where(s => s.IsHeader).Select(s => s.FileName + "\0" + s.Text)]);

            // One translation unit per kernel file; the driver and the fake NCCL are two more, last.
            var units = sources.Where(s => !s.IsHeader).Select(s => (Source: (KernelSource?)s, Name: Path.GetFileNameWithoutExtension(s.FileName), Text: UnitText(s))).ToList();
            foreach (string shimUnit in Libraries) units.Add((null, shimUnit, $"#include \"{shimUnit}.cpp\"\n"));
            var results = new (string? Object, string Log)[units.Count];
            Parallel.For(0, units.Count, new ParallelOptions { MaxDegreeOfParallelism = Math.Clamp(Environment.ProcessorCount, 1, 4) }, i =>
            {
                var (source, name, text) = units[i];
                string key = Hash(common + "\0" + text + "\0" + (source?.Text ?? ""));
                string obj = Path.Combine(objects, $"{name}-{key[..24]}.o");
                if (File.Exists(obj)) { results[i] = (obj, ""); return; }
                string unit = Path.Combine(src, $"unit_{name}.cpp");
                File.WriteAllText(unit, text);
                string tmp = obj + "." + Environment.ProcessId + ".tmp";
                var output = ExternalTool.Run(compiler, [.. CompileFlags, .. extraFlags, "-c", unit, "-o", tmp], TimeSpan.FromMinutes(5));
                if (output.ExitCode != 0) { results[i] = (null, output.Text); return; }
                File.Move(tmp, obj, overwrite: true);
                results[i] = (obj, output.Text);
            });

            var failures = new List<EmulationFailure>();
            int kernelUnits = units.Count - Libraries.Length;
            for (int i = 0; i < kernelUnits; i++)
                if (results[i].Object is null) failures.AddRange(Attribute(units[i].Source!, results[i].Log));
            for (int i = kernelUnits; i < units.Count; i++)
                if (results[i].Object is null) throw new InvalidOperationException($"the emulated driver ({units[i].Name}.cpp) does not compile:\n{results[i].Log}");

            var linked = results.Where(r => r.Object is not null).Select(r => r.Object!).ToList();
            string library = Path.Combine(objects, $"libcuda-emu-{Hash(string.Join('\0', [.. linked, .. extraFlags]))[..24]}.so");
            if (!File.Exists(library))
            {
                string tmp = library + "." + Environment.ProcessId + ".tmp";
                var link = ExternalTool.Run(compiler, ["-shared", "-pthread", .. extraFlags, "-o", tmp, .. linked], TimeSpan.FromMinutes(2));
                if (link.ExitCode != 0) throw new InvalidOperationException($"linking the emulated driver failed:\n{link.Text}");
                File.Move(tmp, library, overwrite: true);
            }
            return new EmulatedDriver(library, failures, clock.Elapsed);
        }
        finally { Directory.Delete(src, recursive: true); }
    }

    /// <summary>
    /// Makes <paramref name="driver"/> the process's libcuda, libnccl and libcublas (the fake NCCL and cuBLAS are part of
    /// the same library). The resolver never switches a loaded library: once per process.
    /// </summary>
    public static void Use(EmulatedDriver driver)
    {
        foreach (var library in new[] { Interop.CudaLibrary.Driver, Interop.CudaLibrary.Nccl, Interop.CudaLibrary.Cublas })
            Interop.NativeLibraryResolver.UseLibrary(library, driver.LibraryPath);
    }

    /// <summary>The translation unit of one kernel file: the shim, the file, and a registration per kernel.</summary>
    static string UnitText(KernelSource file)
    {
        var sb = new StringBuilder();
        sb.Append("#include \"cuda_emu.h\"\n#include \"").Append(file.FileName).Append("\"\n");
        foreach (var (name, _) in file.Kernels())
            sb.Append(CultureInfo.InvariantCulture, $"static emu::Registration tm_register_{name}(\"{name}\", &{name});\n");
        return sb.ToString();
    }

    /// <summary>
    /// g++'s errors for one kernel file, as failures of the kernels they are in: an error on a line of a kernel's
    /// body (from its declaration to the next kernel's) belongs to that kernel; one anywhere else (a helper, a
    /// header, the shim) to every kernel of the file. A kernel with no error of its own is reported as not built.
    /// </summary>
    public static IReadOnlyList<EmulationFailure> Attribute(KernelSource file, string log)
    {
        var kernels = file.Kernels();
        var errors = ErrorLine().Matches(log).Select(m => (File: Path.GetFileName(m.Groups[1].Value), Line: int.Parse(m.Groups[2].Value, CultureInfo.InvariantCulture), Text: m.Value.Trim())).ToList();
        var byKernel = kernels.ToDictionary(k => k.Name, _ => new List<string>());
        foreach (var e in errors)
        {
            int owner = e.File == file.FileName ? kernels.Count(k => k.Line <= e.Line) - 1 : -1;
            if (owner >= 0) byKernel[kernels[owner].Name].Add(e.Text);
            else foreach (var list in byKernel.Values) list.Add(e.Text);
        }
        string firstError = errors.Count > 0 ? errors[0].Text : log.Trim().Split('\n').FirstOrDefault() ?? "";
        return [.. kernels.Select(k => byKernel[k.Name].Count > 0
            ? new EmulationFailure(k.Name, file.FileName, $"the CPU shim cannot compile it: {byKernel[k.Name][0]}")
            : new EmulationFailure(k.Name, file.FileName, $"not built: another kernel of {file.FileName} does not compile in the CPU shim ({firstError})"))];
    }

    [GeneratedRegex(@"^([^:\n]+):(\d+):\d+: (?:fatal )?error: .*$", RegexOptions.Multiline)]
    private static partial Regex ErrorLine();

    static string Hash(string s) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(s)));

    static string Read(Assembly asm, string resource)
    {
        using var stream = asm.GetManifestResourceStream(resource)!;
        using var reader = new StreamReader(stream);
        return reader.ReadToEnd();
    }
}
