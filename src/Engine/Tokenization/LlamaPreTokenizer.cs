using System.Text;

namespace TokenMill.Tokenization;

/// <summary>
/// Splits text into the words a byte-level BPE merges within, as llama.cpp's
/// <c>unicode_regex_split</c> does: the text starts as one piece and each regex in turn splits every
/// piece further, keeping both its matches and the text between them. Two patterns (GPT-2's and
/// Llama 3's) are recognised by their exact text and run by hand-written splitters, ports of
/// <c>unicode_regex_split_custom_gpt2</c>/<c>_llama3</c>, because that is what llama.cpp runs for them.
/// All regexes are compiled once, when the tokenizer is built.
/// </summary>
internal sealed class LlamaPreTokenizer
{
    /// <summary>GPT-2's pattern as llama.cpp spells it (without the trailing <c>|\s+</c>, which llama.cpp omits).</summary>
    public const string Gpt2Pattern = @"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)";

    /// <summary>Llama 3's pattern in the case-insensitive form of its tokenizer.json.</summary>
    public const string Llama3PatternOriginal = @"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    /// <summary>Llama 3's pattern as llama.cpp adapts it for <c>std::regex</c> (no inline <c>(?i:)</c>).</summary>
    public const string Llama3Pattern = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

    readonly Step[] _steps;
    readonly bool _needsCollapsed;
    readonly bool _needsCodepointText;

    public LlamaPreTokenizer(IEnumerable<string> llamaPatterns, bool useCustomSplitters = true)
    {
        _steps = [.. llamaPatterns.Select(p => new Step(p, useCustomSplitters))];
        _needsCollapsed = _steps.Any(s => s.Regex is { UsesCollapsedText: true });
        _needsCodepointText = _steps.Any(s => s.Regex is { UsesCollapsedText: false });
    }

    public IReadOnlyList<string> Patterns => [.. _steps.Select(s => s.Pattern)];

    /// <summary>The codepoints of <paramref name="text"/>; an unpaired surrogate becomes U+FFFD.</summary>
    public static int[] Codepoints(string text)
    {
        var cps = new List<int>(text.Length);
        foreach (var rune in text.EnumerateRunes()) cps.Add(rune.Value);
        return [.. cps];
    }

    /// <summary>Splits <paramref name="cps"/> into consecutive pieces; returns their lengths in codepoints.</summary>
    public List<int> Split(int[] cps)
    {
        var flags = new CodepointFlags[cps.Length];
        for (int i = 0; i < cps.Length; i++) flags[i] = CodepointFlags.Of(cps[i]);

        Subject? collapsed = _needsCollapsed ? Subject.CollapsedFrom(cps, flags) : null;
        Subject? codepointText = _needsCodepointText ? Subject.CodepointTextFrom(cps, flags) : null;

        var offsets = new List<int>();
        if (cps.Length > 0) offsets.Add(cps.Length);
        foreach (var step in _steps)
        {
            offsets = step.Kind switch
            {
                StepKind.Gpt2 => CustomSplitters.Gpt2(cps, flags, offsets),
                StepKind.Llama3 => CustomSplitters.Llama3(cps, flags, offsets),
                _ => SplitWithRegex(step.Regex!, step.Regex!.UsesCollapsedText ? collapsed! : codepointText!, offsets),
            };
        }
        return offsets;
    }

    /// <summary>The pieces of <paramref name="text"/> as strings (for tests and diagnostics).</summary>
    public List<string> SplitToStrings(string text)
    {
        int[] cps = Codepoints(text);
        var pieces = new List<string>();
        int start = 0;
        var sb = new StringBuilder();
        foreach (int length in Split(cps))
        {
            sb.Clear();
            for (int i = start; i < start + length; i++) AppendCodepoint(sb, cps[i]);
            pieces.Add(sb.ToString());
            start += length;
        }
        return pieces;
    }

    // unicode_regex_split_stl: every match and every gap between matches becomes a piece.
    static List<int> SplitWithRegex(LlamaRegex regex, Subject subject, List<int> offsets)
    {
        var result = new List<int>(offsets.Count * 2);
        int start = 0;
        foreach (int length in offsets)
        {
            int end = start + length;
            int from = subject.ToSubject(start);
            int previous = start;
            for (var m = regex.Regex.Match(subject.Text, from, subject.ToSubject(end) - from); m.Success; m = m.NextMatch())
            {
                // An empty match would add an empty piece in llama.cpp, which tokenizes to nothing; none of
                // the supported patterns can match empty anyway.
                if (m.Length == 0) continue;
                int matchStart = subject.ToCodepoint(m.Index);
                int matchEnd = subject.ToCodepoint(m.Index + m.Length);
                if (matchStart > previous) result.Add(matchStart - previous);
                result.Add(matchEnd - matchStart);
                previous = matchEnd;
            }
            if (previous < end) result.Add(end - previous);
            start = end;
        }
        return result;
    }

    static void AppendCodepoint(StringBuilder sb, int cp)
    {
        if (cp < 0x10000)
        {
            sb.Append((char)cp);
        }
        else
        {
            sb.Append((char)(0xD800 + ((cp - 0x10000) >> 10)));
            sb.Append((char)(0xDC00 + ((cp - 0x10000) & 0x3FF)));
        }
    }

    enum StepKind { Regex, Gpt2, Llama3 }

    sealed class Step
    {
        public Step(string pattern, bool useCustomSplitters)
        {
            Pattern = pattern;
            Kind = !useCustomSplitters ? StepKind.Regex
                : pattern == Gpt2Pattern ? StepKind.Gpt2
                : pattern is Llama3Pattern or Llama3PatternOriginal ? StepKind.Llama3
                : StepKind.Regex;
            // The (?i:) spelling has no collapsed-regex form in llama.cpp either; it only ever runs custom.
            if (Kind == StepKind.Regex) Regex = new LlamaRegex(pattern == Llama3PatternOriginal ? Llama3Pattern : pattern);
        }

        public string Pattern { get; }
        public StepKind Kind { get; }
        public LlamaRegex? Regex { get; }
    }

    /// <summary>The string a regex runs on, with the mapping between its indices and codepoint indices.</summary>
    sealed class Subject
    {
        int[]? _codepointToSubject;
        int[]? _subjectToCodepoint;

        public string Text { get; private init; } = "";

        public int ToSubject(int codepointIndex) => _codepointToSubject?[codepointIndex] ?? codepointIndex;

        public int ToCodepoint(int subjectIndex) => _subjectToCodepoint?[subjectIndex] ?? subjectIndex;

        /// <summary>One character per codepoint: ASCII as is, everything else its class marker.</summary>
        public static Subject CollapsedFrom(int[] cps, CodepointFlags[] flags)
        {
            var chars = new char[cps.Length];
            for (int i = 0; i < cps.Length; i++) chars[i] = LlamaRegex.Collapse(cps[i], flags[i]);
            return new Subject { Text = new string(chars) };
        }

        /// <summary>The codepoints as UTF-16, with non-ASCII white space replaced by <c>\v</c> as llama.cpp does.</summary>
        public static Subject CodepointTextFrom(int[] cps, CodepointFlags[] flags)
        {
            var sb = new StringBuilder(cps.Length);
            var toSubject = new int[cps.Length + 1];
            bool anyAstral = false;
            for (int i = 0; i < cps.Length; i++)
            {
                toSubject[i] = sb.Length;
                int cp = cps[i];
                if (cp > 0x7F && flags[i].IsWhitespace) cp = '\v';
                if (cp > 0xFFFF) anyAstral = true;
                AppendCodepoint(sb, cp);
            }
            toSubject[cps.Length] = sb.Length;
            if (!anyAstral) return new Subject { Text = sb.ToString() };

            var toCodepoint = new int[sb.Length + 1];
            Array.Fill(toCodepoint, -1);
            for (int i = 0; i <= cps.Length; i++) toCodepoint[toSubject[i]] = i;
            return new Subject { Text = sb.ToString(), _codepointToSubject = toSubject, _subjectToCodepoint = toCodepoint };
        }
    }
}
