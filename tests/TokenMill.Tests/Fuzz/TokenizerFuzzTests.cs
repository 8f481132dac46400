using System.Text;
using TokenMill.Models.Gguf;
using TokenMill.Tokenization;

namespace TokenMill.Tests.Fuzz;

/// <summary>Random byte strings through every tokenizer kind: no exception, and decode(encode(s)) == s for valid UTF-8.</summary>
[Trait("Category", "Fuzz")]
public class TokenizerFuzzTests
{
    [SkippableTheory]
    [InlineData("llama-spm")]
    [InlineData("gpt-2")]
    [InlineData("deepseek-coder")]
    [InlineData("falcon")]
    public void Random_bytes_round_trip(string vocabulary)
    {
        ITokenizer tokenizer;
        using (var f = GgufFile.Open(TestData.Require($"vocab/ggml-vocab-{vocabulary}.gguf")))
            tokenizer = TokenizerLoader.FromGguf(f);
        var random = new Random(FuzzSettings.Seed(vocabulary.GetHashCode(StringComparison.Ordinal) & 0xFFFF));
        int iterations = FuzzSettings.Iterations(ciDefault: 1500);
        // Bytes drawn from ASCII, whitespace, UTF-8 lead/continuation bytes and whole multi-byte characters.
        byte[][] pieces =
        [
            .. Enumerable.Range(0x20, 0x5F).Select(b => new[] { (byte)b }),
            "\n"u8.ToArray(), "\t"u8.ToArray(), "\r\n"u8.ToArray(), "  "u8.ToArray(),
            "é"u8.ToArray(), "日本"u8.ToArray(), "🦙"u8.ToArray(), "\u200d"u8.ToArray(), "ï¿½"u8.ToArray(),
            [0xC3], [0xE6, 0x97], [0xF0, 0x9F], [0x80], [0xFF], [0x00], [0x7F],
        ];
        for (int i = 0; i < iterations; i++)
        {
            var bytes = new List<byte>();
            int n = random.Next(0, 24);
            for (int k = 0; k < n; k++) bytes.AddRange(pieces[random.Next(pieces.Length)]);
            // Invalid sequences become U+FFFD here, as they would when a client's bytes become a .NET string.
            string text = Encoding.UTF8.GetString([.. bytes]);
            int[] ids = tokenizer.Encode(text);
            Assert.All(ids, id => Assert.InRange(id, 0, tokenizer.VocabSize - 1));
            string back = tokenizer.Decode(ids);
            Assert.True(text == back, $"case {i}: {TokenMill.Tests.Tokenization.VocabTestVectors.Escape(text)} decoded as {TokenMill.Tests.Tokenization.VocabTestVectors.Escape(back)}");
        }
    }

    // Loaded once for the class: Gemma's tokenizer.json alone is 33 MB.
    static readonly Dictionary<string, Lazy<ITokenizer>> HfTokenizers = new[] { "qwen3", "gemma3", "llama3" }.ToDictionary(f => f,
        f => new Lazy<ITokenizer>(() => HfTokenizerLoader.Load(Path.GetDirectoryName(TestData.Require($"hf-tokenizers/{f}/tokenizer.json"))!)));

    /// <summary>
    /// Random strings through the real <c>tokenizer.json</c> files with special-token text parsed: no exception, ids
    /// in range, and decoding (special tokens rendered) gives the text back as the file's normalizer leaves it —
    /// NFC for Qwen, ▁ read back as a space for Gemma, unchanged for Llama 3.
    /// </summary>
    [SkippableTheory]
    [InlineData("qwen3")]
    [InlineData("gemma3")]
    [InlineData("llama3")]
    public void Random_text_round_trips_through_tokenizer_json(string family)
    {
        var tokenizer = HfTokenizers[family].Value;
        var random = new Random(FuzzSettings.Seed(family.GetHashCode(StringComparison.Ordinal) & 0xFFFF));
        int iterations = FuzzSettings.Iterations(ciDefault: 500);
        string[] pieces =
        [
            .. Enumerable.Range(0x20, 0x5F).Select(c => ((char)c).ToString()),
            "\n", "\t", "\r\n", "  ", "\u00a0", "\u3000", "é", "e\u0301", "\u0301", "\uac01", "\u1100\u1161", "日本", "🦙", "👍🏽",
            "\u200d", "🇯🇵", "\ufe0f", "\ufffd", "\u0000", "▁", "123", "'s", "'LL", "<|im_start|>", "<|im_end|>", "<start_of_turn>",
            "<end_of_turn>", "<|begin_of_text|>", "<|eot_id|>", "<bos>", "<unused12>", "<think>", "<|im_start", "\U0010FFFD",
        ];
        for (int i = 0; i < iterations; i++)
        {
            var sb = new StringBuilder();
            int n = random.Next(0, 24);
            for (int k = 0; k < n; k++) sb.Append(pieces[random.Next(pieces.Length)]);
            string text = sb.ToString();
            int[] ids = tokenizer.Encode(text, parseSpecial: true);
            Assert.All(ids, id => Assert.InRange(id, 0, tokenizer.VocabSize - 1));
            string expected = family switch
            {
                "qwen3" => UnicodeNormalization.ToNfc(text),
                "gemma3" => text.Replace('▁', ' '),
                _ => text,
            };
            string back = tokenizer.Decode(ids, renderSpecial: true);
            Assert.True(expected == back, $"case {i}: {TokenMill.Tests.Tokenization.VocabTestVectors.Escape(text)} decoded as {TokenMill.Tests.Tokenization.VocabTestVectors.Escape(back)}");
        }
    }
}
