using System.Text.Json;
using TokenMill.Backends.Cuda;
using TokenMill.Tests.Cli;

namespace TokenMill.Tests.Backends;

/// <summary>
/// The emulated driver built once for the class (g++ is the slow part), into a cache folder the child processes share
/// through <c>TOKENMILL_CACHE_DIR</c>; null with the reason when it cannot be built here.
/// </summary>
public sealed class EmulatedDriverFixture : IDisposable
{
    public string CacheRoot { get; } = Directory.CreateTempSubdirectory("tm-cuda-forward").FullName;
    public string? SkipReason { get; }

    public EmulatedDriverFixture()
    {
        bool gxx;
        try { gxx = OperatingSystem.IsLinux() && ExternalTool.Run("g++", ["--version"], TimeSpan.FromSeconds(30)).ExitCode == 0; }
        catch (System.ComponentModel.Win32Exception) { gxx = false; }
        if (!gxx)
        {
            SkipReason = "g++ not found (the emulated CUDA driver, tools/cuda-emu, needs g++ 12+)";
            return;
        }
        if (!TokenMill.Interop.NativeLibraryResolver.TryLoad(TokenMill.Interop.CudaLibrary.Nvrtc, out string reason))
        {
            SkipReason = "NVRTC cannot be loaded: " + reason;
            return;
        }
        // The same objects the child's CudaExecutor asks for: embedded sources, default flags, $TOKENMILL_CACHE_DIR/kernels.
        KernelEmulation.Build(KernelSources.Embedded(), Path.Combine(CacheRoot, "kernels"));
    }

    /// <summary>Runs <c>tokenmill ARGS</c> in a child process with this fixture's cache; its output goes to <paramref name="log"/>.</summary>
    public (int Code, string Output) Tokenmill(Xunit.Abstractions.ITestOutputHelper log, params string[] args)
    {
        var env = new Dictionary<string, string> { ["TOKENMILL_CACHE_DIR"] = CacheRoot };
        var run = ExternalTool.Run("dotnet", [Path.Combine(AppContext.BaseDirectory, "tokenmill.dll"), .. args], TimeSpan.FromMinutes(5), env);
        Assert.True(run.ExitCode != -1, run.Text);
        log.WriteLine(run.Text);
        return (run.ExitCode, run.Text);
    }

    /// <summary>Each prompt's generated token ids, from <c>generate --prompts-file --jsonl</c> with <paramref name="deviceArgs"/> (--device …).</summary>
    public List<int[]> GreedyTokenIds(Xunit.Abstractions.ITestOutputHelper log, string[] deviceArgs, string[] prompts, params string[] modelArgs) =>
        TokenIds(log, deviceArgs, prompts, [.. modelArgs, "--temperature", "0"]);

    /// <summary>Each prompt's generated token ids, from <c>generate --prompts-file --jsonl --ignore-eos</c> with <paramref name="args"/> (model and sampling) and <paramref name="deviceArgs"/>.</summary>
    public List<int[]> TokenIds(Xunit.Abstractions.ITestOutputHelper log, string[] deviceArgs, string[] prompts, params string[] args)
    {
        string file = Path.GetTempFileName();
        File.WriteAllLines(file, prompts);
        try
        {
            var (code, output) = Tokenmill(log, ["generate", .. args, "--prompts-file", file, "--jsonl", "--ignore-eos", .. deviceArgs]);
            Assert.True(code == 0, output);
            var ids = output.Split('\n').Where(l => l.StartsWith("{\"index\"", StringComparison.Ordinal))
                .Select(l => JsonDocument.Parse(l).RootElement.GetProperty("token_ids").EnumerateArray().Select(e => e.GetInt32()).ToArray()).ToList();
            Assert.Equal(prompts.Length, ids.Count);
            return ids;
        }
        finally { File.Delete(file); }
    }

    public void Dispose() => Directory.Delete(CacheRoot, recursive: true);
}

/// <summary>
/// <c>--device cuda-emulated</c>: the CUDA backend's whole host path (NVRTC, module loading, weight upload, metadata
/// upload, launches, the KV cache in device memory, logits copied back) with the kernels executed on the CPU by the
/// emulated driver, against the CPU backend. Greedy generation must give the same token ids; the logits of mixed
/// prefill/decode steps must agree within the stated tolerance (<see cref="ForwardComparison.Tolerance"/>). It says
/// nothing about real hardware. Child processes: the emulated driver must never be loaded into the test host.
/// </summary>
public sealed class CudaForwardEmulationTests(EmulatedDriverFixture driver, Xunit.Abstractions.ITestOutputHelper log) : IClassFixture<EmulatedDriverFixture>
{
    void Require() => Skip.If(driver.SkipReason is not null, driver.SkipReason);

    (int Code, string Output) Tokenmill(params string[] args) => driver.Tokenmill(log, args);

    /// <summary>Each prompt's generated token ids, from <c>generate --prompts-file --jsonl</c> on one device.</summary>
    List<int[]> GreedyTokenIds(string device, string[] prompts, params string[] modelArgs) => driver.GreedyTokenIds(log, ["--device", device], prompts, modelArgs);

    /// <summary>Greedy generation of every prompt gives the same token ids on the CPU and the emulated CUDA backend, each at least <paramref name="leastTokens"/> long.</summary>
    void AssertSameGreedyTokenIds(string[] prompts, string[] args, int leastTokens)
    {
        var cpu = GreedyTokenIds("cpu", prompts, args);
        var cuda = GreedyTokenIds("cuda-emulated", prompts, args);
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.True(cpu[i].Length >= leastTokens, $"prompt {i} generated only {cpu[i].Length} tokens");
            Assert.Equal(cpu[i], cuda[i]);
        }
    }

    [SkippableFact]
    public void Greedy_generate_on_stories260K_gives_the_same_token_ids_as_the_CPU()
    {
        Require();
        string model = TestData.Require("models/stories260K.gguf");
        string[] prompts = ["Once upon a time", "The little dog", "Lily and Ben went to the park"];
        // Three prompts at once: batched prefill and batched decode, sequences of different lengths in one step.
        string[] args = ["--model", model, "--max-tokens", "32"];
        AssertSameGreedyTokenIds(prompts, args, leastTokens: 11);
    }

    [SkippableFact]
    public void Seeded_sampling_runs_on_the_device_reproducibly_and_host_sampling_matches_the_CPU()
    {
        Require();
        string model = TestData.Require("models/stories260K.gguf");
        string[] prompts = ["Once upon a time", "The little dog", "Lily and Ben went to the park"];
        string[] seeded = ["--model", model, "--max-tokens", "24", "--seed", "7", "--temperature", "0.9", "--top-k", "30"];
        var device = driver.TokenIds(log, ["--device", "cuda-emulated"], prompts, seeded);
        var again = driver.TokenIds(log, ["--device", "cuda-emulated"], prompts, seeded);
        var host = driver.TokenIds(log, ["--device", "cuda-emulated", "--host-sampling"], prompts, seeded);
        var cpu = driver.TokenIds(log, ["--device", "cpu"], prompts, seeded);
        Assert.Equal(device, again);   // Philox keyed by the seed and the step: the same draws every run
        Assert.Equal(cpu, host);       // the host sampler on the CUDA backend's logits: the CPU's draws
        // The device's random stream is not System.Random: with these seeds some prompt draws otherwise, which shows
        // the device sampled (fixed inputs: this is deterministic).
        Assert.NotEqual(cpu, device);
    }

    [SkippableFact]
    public void Greedy_generate_on_stories260K_with_chunked_prefill_gives_the_same_token_ids_as_the_CPU()
    {
        Require();
        string model = TestData.Require("models/stories260K.gguf");
        // A budget of 6 tokens a step: the long prompt's prefill runs in chunks, each continuing the cached context
        // through the prefill kernel, in steps beside the other prompt's decodes.
        string[] prompts = ["One day a little girl named Lily found a shiny red ball in the garden behind her house", "The cat"];
        // --max-tokens is the whole sequence's length: the 36-token prompt generates 20.
        string[] args = ["--model", model, "--max-tokens", "56", "--max-num-batched-tokens", "6"];
        AssertSameGreedyTokenIds(prompts, args, leastTokens: 11);
    }

    [SkippableFact]
    public void Greedy_generate_on_a_one_layer_dummy_model_gives_the_same_token_ids_as_the_CPU()
    {
        Require();
        // TinyLlama's widths (2048, 32 heads over 4 KV heads, vocabulary 32000) in F16: gemv_f16 and embedding_f16.
        string[] prompts = ["Once upon a time", "The quick brown fox"];
        string[] args = ["--model", "dummy:tinyllama-1.1b", "--dummy-layers", "1", "--dtype", "F16", "--max-model-len", "64", "--max-tokens", "9"];
        AssertSameGreedyTokenIds(prompts, args, leastTokens: 3);
    }

    /// <summary>The attention column of <c>kernels forward</c>'s row for <paramref name="step"/>.</summary>
    static string AttentionOf(string output, string step)
    {
        var row = System.Text.RegularExpressions.Regex.Match(output, $@"(?m)^{System.Text.RegularExpressions.Regex.Escape(step)}\s{{2,}}(?<kernels>\S.*?)\s{{2,}}\d+\s");
        Assert.True(row.Success, $"no row for step '{step}' in:\n{output}");
        return row.Groups["kernels"].Value;
    }

    /// <summary>The products column of <c>kernels forward</c>'s row for <paramref name="step"/>: cuBLAS or GEMV.</summary>
    static string ProductsOf(string output, string step)
    {
        var row = System.Text.RegularExpressions.Regex.Match(output, $@"(?m)^{System.Text.RegularExpressions.Regex.Escape(step)}\s{{2,}}\S.*?\s{{2,}}\d+\s{{2}}(?<products>cuBLAS|GEMV)\s");
        Assert.True(row.Success, $"no products column for step '{step}' in:\n{output}");
        return row.Groups["products"].Value;
    }

    [SkippableFact]
    public void Logits_of_mixed_prefill_and_decode_steps_match_the_CPU_on_stories260K_through_prefill_and_split_K_attention()
    {
        Require();
        string model = TestData.Require("models/stories260K.gguf");
        // Partitions of 16 positions: the 31- and 32-position contexts of E split in two, the others (≤ 16) do not.
        var (code, output) = Tokenmill("kernels", "forward", "--emulate", "--model", model, "--partition-size", "16");
        Assert.True(code == 0, output);
        Assert.Contains($"device: {KernelEmulation.DeviceName}", output);
        Assert.Equal(8, System.Text.RegularExpressions.Regex.Count(output, @"(?m)\s+same\s+PASS$"));
        Assert.Contains("all 8 steps within tolerance", output);
        // Which kernels each step ran, as ChunkAttentionPlan chooses them (chunks of 8 rows). The first step's second
        // chunk starts with A's ninth row alone: a one-row group, a decode launch.
        Assert.Equal("prefill + decode", AttentionOf(output, "prefill A (9) + prefill B (7)"));
        Assert.Equal("prefill + decode", AttentionOf(output, "decode A + prefill B (3) + prefill C (6)"));   // C continues in the next step: chunked prefill
        Assert.Equal("prefill + decode", AttentionOf(output, "decode A + decode B + prefill C (8)"));
        Assert.Equal("decode", AttentionOf(output, "decode A + decode B + decode C"));
        Assert.Equal("decode", AttentionOf(output, "D forks C (copy-on-write): decode C + decode D"));
        Assert.Equal("prefill", AttentionOf(output, "prefill E (30)"));   // four chunks, each continuing the cached ones
        Assert.Equal("prefill + decode split-K", AttentionOf(output, "prefill F (5) + decode E (context 31)"));
        Assert.Equal("decode split-K", AttentionOf(output, "decode E (context 32) + decode F"));
        // F32 weights: chunks of 8 rows run on (the emulated) cuBLAS's Sgemm, in full FP32, at the float tolerance.
        Assert.Contains("products: cuBLAS for chunks of 8+ rows", output);
        Assert.Equal("cuBLAS", ProductsOf(output, "prefill A (9) + prefill B (7)"));
        Assert.Equal("cuBLAS", ProductsOf(output, "prefill E (30)"));
        Assert.Equal("GEMV", ProductsOf(output, "decode A + decode B + decode C"));
        Assert.Equal("GEMV", ProductsOf(output, "prefill F (5) + decode E (context 31)"));
        // Decode-only chunks are captured as CUDA graphs (each of these is a new shape: rows, plan); chunks with prefill rows are not.
        Assert.Equal("captured", GraphOf(output, "decode A + decode B + decode C"));
        Assert.Equal("captured", GraphOf(output, "decode E (context 32) + decode F"));
        Assert.Equal("-", GraphOf(output, "prefill E (30)"));
        Assert.Equal("-", GraphOf(output, "prefill F (5) + decode E (context 31)"));
    }

    /// <summary>
    /// <c>--kv-cache-dtype f16</c> on both sides: reshape_and_cache_f16 and the f16 prefill, decode and split-K kernels
    /// against the CPU's f16 store, within the f16 cache's tolerance; greedy generation gives the CPU's token ids.
    /// </summary>
    [SkippableFact]
    public void An_f16_KV_cache_matches_the_CPU_s_f16_cache_through_every_attention_kernel()
    {
        Require();
        string model = TestData.Require("models/stories260K.gguf");
        var (code, output) = Tokenmill("kernels", "forward", "--emulate", "--model", model, "--partition-size", "16", "--kv-cache-dtype", "f16");
        Assert.True(code == 0, output);
        Assert.Contains("KV cache: f16 on both", output);
        Assert.Contains("all 8 steps within tolerance", output);
        Assert.Equal("prefill + decode split-K", AttentionOf(output, "prefill F (5) + decode E (context 31)"));
        Assert.Equal("captured", GraphOf(output, "decode A + decode B + decode C"));

        string[] prompts = ["Once upon a time", "The little dog", "Lily and Ben went to the park"];
        AssertSameGreedyTokenIds(prompts, ["--model", model, "--max-tokens", "40", "--kv-cache-dtype", "f16"], leastTokens: 19);
    }

    /// <summary>
    /// <c>--kv-cache-dtype q8_0</c> on both sides (a one-layer TinyLlama: head dimension 64): reshape_and_cache_q8_0 and the
    /// q8_0 prefill, decode and split-K kernels against the CPU's q8_0 store, within the q8_0 cache's tolerance; greedy
    /// generation gives the CPU's token ids.
    /// </summary>
    [SkippableFact]
    public void A_q8_0_KV_cache_matches_the_CPU_s_q8_0_cache_through_every_attention_kernel()
    {
        Require();
        string[] model = ["--model", "dummy:tinyllama-1.1b", "--dummy-layers", "1", "--dtype", "F32"];
        var (code, output) = Tokenmill(["kernels", "forward", "--emulate", .. model, "--partition-size", "16", "--kv-cache-dtype", "q8_0"]);
        Assert.True(code == 0, output);
        Assert.Contains("KV cache: q8_0 on both", output);
        Assert.Contains("all 8 steps within tolerance", output);
        Assert.Equal("prefill + decode split-K", AttentionOf(output, "prefill F (5) + decode E (context 31)"));
        AssertSameGreedyTokenIds(["Once upon a time", "The little dog"], [.. model, "--max-tokens", "16", "--kv-cache-dtype", "q8_0"], leastTokens: 11);
    }

    /// <summary>The graph column of <c>kernels forward</c>'s row for <paramref name="step"/>.</summary>
    static string GraphOf(string output, string step)
    {
        var row = System.Text.RegularExpressions.Regex.Match(output, $@"(?m)^{System.Text.RegularExpressions.Regex.Escape(step)}\s{{2,}}\S.*?\s{{2,}}\d+\s{{2}}(cuBLAS|GEMV)\s+(?<graph>\S+)\s");
        Assert.True(row.Success, $"no graph column for step '{step}' in:\n{output}");
        return row.Groups["graph"].Value;
    }

    [SkippableFact]
    public void Decode_steps_replay_CUDA_graphs_with_the_CPU_s_tokens_and_enforce_eager_launches_every_kernel()
    {
        Require();
        string model = TestData.Require("models/stories260K.gguf");
        string[] prompts = ["Once upon a time", "The little dog", "Lily and Ben went to the park"];
        string[] args = ["--model", model, "--max-tokens", "32"];
        var cpu = driver.GreedyTokenIds(log, ["--device", "cpu"], prompts, args);
        Assert.Equal(cpu, driver.GreedyTokenIds(log, ["--device", "cuda-emulated"], prompts, args));
        Assert.Equal(cpu, driver.GreedyTokenIds(log, ["--device", "cuda-emulated", "--enforce-eager"], prompts, args));
        // Nine sequences decode in chunks of 9 rows: their products are cuBLAS GEMMs inside the captured graph.
        string[] nine = [.. Enumerable.Range(1, 9).Select(i => $"Once upon a time there was a child number {i}")];
        Assert.Equal(driver.GreedyTokenIds(log, ["--device", "cpu"], nine, args), driver.GreedyTokenIds(log, ["--device", "cuda-emulated"], nine, args));

        var (code, output) = Tokenmill("generate", "--model", model, "--prompt", "Once upon a time", "--max-tokens", "20", "--temperature", "0",
                                       "--ignore-eos", "--device", "cuda-emulated");
        Assert.True(code == 0, output);
        // One sequence: one decode shape, captured once; its 14 decode steps (15 tokens, the first from the prefill) one launch each.
        var graphs = System.Text.RegularExpressions.Regex.Match(output, @"CUDA graphs: (?<captured>\d+) captured, (?<launches>\d+) launches");
        Assert.True(graphs.Success, output);
        Assert.Equal("1", graphs.Groups["captured"].Value);
        Assert.Equal("14", graphs.Groups["launches"].Value);
        (code, output) = Tokenmill("generate", "--model", model, "--prompt", "Once upon a time", "--max-tokens", "20", "--temperature", "0",
                                   "--ignore-eos", "--device", "cuda-emulated", "--enforce-eager");
        Assert.True(code == 0, output);
        Assert.Contains("CUDA graphs: off", output);
    }

    [SkippableTheory]
    [InlineData("F16", 2e-3)]
    [InlineData("BF16", 1.6e-2)]
    public void Logits_of_16_bit_models_match_the_CPU_within_the_rounding_of_the_GEMMs_activations(string dtype, double relative)
    {
        Require();
        // Chunks of 8 rows go to cublasGemmEx with the activations rounded to the weights' type: the tolerance of that
        // rounding from the first GEMM on (its keys and values stay in the cache), the float one before it.
        var (code, output) = Tokenmill("kernels", "forward", "--emulate", "--model", "dummy:tinyllama-1.1b", "--dummy-layers", "1", "--dtype", dtype);
        Assert.True(code == 0, output);
        Assert.Equal(8, System.Text.RegularExpressions.Regex.Count(output, @"(?m)\s+same\s+PASS$"));
        Assert.Equal("cuBLAS", ProductsOf(output, "prefill A (9) + prefill B (7)"));
        Assert.Equal("GEMV", ProductsOf(output, "decode A + decode B + decode C"));
        var first = System.Text.RegularExpressions.Regex.Match(output, @"(?m)^prefill A \(9\) \+ prefill B \(7\).*?\s(?<logit>\d+\.\d+)\s+(?<tolerance>\d+\.\d+(E-\d+)?)\s+same\s+PASS$");
        Assert.True(first.Success, output);
        double maxLogit = double.Parse(first.Groups["logit"].Value, System.Globalization.CultureInfo.InvariantCulture);
        double tolerance = double.Parse(first.Groups["tolerance"].Value, System.Globalization.CultureInfo.InvariantCulture);
        Assert.InRange(tolerance, 0.99 * relative * maxLogit, 1.01 * relative * maxLogit);
    }

    [SkippableFact]
    public void Logits_of_a_Q8_0_dummy_model_match_the_CPU_within_its_activation_quantization()
    {
        Require();
        // Q8_0 weights stay quantized on the device (gemv_q8_0, embedding_q8_0); the CPU quantizes its activations to
        // 8 bits for its integer kernels, hence the looser tolerance (ForwardComparison.Tolerance).
        // At the default partition size (512) nothing of 32 positions splits: the one-pass decode kernel throughout.
        var (code, output) = Tokenmill("kernels", "forward", "--emulate", "--model", "dummy:tinyllama-1.1b", "--dummy-layers", "1", "--dtype", "Q8_0");
        Assert.True(code == 0, output);
        Assert.Equal(8, System.Text.RegularExpressions.Regex.Count(output, @"(?m)PASS$"));
        Assert.Equal("prefill + decode", AttentionOf(output, "prefill F (5) + decode E (context 31)"));
        Assert.Equal("decode", AttentionOf(output, "decode E (context 32) + decode F"));
    }

    [SkippableFact]
    public void Logits_of_an_F16_dummy_model_match_the_CPU_through_prefill_and_split_K_attention_at_head_dim_64()
    {
        Require();
        // Partitions of 16 again, at TinyLlama's head dim (64, GQA 32/4) where stories260K's is 8, and float weights:
        // the 1e-4 tolerance (Q8_0's 5e-2 would hide a small attention error). The GEMV kernels only: the f16 rounding
        // of a GEMM's activations would need a looser one.
        var (code, output) = Tokenmill("kernels", "forward", "--emulate", "--model", "dummy:tinyllama-1.1b", "--dummy-layers", "1", "--dtype", "F16",
                                       "--partition-size", "16", "--gemm-min-rows", "9");
        Assert.True(code == 0, output);
        Assert.Contains("products: the GEMV kernels (--gemm-min-rows 9 > the 8-row chunks)", output);
        Assert.Equal(8, System.Text.RegularExpressions.Regex.Count(output, @"(?m)\s+same\s+PASS$"));
        Assert.Equal("prefill", AttentionOf(output, "prefill E (30)"));
        Assert.Equal("prefill + decode split-K", AttentionOf(output, "prefill F (5) + decode E (context 31)"));
        Assert.Equal("decode split-K", AttentionOf(output, "decode E (context 32) + decode F"));
    }

    [SkippableFact]
    public void A_KV_cache_that_does_not_fit_the_memory_share_is_a_precise_error()
    {
        Require();
        // One F32 layer of TinyLlama plus its embedding and classifier take about 0.6 GiB of the emulated 1 GiB: half
        // of the device leaves nothing for the KV cache.
        var (code, output) = Tokenmill("generate", "--model", "dummy:tinyllama-1.1b", "--dummy-layers", "1", "--dtype", "F32",
            "--device", "cuda-emulated", "--gpu-memory-utilization", "0.5", "--max-tokens", "4");
        Assert.Equal(1, code);
        Assert.Contains("cannot hold one sequence of --max-model-len 2048", output);
        Assert.Contains("--gpu-memory-utilization 0.5 of --device cuda-emulated's 1.00 GiB", output);
    }

    [SkippableFact]
    public void A_model_outside_the_Llama_family_is_refused_by_name()
    {
        Require();
        var (code, output) = Tokenmill("generate", "--model", "dummy:qwen3-0.6b", "--dummy-layers", "1", "--dtype", "F16",
            "--device", "cuda-emulated", "--max-tokens", "2");
        Assert.Equal(1, code);
        Assert.Contains("the CUDA backend does not run dummy:qwen3-0.6b yet: architecture 'qwen3'", output);
    }
}

/// <summary><c>--device</c> on the command line: bad names and a missing driver are precise errors (no emulator involved).</summary>
public sealed class DeviceOptionTests
{
    [Theory]
    [InlineData("generate")]
    [InlineData("bench")]
    [InlineData("serve")]
    public void A_bad_device_name_is_a_usage_error(string command)
    {
        string[] args = command == "bench" ? ["bench", "latency", "--device", "tpu"] : [command, "--device", "tpu"];
        var (code, _, err) = CliRun.Capture(args);
        Assert.Equal(2, code);
        Assert.Contains("--device must be one of cpu, cuda, cuda-emulated; got 'tpu'", err);
    }

    [Fact]
    public void Gpu_memory_utilization_outside_0_to_1_is_a_usage_error()
    {
        var (code, _, err) = CliRun.Capture("generate", "--device", "cuda", "--gpu-memory-utilization", "1.5");
        Assert.Equal(2, code);
        Assert.Contains("--gpu-memory-utilization must be between", err);
    }

    [SkippableFact]
    public void Device_cuda_without_a_driver_says_what_was_tried()
    {
        Skip.If(TokenMill.Interop.NativeLibraryResolver.TryLoad(TokenMill.Interop.CudaLibrary.Driver, out _), "a CUDA driver is installed here");
        string model = TestData.Require("models/stories260K.gguf");
        var (code, _, err) = CliRun.Capture("generate", "--model", model, "--device", "cuda", "--max-tokens", "2");
        Assert.Equal(1, code);
        Assert.Contains("--device cuda: could not load the CUDA driver library (libcuda); tried: ", err);
        Assert.Contains("libcuda.so.1", err);
        Assert.Contains("--device cuda-emulated", err);
    }
}
