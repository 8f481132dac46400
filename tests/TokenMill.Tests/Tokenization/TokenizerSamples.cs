using CsCheck;

namespace TokenMill.Tests.Tokenization;

/// <summary>Sample texts for tokenizer properties: fixed ones plus a generator mixing scripts, digits and white space.</summary>
public static class TokenizerSamples
{
    public static readonly string[] Fixed =
    [
        "",
        " ",
        "Hello world",
        " Hello, world! How are you doing today?",
        "I've been 'told he's there, 'RE you sure? 'M not sure I'll make it, 'D you like some tea? We'Ve a'lL",
        "3 33 333 3333 33333 333333 3333333 3.3 3..3 3...3",
        "    indented\n\tcode();\r\n\r\n  }\n\n\n",
        "public static int Main(string[] args) { return args.Length > 0 ? 1 : 0; }",
        "Ünïcödé: naïve café, Äpfel, Cửa Việt, нещо на Български, ខ្មែរ, 我想在apple工作1314151天～",
        "🚀 (normal) 😶‍🌫️ (multiple emojis concatenated) ✅ 🦙🦙",
        "  leading and trailing spaces  ",
        "\u00A0non-breaking\u2009thin\u3000ideographic spaces",
        "------======= ''''''```````\"\"\"\"......!!!!!!??????",
    ];

    // Building blocks chosen to exercise every pre-tokenizer branch: contractions, letters of several
    // scripts, digit runs, punctuation, symbols, combining marks, emoji and every kind of white space.
    static readonly string[] Pieces =
    [
        "a", "Z", "hello", "World", "'s", "'T", "'re", "'LL", "'", "é", "ß", "Ж", "ж", "λ", "ה", "ع", "ก", "ั", "क", "ि",
        "中", "文", "日本", "한", "ｱ", "0", "7", "42", "٣", "²", "Ⅻ", "½", ".", ",", "!", "?", "-", "_", "(", ")", "\"", "#",
        "$", "+", "<", "=", ">", "^", "`", "|", "~", "€", "©", "→", "∑", "…", "。", "、", "🦙", "👍🏽", "\u0301", "\u200D",
        " ", "  ", "\t", "\n", "\r\n", "\n\n", "\u00A0", "\u2003", "\u3000", "\u000B", "\u0085", "\u001C", "\u200B",
    ];

    /// <summary>Random concatenations of <see cref="Pieces"/> (valid UTF-16, so text round-trips through UTF-8).</summary>
    public static readonly Gen<string> Mixed =
        Gen.Int[0, Pieces.Length - 1].Array[0, 40].Select(ix => string.Concat(ix.Select(i => Pieces[i])));
}
