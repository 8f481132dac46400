using System.Text.Json;
using TokenMill.Backends.Cpu;
using TokenMill.Generation;
using TokenMill.Models;
using TokenMill.Sampling;

namespace TokenMill.Tests.Backends;

/// <summary>
/// Greedy decoding of the tiny random-weight models in testdata/arch must reproduce llama.cpp's
/// token ids exactly (expected.jsonl; see that folder's README for how they were made and checked).
/// </summary>
public class ArchReferenceTests
{
    public sealed record Case(string Model, string Prompt, int[] PromptIds, int[] CompletionIds, string Completion);

    public static IEnumerable<object[]> Cases()
    {
        // Enumerated lazily so a missing data folder gives one skipped case, not a discovery error.
        string? path = TestData.Root is null ? null : Path.Combine(TestData.Root, "arch", "expected.jsonl");
        if (path is null || !File.Exists(path))
        {
            yield return ["(absent)", 0];
            yield break;
        }
        int i = 0;
        foreach (var line in File.ReadLines(path))
        {
            var model = JsonDocument.Parse(line).RootElement.GetProperty("model").GetString()!;
            yield return [model, i++];
        }
    }

    internal static Case Load(int index)
    {
        var line = File.ReadLines(TestData.Require("arch/expected.jsonl")).ElementAt(index);
        var j = JsonDocument.Parse(line).RootElement;
        return new Case(
            j.GetProperty("model").GetString()!,
            j.GetProperty("prompt").GetString()!,
            [.. j.GetProperty("prompt_ids").EnumerateArray().Select(e => e.GetInt32())],
            [.. j.GetProperty("completion_ids").EnumerateArray().Select(e => e.GetInt32())],
            j.GetProperty("completion").GetString()!);
    }

    [SkippableTheory]
    [MemberData(nameof(Cases))]
    public void Greedy_completion_ids_match_llama_cpp(string model, int index)
    {
        var c = Load(index);
        Assert.Equal(model, c.Model);
        using var m = GgufModelLoader.Load(TestData.Require("arch/" + model));
        using var forward = new CpuForward(m);
        using var sequence = new SingleSequence(forward, c.PromptIds.Length + c.CompletionIds.Length);
        var logits = new float[m.Config.VocabSize];

        sequence.Feed(c.PromptIds, logits);
        var got = new List<int>();
        for (int i = 0; i < c.CompletionIds.Length; i++)
        {
            int token = Sampler.ArgMax(logits);
            got.Add(token);
            if (i + 1 < c.CompletionIds.Length) sequence.Feed([token], logits);
        }
        Assert.Equal(c.CompletionIds, got);
    }

    [SkippableTheory]
    [MemberData(nameof(Cases))]
    public void Prompt_tokens_and_completion_text_match_llama_cpp(string model, int index)
    {
        var c = Load(index);
        Assert.Equal(model, c.Model);
        using var f = TokenMill.Models.Gguf.GgufFile.Open(TestData.Require("arch/" + model));
        var tokenizer = TokenMill.Tokenization.TokenizerLoader.FromGguf(f);
        // The prompt with the vocabulary's own special tokens (BOS where it adds one), as llama.cpp tokenized it.
        Assert.Equal(c.PromptIds, tokenizer.Encode(c.Prompt, addSpecial: true));
        // The completion as llama.cpp prints it: every piece as is, nothing stripped.
        var bytes = c.CompletionIds.SelectMany(id => tokenizer.TokenToBytes(id)).ToArray();
        Assert.Equal(c.Completion, System.Text.Encoding.UTF8.GetString(bytes));
    }
}
