using TokenMill.Memory;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;
using TokenMill.Tokenization;

namespace TokenMill.Models.Dummy;

/// <summary>
/// Builds <c>dummy:&lt;preset&gt;</c> models: seeded random weights in the exact shape of a real
/// architecture, stored in a chosen dtype, with a real tokenizer (cl100k_base from
/// Microsoft.ML.Tokenizers' data package, fitted to the preset's vocabulary). The text they write
/// is noise; their cost per token is that of the real model.
/// </summary>
public static class DummyModelFactory
{
    public const string Prefix = "dummy:";

    /// <summary>Weight types a dummy model can be stored in.</summary>
    public static IReadOnlyList<GgmlType> SupportedDTypes { get; } = [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_0, GgmlType.Q4_K, GgmlType.Q6_K];

    public static bool IsDummy(string model) => model.StartsWith(Prefix, StringComparison.OrdinalIgnoreCase);

    /// <summary>The model <c>dummy:&lt;preset&gt;</c> names, with seeded random weights.</summary>
    /// <param name="model">The name, <c>dummy:&lt;preset&gt;</c> or just the preset.</param>
    /// <param name="dtype">The weight type (<see cref="SupportedDTypes"/>).</param>
    /// <param name="seed">Seed of the random weights: the same seed gives the same model.</param>
    /// <param name="tokenizer">The tokenizer to use (e.g. the family's real <c>tokenizer.json</c>); null: cl100k_base fitted to the vocabulary.</param>
    /// <param name="blockCount">Build only this many layers (tests: the exact widths at a fraction of the memory); null: the preset's.</param>
    /// <param name="valuesOf">
    /// With <paramref name="dtype"/> F32: weights stored in f32 that hold this type's values (each random value rounded
    /// through it), as an F32 GGUF converted from a bf16 or f16 checkpoint does (<c>--dummy-values</c>); null: full f32 values.
    /// </param>
    public static Model Create(string model, GgmlType dtype, ulong seed = 0, ITokenizer? tokenizer = null, int? blockCount = null, GgmlType? valuesOf = null)
    {
        string name = IsDummy(model) ? model[Prefix.Length..] : model;
        if (!DummyPresets.All.TryGetValue(name, out var preset))
            throw new ArgumentException($"unknown dummy preset '{name}' (known: {string.Join(", ", DummyPresets.All.Keys)})", nameof(model));
        return Create(preset, name.ToLowerInvariant(), dtype, seed, tokenizer, blockCount, valuesOf);
    }

    /// <summary>A dummy model of any shape (a preset scaled down for tests); <paramref name="name"/> follows <c>dummy:</c>.</summary>
    /// <param name="preset">The shape.</param>
    /// <param name="name">The model's name after <c>dummy:</c>.</param>
    /// <param name="dtype">As in <see cref="Create(string, GgmlType, ulong, ITokenizer?, int?, GgmlType?)"/>.</param>
    /// <param name="seed">As in <see cref="Create(string, GgmlType, ulong, ITokenizer?, int?, GgmlType?)"/>.</param>
    /// <param name="tokenizer">As in <see cref="Create(string, GgmlType, ulong, ITokenizer?, int?, GgmlType?)"/>.</param>
    /// <param name="blockCount">As in <see cref="Create(string, GgmlType, ulong, ITokenizer?, int?, GgmlType?)"/>.</param>
    /// <param name="valuesOf">As in <see cref="Create(string, GgmlType, ulong, ITokenizer?, int?, GgmlType?)"/>.</param>
    public static Model Create(DummyPreset preset, string name, GgmlType dtype, ulong seed = 0, ITokenizer? tokenizer = null, int? blockCount = null,
        GgmlType? valuesOf = null)
    {
        if (!SupportedDTypes.Contains(dtype))
            throw new ArgumentException($"dtype {dtype} is not supported for dummy models (supported: {string.Join(", ", SupportedDTypes)})", nameof(dtype));
        if (valuesOf is { } values && (dtype != GgmlType.F32 || !SupportedDTypes.Contains(values)))
            throw new ArgumentException(dtype != GgmlType.F32
                ? $"the values of another type ({values}) apply to F32 weights only, not {dtype}"
                : $"values of {values} are not supported for dummy models (supported: {string.Join(", ", SupportedDTypes)})", nameof(valuesOf));
        preset.Config.Validate(Prefix + name);

        var c = preset.Config;
        if (blockCount is int n)
        {
            ArgumentOutOfRangeException.ThrowIfLessThan(n, 1, nameof(blockCount));
            c = c with { BlockCount = Math.Min(n, c.BlockCount) };
        }
        // A matrix row is whole blocks (256 elements for the K-quants). llama.cpp would fall back to another type
        // for a tensor that does not fit; a dummy model has one type, so it is refused instead.
        int blockSize = GgmlTypeInfo.Of(valuesOf ?? dtype).BlockSize;
        foreach (var (what, columns) in new[] { ("embedding length", c.EmbeddingLength), ("query width", c.QDim), ("feed-forward length", c.FeedForwardLength) })
            if (columns % blockSize != 0)
                throw new ArgumentException(
                    $"{(valuesOf is { } v ? $"values of {v}" : $"dtype {dtype}")} store{(valuesOf is null ? "s" : "")} rows in blocks of {blockSize}, but {Prefix}{name}'s {what} is {columns}; choose another dtype", nameof(dtype));
        tokenizer = FitTokenizer(tokenizer, c.VocabSize, name) ?? TokenizerLoader.Cl100kFitted(c.VocabSize);
        var owners = new List<IDisposable>();
        try
        {
            var random = new WeightRandom(seed);
            WeightTensor Matrix(string tensor, int rows, int cols) => random.Matrix(tensor, rows, cols, dtype, valuesOf, owners);

            var layers = new LayerWeights[c.BlockCount];
            for (int i = 0; i < c.BlockCount; i++)
            {
                string p = $"blk.{i}.";
                layers[i] = new LayerWeights
                {
                    AttnNorm = Ones(c.EmbeddingLength),
                    Wq = Matrix(p + "attn_q.weight", c.QDim, c.EmbeddingLength),
                    Wk = Matrix(p + "attn_k.weight", c.KvDim, c.EmbeddingLength),
                    Wv = Matrix(p + "attn_v.weight", c.KvDim, c.EmbeddingLength),
                    Wo = Matrix(p + "attn_output.weight", c.EmbeddingLength, c.QDim),
                    Bq = preset.HasQkvBias ? random.Vector(p + "attn_q.bias", c.QDim, 0.1f) : null,
                    Bk = preset.HasQkvBias ? random.Vector(p + "attn_k.bias", c.KvDim, 0.1f) : null,
                    Bv = preset.HasQkvBias ? random.Vector(p + "attn_v.bias", c.KvDim, 0.1f) : null,
                    QNorm = preset.HasQkNorm ? Ones(c.HeadDim) : null,
                    KNorm = preset.HasQkNorm ? Ones(c.HeadDim) : null,
                    PostAttnNorm = preset.HasPostNorms ? Ones(c.EmbeddingLength) : null,
                    PostFfnNorm = preset.HasPostNorms ? Ones(c.EmbeddingLength) : null,
                    FfnNorm = Ones(c.EmbeddingLength),
                    Gate = Matrix(p + "ffn_gate.weight", c.FeedForwardLength, c.EmbeddingLength),
                    Up = Matrix(p + "ffn_up.weight", c.FeedForwardLength, c.EmbeddingLength),
                    Down = Matrix(p + "ffn_down.weight", c.EmbeddingLength, c.FeedForwardLength),
                };
            }
            var embedding = Matrix("token_embd.weight", c.VocabSize, c.EmbeddingLength);
            var weights = new ModelWeights
            {
                TokenEmbedding = embedding,
                Layers = layers,
                OutputNorm = Ones(c.EmbeddingLength),
                Output = preset.TiedEmbeddings ? embedding : Matrix("output.weight", c.VocabSize, c.EmbeddingLength),
            };
            return new Model($"{Prefix}{name}", c, weights, tokenizer, owners);
        }
        catch
        {
            foreach (var o in owners) o.Dispose();
            throw;
        }
    }

    /// <summary>
    /// <paramref name="tokenizer"/> made to fit <paramref name="vocab"/> rows: a <c>tokenizer.json</c> is padded with
    /// ids that decode to nothing (the model's padding rows) or may exceed the rows by special tokens only.
    /// </summary>
    static ITokenizer? FitTokenizer(ITokenizer? tokenizer, int vocab, string preset)
    {
        if (tokenizer is Tokenization.HuggingFace.HfTokenizer hf && hf.FitsVocabulary(vocab)) return hf.PaddedTo(vocab);
        if (tokenizer is not null && tokenizer.VocabSize > vocab)
            throw new ArgumentException($"the tokenizer has {tokenizer.VocabSize} tokens but dummy:{preset} has {vocab} vocabulary rows", nameof(tokenizer));
        return tokenizer;
    }

    static float[] Ones(int n)
    {
        var v = new float[n];
        Array.Fill(v, 1f);
        return v;
    }

    /// <summary>
    /// Deterministic weights: every row has its own SplitMix64 stream keyed by (seed, tensor name, row),
    /// so rows fill in parallel and a given seed always gives the same model.
    /// </summary>
    sealed class WeightRandom(ulong seed)
    {
        public unsafe WeightTensor Matrix(string name, int rows, int cols, GgmlType dtype, GgmlType? valuesOf, List<IDisposable> owners)
        {
            long rowBytes = GgmlTypeInfo.RowBytes(dtype, cols);
            var buffer = new NativeBuffer(rowBytes * rows, zero: false);
            owners.Add(buffer);
            byte* basePtr = buffer.Pointer;
            ulong key = Key(name);
            // Uniform in [−a, a] has std a/√3: pick std 1/√cols so every product keeps activations O(1).
            float amplitude = MathF.Sqrt(3f / cols);
            long throughBytes = valuesOf is { } through ? GgmlTypeInfo.RowBytes(through, cols) : 0;
            Parallel.For(0, rows, () => (new float[cols], new byte[throughBytes]), (r, _, scratch) =>
            {
                Fill(key, (ulong)r, scratch.Item1, amplitude);
                if (valuesOf is { } type)
                {
                    Quantize.Row(type, scratch.Item1, scratch.Item2);
                    Dequantize.Row(type, scratch.Item2, scratch.Item1);
                }
                Quantize.Row(dtype, scratch.Item1, new Span<byte>(basePtr + r * rowBytes, (int)rowBytes));
                return scratch;
            }, _ => { });
            return new WeightTensor(name, dtype, rows, cols, basePtr);
        }

        public float[] Vector(string name, int length, float amplitude)
        {
            var v = new float[length];
            Fill(Key(name), 0, v, amplitude);
            return v;
        }

        ulong Key(string name)
        {
            ulong h = 14695981039346656037UL ^ seed; // FNV-1a offset basis, mixed with the seed
            foreach (char ch in name) h = (h ^ ch) * 1099511628211UL;
            return h;
        }

        static void Fill(ulong key, ulong row, Span<float> values, float amplitude)
        {
            // Hash the row into the start state so neighbouring rows get unrelated streams.
            ulong state = Mix(key ^ Mix(row + 1));
            for (int i = 0; i < values.Length; i++)
            {
                ulong z = Mix(state += 0x9E3779B97F4A7C15UL);
                float unit = (z >> 40) * (1f / (1 << 24)); // 24 random bits → [0, 1)
                values[i] = (2f * unit - 1f) * amplitude;
            }
        }

        /// <summary>SplitMix64's finalizer (Steele, Lea, Flood 2014): three xor-shift-multiplies.</summary>
        static ulong Mix(ulong z)
        {
            z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9UL;
            z = (z ^ (z >> 27)) * 0x94D049BB133111EBUL;
            return z ^ (z >> 31);
        }
    }
}
