using TokenMill.Backends.Cpu;
using TokenMill.Core;
using TokenMill.Generation;
using TokenMill.Models;
using TokenMill.Sampling;

namespace TokenMill.Tests.Backends;

/// <summary>stories260K, a real (tiny) trained Llama: greedy text must equal llama.cpp's and llama2.c's.</summary>
public class Stories260KTests
{
    [SkippableFact]
    public async Task Greedy_once_upon_a_time_matches_the_reference_implementations()
    {
        using var model = GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));
        using var engine = new LlmEngine(model);
        var result = await engine.CompleteAsync(new GenerationRequest
        {
            Prompt = "Once upon a time",
            Sampling = SamplingParams.Greedy with { MaxTokens = 35 },
        });

        // The references ran 40 positions in all: BOS + 4 prompt tokens + 35 generated.
        Assert.Equal(
            ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big,",
            result.Text.Trim());
        Assert.Equal(35, result.CompletionTokens);
        Assert.Equal(FinishReason.Length, result.FinishReason);
        Assert.Equal(5, result.PromptTokens); // BOS + 4, BOS added as llama.cpp does for SPM vocabularies
    }

    [SkippableFact]
    public async Task Streamed_pieces_concatenate_to_the_one_shot_decode()
    {
        using var model = GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));
        using var engine = new LlmEngine(model);
        var pieces = new List<string>();
        var ids = new List<int>();
        await foreach (var chunk in engine.Generate(new GenerationRequest
        {
            Prompt = "Lily and Ben",
            Sampling = new SamplingParams { Temperature = 0.9f, Seed = 7, MaxTokens = 30, IgnoreEos = true },
        }))
        {
            pieces.Add(chunk.Text);
            ids.AddRange(chunk.TokenIds);
        }
        Assert.Equal(30, ids.Count);
        // Streaming keeps every piece as is (an SPM "▁x" gives " x" even first), as llama.cpp prints them.
        var bytes = ids.SelectMany(id => model.Tokenizer.TokenToBytes(id)).ToArray();
        Assert.Equal(System.Text.Encoding.UTF8.GetString(bytes), string.Concat(pieces));
    }

    [SkippableFact]
    public void Prefill_in_chunks_gives_the_same_logits_as_one_pass()
    {
        using var model = GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));
        int[] tokens = model.Tokenizer.Encode("Once upon a time there was a cat who liked to sit in the sun.", addSpecial: true);
        using var whole = new CpuForward(model, maxBatchTokens: 64);
        using var chunked = new CpuForward(model, maxBatchTokens: 3);
        using var s1 = new SingleSequence(whole, tokens.Length);
        using var s2 = new SingleSequence(chunked, tokens.Length);
        var l1 = new float[model.Config.VocabSize];
        var l2 = new float[model.Config.VocabSize];
        s1.Feed(tokens, l1);
        s2.Feed(tokens, l2);
        for (int i = 0; i < l1.Length; i++) Assert.Equal(l1[i], l2[i], 1e-4f);
    }
}
