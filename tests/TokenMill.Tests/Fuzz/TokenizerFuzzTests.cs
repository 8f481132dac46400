using System.Diagnostics;
using System.Text;
using TokenMill.Models.Gguf;
using TokenMill.Tokenization;
using TokenMill.Tests.Tokenization;
using Xunit.Abstractions;

namespace TokenMill.Tests.Fuzz;

/// <summary>
/// Random byte strings through every tokenizer kind we load — SentencePiece, byte-level BPE and
/// WordPiece from GGUF vocabularies, byte-level BPE from Hugging Face <c>tokenizer.json</c> — with no
/// exception, every id inside the vocabulary, and decode(encode(s)) == s where the tokenizer is
/// lossless for s. Not lossless, by design: WordPiece (BERT lower-cases, drops accents and control
/// characters, collapses white space and turns words it cannot cut into [UNK]); SentencePiece, whose
/// space marker U+2581 (▁) in the input comes back as a space, as in sentencepiece and llama.cpp. Qwen3's
/// tokenizer.json names an NFC normalizer that we, like llama.cpp, do not apply, so it round-trips exactly
/// (and gives other ids than Hugging Face for decomposed input; see <see cref="HfTokenizerLoader"/>).
/// </summary>
[Trait("Category", "Fuzz")]
public class TokenizerFuzzTests(ITestOutputHelper output)
{
    public enum RoundTrip { Exact, SpaceMarkerAsSpace, Nfc, None }

    // Bytes drawn from ASCII, white space, UTF-8 lead/continuation bytes, whole multi-byte characters,
    // decomposed accents and the text of special tokens.
    static readonly byte[][] Pieces =
    [
        .. Enumerable.Range(0x20, 0x5F).Select(b => new[] { (byte)b }),
        "\n"u8.ToArray(), "\t"u8.ToArray(), "\r\n"u8.ToArray(), "  "u8.ToArray(), "\u00a0"u8.ToArray(), "\u3000"u8.ToArray(),
        "é"u8.ToArray(), "e\u0301"u8.ToArray(), "日本"u8.ToArray(), "🦙"u8.ToArray(), "\u200d"u8.ToArray(), "ï¿½"u8.ToArray(), "\ufeff"u8.ToArray(),
        "<|endoftext|>"u8.ToArray(), "<s>"u8.ToArray(), "[CLS]"u8.ToArray(), "▁"u8.ToArray(), "Ġ"u8.ToArray(),
        [0xC3], [0xE6, 0x97], [0xF0, 0x9F], [0x80], [0xFF], [0x00], [0x7F], [0xED, 0xA0, 0x80], [0xC0, 0xAF],
    ];

    static readonly UTF8Encoding Strict = new(false, throwOnInvalidBytes: true);

    static readonly Dictionary<string, ITokenizer> Loaded = [];

    static ITokenizer Load(string source)
    {
        lock (Loaded)
        {
            if (Loaded.TryGetValue(source, out var t)) return t;
            if (source.StartsWith("hf:", StringComparison.Ordinal))
                t = HfTokenizerLoader.Load(Path.GetDirectoryName(TestData.Require($"hf-tokenizers/{source[3..]}/tokenizer.json"))!);
            else
                using (var f = GgufFile.Open(TestData.Require($"vocab/ggml-vocab-{source}.gguf")))
                    t = TokenizerLoader.FromGguf(f);
            return Loaded[source] = t;
        }
    }

    [SkippableTheory]
    [InlineData("llama-spm", RoundTrip.SpaceMarkerAsSpace, 1500)] // SentencePiece
    [InlineData("baichuan", RoundTrip.SpaceMarkerAsSpace, 500)]  // SentencePiece, another vocabulary
    [InlineData("gpt-2", RoundTrip.Exact, 1500)]          // byte-level BPE, GPT-2 pre-tokenizer
    [InlineData("deepseek-coder", RoundTrip.Exact, 1500)] // byte-level BPE, its own pre-tokenizer
    [InlineData("falcon", RoundTrip.Exact, 1500)]
    [InlineData("starcoder", RoundTrip.Exact, 500)]
    [InlineData("bert-bge", RoundTrip.None, 1500)]        // WordPiece
    [InlineData("hf:llama3", RoundTrip.Exact, 500)]       // tokenizer.json, byte-level BPE
    [InlineData("hf:qwen3", RoundTrip.Nfc, 500)]          // tokenizer.json with an NFC normalizer: text comes back composed
    public void Random_bytes_encode_in_range_and_round_trip(string source, RoundTrip roundTrip, int ciIterations)
    {
        var tokenizer = Load(source);
        var random = new Random(FuzzSettings.Seed(20261125) ^ source.Length * 7919);
        int iterations = FuzzSettings.Iterations(ciIterations);
        long bytesIn = 0, tokensOut = 0, validUtf8 = 0, changed = 0;
        var clock = Stopwatch.StartNew();
        var bytes = new List<byte>();
        for (int i = 0; i < iterations; i++)
        {
            bytes.Clear();
            int n = random.Next(0, 24);
            for (int k = 0; k < n; k++) bytes.AddRange(Pieces[random.Next(Pieces.Length)]);
            byte[] raw = [.. bytes];
            bytesIn += raw.Length;
            string text;
            try
            {
                text = Strict.GetString(raw);
                validUtf8++;
            }
            catch (DecoderFallbackException)
            {
                // Invalid sequences become U+FFFD, as they do when a client's bytes become a .NET string.
                text = Encoding.UTF8.GetString(raw);
            }

            int[] ids = tokenizer.Encode(text, addSpecial: random.Next(2) == 0, parseSpecial: random.Next(4) == 0);
            tokensOut += ids.Length;
            foreach (int id in ids)
                Assert.True(id >= 0 && id < tokenizer.VocabSize, $"case {i}: id {id} outside [0, {tokenizer.VocabSize}) for {VocabTestVectors.Escape(text)}");
            _ = tokenizer.Decode(ids, renderSpecial: true);

            if (roundTrip == RoundTrip.None) continue;
            int[] plain = tokenizer.Encode(text);
            string back = tokenizer.Decode(plain);
            string expected = roundTrip switch
            {
                RoundTrip.SpaceMarkerAsSpace => text.Replace('\u2581', ' '),
                RoundTrip.Nfc => TokenMill.Tokenization.UnicodeNormalization.ToNfc(text),
                _ => text,
            };
            if (expected != text) changed++;
            Assert.True(expected == back, $"case {i}: {VocabTestVectors.Escape(text)} decoded as {VocabTestVectors.Escape(back)}");
        }
        output.WriteLine($"{source}: {iterations:N0} strings ({validUtf8:N0} valid UTF-8, {changed:N0} expected back changed), "
                         + $"{bytesIn:N0} bytes → {tokensOut:N0} tokens in {clock.Elapsed.TotalSeconds:F1} s, round trip {roundTrip}");
    }

    [SkippableTheory]
    [InlineData("llama-spm")]
    [InlineData("gpt-2")]
    [InlineData("bert-bge")]
    [InlineData("hf:qwen3")]
    public void Random_ids_decode_without_exception(string source)
    {
        var tokenizer = Load(source);
        var random = new Random(FuzzSettings.Seed(77));
        int iterations = FuzzSettings.Iterations(500);
        for (int i = 0; i < iterations; i++)
        {
            var ids = new int[random.Next(0, 16)];
            for (int k = 0; k < ids.Length; k++) ids[k] = random.Next(tokenizer.VocabSize);
            string text = tokenizer.Decode(ids, renderSpecial: random.Next(2) == 0);
            // Whatever the ids, the text must be well-formed UTF-16: a lone surrogate would break the JSON response.
            // (a strict encoder throws on one).
            _ = Strict.GetByteCount(text);
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
