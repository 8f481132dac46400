using TokenMill.Interop;

namespace TokenMill.Tests.Cli;

[Collection(nameof(EnvironmentCollection))] // sets TOKENMILL_CACHE_DIR for the whole process
public sealed class KernelsCommandTests : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("tm-kernels-cli").FullName;
    readonly string? _savedCache = Environment.GetEnvironmentVariable("TOKENMILL_CACHE_DIR");

    public KernelsCommandTests() => Environment.SetEnvironmentVariable("TOKENMILL_CACHE_DIR", Path.Combine(_dir, "cache"));

    public void Dispose()
    {
        Environment.SetEnvironmentVariable("TOKENMILL_CACHE_DIR", _savedCache);
        Directory.Delete(_dir, recursive: true);
    }

    static (int Code, string Out, string Err) Run(params string[] args) => CliRun.Capture(args);

    static void RequireNvrtc() =>
        Skip.IfNot(NativeLibraryResolver.TryLoad(CudaLibrary.Nvrtc, out string reason), "NVRTC cannot be loaded: " + reason);

    [SkippableFact]
    public void Check_prints_a_row_per_kernel_and_architecture_and_exits_zero()
    {
        RequireNvrtc();
        var (code, stdout, _) = Run("kernels", "check");
        Assert.Equal(0, code);
        int files = TokenMill.Tests.Backends.CudaKernelCompileTests.EntryPoints.Count;
        foreach (string file in TokenMill.Tests.Backends.CudaKernelCompileTests.EntryPoints.Keys)
            foreach (string arch in new[] { "compute_80", "compute_90" })
                Assert.Matches($@"{System.Text.RegularExpressions.Regex.Escape(file)}\s+{arch}\s+\d+\s+\d+\s+OK", stdout);
        Assert.Contains($"all {2 * files} compilations OK", stdout);

        var (again, cached, _) = Run("kernels", "check", "--arch", "80");
        Assert.Equal(0, again);
        Assert.Contains("OK (cached)", cached);
    }

    [SkippableFact]
    public void Check_of_a_folder_with_a_broken_kernel_shows_FAIL_and_the_NVRTC_log_and_exits_nonzero()
    {
        RequireNvrtc();
        string src = Path.Combine(_dir, "src");
        Directory.CreateDirectory(src);
        File.WriteAllText(Path.Combine(src, "good.cu"), "extern \"C\" __global__ void good(float* y) { y[threadIdx.x] = 1.0f; }\n");
        File.WriteAllText(Path.Combine(src, "bad.cu"), "extern \"C\" __global__ void bad(float* y)\n{\n    y[0] = nope;\n}\n");
        var (code, stdout, _) = Run("kernels", "check", "--kernels-dir", src, "--arch", "80", "--no-cache");
        Assert.Equal(1, code);
        Assert.Matches(@"good\.cu\s+compute_80\s+\d+\s+\d+\s+OK", stdout);
        Assert.Matches(@"bad\.cu\s+compute_80\s+-\s+-\s+FAIL", stdout);
        Assert.Contains("bad.cu(3): error: identifier \"nope\" is undefined", stdout);
        Assert.Contains("1 of 2 compilations FAILED", stdout);
    }

    [Fact]
    public void Bad_arguments_are_usage_errors()
    {
        Assert.Equal(2, Run("kernels", "frobnicate").Code);
        Assert.Equal(2, Run("kernels", "check", "--arch", "sm_x").Code);
        Assert.Equal(0, Run("kernels", "--help").Code);
        // Before any model or driver is loaded.
        var (code, _, err) = Run("kernels", "forward", "--emulate", "--partition-size", "0");
        Assert.Equal(2, code);
        Assert.Contains("--partition-size must be between 1 and", err);
    }
}
