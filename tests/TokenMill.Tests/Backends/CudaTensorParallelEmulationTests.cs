using System.Text.RegularExpressions;
using TokenMill.Backends.Cuda;

namespace TokenMill.Tests.Backends;

/// <summary>
/// Tensor parallelism on the CUDA backend, on the emulated driver (one emulated device per rank) and the fake NCCL of
/// tools/cuda-emu: greedy generation with 2 ranks gives the token ids of one rank and of the CPU backend's 2 ranks;
/// the logits of mixed prefill/decode steps agree with the CPU within <see cref="ForwardComparison.Tolerance"/>, KV heads
/// replicated or not; shapes that do not split and too few devices are precise errors; a rank that stalls or throws
/// fails the step with an error naming it, without a hang. It says nothing about real GPUs or real NCCL. Child
/// processes, as in <see cref="CudaForwardEmulationTests"/>: the emulated driver must never be loaded into the test host.
/// </summary>
public sealed class CudaTensorParallelEmulationTests(EmulatedDriverFixture driver, Xunit.Abstractions.ITestOutputHelper log) : IClassFixture<EmulatedDriverFixture>
{
    void Require() => Skip.If(driver.SkipReason is not null, driver.SkipReason);

    (int Code, string Output) Tokenmill(params string[] args) => driver.Tokenmill(log, args);

    [SkippableFact]
    public void Greedy_generate_on_stories260K_with_two_ranks_gives_the_token_ids_of_one_rank_and_of_the_CPU_with_two()
    {
        Require();
        string model = TestData.Require("models/stories260K.gguf");
        string[] prompts = ["Once upon a time", "The little dog", "Lily and Ben went to the park"];
        string[] args = ["--model", model, "--max-tokens", "24"];
        var oneRank = driver.GreedyTokenIds(log, ["--device", "cuda-emulated", "-tp", "1"], prompts, args);
        var twoRanks = driver.GreedyTokenIds(log, ["--device", "cuda-emulated", "-tp", "2"], prompts, args);
        var cpuTwoRanks = driver.GreedyTokenIds(log, ["--device", "cpu", "-tp", "2"], prompts, args);
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.True(oneRank[i].Length > 10, $"prompt {i} generated only {oneRank[i].Length} tokens");
            Assert.Equal(oneRank[i], twoRanks[i]);
            Assert.Equal(cpuTwoRanks[i], twoRanks[i]);
        }
    }

    [SkippableTheory]
    [InlineData("F16")]
    [InlineData("Q8_0")]   // embedding_q8_0 with the zero row, gemv_q8_0 on the repacked column slices of wo and down
    public void Greedy_generate_on_a_two_layer_dummy_model_with_two_ranks_gives_the_token_ids_of_the_CPU(string dtype)
    {
        Require();
        // TinyLlama's widths (32 heads over 4 KV heads, FFN 5632, vocabulary 32000 split 16000 a rank), two layers.
        // CUDA with one rank against the CPU is CudaForwardEmulationTests' check; here two CUDA ranks against the CPU's one and two.
        string[] prompts = ["Once upon a time", "The quick brown fox"];
        string[] args = ["--model", "dummy:tinyllama-1.1b", "--dummy-layers", "2", "--dtype", dtype, "--max-model-len", "64", "--max-tokens", "9"];
        var cpu = driver.GreedyTokenIds(log, ["--device", "cpu", "-tp", "1"], prompts, args);
        var cpuTwoRanks = driver.GreedyTokenIds(log, ["--device", "cpu", "-tp", "2"], prompts, args);
        var cudaTwoRanks = driver.GreedyTokenIds(log, ["--device", "cuda-emulated", "-tp", "2"], prompts, args);
        for (int i = 0; i < prompts.Length; i++)
        {
            Assert.True(cpu[i].Length >= 3, $"prompt {i} generated only {cpu[i].Length} tokens");
            Assert.Equal(cpu[i], cudaTwoRanks[i]);
            Assert.Equal(cpuTwoRanks[i], cudaTwoRanks[i]);
        }
    }

    [SkippableTheory]
    [InlineData("models/stories260K.gguf", 2)]   // 8 heads over 4 KV heads: 4 and 2 a rank
    [InlineData("models/stories260K.gguf", 4)]
    [InlineData("arch/arch-llama3.gguf", 4)]     // 4 heads over 2 KV heads: each KV head replicated on two ranks; vocabulary 50257, the last rank 12563 rows
    public void Logits_of_mixed_prefill_and_decode_steps_on_several_ranks_match_the_CPU(string file, int tp)
    {
        Require();
        string model = TestData.Require(file);
        var (code, output) = Tokenmill("kernels", "forward", "--emulate", "--model", model, "-tp", tp.ToString(System.Globalization.CultureInfo.InvariantCulture));
        Assert.True(code == 0, output);
        Assert.Contains($"tensor-parallel {tp} ranks on devices 0–{tp - 1}", output);
        Assert.Equal(8, Regex.Count(output, @"(?m)\s+same\s+PASS$"));
        Assert.Contains("all 8 steps within tolerance", output);
        Assert.Contains("prefill + decode", output);   // every rank attends through the prefill kernel too
    }

    [SkippableFact]
    public void A_rank_that_stalls_fails_the_step_after_the_timeout_naming_it_and_the_all_reduce()
    {
        Require();
        string model = TestData.Require("models/stories260K.gguf");
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var (code, output) = Tokenmill("kernels", "forward", "--emulate", "--model", model, "-tp", "2", "--stall-rank", "1", "--timeout", "1");
        Assert.True(code == 0, output);
        Assert.Contains("rank 1 stalls at layer 1: the step failed after", output);
        Assert.Contains("tensor-parallel all-reduce timed out after 1 s on rank 0: rank 1 never reached it (stalled or dead)", output);
        Assert.Contains("PASS: the error names rank 1 and the all-reduce", output);
        Assert.True(clock.Elapsed < TimeSpan.FromMinutes(2), $"the child took {clock.Elapsed}");   // no hang: the process ended
    }

    [SkippableFact]
    public void A_rank_that_throws_fails_the_step_at_once_naming_it()
    {
        Require();
        string model = TestData.Require("models/stories260K.gguf");
        var (code, output) = Tokenmill("kernels", "forward", "--emulate", "--model", model, "-tp", "2", "--fail-rank", "1", "--timeout", "30");
        Assert.True(code == 0, output);
        Assert.Contains("tensor-parallel rank 1 failed in its forward pass: injected fault (kernels forward --fail-rank)", output);
        Assert.Contains("PASS: the error names rank 1 and the forward, within 15 s", output);
    }

    [SkippableFact]
    public void Shapes_that_do_not_split_are_refused_before_any_device_work()
    {
        Require();
        string model = TestData.Require("models/stories260K.gguf");
        var (code, output) = Tokenmill("generate", "--model", model, "--device", "cuda-emulated", "-tp", "3", "--max-tokens", "2");
        Assert.Equal(1, code);
        Assert.Contains("--tensor-parallel-size 3 does not divide the 8 attention heads of", output);
    }

    [SkippableFact]
    public void More_ranks_than_devices_is_a_precise_error()
    {
        Require();
        // TinyLlama splits 16 ways (2 heads a rank, its 4 KV heads replicated, FFN 352 a rank); the emulated driver has 8 devices.
        var (code, output) = Tokenmill("generate", "--model", "dummy:tinyllama-1.1b", "--dummy-layers", "1", "--dtype", "F16",
            "--device", "cuda-emulated", "-tp", "16", "--max-tokens", "2");
        Assert.Equal(1, code);
        Assert.Contains("--device cuda-emulated --tensor-parallel-size 16 needs 16 GPUs (rank r on GPU r), the driver reports 8", output);
    }
}
