namespace TokenMill.Tokenization;

/// <summary>
/// Hand-written splitters for the GPT-2 and Llama 3 patterns, line-by-line ports of llama.cpp's
/// <c>unicode_regex_split_custom_gpt2</c> and <c>unicode_regex_split_custom_llama3</c>
/// (<c>unicode.cpp</c>). llama.cpp runs these instead of a regex for those two exact patterns, and its
/// outputs are the reference, so we port them rather than trusting a regex translation; a property
/// test checks them against the regex path.
/// </summary>
internal static class CustomSplitters
{
    const int OutOfRange = -1;

    /// <summary><c>'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+</c></summary>
    public static List<int> Gpt2(int[] cps, CodepointFlags[] flags, List<int> offsets)
    {
        var result = new List<int>(offsets.Count);
        int start = 0;
        foreach (int offset in offsets)
        {
            var s = new Segment(cps, flags, start, start + offset, result);
            start += offset;
            for (int pos = s.Begin; pos < s.End;)
            {
                int cpt = s.Cpt(pos);
                var f = s.Flags(pos);

                // 's|'t|'re|'ve|'m|'ll|'d
                if (cpt == '\'' && pos + 1 < s.End)
                {
                    int next = s.Cpt(pos + 1);
                    if (next is 's' or 't' or 'm' or 'd')
                    {
                        pos += s.AddToken(pos + 2);
                        continue;
                    }
                    if (pos + 2 < s.End)
                    {
                        int nextNext = s.Cpt(pos + 2);
                        if ((next == 'r' && nextNext == 'e') || (next == 'v' && nextNext == 'e') || (next == 'l' && nextNext == 'l'))
                        {
                            pos += s.AddToken(pos + 3);
                            continue;
                        }
                    }
                }

                var f2 = cpt == ' ' ? s.Flags(pos + 1) : f;
                // <space>?\p{L}+
                if (f2.IsLetter)
                {
                    if (cpt == ' ') pos++;
                    while (f2.IsLetter) f2 = s.Flags(++pos);
                    s.AddToken(pos);
                    continue;
                }
                // <space>?\p{N}+
                if (f2.IsNumber)
                {
                    if (cpt == ' ') pos++;
                    while (f2.IsNumber) f2 = s.Flags(++pos);
                    s.AddToken(pos);
                    continue;
                }
                // <space>?[^\s\p{L}\p{N}]+
                if (!(f2.IsWhitespace || f2.IsLetter || f2.IsNumber) && f2.IsInRange)
                {
                    if (cpt == ' ') pos++;
                    while (!(f2.IsWhitespace || f2.IsLetter || f2.IsNumber) && f2.IsInRange) f2 = s.Flags(++pos);
                    s.AddToken(pos);
                    continue;
                }

                int whitespaces = 0;
                while (s.Flags(pos + whitespaces).IsWhitespace) whitespaces++;

                // \s+(?!\S)
                if (whitespaces > 1 && s.Cpt(pos + whitespaces) != OutOfRange)
                {
                    pos += whitespaces - 1;
                    s.AddToken(pos);
                    continue;
                }
                // \s+
                if (whitespaces > 0)
                {
                    pos += whitespaces;
                    s.AddToken(pos);
                    continue;
                }
                // no match
                s.AddToken(++pos);
            }
        }
        return result;
    }

    /// <summary><c>(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+</c></summary>
    public static List<int> Llama3(int[] cps, CodepointFlags[] flags, List<int> offsets)
    {
        var result = new List<int>(offsets.Count);
        int start = 0;
        foreach (int offset in offsets)
        {
            var s = new Segment(cps, flags, start, start + offset, result);
            start += offset;
            for (int pos = s.Begin; pos < s.End;)
            {
                int cpt = s.Cpt(pos);
                var f = s.Flags(pos);

                // (?i:'s|'t|'re|'ve|'m|'ll|'d); only ASCII letters lower-case to these, so ToLowerAscii is exact.
                if (cpt == '\'' && pos + 1 < s.End)
                {
                    int next = ToLowerAscii(s.Cpt(pos + 1));
                    if (next is 's' or 't' or 'm' or 'd')
                    {
                        pos += s.AddToken(pos + 2);
                        continue;
                    }
                    if (pos + 2 < s.End)
                    {
                        int nextNext = ToLowerAscii(s.Cpt(pos + 2));
                        if ((next == 'r' && nextNext == 'e') || (next == 'v' && nextNext == 'e') || (next == 'l' && nextNext == 'l'))
                        {
                            pos += s.AddToken(pos + 3);
                            continue;
                        }
                    }
                }

                // [^\r\n\p{L}\p{N}]?\p{L}+
                if (!(cpt == '\r' || cpt == '\n' || f.IsNumber))
                {
                    if (f.IsLetter || s.Flags(pos + 1).IsLetter)
                    {
                        pos++;
                        while (s.Flags(pos).IsLetter) pos++;
                        s.AddToken(pos);
                        continue;
                    }
                }

                // \p{N}{1,3}
                if (f.IsNumber)
                {
                    int first = pos;
                    while (s.Flags(pos).IsNumber)
                    {
                        if (++pos - first >= 3)
                        {
                            s.AddToken(pos);
                            first = pos;
                        }
                    }
                    s.AddToken(pos);
                    continue;
                }

                // <space>?[^\s\p{L}\p{N}]+[\r\n]*  (llama.cpp tests f, not f2, for "in range" here; kept as is)
                var f2 = cpt == ' ' ? s.Flags(pos + 1) : f;
                if (!(f2.IsWhitespace || f2.IsLetter || f2.IsNumber) && f.IsInRange)
                {
                    if (cpt == ' ') pos++;
                    while (!(f2.IsWhitespace || f2.IsLetter || f2.IsNumber) && f2.IsInRange) f2 = s.Flags(++pos);
                    int cpt2 = s.Cpt(pos);
                    while (cpt2 is '\r' or '\n') cpt2 = s.Cpt(++pos);
                    s.AddToken(pos);
                    continue;
                }

                int whitespaces = 0;
                int lastEndOfLine = 0;
                while (s.Flags(pos + whitespaces).IsWhitespace)
                {
                    int cpt2 = s.Cpt(pos + whitespaces);
                    if (cpt2 is '\r' or '\n') lastEndOfLine = pos + whitespaces + 1;
                    whitespaces++;
                }

                // \s*[\r\n]+
                if (lastEndOfLine > 0)
                {
                    pos = lastEndOfLine;
                    s.AddToken(pos);
                    continue;
                }
                // \s+(?!\S)
                if (whitespaces > 1 && s.Cpt(pos + whitespaces) != OutOfRange)
                {
                    pos += whitespaces - 1;
                    s.AddToken(pos);
                    continue;
                }
                // \s+
                if (whitespaces > 0)
                {
                    pos += whitespaces;
                    s.AddToken(pos);
                    continue;
                }
                // no match
                s.AddToken(++pos);
            }
        }
        return result;
    }

    static int ToLowerAscii(int cp) => cp is >= 'A' and <= 'Z' ? cp + ('a' - 'A') : cp;

    /// <summary>One piece being split further: bounds-checked access and the "emit up to here" helper.</summary>
    struct Segment(int[] cps, CodepointFlags[] flags, int begin, int end, List<int> output)
    {
        int _previousEnd = begin;

        public readonly int Begin { get; } = begin;
        public readonly int End { get; } = end;

        public readonly int Cpt(int pos) => pos >= Begin && pos < End ? cps[pos] : OutOfRange;

        public readonly CodepointFlags Flags(int pos) => pos >= Begin && pos < End ? flags[pos] : CodepointFlags.OutOfRange;

        /// <summary>Emits the piece from the previous end to <paramref name="tokenEnd"/> (if not empty); returns its length.</summary>
        public int AddToken(int tokenEnd)
        {
            int length = tokenEnd - _previousEnd;
            if (length > 0) output.Add(length);
            _previousEnd = tokenEnd;
            return length;
        }
    }
}
