using System.Globalization;
using TokenMill.Backends.Cuda;
using TokenMill.Interop;
using TokenMill.Interop.Driver;

namespace TokenMill.Server.Cli;

/// <summary>
/// <c>tokenmill kernels check</c>: compiles every CUDA kernel file with NVRTC for each architecture and
/// prints one row per (file, architecture) — compile time, PTX size, OK/FAIL — then NVRTC's log for each
/// failure. Needs NVRTC only, no GPU. Exit code 1 when any compilation fails or NVRTC cannot be loaded.
/// </summary>
public static class KernelsCommand
{
    internal const string Help = """
        usage: tokenmill kernels check [--kernels-dir DIR] [--arch 80,90] [--no-cache]
               tokenmill kernels selftest [--kernels-dir DIR] [--device N] [--no-cache]

          check     compile every kernel with NVRTC (no GPU needed)
          selftest  run every kernel on GPU N (default 0) against scalar references (needs a GPU)

          --kernels-dir DIR  compile the .cu/.cuh files of DIR instead of the embedded kernels
                             (edit a kernel and rerun without rebuilding)
          --arch LIST        compute capabilities to compile for (default 80,90: compute_80, compute_90)
          --device N         selftest: the GPU to run on (default 0)
          --no-cache         compile even when the PTX cache has the result
                             (cache: $TOKENMILL_CACHE_DIR/kernels or ~/.cache/tokenmill/kernels)

        example: tokenmill kernels check --arch 80,90
        """;

    internal static readonly HashSet<string> ValueOptions = ["kernels-dir", "arch", "device"];
    internal static readonly HashSet<string> Flags = ["no-cache", "help"];

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("kernels", args, ValueOptions, Flags);
        if (a.Flag("help") || a.Positional.Count == 0)
        {
            stdout.WriteLine(Help);
            return a.Flag("help") ? Cli.ExitOk : Cli.ExitUsage;
        }
        if (a.Positional is ["selftest"]) return SelfTest(a, stdout, stderr);
        if (a.Positional is not ["check"]) throw new UsageException($"unknown kernels subcommand '{string.Join(' ', a.Positional)}' (subcommands: check, selftest)");

        var archs = ParseArchs(a.String("arch") ?? "80,90");
        var sources = a.String("kernels-dir") is { } dir ? KernelSources.FromDirectory(dir) : KernelSources.Embedded();
        if (!NativeLibraryResolver.TryLoad(CudaLibrary.Nvrtc, out string reason))
        {
            stderr.WriteLine($"tokenmill kernels: error: {reason}");
            return Cli.ExitFailure;
        }
        var (major, minor) = Nvrtc.Version();
        string? cacheDir = a.Flag("no-cache") ? null : KernelCompiler.DefaultCacheDirectory();
        stdout.WriteLine($"NVRTC {major}.{minor}; options {string.Join(' ', KernelCompiler.BaseOptions)}; cache {cacheDir ?? "off"}");
        var results = Check(new KernelCompiler(cacheDir), sources, archs);
        WriteTable(stdout, results);
        foreach (var r in results.Where(r => r.Error is not null || !string.IsNullOrWhiteSpace(r.Kernel?.Log)))
        {
            stdout.WriteLine();
            stdout.WriteLine($"--- {r.FileName} for {r.Architecture}{(r.Error is null ? " (compiled, with warnings)" : "")}:");
            stdout.WriteLine(r.Error ?? r.Kernel!.Log.TrimEnd());
        }
        int failed = results.Count(r => r.Error is not null);
        stdout.WriteLine(failed == 0 ? $"all {results.Count} compilations OK" : $"{failed} of {results.Count} compilations FAILED");
        return failed == 0 ? Cli.ExitOk : Cli.ExitFailure;
    }

    static int SelfTest(CliArguments a, TextWriter stdout, TextWriter stderr)
    {
        int device = a.Int("device", 0, min: 0);
        var sources = a.String("kernels-dir") is { } dir ? KernelSources.FromDirectory(dir) : KernelSources.Embedded();
        foreach (var lib in new[] { CudaLibrary.Nvrtc, CudaLibrary.Driver })
            if (!NativeLibraryResolver.TryLoad(lib, out string reason))
            {
                stderr.WriteLine($"tokenmill kernels: error: {reason}");
                return Cli.ExitFailure;
            }
        int count = CudaContext.DeviceCount();
        if (device >= count)
        {
            stderr.WriteLine($"tokenmill kernels: error: no CUDA device {device} (the driver reports {count})");
            return Cli.ExitFailure;
        }
        using var ctx = CudaContext.Create(device);
        stdout.WriteLine($"device {device}: {ctx.DeviceName}, compute capability {ctx.ComputeCapability.Major}.{ctx.ComputeCapability.Minor}, {ctx.TotalMemory >> 20} MiB");
        var checks = KernelSelfTest.Run(ctx, new KernelCompiler(a.Flag("no-cache") ? null : KernelCompiler.DefaultCacheDirectory()), sources);
        int kWidth = Math.Max(6, checks.Max(c => c.Kernel.Length)), cWidth = Math.Max(4, checks.Max(c => c.Case.Length));
        stdout.WriteLine($"{"kernel".PadRight(kWidth)}  {"case".PadRight(cWidth)}  {"max error",10}  {"tolerance",9}  result");
        foreach (var c in checks)
            stdout.WriteLine($"{c.Kernel.PadRight(kWidth)}  {c.Case.PadRight(cWidth)}  {c.MaxError,10:G3}  {c.Tolerance,9:G3}  {(c.Passed ? "PASS" : "FAIL")}");
        int failed = checks.Count(c => !c.Passed);
        stdout.WriteLine(failed == 0 ? $"all {checks.Count} checks passed" : $"{failed} of {checks.Count} checks FAILED");
        return failed == 0 ? Cli.ExitOk : Cli.ExitFailure;
    }

    /// <summary>One row of the table: the PTX when it compiled, else the error (with NVRTC's log).</summary>
    public sealed record CheckResult(string FileName, string Architecture, CompiledKernel? Kernel, string? Error);

    public static IReadOnlyList<CheckResult> Check(KernelCompiler compiler, IReadOnlyList<KernelSource> sources, IReadOnlyList<string> archs)
    {
        var results = new List<CheckResult>();
        foreach (var kernel in sources.Where(s => !s.IsHeader))
            foreach (string arch in archs)
            {
                try { results.Add(new CheckResult(kernel.FileName, arch, compiler.Compile(kernel, sources, arch), null)); }
                catch (NvrtcException e) { results.Add(new CheckResult(kernel.FileName, arch, null, e.Message)); }
            }
        return results;
    }

    static void WriteTable(TextWriter w, IReadOnlyList<CheckResult> results)
    {
        int nameWidth = Math.Max("kernel file".Length, results.Count == 0 ? 0 : results.Max(r => r.FileName.Length));
        w.WriteLine($"{"kernel file".PadRight(nameWidth)}  {"arch",-10}  {"compile ms",10}  {"PTX bytes",10}  result");
        foreach (var r in results)
        {
            string ms = r.Kernel is { } k ? k.Elapsed.TotalMilliseconds.ToString("F0", CultureInfo.InvariantCulture) : "-";
            string bytes = r.Kernel is { } k2 ? k2.Ptx.Length.ToString(CultureInfo.InvariantCulture) : "-";
            string result = r.Kernel is null ? "FAIL" : r.Kernel.FromCache ? "OK (cached)" : "OK";
            w.WriteLine($"{r.FileName.PadRight(nameWidth)}  {r.Architecture,-10}  {ms,10}  {bytes,10}  {result}");
        }
    }

    static List<string> ParseArchs(string s)
    {
        var list = new List<string>();
        foreach (string part in s.Split(',', StringSplitOptions.TrimEntries | StringSplitOptions.RemoveEmptyEntries))
        {
            string digits = part.StartsWith("compute_", StringComparison.Ordinal) ? part["compute_".Length..] : part;
            if (!int.TryParse(digits, NumberStyles.None, CultureInfo.InvariantCulture, out int cc) || cc < 50 || cc > 200)
                throw new UsageException($"--arch takes compute capabilities like 80,90 (or compute_80); got '{part}'");
            list.Add($"compute_{cc}");
        }
        if (list.Count == 0) throw new UsageException("--arch needs at least one architecture");
        return list;
    }
}
