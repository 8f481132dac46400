using System.Text;

namespace TokenMill.Tokenization;

/// <summary>
/// WordPiece for GGUF <c>tokenizer.ggml.model = "bert"</c>: llama.cpp's <c>llm_tokenizer_wpm</c>. The text
/// is normalized as BERT's basic tokenizer does (per codepoint: first character of its NFD form,
/// combining marks and control characters dropped, lower-cased; <c>normalizer.lowercase</c>/<c>strip_accents</c>
/// in the GGUF can turn these off), split at white space and around punctuation and CJK ideographs,
/// and each word, prefixed with <c>▁</c>, is cut greedily into the longest vocabulary entries; a word
/// that cannot be cut completely becomes the unknown token. With <c>addSpecial</c> the result is
/// wrapped in BOS (<c>[CLS]</c>) and the separator (<c>[SEP]</c>), as llama.cpp does for BERT.
/// </summary>
internal sealed class WpmTokenizer : GgufTokenizer
{
    const char SpaceMarker = '\u2581';

    readonly bool _lowercase;
    readonly bool _stripAccents;

    public WpmTokenizer(GgufVocabulary vocab, bool lowercase, bool stripAccents) : base(vocab)
    {
        _lowercase = lowercase;
        _stripAccents = stripAccents;
        BuildPieceCache();
    }

    protected override void EncodeInto(string text, bool addSpecial, bool parseSpecial, List<int> output)
    {
        if (addSpecial) output.Add(Vocab.Bos!.Value);
        foreach (var fragment in SpecialTokenSplitter.Split(Vocab, text, parseSpecial))
        {
            if (fragment.IsToken) output.Add(fragment.TokenId);
            else foreach (string word in Words(text.AsSpan(fragment.Offset, fragment.Length))) TokenizeWord(word, output);
        }
        if (addSpecial) output.Add(Vocab.Separator!.Value);
    }

    protected override byte[] NormalTokenBytes(string text) => Encoding.UTF8.GetBytes(text.Replace(SpaceMarker, ' '));

    void TokenizeWord(string word, List<int> output)
    {
        string marked = SpaceMarker + word;
        int n = marked.Length;
        int before = output.Count;
        for (int i = 0; i < n;)
        {
            int matched = 0;
            // Longest vocabulary entry starting at i (no entry is longer than MaxTokenLength UTF-16 units).
            for (int j = Math.Min(n, i + Vocab.MaxTokenLength); j > i; j--)
            {
                if (Vocab.TryFind(marked.AsSpan(i, j - i), out int id))
                {
                    output.Add(id);
                    matched = j - i;
                    break;
                }
            }
            if (matched == 0)
            {
                output.RemoveRange(before, output.Count - before); // the whole word becomes [UNK]
                break;
            }
            i += matched;
        }
        if (output.Count == before) output.Add(Vocab.Unknown!.Value);
    }

    /// <summary>llama.cpp's <c>llm_tokenizer_wpm_session::preprocess</c>.</summary>
    List<string> Words(ReadOnlySpan<char> text)
    {
        var words = new List<string>();
        var current = new StringBuilder();
        void Finish()
        {
            if (current.Length == 0) return;
            words.Add(current.ToString());
            current.Clear();
        }

        foreach (var rune in text.EnumerateRunes())
        {
            int cp = _stripAccents ? UnicodeNormalization.FirstOfDecomposition(rune.Value) : rune.Value;
            var flags = CodepointFlags.Of(cp);
            if (flags.IsWhitespace)
            {
                Finish();
                continue;
            }
            if (cp == 0 || cp == 0xFFFD || flags.Category == CodepointFlags.Control) continue;
            if (_stripAccents && flags.Category == CodepointFlags.AccentMark) continue;

            var r = new Rune(cp);
            if (_lowercase) r = Rune.ToLowerInvariant(r);
            if (flags.Category == CodepointFlags.Punctuation || (cp < 0x7F && flags.Category == CodepointFlags.Symbol) || IsChineseChar(cp))
            {
                Finish();
                current.Append(r.ToString());
                Finish();
            }
            else
            {
                current.Append(r.ToString());
            }
        }
        Finish();
        return words;
    }

    // The CJK ranges of BERT's _is_chinese_char, as llama.cpp copies them (including its 0x2B920 quirk).
    static bool IsChineseChar(int cp) =>
        cp is (>= 0x04E00 and <= 0x09FFF) or (>= 0x03400 and <= 0x04DBF) or (>= 0x20000 and <= 0x2A6DF)
            or (>= 0x2A700 and <= 0x2B73F) or (>= 0x2B740 and <= 0x2B81F) or (>= 0x2B920 and <= 0x2CEAF)
            or (>= 0x0F900 and <= 0x0FAFF) or (>= 0x2F800 and <= 0x2FA1F);
}
