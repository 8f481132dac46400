using System.Text;

namespace TokenMill.Tokenization.HuggingFace;

/// <summary>A <c>tokenizer.json</c> normalizer: text → text, applied to the text between added tokens.</summary>
internal abstract record Normalizer
{
    public abstract string Normalize(string text);

    public sealed record Nfc : Normalizer
    {
        public override string Normalize(string text) => UnicodeNormalization.ToNfc(text);
    }

    public sealed record Nfd : Normalizer
    {
        public override string Normalize(string text) => UnicodeNormalization.ToNfd(text);
    }

    /// <summary><c>Replace</c> with a <c>String</c> pattern: every occurrence, left to right.</summary>
    public sealed record Replace(string Pattern, string Content) : Normalizer
    {
        public override string Normalize(string text) => Pattern.Length == 0 ? text : text.Replace(Pattern, Content, StringComparison.Ordinal);
    }

    /// <summary><c>Prepend</c>: the content before non-empty text.</summary>
    public sealed record Prepend(string Content) : Normalizer
    {
        public override string Normalize(string text) => text.Length == 0 ? text : Content + text;
    }

    public sealed record Sequence(Normalizer[] Steps) : Normalizer
    {
        public override string Normalize(string text)
        {
            foreach (var step in Steps) text = step.Normalize(text);
            return text;
        }
    }
}

/// <summary>A <c>tokenizer.json</c> pre-tokenizer: splits each piece of text into the words the model encodes.</summary>
internal abstract record PreTokenizer
{
    public abstract void Split(string piece, List<string> output);

    public List<string> Split(List<string> pieces)
    {
        var output = new List<string>(pieces.Count);
        foreach (var p in pieces) Split(p, output);
        return output;
    }

    /// <summary><c>Split</c> with a regex: matches and the text between them are kept (behavior <c>Isolated</c>).</summary>
    public sealed record RegexSplit(string Regex, LlamaPreTokenizer Splitter) : PreTokenizer
    {
        public override void Split(string piece, List<string> output) => output.AddRange(Splitter.SplitToStrings(piece));
    }

    /// <summary><c>Split</c> with a <c>String</c> pattern and Hugging Face's <c>SplitDelimiterBehavior</c>.</summary>
    public sealed record StringSplit(string Pattern, SplitBehavior Behavior) : PreTokenizer
    {
        public override void Split(string piece, List<string> output)
        {
            // Pieces as (start, end, isDelimiter), then grouped by the behavior.
            var parts = new List<(int Start, int End, bool Delimiter)>();
            int at = 0;
            while (Pattern.Length > 0 && at <= piece.Length)
            {
                int match = piece.IndexOf(Pattern, at, StringComparison.Ordinal);
                if (match < 0) break;
                if (match > at) parts.Add((at, match, false));
                parts.Add((match, match + Pattern.Length, true));
                at = match + Pattern.Length;
            }
            if (at < piece.Length) parts.Add((at, piece.Length, false));

            int? pendingStart = null; // MergedWithNext: delimiters waiting for the next piece
            for (int i = 0; i < parts.Count; i++)
            {
                var (start, end, delimiter) = parts[i];
                switch (Behavior)
                {
                    case SplitBehavior.Removed:
                        if (!delimiter) output.Add(piece[start..end]);
                        break;
                    case SplitBehavior.Isolated:
                        output.Add(piece[start..end]);
                        break;
                    case SplitBehavior.MergedWithPrevious:
                        if (delimiter && i > 0 && !parts[i - 1].Delimiter) output[^1] += piece[start..end];
                        else output.Add(piece[start..end]);
                        break;
                    case SplitBehavior.MergedWithNext:
                        if (delimiter)
                        {
                            pendingStart ??= start;
                            if (i + 1 == parts.Count) output.Add(piece[pendingStart.Value..end]);
                        }
                        else
                        {
                            output.Add(piece[(pendingStart ?? start)..end]);
                            pendingStart = null;
                        }
                        break;
                    case SplitBehavior.Contiguous:
                        if (i > 0 && parts[i - 1].Delimiter == delimiter) output[^1] += piece[start..end];
                        else output.Add(piece[start..end]);
                        break;
                }
            }
        }
    }

    /// <summary>
    /// <c>ByteLevel</c>: optionally a space before the text, optionally GPT-2's word regex, then each word's UTF-8
    /// bytes written as GPT-2 byte characters (one character per byte).
    /// </summary>
    public sealed record ByteLevel(bool AddPrefixSpace, LlamaPreTokenizer? WordSplitter) : PreTokenizer
    {
        public override void Split(string piece, List<string> output)
        {
            if (AddPrefixSpace && !piece.StartsWith(' ')) piece = " " + piece;
            if (WordSplitter is null) output.Add(Encode(piece));
            else foreach (var word in WordSplitter.SplitToStrings(piece)) output.Add(Encode(word));
        }

        internal static string Encode(string text) => Gpt2ByteEncoding.Encode(Encoding.UTF8.GetBytes(text));
    }

    public sealed record Sequence(PreTokenizer[] Steps) : PreTokenizer
    {
        public override void Split(string piece, List<string> output)
        {
            var pieces = new List<string> { piece };
            foreach (var step in Steps) pieces = step.Split(pieces);
            output.AddRange(pieces);
        }
    }
}

/// <summary>Hugging Face's <c>SplitDelimiterBehavior</c>.</summary>
internal enum SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous }

/// <summary>
/// A <c>tokenizer.json</c> decoder step applied to each token on its own (which is how every step the supported
/// files use works before <c>Fuse</c>): the token's text in, its text or raw bytes out.
/// </summary>
internal abstract record TokenDecoder
{
    /// <summary>Transforms one token; <paramref name="isAdded"/> is true for an added token.</summary>
    public abstract void Apply(ref string text, ref byte[]? bytes, bool isAdded);

    /// <summary><c>ByteLevel</c>: GPT-2 byte characters back to bytes. Added tokens pass through as their text.</summary>
    public sealed record ByteLevel : TokenDecoder
    {
        public override void Apply(ref string text, ref byte[]? bytes, bool isAdded)
        {
            if (isAdded || bytes is not null) return;
            var output = new List<byte>(text.Length);
            Span<byte> utf8 = stackalloc byte[4];
            foreach (var rune in text.EnumerateRunes())
            {
                int b = rune.Value < 0x10000 ? Gpt2ByteEncoding.ToByte((char)rune.Value) : -1;
                if (b >= 0) output.Add((byte)b);
                else output.AddRange(utf8[..rune.EncodeToUtf8(utf8)]); // not a byte character: its own UTF-8
            }
            bytes = [.. output];
        }
    }

    /// <summary><c>Replace</c> with a <c>String</c> pattern.</summary>
    public sealed record Replace(string Pattern, string Content) : TokenDecoder
    {
        public override void Apply(ref string text, ref byte[]? bytes, bool isAdded)
        {
            if (bytes is null && Pattern.Length > 0) text = text.Replace(Pattern, Content, StringComparison.Ordinal);
        }
    }

    /// <summary><c>ByteFallback</c>: a <c>&lt;0xAB&gt;</c> token is the byte 0xAB.</summary>
    public sealed record ByteFallback : TokenDecoder
    {
        public override void Apply(ref string text, ref byte[]? bytes, bool isAdded)
        {
            if (bytes is null && text.Length == 6 && text.StartsWith("<0x", StringComparison.Ordinal) && text[5] == '>'
                && byte.TryParse(text.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b))
                bytes = [b];
        }
    }
}
