using TokenMill.Backends.Cpu;
using TokenMill.Core;
using TokenMill.Generation;
using TokenMill.KvCache;
using TokenMill.Models;
using TokenMill.Quantization;
using TokenMill.Sampling;

namespace TokenMill.Tests.KvCache;

/// <summary>
/// <c>--kv-cache-dtype f16|q8_0</c>: half (f16) or 0.27 (Q8_0) of f32's bytes per block, each key and value rounded once
/// as it is written, attention in f32 on the exactly widened rows; batching, preemption and copy-on-write keep their
/// guarantees.
/// </summary>
public class KvCacheDtypeTests
{
    static readonly ModelConfig Config = new()
    {
        Architecture = "llama", BlockCount = 3, EmbeddingLength = 64, HeadCount = 4, HeadCountKv = 2, FeedForwardLength = 128,
        HeadDim = 16, VocabSize = 32, ContextLength = 64, RmsNormEps = 1e-5f, RopeType = RopeType.Norm, RopeDimensionCount = 16,
    };

    [Fact]
    public void A_block_takes_half_the_bytes_in_f16_and_34_of_128_in_q8_0()
    {
        Assert.Equal(2L * 3 * 16 * 32 * 4, PagedKvStore.BytesPerBlock(Config, 16));
        Assert.Equal(PagedKvStore.BytesPerBlock(Config, 16) / 2, PagedKvStore.BytesPerBlock(Config, 16, KvCacheDtype.F16));
        Assert.Equal(PagedKvStore.BytesPerBlock(Config, 16) * 34 / 128, PagedKvStore.BytesPerBlock(Config, 16, KvCacheDtype.Q8_0));
    }

    static readonly ModelConfig Config32 = Config with { HeadDim = 32, EmbeddingLength = 128 };

    [Fact]
    public unsafe void A_q8_0_store_quantizes_each_row_as_ggml_and_copy_on_write_copies_every_layer()
    {
        using var store = new PagedKvStore(Config32, blockCount: 3, blockSize: 2, KvCacheDtype.Q8_0);
        int kvDim = Config32.KvDim, rowBytes = (int)store.RowBytes;
        Assert.Equal(2 * 34, rowBytes);   // two heads of 32: one block each
        var rng = new Random(5);
        var key = new float[kvDim];
        var value = new float[kvDim];
        for (int layer = 0; layer < Config32.BlockCount; layer++)
            for (int slot = 2; slot < 4; slot++) // block 1
            {
                for (int i = 0; i < kvDim; i++)
                {
                    key[i] = (float)(rng.NextDouble() * 8 - 4);
                    value[i] = (float)(rng.NextDouble() * 2 - 1) * (layer + 1);
                }
                fixed (float* k = key, v = value) store.Write(layer, slot, k, v);
                var expected = new byte[rowBytes];
                Quantize.Row(global::TokenMill.Models.Gguf.GgmlType.Q8_0, key, expected);
                Assert.Equal(expected, new ReadOnlySpan<byte>(store.KeyRow(layer, slot), rowBytes).ToArray());
                Quantize.Row(global::TokenMill.Models.Gguf.GgmlType.Q8_0, value, expected);
                Assert.Equal(expected, new ReadOnlySpan<byte>(store.ValueRow(layer, slot), rowBytes).ToArray());
            }
        store.CopyBlock(1, 0);
        for (int layer = 0; layer < Config32.BlockCount; layer++)
        {
            Assert.Equal(new ReadOnlySpan<byte>(store.KeyRow(layer, 2), 2 * rowBytes).ToArray(), new ReadOnlySpan<byte>(store.KeyRow(layer, 0), 2 * rowBytes).ToArray());
            Assert.Equal(new ReadOnlySpan<byte>(store.ValueRow(layer, 2), 2 * rowBytes).ToArray(), new ReadOnlySpan<byte>(store.ValueRow(layer, 0), 2 * rowBytes).ToArray());
        }
        Assert.All(new ReadOnlySpan<byte>(store.KeyRow(0, 4), 2 * rowBytes).ToArray(), b => Assert.Equal(0, b)); // block 2 untouched
        Assert.Equal("the KV cache holds q8_0, not f16", Assert.Throws<InvalidOperationException>(() => (nint)store.HalfKeys(0, 0)).Message);
    }

    [Fact]
    public void A_q8_0_store_refuses_a_head_dimension_that_splits_its_blocks()
    {
        var e = Assert.Throws<ArgumentException>(() => new PagedKvStore(Config, 1, 16, KvCacheDtype.Q8_0));
        Assert.StartsWith("--kv-cache-dtype q8_0 needs a head dimension that is a multiple of 32", e.Message);
    }

    [Fact]
    public unsafe void Writes_round_each_element_to_nearest_even_and_copy_on_write_copies_every_layer()
    {
        using var store = new PagedKvStore(Config, blockCount: 4, blockSize: 2, KvCacheDtype.F16);
        int kvDim = Config.KvDim;
        var rng = new Random(3);
        // Ties between two f16 values (1 + 2^-11 lies halfway between 1 and 1 + 2^-10), values past f16's range, subnormals.
        float[] special = [1f + MathF.Pow(2, -11), 1f + 3 * MathF.Pow(2, -11), 70000f, -1e-6f, 65519f, 65520f, 2.5f * MathF.Pow(2, -24)];
        var key = new float[kvDim];
        var value = new float[kvDim];
        for (int layer = 0; layer < Config.BlockCount; layer++)
            for (int slot = 0; slot < 2; slot++) // block 0
            {
                for (int i = 0; i < kvDim; i++)
                {
                    key[i] = i < special.Length ? special[i] : (float)(rng.NextDouble() * 8 - 4);
                    value[i] = (float)(rng.NextDouble() * 2 - 1) * (layer + 1);
                }
                fixed (float* k = key, v = value) store.Write(layer, slot, k, v);
                for (int i = 0; i < kvDim; i++)
                {
                    Assert.Equal(Fp16.FromSingle(key[i]), store.HalfKeys(layer, slot)[i]);
                    Assert.Equal(Fp16.FromSingle(value[i]), store.HalfValues(layer, slot)[i]);
                }
                Assert.Equal((ushort)0x3C00, store.HalfKeys(layer, slot)[0]);   // the tie goes to the even 1.0
                Assert.Equal((ushort)0x3C02, store.HalfKeys(layer, slot)[1]);   // and here to the even 1 + 2^-9
                Assert.Equal((ushort)0x7C00, store.HalfKeys(layer, slot)[2]);   // past 65504: infinity
                Assert.Equal((ushort)0x7BFF, store.HalfKeys(layer, slot)[4]);   // 65519 still rounds down to 65504
                Assert.Equal((ushort)0x7C00, store.HalfKeys(layer, slot)[5]);   // 65520 is the tie that overflows
                Assert.Equal((ushort)0x8011, store.HalfKeys(layer, slot)[3]);   // −1e-6 = −16.78 · 2^-24: the subnormal −17 · 2^-24
                Assert.Equal((ushort)0x0002, store.HalfKeys(layer, slot)[6]);   // 2.5 · 2^-24: a subnormal tie, to the even 2
            }

        store.CopyBlock(0, 3);
        for (int layer = 0; layer < Config.BlockCount; layer++)
            for (int offset = 0; offset < 2; offset++)
            {
                Assert.Equal(new ReadOnlySpan<ushort>(store.HalfKeys(layer, offset), kvDim).ToArray(), new ReadOnlySpan<ushort>(store.HalfKeys(layer, 6 + offset), kvDim).ToArray());
                Assert.Equal(new ReadOnlySpan<ushort>(store.HalfValues(layer, offset), kvDim).ToArray(), new ReadOnlySpan<ushort>(store.HalfValues(layer, 6 + offset), kvDim).ToArray());
            }
        Assert.All(new ReadOnlySpan<ushort>(store.HalfKeys(1, 2), 2 * kvDim).ToArray(), h => Assert.Equal(0, h)); // block 1 untouched

        var e = Assert.Throws<InvalidOperationException>(() => (nint)store.Keys(0, 0));
        Assert.Equal("the KV cache holds f16, not f32", e.Message);
    }

    /// <summary>
    /// The store converts with <see cref="System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(ReadOnlySpan{float}, Span{Half})"/>
    /// (vectorized): it must round every non-NaN float as <see cref="Fp16.FromSingle"/> (ggml's conversion) does.
    /// </summary>
    [Fact]
    public void The_vectorized_conversion_rounds_as_ggml_does()
    {
        var rng = new Random(17);
        var floats = new float[1 << 20];
        for (int i = 0; i < floats.Length; i++)
        {
            // Every exponent equally (random bit patterns), then values just around f16's ties and limits.
            floats[i] = BitConverter.UInt32BitsToSingle((uint)rng.NextInt64(0, 1L << 32));
            if (float.IsNaN(floats[i])) floats[i] = 0;
        }
        for (int i = 0; i < 4096; i++)
        {
            float tie = (Fp16.ToSingle((ushort)i) + Fp16.ToSingle((ushort)(i + 1))) / 2 * (i % 2 == 0 ? 1 : -1);
            floats[2 * i] = tie;
            floats[2 * i + 1] = BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(tie) + 1);
        }
        for (int i = 0; i < 4096; i++)
            floats[8192 + i] = (i % 2 == 0 ? 1 : -1) * (65504f + i * 0.01f);
        var halves = new Half[floats.Length];
        System.Numerics.Tensors.TensorPrimitives.ConvertToHalf(floats, halves);
        for (int i = 0; i < floats.Length; i++)
            if (BitConverter.HalfToUInt16Bits(halves[i]) != Fp16.FromSingle(floats[i]))
                Assert.Fail($"{floats[i]:R} (0x{BitConverter.SingleToUInt32Bits(floats[i]):X8}): 0x{BitConverter.HalfToUInt16Bits(halves[i]):X4}, ggml 0x{Fp16.FromSingle(floats[i]):X4}");
    }

    static Model LoadStories() => GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));

    static Model LoadQwen3() => GgufModelLoader.Load(TestData.Require("arch/arch-qwen3.gguf"));   // head dim 32: Q8_0 blocks fit its heads

    /// <summary>The largest logit of <paramref name="tokens"/>' last position over an f32 cache, and how far a cache of
    /// <paramref name="dtype"/> moves the logits from it.</summary>
    static (double Error, double MaxLogit) AgainstF32(Model model, int[] tokens, KvCacheDtype dtype)
    {
        using var forward = new CpuForward(model, maxBatchTokens: 8);
        using var exact = new SingleSequence(forward, tokens.Length);
        using var rounded = new SingleSequence(forward, tokens.Length, dtype);
        var a = new float[model.Config.VocabSize];
        var b = new float[model.Config.VocabSize];
        exact.Feed(tokens, a);
        rounded.Feed(tokens, b);
        return (a.Zip(b, (x, y) => Math.Abs((double)x - y)).Max(), a.Max(MathF.Abs));
    }

    [SkippableFact]
    public void Logits_over_an_f16_cache_stay_within_f16_rounding_of_the_f32_cache()
    {
        using var model = LoadStories();
        var (error, maxLogit) = AgainstF32(model, model.Tokenizer.Encode("Once upon a time there was a cat who liked to sit in the sun. She was happy.", addSpecial: true), KvCacheDtype.F16);
        // Keys and values carry 11 significant bits: an error of order 2^-11 of the logits' scale, not more, and not nothing.
        Assert.InRange(error, 1e-7 * maxLogit, 2e-3 * maxLogit);
    }

    [SkippableFact]
    public void Logits_over_a_q8_0_cache_stay_within_its_rounding_of_the_f32_cache()
    {
        using var model = LoadQwen3();
        // Eight tokens: this random model amplifies any difference as the sequence grows (an f16 cache's error grows
        // from 5e-4 to 1.3e-3 of the largest logit between 4 and 16 tokens, Q8_0's from 1.6e-2 to 4.9e-2).
        var (error, maxLogit) = AgainstF32(model, model.Tokenizer.Encode("Once upon a time there was a cat who liked to sit in the sun.", addSpecial: true)[..8], KvCacheDtype.Q8_0);
        // Each value within half a step of max|block| / 127 of its f32 value: a percent-level error (measured 2.5e-2), not
        // more, and not none.
        Assert.InRange(error, 1e-3 * maxLogit, 1e-1 * maxLogit);
    }

    static GenerationRequest Greedy(string prompt, int maxTokens) => new() { Prompt = prompt, Sampling = SamplingParams.Greedy with { MaxTokens = maxTokens, IgnoreEos = true } };

    static async Task<int[][]> RunAll(LlmEngine engine, IEnumerable<GenerationRequest> requests) =>
        (await Task.WhenAll(requests.Select(r => engine.CompleteAsync(r)))).Select(r => r.TokenIds).ToArray();

    /// <summary>
    /// Over a <paramref name="dtype"/> cache: the prompts run one at a time, then together (and a few twice, so prefix
    /// caching shares their blocks) in <paramref name="blocks"/> blocks, few enough to force preemptions, give the same
    /// greedy tokens; n = 3 seeded forks of one prompt (copy-on-write on the first divergent write) repeat; no block is
    /// left over. Returns the tokens of the runs one at a time.
    /// </summary>
    static async Task<int[][]> AssertBatchingPreemptionAndForksChangeNothing(Model model, KvCacheDtype dtype, string[] prompts, int maxTokens,
        int maxModelLen, int blocks, int batchedTokens)
    {
        int[][] alone;
        using (var single = new LlmEngine(model, new EngineOptions { MaxNumSeqs = 1, MaxModelLen = maxModelLen, KvCacheDtype = dtype }))
            alone = await RunAll(single, prompts.Select(p => Greedy(p, maxTokens)));

        using var tight = new LlmEngine(model, new EngineOptions { MaxModelLen = maxModelLen, NumKvBlocks = blocks, MaxNumBatchedTokens = batchedTokens, KvCacheDtype = dtype });
        Assert.Equal(dtype, ((CpuExecutor)tight.Executor).KvCacheDtype);
        var together = await RunAll(tight, prompts.Concat(prompts.Take(4)).Select(p => Greedy(p, maxTokens)));
        for (int i = 0; i < together.Length; i++) Assert.Equal(alone[i % prompts.Length], together[i]);
        Assert.True(tight.Stats.Preemptions > 0, "the tiny KV budget should have forced preemptions");
        Assert.Equal(tight.Stats.TotalKvBlocks, tight.Stats.FreeKvBlocks);

        var forked = new GenerationRequest { Prompt = "Lily", N = 3, Sampling = new SamplingParams { Temperature = 1f, Seed = 11, MaxTokens = 20, IgnoreEos = true } };
        var first = await tight.CompleteChoicesAsync(forked);
        Assert.Equal(first.Select(c => c.TokenIds), (await tight.CompleteChoicesAsync(forked)).Select(c => c.TokenIds));
        Assert.Equal(tight.Stats.TotalKvBlocks, tight.Stats.FreeKvBlocks);
        return alone;
    }

    [SkippableFact]
    public async Task Continuous_batching_preemption_and_forks_change_nothing_over_an_f16_cache()
    {
        using var model = LoadStories();
        var prompts = Core.LlmEngineTests.Prompts;
        // 10 blocks of 16: about three of the 24 sequences at once.
        var alone = await AssertBatchingPreemptionAndForksChangeNothing(model, KvCacheDtype.F16, prompts, maxTokens: 40, maxModelLen: 128, blocks: 10, batchedTokens: 64);

        // On this model the f16 cache's rounding moves no greedy pick of the 24 prompts × 40 tokens (the README says so).
        using var exact = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        Assert.Equal(await RunAll(exact, prompts.Select(p => Greedy(p, 40))), alone);
    }

    [SkippableFact]
    public async Task Continuous_batching_preemption_and_forks_change_nothing_over_a_q8_0_cache()
    {
        using var model = LoadQwen3();
        await AssertBatchingPreemptionAndForksChangeNothing(model, KvCacheDtype.Q8_0, [.. Core.LlmEngineTests.Prompts.Take(12)], maxTokens: 24,
            maxModelLen: 64, blocks: 8, batchedTokens: 32);
    }

    [SkippableFact]
    public void A_q8_0_cache_holds_128_of_34_the_tokens_and_is_refused_for_a_head_dimension_of_8()
    {
        using (var model = LoadQwen3())
        {
            var budget = new EngineOptions { MaxModelLen = 64, KvCacheMemoryBytes = 1 << 20 };
            using var exact = new LlmEngine(model, budget);
            using var q8 = new LlmEngine(model, budget with { KvCacheDtype = KvCacheDtype.Q8_0 });
            // 1 MiB / (2 × 3 layers × 16 slots × 64 values × 34/32 bytes) = 160 blocks, against 42 in f32 (4 bytes a value).
            Assert.Equal(42, exact.Stats.TotalKvBlocks);
            Assert.Equal(160, q8.Stats.TotalKvBlocks);
        }
        using var stories = LoadStories();
        var e = Assert.Throws<ArgumentException>(() => new LlmEngine(stories, new EngineOptions { MaxModelLen = 64, KvCacheDtype = KvCacheDtype.Q8_0 }));
        Assert.Contains("--kv-cache-dtype q8_0 needs a head dimension that is a multiple of 32", e.Message);
        Assert.EndsWith("this model's is 8", e.Message);
    }

    [SkippableFact]
    public void The_same_budget_holds_twice_the_blocks()
    {
        using var model = LoadStories();
        var budget = new EngineOptions { MaxModelLen = 128, KvCacheMemoryBytes = 1 << 20 };
        using var exact = new LlmEngine(model, budget);
        using var half = new LlmEngine(model, budget with { KvCacheDtype = KvCacheDtype.F16 });
        Assert.Equal(2 * exact.Stats.TotalKvBlocks, half.Stats.TotalKvBlocks);
        Assert.Equal(KvCacheDtype.F32, ((CpuExecutor)exact.Executor).KvCacheDtype);
        Assert.Equal(KvCacheDtype.F16, ((CpuExecutor)half.Executor).KvCacheDtype);
    }
}
