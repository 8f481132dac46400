using System.Text;
using TokenMill.Models.Gguf;
using TokenMill.Tokenization;

namespace TokenMill.Tests.Tokenization;

/// <summary>Behaviour around the core algorithms: special tokens, BOS/EOS, decoding and what is refused.</summary>
public class GgufTokenizerTests
{
    static ITokenizer Load(string vocabulary)
    {
        using var file = GgufFile.Open(VocabTestVectors.GgufPath(vocabulary));
        return TokenizerLoader.FromGguf(file);
    }

    static ITokenizer Load(GgufTestFile testFile)
    {
        using var file = GgufFile.Open(testFile.Path);
        return TokenizerLoader.FromGguf(file);
    }

    static string Text(ITokenizer tokenizer, int id, bool renderSpecial = false) =>
        Encoding.UTF8.GetString(tokenizer.TokenToBytes(id, renderSpecial));

    [SkippableTheory]
    [InlineData("llama-spm", true, 1)]        // add_bos_token = true
    [InlineData("deepseek-coder", true, 32013)] // add_bos_token = true on a BPE vocabulary
    [InlineData("gpt-2", false, 50256)]        // no add_bos_token: llama.cpp's BPE default is false
    public void Adds_bos_as_the_metadata_says(string vocabulary, bool addsBos, int bos)
    {
        var tokenizer = Load(vocabulary);
        Assert.Equal(addsBos, tokenizer.AddBos);
        Assert.Equal(bos, tokenizer.BosId);
        Assert.False(tokenizer.AddEos);

        int[] plain = tokenizer.Encode("Hello world");
        int[] special = tokenizer.Encode("Hello world", addSpecial: true);
        Assert.Equal(addsBos ? [bos, .. plain] : plain, special);
    }

    /// <summary>Every vocabulary GGUF in the test data, with or without test vectors (baichuan, gpt-neox have none).</summary>
    public static TheoryData<string> AllVocabularyFiles()
    {
        var data = new TheoryData<string>();
        if (TestData.Root is string root && Directory.Exists(Path.Combine(root, VocabTestVectors.Folder)))
            foreach (var f in Directory.GetFiles(Path.Combine(root, VocabTestVectors.Folder), "ggml-vocab-*.gguf").Order(StringComparer.Ordinal))
                data.Add(Path.GetFileName(f)["ggml-vocab-".Length..^".gguf".Length]);
        if (data.Count == 0) data.Add("(no test data)");
        return data;
    }

    [SkippableTheory]
    [MemberData(nameof(AllVocabularyFiles))]
    public void Every_vocabulary_loads_and_encodes_within_range(string vocabulary)
    {
        var tokenizer = Load(vocabulary);
        foreach (var text in TokenizerSamples.Fixed)
        {
            int[] ids = tokenizer.Encode(text, addSpecial: true, parseSpecial: true);
            Assert.All(ids, id => Assert.InRange(id, 0, tokenizer.VocabSize - 1));
            if (vocabulary != "bert-bge") // WordPiece normalizes, so it cannot round-trip
                Assert.Equal(text, tokenizer.Decode(tokenizer.Encode(text)));
        }
    }

    [SkippableFact]
    public void Encoding_is_thread_safe()
    {
        var tokenizer = Load("deepseek-llm");
        var texts = TokenizerSamples.Fixed.Concat(VocabTestVectors.Load("deepseek-llm").Select(c => c.Input)).ToArray();
        var expected = texts.Select(t => tokenizer.Encode(t)).ToArray();
        Parallel.For(0, 64, i =>
        {
            for (int j = 0; j < texts.Length; j++)
            {
                int k = (i + j) % texts.Length; // each thread starts elsewhere, so different inputs overlap
                Assert.Equal(expected[k], tokenizer.Encode(texts[k]));
            }
        });
    }

    [Fact]
    public void SentencePiece_adds_bos_when_the_metadata_is_silent()
    {
        using var gguf = TinySpm(addBos: null);
        var tokenizer = Load(gguf);
        Assert.True(tokenizer.AddBos);
        Assert.Equal(1, tokenizer.Encode("ab", addSpecial: true)[0]);
    }

    [SkippableTheory]
    [InlineData("llama-spm", "<s>", 1)]
    [InlineData("gpt-2", "<|endoftext|>", 50256)]
    [InlineData("starcoder", "<fim_prefix>", 1)]
    public void Parse_special_turns_control_token_text_into_the_token(string vocabulary, string special, int id)
    {
        var tokenizer = Load(vocabulary);
        string text = $"Hello{special}world";

        int[] parsed = tokenizer.Encode(text, parseSpecial: true);
        Assert.Equal([.. tokenizer.Encode("Hello"), id, .. tokenizer.Encode("world")], parsed);

        int[] literal = tokenizer.Encode(text, parseSpecial: false);
        Assert.DoesNotContain(id, literal);
        Assert.Equal(text, tokenizer.Decode(literal));
    }

    [SkippableFact]
    public void User_defined_tokens_are_split_out_even_without_parse_special()
    {
        // deepseek-coder's 'õ' (id 32000) is a user-defined token; llama.cpp always matches those first.
        var tokenizer = Load("deepseek-coder");
        Assert.Equal("õ", Text(tokenizer, 32000));
        Assert.Contains(32000, tokenizer.Encode("abcõdef", parseSpecial: false));
    }

    [SkippableFact]
    public void Phi3_special_tokens_swallow_the_white_space_after_them()
    {
        // llama.cpp marks Phi-3's special tokens RSTRIP (by model name): "<|user|>\nHi" reads as "<|user|>" "Hi".
        var tokenizer = Load("phi-3");
        Assert.Equal([32010, .. tokenizer.Encode("Hi")], tokenizer.Encode("<|user|>\n  Hi", parseSpecial: true));
    }

    [SkippableTheory]
    [InlineData("llama-spm", new[] { 2 })]
    [InlineData("gpt-2", new[] { 50256 })]
    [InlineData("phi-3", new[] { 2, 32000, 32007 })] // </s>, <|endoftext|> (EOS) and <|end|> (end of turn), by text as llama.cpp
    public void End_of_generation_ids_include_eos_and_end_of_turn(string vocabulary, int[] expected)
    {
        var tokenizer = Load(vocabulary);
        Assert.Equal(expected.Order(), tokenizer.EndOfGenerationIds.Order());
    }

    [SkippableFact]
    public void SentencePiece_token_bytes()
    {
        var tokenizer = Load("llama-spm");
        Assert.Equal([0x0A], tokenizer.TokenToBytes(13)); // <0x0A>: the raw byte
        int hello = tokenizer.Encode("Hello").Single();
        Assert.Equal(" Hello", Text(tokenizer, hello)); // ▁ is a space
        Assert.Equal("", Text(tokenizer, 1)); // <s> is a control token
        Assert.Equal("<s>", Text(tokenizer, 1, renderSpecial: true));
        Assert.Equal("", Text(tokenizer, 0)); // <unk>
    }

    [SkippableFact]
    public void Byte_level_token_bytes()
    {
        var tokenizer = Load("gpt-2");
        int world = tokenizer.Encode(" world").Single();
        Assert.Equal(" world", Text(tokenizer, world)); // Ġ is a space
        Assert.Equal("", Text(tokenizer, 50256));
        Assert.Equal("<|endoftext|>", Text(tokenizer, 50256, renderSpecial: true));

        // A multi-byte character split across tokens: each token carries part of the UTF-8.
        int[] llama = tokenizer.Encode("🦙");
        Assert.True(llama.Length > 1);
        Assert.Equal("🦙"u8.ToArray(), llama.SelectMany(id => tokenizer.TokenToBytes(id)).ToArray());
        Assert.Equal("\uFFFD", tokenizer.Decode(llama.AsSpan(0, 1)));
    }

    [SkippableFact]
    public void Decode_drops_the_space_prefix_only_from_the_first_token()
    {
        var tokenizer = Load("llama-spm");
        Assert.Equal("Hello world", tokenizer.Decode(tokenizer.Encode("Hello world")));
        // As llama.cpp's detokenizer: a leading BOS takes the "first token" place, so the prefix space stays.
        Assert.Equal(" Hello world", tokenizer.Decode(tokenizer.Encode("Hello world", addSpecial: true)));
        Assert.Equal("<s> Hello world", tokenizer.Decode(tokenizer.Encode("Hello world", addSpecial: true), renderSpecial: true));
    }

    [Fact]
    public void SentencePiece_merges_by_score_and_falls_back_to_bytes()
    {
        using var gguf = TinySpm(addBos: false);
        var tokenizer = Load(gguf);
        int Id(string t) => Array.IndexOf(TinySpmTokens, t);

        // "▁ab": ▁a (score -1) beats ab (score -2), then ▁a+b is "▁ab" (score -3) -> one token.
        Assert.Equal([Id("▁ab")], tokenizer.Encode("ab"));
        // "c" is not in the vocabulary: its UTF-8 byte through <0x63>; '€' (3 bytes) likewise.
        Assert.Equal([Id("▁"), Id("<0x63>")], tokenizer.Encode("c"));
        Assert.Equal([Id("▁"), Id("<0xE2>"), Id("<0x82>"), Id("<0xAC>")], tokenizer.Encode("€"));
        Assert.Equal("ab c€", tokenizer.Decode(tokenizer.Encode("ab c€")));
    }

    [Fact]
    public void Unsupported_tokenizer_model_names_the_value_and_the_file()
    {
        using var gguf = new GgufTestFile(new Dictionary<string, object>
        {
            ["tokenizer.ggml.model"] = "t5",
            ["tokenizer.ggml.tokens"] = new[] { "<pad>", "</s>", "<unk>" },
        });
        var e = Assert.Throws<NotSupportedException>(() => Load(gguf));
        Assert.Contains("\"t5\"", e.Message);
        Assert.Contains(gguf.Path, e.Message);
    }

    [Fact]
    public void Unsupported_pre_tokenizer_names_the_value_and_the_file()
    {
        using var gguf = new GgufTestFile(new Dictionary<string, object>
        {
            ["tokenizer.ggml.model"] = "gpt2",
            ["tokenizer.ggml.pre"] = "no-such-pre",
            ["tokenizer.ggml.tokens"] = new[] { "a", "b", "ab" },
            ["tokenizer.ggml.merges"] = new[] { "a b" },
        });
        var e = Assert.Throws<NotSupportedException>(() => Load(gguf));
        Assert.Contains("\"no-such-pre\"", e.Message);
        Assert.Contains(gguf.Path, e.Message);
    }

    [SkippableFact]
    public void WordPiece_wraps_in_cls_and_sep_and_lower_cases()
    {
        var tokenizer = Load("bert-bge");
        Assert.Equal(101, tokenizer.BosId);
        int[] ids = tokenizer.Encode("Héllo, WORLD!", addSpecial: true);
        Assert.Equal(101, ids[0]);
        Assert.Equal(102, ids[^1]);
        Assert.Equal(" hello , world !", tokenizer.Decode(ids));
        Assert.Equal([100], tokenizer.Encode("\u2603")); // a word with no vocabulary entry is [UNK]
    }

    [Fact]
    public void Byte_level_bpe_without_pre_uses_llama_cpp_default_and_its_defaults()
    {
        using var gguf = new GgufTestFile(new Dictionary<string, object>
        {
            ["tokenizer.ggml.model"] = "gpt2",
            ["tokenizer.ggml.tokens"] = new[] { "a", "b", "ab", "Ġ", "Ġab" },
            ["tokenizer.ggml.merges"] = new[] { "a b", "Ġ ab" },
        });
        var tokenizer = Load(gguf);
        Assert.Equal([2, 4], tokenizer.Encode("ab ab"));
        Assert.False(tokenizer.AddBos);
        Assert.Null(tokenizer.BosId); // llama.cpp's default 11 lies outside this 5-token vocabulary
    }

    static readonly string[] TinySpmTokens =
        ["<unk>", "<s>", "</s>", .. Enumerable.Range(0, 256).Select(b => $"<0x{b:X2}>"), "▁", "a", "b", "▁a", "ab", "▁ab"];

    static GgufTestFile TinySpm(bool? addBos)
    {
        int n = TinySpmTokens.Length;
        var scores = new float[n];
        scores[n - 6] = -10; // ▁
        scores[n - 5] = -10; // a
        scores[n - 4] = -10; // b
        scores[n - 3] = -1;  // ▁a
        scores[n - 2] = -2;  // ab
        scores[n - 1] = -3;  // ▁ab
        var types = new int[n];
        Array.Fill(types, 1);
        types[0] = 2;
        types[1] = types[2] = 3;
        for (int i = 3; i < 259; i++) types[i] = 6;
        var metadata = new Dictionary<string, object>
        {
            ["tokenizer.ggml.model"] = "llama",
            ["tokenizer.ggml.tokens"] = TinySpmTokens,
            ["tokenizer.ggml.scores"] = scores,
            ["tokenizer.ggml.token_type"] = types,
        };
        if (addBos is bool b) metadata["tokenizer.ggml.add_bos_token"] = b;
        return new GgufTestFile(metadata);
    }
}
