using System.Text;
using TokenMill.Tokenization;

namespace TokenMill.Tests.Core;

/// <summary>
/// A test vocabulary whose tokens are given byte strings (so one character can span tokens),
/// plus an EOS token. Encode is greedy longest-match; enough for engine-level tests.
/// </summary>
internal sealed class ByteTokenizer : ITokenizer
{
    readonly byte[][] _pieces;

    public ByteTokenizer(params byte[][] pieces)
    {
        _pieces = [.. pieces, []];
        EosId = _pieces.Length - 1;
    }

    /// <summary>Tokens = the 256 single bytes, then EOS.</summary>
    public static ByteTokenizer Bytes() => new([.. Enumerable.Range(0, 256).Select(b => new[] { (byte)b })]);

    public int VocabSize => _pieces.Length;
    public int? BosId => null;
    public int? EosId { get; }
    public bool AddBos => false;
    public bool AddEos => false;
    public IReadOnlySet<int> EndOfGenerationIds => new HashSet<int> { EosId!.Value };

    public int[] Encode(string text, bool addSpecial = false, bool parseSpecial = false)
    {
        var bytes = Encoding.UTF8.GetBytes(text);
        var ids = new List<int>();
        for (int i = 0; i < bytes.Length;)
        {
            int best = -1, bestLen = 0;
            for (int t = 0; t < _pieces.Length; t++)
            {
                var p = _pieces[t];
                if (p.Length > bestLen && i + p.Length <= bytes.Length && bytes.AsSpan(i, p.Length).SequenceEqual(p)) (best, bestLen) = (t, p.Length);
            }
            if (best < 0) throw new ArgumentException($"byte {bytes[i]} has no token");
            ids.Add(best);
            i += bestLen;
        }
        return [.. ids];
    }

    public byte[] TokenToBytes(int id, bool renderSpecial = false) => _pieces[id];

    public string Decode(ReadOnlySpan<int> ids, bool renderSpecial = false)
    {
        var bytes = new List<byte>();
        foreach (int id in ids) bytes.AddRange(_pieces[id]);
        return Encoding.UTF8.GetString([.. bytes]);
    }
}
