using System.Text.Json;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;

namespace TokenMill.Tests.Models.HuggingFace;

/// <summary>
/// One set of random weights of a small Llama/Qwen2/Qwen3 decoder, written two ways: as a Hugging Face
/// folder (<c>config.json</c> + <c>model.safetensors</c>, names and layouts as transformers saves them)
/// and as a GGUF file the way llama.cpp's <c>convert_hf_to_gguf.py</c> writes the same checkpoint
/// (tensor names mapped, dimensions reversed, Llama's q/k rows permuted for adjacent-pair RoPE,
/// Llama 3 rope scaling as a <c>rope_freqs.weight</c> tensor).
/// </summary>
internal sealed class HfTestModel
{
    public required string Arch { get; init; }
    public int Hidden { get; init; } = 64;
    public int Layers { get; init; } = 2;
    public int Heads { get; init; } = 4;
    public int KvHeads { get; init; } = 2;
    public int? HeadDimOverride { get; init; }
    public int Ff { get; init; } = 128;
    public int Vocab { get; init; } = 100;
    public int Context { get; init; } = 64;
    public float RopeTheta { get; init; } = 10000f;
    public bool Tied { get; init; }
    public bool Llama3Scaling { get; init; }
    public bool BF16 { get; init; }
    public int Seed { get; init; } = 1;

    public int HeadDim => HeadDimOverride ?? Hidden / Heads;

    /// <summary>Gemma 3's sliding window here: shorter than the test's 11 positions, so it matters.</summary>
    public const int GemmaWindow = 4;

    /// <summary>HF name → (PyTorch shape, values), in the order transformers would save them.</summary>
    public List<(string Name, long[] Shape, float[] Values)> Weights()
    {
        var random = new Random(Seed);
        float[] Uniform(long n, float scale, float center = 0f) =>
            [.. Enumerable.Range(0, (int)n).Select(_ => Round(center + scale * (2 * random.NextSingle() - 1)))];
        var list = new List<(string, long[], float[])>();
        void Add(string name, long[] shape, float scale, float center = 0f) =>
            list.Add((name, shape, Uniform(shape.Aggregate(1L, (a, b) => a * b), scale, center)));

        int q = Heads * HeadDim, kv = KvHeads * HeadDim;
        Add("model.embed_tokens.weight", [Vocab, Hidden], 1f);
        bool gemma = Arch == "gemma3";
        float normCenter = gemma ? 0f : 1f; // Gemma stores w of (1 + w)
        for (int i = 0; i < Layers; i++)
        {
            string p = $"model.layers.{i}.";
            Add(p + "input_layernorm.weight", [Hidden], 0.2f, normCenter);
            if (Arch == "phi3")
            {
                Add(p + "self_attn.qkv_proj.weight", [q + 2 * kv, Hidden], 0.3f);
            }
            else
            {
                Add(p + "self_attn.q_proj.weight", [q, Hidden], 0.3f);
                Add(p + "self_attn.k_proj.weight", [kv, Hidden], 0.3f);
                Add(p + "self_attn.v_proj.weight", [kv, Hidden], 0.3f);
            }
            if (Arch == "qwen2")
            {
                Add(p + "self_attn.q_proj.bias", [q], 0.2f);
                Add(p + "self_attn.k_proj.bias", [kv], 0.2f);
                Add(p + "self_attn.v_proj.bias", [kv], 0.2f);
            }
            if (Arch is "qwen3" or "gemma3")
            {
                Add(p + "self_attn.q_norm.weight", [HeadDim], 0.2f, normCenter);
                Add(p + "self_attn.k_norm.weight", [HeadDim], 0.2f, normCenter);
            }
            Add(p + "self_attn.o_proj.weight", [Hidden, q], 0.3f);
            Add(p + "post_attention_layernorm.weight", [Hidden], 0.2f, normCenter);
            if (gemma)
            {
                Add(p + "pre_feedforward_layernorm.weight", [Hidden], 0.2f, normCenter);
                Add(p + "post_feedforward_layernorm.weight", [Hidden], 0.2f, normCenter);
            }
            if (Arch == "phi3")
            {
                Add(p + "mlp.gate_up_proj.weight", [2 * Ff, Hidden], 0.3f);
            }
            else
            {
                Add(p + "mlp.gate_proj.weight", [Ff, Hidden], 0.3f);
                Add(p + "mlp.up_proj.weight", [Ff, Hidden], 0.3f);
            }
            Add(p + "mlp.down_proj.weight", [Hidden, Ff], 0.2f);
        }
        Add("model.norm.weight", [Hidden], 0.2f, normCenter);
        if (!Tied) Add("lm_head.weight", [Vocab, Hidden], 0.5f);
        return list;
    }

    /// <summary>Values are made representable in BF16 for the BF16 variant, so the GGUF's F32 norms hold the same numbers.</summary>
    float Round(float v) => BF16 ? SafetensorsTestWriter.FromBF16(SafetensorsTestWriter.ToBF16(v)) : v;

    string HfArchitecture => Arch switch
    {
        "llama" => "LlamaForCausalLM",
        "qwen2" => "Qwen2ForCausalLM",
        "qwen3" => "Qwen3ForCausalLM",
        "phi3" => "Phi3ForCausalLM",
        "gemma3" => "Gemma3ForCausalLM",
        _ => throw new ArgumentException(Arch),
    };

    public Dictionary<string, object?> Config()
    {
        var config = new Dictionary<string, object?>
        {
            ["architectures"] = new[] { HfArchitecture },
            ["model_type"] = Arch,
            ["hidden_size"] = Hidden,
            ["num_hidden_layers"] = Layers,
            ["intermediate_size"] = Ff,
            ["num_attention_heads"] = Heads,
            ["num_key_value_heads"] = KvHeads,
            ["hidden_act"] = "silu",
            ["rms_norm_eps"] = 1e-6,
            ["rope_theta"] = RopeTheta,
            ["max_position_embeddings"] = Context,
            ["vocab_size"] = Vocab,
            ["tie_word_embeddings"] = Tied,
            ["torch_dtype"] = BF16 ? "bfloat16" : "float32",
            ["rope_scaling"] = Llama3Scaling
                ? new Dictionary<string, object> { ["rope_type"] = "llama3", ["factor"] = 8.0, ["low_freq_factor"] = 1.0, ["high_freq_factor"] = 4.0, ["original_max_position_embeddings"] = 64 }
                : null,
        };
        if (HeadDimOverride is { } hd) config["head_dim"] = hd;
        if (Arch == "llama") config["attention_bias"] = false;
        if (Arch == "gemma3")
        {
            config.Remove("hidden_act");
            config["hidden_activation"] = "gelu_pytorch_tanh";
            config["query_pre_attn_scalar"] = HeadDim;
            config["sliding_window"] = GemmaWindow;
            // Layer il is global iff il % 3 == 2, written the newer way (transformers ≥ 4.53).
            config["layer_types"] = Enumerable.Range(0, Layers).Select(il => il % 3 == 2 ? "full_attention" : "sliding_attention").ToArray();
            config["rope_local_base_freq"] = 10000.0;
            config["rope_scaling"] = new Dictionary<string, object> { ["rope_type"] = "linear", ["factor"] = 8.0 };
            config["final_logit_softcapping"] = null;
            config["attn_logit_softcapping"] = null;
        }
        return config;
    }

    /// <summary>
    /// Writes config.json and model.safetensors into <paramref name="directory"/>; with <paramref name="shards"/> &gt; 1,
    /// model-0000i-of-0000n.safetensors files and the model.safetensors.index.json that maps each tensor to its shard.
    /// </summary>
    public void WriteHf(string directory, int shards = 1)
    {
        Directory.CreateDirectory(directory);
        File.WriteAllText(Path.Combine(directory, "config.json"), JsonSerializer.Serialize(Config()));
        var weights = Weights();
        var writers = Enumerable.Range(0, shards).Select(_ => new SafetensorsTestWriter()).ToArray();
        var weightMap = new Dictionary<string, string>();
        string ShardName(int i) => shards == 1 ? "model.safetensors" : $"model-{i + 1:D5}-of-{shards:D5}.safetensors";
        for (int i = 0; i < weights.Count; i++)
        {
            var (name, shape, values) = weights[i];
            int shard = i * shards / weights.Count; // consecutive runs, as transformers' save_pretrained splits
            if (BF16) writers[shard].AddBF16(name, shape, values);
            else writers[shard].AddF32(name, shape, values);
            weightMap[name] = ShardName(shard);
        }
        for (int i = 0; i < shards; i++) File.WriteAllBytes(Path.Combine(directory, ShardName(i)), writers[i].Build());
        if (shards > 1)
            File.WriteAllText(Path.Combine(directory, "model.safetensors.index.json"),
                JsonSerializer.Serialize(new { metadata = new { total_size = 0 }, weight_map = weightMap }));
    }

    /// <summary>Writes the GGUF llama.cpp's converter would make of the same checkpoint; returns its path.</summary>
    public string WriteGguf(string path)
    {
        var g = new GgufTestWriter();
        string a = Arch;
        g.Add("general.architecture", a);
        g.Add($"{a}.context_length", (uint)Context);
        g.Add($"{a}.embedding_length", (uint)Hidden);
        g.Add($"{a}.block_count", (uint)Layers);
        g.Add($"{a}.feed_forward_length", (uint)Ff);
        g.Add($"{a}.attention.head_count", (uint)Heads);
        g.Add($"{a}.attention.head_count_kv", (uint)KvHeads);
        g.Add($"{a}.attention.key_length", (uint)HeadDim);
        g.Add($"{a}.attention.value_length", (uint)HeadDim);
        g.Add($"{a}.attention.layer_norm_rms_epsilon", GgufValueType.Float32, 1e-6f);
        g.Add($"{a}.rope.freq_base", GgufValueType.Float32, RopeTheta);
        g.Add("tokenizer.ggml.model", "gpt2");
        g.Add("tokenizer.ggml.tokens", new GgufArray(GgufValueType.String, Enumerable.Range(0, Vocab).Select(TokenText).ToArray()));
        g.Add("tokenizer.ggml.merges", new GgufArray(GgufValueType.String, Array.Empty<string>()));

        if (Arch == "gemma3")
        {
            g.Add($"{a}.attention.sliding_window", (uint)GemmaWindow);
            g.Add($"{a}.attention.sliding_window_pattern", 3u);
            g.Add($"{a}.rope.freq_base_swa", GgufValueType.Float32, 10000f);
            g.Add($"{a}.rope.scaling.type", "linear");
            g.Add($"{a}.rope.scaling.factor", GgufValueType.Float32, 8f);
        }
        if (Llama3Scaling)
        {
            var factors = DummyPresets.Llama3RopeFactors(RopeTheta, HeadDim, 8f, 1f, 4f, 64);
            g.AddTensor("rope_freqs.weight", GgmlType.F32, [factors.Length], SafetensorsTestWriter.MemoryMarshalBytes(factors));
        }
        foreach (var (name, shape, values) in Weights())
        {
            var v = values;
            if (Arch == "llama" && name.EndsWith("q_proj.weight", StringComparison.Ordinal)) v = PermuteForNormRope(v, shape, Heads);
            if (Arch == "llama" && name.EndsWith("k_proj.weight", StringComparison.Ordinal)) v = PermuteForNormRope(v, shape, KvHeads);
            // llama.cpp's converter adds Gemma's 1 to every norm weight.
            if (Arch == "gemma3" && name.Contains("norm", StringComparison.Ordinal)) v = [.. v.Select(x => x + 1f)];
            long[] dims = [.. shape.Reverse()]; // GGUF lists the innermost dimension first
            if (shape.Length == 2 && BF16)
                g.AddTensor(GgufName(name), GgmlType.BF16, dims, SafetensorsTestWriter.ToBF16Bytes(v));
            else
                g.AddTensor(GgufName(name), GgmlType.F32, dims, SafetensorsTestWriter.MemoryMarshalBytes(v));
        }
        File.WriteAllBytes(path, g.Build());
        return path;
    }

    /// <summary>Token i of the GGUF's byte-level BPE vocabulary: single letters first (so text encodes without merges), then "t36" ….</summary>
    public static string TokenText(int i) => i < 26 ? ((char)('a' + i)).ToString() : $"t{i}";

    /// <summary>
    /// convert_hf_to_gguf.py's <c>LlamaModel.permute</c>: within each head, rows (j, j + d/2) — the pair HF's
    /// rotate_half rotates — move to (2j, 2j + 1), the adjacent pair llama.cpp's NORM rope rotates.
    /// <c>w.reshape(n_head, 2, d/2, in).swapaxes(1, 2).reshape(w.shape)</c>.
    /// </summary>
    static float[] PermuteForNormRope(float[] w, long[] shape, int heads)
    {
        int rows = (int)shape[0], cols = (int)shape[1], hd = rows / heads, half = hd / 2;
        var result = new float[w.Length];
        for (int h = 0; h < heads; h++)
            for (int j = 0; j < half; j++)
                for (int s = 0; s < 2; s++)
                    Array.Copy(w, (h * hd + s * half + j) * cols, result, (h * hd + 2 * j + s) * cols, cols);
        return result;
    }

    string GgufName(string hf)
    {
        if (hf == "model.embed_tokens.weight") return "token_embd.weight";
        if (hf == "model.norm.weight") return "output_norm.weight";
        if (hf == "lm_head.weight") return "output.weight";
        var parts = hf.Split('.', 4); // model, layers, N, rest
        string rest = parts[3] switch
        {
            "input_layernorm.weight" => "attn_norm.weight",
            "post_attention_layernorm.weight" => Arch == "gemma3" ? "post_attention_norm.weight" : "ffn_norm.weight",
            "pre_feedforward_layernorm.weight" => "ffn_norm.weight",
            "post_feedforward_layernorm.weight" => "post_ffw_norm.weight",
            "self_attn.qkv_proj.weight" => "attn_qkv.weight",
            "mlp.gate_up_proj.weight" => "ffn_up.weight",
            "self_attn.q_proj.weight" => "attn_q.weight",
            "self_attn.k_proj.weight" => "attn_k.weight",
            "self_attn.v_proj.weight" => "attn_v.weight",
            "self_attn.o_proj.weight" => "attn_output.weight",
            "self_attn.q_proj.bias" => "attn_q.bias",
            "self_attn.k_proj.bias" => "attn_k.bias",
            "self_attn.v_proj.bias" => "attn_v.bias",
            "self_attn.q_norm.weight" => "attn_q_norm.weight",
            "self_attn.k_norm.weight" => "attn_k_norm.weight",
            "mlp.gate_proj.weight" => "ffn_gate.weight",
            "mlp.up_proj.weight" => "ffn_up.weight",
            "mlp.down_proj.weight" => "ffn_down.weight",
            var other => throw new ArgumentException(other),
        };
        return $"blk.{parts[2]}.{rest}";
    }
}
