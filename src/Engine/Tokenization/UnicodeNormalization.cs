using System.Text;

namespace TokenMill.Tokenization;

/// <summary>
/// Unicode canonical normalization (UAX #15): NFD (full canonical decomposition, then canonical ordering of
/// combining marks) and NFC (NFD, then canonical composition). <see cref="string.Normalize()"/> cannot be used: it
/// needs ICU, which InvariantGlobalization turns off, and then returns its input unchanged. The tables are generated
/// (<c>tools/unicode/gen-canonical.py</c>); Hangul syllables are decomposed and composed algorithmically.
/// </summary>
internal static partial class UnicodeNormalization
{
    // Hangul syllable arithmetic (Unicode §3.12).
    const int SBase = 0xAC00, LBase = 0x1100, VBase = 0x1161, TBase = 0x11A7;
    const int LCount = 19, VCount = 21, TCount = 28, NCount = VCount * TCount, SCount = LCount * NCount;

    // Nothing below U+0300 changes under NFC or NFD composition of a string made only of such characters:
    // the first combining mark is U+0300 (and Latin-1 letters are already composed).
    const char FirstCombining = '\u0300';

    public static string ToNfc(string text) => Normalize(text, compose: true);

    public static string ToNfd(string text) => Normalize(text, compose: false);

    static string Normalize(string text, bool compose)
    {
        ArgumentNullException.ThrowIfNull(text);
        bool simple = true;
        foreach (char c in text)
            if (c >= FirstCombining || (!compose && c >= '\u00C0')) { simple = false; break; }
        if (simple) return text;

        var cps = new List<int>(text.Length + 8);
        foreach (var rune in text.EnumerateRunes()) Decompose(rune.Value, cps);
        SortCombiningMarks(cps);
        if (compose) Compose(cps);

        var sb = new StringBuilder(cps.Count);
        foreach (int cp in cps) sb.Append(char.ConvertFromUtf32(cp));
        return sb.ToString();
    }

    /// <summary>
    /// The first codepoint of <paramref name="cp"/>'s canonical decomposition (NFD), e.g. <c>Ä</c> → <c>A</c>,
    /// <c>ử</c> → <c>u</c>, <c>한</c> → <c>ᄒ</c>: what llama.cpp's WordPiece normalizer keeps of an accented
    /// character (<c>unicode_cpts_normalize_nfd</c>).
    /// </summary>
    public static int FirstOfDecomposition(int cp)
    {
        if (cp is >= SBase and < SBase + SCount) return LBase + (cp - SBase) / NCount;
        int i = cp < '\u00C0' ? -1 : DecomposableCodepoints.BinarySearch(cp);
        return i < 0 ? cp : Decompositions[DecompositionOffsets[i]];
    }

    public static int CombiningClass(int cp)
    {
        if (cp < FirstCombining) return 0;
        int i = CombiningCodepoints.BinarySearch(cp);
        return i >= 0 ? CombiningClasses[i] : 0;
    }

    static void Decompose(int cp, List<int> output)
    {
        if (cp is >= SBase and < SBase + SCount)
        {
            int s = cp - SBase;
            output.Add(LBase + s / NCount);
            output.Add(VBase + s % NCount / TCount);
            if (s % TCount != 0) output.Add(TBase + s % TCount);
            return;
        }
        int i = cp < '\u00C0' ? -1 : DecomposableCodepoints.BinarySearch(cp);
        if (i < 0)
        {
            output.Add(cp);
            return;
        }
        foreach (int d in Decompositions[DecompositionOffsets[i]..DecompositionOffsets[i + 1]]) output.Add(d);
    }

    /// <summary>Canonical ordering: a stable sort by combining class of every run of non-starters.</summary>
    static void SortCombiningMarks(List<int> cps)
    {
        for (int i = 1; i < cps.Count; i++)
        {
            int cc = CombiningClass(cps[i]);
            if (cc == 0) continue;
            // Insertion sort backwards while the previous mark has a higher class (runs are short).
            int j = i;
            int cp = cps[i];
            while (j > 0 && CombiningClass(cps[j - 1]) > cc)
            {
                cps[j] = cps[j - 1];
                j--;
            }
            cps[j] = cp;
        }
    }

    /// <summary>The canonical composition algorithm of UAX #15 over a decomposed, canonically ordered sequence.</summary>
    static void Compose(List<int> cps)
    {
        if (cps.Count == 0) return;
        int starter = -1; // index of the last starter in the output
        int lastClass = -1; // class of the last character kept after the starter (-1: none yet)
        int write = 0;
        for (int read = 0; read < cps.Count; read++)
        {
            int cp = cps[read];
            int cc = CombiningClass(cp);
            // Not blocked: nothing kept between the starter and cp, or the last kept one has a lower, non-zero class.
            if (starter >= 0 && (lastClass == -1 || (lastClass != 0 && lastClass < cc))
                && TryCompose(cps[starter], cp, out int composite))
            {
                cps[starter] = composite;
                continue;
            }
            if (cc == 0)
            {
                starter = write;
                lastClass = -1;
            }
            else
            {
                lastClass = cc;
            }
            cps[write++] = cp;
        }
        cps.RemoveRange(write, cps.Count - write);
    }

    static bool TryCompose(int first, int second, out int composite)
    {
        // Hangul L + V → LV, LV + T → LVT.
        if (first is >= LBase and < LBase + LCount && second is >= VBase and < VBase + VCount)
        {
            composite = SBase + ((first - LBase) * VCount + (second - VBase)) * TCount;
            return true;
        }
        if (first is >= SBase and < SBase + SCount && (first - SBase) % TCount == 0 && second is > TBase and < TBase + TCount)
        {
            composite = first + (second - TBase);
            return true;
        }
        // Binary search for the (first, second) pair.
        var firsts = CompositionFirsts;
        int lo = 0, hi = firsts.Length - 1;
        while (lo <= hi)
        {
            int mid = (lo + hi) >>> 1;
            int c = firsts[mid] != first ? firsts[mid].CompareTo(first) : CompositionSeconds[mid].CompareTo(second);
            if (c == 0)
            {
                composite = Composites[mid];
                return true;
            }
            if (c < 0) lo = mid + 1;
            else hi = mid - 1;
        }
        composite = 0;
        return false;
    }
}
