using TokenMill.Models.Gguf;
using TokenMill.Tokenization;

namespace TokenMill.Models.Dummy;

/// <summary>
/// Writes a dummy model as a GGUF file, so that another engine (llama.cpp's <c>llama-bench</c>, <c>llama-server</c>)
/// can run the very weights TokenMill benchmarks, and TokenMill can load them back from the file.
/// </summary>
/// <remarks>
/// Llama, Qwen2 and Qwen3 shapes, with the metadata keys and tensor names llama.cpp's converter writes for them
/// (norm vectors and biases in F32, the matrices in the model's type). The vocabulary is the dummy model's
/// cl100k_base cut to its size, written as a byte-level BPE (<see cref="Cl100kFittedTokenizer.GgufMetadata"/>), or the
/// <c>tokenizer.*</c> keys of another GGUF file with as many tokens.
/// </remarks>
public static class DummyGguf
{
    /// <summary>The architectures <see cref="Write"/> takes.</summary>
    public static readonly IReadOnlySet<string> Architectures = new HashSet<string> { "llama", "qwen2", "qwen3" };

    /// <summary>
    /// Writes <paramref name="model"/> (made by <see cref="DummyModelFactory"/>) to <paramref name="output"/>, with the
    /// tokenizer keys of <paramref name="vocabulary"/> when given.
    /// </summary>
    /// <exception cref="NotSupportedException">The architecture or a feature of it (rope scaling, sliding windows, an
    /// embedding scale) has no writer here, or the model's tokenizer is not the cl100k one dummy models get.</exception>
    /// <exception cref="ArgumentException"><paramref name="vocabulary"/> has no tokens, or not as many as the model's rows.</exception>
    public static void Write(Model model, Stream output, GgufFile? vocabulary = null)
    {
        var c = model.Config;
        string arch = c.Architecture;
        EnsureWritable(c, model.Name);

        var metadata = new List<KeyValuePair<string, GgufValue>>
        {
            new("general.architecture", Str(arch)),
            new("general.name", Str(model.Name)),
            new("general.file_type", U32(FileType(model.Weights.Layers[0].Wq.Type))),
            new($"{arch}.context_length", U32(c.ContextLength)),
            new($"{arch}.embedding_length", U32(c.EmbeddingLength)),
            new($"{arch}.block_count", U32(c.BlockCount)),
            new($"{arch}.feed_forward_length", U32(c.FeedForwardLength)),
            new($"{arch}.attention.head_count", U32(c.HeadCount)),
            new($"{arch}.attention.head_count_kv", U32(c.HeadCountKv)),
            new($"{arch}.attention.key_length", U32(c.HeadDim)),
            new($"{arch}.attention.value_length", U32(c.ValueHeadDim)),
            new($"{arch}.attention.layer_norm_rms_epsilon", new(GgufValueType.Float32, c.RmsNormEps)),
            new($"{arch}.rope.dimension_count", U32(c.RopeDimensionCount)),
            new($"{arch}.rope.freq_base", new(GgufValueType.Float32, c.RopeFreqBase)),
            new($"{arch}.vocab_size", U32(c.VocabSize)),
        };
        metadata.AddRange(TokenizerKeys(model, vocabulary));

        var tensors = new List<GgufTensorSource>();
        var pinned = new List<System.Runtime.InteropServices.GCHandle>();
        try
        {
            void Vector(string name, float[]? v)
            {
                if (v is null) return;
                var handle = System.Runtime.InteropServices.GCHandle.Alloc(v, System.Runtime.InteropServices.GCHandleType.Pinned);
                pinned.Add(handle);
                tensors.Add(new(name, GgmlType.F32, [v.Length], handle.AddrOfPinnedObject()));
            }
            unsafe void Matrix(string name, WeightTensor t) => tensors.Add(new(name, t.Type, [t.Columns, t.Rows], (nint)t.Data));

            var w = model.Weights;
            Matrix("token_embd.weight", w.TokenEmbedding);
            Vector("rope_freqs.weight", c.RopeFreqFactors);
            for (int i = 0; i < w.Layers.Length; i++)
            {
                var l = w.Layers[i];
                string p = $"blk.{i}.";
                Vector(p + "attn_norm.weight", l.AttnNorm);
                Matrix(p + "attn_q.weight", l.Wq);
                Matrix(p + "attn_k.weight", l.Wk);
                Matrix(p + "attn_v.weight", l.Wv);
                Vector(p + "attn_q.bias", l.Bq);
                Vector(p + "attn_k.bias", l.Bk);
                Vector(p + "attn_v.bias", l.Bv);
                Vector(p + "attn_q_norm.weight", l.QNorm);
                Vector(p + "attn_k_norm.weight", l.KNorm);
                Matrix(p + "attn_output.weight", l.Wo);
                Vector(p + "ffn_norm.weight", l.FfnNorm);
                Matrix(p + "ffn_gate.weight", l.Gate);
                Matrix(p + "ffn_up.weight", l.Up);
                Matrix(p + "ffn_down.weight", l.Down);
            }
            Vector("output_norm.weight", w.OutputNorm);
            if (!ReferenceEquals(w.Output, w.TokenEmbedding)) Matrix("output.weight", w.Output); // tied: none, as llama.cpp writes it
            GgufWriter.Write(output, metadata, tensors);
        }
        finally
        {
            foreach (var h in pinned) h.Free();
        }
    }

    /// <summary>Throws unless <see cref="Write"/> writes models of shape <paramref name="config"/> (<paramref name="name"/> names it in the message).</summary>
    /// <exception cref="NotSupportedException">The architecture or a feature of it has no writer here.</exception>
    public static void EnsureWritable(ModelConfig config, string name)
    {
        if (!Architectures.Contains(config.Architecture))
            throw new NotSupportedException($"{name}: writing {config.Architecture} models as GGUF is not supported (supported: {string.Join(", ", Architectures)})");
        if (config.RopeLinearScale != 1f || config.SlidingWindow != 0 || config.EmbeddingScale != 1f || config.Activation != FfnActivation.Silu)
            throw new NotSupportedException($"{name}: rope scaling, sliding windows and embedding scales have no GGUF writer here");
    }

    /// <summary>llama.cpp's <c>llama_ftype</c> for a model whose matrices are all <paramref name="type"/>.</summary>
    static int FileType(GgmlType type) => type switch
    {
        GgmlType.F32 => 0,
        GgmlType.F16 => 1,
        GgmlType.Q4_0 => 2,
        GgmlType.Q8_0 => 7,
        GgmlType.Q4_K => 15, // MOSTLY_Q4_K_M, the nearest llama.cpp names
        GgmlType.Q6_K => 18,
        GgmlType.BF16 => 32,
        _ => throw new NotSupportedException($"no llama.cpp file type for {type} weights"),
    };

    static IEnumerable<KeyValuePair<string, GgufValue>> TokenizerKeys(Model model, GgufFile? vocabulary)
    {
        if (vocabulary is null)
            return model.Tokenizer is Cl100kFittedTokenizer cl100k
                ? cl100k.GgufMetadata()
                : throw new NotSupportedException($"{model.Name}'s tokenizer has no GGUF writer here; give a GGUF file whose vocabulary to copy");
        int tokens = vocabulary.GetArray("tokenizer.ggml.tokens")?.Length
            ?? throw new ArgumentException($"{vocabulary.Path} has no tokenizer.ggml.tokens to copy");
        if (tokens != model.Config.VocabSize)
            throw new ArgumentException($"{vocabulary.Path} has {tokens} tokens but {model.Name} has {model.Config.VocabSize} vocabulary rows");
        return vocabulary.Metadata.Where(kv => kv.Key.StartsWith("tokenizer.", StringComparison.Ordinal));
    }

    static GgufValue Str(string s) => new(GgufValueType.String, s);

    static GgufValue U32(int v) => new(GgufValueType.UInt32, checked((uint)v));
}
