using System.Text.Json;

namespace TokenMill.Tokenization;

/// <summary>
/// A Hugging Face <c>tokenizer.json</c> of the byte-level BPE kind Llama 3 and Qwen 2/2.5/3 publish, mapped onto
/// the same <see cref="BpeTokenizer"/> their GGUF conversions use: <c>model.vocab</c> and <c>added_tokens</c> give
/// the token table (special added tokens are control tokens, the others user-defined, gaps unused — as llama.cpp's
/// converter writes them), <c>model.merges</c> the merges, and the Split pre-tokenizer's regex selects the
/// matching llama.cpp pre-tokenizer. Any other kind (SentencePiece-style BPE with byte fallback such as Gemma's,
/// WordPiece, Unigram, an unknown regex) is refused by name: a full <c>tokenizer.json</c> implementation is a later task.
/// </summary>
public static class HfTokenizerLoader
{
    public const string TokenizerFileName = "tokenizer.json";
    public const string ConfigFileName = "tokenizer_config.json";

    /// <summary>Split regexes as Hugging Face files write them → llama.cpp's pre-tokenizer of the same text.</summary>
    static readonly Dictionary<string, string> PreTokenizerByRegex = new(StringComparer.Ordinal)
    {
        [@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"] = "llama-bpe",
        [@"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"] = "qwen2",
    };

    public static bool HasTokenizer(string directory) => File.Exists(Path.Combine(directory, TokenizerFileName));

    /// <summary>Loads <c>tokenizer.json</c> (and <c>tokenizer_config.json</c> when present) from <paramref name="directory"/>.</summary>
    public static ITokenizer Load(string directory)
    {
        string path = Path.Combine(directory, TokenizerFileName);
        using var doc = ParseJson(path);
        var root = doc.RootElement;
        NotSupportedException Unsupported(string what) =>
            new($"{path}: {what} is not supported yet (supported: byte-level BPE with the Llama 3 or Qwen2 Split regex)");

        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{path}: model: missing");
        string type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "(none)";
        if (type != "BPE") throw Unsupported($"model.type \"{type}\"");
        if (model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True)
            throw Unsupported("a BPE with byte_fallback (SentencePiece style, e.g. Gemma)");

        string pre = PreTokenizerOf(path, root, Unsupported);
        // Qwen's NFC normalizer is not applied, as llama.cpp does not apply it (and string.Normalize is a no-op under
        // InvariantGlobalization): text already in NFC — nearly all text — tokenizes exactly; decomposed accents may differ.
        if (root.TryGetProperty("normalizer", out var norm) && norm.ValueKind == JsonValueKind.Object
            && !(norm.TryGetProperty("type", out var nt) && nt.GetString() == "NFC"))
            throw Unsupported($"normalizer {norm.GetRawText()}");

        // Token table: the model's vocab, then the added tokens over it.
        var texts = new Dictionary<int, string>();
        var attributes = new Dictionary<int, TokenAttributes>();
        if (!model.TryGetProperty("vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{path}: model.vocab: missing or not an object");
        foreach (var p in vocab.EnumerateObject())
        {
            int id = p.Value.ValueKind == JsonValueKind.Number && p.Value.TryGetInt32(out int v) && v >= 0
                ? v : throw new InvalidDataException($"{path}: model.vocab['{p.Name}']: expected a non-negative id, found {p.Value.GetRawText()}");
            texts[id] = p.Name;
            attributes[id] = TokenAttributes.Normal;
        }
        if (root.TryGetProperty("added_tokens", out var added) && added.ValueKind == JsonValueKind.Array)
            foreach (var a in added.EnumerateArray())
            {
                if (!a.TryGetProperty("id", out var idElement) || !idElement.TryGetInt32(out int id) || id < 0
                    || !a.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{path}: added_tokens: an entry without an id and content: {a.GetRawText()}");
                bool special = a.TryGetProperty("special", out var s) && s.ValueKind == JsonValueKind.True;
                texts[id] = content.GetString()!;
                attributes[id] = special ? TokenAttributes.Control : TokenAttributes.UserDefined;
            }
        int count = texts.Count == 0 ? 0 : texts.Keys.Max() + 1;
        var table = new string[count];
        var attrs = new TokenAttributes[count];
        for (int id = 0; id < count; id++)
        {
            // llama.cpp's converter fills holes with unused placeholder tokens.
            table[id] = texts.TryGetValue(id, out var text) ? text : $"[PAD{id}]";
            attrs[id] = attributes.TryGetValue(id, out var attr) ? attr : TokenAttributes.Unused;
        }

        if (!model.TryGetProperty("merges", out var mergesElement) || mergesElement.ValueKind != JsonValueKind.Array)
            throw new InvalidDataException($"{path}: model.merges: missing or not an array");
        var merges = new List<string>(mergesElement.GetArrayLength());
        foreach (var m in mergesElement.EnumerateArray())
        {
            // Older files write "a b", newer ones ["a", "b"].
            if (m.ValueKind == JsonValueKind.String) merges.Add(m.GetString()!);
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
                merges.Add(m[0].GetString() + " " + m[1].GetString());
            else throw new InvalidDataException($"{path}: model.merges: expected \"a b\" or [\"a\", \"b\"], found {m.GetRawText()}");
        }

        var config = BpePreTokenizers.Find(pre)!;
        bool ignoreMerges = model.TryGetProperty("ignore_merges", out var im) && im.ValueKind == JsonValueKind.True;
        config = config with { IgnoreMerges = ignoreMerges };

        var vocabulary = new GgufVocabulary(path, table, new float[count], attrs);
        int? IdOf(string? text) => text is not null && vocabulary.Find(text) is int id ? id : null;

        string configPath = Path.Combine(directory, ConfigFileName);
        bool? addBos = null, addEos = null;
        string? bos = null, eos = null;
        if (File.Exists(configPath))
        {
            using var cfg = ParseJson(configPath);
            var c = cfg.RootElement;
            if (c.ValueKind == JsonValueKind.Object)
            {
                bos = TokenText(c, "bos_token");
                eos = TokenText(c, "eos_token");
                addBos = c.TryGetProperty("add_bos_token", out var ab) && ab.ValueKind is JsonValueKind.True or JsonValueKind.False ? ab.GetBoolean() : null;
                addEos = c.TryGetProperty("add_eos_token", out var ae) && ae.ValueKind is JsonValueKind.True or JsonValueKind.False ? ae.GetBoolean() : null;
            }
        }
        vocabulary.Bos = IdOf(bos);
        vocabulary.Eos = IdOf(eos);
        vocabulary.AddBos = (addBos ?? config.AddBos) && vocabulary.Bos is not null;
        vocabulary.AddEos = (addEos ?? false) && vocabulary.Eos is not null;
        vocabulary.AddSpacePrefix = false;
        vocabulary.FinishLoading(null, pre, null);
        return new BpeTokenizer(vocabulary, [.. merges], config);
    }

    /// <summary>
    /// The <c>chat_template</c> of <c>tokenizer_config.json</c> (a string, or the entry named "default" of a list), with
    /// the tokenizer's BOS/EOS texts; null when there is none.
    /// </summary>
    public static Chat.ChatTemplate? ChatTemplate(string directory, ITokenizer tokenizer)
    {
        string path = Path.Combine(directory, ConfigFileName);
        if (!File.Exists(path)) return null;
        using var doc = ParseJson(path);
        if (doc.RootElement.ValueKind != JsonValueKind.Object || !doc.RootElement.TryGetProperty("chat_template", out var t)) return null;
        string? source = t.ValueKind == JsonValueKind.String ? t.GetString()
            : t.ValueKind == JsonValueKind.Array
                ? t.EnumerateArray().Where(e => e.ValueKind == JsonValueKind.Object && e.TryGetProperty("name", out var n) && n.GetString() == "default"
                                                && e.TryGetProperty("template", out var s) && s.ValueKind == JsonValueKind.String)
                    .Select(e => e.GetProperty("template").GetString()).FirstOrDefault()
                : null;
        if (source is null) return null;
        string Text(int? id) => id is int i ? System.Text.Encoding.UTF8.GetString(tokenizer.TokenToBytes(i, renderSpecial: true)) : "";
        return Chat.ChatTemplate.Parse(source, Text(tokenizer.BosId), Text(tokenizer.EosId));
    }

    static string PreTokenizerOf(string path, JsonElement root, Func<string, NotSupportedException> unsupported)
    {
        if (!root.TryGetProperty("pre_tokenizer", out var pt) || pt.ValueKind != JsonValueKind.Object)
            throw unsupported("a missing pre_tokenizer");
        // Sequence [Split(regex, Isolated), ByteLevel(use_regex: false)] is what both families write.
        if (pt.TryGetProperty("type", out var ty) && ty.GetString() == "Sequence" && pt.TryGetProperty("pretokenizers", out var seq)
            && seq.ValueKind == JsonValueKind.Array && seq.GetArrayLength() == 2)
        {
            var split = seq[0];
            var byteLevel = seq[1];
            if (split.TryGetProperty("type", out var st) && st.GetString() == "Split"
                && split.TryGetProperty("behavior", out var behavior) && behavior.GetString() == "Isolated"
                && !(split.TryGetProperty("invert", out var inv) && inv.ValueKind == JsonValueKind.True)
                && split.TryGetProperty("pattern", out var pattern) && pattern.ValueKind == JsonValueKind.Object
                && pattern.TryGetProperty("Regex", out var regex) && regex.ValueKind == JsonValueKind.String
                && byteLevel.TryGetProperty("type", out var bt) && bt.GetString() == "ByteLevel"
                && !(byteLevel.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.True))
            {
                return PreTokenizerByRegex.TryGetValue(regex.GetString()!, out var pre)
                    ? pre
                    : throw unsupported($"the Split regex {regex.GetRawText()}");
            }
        }
        throw unsupported($"pre_tokenizer {Truncate(pt.GetRawText())}");
    }

    static string Truncate(string s) => s.Length <= 200 ? s : s[..200] + "…";

    static string? TokenText(JsonElement config, string key) =>
        !config.TryGetProperty(key, out var v) ? null
        : v.ValueKind == JsonValueKind.String ? v.GetString()
        : v.ValueKind == JsonValueKind.Object && v.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString()
        : null;

    static JsonDocument ParseJson(string path)
    {
        try
        {
            return JsonDocument.Parse(File.ReadAllBytes(path), new JsonDocumentOptions { MaxDepth = 256 });
        }
        catch (JsonException e)
        {
            throw new InvalidDataException($"{path}: not valid JSON: {e.Message}", e);
        }
    }
}
