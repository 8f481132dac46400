namespace TokenMill.Tokenization.HuggingFace;

/// <summary>An entry of <c>tokenizer.json</c>'s <c>added_tokens</c>, with the flags Hugging Face gives it.</summary>
internal sealed record AddedToken(int Id, string Content, bool Special, bool LStrip, bool RStrip, bool Normalized, bool SingleWord);

/// <summary>A piece of input: an added token already decided, or text still to tokenize.</summary>
internal readonly record struct Section(string Text, AddedToken? Token);

/// <summary>
/// Cuts added tokens out of text as Hugging Face tokenizers do: scanning left to right, the longest added token that
/// starts at the leftmost position wins (a trie walk per position; Rust's aho-corasick in leftmost-longest mode,
/// transformers.js' <c>DictionarySplitter</c>). <c>lstrip</c>/<c>rstrip</c> remove the white space on that side of
/// the token; <c>single_word</c> accepts a match only when no word character touches it.
/// </summary>
internal sealed class AddedTokenSplitter
{
    sealed class Node
    {
        public Dictionary<char, Node>? Children;
        public AddedToken? Token;
    }

    readonly Node _root = new();

    public AddedTokenSplitter(IEnumerable<(string Text, AddedToken Token)> tokens)
    {
        foreach (var (text, token) in tokens)
        {
            if (text.Length == 0) continue;
            var node = _root;
            foreach (char c in text)
            {
                node.Children ??= [];
                if (!node.Children.TryGetValue(c, out var child)) node.Children[c] = child = new Node();
                node = child;
            }
            node.Token ??= token; // the first token of a given text keeps it, as the reference's map does
        }
    }

    public bool IsEmpty => _root.Children is null;

    /// <summary>Splits <paramref name="text"/> into text and added-token sections (no empty text sections).</summary>
    public List<Section> Split(string text)
    {
        var sections = new List<Section>();
        if (IsEmpty)
        {
            if (text.Length > 0) sections.Add(new Section(text, null));
            return sections;
        }
        int start = 0, i = 0;
        while (i < text.Length)
        {
            var (token, length) = LongestAt(text, i);
            if (token is null)
            {
                i++;
                continue;
            }
            if (i > start) sections.Add(new Section(text[start..i], null));
            sections.Add(new Section(text.Substring(i, length), token));
            i += length;
            start = i;
        }
        if (start < text.Length) sections.Add(new Section(text[start..], null));

        // lstrip/rstrip trim the neighbouring text; a section trimmed to nothing disappears.
        for (int s = 0; s < sections.Count; s++)
        {
            if (sections[s].Token is not { } t) continue;
            if (t.LStrip && s > 0 && sections[s - 1].Token is null) sections[s - 1] = sections[s - 1] with { Text = sections[s - 1].Text.TrimEnd() };
            if (t.RStrip && s + 1 < sections.Count && sections[s + 1].Token is null) sections[s + 1] = sections[s + 1] with { Text = sections[s + 1].Text.TrimStart() };
        }
        sections.RemoveAll(s => s.Token is null && s.Text.Length == 0);
        return sections;
    }

    (AddedToken? Token, int Length) LongestAt(string text, int start)
    {
        var node = _root;
        AddedToken? best = null;
        int bestLength = 0;
        for (int j = start; j < text.Length; j++)
        {
            if (node.Children is null || !node.Children.TryGetValue(text[j], out node)) break;
            if (node.Token is { } t && (!t.SingleWord || IsSingleWord(text, start, j + 1)))
            {
                best = t;
                bestLength = j + 1 - start;
            }
        }
        return (best, bestLength);
    }

    static bool IsSingleWord(string text, int start, int end) =>
        (start == 0 || !IsWordCharacter(text[start - 1])) && (end == text.Length || !IsWordCharacter(text[end]));

    static bool IsWordCharacter(char c) => char.IsLetterOrDigit(c) || c == '_';
}
