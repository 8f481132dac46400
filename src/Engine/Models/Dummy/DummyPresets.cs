namespace TokenMill.Models.Dummy;

/// <summary>
/// A dummy model's shape; <paramref name="TiedEmbeddings"/>: the classifier is the embedding matrix;
/// <paramref name="TokenizerFamily"/>: which real <c>tokenizer.json</c> the family publishes (<c>llama3</c>, <c>qwen3</c>,
/// <c>gemma3</c>), used when <c>--tokenizer</c> names a folder holding it; null when none fits the vocabulary.
/// </summary>
public sealed record DummyPreset(ModelConfig Config, bool TiedEmbeddings, string? TokenizerFamily = null)
{
    /// <summary>Qwen2 carries q/k/v biases.</summary>
    public bool HasQkvBias => Config.Architecture == "qwen2";

    /// <summary>Qwen3 and Gemma 3 normalize q and k per head before rope.</summary>
    public bool HasQkNorm => Config.Architecture is "qwen3" or "gemma3";

    /// <summary>Gemma 3 normalizes the attention and MLP outputs too (four norms per layer).</summary>
    public bool HasPostNorms => Config.Architecture == "gemma3";
}

/// <summary>
/// Shapes of real architectures, copied from each model's published config.json, for
/// <c>dummy:&lt;preset&gt;</c> models: random weights in exactly the shape of the real thing,
/// so benchmarks measure real matrix sizes without downloading anything.
/// </summary>
public static class DummyPresets
{
    public static IReadOnlyDictionary<string, DummyPreset> All { get; } = new Dictionary<string, DummyPreset>(StringComparer.OrdinalIgnoreCase)
    {
        // TinyLlama/TinyLlama-1.1B-Chat-v1.0
        ["tinyllama-1.1b"] = new(Llama(vocab: 32000, d: 2048, layers: 22, heads: 32, kvHeads: 4, ff: 5632, ctx: 2048, ropeBase: 10000f), TiedEmbeddings: false),
        // meta-llama/Llama-3.2-1B: tied embeddings, Llama 3 rope scaling (factor 32, low 1, high 4, original 8192)
        ["llama-3.2-1b"] = new(Llama(vocab: 128256, d: 2048, layers: 16, heads: 32, kvHeads: 8, ff: 8192, ctx: 131072, ropeBase: 500000f) with
        {
            RopeFreqFactors = Llama3RopeFactors(ropeBase: 500000f, headDim: 64, factor: 32f, lowFreqFactor: 1f, highFreqFactor: 4f, originalContext: 8192),
        }, TiedEmbeddings: true),
        // meta-llama/Llama-2-7b-hf
        ["llama-2-7b"] = new(Llama(vocab: 32000, d: 4096, layers: 32, heads: 32, kvHeads: 32, ff: 11008, ctx: 4096, ropeBase: 10000f), TiedEmbeddings: false),
        // meta-llama/Llama-3.1-8B
        ["llama-3.1-8b"] = new(Llama(vocab: 128256, d: 4096, layers: 32, heads: 32, kvHeads: 8, ff: 14336, ctx: 131072, ropeBase: 500000f) with
        {
            RopeFreqFactors = Llama3RopeFactors(ropeBase: 500000f, headDim: 128, factor: 8f, lowFreqFactor: 1f, highFreqFactor: 4f, originalContext: 8192),
        }, TiedEmbeddings: false, TokenizerFamily: "llama3"),
        // Qwen/Qwen2.5-0.5B: q/k/v biases, NEOX rope, tied embeddings
        ["qwen2.5-0.5b"] = new(Qwen2(vocab: 151936, d: 896, layers: 24, heads: 14, kvHeads: 2, ff: 4864, ctx: 32768), TiedEmbeddings: true),
        // Qwen/Qwen2.5-1.5B
        ["qwen2.5-1.5b"] = new(Qwen2(vocab: 151936, d: 1536, layers: 28, heads: 12, kvHeads: 2, ff: 8960, ctx: 32768), TiedEmbeddings: true),
        // Qwen/Qwen3-0.6B: head_dim 128 ≠ 1024 / 16, q/k norms, tied embeddings, max_position_embeddings 40960
        ["qwen3-0.6b"] = new(Qwen3(d: 1024, layers: 28, heads: 16, kvHeads: 8, ff: 3072), TiedEmbeddings: true, TokenizerFamily: "qwen3"),
        // Qwen/Qwen3-8B
        ["qwen3-8b"] = new(Qwen3(d: 4096, layers: 36, heads: 32, kvHeads: 8, ff: 12288), TiedEmbeddings: false, TokenizerFamily: "qwen3"),
        // google/gemma-3-1b-it: 26 layers, 4 heads of 256 over one kv head, GeGLU, embedding scale sqrt(1152); five of
        // every six layers see a 512-token window with rope base 10,000, the sixth is global with base 1,000,000
        // (no rope scaling at 1B); tied embeddings; max_position_embeddings 32768
        ["gemma3-1b"] = new(Shape("gemma3", vocab: 262144, d: 1152, layers: 26, heads: 4, kvHeads: 1, ff: 6912, ctx: 32768,
            ropeBase: 1000000f, RopeType.Neox, rmsEps: 1e-6f, headDim: 256) with
        {
            EmbeddingScale = MathF.Sqrt(1152),
            Activation = FfnActivation.GeluTanh,
            SlidingWindow = 512,
            SlidingWindowPattern = 6,
            RopeFreqBaseSwa = 10000f,
        }, TiedEmbeddings: true, TokenizerFamily: "gemma3"),
        // microsoft/Phi-3-mini-4k-instruct: vocab 32064 (Llama 2's 32000 + 64 added), 32 heads of 96, no GQA;
        // its sliding_window 2047 is ignored, as llama.cpp and our Phi3ForCausalLM loader do
        ["phi3-mini"] = new(Shape("phi3", vocab: 32064, d: 3072, layers: 32, heads: 32, kvHeads: 32, ff: 8192, ctx: 4096,
            ropeBase: 10000f, RopeType.Neox, rmsEps: 1e-5f), TiedEmbeddings: false),
    };

    static ModelConfig Qwen3(int d, int layers, int heads, int kvHeads, int ff) =>
        Shape("qwen3", vocab: 151936, d, layers, heads, kvHeads, ff, ctx: 40960, ropeBase: 1000000f, RopeType.Neox, rmsEps: 1e-6f, headDim: 128);

    static ModelConfig Llama(int vocab, int d, int layers, int heads, int kvHeads, int ff, int ctx, float ropeBase) =>
        Shape("llama", vocab, d, layers, heads, kvHeads, ff, ctx, ropeBase, RopeType.Norm, rmsEps: 1e-5f);

    static ModelConfig Qwen2(int vocab, int d, int layers, int heads, int kvHeads, int ff, int ctx) =>
        Shape("qwen2", vocab, d, layers, heads, kvHeads, ff, ctx, ropeBase: 1000000f, RopeType.Neox, rmsEps: 1e-6f);

    static ModelConfig Shape(string arch, int vocab, int d, int layers, int heads, int kvHeads, int ff, int ctx, float ropeBase,
        RopeType rope, float rmsEps, int? headDim = null) => new()
    {
        Architecture = arch,
        VocabSize = vocab,
        EmbeddingLength = d,
        BlockCount = layers,
        FeedForwardLength = ff,
        HeadCount = heads,
        HeadCountKv = kvHeads,
        HeadDim = headDim ?? d / heads,
        ValueHeadDim = headDim ?? d / heads,
        ContextLength = ctx,
        RmsNormEps = rmsEps,
        RopeType = rope,
        RopeDimensionCount = headDim ?? d / heads,
        RopeFreqBase = ropeBase,
    };

    /// <summary>
    /// Llama 3.1 rope scaling as the GGUF converter bakes it into <c>rope_freqs.weight</c>: one divisor per
    /// frequency — 1 for short wavelengths, <paramref name="factor"/> for long ones, smoothly in between.
    /// </summary>
    public static float[] Llama3RopeFactors(float ropeBase, int headDim, float factor, float lowFreqFactor, float highFreqFactor, int originalContext)
    {
        double lowFreqWavelen = originalContext / lowFreqFactor;
        double highFreqWavelen = originalContext / highFreqFactor;
        var factors = new float[headDim / 2];
        for (int i = 0; i < factors.Length; i++)
        {
            double freq = 1.0 / Math.Pow(ropeBase, 2.0 * i / headDim);
            double wavelen = 2 * Math.PI / freq;
            if (wavelen < highFreqWavelen) factors[i] = 1f;
            else if (wavelen > lowFreqWavelen) factors[i] = factor;
            else
            {
                double smooth = (originalContext / wavelen - lowFreqFactor) / (highFreqFactor - lowFreqFactor);
                factors[i] = (float)(1 / ((1 - smooth) / factor + smooth));
            }
        }
        return factors;
    }
}
