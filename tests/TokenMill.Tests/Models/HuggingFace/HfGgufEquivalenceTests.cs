using TokenMill.Backends.Cpu;
using TokenMill.Generation;
using TokenMill.Models;

namespace TokenMill.Tests.Models.HuggingFace;

/// <summary>
/// The same random weights as a Hugging Face folder and as the GGUF llama.cpp's converter makes of it
/// must give the same logits through <see cref="CpuForward"/>, for prefill and for decode steps.
/// Qwen2/3, Phi-3 and Gemma 3 compute the very same sums either way; Llama's GGUF permutes q/k rows for adjacent-pair
/// (NORM) rope while the folder's rows run with NEOX, so attention scores add in another order and
/// logits may differ by rounding only: the tolerance is 1e-4 · max(1, |logit|).
/// </summary>
public sealed class HfGgufEquivalenceTests : IDisposable
{
    readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("tokenmill-hf-");

    public void Dispose() => _dir.Delete(recursive: true);

    public static TheoryData<string, bool> Cases => new()
    {
        { "llama", false }, { "llama", true },
        { "qwen2", false }, { "qwen2", true },
        { "qwen3", false }, { "qwen3", true },
        { "phi3", false }, { "phi3", true },
        { "gemma3", false }, { "gemma3", true },
    };

    static HfTestModel Spec(string arch, bool bf16) => arch switch
    {
        // Llama 3 style: rope scaling (freq factors), GQA, untied head.
        "llama" => new HfTestModel { Arch = arch, BF16 = bf16, RopeTheta = 500000f, Llama3Scaling = true, Seed = 11 },
        // Qwen2.5 small: q/k/v biases, tied embeddings, θ = 1e6.
        "qwen2" => new HfTestModel { Arch = arch, BF16 = bf16, RopeTheta = 1e6f, Tied = true, Seed = 12 },
        // Qwen3: q/k norms, head_dim 32 ≠ hidden / heads.
        "qwen3" => new HfTestModel { Arch = arch, BF16 = bf16, RopeTheta = 1e6f, HeadDimOverride = 32, Seed = 13 },
        // Phi-3: fused qkv_proj and gate_up_proj, MHA.
        "phi3" => new HfTestModel { Arch = arch, BF16 = bf16, KvHeads = 4, Seed = 14 },
        // Gemma 3: (1 + w) norms, GeGLU, embedding scale, MQA, sliding-window layers with their own rope base, linear scaling, tied.
        "gemma3" => new HfTestModel { Arch = arch, BF16 = bf16, Layers = 4, KvHeads = 1, HeadDimOverride = 32, RopeTheta = 1e6f, Tied = true, Seed = 15 },
        _ => throw new ArgumentException(arch),
    };

    static readonly int[] Prompt = [3, 17, 42, 99, 0, 55, 8];
    static readonly int[] Decoded = [5, 61, 7, 88];

    /// <summary>Logits after the prompt, then after each decoded token.</summary>
    static List<float[]> Run(Model model)
    {
        using var forward = new CpuForward(model, maxBatchTokens: 16);
        using var seq = new SingleSequence(forward, Prompt.Length + Decoded.Length);
        var all = new List<float[]>();
        var logits = new float[model.Config.VocabSize];
        seq.Feed(Prompt, logits);
        all.Add([.. logits]);
        foreach (int t in Decoded)
        {
            seq.Feed([t], logits);
            all.Add([.. logits]);
        }
        return all;
    }

    (string Folder, string Gguf) Write(HfTestModel spec)
    {
        string folder = Path.Combine(_dir.FullName, $"{spec.Arch}-{(spec.BF16 ? "bf16" : "f32")}");
        spec.WriteHf(folder);
        return (folder, spec.WriteGguf(folder + ".gguf"));
    }

    [Theory]
    [MemberData(nameof(Cases))]
    public void Folder_and_converted_gguf_give_the_same_logits(string arch, bool bf16)
    {
        var spec = Spec(arch, bf16);
        var (folder, gguf) = Write(spec);
        using var g = GgufModelLoader.Load(gguf);
        using var h = ModelLoader.Load(folder, new ModelLoadOptions { TokenizerPath = gguf });

        var (gc, hc) = (g.Config, h.Config);
        Assert.Equal(arch, hc.Architecture);
        Assert.Equal((gc.VocabSize, gc.EmbeddingLength, gc.BlockCount, gc.FeedForwardLength, gc.HeadCount, gc.HeadCountKv, gc.HeadDim),
            (hc.VocabSize, hc.EmbeddingLength, hc.BlockCount, hc.FeedForwardLength, hc.HeadCount, hc.HeadCountKv, hc.HeadDim));
        Assert.Equal((gc.ContextLength, gc.RmsNormEps, gc.RopeFreqBase, gc.RopeDimensionCount), (hc.ContextLength, hc.RmsNormEps, hc.RopeFreqBase, hc.RopeDimensionCount));
        Assert.Equal(gc.RopeFreqFactors, hc.RopeFreqFactors);
        Assert.Equal(RopeType.Neox, hc.RopeType);
        Assert.Equal(arch == "llama" ? RopeType.Norm : RopeType.Neox, gc.RopeType);
        Assert.Equal(bf16 ? TokenMill.Models.Gguf.GgmlType.BF16 : TokenMill.Models.Gguf.GgmlType.F32, h.Weights.Layers[0].Wq.Type);
        Assert.Equal(spec.Tied, ReferenceEquals(h.Weights.Output, h.Weights.TokenEmbedding));

        var expected = Run(g);
        var actual = Run(h);
        float largest = 0;
        for (int step = 0; step < expected.Count; step++)
            for (int i = 0; i < expected[step].Length; i++)
            {
                float e = expected[step][i], a = actual[step][i];
                largest = Math.Max(largest, Math.Abs(e));
                Assert.True(Math.Abs(e - a) <= 1e-4f * Math.Max(1f, Math.Abs(e)), $"step {step}, logit {i}: GGUF {e}, folder {a}");
            }
        Assert.True(largest > 0.5f, $"logits are all near zero ({largest}); the comparison would prove nothing");
    }

    [Fact]
    public void Sharded_folder_gives_the_logits_of_the_single_file()
    {
        var spec = Spec("qwen3", bf16: true);
        var (folder, gguf) = Write(spec);
        string sharded = folder + "-sharded";
        spec.WriteHf(sharded, shards: 3);
        Assert.Equal(3, Directory.GetFiles(sharded, "*.safetensors").Length);
        using var single = ModelLoader.Load(folder, new ModelLoadOptions { TokenizerPath = gguf });
        using var split = ModelLoader.Load(sharded, new ModelLoadOptions { TokenizerPath = gguf });
        var expected = Run(single);
        var actual = Run(split);
        for (int step = 0; step < expected.Count; step++) Assert.Equal(expected[step], actual[step]);
    }

    [Fact]
    public void Generate_runs_a_folder_with_a_gguf_tokenizer()
    {
        var (folder, gguf) = Write(Spec("qwen2", bf16: false));
        var stdout = new StringWriter();
        var stderr = new StringWriter();
        int code = TokenMill.Server.Cli.Cli.Run(["generate", "--model", folder, "--tokenizer", gguf, "--prompt", "hello", "--max-tokens", "11",
            "--temperature", "0", "--ignore-eos"], stdout, stderr);
        Assert.True(code == 0, stderr.ToString());
        Assert.Matches("^([a-z]|t[0-9]+){6}$", stdout.ToString().Trim()); // 11 in all: 5 prompt tokens + 6 generated

        var noTokenizer = new StringWriter();
        Assert.NotEqual(0, TokenMill.Server.Cli.Cli.Run(["generate", "--model", folder, "--prompt", "x"], new StringWriter(), noTokenizer));
        Assert.Contains("pass --tokenizer FILE.gguf", noTokenizer.ToString());
    }

    [Fact]
    public void Llama_folder_run_with_adjacent_pair_rope_would_be_wrong()
    {
        // The reason the folder runs with NEOX: with NORM, its unpermuted q/k rows give other logits.
        var (folder, gguf) = Write(Spec("llama", bf16: false));
        using var g = GgufModelLoader.Load(gguf);
        using var h = ModelLoader.Load(folder, new ModelLoadOptions { TokenizerPath = gguf });
        using var wrong = new Model("norm", h.Config with { RopeType = RopeType.Norm }, h.Weights, h.Tokenizer, []);
        var expected = Run(g);
        var actual = Run(wrong);
        float diff = 0;
        for (int step = 1; step < expected.Count; step++)
            for (int i = 0; i < expected[step].Length; i++) diff = Math.Max(diff, Math.Abs(expected[step][i] - actual[step][i]));
        Assert.True(diff > 1e-2f, $"NORM on HF rows differs from the GGUF by only {diff}");
    }
}
