using TokenMill.Backends;
using TokenMill.Backends.Cpu;
using TokenMill.Core;
using TokenMill.Distributed;
using TokenMill.KvCache;
using TokenMill.Models;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;
using TokenMill.Sampling;
using Xunit.Abstractions;

namespace TokenMill.Tests.Backends;

/// <summary>
/// Tensor parallelism on the CPU communicator: greedy decoding with 2 and 4 ranks gives the tokens of one rank
/// (and of llama.cpp, for the arch models), logits agree within <see cref="LogitTolerance"/>, shapes that cannot
/// split are refused with a precise error, and a rank that fails or stalls stops the engine without a hang.
/// </summary>
public class TensorParallelTests(ITestOutputHelper output)
{
    /// <summary>
    /// Largest |logit(tp) − logit(tp=1)| allowed, relative to the largest |logit| of the step. The all-reduce sums the
    /// ranks' partial products in another order than one rank's dot product does (float rounding), and that
    /// difference grows through the layers; observed ≤ 2e-6 here (see the test output), so 1e-4 leaves margin
    /// while still catching any real error (a wrong head, slice or block is off by O(1)).
    /// </summary>
    const double LogitTolerance = 1e-4;

    /// <summary>
    /// The same for Q8_0/Q4_0 weights, whose products quantize the activations to 8 bits first (llama.cpp's integer
    /// kernels): when the reordered sum moves an activation across a rounding boundary, that value moves by a whole
    /// quantization step, and through the KV cache it stays moved. Observed: 1.2e-2 on the dummy Qwen (most steps
    /// ≤ 1e-6, then one such flip) — the size of the Q8_0-vs-F16 difference itself; the greedy tokens still agree.
    /// </summary>
    const double IntegerKernelLogitTolerance = 3e-2;

    const int Steps = 10;

    /// <summary>Greedy decoding of <paramref name="steps"/> tokens through a <see cref="CpuExecutor"/> of <paramref name="tp"/> ranks.</summary>
    static (int[] Tokens, float[][] Logits) Greedy(Model model, int tp, int[] prompt, int steps)
    {
        const int BlockSize = 16;
        int blocks = KvCacheManager.BlocksFor(prompt.Length + steps, BlockSize);
        using var executor = new CpuExecutor(model, tp, threads: tp, maxBatchTokens: 32, blocks, BlockSize, TimeSpan.FromSeconds(30));
        var manager = new KvCacheManager(blocks, BlockSize);
        var batch = new ForwardBatch();
        var tokens = new List<int>();
        var logits = new List<float[]>();
        int length = 0;
        int[] feed = prompt;
        for (int step = 0; step < steps; step++)
        {
            Assert.True(manager.TryReserve(0, length + feed.Length));
            batch.Clear();
            int s = batch.AddSequence(manager.BlockTable(0));
            for (int i = 0; i < feed.Length; i++)
                batch.AddToken(s, feed[i], length + i, manager.Slot(0, length + i), wantLogits: i == feed.Length - 1);
            var l = new float[model.Config.VocabSize];
            executor.Forward(batch, l);
            length += feed.Length;
            int next = Sampler.ArgMax(l);
            tokens.Add(next);
            logits.Add(l);
            feed = [next];
        }
        return ([.. tokens], [.. logits]);
    }

    void AssertSameAsOneRank(Model model, int tp, int[] prompt, int[]? reference = null) => AssertSameAsOneRank(model, [tp], prompt, reference);

    /// <summary>One-rank greedy decoding once, then each tensor-parallel size against it.</summary>
    void AssertSameAsOneRank(Model model, int[] sizes, int[] prompt, int[]? reference = null)
    {
        var (expected, expectedLogits) = Greedy(model, 1, prompt, Steps);
        foreach (int tp in sizes) AssertSameAs(model, tp, prompt, expected, expectedLogits, reference);
    }

    void AssertSameAs(Model model, int tp, int[] prompt, int[] expected, float[][] expectedLogits, int[]? reference)
    {
        var (got, gotLogits) = Greedy(model, tp, prompt, Steps);
        Assert.Equal(expected, got);
        if (reference is not null) Assert.Equal(reference.Take(Steps), got);
        double worst = 0;
        for (int s = 0; s < Steps; s++)
        {
            float scale = Math.Max(1f, expectedLogits[s].Max(MathF.Abs));
            for (int v = 0; v < expectedLogits[s].Length; v++)
                worst = Math.Max(worst, Math.Abs(gotLogits[s][v] - expectedLogits[s][v]) / scale);
        }
        output.WriteLine($"{model.Name} -tp {tp}: largest relative logit difference {worst:E2}");
        double tolerance = model.Weights.Layers.Any(l => QuantizedDot.HasIntegerDot(l.Wo.Type)) ? IntegerKernelLogitTolerance : LogitTolerance;
        Assert.True(worst <= tolerance, $"logits differ by {worst:E2} (relative) from one rank's");
    }

    static int[] FirstPrompt(string file)
    {
        return ArchReferenceTests.Load(FirstCase(file)).PromptIds;
    }

    static int FirstCase(string file) => ArchReferenceTests.Cases().Select((c, i) => ((string)c[0], i)).First(c => c.Item1 == file).i;

    public static IEnumerable<object[]> ArchCases()
    {
        string[] files = ["arch-llama3.gguf", "arch-qwen2.gguf", "arch-qwen3.gguf", "arch-gemma3.gguf", "arch-phi3.gguf", "arch-llama-spm.gguf"];
        foreach (var f in files) yield return [f, "2,4"];
        // The quantized copies split by 2 (32 columns a rank: one block); by 4 they would cut blocks (see below).
        yield return ["arch-llama-spm-q8_0.gguf", "2"];
        yield return ["arch-llama-spm-q4_0.gguf", "2"];
    }

    [SkippableTheory]
    [MemberData(nameof(ArchCases))]
    public void Arch_models_decode_the_same_tokens_on_several_ranks_as_on_one(string file, string sizes)
    {
        using var model = GgufModelLoader.Load(TestData.Require("arch/" + file));
        // The F32 models' greedy tokens are llama.cpp's too; the quantized copies have no reference of their own.
        int[]? reference = file.Contains("-q", StringComparison.Ordinal) ? null : ArchReferenceTests.Load(FirstCase(file)).CompletionIds;
        AssertSameAsOneRank(model, [.. sizes.Split(',').Select(t => int.Parse(t, System.Globalization.CultureInfo.InvariantCulture))], FirstPrompt(file), reference);
    }

    [SkippableFact]
    public void Stories260K_decodes_the_same_tokens_on_several_ranks_as_on_one()
    {
        using var model = GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));
        AssertSameAsOneRank(model, [2, 4], model.Tokenizer.Encode("Once upon a time", addSpecial: true));
    }

    /// <summary>Qwen2.5-0.5B's real widths (896, FFN 4864, 14 heads, 2 KV heads, q/k/v biases) in Q8_0, cut to 2 layers and a 2048-token vocabulary.</summary>
    static Model SmallQwen(GgmlType dtype = GgmlType.Q8_0)
    {
        var preset = DummyPresets.All["qwen2.5-0.5b"];
        return DummyModelFactory.Create(preset with { Config = preset.Config with { BlockCount = 2, VocabSize = 2048, ContextLength = 256 } },
            "qwen2.5-0.5b-2layers", dtype, seed: 7);
    }

    [Theory]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.F16)]
    public void A_dummy_qwen_decodes_the_same_tokens_on_two_ranks_as_on_one(GgmlType dtype)
    {
        using var model = SmallQwen(dtype);
        AssertSameAsOneRank(model, 2, [11, 500, 1200, 7, 2000]);
    }

    [Theory]
    [InlineData("qwen2", 2)]
    [InlineData("phi3", 4)]
    [InlineData("gemma3", 4)]
    public void Hugging_face_folders_in_bf16_decode_the_same_tokens_on_several_ranks_as_on_one(string arch, int tp)
    {
        var dir = Directory.CreateTempSubdirectory("tokenmill-tp-hf-");
        try
        {
            var spec = new TokenMill.Tests.Models.HuggingFace.HfTestModel
            {
                Arch = arch, BF16 = true, Tied = arch != "phi3", KvHeads = arch == "gemma3" ? 1 : arch == "phi3" ? 4 : 2,
                Layers = arch == "gemma3" ? 4 : 2, HeadDimOverride = arch == "gemma3" ? 32 : null, Seed = 21,
            };
            string folder = Path.Combine(dir.FullName, arch);
            spec.WriteHf(folder);
            string gguf = spec.WriteGguf(folder + ".gguf");
            using var model = ModelLoader.Load(folder, new ModelLoadOptions { TokenizerPath = gguf });
            Assert.Equal(GgmlType.BF16, model.Weights.Layers[0].Wq.Type);
            AssertSameAsOneRank(model, tp, [3, 17, 42, 99, 0, 55, 8]);
        }
        finally
        {
            dir.Delete(recursive: true);
        }
    }

    [Fact]
    public void Shapes_that_cannot_split_are_refused_with_what_does_not_divide()
    {
        using var qwen = SmallQwen();
        var e = Assert.Throws<ArgumentException>(() => new CpuExecutor(qwen, 4, 4, 16, 4, 16, TimeSpan.FromSeconds(1)));
        Assert.Equal("--tensor-parallel-size 4 does not divide the 14 attention heads of dummy:qwen2.5-0.5b-2layers", e.Message);

        var c = qwen.Config;
        e = Assert.Throws<ArgumentException>(() => TensorParallelShard.CheckSplit(c with { HeadCount = 6, HeadCountKv = 3 }, qwen.Weights, 2, "m"));
        Assert.Equal("--tensor-parallel-size 2 does not fit the 3 KV heads of m: it must divide them, or be a multiple of them (KV heads replicated)", e.Message);
        e = Assert.Throws<ArgumentException>(() => TensorParallelShard.CheckSplit(c with { HeadCount = 12, HeadCountKv = 4 }, qwen.Weights, 6, "m"));
        Assert.Equal("--tensor-parallel-size 6 does not fit the 4 KV heads of m: it must divide them, or be a multiple of them (KV heads replicated)", e.Message);
        e = Assert.Throws<ArgumentException>(() => TensorParallelShard.CheckSplit(c with { FeedForwardLength = 4863 }, qwen.Weights, 2, "m"));
        Assert.Equal("--tensor-parallel-size 2 does not divide the feed-forward width 4863 of m", e.Message);
        // 14 heads × 64 / 7 ranks = 128 columns of wo: 4 Q8_0 blocks, fine; FFN 4864 / 7 is not whole.
        e = Assert.Throws<ArgumentException>(() => TensorParallelShard.CheckSplit(c with { HeadCountKv = 14 }, qwen.Weights, 7, "m"));
        Assert.Equal("--tensor-parallel-size 7 does not divide the feed-forward width 4864 of m", e.Message);
    }

    [SkippableTheory]
    [InlineData("arch-llama-spm-q8_0.gguf", "Q8_0")]
    [InlineData("arch-llama-spm-q4_0.gguf", "Q4_0")]
    public void A_slice_that_would_cut_a_quantized_block_is_refused(string file, string type)
    {
        using var model = GgufModelLoader.Load(TestData.Require("arch/" + file));
        var e = Assert.Throws<ArgumentException>(() => new LlmEngine(model, new EngineOptions { TensorParallelSize = 4, MaxModelLen = 64 }));
        Assert.Equal($"--tensor-parallel-size 4 cannot split blk.0.attn_output.weight ({type}): each rank's slice of its input dimension is 16 of 64 columns, " +
            $"not a multiple of the 32-element {type} block, and quantized blocks are never cut; choose a tensor-parallel size that gives each rank " +
            "a multiple of 32 columns, or an unquantized model", e.Message);
    }

    [SkippableFact]
    public void Stories260K_by_three_ranks_is_refused()
    {
        using var model = GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));
        var e = Assert.Throws<ArgumentException>(() => new LlmEngine(model, new EngineOptions { TensorParallelSize = 3, MaxModelLen = 64 }));
        Assert.Contains("--tensor-parallel-size 3 does not divide the 8 attention heads of", e.Message);
    }

    [SkippableFact]
    public void Kv_heads_are_split_or_replicated_as_vllm_does()
    {
        using var model = GgufModelLoader.Load(TestData.Require("arch/arch-qwen3.gguf")); // 4 query heads, 2 KV heads
        using var shards = new DisposableList<TensorParallelShard>([.. Enumerable.Range(0, 4).Select(r => TensorParallelShard.Create(model, r, 4))]);
        // Ranks 0, 1 share KV head 0; ranks 2, 3 KV head 1; each rank one query head, its weights a row view (no copy).
        Assert.Equal([0, 0, 1, 1], shards.Items.Select(s => TensorParallelShard.KvHeads(model.Config, s.Rank, 4).First));
        Assert.All(shards.Items, s => Assert.Equal((1, 1), (s.Config.HeadCount, s.Config.HeadCountKv)));
        unsafe
        {
            var wk = model.Weights.Layers[0].Wk;
            Assert.True(shards.Items[3].Weights.Layers[0].Wk.Data == wk.Data + 32 * wk.RowBytes);
        }
        // Rank 1's wo holds columns 32..63 of every row: one query head's input.
        var wo = model.Weights.Layers[0].Wo;
        var slice = shards.Items[1].Weights.Layers[0].Wo;
        Assert.Equal((wo.Rows, 32L), (slice.Rows, slice.Columns));
        for (int r = 0; r < wo.Rows; r += 13)
            Assert.True(wo.Row(r).Slice(32 * 4, 32 * 4).SequenceEqual(slice.Row(r)));
        // The vocabulary (GPT-2's 50257 tokens): ⌈V/4⌉ rows a rank, the last rank the rest.
        int per = (model.Config.VocabSize + 3) / 4;
        Assert.Equal(model.Config.VocabSize, shards.Items.Sum(s => s.VocabCount));
        Assert.All(shards.Items, s => Assert.Equal(s.Rank * per, s.VocabStart));
    }

    [Theory]
    [InlineData(10, 4, 2)]   // ⌈10/4⌉ = 3 a rank: 3, 3, 3 and 1 rows
    [InlineData(12, 4, 3)]   // even
    [InlineData(5, 4, 1)]    // ⌈5/4⌉ = 2: 2, 2, 1 and none
    public void Gathered_vocabulary_parallel_logits_are_laid_out_as_whole_rows(int vocab, int ranks, int rows)
    {
        // What each rank's head computes (rows × its count, row-major), padded to ⌈V/N⌉ per row as the all-gather sends it.
        float Logit(int row, int token) => row * 100 + token;
        int per = (vocab + ranks - 1) / ranks;
        var gathered = new float[ranks * rows * per];
        gathered.AsSpan().Fill(float.NaN);   // the padding must never be read
        for (int r = 0; r < ranks; r++)
        {
            int first = Math.Min(vocab, r * per), count = Math.Min(per, vocab - first);
            for (int t = 0; t < rows; t++)
                for (int i = 0; i < count; i++) gathered[r * rows * per + t * count + i] = Logit(t, first + i);
        }
        var logits = new float[rows * vocab];
        TensorParallelShard.VocabRowsFromGathered(gathered, rows, per, vocab, logits);
        for (int t = 0; t < rows; t++)
            for (int v = 0; v < vocab; v++) Assert.Equal(Logit(t, v), logits[t * vocab + v]);
    }

    sealed class DisposableList<T>(T[] items) : IDisposable where T : IDisposable
    {
        public T[] Items { get; } = items;
        public void Dispose() { foreach (var i in Items) i.Dispose(); }
    }

    // ---- through the engine -----------------------------------------------------------------------

    static GenerationRequest Greedy(string prompt, int maxTokens) => new()
    {
        Prompt = prompt,
        Sampling = SamplingParams.Greedy with { MaxTokens = maxTokens },
    };

    [SkippableFact]
    public async Task The_engine_serves_a_batch_of_requests_on_two_and_four_ranks_as_on_one()
    {
        using var model = GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));
        string[] prompts = ["Once upon a time", "Lily and Ben", "The dog was", "Once upon a time there"];
        var outputs = new List<string[]>();
        foreach (int tp in new[] { 1, 2, 4 })
        {
            using var engine = new LlmEngine(model, new EngineOptions { TensorParallelSize = tp, MaxModelLen = 96, Threads = tp });
            var results = await Task.WhenAll(prompts.Select(p => engine.CompleteAsync(Greedy(p, 40))));
            outputs.Add([.. results.Select(r => r.Text)]);
            Assert.Null(engine.Failure);
            Assert.Equal(tp == 1 ? 0 : engine.Stats.Steps * (2 * model.Config.BlockCount + 1), engine.TensorParallelStats.AllReduceCalls);
        }
        Assert.StartsWith(", there was a little girl named Lily", outputs[0][0]);
        Assert.Equal(outputs[0], outputs[1]);
        Assert.Equal(outputs[0], outputs[2]);
    }

    [SkippableTheory]
    [InlineData("arch-qwen3.gguf")]    // 2 KV heads: split by 2, replicated by 4
    [InlineData("arch-gemma3.gguf")]   // 1 KV head: replicated; sliding-window layers
    public async Task A_q8_0_kv_cache_gives_the_same_tokens_on_two_and_four_ranks_as_on_one(string file)
    {
        // Head dimension 32: each rank's slot row holds whole Q8_0 blocks of its own KV heads.
        using var model = GgufModelLoader.Load(TestData.Require("arch/" + file));
        string[] prompts = ["Once upon a time", "Lily and Ben", "The dog was"];
        var outputs = new List<string[]>();
        foreach (int tp in new[] { 1, 2, 4 })
        {
            using var engine = new LlmEngine(model, new EngineOptions { TensorParallelSize = tp, MaxModelLen = 64, Threads = tp, KvCacheDtype = KvCacheDtype.Q8_0 });
            Assert.Equal(KvCacheDtype.Q8_0, ((CpuExecutor)engine.Executor).KvCacheDtype);
            var greedy = (await Task.WhenAll(prompts.Select(p => engine.CompleteAsync(Greedy(p, 24))))).Select(r => r.Text);
            // n = 3 forks share the prompt's blocks: their first writes copy the shared block on every rank.
            var forks = await engine.CompleteChoicesAsync(new GenerationRequest
            {
                Prompt = "Once upon a time, there was a", N = 3,
                Sampling = new SamplingParams { Temperature = 1f, Seed = 5, MaxTokens = 20, IgnoreEos = true },
            });
            outputs.Add([.. greedy, .. forks.Select(r => r.Text)]);
            Assert.Equal(engine.Stats.TotalKvBlocks, engine.Stats.FreeKvBlocks);
        }
        Assert.True(outputs[0].Skip(prompts.Length).Distinct().Count() > 1, "the forks did not diverge");
        Assert.Equal(outputs[0], outputs[1]);
        Assert.Equal(outputs[0], outputs[2]);
    }

    [SkippableTheory]
    [InlineData(KvCacheDtype.F32)]
    [InlineData(KvCacheDtype.F16)]
    public async Task Parallel_sampling_copies_shared_kv_blocks_on_every_rank(KvCacheDtype kvDtype)
    {
        // n = 3 forks share the prompt's blocks; the first token each writes into the shared last block is a
        // copy-on-write, which must happen in every rank's KV store (each holds its own KV heads).
        using var model = GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));
        var request = new GenerationRequest
        {
            Prompt = "Once upon a time, there was a", N = 3,
            Sampling = new SamplingParams { Temperature = 1f, Seed = 5, MaxTokens = 24, IgnoreEos = true },
        };
        var outputs = new List<string[]>();
        foreach (int tp in new[] { 1, 2 })
        {
            using var engine = new LlmEngine(model, new EngineOptions { TensorParallelSize = tp, MaxModelLen = 96, Threads = tp, KvCacheDtype = kvDtype });
            Assert.Equal(kvDtype, ((CpuExecutor)engine.Executor).KvCacheDtype);   // every rank's store
            outputs.Add([.. (await engine.CompleteChoicesAsync(request)).Select(r => r.Text)]);
            Assert.Equal(engine.Stats.TotalKvBlocks, engine.Stats.FreeKvBlocks);
        }
        Assert.Equal(3, outputs[0].Distinct().Count()); // the forks did diverge
        Assert.Equal(outputs[0], outputs[1]);
    }

    [SkippableFact]
    public async Task A_rank_that_throws_stops_the_engine_with_one_error_naming_it()
    {
        using var model = GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));
        using var engine = new LlmEngine(model, new EngineOptions { TensorParallelSize = 2, MaxModelLen = 96, Threads = 2 });
        Assert.Equal(", there was a little", (await engine.CompleteAsync(Greedy("Once upon a time", 5))).Text);
        engine.LayerHook = (rank, layer) =>
        {
            if (rank == 1 && layer == 2) throw new InvalidOperationException("injected fault");
        };
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => engine.CompleteAsync(Greedy("Once upon a time", 20)));
        Assert.Contains("tensor-parallel rank 1 failed in its forward pass: injected fault", e.Message);
        var failure = Assert.IsType<EngineFailedException>(engine.Failure);
        var cause = Assert.IsType<CommunicatorException>(failure.InnerException);
        Assert.Equal((1, "forward"), (cause.Rank, cause.Operation));
        // Stopped for good: new requests are refused at once, with the same error.
        var refused = Assert.Throws<EngineFailedException>(() => engine.Generate(Greedy("Once", 5)));
        Assert.Contains("rank 1", refused.Message);
    }

    [SkippableFact]
    public async Task A_rank_that_stalls_makes_the_step_time_out_naming_it_and_the_operation()
    {
        using var model = GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));
        using var release = new ManualResetEventSlim(false);
        using var engine = new LlmEngine(model, new EngineOptions
        {
            TensorParallelSize = 2, MaxModelLen = 96, Threads = 2, TensorParallelTimeout = TimeSpan.FromSeconds(3),
        });
        // Warm first, and 3 s: only the stall below may run past the timeout, not a cold step's JIT on a loaded machine.
        Assert.Equal(2, (await engine.CompleteAsync(Greedy("Lily", 2))).CompletionTokens);
        engine.LayerHook = (rank, layer) =>
        {
            if (rank == 1 && layer == 1) release.Wait(TimeSpan.FromSeconds(30)); // stalls until the test lets it go
        };
        var clock = System.Diagnostics.Stopwatch.StartNew();
        var e = await Assert.ThrowsAsync<InvalidOperationException>(() => engine.CompleteAsync(Greedy("Once upon a time", 20)));
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(15), $"the stall was noticed only after {clock.Elapsed}");
        Assert.Contains("tensor-parallel all-reduce timed out after 3 s on rank 0: rank 1 never reached it (stalled or dead)", e.Message);
        var cause = Assert.IsType<CommunicatorException>(engine.Failure!.InnerException);
        Assert.Equal((1, "all-reduce"), (cause.Rank, cause.Operation));
        release.Set(); // the stalled rank wakes, finds the group aborted, and the engine disposes without waiting on it
    }
}
