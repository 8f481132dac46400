using System.Text;
using CsCheck;
using TokenMill.Tests.Core;
using TokenMill.Tokenization;

namespace TokenMill.Tests.Tokenization;

public class IncrementalDetokenizerTests
{
    static ByteTokenizer Bytes = ByteTokenizer.Bytes();

    static List<string> Stream(IncrementalDetokenizer d, IEnumerable<int> tokens)
    {
        var pieces = new List<string>();
        foreach (int t in tokens)
        {
            pieces.Add(d.Add(t));
            if (d.MatchedStop is not null) return pieces;
        }
        pieces.Add(d.Flush());
        return pieces;
    }

    [Theory]
    [InlineData("héllo wörld")]
    [InlineData("日本語のテキスト")]
    [InlineData("emoji 🦙🚀 and ZWJ 😶‍🌫️ family 👨‍👩‍👧")]
    public void Multibyte_characters_split_over_byte_tokens_are_never_emitted_half(string text)
    {
        var d = new IncrementalDetokenizer(Bytes);
        var pieces = Stream(d, Bytes.Encode(text));
        foreach (var p in pieces) Assert.DoesNotContain('\uFFFD', p);
        Assert.Equal(text, string.Concat(pieces));
    }

    [Fact]
    public void A_stop_string_spanning_tokens_cuts_the_text_and_nothing_of_it_leaks()
    {
        // Tokens "Hel", "lo, ", "wor", "ld" with stop ", wo": the stop begins in token 2 and ends in token 3.
        var tok = new ByteTokenizer("Hel"u8.ToArray(), "lo, "u8.ToArray(), "wor"u8.ToArray(), "ld"u8.ToArray());
        var d = new IncrementalDetokenizer(tok, [", wo"]);
        Assert.Equal("Hel", d.Add(0));
        Assert.Equal("lo", d.Add(1)); // ", " could begin the stop string: held back
        Assert.Equal("", d.Add(2));
        Assert.Equal(", wo", d.MatchedStop);
        Assert.Equal("Hello", d.Text);
    }

    [Fact]
    public void Held_back_text_is_released_when_it_cannot_become_a_stop_string()
    {
        var tok = new ByteTokenizer("ab"u8.ToArray(), "x"u8.ToArray(), "c"u8.ToArray());
        var d = new IncrementalDetokenizer(tok, ["abc"]);
        Assert.Equal("", d.Add(0));   // "ab" may become "abc"
        Assert.Equal("abx", d.Add(1)); // it did not
        Assert.Equal("", d.Add(0));
        Assert.Equal("", d.Add(2));
        Assert.Equal("abc", d.MatchedStop);
        Assert.Equal("abx", d.Text);
    }

    [Fact]
    public void Concatenated_pieces_equal_the_one_shot_decode_cut_at_the_first_stop()
    {
        var words = Gen.OneOf<string>("a", "b", "ab", "ba", "é", "🦙", " ", "stop", "st", "op");
        Gen.Select(words.Array[0, 20], Gen.OneOf<string>("ab", "stop", "🦙 ", "é"))
            .Sample((parts, stop) =>
            {
                string text = string.Concat(parts);
                var d = new IncrementalDetokenizer(Bytes, [stop]);
                string streamed = string.Concat(Stream(d, Bytes.Encode(text)));
                int cut = text.IndexOf(stop, StringComparison.Ordinal);
                string expected = cut >= 0 ? text[..cut] : text;
                Assert.Equal(expected, streamed);
                Assert.Equal(cut >= 0 ? stop : null, d.MatchedStop);
            }, iter: 500);
    }

    [Fact]
    public void Invalid_utf8_at_the_end_becomes_a_replacement_character_on_flush()
    {
        var d = new IncrementalDetokenizer(Bytes);
        Assert.Equal("a", d.Add('a'));
        Assert.Equal("", d.Add(0xE6)); // first byte of a three-byte character
        Assert.Equal("\uFFFD", d.Flush());
        Assert.Equal(Encoding.UTF8.GetString([(byte)'a', 0xE6]), d.Text);
    }
}
