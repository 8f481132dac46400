using TokenMill.Tokenization;

namespace TokenMill.Tests.Tokenization;

public class UnicodeTableTests
{
    [Theory]
    [InlineData('a', 'a')]
    [InlineData('Ä', 'A')]
    [InlineData('ử', 'u')]     // two combining marks: U+01B0 U+0309 -> u
    [InlineData(0x2126, 0x03A9)] // OHM SIGN is a canonical singleton for GREEK CAPITAL LETTER OMEGA
    [InlineData('한', 0x1112)]  // Hangul syllable -> its leading jamo (algorithmic)
    [InlineData('中', '中')]
    public void Nfd_first_character(int codepoint, int expected) => Assert.Equal(expected, UnicodeNormalization.FirstOfDecomposition(codepoint));

    [Fact]
    public void Nfd_first_character_is_the_first_codepoint_of_the_full_decomposition()
    {
        for (int cp = 0; cp < 0x30000; cp++)
        {
            if (cp is >= 0xD800 and <= 0xDFFF) continue;
            string nfd = UnicodeNormalization.ToNfd(char.ConvertFromUtf32(cp));
            Assert.True(char.ConvertToUtf32(nfd, 0) == UnicodeNormalization.FirstOfDecomposition(cp), $"U+{cp:X4}");
        }
    }

    [Theory]
    [InlineData(0x09, true)]
    [InlineData(0x0B, true)]
    [InlineData(0x1C, false)] // .NET's char.IsWhiteSpace says true; Unicode White_Space (and llama.cpp) say no
    [InlineData(0x85, true)]
    [InlineData(0xA0, true)]
    [InlineData(0x200B, false)] // zero width space is a format character
    [InlineData(0x3000, true)]
    public void White_space_is_unicode_white_space(int codepoint, bool expected)
        => Assert.Equal(expected, CodepointFlags.Of(codepoint).IsWhitespace);
}
