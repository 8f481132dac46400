using System.Globalization;
using System.Text;
using System.Text.RegularExpressions;

namespace TokenMill.Tokenization;

/// <summary>
/// One of llama.cpp's pre-tokenizer regexes, compiled once into a .NET <see cref="Regex"/> that
/// splits text exactly as llama.cpp's <c>unicode_regex_split</c> does with <c>std::regex</c>.
/// <para>
/// llama.cpp never runs these patterns with real Unicode classes. A pattern that mentions
/// <c>\p{N}</c>, <c>\p{L}</c>, <c>\p{P}</c>, <c>\p{M}</c>, <c>\p{S}</c> (or <c>\p{Lu}</c>…<c>\p{Lo}</c>,
/// which it treats as <c>\p{L}</c>) is run on a <em>collapsed</em> copy of the text where every
/// non-ASCII codepoint is replaced by one marker per class (white space by <c>\v</c>), and each
/// <c>\p{X}</c> becomes <c>[marker + the ASCII members of X]</c>. Any other pattern runs on the
/// codepoints themselves, again with non-ASCII white space replaced by <c>\v</c>. We do the same,
/// so the quirks are reproduced too (e.g. <c>~</c> is not in llama.cpp's ASCII <c>\p{S}</c>).
/// </para>
/// <para>
/// .NET differences bridged here: <see cref="RegexOptions.ECMAScript"/> gives the ASCII-only
/// <c>\s</c>/<c>\d</c>/<c>\w</c> of <c>std::regex</c>; <c>$</c> becomes <c>\z</c> (.NET's <c>$</c> also
/// matches before a final newline); <c>.</c> excludes ECMAScript's line terminators; a bracket class
/// holding codepoints above U+FFFF becomes an alternation over UTF-16 surrogate pairs.
/// </para>
/// </summary>
internal sealed class LlamaRegex
{
    // Markers standing for a whole Unicode class in the collapsed text. llama.cpp uses the bytes
    // 0xD0..0xD5; any characters that are neither ASCII nor white space work the same.
    const char OtherMarker = '\uE0D0';
    const char NumberMarker = '\uE0D1';
    const char LetterMarker = '\uE0D2';
    const char PunctuationMarker = '\uE0D3';
    const char AccentMarkMarker = '\uE0D4';
    const char SymbolMarker = '\uE0D5';

    // The \p{X} spellings llama.cpp collapses, with the marker and the ASCII members it substitutes
    // (k_ucat_enum, k_ucat_cpt and k_ucat_map in unicode.cpp).
    static readonly Dictionary<string, (char Marker, string Ascii)> Categories = new(StringComparer.Ordinal)
    {
        [@"\p{N}"] = (NumberMarker, "0-9"),
        [@"\p{L}"] = (LetterMarker, "A-Za-z"),
        [@"\p{P}"] = (PunctuationMarker, @"!-#%-*,-/:-;?-@\[-\]_\{\}"),
        [@"\p{M}"] = (AccentMarkMarker, ""),
        [@"\p{S}"] = (SymbolMarker, @"\$\+<->^`\|"),
        [@"\p{Lu}"] = (LetterMarker, "A-Za-z"),
        [@"\p{Ll}"] = (LetterMarker, "A-Za-z"),
        [@"\p{Lt}"] = (LetterMarker, "A-Za-z"),
        [@"\p{Lm}"] = (LetterMarker, "A-Za-z"),
        [@"\p{Lo}"] = (LetterMarker, "A-Za-z"),
    };

    public LlamaRegex(string llamaPattern)
    {
        LlamaPattern = llamaPattern;
        UsesCollapsedText = Categories.Keys.Any(k => llamaPattern.Contains(k, StringComparison.Ordinal));
        if (UsesCollapsedText && llamaPattern.Any(c => c >= 128))
            throw new NotSupportedException($"pre-tokenizer regex mixes Unicode classes and non-ASCII characters (llama.cpp rejects it too): {llamaPattern}");
        DotNetPattern = Translate(llamaPattern, UsesCollapsedText);
        Regex = new Regex(DotNetPattern, RegexOptions.ECMAScript | RegexOptions.Compiled);
    }

    /// <summary>The pattern as written in llama.cpp's <c>llama-vocab.cpp</c>.</summary>
    public string LlamaPattern { get; }

    /// <summary>The translated pattern <see cref="Regex"/> was built from.</summary>
    public string DotNetPattern { get; }

    /// <summary>Whether the pattern runs on <see cref="Collapse"/>d text rather than on the codepoints.</summary>
    public bool UsesCollapsedText { get; }

    public Regex Regex { get; }

    /// <summary>The single character standing for <paramref name="cp"/> in collapsed text.</summary>
    public static char Collapse(int cp, CodepointFlags flags)
    {
        if (cp < 128) return (char)cp;
        if (flags.IsWhitespace) return '\v';
        return flags.Category switch
        {
            CodepointFlags.Number => NumberMarker,
            CodepointFlags.Letter => LetterMarker,
            CodepointFlags.Punctuation => PunctuationMarker,
            CodepointFlags.AccentMark => AccentMarkMarker,
            CodepointFlags.Symbol => SymbolMarker,
            _ => OtherMarker,
        };
    }

    static string Translate(string pattern, bool collapse)
    {
        var sb = new StringBuilder(pattern.Length * 2);
        bool insideClass = false;
        for (int i = 0; i < pattern.Length;)
        {
            char c = pattern[i];
            if (c == '\\' && i + 1 < pattern.Length)
            {
                if (collapse && TryCategoryAt(pattern, i, out string key))
                {
                    var (marker, ascii) = Categories[key];
                    if (!insideClass) sb.Append('[');
                    sb.Append(CultureInfo.InvariantCulture, $"\\u{(int)marker:X4}").Append(ascii);
                    if (!insideClass) sb.Append(']');
                    i += key.Length;
                    continue;
                }
                sb.Append(c).Append(pattern[i + 1]);
                i += 2;
                continue;
            }
            if (!insideClass && c == '[')
            {
                if (!collapse && TryTranslateAstralClass(pattern, i, sb, out int next))
                {
                    i = next;
                    continue;
                }
                insideClass = true;
            }
            else if (insideClass && c == ']')
            {
                insideClass = false;
            }
            else if (!insideClass && c == '$')
            {
                sb.Append(@"\z");
                i++;
                continue;
            }
            else if (!insideClass && c == '.')
            {
                sb.Append(@"[^\n\r\u2028\u2029]");
                i++;
                continue;
            }
            sb.Append(c);
            i++;
        }
        return sb.ToString();
    }

    static bool TryCategoryAt(string pattern, int i, out string key)
    {
        key = "";
        if (i + 3 >= pattern.Length || pattern[i + 1] != 'p' || pattern[i + 2] != '{') return false;
        int close = pattern.IndexOf('}', i + 3);
        if (close < 0 || close > i + 10) return false;
        string candidate = pattern[i..(close + 1)];
        if (!Categories.ContainsKey(candidate)) return false;
        key = candidate;
        return true;
    }

    /// <summary>
    /// A bracket class with members above U+FFFF cannot be a .NET class (which holds UTF-16 units),
    /// so <c>[a-z𐐀-𐑏]</c> becomes <c>(?:[a-z]|\uD801[\uDC00-\uDC4F])</c>. Returns false for ordinary classes.
    /// </summary>
    static bool TryTranslateAstralClass(string pattern, int open, StringBuilder sb, out int next)
    {
        next = open;
        int end = open + 1;
        bool negated = end < pattern.Length && pattern[end] == '^';
        if (negated) end++;
        while (end < pattern.Length && pattern[end] != ']') end += pattern[end] == '\\' ? 2 : 1;
        if (end >= pattern.Length) return false;
        string body = pattern[(open + (negated ? 2 : 1))..end];
        if (!body.Any(char.IsSurrogate)) return false;
        if (negated)
            throw new NotSupportedException($"negated character class with codepoints above U+FFFF in pre-tokenizer regex: {pattern}");

        var bmp = new StringBuilder();
        var astral = new List<(int Low, int High)>();
        for (int i = 0; i < body.Length;)
        {
            string first = ReadAtom(body, ref i);
            string? last = null;
            if (i + 1 < body.Length && body[i] == '-')
            {
                i++;
                last = ReadAtom(body, ref i);
            }
            int lo = first.Length > 0 && char.IsSurrogate(first[0]) ? char.ConvertToUtf32(first, 0) : -1;
            int hi = last is not null && char.IsSurrogate(last[0]) ? char.ConvertToUtf32(last, 0) : -1;
            if (lo < 0 && hi < 0)
            {
                bmp.Append(first);
                if (last is not null) bmp.Append('-').Append(last);
            }
            else if (lo >= 0 && (last is null || hi >= 0))
            {
                astral.Add((lo, last is null ? lo : hi));
            }
            else
            {
                throw new NotSupportedException($"character range crossing U+FFFF in pre-tokenizer regex: {pattern}");
            }
        }

        var alternatives = new List<string>();
        if (bmp.Length > 0) alternatives.Add($"[{bmp}]");
        foreach (var (low, high) in astral)
        {
            int firstHigh = HighSurrogate(low), lastHigh = HighSurrogate(high);
            for (int h = firstHigh; h <= lastHigh; h++)
            {
                int from = h == firstHigh ? LowSurrogate(low) : 0xDC00;
                int to = h == lastHigh ? LowSurrogate(high) : 0xDFFF;
                alternatives.Add(string.Create(CultureInfo.InvariantCulture, $"\\u{h:X4}[\\u{from:X4}-\\u{to:X4}]"));
            }
        }
        sb.Append("(?:").AppendJoin('|', alternatives).Append(')');
        next = end + 1;
        return true;
    }

    static string ReadAtom(string body, ref int i)
    {
        int length = body[i] == '\\' || char.IsHighSurrogate(body[i]) ? 2 : 1;
        length = Math.Min(length, body.Length - i);
        string atom = body.Substring(i, length);
        i += length;
        return atom;
    }

    static int HighSurrogate(int cp) => 0xD800 + ((cp - 0x10000) >> 10);
    static int LowSurrogate(int cp) => 0xDC00 + ((cp - 0x10000) & 0x3FF);
}
