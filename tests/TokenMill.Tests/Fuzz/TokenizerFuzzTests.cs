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
}
