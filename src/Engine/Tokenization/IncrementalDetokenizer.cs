using System.Text;

namespace TokenMill.Tokenization;

/// <summary>
/// Turns a stream of token ids into a stream of text pieces. Bytes of a UTF-8 character split over
/// several tokens are held until the character is whole, and text that could still grow into a stop
/// string is held until it cannot — so nothing is ever emitted that a later token would take back,
/// and the pieces concatenate to exactly the one-shot decode (cut at the first stop string).
/// </summary>
public sealed class IncrementalDetokenizer
{
    readonly ITokenizer _tokenizer;
    readonly IReadOnlyList<string> _stops;
    readonly int _maxStopLength;
    readonly Decoder _decoder = new UTF8Encoding(false, false).GetDecoder();
    readonly StringBuilder _text = new();
    char[] _chars = new char[32];
    int _emitted;

    public IncrementalDetokenizer(ITokenizer tokenizer, IReadOnlyList<string>? stops = null)
    {
        _tokenizer = tokenizer;
        _stops = stops ?? [];
        _maxStopLength = _stops.Count == 0 ? 0 : _stops.Max(s => s.Length);
    }

    /// <summary>All text decoded so far (cut at the stop string once one was found).</summary>
    public string Text => _text.ToString();

    /// <summary>The stop string that ended the text, if any.</summary>
    public string? MatchedStop { get; private set; }

    /// <summary>
    /// Adds a token and returns the text that may now be emitted (possibly empty). When
    /// <paramref name="checkStops"/> and a stop string completes, the text is cut before it,
    /// <see cref="MatchedStop"/> is set, and the rest of the text up to the cut is returned.
    /// </summary>
    public string Add(int token, bool checkStops = true)
    {
        if (MatchedStop is not null) throw new InvalidOperationException("the text already ended at a stop string");
        int before = _text.Length;
        Append(_tokenizer.TokenToBytes(token), flush: false);
        if (_stops.Count == 0) return TakeUpTo(_text.Length);

        if (checkStops)
        {
            // A stop string that completes now must end inside the new text: search from where it could start.
            int from = Math.Max(0, before - _maxStopLength + 1);
            int cut = -1;
            string? matched = null;
            string tail = _text.ToString(from, _text.Length - from);
            foreach (var stop in _stops)
            {
                int i = tail.IndexOf(stop, StringComparison.Ordinal);
                if (i >= 0 && (cut < 0 || from + i < cut))
                {
                    cut = from + i;
                    matched = stop;
                }
            }
            if (matched is not null)
            {
                MatchedStop = matched;
                _text.Length = cut;
                return TakeUpTo(Math.Max(cut, _emitted));
            }
        }
        return TakeUpTo(_text.Length - HeldBack());
    }

    /// <summary>At the end of the sequence: everything not yet emitted, incomplete UTF-8 becoming U+FFFD.</summary>
    public string Flush()
    {
        if (MatchedStop is null) Append([], flush: true);
        return TakeUpTo(_text.Length);
    }

    /// <summary>Length of the longest suffix of the text that is a proper prefix of some stop string.</summary>
    int HeldBack()
    {
        int longest = 0;
        int maxLen = Math.Min(_maxStopLength - 1, _text.Length - _emitted);
        for (int len = maxLen; len > longest; len--)
        {
            foreach (var stop in _stops)
            {
                if (stop.Length <= len) continue;
                bool match = true;
                for (int k = 0; k < len && match; k++)
                    match = _text[_text.Length - len + k] == stop[k];
                if (match)
                {
                    longest = len;
                    break;
                }
            }
        }
        return longest;
    }

    void Append(byte[] bytes, bool flush)
    {
        int needed = _decoder.GetCharCount(bytes, flush);
        if (needed > _chars.Length) _chars = new char[Math.Max(needed, _chars.Length * 2)];
        int n = _decoder.GetChars(bytes, 0, bytes.Length, _chars, 0, flush);
        _text.Append(_chars, 0, n);
    }

    string TakeUpTo(int end)
    {
        if (end <= _emitted) return "";
        string piece = _text.ToString(_emitted, end - _emitted);
        _emitted = end;
        return piece;
    }
}
