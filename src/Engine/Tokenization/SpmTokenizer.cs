using System.Text;

namespace TokenMill.Tokenization;

/// <summary>
/// SentencePiece-style tokenizer for GGUF <c>tokenizer.ggml.model = "llama"</c>: llama.cpp's
/// <c>llm_tokenizer_spm</c>. Spaces become <c>▁</c> (U+2581), a space is prefixed to text that starts
/// the input or follows a special token (<c>add_space_prefix</c>, default true), then adjacent symbols
/// (initially single characters) are merged greedily, highest-scoring resulting vocabulary entry
/// first (leftmost on ties), and characters that end up in no token are emitted as their UTF-8
/// bytes through the <c>&lt;0xAB&gt;</c> byte tokens.
/// </summary>
internal sealed class SpmTokenizer : GgufTokenizer
{
    const char SpaceMarker = '\u2581'; // ▁ LOWER ONE EIGHTH BLOCK, SentencePiece's visible space

    readonly int?[] _byteTokens = new int?[256];

    public SpmTokenizer(GgufVocabulary vocab) : base(vocab)
    {
        for (int b = 0; b < 256; b++) _byteTokens[b] = FindByteToken((byte)b);
        BuildPieceCache();
    }

    protected override void EncodeInto(string text, bool addSpecial, bool parseSpecial, List<int> output)
    {
        bool previousIsSpecial = true; // the start of the input counts as "after a special token"
        if (addSpecial && Vocab.AddBos) output.Add(Vocab.Bos!.Value);

        var session = new Session(this, output);
        foreach (var fragment in SpecialTokenSplitter.Split(Vocab, text, parseSpecial))
        {
            if (fragment.IsToken)
            {
                output.Add(fragment.TokenId);
                previousIsSpecial = true;
                continue;
            }
            var piece = new StringBuilder(fragment.Length + 1);
            if (Vocab.AddSpacePrefix && previousIsSpecial) piece.Append(' ');
            piece.Append(text, fragment.Offset, fragment.Length);
            piece.Replace(' ', SpaceMarker);
            session.Tokenize(piece.ToString());
            previousIsSpecial = false;
        }

        if (addSpecial && Vocab.AddEos) output.Add(Vocab.Eos!.Value);
    }

    protected override byte[] NormalTokenBytes(string text) => Encoding.UTF8.GetBytes(text.Replace(SpaceMarker, ' '));

    void AppendBytes(ReadOnlySpan<char> text, List<int> output)
    {
        Span<byte> utf8 = stackalloc byte[Encoding.UTF8.GetMaxByteCount(text.Length)]; // one codepoint: at most 12 bytes
        int n = Encoding.UTF8.GetBytes(text, utf8);
        foreach (byte b in utf8[..n])
        {
            output.Add(_byteTokens[b] ?? Vocab.Unknown
                ?? throw new InvalidOperationException($"{Vocab.Path}: no byte-fallback token <0x{b:X2}> and no unknown token"));
        }
    }

    /// <summary>The state of one <c>llm_tokenizer_spm_session::tokenize</c> call, reused across fragments.</summary>
    sealed class Session(SpmTokenizer owner, List<int> output)
    {
        struct Symbol
        {
            public int Start; // UTF-16 index into the text
            public int Length; // UTF-16 units; 0 once merged into its left neighbour
            public int Prev;
            public int Next;
        }

        readonly record struct Bigram(int Left, int Right, int Length);

        /// <summary>Highest score first, then leftmost (llama.cpp's <c>llm_bigram_spm::comparator</c>).</summary>
        sealed class Priority : IComparer<(float Score, int Left)>
        {
            public static readonly Priority Instance = new();

            public int Compare((float Score, int Left) x, (float Score, int Left) y)
            {
                if (x.Score > y.Score) return -1;
                if (x.Score < y.Score) return 1;
                return x.Left.CompareTo(y.Left);
            }
        }

        readonly List<Symbol> _symbols = [];
        readonly PriorityQueue<Bigram, (float Score, int Left)> _queue = new(Priority.Instance);
        string _text = "";

        public void Tokenize(string text)
        {
            _text = text;
            _symbols.Clear();
            _queue.Clear();
            for (int offset = 0; offset < text.Length;)
            {
                int length = char.IsHighSurrogate(text[offset]) && offset + 1 < text.Length && char.IsLowSurrogate(text[offset + 1]) ? 2 : 1;
                int index = _symbols.Count;
                _symbols.Add(new Symbol { Start = offset, Length = length, Prev = index - 1, Next = offset + length == text.Length ? -1 : index + 1 });
                offset += length;
            }

            for (int i = 1; i < _symbols.Count; i++) TryAddBigram(i - 1, i);

            var symbols = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(_symbols);
            while (_queue.TryDequeue(out var bigram, out _))
            {
                ref var left = ref symbols[bigram.Left];
                ref var right = ref symbols[bigram.Right];
                // Skip if either side was merged since this bigram was queued.
                if (left.Length == 0 || right.Length == 0 || left.Length + right.Length != bigram.Length) continue;

                left.Length += right.Length;
                right.Length = 0;
                left.Next = right.Next;
                if (right.Next >= 0) symbols[right.Next].Prev = bigram.Left;

                TryAddBigram(left.Prev, bigram.Left);
                TryAddBigram(bigram.Left, left.Next);
            }

            // llama.cpp's resegment() would also undo merges via rev_merge, but every merged symbol is a
            // vocabulary entry by construction and an unmerged one is a single character, which no
            // rev_merge key (two or more characters) can equal: what is left is the byte fallback.
            for (int i = 0; i != -1 && symbols.Length > 0; i = symbols[i].Next)
            {
                var piece = _text.AsSpan(symbols[i].Start, symbols[i].Length);
                if (owner.Vocab.TryFind(piece, out int id)) output.Add(id);
                else owner.AppendBytes(piece, output);
            }
        }

        void TryAddBigram(int left, int right)
        {
            if (left == -1 || right == -1) return;
            var l = _symbols[left];
            int length = l.Length + _symbols[right].Length;
            if (!owner.Vocab.TryFind(_text.AsSpan(l.Start, length), out int id)) return;
            _queue.Enqueue(new Bigram(left, right, length), (owner.Vocab.Scores[id], left));
        }
    }
}
