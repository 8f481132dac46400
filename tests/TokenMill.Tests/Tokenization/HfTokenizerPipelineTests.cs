using System.Text.Json.Nodes;
using TokenMill.Tokenization;

namespace TokenMill.Tests.Tokenization;

/// <summary>
/// The parts of <c>tokenizer.json</c> the three real files do not exercise, on small files written here: added-token
/// flags (<c>lstrip</c>, <c>rstrip</c>, <c>single_word</c>, <c>normalized</c>), leftmost-longest matching, the
/// unknown token, <c>tokenizer_config.json</c> overrides, and refusals that name what is not supported.
/// </summary>
public sealed class HfTokenizerPipelineTests : IDisposable
{
    readonly DirectoryInfo _dir = Directory.CreateTempSubdirectory("tokenmill-hfpipe-");

    public void Dispose() => _dir.Delete(recursive: true);

    // Characters a, b, c, d, space and "é" (NFC), merges a+b → ab, ab+c → abc; ids 0..8.
    static JsonObject File(JsonArray? added = null, JsonNode? normalizer = null, JsonNode? preTokenizer = null, JsonNode? model = null) => new()
    {
        ["version"] = "1.0",
        ["added_tokens"] = added ?? [],
        ["normalizer"] = normalizer,
        ["pre_tokenizer"] = preTokenizer,
        ["post_processor"] = null,
        ["decoder"] = null,
        ["model"] = model ?? new JsonObject
        {
            ["type"] = "BPE",
            ["unk_token"] = "<unk>",
            ["vocab"] = new JsonObject { ["<unk>"] = 0, ["a"] = 1, ["b"] = 2, ["c"] = 3, ["d"] = 4, [" "] = 5, ["ab"] = 6, ["abc"] = 7, ["\u00e9"] = 8 },
            ["merges"] = new JsonArray("a b", "ab c"),
        },
    };

    static JsonObject Added(int id, string content, bool special = true, bool lstrip = false, bool rstrip = false, bool singleWord = false, bool? normalized = null) => new()
    {
        ["id"] = id, ["content"] = content, ["special"] = special, ["lstrip"] = lstrip, ["rstrip"] = rstrip,
        ["single_word"] = singleWord, ["normalized"] = normalized ?? !special,
    };

    ITokenizer Write(JsonObject file, JsonObject? config = null)
    {
        var dir = _dir.CreateSubdirectory(Guid.NewGuid().ToString("N"));
        System.IO.File.WriteAllText(Path.Combine(dir.FullName, "tokenizer.json"), file.ToJsonString());
        if (config is not null) System.IO.File.WriteAllText(Path.Combine(dir.FullName, "tokenizer_config.json"), config.ToJsonString());
        return HfTokenizerLoader.Load(dir.FullName);
    }

    [Fact]
    public void Bpe_merges_lowest_rank_first_and_maps_unknown_characters_to_unk()
    {
        var t = Write(File());
        Assert.Equal([7, 5, 6, 4], t.Encode("abc abd"));
        Assert.Equal([1, 0, 2], t.Encode("axb")); // x is not in the vocabulary and there is no byte fallback
    }

    [Fact]
    public void Lstrip_and_rstrip_remove_the_white_space_beside_the_token()
    {
        var t = Write(File([Added(9, "<L>", lstrip: true), Added(10, "<R>", rstrip: true), Added(11, "<N>")]));
        Assert.Equal([1, 9, 2], t.Encode("a   <L>b", parseSpecial: true));
        Assert.Equal([1, 10, 2], t.Encode("a<R>  \t b", parseSpecial: true));
        Assert.Equal([1, 5, 11, 5, 2], t.Encode("a <N> b", parseSpecial: true));
    }

    [Fact]
    public void Special_tokens_are_cut_out_only_when_parsing_special_text_and_others_always()
    {
        var t = Write(File([Added(9, "<s>"), Added(10, "cd", special: false)]));
        Assert.Equal([9, 10], t.Encode("<s>cd", parseSpecial: true));
        int[] plain = t.Encode("<s>cd");
        Assert.DoesNotContain(9, plain);
        Assert.Equal(10, plain[^1]);
        Assert.Equal("cd", t.Decode([10]));
        Assert.Equal("", t.Decode([9])); // special tokens print only when rendered
        Assert.Equal("<s>", t.Decode([9], renderSpecial: true));
    }

    [Fact]
    public void Longest_token_at_the_leftmost_position_wins()
    {
        var t = Write(File([Added(9, "<a>"), Added(10, "<a><b>"), Added(11, "b><c")]));
        // At position 0 "<a><b>" is longer than "<a>"; "b><c" starts later and overlaps it, so it is not taken.
        Assert.Equal([10, 0, 3, 0], t.Encode("<a><b><c>", parseSpecial: true));
    }

    [Fact]
    public void Single_word_tokens_match_only_between_non_word_characters()
    {
        var t = Write(File([Added(9, "dd", special: false, singleWord: true)]));
        Assert.Equal([1, 5, 9, 5, 2], t.Encode("a dd b"));
        Assert.DoesNotContain(9, t.Encode("add b"));
    }

    [Fact]
    public void Normalized_added_tokens_match_the_normalized_text()
    {
        // NFC turns e + U+0301 into é; a normalized added token "é!" then matches the decomposed input too,
        // while an unnormalized one is matched against the raw text only.
        var t = Write(File([Added(9, "e\u0301!", special: false, normalized: true), Added(10, "d\u0301", special: false, normalized: false)],
            normalizer: new JsonObject { ["type"] = "NFC" }));
        Assert.Equal([9], t.Encode("e\u0301!"));
        Assert.Equal([9], t.Encode("\u00e9!"));
        Assert.Equal([10], t.Encode("d\u0301"));
    }

    [Fact]
    public void Tokenizer_config_adds_bos_and_eos_when_it_says_so()
    {
        var file = File([Added(9, "<s>"), Added(10, "</s>")]);
        var t = Write(file, new JsonObject { ["bos_token"] = "<s>", ["eos_token"] = new JsonObject { ["content"] = "</s>" }, ["add_bos_token"] = true, ["add_eos_token"] = true });
        Assert.Equal(9, t.BosId);
        Assert.Equal(10, t.EosId);
        Assert.Equal([9, 1, 10], t.Encode("a", addSpecial: true));
        Assert.Contains(10, t.EndOfGenerationIds);
        var plain = Write(File([Added(9, "<s>"), Added(10, "</s>")]), new JsonObject { ["bos_token"] = "<s>" });
        Assert.False(plain.AddBos); // no template and no add_bos_token: nothing is added, as Hugging Face does
        Assert.Equal([1], plain.Encode("a", addSpecial: true));
    }

    [Theory]
    [InlineData("""{"type": "Unigram", "vocab": []}""", "model.type \"Unigram\"")]
    [InlineData("""{"type": "BPE", "vocab": {}, "merges": [], "continuing_subword_prefix": "##"}""", "continuing_subword_prefix")]
    public void Unsupported_models_are_refused_by_name(string model, string expected)
    {
        var e = Assert.Throws<NotSupportedException>(() => Write(File(model: JsonNode.Parse(model))));
        Assert.Contains(expected, e.Message);
        Assert.Contains("tokenizer.json", e.Message);
    }

    [Theory]
    [InlineData("""{"type": "NFKC"}""", null, "normalizer \"NFKC\"")]
    [InlineData(null, """{"type": "Metaspace", "replacement": "▁"}""", "pre_tokenizer \"Metaspace\"")]
    [InlineData(null, """{"type": "Split", "pattern": {"Regex": "\\d+"}, "behavior": "Isolated", "invert": false}""", "the Split regex")]
    public void Unsupported_pipeline_steps_are_refused_by_name(string? normalizer, string? preTokenizer, string expected)
    {
        var e = Assert.Throws<NotSupportedException>(() => Write(File(normalizer: normalizer is null ? null : JsonNode.Parse(normalizer),
            preTokenizer: preTokenizer is null ? null : JsonNode.Parse(preTokenizer))));
        Assert.Contains(expected, e.Message);
    }

    [Fact]
    public void A_merge_outside_the_vocabulary_is_an_error_naming_it()
    {
        var model = JsonNode.Parse("""{"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}""");
        var e = Assert.Throws<InvalidDataException>(() => Write(File(model: model)));
        Assert.Contains("model.merges[0]", e.Message);
    }

    [Fact]
    public void A_huge_token_id_is_an_error_not_a_huge_table()
    {
        var e = Assert.Throws<InvalidDataException>(() => Write(File([Added(2_000_000_000, "<big>")])));
        Assert.Contains("not dense", e.Message);
        Assert.Contains("2000000000", e.Message);
    }

    [Fact]
    public void Broken_json_is_an_error_naming_the_file()
    {
        var dir = _dir.CreateSubdirectory("broken");
        System.IO.File.WriteAllText(Path.Combine(dir.FullName, "tokenizer.json"), "{\"model\": ");
        var e = Assert.Throws<InvalidDataException>(() => HfTokenizerLoader.Load(dir.FullName));
        Assert.Contains("tokenizer.json", e.Message);
    }
}

/// <summary>NFC/NFD of our own tables (string.Normalize is a no-op under InvariantGlobalization), on cases from UAX #15.</summary>
public class UnicodeNormalizationTests
{
    [Theory]
    [InlineData("e\u0301", "\u00e9")]
    [InlineData("A\u030a", "\u00c5")]
    [InlineData("\u212b", "\u00c5")] // Angstrom sign: a singleton, never composed back
    [InlineData("\u2126", "\u03a9")] // Ohm sign
    [InlineData("\u1e9b\u0323", "\u1e9b\u0323")] // long s with dot above, dot below
    [InlineData("s\u0323\u0307", "\u1e69")] // marks reordered and composed
    [InlineData("s\u0307\u0323", "\u1e69")]
    [InlineData("\u1100\u1161\u11a8", "\uac01")] // Hangul L V T
    [InlineData("\u0958", "\u0915\u093c")] // composition exclusion stays decomposed
    [InlineData("a\u0301\u0301", "\u00e1\u0301")] // the second acute is blocked by the first
    [InlineData("plain ASCII", "plain ASCII")]
    [InlineData("\U0001D15E", "\U0001D157\U0001D165")] // musical half note: excluded from composition
    public void Nfc(string input, string expected) => Assert.Equal(expected, UnicodeNormalization.ToNfc(input));

    [Theory]
    [InlineData("\u00e9", "e\u0301")]
    [InlineData("\uac01", "\u1100\u1161\u11a8")]
    [InlineData("\u1e69", "s\u0323\u0307")]
    [InlineData("\u00c0", "A\u0300")]
    public void Nfd(string input, string expected) => Assert.Equal(expected, UnicodeNormalization.ToNfd(input));
}
