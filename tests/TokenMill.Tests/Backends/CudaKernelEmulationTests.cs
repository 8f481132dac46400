using TokenMill.Backends.Cuda;

namespace TokenMill.Tests.Backends;

/// <summary>One object cache for the class: the broken copies below rebuild only their own file's unit.</summary>
public sealed class EmulationCache : IDisposable
{
    public string Directory { get; } = System.IO.Directory.CreateTempSubdirectory("tm-emu-cache").FullName;
    public void Dispose() => System.IO.Directory.Delete(Directory, recursive: true);
}

/// <summary>
/// 'tokenmill kernels test --emulate': the CUDA backend's kernel self test (NVRTC PTX, module loading, argument
/// packing, launches, copies — all real) with only the kernels' execution on the CPU, through the shim of
/// tools/cuda-emu built by g++ from the kernel sources. It checks the kernels' indexing, barriers, shuffles and
/// formulas where no GPU exists; it says nothing about the hardware. Deliberately broken copies of kernels, given
/// with --kernels-dir as a kernel tuner would, must each be caught. Runs as a child process: the emulated driver
/// must never be loaded into the test host, where the GPU tests would take it for a GPU.
/// </summary>
public sealed class CudaKernelEmulationTests(EmulationCache cache, Xunit.Abstractions.ITestOutputHelper log) : IClassFixture<EmulationCache>
{
    static bool HasGxx()
    {
        try { return ExternalTool.Run("g++", ["--version"], TimeSpan.FromSeconds(30)).ExitCode == 0; }
        catch (System.ComponentModel.Win32Exception) { return false; }
    }

    static void Require()
    {
        Skip.IfNot(OperatingSystem.IsLinux() && HasGxx(), "g++ not found (the CPU shim of the CUDA kernels, tools/cuda-emu, needs g++ 12+)");
        Skip.IfNot(TokenMill.Interop.NativeLibraryResolver.TryLoad(TokenMill.Interop.CudaLibrary.Nvrtc, out string reason), "NVRTC cannot be loaded: " + reason);
    }

    (int Code, string Output) Tokenmill(params string[] args) => Tokenmill(new Dictionary<string, string>(), args);

    (int Code, string Output) Tokenmill(Dictionary<string, string> environment, params string[] args)
    {
        environment["TOKENMILL_CACHE_DIR"] = cache.Directory;
        var run = ExternalTool.Run("dotnet", [Path.Combine(AppContext.BaseDirectory, "tokenmill.dll"), .. args], TimeSpan.FromMinutes(5), environment);
        Assert.True(run.ExitCode != -1, run.Text);
        return (run.ExitCode, run.Text);
    }

    /// <summary>A copy of the embedded kernels in a fresh folder, with <paramref name="file"/>'s <paramref name="from"/> replaced by <paramref name="to"/>.</summary>
    static string BrokenCopy(string file, string from, string to)
    {
        string dir = Directory.CreateTempSubdirectory("tm-emu-broken").FullName;
        foreach (var s in KernelSources.Embedded())
        {
            string text = s.Text;
            if (s.FileName == file)
            {
                Assert.Contains(from, text);   // the kernel changed: update the breakage, do not let the test pass vacuously
                text = text.Replace(from, to, StringComparison.Ordinal);
            }
            File.WriteAllText(Path.Combine(dir, s.FileName), text);
        }
        return dir;
    }

    [SkippableFact]
    public void Every_kernel_passes_on_the_CPU_shim()
    {
        Require();
        var (code, output) = Tokenmill("kernels", "test", "--emulate");
        log.WriteLine(output);   // the pass table, in the test log
        Assert.True(code == 0, output);
        Assert.Contains($"device 0: {TokenMill.Server.Cli.KernelsCommand.EmulatedDeviceName}, compute capability 9.0", output);
        Assert.DoesNotContain("FAIL", output);
        foreach (var launch in KernelLaunches.All) Assert.Matches($@"(?m)^{launch.Kernel}\s.*PASS$", output);
        Assert.Matches(@"all \d+ checks passed", output);
    }

    [SkippableFact]
    public void Bench_times_every_kernel_with_a_shape_and_writes_json()
    {
        Require();
        string json = Path.Combine(cache.Directory, "bench.json");
        var (code, output) = Tokenmill("kernels", "bench", "--emulate", "--samples", "2", "--output-json", json);
        log.WriteLine(output);
        Assert.True(code == 0, output);
        Assert.Contains("emulated: the times below are the CPU shim's, not a GPU's", output);
        var doc = System.Text.Json.JsonDocument.Parse(File.ReadAllText(json)).RootElement;
        Assert.True(doc.GetProperty("emulated").GetBoolean());
        var rows = doc.GetProperty("rows").EnumerateArray().ToList();
        // Every kernel of the sources has at least one timed row: a new kernel without a shape fails here.
        foreach (var launch in KernelLaunches.All)
            Assert.Contains(rows, r => r.GetProperty("kernel").GetString() == launch.Kernel && r.GetProperty("error").ValueKind == System.Text.Json.JsonValueKind.Null);
        // And the backend's cuBLAS products, one row per weight type (on the emulated driver's fake cuBLAS).
        foreach (string type in new[] { "F32", "F16", "BF16", "Q8_0", "Q4_0" })
            Assert.Contains(rows, r => r.GetProperty("kernel").GetString() == CudaGemm.Name && r.GetProperty("shape").GetString()!.StartsWith(type + " ", StringComparison.Ordinal)
                                       && r.GetProperty("error").ValueKind == System.Text.Json.JsonValueKind.Null);
        foreach (var r in rows)
        {
            // The shim's events time the launches on the host clock: a timing of 0 would mean nothing was measured.
            Assert.True(r.GetProperty("median_us").GetDouble() > 0, r.ToString());
            Assert.True(r.GetProperty("bytes").GetDouble() > 0, r.ToString());
        }
        var gemv = rows.First(r => r.GetProperty("kernel").GetString() == "gemv_q4_0" && r.GetProperty("shape").GetString() == "128 × 256, 1 vector");
        // 128 rows × 8 blocks × 18 bytes of weights, 256 floats in, 128 out.
        Assert.Equal(128 * 8 * 18 + 4.0 * (256 + 128), gemv.GetProperty("bytes").GetDouble());
        Assert.Equal(2.0 * 128 * 256, gemv.GetProperty("flops").GetDouble());
    }

    [SkippableFact]
    public void Bench_rejects_an_unknown_sweep()
    {
        var (code, output) = Tokenmill("kernels", "bench", "--emulate", "--sweep", "huge");
        Assert.Equal(2, code);
        Assert.Contains("--sweep huge: expected full or small", output);
    }

    [SkippableFact]
    public void An_off_by_one_index_is_caught()
    {
        Require();
        // gemv_q8_0 takes the second of a lane's four quants for the first as well.
        string dir = BrokenCopy("gemv.cu", "d * tm_i8_at(q, 0), d * tm_i8_at(q, 1)", "d * tm_i8_at(q, 1), d * tm_i8_at(q, 1)");
        var (code, output) = Tokenmill("kernels", "test", "--emulate", "--kernels-dir", dir, "--kernel", "gemv_q8_0,gemv_q4_0");
        Assert.Equal(1, code);
        Assert.Matches(@"(?m)^gemv_q8_0\s.*FAIL$", output);
        Assert.Matches(@"(?m)^gemv_q4_0\s.*PASS$", output);
    }

    [SkippableFact]
    public void A_causal_mask_that_shows_a_query_the_next_position_is_caught()
    {
        Require();
        // Every prefill row also attends to the position after its own (when that key is in the block's tiles).
        string dir = BrokenCopy("paged_attention_prefill.cu", "j >= first[r] && j <= pos[r] ?", "j >= first[r] && j <= pos[r] + 1 ?");
        var (code, output) = Tokenmill("kernels", "test", "--emulate", "--kernels-dir", dir, "--kernel", "paged_attention_prefill_f32");
        Assert.Equal(1, code);
        Assert.Matches(@"(?m)^paged_attention_prefill_f32\s.*FAIL$", output);
        Assert.DoesNotMatch(@"(?m)^paged_attention_prefill_f32\s.*PASS$", output);
    }

    [SkippableFact]
    public void A_missing_syncthreads_is_caught()
    {
        Require();
        // Warp 0 reads the other warps' partial results before they are written (the shim runs one warp at a time).
        string dir = BrokenCopy("argmax.cu", "    }\n    __syncthreads();\n    if (warp == 0)", "    }\n    if (warp == 0)");
        var (code, output) = Tokenmill("kernels", "test", "--emulate", "--kernels-dir", dir, "--kernel", "argmax");
        Assert.Equal(1, code);
        Assert.Matches(@"(?m)^argmax\s.*FAIL$", output);
    }

    [SkippableFact]
    public void A_wrong_shuffle_offset_is_caught()
    {
        Require();
        // The index is exchanged with the lane at half the offset of its value's: each (value, index) pair comes apart.
        string dir = BrokenCopy("argmax.cu", "__shfl_xor_sync(TM_FULL_MASK, idx, offset)", "__shfl_xor_sync(TM_FULL_MASK, idx, offset / 2)");
        var (code, output) = Tokenmill("kernels", "test", "--emulate", "--kernels-dir", dir, "--kernel", "argmax,rms_norm");
        Assert.Equal(1, code);
        Assert.Matches(@"(?m)^argmax\s.*FAIL$", output);
        Assert.Matches(@"(?m)^rms_norm\s.*PASS$", output);   // its own shuffles are right
    }

    [SkippableFact]
    public void A_sampling_cut_that_keeps_every_tie_is_caught()
    {
        Require();
        // Ties at a top-k / top-p cut go by token id; keeping every token with the cut's logit keeps 10 tokens for top-k 8.
        string dir = BrokenCopy("sampling.cu", "return key > cut.key || (key == cut.key && id <= cut.id);", "return key >= cut.key;");
        var (code, output) = Tokenmill("kernels", "test", "--emulate", "--kernels-dir", dir, "--kernel", "sample");
        Assert.Equal(1, code);
        Assert.Matches(@"(?m)^sample\s+vocab 32000, T 0\.7, top-k 8, ties at the cut: kept tokens that differ.*FAIL$", output);
        Assert.Matches(@"(?m)^sample\s+vocab 32000, T 0\.8, top-k 40: kept tokens that differ.*PASS$", output);   // no ties at its cut
    }

    [SkippableFact]
    public void A_construct_the_shim_cannot_express_fails_its_kernel_by_name()
    {
        Require();
        // __ldg (a read-only cache load) is not in the shim: gemv_f16 cannot be built, and neither can the rest of gemv.cu.
        string dir = BrokenCopy("gemv.cu", "tm_gemv_half<1, false>(w, x, y, rows, cols, num_vectors);", "tm_gemv_half<1, false>(w, x, y, rows, cols, (int)__ldg(x));");
        File.WriteAllText(Path.Combine(dir, "mine.cu"), "extern \"C\" __global__ void my_kernel(float* y) { y[threadIdx.x] = 1.0f; }\n");
        var (code, output) = Tokenmill("kernels", "test", "--emulate", "--kernels-dir", dir, "--kernel", "gemv_f16,gemv_f32,rms_norm,my_kernel");
        Assert.Equal(1, code);
        Assert.Matches(@"(?m)^gemv_f16\s+the CPU shim cannot compile it: .*gemv\.cu:\d+:\d+: error: .*__ldg.*FAIL$", output);
        Assert.Matches(@"(?m)^gemv_f32\s+not built: another kernel of gemv\.cu does not compile in the CPU shim.*FAIL$", output);
        Assert.Matches(@"(?m)^rms_norm\s.*PASS$", output);
        Assert.Matches(@"(?m)^my_kernel\s+no test for this kernel \(KernelSelfTest\).*FAIL$", output);
    }

    [SkippableFact]
    public void A_deadlocked_kernel_ends_the_run_with_its_name_instead_of_hanging()
    {
        Require();
        // Lanes 0..15 wait in the shuffles, lanes 16..31 at __syncthreads: neither barrier can ever complete.
        string dir = BrokenCopy("argmax.cu", "\n    for (int offset = TM_WARP / 2; offset > 0; offset >>= 1)\n        tm_arg_better",
                                             "\n    if (lane < 16)\n    for (int offset = TM_WARP / 2; offset > 0; offset >>= 1)\n        tm_arg_better");
        var (code, output) = Tokenmill(new Dictionary<string, string> { ["TM_EMU_LAUNCH_TIMEOUT_S"] = "3" }, "kernels", "test", "--emulate", "--kernels-dir", dir, "--kernel", "argmax");
        Assert.Equal(124, code);
        Assert.Matches(@"cuda-emu: argmax, block 0 of 3 \(1024 threads\): \d+ of 1024 threads did not finish within 3 s \(a deadlock", output);
    }

    [SkippableFact]
    public void Bad_arguments_are_errors()
    {
        Require();
        Assert.Equal(2, Tokenmill("kernels", "test", "--emulate", "--kernel", "nope").Code);
        Assert.Equal(2, Tokenmill("kernels", "test", "--emulate", "--device", "1").Code);
    }
}
