using TokenMill.Backends.Cpu;
using TokenMill.Generation;
using TokenMill.Models;
using TokenMill.Sampling;

namespace TokenMill.Tests.Backends;

/// <summary>stories260K, a real (tiny) trained Llama: greedy text must equal llama.cpp's and llama2.c's.</summary>
public class Stories260KTests
{
    [SkippableFact]
    public void Greedy_once_upon_a_time_matches_the_reference_implementations()
    {
        using var model = GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));
        using var forward = new CpuForward(model);
        var result = new TextGenerator(model, forward).Generate("Once upon a time",
            new GenerationOptions { MaxTokens = 40, Sampling = SamplingParams.Greedy });

        Assert.Equal(
            ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big,",
            result.Text.Trim());
        Assert.Equal(40, result.CompletionTokens.Length);
        Assert.Equal("length", result.FinishReason);
        Assert.Equal(1, result.PromptTokens[0]); // BOS, added as llama.cpp does for SPM vocabularies
    }

    [SkippableFact]
    public void Streamed_pieces_concatenate_to_the_result_text()
    {
        using var model = GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));
        using var forward = new CpuForward(model);
        var pieces = new List<string>();
        var result = new TextGenerator(model, forward).Generate("Lily and Ben",
            new GenerationOptions { MaxTokens = 30, Sampling = new SamplingParams { Temperature = 0.9f, Seed = 7 } }, pieces.Add);
        Assert.Equal(result.Text, string.Concat(pieces));
        Assert.Equal(model.Tokenizer.Decode(result.CompletionTokens), result.Text);
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
