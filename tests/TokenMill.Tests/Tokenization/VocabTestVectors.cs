using System.Text;

namespace TokenMill.Tests.Tokenization;

/// <summary>
/// llama.cpp's tokenizer test vectors (<c>ggml-vocab-NAME.gguf.inp</c>/<c>.out</c>, see the README beside them):
/// the inputs joined by <c>"\n__ggml_vocab_test__\n"</c>, and one line of expected ids per input.
/// </summary>
public sealed record VocabTestCase(int Index, string Input, int[] Expected);

public static class VocabTestVectors
{
    public const string Folder = "vocab";
    const string Separator = "\n__ggml_vocab_test__\n";

    /// <summary>Vocabulary names that have a GGUF and both vector files (empty when the data is absent).</summary>
    public static IEnumerable<string> Available()
    {
        if (TestData.Root is null) yield break;
        var dir = Path.Combine(TestData.Root, Folder);
        if (!Directory.Exists(dir)) yield break;
        foreach (var gguf in Directory.GetFiles(dir, "ggml-vocab-*.gguf").Order(StringComparer.Ordinal))
        {
            if (File.Exists(gguf + ".inp") && File.Exists(gguf + ".out"))
                yield return Path.GetFileName(gguf)["ggml-vocab-".Length..^".gguf".Length];
        }
    }

    public static string GgufPath(string name) => TestData.Require($"{Folder}/ggml-vocab-{name}.gguf");

    public static IReadOnlyList<VocabTestCase> Load(string name)
    {
        string gguf = GgufPath(name);
        string input = File.ReadAllText(gguf + ".inp", Encoding.UTF8);
        var inputs = input.Split(Separator).ToList();
        // Usually the separator also follows the last case; then the text after it is not a case.
        if (input.EndsWith(Separator, StringComparison.Ordinal)) inputs.RemoveAt(inputs.Count - 1);

        var lines = File.ReadAllLines(gguf + ".out", Encoding.UTF8);
        if (lines.Length != inputs.Count)
            throw new InvalidDataException($"{name}: {inputs.Count} inputs but {lines.Length} expected-output lines");

        return [.. inputs.Select((text, i) => new VocabTestCase(i, text,
            [.. lines[i].Split(' ', StringSplitOptions.RemoveEmptyEntries | StringSplitOptions.TrimEntries).Select(int.Parse)]))];
    }

    /// <summary>The text with control characters and non-ASCII made visible, for failure messages.</summary>
    public static string Escape(string s)
    {
        var sb = new StringBuilder("\"");
        foreach (var rune in s.EnumerateRunes())
        {
            sb.Append(rune.Value switch
            {
                '\n' => "\\n",
                '\r' => "\\r",
                '\t' => "\\t",
                '"' => "\\\"",
                '\\' => "\\\\",
                < 0x20 or 0x7F => $"\\x{rune.Value:X2}",
                _ => rune.ToString(),
            });
        }
        return sb.Append('"').ToString();
    }
}
