using System.Globalization;

namespace TokenMill.Tokenization;

/// <summary>
/// The per-codepoint classification llama.cpp's pre-tokenizers use (<c>unicode_cpt_flags</c> in
/// <c>unicode.h</c>): exactly one general-category class, plus whether the codepoint is white space.
/// llama.cpp generates its table from Python's <c>regex</c> module (<c>\p{N}</c>, <c>\p{L}</c>, …,
/// <c>\s</c>); we take the general category from .NET's Unicode data and the white-space set from
/// the same Unicode <c>White_Space</c> property, so the two agree except on codepoints assigned in
/// a newer Unicode version than llama.cpp's table.
/// </summary>
internal readonly struct CodepointFlags
{
    // Bit values as in llama.cpp's unicode_cpt_flags, so the collapsed-regex mapping reads the same.
    public const int Number = 0x02;
    public const int Letter = 0x04;
    public const int Separator = 0x08;
    public const int AccentMark = 0x10;
    public const int Punctuation = 0x20;
    public const int Symbol = 0x40;
    public const int Control = 0x80;
    const int WhitespaceBit = 0x100;

    readonly int _bits;

    CodepointFlags(int bits) => _bits = bits;

    /// <summary>Flags of a position outside the current segment: no class at all (llama.cpp's <c>unicode_cpt_flags{}</c>).</summary>
    public static CodepointFlags OutOfRange => default;

    /// <summary>True for every real codepoint, false only for <see cref="OutOfRange"/> (llama.cpp's <c>as_uint() != 0</c>).</summary>
    public bool IsInRange => _bits != 0;

    public bool IsNumber => (_bits & Number) != 0;
    public bool IsLetter => (_bits & Letter) != 0;
    public bool IsWhitespace => (_bits & WhitespaceBit) != 0;

    /// <summary>The single general-category bit (llama.cpp's <c>category_flag()</c>).</summary>
    public int Category => _bits & 0xFF;

    public static CodepointFlags Of(int codepoint)
    {
        int category = CategoryOf(codepoint);
        return new CodepointFlags(IsUnicodeWhitespace(codepoint) ? category | WhitespaceBit : category);
    }

    static int CategoryOf(int codepoint)
    {
        if ((uint)codepoint > 0x10FFFF) return Control;
        return CharUnicodeInfo.GetUnicodeCategory(codepoint) switch
        {
            UnicodeCategory.UppercaseLetter or UnicodeCategory.LowercaseLetter or UnicodeCategory.TitlecaseLetter
                or UnicodeCategory.ModifierLetter or UnicodeCategory.OtherLetter => Letter,
            UnicodeCategory.NonSpacingMark or UnicodeCategory.SpacingCombiningMark or UnicodeCategory.EnclosingMark => AccentMark,
            UnicodeCategory.DecimalDigitNumber or UnicodeCategory.LetterNumber or UnicodeCategory.OtherNumber => Number,
            UnicodeCategory.SpaceSeparator or UnicodeCategory.LineSeparator or UnicodeCategory.ParagraphSeparator => Separator,
            UnicodeCategory.ConnectorPunctuation or UnicodeCategory.DashPunctuation or UnicodeCategory.OpenPunctuation
                or UnicodeCategory.ClosePunctuation or UnicodeCategory.InitialQuotePunctuation
                or UnicodeCategory.FinalQuotePunctuation or UnicodeCategory.OtherPunctuation => Punctuation,
            UnicodeCategory.MathSymbol or UnicodeCategory.CurrencySymbol or UnicodeCategory.ModifierSymbol
                or UnicodeCategory.OtherSymbol => Symbol,
            // Control, Format, Surrogate, PrivateUse and OtherNotAssigned are all \p{C}.
            _ => Control,
        };
    }

    /// <summary>
    /// Unicode <c>White_Space</c> (25 codepoints), the set llama.cpp's <c>unicode_set_whitespace</c> holds.
    /// Note U+001C..U+001F are not in it although .NET's <see cref="char.IsWhiteSpace(char)"/> says they are.
    /// </summary>
    public static bool IsUnicodeWhitespace(int cp) => cp switch
    {
        >= 0x09 and <= 0x0D => true,
        0x20 or 0x85 or 0xA0 or 0x1680 => true,
        >= 0x2000 and <= 0x200A => true,
        0x2028 or 0x2029 or 0x202F or 0x205F or 0x3000 => true,
        _ => false,
    };
}
