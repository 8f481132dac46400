using CsCheck;
using Microsoft.ML.Tokenizers;
using TokenMill.Tokenization;

namespace TokenMill.Tests.Tokenization;

public class Cl100kFittedTokenizerTests
{
    static readonly Lazy<TiktokenTokenizer> Gpt4 = new(() => TiktokenTokenizer.CreateForModel("gpt-4"));

    static IEnumerable<string> SampleTexts()
    {
        foreach (var s in TokenizerSamples.Fixed) yield return s;
        foreach (var name in VocabTestVectors.Available())
        {
            foreach (var c in VocabTestVectors.Load(name)) yield return c.Input;
            yield break; // every vocabulary has the same inputs
        }
    }

    [Theory]
    [InlineData(257)]
    [InlineData(1000)]
    [InlineData(32000)]
    public void Never_emits_an_id_outside_the_vocabulary_and_round_trips(int vocabSize)
    {
        var tokenizer = TokenizerLoader.Cl100kFitted(vocabSize);
        void Check(string text)
        {
            int[] ids = tokenizer.Encode(text, addSpecial: true, parseSpecial: true);
            Assert.All(ids, id => Assert.InRange(id, 0, vocabSize - 1));
            Assert.Equal(text, tokenizer.Decode(ids));
        }
        foreach (var text in SampleTexts()) Check(text);
        TokenizerSamples.Mixed.Sample(Check, iter: 300);
    }

    [Fact]
    public void Truncated_vocabulary_encodes_as_tiktoken_bpe_over_the_kept_ranks()
    {
        const int vocabSize = 32000;
        var tokenizer = TokenizerLoader.Cl100kFitted(vocabSize);
        var reference = new ReferenceTiktoken(vocabSize, excludedRank: vocabSize - 1); // the last id is <|endoftext|>
        void Check(string text) => Assert.Equal(reference.Encode(text), tokenizer.Encode(text));
        foreach (var text in SampleTexts()) Check(text);
        TokenizerSamples.Mixed.Sample(Check, iter: 300);
    }

    [Theory]
    [InlineData(128256)]
    [InlineData(151936)]
    public void Large_vocabulary_equals_untruncated_cl100k(int vocabSize)
    {
        var tokenizer = TokenizerLoader.Cl100kFitted(vocabSize);
        void Check(string text) => Assert.Equal(Gpt4.Value.EncodeToIds(text), tokenizer.Encode(text));
        foreach (var text in SampleTexts()) Check(text);
        TokenizerSamples.Mixed.Sample(Check, iter: 300);

        // Special tokens keep their cl100k ids when parsed, as in Microsoft.ML.Tokenizers' gpt-4 tokenizer.
        const string withSpecial = "Hello <|endoftext|> world<|fim_prefix|>x";
        Assert.Equal(Gpt4.Value.EncodeToIds(withSpecial), tokenizer.Encode(withSpecial, parseSpecial: true));
    }

    [Theory]
    [InlineData(32000, 31999)]
    [InlineData(100257, 100256)]
    [InlineData(128256, 100257)]
    public void End_of_text_is_bos_and_eos_and_in_range(int vocabSize, int endOfText)
    {
        var tokenizer = TokenizerLoader.Cl100kFitted(vocabSize);
        Assert.Equal(vocabSize, tokenizer.VocabSize);
        Assert.Equal(endOfText, tokenizer.EosId);
        Assert.Equal(endOfText, tokenizer.BosId);
        Assert.Equal([endOfText], tokenizer.EndOfGenerationIds);
        Assert.False(tokenizer.AddBos);

        Assert.Equal([endOfText], tokenizer.Encode("<|endoftext|>", parseSpecial: true));
        Assert.DoesNotContain(endOfText, tokenizer.Encode("<|endoftext|>", parseSpecial: false));
        Assert.Empty(tokenizer.TokenToBytes(endOfText));
        Assert.Equal("<|endoftext|>"u8.ToArray(), tokenizer.TokenToBytes(endOfText, renderSpecial: true));
    }

    [Fact]
    public void Placeholder_ids_above_cl100k_decode_to_nothing()
    {
        var tokenizer = TokenizerLoader.Cl100kFitted(151936);
        Assert.Empty(tokenizer.TokenToBytes(100256));
        Assert.Empty(tokenizer.TokenToBytes(151935));
        Assert.Throws<ArgumentOutOfRangeException>(() => tokenizer.TokenToBytes(151936));
    }

    [Fact]
    public void Rejects_a_vocabulary_too_small_for_the_byte_tokens()
        => Assert.Throws<ArgumentOutOfRangeException>(() => TokenizerLoader.Cl100kFitted(256));

    /// <summary>
    /// tiktoken's byte-pair merge written the slow, obvious way: within each regex piece, repeatedly merge
    /// the adjacent pair whose concatenation has the lowest allowed rank (leftmost on ties).
    /// </summary>
    sealed class ReferenceTiktoken(int vocabSize, int excludedRank)
    {
        readonly Dictionary<string, int> _ranks = Cl100kFittedTokenizer.AllRanks
            .Where(kv => kv.Value < vocabSize && kv.Value != excludedRank)
            .ToDictionary(kv => Convert.ToHexString(kv.Key), kv => kv.Value);

        public int[] Encode(string text)
        {
            var ids = new List<int>();
            foreach (var (offset, length) in Gpt4.Value.PreTokenizer!.PreTokenize(text))
            {
                var parts = System.Text.Encoding.UTF8.GetBytes(text.Substring(offset, length)).Select(b => Convert.ToHexString([b])).ToList();
                while (true)
                {
                    int best = -1, bestRank = int.MaxValue;
                    for (int i = 0; i + 1 < parts.Count; i++)
                        if (_ranks.TryGetValue(parts[i] + parts[i + 1], out int r) && r < bestRank) (best, bestRank) = (i, r);
                    if (best < 0) break;
                    parts[best] += parts[best + 1];
                    parts.RemoveAt(best + 1);
                }
                ids.AddRange(parts.Select(p => _ranks[p]));
            }
            return [.. ids];
        }
    }
}
