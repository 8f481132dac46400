using System.Text;
using TokenMill.Models.Gguf;
using TokenMill.Tokenization;
using Xunit.Abstractions;

namespace TokenMill.Tests.Tokenization;

/// <summary>
/// llama.cpp's own tokenizer test vectors (the expectations of its <c>test-tokenizer-0</c>), asserted
/// exactly for every vocabulary in the shared test data that has a GGUF and both vector files.
/// </summary>
public class GgufTokenizerVectorTests(ITestOutputHelper output)
{
    public static TheoryData<string> Vocabularies() => Names(VocabTestVectors.Available());

    // WordPiece lower-cases and drops accents, so its decoding cannot give the input back.
    public static TheoryData<string> ReversibleVocabularies() => Names(VocabTestVectors.Available().Where(n => n != "bert-bge"));

    static TheoryData<string> Names(IEnumerable<string> names)
    {
        var data = new TheoryData<string>();
        foreach (var name in names) data.Add(name);
        if (data.Count == 0) data.Add("(no test data)"); // keeps the theory visible; it skips when run
        return data;
    }

    static ITokenizer Load(string name)
    {
        using var file = GgufFile.Open(VocabTestVectors.GgufPath(name));
        return TokenizerLoader.FromGguf(file);
    }

    [SkippableTheory]
    [MemberData(nameof(Vocabularies))]
    public void Encodes_llama_cpp_test_vectors_exactly(string vocabulary)
    {
        var cases = VocabTestVectors.Load(vocabulary);
        var tokenizer = Load(vocabulary);

        var failures = new StringBuilder();
        int passed = 0;
        foreach (var c in cases)
        {
            int[] actual = tokenizer.Encode(c.Input, addSpecial: false, parseSpecial: false);
            if (actual.SequenceEqual(c.Expected))
            {
                passed++;
                continue;
            }
            failures.AppendLine($"case {c.Index}: {VocabTestVectors.Escape(c.Input)}");
            failures.AppendLine($"  expected: [{string.Join(' ', c.Expected)}]  {Pieces(tokenizer, c.Expected)}");
            failures.AppendLine($"  actual:   [{string.Join(' ', actual)}]  {Pieces(tokenizer, actual)}");
        }
        output.WriteLine($"{vocabulary}: {passed}/{cases.Count} cases pass");
        Assert.True(failures.Length == 0, $"{vocabulary}: {cases.Count - passed} of {cases.Count} cases differ from llama.cpp\n{failures}");
    }

    [SkippableTheory]
    [MemberData(nameof(ReversibleVocabularies))]
    public void Decode_of_encode_gives_back_the_input(string vocabulary)
    {
        var cases = VocabTestVectors.Load(vocabulary);
        var tokenizer = Load(vocabulary);

        var failures = new StringBuilder();
        foreach (var c in cases)
        {
            // SentencePiece vocabularies prefix a space when encoding; Decode drops it again (as llama.cpp's detokenizer).
            string decoded = tokenizer.Decode(tokenizer.Encode(c.Input));
            if (decoded != c.Input)
                failures.AppendLine($"case {c.Index}: {VocabTestVectors.Escape(c.Input)} decoded as {VocabTestVectors.Escape(decoded)}");
        }
        Assert.True(failures.Length == 0, $"{vocabulary}: round trip fails\n{failures}");
    }

    static string Pieces(ITokenizer tokenizer, int[] ids) =>
        string.Join(' ', ids.Select(id => id >= 0 && id < tokenizer.VocabSize
            ? VocabTestVectors.Escape(Encoding.UTF8.GetString(tokenizer.TokenToBytes(id, renderSpecial: true)))
            : "<out of range>"));
}
