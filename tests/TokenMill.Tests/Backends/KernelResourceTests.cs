using TokenMill.Backends.Cuda;

namespace TokenMill.Tests.Backends;

/// <summary>
/// ptxas resource reports and theoretical occupancy: the arithmetic against hand-worked cases (CUDA's
/// occupancy calculator rules), the parser against ptxas's own report format, and
/// 'tokenmill kernels check --ptxas' / 'kernels sass' end to end where ptxas is installed (.ci/install-deps). It sets
/// TOKENMILL_CACHE_DIR for the process, so it runs alone: KernelsCommandTests once saw its own cache vanish mid-test.
/// </summary>
[Collection(nameof(TokenMill.Tests.Cli.EnvironmentCollection))]
public sealed class KernelResourceTests(Xunit.Abstractions.ITestOutputHelper output) : IDisposable
{
    readonly string _dir = Directory.CreateTempSubdirectory("tm-ptxas").FullName;
    readonly string? _savedCache = Environment.GetEnvironmentVariable("TOKENMILL_CACHE_DIR");

    bool _cacheSet;

    void UseOwnCache()
    {
        Environment.SetEnvironmentVariable("TOKENMILL_CACHE_DIR", Path.Combine(_dir, "cache"));
        _cacheSet = true;
    }

    public void Dispose()
    {
        if (_cacheSet) Environment.SetEnvironmentVariable("TOKENMILL_CACHE_DIR", _savedCache);
        Directory.Delete(_dir, recursive: true);
    }

    static SmLimits Sm(string arch) => SmLimits.Find(arch)!;

    [Theory]
    // regs, block, static smem, dynamic smem → blocks per SM, occupancy, limiter
    [InlineData("sm_80", 32, 256, 0, 0, 8, 1.0, "warps")]
    [InlineData("sm_80", 34, 256, 0, 0, 6, 0.75, "registers")]            // 34 × 32 → 1280 regs per warp: 12 warps per sub-partition
    [InlineData("sm_90", 40, 128, 0, 0, 12, 0.75, "registers")]
    [InlineData("sm_80", 48, 128, 4128, 0, 10, 0.625, "registers")]        // paged attention: 1536 regs per warp → 10 warps per sub-partition
    [InlineData("sm_80", 18, 1024, 256, 0, 2, 1.0, "warps")]
    [InlineData("sm_80", 16, 128, 0, 48 * 1024, 3, 0.1875, "shared memory")] // (48 KiB + 1 KiB reserved) per block: 3 fit in 164 KiB
    [InlineData("sm_90", 16, 128, 0, 48 * 1024, 4, 0.25, "shared memory")]   // and 4 in 228 KiB
    [InlineData("sm_80", 16, 32, 0, 0, 32, 0.5, "blocks")]                   // 32 blocks of one warp: the block limit
    [InlineData("sm_80", 255, 256, 0, 0, 1, 0.125, "registers")]
    [InlineData("sm_80", 128, 1024, 0, 0, 0, 0.0, "registers")]              // 128 × 1024 registers > 65536 per block: cannot launch
    [InlineData("sm_80", 16, 128, 0, 200 * 1024, 0, 0.0, "shared memory")]   // more than a block may have
    public void Occupancy_follows_the_SM_limits(string arch, int regs, int block, int smem, int dyn, int blocks, double occupancy, string limiter)
    {
        var r = Occupancy.Compute(Sm(arch), block, regs, smem, dyn);
        Assert.Equal(blocks, r.BlocksPerSm);
        Assert.Equal(occupancy, r.Occupancy, 6);
        Assert.Equal(limiter, r.LimitedBy);
    }

    [Fact]
    public void Ptxas_verbose_report_is_parsed_per_kernel()
    {
        // The layout of CUDA 11.8 ptxas -v output (sm_80 has a cmem part, sm_90 not; smem only when used).
        const string log = """
            ptxas info    : 0 bytes gmem
            ptxas info    : Compiling entry function 'rms_norm' for 'sm_80'
            ptxas info    : Function properties for rms_norm
                0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads
            ptxas info    : Used 14 registers, 128 bytes smem, 380 bytes cmem[0]
            ptxas info    : Compiling entry function 'spilly' for 'sm_90'
            ptxas info    : Function properties for spilly
                272 bytes stack frame, 488 bytes spill stores, 480 bytes spill loads
            ptxas info    : Used 32 registers
            """;
        var r = Ptxas.ParseResources(log);
        Assert.Equal(
        [
            new KernelResources("rms_norm", "sm_80", 14, 0, 0, 0, 128),
            new KernelResources("spilly", "sm_90", 32, 488, 480, 272, 0),
        ], r);
    }

    [Fact]
    public void Every_embedded_kernel_has_a_launch_configuration_and_budget()
    {
        var kernels = KernelSources.Embedded().Where(s => !s.IsHeader).SelectMany(s => s.Kernels().Select(k => (s.FileName, k.Name))).ToList();
        Assert.Equal(CudaKernelCompileTests.EntryPoints.Values.Sum(v => v.Length), kernels.Count);
        foreach (var (file, name) in kernels)
        {
            var launch = KernelLaunches.For(name);
            Assert.Equal(file, launch.FileName);
            Assert.Equal(0, launch.BlockSize % 32);
        }
        Assert.Equal(kernels.Count, KernelLaunches.All.Count);
    }

    // ---- end to end through ptxas ----------------------------------------------------------------------

    string RequirePtxas()
    {
        UseOwnCache();
        Skip.IfNot(TokenMill.Interop.NativeLibraryResolver.TryLoad(TokenMill.Interop.CudaLibrary.Nvrtc, out string reason), "NVRTC cannot be loaded: " + reason);
        string? ptxas = Ptxas.Find("ptxas");
        Skip.If(ptxas is null, $"ptxas not found on PATH or in {Ptxas.InstallDirectory} (.ci/install-deps installs it from Debian's nvidia-cuda-toolkit)");
        return ptxas!;
    }

    static (int Code, string Out, string Err) Run(params string[] args) => TokenMill.Tests.Cli.CliRun.Capture(args);

    [SkippableFact]
    public void Kernels_check_with_ptxas_reports_every_kernel_on_sm_80_and_sm_90_within_budget()
    {
        string ptxas = RequirePtxas();
        var (code, stdout, stderr) = Run("kernels", "check", "--ptxas", ptxas);
        output.WriteLine(stdout);   // the resource table, in the test log
        Assert.True(code == 0, stdout + stderr);
        foreach (var launch in KernelLaunches.All)
            foreach (string sm in new[] { "sm_80", "sm_90" })
                Assert.Matches($@"(?m)^{launch.Kernel}\s+{sm}\s+\d+\s+0/0\s+\d+\s+\d+\s+{launch.BlockSize}\s+\d+\s+[\d.]+ %\s+.*\s+OK$", stdout);
        Assert.Contains($"all {2 * KernelLaunches.All.Count} kernel resource budgets met", stdout);
    }

    string Folder(string name, string text)
    {
        string dir = Path.Combine(_dir, Path.GetRandomFileName());
        Directory.CreateDirectory(dir);
        File.WriteAllText(Path.Combine(dir, name), text);
        return dir;
    }

    // 64 values live at once in each thread: more registers than full occupancy allows.
    const string HungryRmsNorm = """
        extern "C" __global__ void BOUNDS rms_norm(const float* x, const float* w, float* y, int dim, float eps)
        {
            float acc[64];
        #pragma unroll
            for (int j = 0; j < 64; j++) acc[j] = x[threadIdx.x * 64 + j];
            for (int r = 0; r < dim; r++)
            {
        #pragma unroll
                for (int j = 0; j < 64; j++) acc[j] = acc[j] * w[r] + acc[(j + 1) % 64];
            }
            float s = eps;
        #pragma unroll
            for (int j = 0; j < 64; j++) s += acc[j];
            y[threadIdx.x] = s;
        }
        """;

    [SkippableFact]
    public void Kernels_check_fails_a_kernel_below_its_occupancy_budget()
    {
        string ptxas = RequirePtxas();
        var (code, stdout, _) = Run("kernels", "check", "--ptxas", ptxas, "--kernels-dir", Folder("rms_norm.cu", HungryRmsNorm.Replace("BOUNDS", "")));
        Assert.Equal(1, code);
        Assert.Matches(@"(?m)^rms_norm\s+sm_80\s+\d+\s+0/0.*FAIL: occupancy [\d.]+ % below budget 100\.0 % \(limited by registers\)$", stdout);
        Assert.Contains("2 of 2 kernel resource checks FAILED", stdout);
    }

    [SkippableFact]
    public void Kernels_check_fails_a_kernel_that_spills()
    {
        string ptxas = RequirePtxas();
        // __launch_bounds__(256, 8) caps it at 32 registers: the 64 live values go to local memory.
        var (code, stdout, _) = Run("kernels", "check", "--ptxas", ptxas, "--kernels-dir", Folder("rms_norm.cu", HungryRmsNorm.Replace("BOUNDS", "__launch_bounds__(256, 8)")));
        Assert.Equal(1, code);
        Assert.Matches(@"(?m)^rms_norm\s+sm_90\s+32\s+[1-9]\d*/[1-9]\d*.*FAIL: spills \d+ \+ \d+ bytes \(budget 0\)$", stdout);
    }

    [SkippableFact]
    public void Kernels_check_fails_a_kernel_without_a_declared_budget()
    {
        string ptxas = RequirePtxas();
        var (code, stdout, _) = Run("kernels", "check", "--ptxas", ptxas, "--arch", "90",
            "--kernels-dir", Folder("mine.cu", "extern \"C\" __global__ void my_kernel(float* y) { y[threadIdx.x] = 1.0f; }\n"));
        Assert.Equal(1, code);
        Assert.Contains("all 1 compilations OK", stdout);
        Assert.Matches(@"my_kernel\s+sm_90\s+\d+.*FAIL: no launch configuration or budget declared \(KernelLaunches\)", stdout);
    }

    [SkippableFact]
    public void Kernels_sass_prints_the_kernel_disassembly()
    {
        string ptxas = RequirePtxas();
        Skip.If(Ptxas.Find("cuobjdump", near: ptxas) is null, "cuobjdump not found next to ptxas, on PATH or in " + Ptxas.InstallDirectory);
        var (code, stdout, stderr) = Run("kernels", "sass", "rms_norm", "--arch", "sm_90", "--ptxas", ptxas);
        Assert.True(code == 0, stdout + stderr);
        Assert.Matches(@"// rms_norm for sm_90: \d+ registers, 0/0 bytes spill", stdout);
        Assert.Contains("Function : rms_norm", stdout);
        Assert.DoesNotContain("Function : fused_add_rms_norm", stdout);
        Assert.Contains("BAR.SYNC", stdout);   // tm_block_sum's __syncthreads
        Assert.Contains("SHFL.BFLY", stdout);  // its warp shuffles
        Assert.Contains("EXIT", stdout);

        var (missing, _, err) = Run("kernels", "sass", "no_such_kernel", "--ptxas", ptxas);
        Assert.Equal(1, missing);
        Assert.Contains("no kernel named 'no_such_kernel' (kernels: argmax,", err);
        Assert.Equal(2, Run("kernels", "sass", "rms_norm", "--arch", "sm_x").Code);
        Assert.Equal(2, Run("kernels", "check", "--ptxas", ptxas, "--arch", "75").Code);   // no SM limits for sm_75
        Assert.Equal(1, Run("kernels", "check", "--ptxas", Path.Combine(_dir, "nope")).Code);
    }
}
