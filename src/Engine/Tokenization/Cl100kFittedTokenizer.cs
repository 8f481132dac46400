using System.Collections.Frozen;
using System.IO.Compression;
using System.Reflection;
using System.Text;
using System.Text.RegularExpressions;
using Microsoft.ML.Tokenizers;
using TokenMill.Models.Gguf;

namespace TokenMill.Tokenization;

/// <summary>
/// OpenAI's cl100k_base byte-level BPE cut down to a model's vocabulary size, for dummy models that
/// have no tokenizer of their own. See <see cref="TokenizerLoader.Cl100kFitted"/> for the id layout.
/// <para>
/// Microsoft.ML.Tokenizers does the BPE: <see cref="TiktokenTokenizer"/> built from the kept ranks
/// (its tiktoken merge loop is the reference algorithm) with the same cl100k pre-tokenizer regex it
/// uses for "gpt-4". The ranks come from the <c>Microsoft.ML.Tokenizers.Data.Cl100kBase</c> package,
/// whose only public surface is that resource (<c>TiktokenTokenizer</c>'s own encoder table is not
/// public in 2.0.1). Special tokens are split out here rather than by Microsoft.ML.Tokenizers so that
/// <c>parseSpecial = false</c> tokenizes their text as ordinary text, as for GGUF vocabularies.
/// </para>
/// </summary>
internal sealed partial class Cl100kFittedTokenizer : ITokenizer
{
    /// <summary>Ranks of cl100k_base's ordinary tokens are 0..100255; its special tokens sit above.</summary>
    public const int OrdinaryTokenCount = 100256;

    public const string EndOfText = "<|endoftext|>";

    /// <summary>cl100k_base's special tokens and their ids (tiktoken's <c>cl100k_base</c> definition).</summary>
    static readonly (string Text, int Id)[] Cl100kSpecialTokens =
    [
        (EndOfText, 100257),
        ("<|fim_prefix|>", 100258),
        ("<|fim_middle|>", 100259),
        ("<|fim_suffix|>", 100260),
        ("<|endofprompt|>", 100276),
    ];

    const string RanksAssembly = "Microsoft.ML.Tokenizers.Data.Cl100kBase";
    const string RanksResource = "cl100k_base.tiktoken.deflate";

    // The pattern Microsoft.ML.Tokenizers 2.0.1 uses for cl100k_base (its TiktokenTokenizer.Cl100kBaseRegex):
    // tiktoken's pattern with the possessive quantifiers written as atomic groups.
    [GeneratedRegex(@"'(?i:[sdmt]|ll|ve|re)|(?>[^\r\n\p{L}\p{N}]?)(?>\p{L}+)|(?>\p{N}{1,3})| ?(?>[^\s\p{L}\p{N}]+)(?>[\r\n]*)|(?>\s+)$|\s*[\r\n]|\s+(?!\S)|\s")]
    private static partial Regex Cl100kPattern();

    static readonly Lazy<Dictionary<byte[], int>> Cl100kRanks = new(LoadRanks);

    readonly TiktokenTokenizer _bpe;
    readonly byte[]?[] _tokenBytes;
    readonly (string Text, int Id)[] _specialTokens; // longest text first
    readonly FrozenSet<int> _specialIds;

    Cl100kFittedTokenizer(int vocabSize)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(vocabSize, 257, nameof(vocabSize)); // 256 byte tokens + <|endoftext|>
        VocabSize = vocabSize;

        int endOfText = vocabSize > 100257 ? 100257 : vocabSize - 1;
        _specialTokens = vocabSize > 100257
            ? [.. Cl100kSpecialTokens.Where(s => s.Id < vocabSize).OrderByDescending(s => s.Text.Length)]
            : [(EndOfText, endOfText)];
        _specialIds = _specialTokens.Select(s => s.Id).ToFrozenSet();
        EosId = endOfText;
        BosId = endOfText;
        EndOfGenerationIds = FrozenSet.Create(endOfText);

        var kept = new Dictionary<byte[], int>(ByteArrayComparer.Instance);
        foreach (var (bytes, rank) in Cl100kRanks.Value)
            if (rank < vocabSize && !_specialIds.Contains(rank)) kept.Add(bytes, rank);
        GiveEveryByteAnId(kept);

        _tokenBytes = new byte[vocabSize][];
        foreach (var (bytes, id) in kept) _tokenBytes[id] = bytes;
        foreach (var (text, id) in _specialTokens) _tokenBytes[id] = Encoding.UTF8.GetBytes(text);

        using var ranks = new MemoryStream();
        using (var writer = new StreamWriter(ranks, new UTF8Encoding(false), leaveOpen: true))
        {
            foreach (var (bytes, id) in kept.OrderBy(kv => kv.Value))
                writer.Write($"{Convert.ToBase64String(bytes)} {id}\n");
        }
        ranks.Position = 0;
        _bpe = TiktokenTokenizer.Create(ranks, new RegexPreTokenizer(Cl100kPattern(), null), normalizer: null);
    }

    public static Cl100kFittedTokenizer Create(int vocabSize) => new(vocabSize);

    /// <summary>The full cl100k_base rank table (token bytes → rank), for reference implementations in tests.</summary>
    internal static IReadOnlyDictionary<byte[], int> AllRanks => Cl100kRanks.Value;

    public int VocabSize { get; }
    public int? BosId { get; }
    public int? EosId { get; }
    public bool AddBos => false;
    public bool AddEos => false;
    public IReadOnlySet<int> EndOfGenerationIds { get; }

    /// <summary>
    /// If a single byte's rank did not fit, the highest-ranked kept multi-byte token gives up its id to
    /// that byte, so any text stays encodable. (cl100k_base ranks the 256 bytes 0..255, so with at least
    /// 257 ids this never happens; it keeps the invariant independent of the rank file.)
    /// </summary>
    static void GiveEveryByteAnId(Dictionary<byte[], int> kept)
    {
        var donors = new Queue<KeyValuePair<byte[], int>>(kept.Where(kv => kv.Key.Length > 1).OrderByDescending(kv => kv.Value));
        for (int b = 0; b < 256; b++)
        {
            byte[] single = [(byte)b];
            if (kept.ContainsKey(single)) continue;
            var donor = donors.Dequeue();
            kept.Remove(donor.Key);
            kept.Add(single, donor.Value);
        }
    }

    public int[] Encode(string text, bool addSpecial = false, bool parseSpecial = false)
    {
        ArgumentNullException.ThrowIfNull(text);
        var output = new List<int>();
        if (!parseSpecial)
        {
            output.AddRange(_bpe.EncodeToIds(text));
            return [.. output];
        }

        int start = 0;
        while (start < text.Length)
        {
            // The earliest special token in the rest of the text; the longest one if several start there.
            int at = -1, id = -1, length = 0;
            foreach (var (special, specialId) in _specialTokens)
            {
                int i = text.IndexOf(special, start, StringComparison.Ordinal);
                if (i >= 0 && (at < 0 || i < at)) (at, id, length) = (i, specialId, special.Length);
            }
            if (at < 0) at = text.Length;
            if (at > start) output.AddRange(_bpe.EncodeToIds(text.AsSpan(start, at - start)));
            if (id >= 0) output.Add(id);
            start = at + length;
        }
        return [.. output];
    }

    public byte[] TokenToBytes(int id, bool renderSpecial = false)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(id);
        ArgumentOutOfRangeException.ThrowIfGreaterThanOrEqual(id, VocabSize);
        if (_specialIds.Contains(id) && !renderSpecial) return [];
        return _tokenBytes[id] ?? []; // unused placeholder ids print nothing
    }

    public string Decode(ReadOnlySpan<int> ids, bool renderSpecial = false)
    {
        var bytes = new List<byte>(ids.Length * 4);
        foreach (int id in ids) bytes.AddRange(TokenToBytes(id, renderSpecial));
        return Encoding.UTF8.GetString(System.Runtime.InteropServices.CollectionsMarshal.AsSpan(bytes));
    }

    /// <summary>
    /// This vocabulary as the <c>tokenizer.*</c> keys of a GGUF byte-level BPE (<c>gpt2</c>), so that llama.cpp and
    /// <see cref="TokenizerLoader"/> load a written dummy model with the same ids: tokens in GPT-2's byte-to-character
    /// encoding, <c>&lt;|endoftext|&gt;</c> and the other specials as control tokens, unused placeholder ids as
    /// <c>&lt;|placeholder_ID|&gt;</c> of type unused, and the pre-tokenizer <c>llama-bpe</c> (Llama 3's, which runs
    /// cl100k_base's regex).
    /// </summary>
    /// <remarks>
    /// tiktoken merges any adjacent pair whose bytes together are a token, lowest rank first; a BPE merge list names
    /// pairs. So, as Hugging Face's tiktoken conversion does, every split of a kept token into two kept tokens is a
    /// merge, ordered by the rank of the token it makes (then by the pieces' ranks).
    /// </remarks>
    internal List<KeyValuePair<string, GgufValue>> GgufMetadata()
    {
        const string P = "tokenizer.ggml.";
        var tokens = new string[VocabSize];
        var types = new int[VocabSize];
        var ranks = new Dictionary<byte[], int>(ByteArrayComparer.Instance);
        for (int id = 0; id < VocabSize; id++)
        {
            byte[]? bytes = _tokenBytes[id];
            if (_specialIds.Contains(id))
                (tokens[id], types[id]) = (Encoding.UTF8.GetString(bytes!), (int)GgufTokenType.Control);
            else if (bytes is null)
                (tokens[id], types[id]) = ($"<|placeholder_{id}|>", (int)GgufTokenType.Unused);
            else
            {
                (tokens[id], types[id]) = (Gpt2ByteEncoding.Encode(bytes), (int)GgufTokenType.Normal);
                ranks.Add(bytes, id);
            }
        }

        var merges = new List<(int Made, int Left, int Right)>();
        foreach (var (bytes, id) in ranks)
            for (int cut = 1; cut < bytes.Length; cut++)
                if (ranks.TryGetValue(bytes[..cut], out int left) && ranks.TryGetValue(bytes[cut..], out int right))
                    merges.Add((id, left, right));
        merges.Sort();

        return
        [
            new(P + "model", new(GgufValueType.String, "gpt2")),
            new(P + "pre", new(GgufValueType.String, "llama-bpe")),
            new(P + "tokens", new(GgufValueType.Array, new GgufArray(GgufValueType.String, tokens))),
            new(P + "token_type", new(GgufValueType.Array, new GgufArray(GgufValueType.Int32, types))),
            new(P + "merges", new(GgufValueType.Array, new GgufArray(GgufValueType.String,
                merges.Select(m => tokens[m.Left] + " " + tokens[m.Right]).ToArray()))),
            new(P + "bos_token_id", new(GgufValueType.UInt32, (uint)BosId!.Value)),
            new(P + "eos_token_id", new(GgufValueType.UInt32, (uint)EosId!.Value)),
            new(P + "add_bos_token", new(GgufValueType.Bool, false)),
            new(P + "add_eos_token", new(GgufValueType.Bool, false)),
        ];
    }

    /// <summary>cl100k_base's ranks: token bytes → rank, from the data package's deflated tiktoken file.</summary>
    static Dictionary<byte[], int> LoadRanks()
    {
        Stream? resource;
        try
        {
            resource = Assembly.Load(new AssemblyName(RanksAssembly)).GetManifestResourceStream(RanksResource);
        }
        catch (FileNotFoundException e)
        {
            throw new InvalidOperationException($"the cl100k_base ranks need the {RanksAssembly} package (assembly not found)", e);
        }
        if (resource is null)
            throw new InvalidOperationException($"{RanksAssembly} has no resource '{RanksResource}'; the package layout changed");

        var ranks = new Dictionary<byte[], int>(OrdinaryTokenCount, ByteArrayComparer.Instance);
        using var reader = new StreamReader(new DeflateStream(resource, CompressionMode.Decompress), Encoding.UTF8);
        // Lines are "base64 [rank]"; without a rank it is the line's position. A "Capacity: N" header may come first.
        int implicitRank = 0;
        while (reader.ReadLine() is { } line)
        {
            if (line.Length == 0 || line.StartsWith("Capacity:", StringComparison.Ordinal)) continue;
            int space = line.IndexOf(' ', StringComparison.Ordinal);
            byte[] bytes = Convert.FromBase64String(space < 0 ? line : line[..space]);
            int rank = space < 0 ? implicitRank : int.Parse(line.AsSpan(space + 1), System.Globalization.CultureInfo.InvariantCulture);
            ranks[bytes] = rank;
            implicitRank++;
        }
        return ranks;
    }

    sealed class ByteArrayComparer : IEqualityComparer<byte[]>
    {
        public static readonly ByteArrayComparer Instance = new();

        public bool Equals(byte[]? x, byte[]? y) => x.AsSpan().SequenceEqual(y);

        public int GetHashCode(byte[] obj)
        {
            var hash = new HashCode();
            hash.AddBytes(obj);
            return hash.ToHashCode();
        }
    }
}
