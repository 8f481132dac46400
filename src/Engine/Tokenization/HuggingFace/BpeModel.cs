using System.Text;

namespace TokenMill.Tokenization.HuggingFace;

/// <summary>
/// The <c>BPE</c> model of <c>tokenizer.json</c>: each pre-tokenized word starts as its code points, adjacent symbols
/// are merged lowest merge rank first (leftmost on ties, as Hugging Face's priority queue orders them), and a symbol
/// that is not in the vocabulary becomes its UTF-8 bytes as <c>&lt;0xAB&gt;</c> tokens (<c>byte_fallback</c>), else
/// the unknown token, else nothing. With <c>ignore_merges</c> a word that is itself a token is taken whole.
/// </summary>
internal sealed class BpeModel
{
    readonly IReadOnlyDictionary<string, int> _ids;
    // (left id, right id) → (rank, merged id), keyed as one long so a lookup needs no string concatenation.
    readonly Dictionary<long, (int Rank, int Merged)> _merges;
    readonly int[]? _byteIds;
    readonly int? _unknownId;
    readonly bool _ignoreMerges;

    public BpeModel(IReadOnlyDictionary<string, int> ids, IReadOnlyList<(string Left, string Right)> merges,
        bool byteFallback, int? unknownId, bool ignoreMerges, string source)
    {
        _ids = ids;
        _unknownId = unknownId;
        _ignoreMerges = ignoreMerges;
        _merges = new Dictionary<long, (int, int)>(merges.Count);
        for (int rank = 0; rank < merges.Count; rank++)
        {
            var (left, right) = merges[rank];
            if (!ids.TryGetValue(left, out int l) || !ids.TryGetValue(right, out int r) || !ids.TryGetValue(left + right, out int merged))
                throw new InvalidDataException($"{source}: model.merges[{rank}] (\"{left}\", \"{right}\"): a part or the merged token is not in the vocabulary");
            _merges.TryAdd(PairKey(l, r), (rank, merged)); // the first occurrence of a pair keeps its rank
        }
        if (byteFallback)
        {
            _byteIds = new int[256];
            for (int b = 0; b < 256; b++) _byteIds[b] = ids.TryGetValue($"<0x{b:X2}>", out int id) ? id : -1;
        }
    }

    static long PairKey(int left, int right) => ((long)left << 32) | (uint)right;

    internal struct Symbol
    {
        public int Start; // UTF-16 offset in the word
        public int Length; // UTF-16 length; 0 once merged into its left neighbour
        public int Prev;
        public int Next;
        public int Id; // vocabulary id, -1 for a character the vocabulary lacks
    }

    internal readonly record struct Bigram(int Left, int Right, int LeftLength, int RightLength, int Merged);

    /// <summary>Appends the ids of one word. Not thread-safe per instance of <paramref name="scratch"/>.</summary>
    public void Encode(string word, List<int> output, Scratch scratch)
    {
        if (word.Length == 0) return;
        if (_ignoreMerges && _ids.TryGetValue(word, out int whole))
        {
            output.Add(whole);
            return;
        }

        var symbols = scratch.Symbols;
        var queue = scratch.Queue;
        symbols.Clear();
        queue.Clear();
        for (int i = 0; i < word.Length;)
        {
            int length = char.IsHighSurrogate(word[i]) && i + 1 < word.Length && char.IsLowSurrogate(word[i + 1]) ? 2 : 1;
            int n = symbols.Count;
            symbols.Add(new Symbol
            {
                Start = i,
                Length = length,
                Prev = n - 1,
                Next = i + length == word.Length ? -1 : n + 1,
                Id = _ids.TryGetValue(word.Substring(i, length), out int id) ? id : -1,
            });
            i += length;
        }
        for (int i = 1; i < symbols.Count; i++) AddBigram(symbols, queue, i - 1, i);

        var span = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(symbols);
        while (queue.TryDequeue(out var bigram, out _))
        {
            ref var left = ref span[bigram.Left];
            ref var right = ref span[bigram.Right];
            // Outdated if either side changed since it was queued: a symbol's text is fixed by its start and length.
            if (left.Length == 0 || right.Length == 0 || left.Length != bigram.LeftLength || right.Length != bigram.RightLength
                || left.Next != bigram.Right)
                continue;
            left.Length += right.Length;
            left.Id = bigram.Merged;
            right.Length = 0;
            left.Next = right.Next;
            if (right.Next >= 0) span[right.Next].Prev = bigram.Left;
            AddBigram(symbols, queue, left.Prev, bigram.Left);
            AddBigram(symbols, queue, bigram.Left, left.Next);
        }

        Span<byte> utf8 = stackalloc byte[4];
        for (int i = 0; i >= 0 && i < span.Length; i = span[i].Next)
        {
            ref readonly var symbol = ref span[i];
            if (symbol.Id >= 0)
            {
                output.Add(symbol.Id);
                continue;
            }
            // Only single characters can be unknown: every merge result is a token.
            if (_byteIds is not null)
            {
                int n = Encoding.UTF8.GetBytes(word.AsSpan(symbol.Start, symbol.Length), utf8);
                bool all = true;
                foreach (byte b in utf8[..n]) all &= _byteIds[b] >= 0;
                if (all)
                {
                    foreach (byte b in utf8[..n]) output.Add(_byteIds[b]);
                    continue;
                }
            }
            if (_unknownId is int unk) output.Add(unk);
        }
    }

    void AddBigram(List<Symbol> symbols, PriorityQueue<Bigram, long> queue, int left, int right)
    {
        if (left < 0 || right < 0) return;
        var l = symbols[left];
        var r = symbols[right];
        if (l.Id < 0 || r.Id < 0 || !_merges.TryGetValue(PairKey(l.Id, r.Id), out var merge)) return;
        // Lowest rank first, then the leftmost pair (symbols keep their start order, so the index orders them).
        queue.Enqueue(new Bigram(left, right, l.Length, r.Length, merge.Merged), ((long)merge.Rank << 32) | (uint)left);
    }

    /// <summary>Buffers one encode call reuses across words.</summary>
    internal sealed class Scratch
    {
        public readonly List<Symbol> Symbols = [];
        public readonly PriorityQueue<Bigram, long> Queue = new();
    }
}
