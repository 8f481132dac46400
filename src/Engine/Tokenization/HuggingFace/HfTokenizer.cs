using System.Collections.Frozen;
using System.Text;

namespace TokenMill.Tokenization.HuggingFace;

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> run the way Hugging Face runs it: added tokens are cut out of the raw text
/// first (leftmost-longest; special ones only when parsing special-token text), the rest is normalized, cut again by
/// the added tokens flagged <c>normalized</c>, pre-tokenized into words, and each word encoded by the BPE model;
/// <c>addSpecial</c> applies the post-processor's template. Decoding runs the decoder steps per token, so that
/// <see cref="TokenToBytes"/> streams exactly what <see cref="Decode"/> returns.
/// </summary>
internal sealed class HfTokenizer : ITokenizer
{
    readonly string[] _tokens;
    readonly bool[] _isAdded;
    readonly bool[] _isSpecial;
    readonly byte[][] _pieces;
    readonly Normalizer? _normalizer;
    readonly PreTokenizer? _preTokenizer;
    readonly BpeModel _model;
    readonly AddedTokenSplitter _rawAll, _rawNonSpecial, _normalizedAll, _normalizedNonSpecial;
    readonly int[] _prefix, _suffix;
    readonly (string Content, int Count) _strip;
    readonly TokenDecoder[] _decoders;

    public HfTokenizer(string[] tokens, IReadOnlyList<AddedToken> added, Normalizer? normalizer, PreTokenizer? preTokenizer,
        BpeModel model, TokenDecoder[] decoders, (string Content, int Count) strip, int[] prefix, int[] suffix, int? bos, int? eos)
    {
        _tokens = tokens;
        _normalizer = normalizer;
        _preTokenizer = preTokenizer;
        _model = model;
        _prefix = prefix;
        _suffix = suffix;
        _strip = strip;
        _decoders = decoders;
        BosId = bos;
        EosId = eos;

        _isAdded = new bool[tokens.Length];
        _isSpecial = new bool[tokens.Length];
        foreach (var a in added)
        {
            _isAdded[a.Id] = true;
            _isSpecial[a.Id] |= a.Special;
        }
        AddedTokens = added;

        // Tokens flagged normalized match the normalized text, by their normalized content; the others match raw text.
        var raw = added.Where(a => !a.Normalized || normalizer is null).Select(a => (a.Content, a)).ToList();
        var normalized = added.Where(a => a.Normalized && normalizer is not null).Select(a => (normalizer!.Normalize(a.Content), a)).ToList();
        _rawAll = new AddedTokenSplitter(raw);
        _rawNonSpecial = new AddedTokenSplitter(raw.Where(t => !t.a.Special));
        _normalizedAll = new AddedTokenSplitter(normalized);
        _normalizedNonSpecial = new AddedTokenSplitter(normalized.Where(t => !t.a.Special));

        _pieces = new byte[tokens.Length][];
        for (int id = 0; id < tokens.Length; id++)
        {
            string text = tokens[id];
            byte[]? bytes = null;
            foreach (var d in decoders) d.Apply(ref text, ref bytes, _isAdded[id]);
            _pieces[id] = bytes ?? Encoding.UTF8.GetBytes(text);
        }

        var eog = new HashSet<int>();
        if (eos is int e) eog.Add(e);
        foreach (var a in added)
            if (a.Special && EndOfGenerationTexts.Contains(a.Content)) eog.Add(a.Id);
        EndOfGenerationIds = eog.ToFrozenSet();
    }

    /// <summary>Texts of special tokens that end a turn or a document in the families that use them.</summary>
    static readonly FrozenSet<string> EndOfGenerationTexts = new[]
    {
        "<|eot_id|>", "<|eom_id|>", "<|end_of_text|>", "<|im_end|>", "<|endoftext|>", "<|end|>", "<end_of_turn>", "<eos>", "</s>",
    }.ToFrozenSet(StringComparer.Ordinal);

    internal IReadOnlyList<AddedToken> AddedTokens { get; }

    /// <summary>
    /// Whether the ids from <paramref name="vocabSize"/> up are all special added tokens: a model with that many rows
    /// can use this tokenizer (Gemma 3 1B: 262,144 rows; its tokenizer adds the multimodal <c>&lt;image_soft_token&gt;</c>
    /// as id 262,144). A prompt that contains such a token is refused by the engine.
    /// </summary>
    internal bool FitsVocabulary(int vocabSize)
    {
        for (int id = vocabSize; id < _tokens.Length; id++)
            if (!_isSpecial[id]) return false;
        return true;
    }

    /// <summary>
    /// This tokenizer with ids up to <paramref name="vocabSize"/> that decode to nothing: a model's padding rows beyond
    /// the tokenizer (Qwen3: 151,669 tokens, 151,936 rows), which random weights can sample.
    /// </summary>
    internal HfTokenizer PaddedTo(int vocabSize)
    {
        if (vocabSize <= _tokens.Length) return this;
        var tokens = new string[vocabSize];
        _tokens.CopyTo(tokens, 0);
        Array.Fill(tokens, "", _tokens.Length, vocabSize - _tokens.Length);
        return new HfTokenizer(tokens, AddedTokens, _normalizer, _preTokenizer, _model, _decoders, _strip, _prefix, _suffix, BosId, EosId);
    }

    public int VocabSize => _tokens.Length;
    public int? BosId { get; }
    public int? EosId { get; }
    public bool AddBos => BosId is int b && _prefix.Contains(b);
    public bool AddEos => EosId is int e && _suffix.Contains(e);
    public IReadOnlySet<int> EndOfGenerationIds { get; }

    /// <summary>The token text of <paramref name="id"/> as the file writes it (e.g. <c>Ġworld</c>, <c>▁</c>).</summary>
    internal string TokenText(int id) => _tokens[id];

    public int[] Encode(string text, bool addSpecial = false, bool parseSpecial = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>();
        if (addSpecial) output.AddRange(_prefix);
        var scratch = new BpeModel.Scratch();
        foreach (var section in (parseSpecial ? _rawAll : _rawNonSpecial).Split(text))
        {
            if (section.Token is { } token)
            {
                output.Add(token.Id);
                continue;
            }
            string normalized = _normalizer?.Normalize(section.Text) ?? section.Text;
            foreach (var sub in (parseSpecial ? _normalizedAll : _normalizedNonSpecial).Split(normalized))
            {
                if (sub.Token is { } t)
                {
                    output.Add(t.Id);
                    continue;
                }
                if (_preTokenizer is null)
                {
                    _model.Encode(sub.Text, output, scratch);
                    continue;
                }
                var words = new List<string>();
                _preTokenizer.Split(sub.Text, words);
                foreach (var word in words) _model.Encode(word, output, scratch);
            }
        }
        if (addSpecial) output.AddRange(_suffix);
        return [.. output];
    }

    public byte[] TokenToBytes(int id, bool renderSpecial = false)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(id);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(id, _tokens.Length);
        return _isSpecial[id] && !renderSpecial ? [] : _pieces[id];
    }

    /// <summary>
    /// Concatenates <see cref="TokenToBytes"/> and decodes the UTF-8 (invalid bytes become U+FFFD). A <c>Strip</c>
    /// decoder after <c>Fuse</c> (Llama 2 style) removes its leading characters from the whole text. Hugging Face's
    /// <c>clean_up_tokenization_spaces</c> is not applied: the result equals what streaming produces.
    /// </summary>
    public string Decode(ReadOnlySpan<int> ids, bool renderSpecial = false)
    {
        var bytes = new List<byte>(ids.Length * 4);
        foreach (int id in ids) bytes.AddRange(TokenToBytes(id, renderSpecial));
        string text = Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes));
        for (int i = 0; i < _strip.Count && _strip.Content.Length > 0 && text.StartsWith(_strip.Content, StringComparison.Ordinal); i++)
            text = text[_strip.Content.Length..];
        return text;
    }
}
