using System.Text;

namespace TokenMill.Tokenization;

/// <summary>
/// Byte-level BPE for GGUF <c>tokenizer.ggml.model = "gpt2"</c>: llama.cpp's <c>llm_tokenizer_bpe</c>.
/// The text is split into words by the vocabulary's pre-tokenizer (<see cref="BpePreTokenizers"/>),
/// each word's UTF-8 bytes are written as GPT-2 byte characters (<see cref="Gpt2ByteEncoding"/>), and
/// within a word adjacent symbols are merged lowest merge rank first (leftmost on ties) using
/// <c>tokenizer.ggml.merges</c>, over a linked list of symbols and a priority queue.
/// </summary>
internal sealed class BpeTokenizer : GgufTokenizer
{
    readonly LlamaPreTokenizer _preTokenizer;
    readonly bool _ignoreMerges;

    // Merge table with strings interned to ints, so a merge lookup is one long-keyed probe and needs
    // no string concatenation: (left piece, right piece) -> (rank, merged piece).
    readonly Dictionary<string, int> _pieceIds = new(StringComparer.Ordinal);
    readonly int[] _charPieceIds = new int[Gpt2ByteEncoding.CharLimit];
    readonly Dictionary<long, (int Rank, int Merged)> _merges;

    public BpeTokenizer(GgufVocabulary vocab, string[] merges, BpePreTokenizers.Config config) : base(vocab)
    {
        _preTokenizer = new LlamaPreTokenizer(config.Patterns);
        _ignoreMerges = config.IgnoreMerges;

        _merges = new Dictionary<long, (int, int)>(merges.Length);
        for (int rank = 0; rank < merges.Length; rank++)
        {
            // As llama.cpp: split at the first space after the first character; a line without one is ("", "").
            string line = merges[rank];
            int space = line.Length > 1 ? line.IndexOf(' ', 1) : -1;
            string first = space < 0 ? "" : line[..space];
            string second = space < 0 ? "" : line[(space + 1)..];
            long key = PairKey(Intern(first), Intern(second));
            _merges.TryAdd(key, (rank, Intern(first + second))); // the first occurrence of a pair keeps its rank
        }
        for (int c = 0; c < _charPieceIds.Length; c++)
            _charPieceIds[c] = _pieceIds.TryGetValue(((char)c).ToString(), out int id) ? id : -1;

        BuildPieceCache();
    }

    internal LlamaPreTokenizer PreTokenizer => _preTokenizer;

    int Intern(string piece)
    {
        if (!_pieceIds.TryGetValue(piece, out int id))
        {
            id = _pieceIds.Count;
            _pieceIds.Add(piece, id);
        }
        return id;
    }

    static long PairKey(int left, int right) => ((long)left << 32) | (uint)right;

    protected override void EncodeInto(string text, bool addSpecial, bool parseSpecial, List<int> output)
    {
        if (addSpecial && Vocab.AddBos) output.Add(Vocab.Bos!.Value);

        var session = new Session(this, output);
        foreach (var fragment in SpecialTokenSplitter.Split(Vocab, text, parseSpecial))
        {
            if (fragment.IsToken) output.Add(fragment.TokenId);
            else session.Tokenize(text.Substring(fragment.Offset, fragment.Length));
        }

        if (addSpecial && Vocab.AddEos) output.Add(Vocab.Eos!.Value);
    }

    /// <summary>
    /// A normal token's text in GPT-2 byte characters back to bytes (llama.cpp's <c>llama_decode_text</c>,
    /// including its <c>[UNK_BYTE_0x…]</c> marker for a character outside the byte map).
    /// </summary>
    protected override byte[] NormalTokenBytes(string text)
    {
        var bytes = new List<byte>(text.Length);
        Span<byte> utf8 = stackalloc byte[4];
        foreach (var rune in text.EnumerateRunes())
        {
            int b = rune.Value < 0x10000 ? Gpt2ByteEncoding.ToByte((char)rune.Value) : -1;
            if (b >= 0)
            {
                bytes.Add((byte)b);
                continue;
            }
            var unknown = new StringBuilder("[UNK_BYTE_0x");
            int n = rune.EncodeToUtf8(utf8);
            foreach (byte u in utf8[..n]) unknown.Append(u.ToString("x2", System.Globalization.CultureInfo.InvariantCulture));
            unknown.Append(text).Append(']');
            bytes.AddRange(Encoding.UTF8.GetBytes(unknown.ToString()));
        }
        return [.. bytes];
    }

    /// <summary>The state of one <c>llm_tokenizer_bpe_session::tokenize</c> call, reused across words.</summary>
    sealed class Session(BpeTokenizer owner, List<int> output)
    {
        struct Symbol
        {
            public int Start;
            public int Length; // 0 once merged into its left neighbour
            public int Prev;
            public int Next;
            public int Piece; // interned id of the symbol's text, -1 if it occurs in no merge
        }

        readonly record struct Bigram(int Left, int Right, int LeftLength, int RightLength, int Merged);

        readonly List<Symbol> _symbols = [];
        readonly PriorityQueue<Bigram, long> _queue = new();
        readonly StringBuilder _word = new();

        public void Tokenize(string text)
        {
            int[] cps = LlamaPreTokenizer.Codepoints(text);
            int start = 0;
            Span<byte> utf8 = stackalloc byte[4];
            foreach (int length in owner._preTokenizer.Split(cps))
            {
                // The word's UTF-8 bytes as GPT-2 byte characters: one character per byte.
                _word.Clear();
                for (int i = start; i < start + length; i++)
                {
                    int n = new Rune(cps[i]).EncodeToUtf8(utf8);
                    foreach (byte b in utf8[..n]) _word.Append(Gpt2ByteEncoding.ToChar(b));
                }
                start += length;
                TokenizeWord(_word.ToString());
            }
        }

        void TokenizeWord(string word)
        {
            var vocab = owner.Vocab;
            _symbols.Clear();
            _queue.Clear();

            if (owner._ignoreMerges && vocab.TryFind(word, out int whole))
            {
                output.Add(whole);
                return;
            }

            for (int i = 0; i < word.Length; i++)
            {
                char c = word[i];
                _symbols.Add(new Symbol
                {
                    Start = i,
                    Length = 1,
                    Prev = i - 1,
                    Next = i + 1 == word.Length ? -1 : i + 1,
                    Piece = c < owner._charPieceIds.Length ? owner._charPieceIds[c] : -1,
                });
            }
            for (int i = 1; i < _symbols.Count; i++) AddBigram(i - 1, i);

            var symbols = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_symbols);
            while (_queue.TryDequeue(out var bigram, out _))
            {
                ref var left = ref symbols[bigram.Left];
                ref var right = ref symbols[bigram.Right];
                // Outdated if either side changed since it was queued (llama.cpp compares the texts; a
                // symbol's text is fixed by its start and length, so comparing lengths is the same test).
                if (left.Length == 0 || right.Length == 0 || left.Length != bigram.LeftLength || right.Length != bigram.RightLength)
                    continue;

                left.Length += right.Length;
                left.Piece = bigram.Merged;
                right.Length = 0;
                left.Next = right.Next;
                if (right.Next >= 0) symbols[right.Next].Prev = bigram.Left;

                AddBigram(left.Prev, bigram.Left);
                AddBigram(bigram.Left, left.Next);
            }

            foreach (ref readonly var symbol in symbols)
            {
                if (symbol.Length == 0) continue;
                var piece = word.AsSpan(symbol.Start, symbol.Length);
                if (vocab.TryFind(piece, out int id))
                {
                    output.Add(id);
                    continue;
                }
                // Not a token: emit each byte's token, skipping bytes the vocabulary lacks (as llama.cpp).
                foreach (char c in piece)
                    if (vocab.TryFind([c], out int byteId)) output.Add(byteId);
            }
        }

        void AddBigram(int left, int right)
        {
            if (left == -1 || right == -1) return;
            var l = _symbols[left];
            var r = _symbols[right];
            if (l.Piece < 0 || r.Piece < 0) return;
            if (!owner._merges.TryGetValue(PairKey(l.Piece, r.Piece), out var merge)) return;
            // Lowest rank first, then leftmost (llama.cpp's llm_bigram_bpe::comparator).
            _queue.Enqueue(new Bigram(left, right, l.Length, r.Length, merge.Merged), ((long)merge.Rank << 32) | (uint)left);
        }
    }
}
