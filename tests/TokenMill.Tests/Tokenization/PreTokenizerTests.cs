using CsCheck;
using TokenMill.Tokenization;

namespace TokenMill.Tests.Tokenization;

public class PreTokenizerTests
{
    // llama.cpp runs hand-written splitters for these two patterns; the regex path (collapsed text + .NET
    // Regex) is an independent implementation of the same pattern, so the two must agree.
    [Theory]
    [InlineData(LlamaPreTokenizer.Gpt2Pattern)]
    [InlineData(LlamaPreTokenizer.Llama3Pattern)]
    public void Custom_splitter_agrees_with_the_regex(string pattern)
    {
        var custom = new LlamaPreTokenizer([pattern], useCustomSplitters: true);
        var regex = new LlamaPreTokenizer([pattern], useCustomSplitters: false);
        void Check(string text) => Assert.Equal(regex.SplitToStrings(text), custom.SplitToStrings(text));
        foreach (var text in TokenizerSamples.Fixed) Check(text);
        TokenizerSamples.Mixed.Sample(Check, iter: 2000);
    }

    [Fact]
    public void Pieces_cover_the_text_in_order()
    {
        var splitters = new[] { "default", "gpt-2", "llama3", "qwen2", "deepseek-llm", "deepseek-coder", "falcon", "starcoder", "gpt-4o", "tekken", "viking" }
            .Select(pre => new LlamaPreTokenizer(BpePreTokenizers.Find(pre)!.Patterns)).ToArray();
        TokenizerSamples.Mixed.Sample(text =>
        {
            foreach (var splitter in splitters)
            {
                var pieces = splitter.SplitToStrings(text);
                Assert.Equal(text, string.Concat(pieces));
                Assert.DoesNotContain("", pieces);
            }
        }, iter: 500);
    }

    [Theory]
    [InlineData("gpt-2", "Hello world's  end", new[] { "Hello", " world", "'s", " ", " end" })]
    [InlineData("llama3", "I'M 12345 ok!!\n\n x", new[] { "I", "'M", " ", "123", "45", " ok", "!!\n\n", " x" })]
    [InlineData("starcoder", "x123 y", new[] { "x", "1", "2", "3", " y" })]
    [InlineData("deepseek-llm", "Ab 𐐀𐐁 中文 ！！", new[] { "Ab", " 𐐀𐐁", " ", "中文", " ！！" })]
    [InlineData("falcon", "a=1234", new[] { "a", "=", "123", "4" })]
    public void Splits_like_llama_cpp(string pre, string text, string[] expected)
    {
        var splitter = new LlamaPreTokenizer(BpePreTokenizers.Find(pre)!.Patterns);
        Assert.Equal(expected, splitter.SplitToStrings(text));
    }

    [Fact]
    public void Regex_translation_collapses_unicode_classes_like_llama_cpp()
    {
        var regex = new LlamaRegex(@"[^\s\p{L}\p{N}]+|\p{P}");
        Assert.True(regex.UsesCollapsedText);
        Assert.Equal(@"[^\s\uE0D2A-Za-z\uE0D10-9]+|[\uE0D3!-#%-*,-/:-;?-@\[-\]_\{\}]", regex.DotNetPattern);

        var astral = new LlamaRegex("[a𐐀-𐑏]+$");
        Assert.False(astral.UsesCollapsedText);
        Assert.Equal(@"(?:[a]|\uD801[\uDC00-\uDC4F])+\z", astral.DotNetPattern);
    }
}
