using System.Text;
using TokenMill.Tokenization;

namespace TokenMill.Tests.Tokenization;

/// <summary>
/// Real <c>tokenizer.json</c> files (Llama 3, Qwen3) against llama.cpp's test vectors for the same
/// vocabularies (<c>ggml-vocab-llama-bpe</c>, <c>ggml-vocab-qwen2</c>: inputs and the ids Hugging Face's
/// tokenizer gives them), plus the cases a reader can check by hand.
/// </summary>
public class HfTokenizerJsonTests
{
    static ITokenizer Load(string family) =>
        HfTokenizerLoader.Load(Path.GetDirectoryName(TestData.Require($"hf-tokenizers/{family}/tokenizer.json"))!);

    static IReadOnlyList<(string Input, int[] Expected)> Vectors(string vocab)
    {
        string inp = TestData.Require($"vocab/ggml-vocab-{vocab}.gguf.inp");
        const string Separator = "\n__ggml_vocab_test__\n";
        string input = File.ReadAllText(inp, Encoding.UTF8);
        var inputs = input.Split(Separator).ToList();
        if (input.EndsWith(Separator, StringComparison.Ordinal)) inputs.RemoveAt(inputs.Count - 1);
        var lines = File.ReadAllLines(Path.ChangeExtension(inp, ".out"), Encoding.UTF8);
        Assert.Equal(inputs.Count, lines.Length);
        return [.. inputs.Select((text, i) => (text,
            lines[i].Split(' ', StringSplitOptions.RemoveEmptyEntries).Select(int.Parse).ToArray()))];
    }

    [SkippableTheory]
    [InlineData("llama3", "llama-bpe")]
    [InlineData("qwen3", "qwen2")]
    public void Tokenizer_json_gives_the_reference_ids_of_the_same_vocabulary(string family, string vocab)
    {
        var tokenizer = Load(family);
        var failures = new List<string>();
        foreach (var (input, expected) in Vectors(vocab))
        {
            var actual = tokenizer.Encode(input);
            if (!actual.SequenceEqual(expected))
                failures.Add($"{VocabTestVectors.Escape(input)}: expected [{string.Join(' ', expected)}], got [{string.Join(' ', actual)}]");
        }
        Assert.True(failures.Count == 0, string.Join("\n", failures));
    }

    [SkippableFact]
    public void Special_tokens_and_settings_come_from_the_files()
    {
        var llama = Load("llama3");
        Assert.Equal(128256, llama.VocabSize);
        Assert.Equal(128000, llama.BosId); // <|begin_of_text|>
        Assert.Equal(128001, llama.EosId); // <|end_of_text|>
        Assert.Contains(128009, llama.EndOfGenerationIds); // <|eot_id|>
        // "Hello" is one token, " world" another (Ġworld); the special token's text is one id only when parsed.
        Assert.Equal([128006, 9125, 128007], llama.Encode("<|start_header_id|>system<|end_header_id|>", parseSpecial: true));
        Assert.Equal("Hello world", llama.Decode(llama.Encode("Hello world")));
        Assert.Equal(2, llama.Encode("Hello world").Length);

        var qwen = Load("qwen3");
        Assert.Null(qwen.BosId); // bos_token: null
        Assert.False(qwen.AddBos);
        Assert.Equal(151645, qwen.EosId); // <|im_end|>
        Assert.Equal(13, qwen.Encode("The quick brown fox — jumps over 13 lazy dogs!").Length); // the hf-tokenizers README's example
        // Qwen splits digits one by one; Llama 3 keeps up to three together.
        Assert.Equal(4, qwen.Encode("2024").Length);
        Assert.Equal(2, llama.Encode("2024").Length);
    }

    [SkippableFact]
    public void Gemma_style_tokenizer_is_refused_by_name()
    {
        var e = Assert.Throws<NotSupportedException>(() => Load("gemma3"));
        Assert.Contains("byte_fallback", e.Message);
        Assert.Contains("tokenizer.json", e.Message);
    }
}

/// <summary>A model folder with its own tokenizer.json loads without --tokenizer; --tokenizer may name such a folder.</summary>
public sealed class HfFolderTokenizerTests : IDisposable
{
    readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("tokenmill-hftok-");

    public void Dispose() => _dir.Delete(recursive: true);

    [SkippableFact]
    public void Folder_with_tokenizer_json_loads_its_tokenizer_and_chat_template()
    {
        string tokenizers = Path.GetDirectoryName(TestData.Require("hf-tokenizers/llama3/tokenizer.json"))!;
        string folder = Path.Combine(_dir.FullName, "llama");
        // Llama 3's vocabulary (128,256 ids) over a tiny body: BF16, tied.
        new Models.HuggingFace.HfTestModel { Arch = "llama", Vocab = 128256, Tied = true, BF16 = true }.WriteHf(folder);
        foreach (var f in new[] { "tokenizer.json", "tokenizer_config.json" }) File.Copy(Path.Combine(tokenizers, f), Path.Combine(folder, f));

        using var model = TokenMill.Models.ModelLoader.Load(folder);
        Assert.Equal(128000, model.Tokenizer.BosId);
        Assert.NotNull(model.ChatTemplate);
        Assert.Equal("<|end_of_text|>", model.ChatTemplate!.EosToken);
        using var forward = new TokenMill.Backends.Cpu.CpuForward(model, maxBatchTokens: 8);
        using var seq = new TokenMill.Generation.SingleSequence(forward, 8);
        var logits = new float[model.Config.VocabSize];
        seq.Feed(model.Tokenizer.Encode("Hello world", addSpecial: true), logits);
        Assert.All(logits, l => Assert.True(float.IsFinite(l)));

        // --tokenizer naming a folder of another family: a Gemma tokenizer.json is refused by name.
        string gemma = Path.GetDirectoryName(TestData.Require("hf-tokenizers/gemma3/tokenizer.json"))!;
        var e = Assert.Throws<NotSupportedException>(() => TokenMill.Models.ModelLoader.Load(folder, new TokenMill.Models.ModelLoadOptions { TokenizerPath = gemma }));
        Assert.Contains("byte_fallback", e.Message);
    }
}
