namespace TokenMill.Tokenization;

/// <summary>
/// The first codepoint of a codepoint's canonical decomposition (NFD), e.g. <c>Ä</c> → <c>A</c>,
/// <c>ử</c> → <c>u</c>, <c>한</c> → <c>ᄒ</c>: what llama.cpp's WordPiece normalizer keeps of an accented
/// character (<c>unicode_cpts_normalize_nfd</c>). A generated table (see <c>tools/unicode/gen-nfd-first.py</c>)
/// because <see cref="string.Normalize()"/> is a no-op under InvariantGlobalization.
/// </summary>
internal static partial class NfdFirstCharacter
{
    const int HangulFirst = 0xAC00, HangulLast = 0xD7A3;
    const int HangulLeadingJamo = 0x1100;
    const int HangulSyllablesPerLeadingJamo = 21 * 28; // vowels × trailing consonants (incl. none)

    public static int Of(int cp)
    {
        if (cp < 0xC0) return cp; // nothing below U+00C0 decomposes
        if (cp is >= HangulFirst and <= HangulLast)
            return HangulLeadingJamo + (cp - HangulFirst) / HangulSyllablesPerLeadingJamo;
        int i = Codepoints.BinarySearch(cp);
        return i >= 0 ? FirstCodepoints[i] : cp;
    }
}
