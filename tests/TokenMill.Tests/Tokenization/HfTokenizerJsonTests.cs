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
    public void Gemma_tokenizer_is_sentencepiece_style_bpe_with_byte_fallback()
    {
        var gemma = Load("gemma3");
        Assert.Equal(262145, gemma.VocabSize); // 262,144 + <image_soft_token>
        Assert.Equal(2, gemma.BosId);
        Assert.Equal(106, gemma.EosId); // <end_of_turn> (tokenizer_config.json)
        Assert.True(gemma.AddBos);
        Assert.Equal([2, 9259, 1902], gemma.Encode("Hello world", addSpecial: true)); // ▁ stands for the space
        Assert.Equal(" world", System.Text.Encoding.UTF8.GetString(gemma.TokenToBytes(1902)));
        // A character outside the vocabulary falls back to its UTF-8 bytes, which decode back to it.
        int[] ids = gemma.Encode("\U0010FFFD");
        Assert.Equal(4, ids.Length); // <0xF4> <0x8F> <0xBF> <0xBD>
        Assert.Equal("\U0010FFFD", gemma.Decode(ids));
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

        // --tokenizer naming a folder of another family whose tokens the model has no rows for is refused with both sizes.
        string gemma = Path.GetDirectoryName(TestData.Require("hf-tokenizers/gemma3/tokenizer.json"))!;
        var e = Assert.Throws<InvalidDataException>(() => TokenMill.Models.ModelLoader.Load(folder, new TokenMill.Models.ModelLoadOptions { TokenizerPath = gemma }));
        Assert.Contains("262145 tokens", e.Message);
        Assert.Contains("128256", e.Message);
    }
}
