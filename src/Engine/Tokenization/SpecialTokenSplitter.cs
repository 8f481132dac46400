namespace TokenMill.Tokenization;

/// <summary>A piece of the input: either a token id already decided, or a run of text still to tokenize.</summary>
internal readonly record struct TextFragment(int TokenId, int Offset, int Length)
{
    public bool IsToken => TokenId >= 0;

    public static TextFragment Token(int id) => new(id, 0, 0);

    public static TextFragment Text(int offset, int length) => new(-1, offset, length);
}

/// <summary>
/// Cuts the text of special tokens out of the input before the tokenizer proper sees it, as
/// llama.cpp's <c>tokenizer_st_partition</c> does: tokens are tried longest first; each occurrence
/// splits its fragment into left text, the token, right text, honouring the token's
/// <see cref="TokenAttributes.LStrip"/>/<see cref="TokenAttributes.RStrip"/> (white space next to it is dropped).
/// <para>
/// Which tokens take part follows llama.cpp exactly: user-defined tokens (GGUF token type 4) are
/// always cut out, even when <c>parseSpecial</c> is false — Hugging Face tokenizers treat added
/// tokens that way, and e.g. the runs-of-spaces tokens of GPT-NeoX/MPT vocabularies rely on it.
/// Control and unknown tokens are cut out only when <c>parseSpecial</c> is true; otherwise their
/// text (e.g. <c>&lt;s&gt;</c>) is tokenized as ordinary text.
/// </para>
/// </summary>
internal static class SpecialTokenSplitter
{
    public static List<TextFragment> Split(GgufVocabulary vocab, string text, bool parseSpecial)
    {
        var fragments = new List<TextFragment>();
        if (text.Length == 0) return fragments;
        fragments.Add(TextFragment.Text(0, text.Length));

        var next = new List<TextFragment>();
        foreach (int special in vocab.SpecialTokensLongestFirst)
        {
            var attributes = vocab.Attributes[special];
            if (!parseSpecial && (attributes & (TokenAttributes.Control | TokenAttributes.Unknown)) != 0) continue;

            string token = vocab.Texts[special];
            if (token.Length == 0) continue;
            next.Clear();
            bool changed = false;
            foreach (var fragment in fragments)
            {
                if (fragment.IsToken || text.AsSpan(fragment.Offset, fragment.Length).IndexOf(token, StringComparison.Ordinal) < 0)
                {
                    next.Add(fragment);
                    continue;
                }
                changed = true;
                SplitFragment(text, fragment, special, token, attributes, next);
            }
            if (changed) (fragments, next) = (next, fragments);
        }
        return fragments;
    }

    static void SplitFragment(string text, TextFragment fragment, int special, string token,
        TokenAttributes attributes, List<TextFragment> output)
    {
        int offset = fragment.Offset;
        int end = fragment.Offset + fragment.Length;
        while (offset < end)
        {
            int match = text.AsSpan(offset, end - offset).IndexOf(token, StringComparison.Ordinal);
            if (match < 0)
            {
                output.Add(TextFragment.Text(offset, end - offset));
                return;
            }
            match += offset;

            int leftLength = match - offset;
            if ((attributes & TokenAttributes.LStrip) != 0)
                while (leftLength > 0 && IsCSpace(text[offset + leftLength - 1])) leftLength--;
            if (leftLength > 0) output.Add(TextFragment.Text(offset, leftLength));

            output.Add(TextFragment.Token(special));

            offset = match + token.Length;
            if ((attributes & TokenAttributes.RStrip) != 0)
                while (offset < end && IsCSpace(text[offset])) offset++;
        }
    }

    /// <summary>C's <c>isspace</c> in the "C" locale, which is what llama.cpp strips with.</summary>
    static bool IsCSpace(char c) => c is ' ' or '\t' or '\n' or '\v' or '\f' or '\r';
}
