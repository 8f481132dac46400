using System.Text;

namespace TokenMill.Tokenization;

/// <summary>
/// What every tokenizer loaded from GGUF shares: the vocabulary, special ids, the per-token output
/// bytes (llama.cpp's <c>token_to_piece</c>, computed once per token as llama.cpp caches it) and
/// decoding. Subclasses supply the algorithm that turns a run of plain text into ids.
/// </summary>
internal abstract class GgufTokenizer : ITokenizer
{
    readonly byte[][] _pieces;

    protected GgufTokenizer(GgufVocabulary vocab)
    {
        Vocab = vocab;
        _pieces = new byte[vocab.Count][];
    }

    /// <summary>Fills the piece cache; call at the end of the subclass constructor (it uses <see cref="NormalTokenBytes"/>).</summary>
    protected void BuildPieceCache()
    {
        for (int id = 0; id < Vocab.Count; id++) _pieces[id] = RenderToken(id);
    }

    internal GgufVocabulary Vocab { get; }

    public int VocabSize => Vocab.Count;
    public int? BosId => Vocab.Bos;
    public int? EosId => Vocab.Eos;
    public bool AddBos => Vocab.AddBos;
    public bool AddEos => Vocab.AddEos;
    public IReadOnlySet<int> EndOfGenerationIds => Vocab.EndOfGeneration;

    public int[] Encode(string text, bool addSpecial = false, bool parseSpecial = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>();
        EncodeInto(text, addSpecial, parseSpecial, output);
        return [.. output];
    }

    /// <summary>Appends the ids of <paramref name="text"/> to <paramref name="output"/> (see <see cref="Encode"/>).</summary>
    protected abstract void EncodeInto(string text, bool addSpecial, bool parseSpecial, List<int> output);

    /// <summary>The output bytes of a token whose attribute is <see cref="TokenAttributes.Normal"/>.</summary>
    protected abstract byte[] NormalTokenBytes(string text);

    public byte[] TokenToBytes(int id, bool renderSpecial = false)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(id);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(id, Vocab.Count);
        if (!renderSpecial && Vocab.Has(id, TokenAttributes.Unknown | TokenAttributes.Control)) return [];
        return _pieces[id];
    }

    /// <summary>
    /// Concatenates <see cref="TokenToBytes"/> and decodes the UTF-8. As llama.cpp's <c>llama_detokenize</c>
    /// (with <c>remove_special = false</c>), a vocabulary that adds a space prefix (SentencePiece) drops
    /// one leading space from the first token's text, so <c>Decode(Encode(s)) == s</c>. Unlike
    /// llama.cpp we do not apply its <c>clean_spaces</c> heuristics (e.g. removing the space before
    /// <c>,</c> or <c>'s</c>): the result equals what streaming <see cref="TokenToBytes"/> produces.
    /// </summary>
    public string Decode(ReadOnlySpan<int> ids, bool renderSpecial = false)
    {
        var bytes = new List<byte>(ids.Length * 4);
        for (int i = 0; i < ids.Length; i++)
        {
            var piece = TokenToBytes(ids[i], renderSpecial).AsSpan();
            if (i == 0 && Vocab.AddSpacePrefix && piece.Length > 0 && piece[0] == (byte)' ') piece = piece[1..];
            bytes.AddRange(piece);
        }
        return Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes));
    }

    // llama.cpp's token_to_piece with special = true; TokenToBytes hides control tokens when not rendering.
    byte[] RenderToken(int id)
    {
        var attributes = Vocab.Attributes[id];
        string text = Vocab.Texts[id];
        if ((attributes & (TokenAttributes.Unknown | TokenAttributes.Control | TokenAttributes.UserDefined)) != 0)
            return Encoding.UTF8.GetBytes(text);
        if ((attributes & TokenAttributes.Normal) != 0)
            return NormalTokenBytes(text);
        if ((attributes & TokenAttributes.Byte) != 0)
            return [ParseByteToken(text)];
        return []; // unused and undefined tokens print nothing
    }

    /// <summary>The byte of a <c>&lt;0xAB&gt;</c> token (llama.cpp's <c>token_to_byte</c>).</summary>
    static byte ParseByteToken(string text)
    {
        if (text.Length == 6 && text.StartsWith("<0x", StringComparison.Ordinal) && text[5] == '>'
            && byte.TryParse(text.AsSpan(3, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b))
            return b;
        throw new FormatException($"byte token '{text}' is not of the form <0xAB>");
    }

    /// <summary>The id of a byte-fallback token for <paramref name="b"/>: <c>&lt;0xAB&gt;</c>, else the byte itself as text (llama.cpp's <c>byte_to_token</c> for SPM).</summary>
    protected int? FindByteToken(byte b)
    {
        if (Vocab.Find($"<0x{b:X2}>") is int id) return id;
        return b < 0x80 ? Vocab.Find(((char)b).ToString()) : null;
    }
}
