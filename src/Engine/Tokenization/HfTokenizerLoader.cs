using System.Text.Json;
using TokenMill.Tokenization.HuggingFace;

namespace TokenMill.Tokenization;

/// <summary>
/// Loads a Hugging Face <c>tokenizer.json</c> (with <c>tokenizer_config.json</c> when present) into a
/// <see cref="HfTokenizer"/>. Supported: the <c>BPE</c> model, byte-level (Llama 3, Qwen 2/2.5/3) or SentencePiece-style
/// with <c>byte_fallback</c> (Gemma 3); normalizers <c>NFC</c>, <c>NFD</c>, <c>Replace</c> (string pattern),
/// <c>Prepend</c>, <c>Sequence</c>; pre-tokenizers <c>Split</c> (the Llama 3 or Qwen2 regex, or a string pattern),
/// <c>ByteLevel</c>, <c>Sequence</c>; post-processors <c>TemplateProcessing</c>, <c>ByteLevel</c>, <c>Sequence</c>;
/// decoders <c>ByteLevel</c>, <c>Replace</c>, <c>ByteFallback</c>, <c>Fuse</c>, <c>Strip</c>, <c>Sequence</c>.
/// Anything else (Unigram, WordPiece, Metaspace, other regexes …) is refused by name.
/// </summary>
public static class HfTokenizerLoader
{
    public const string TokenizerFileName = "tokenizer.json";
    public const string ConfigFileName = "tokenizer_config.json";

    /// <summary>Split regexes as Hugging Face files write them → llama.cpp's pre-tokenizer that runs the same regex.</summary>
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
        var reader = new Reader(path);

        if (root.ValueKind != JsonValueKind.Object || !root.TryGetProperty("model", out var model) || model.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{path}: model: missing");
        string type = model.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "(none)";
        if (type != "BPE") throw reader.Unsupported($"model.type \"{type}\"");
        foreach (var affix in new[] { "continuing_subword_prefix", "end_of_word_suffix" })
            if (model.TryGetProperty(affix, out var a) && a.ValueKind == JsonValueKind.String && a.GetString()!.Length > 0)
                throw reader.Unsupported($"model.{affix} \"{a.GetString()}\"");
        if (model.TryGetProperty("dropout", out var dropout) && dropout.ValueKind == JsonValueKind.Number && dropout.GetDouble() != 0)
            throw reader.Unsupported("BPE dropout");

        // Token table: the model's vocab, then the added tokens over it.
        if (!model.TryGetProperty("vocab", out var vocab) || vocab.ValueKind != JsonValueKind.Object)
            throw new InvalidDataException($"{path}: model.vocab: missing or not an object");
        var texts = new Dictionary<int, string>();
        var ids = new Dictionary<string, int>(StringComparer.Ordinal);
        foreach (var p in vocab.EnumerateObject())
        {
            int id = p.Value.ValueKind == JsonValueKind.Number && p.Value.TryGetInt32(out int v) && v >= 0
                ? v : throw new InvalidDataException($"{path}: model.vocab['{p.Name}']: expected a non-negative id, found {p.Value.GetRawText()}");
            texts[id] = p.Name;
            ids[p.Name] = id;
        }
        var added = new List<AddedToken>();
        if (root.TryGetProperty("added_tokens", out var addedElement) && addedElement.ValueKind == JsonValueKind.Array)
            foreach (var a in addedElement.EnumerateArray())
            {
                if (a.ValueKind != JsonValueKind.Object || !a.TryGetProperty("id", out var idElement) || idElement.ValueKind != JsonValueKind.Number
                    || !idElement.TryGetInt32(out int id) || id < 0
                    || !a.TryGetProperty("content", out var content) || content.ValueKind != JsonValueKind.String)
                    throw new InvalidDataException($"{path}: added_tokens: an entry without an id and content: {Truncate(a.GetRawText())}");
                bool Flag(string name, bool fallback) =>
                    a.TryGetProperty(name, out var f) && f.ValueKind is JsonValueKind.True or JsonValueKind.False ? f.GetBoolean() : fallback;
                bool special = Flag("special", false);
                var token = new AddedToken(id, content.GetString()!, special, Flag("lstrip", false), Flag("rstrip", false),
                    Flag("normalized", !special), Flag("single_word", false));
                added.Add(token);
                texts[id] = token.Content;
                ids[token.Content] = id;
            }
        int count = texts.Count == 0 ? 0 : texts.Keys.Max() + 1;
        // Ids are dense in real files; a stray huge id must not make us allocate a table of billions of entries.
        if (count > 2 * texts.Count + 1024)
            throw new InvalidDataException($"{path}: token ids are not dense: the largest is {count - 1} for {texts.Count} tokens");
        var table = new string[count];
        for (int id = 0; id < count; id++) table[id] = texts.TryGetValue(id, out var text) ? text : ""; // a hole decodes to nothing

        if (!model.TryGetProperty("merges", out var mergesElement) || mergesElement.ValueKind != JsonValueKind.Array)
            throw new InvalidDataException($"{path}: model.merges: missing or not an array");
        var merges = new List<(string, string)>(mergesElement.GetArrayLength());
        foreach (var m in mergesElement.EnumerateArray())
        {
            // Older files write "a b", newer ones ["a", "b"].
            if (m.ValueKind == JsonValueKind.String && m.GetString()!.Split(' ') is [var l, var r]) merges.Add((l, r));
            else if (m.ValueKind == JsonValueKind.Array && m.GetArrayLength() == 2 && m[0].ValueKind == JsonValueKind.String && m[1].ValueKind == JsonValueKind.String)
                merges.Add((m[0].GetString()!, m[1].GetString()!));
            else throw new InvalidDataException($"{path}: model.merges: expected \"a b\" or [\"a\", \"b\"], found {Truncate(m.GetRawText())}");
        }
        bool byteFallback = model.TryGetProperty("byte_fallback", out var bf) && bf.ValueKind == JsonValueKind.True;
        bool ignoreMerges = model.TryGetProperty("ignore_merges", out var im) && im.ValueKind == JsonValueKind.True;
        int? unknown = model.TryGetProperty("unk_token", out var unk) && unk.ValueKind == JsonValueKind.String && ids.TryGetValue(unk.GetString()!, out int u) ? u : null;
        var bpe = new BpeModel(ids, merges, byteFallback, unknown, ignoreMerges, path);

        var normalizer = root.TryGetProperty("normalizer", out var n) ? reader.Normalizer(n, "normalizer") : null;
        var preTokenizer = root.TryGetProperty("pre_tokenizer", out var pt) ? reader.PreTokenizer(pt, "pre_tokenizer") : null;
        var decoders = new List<TokenDecoder>();
        (string, int) strip = ("", 0);
        if (root.TryGetProperty("decoder", out var dec)) reader.Decoder(dec, "decoder", decoders, ref strip, fused: false);
        var prefix = new List<int>();
        var suffix = new List<int>();
        if (root.TryGetProperty("post_processor", out var post)) reader.PostProcessor(post, "post_processor", prefix, suffix);

        // tokenizer_config.json: BOS/EOS by text; add_bos_token/add_eos_token, when given, override the template
        // (transformers' Llama and Gemma tokenizers rebuild their post-processor from them).
        string configPath = Path.Combine(directory, ConfigFileName);
        string? bos = null, eos = null;
        bool? addBos = null, addEos = null;
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
        int? bosId = bos is not null && ids.TryGetValue(bos, out int b) ? b : null;
        int? eosId = eos is not null && ids.TryGetValue(eos, out int e) ? e : null;
        if (bosId is int bi)
        {
            if (addBos == true && !prefix.Contains(bi)) prefix.Insert(0, bi);
            if (addBos == false) prefix.RemoveAll(x => x == bi);
        }
        if (eosId is int ei)
        {
            if (addEos == true && !suffix.Contains(ei)) suffix.Add(ei);
            if (addEos == false) suffix.RemoveAll(x => x == ei);
        }
        return new HfTokenizer(table, added, normalizer, preTokenizer, bpe, [.. decoders], strip, [.. prefix], [.. suffix], bosId, eosId);
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

    /// <summary>Reads the pipeline parts of one file; every refusal names the file, the JSON path and what it found.</summary>
    sealed class Reader(string path)
    {
        public NotSupportedException Unsupported(string what) =>
            new($"{path}: {what} is not supported yet (tokenizer.json support: BPE, byte-level or with byte_fallback; see README)");

        static string TypeOf(JsonElement e) =>
            e.ValueKind == JsonValueKind.Object && e.TryGetProperty("type", out var t) && t.ValueKind == JsonValueKind.String ? t.GetString()! : "(none)";

        JsonElement Array(JsonElement e, string name, string where) =>
            e.TryGetProperty(name, out var a) && a.ValueKind == JsonValueKind.Array
                ? a : throw new InvalidDataException($"{path}: {where}.{name}: missing or not an array");

        string StringPattern(JsonElement e, string where)
        {
            if (e.TryGetProperty("pattern", out var p) && p.ValueKind == JsonValueKind.Object)
            {
                if (p.TryGetProperty("String", out var s) && s.ValueKind == JsonValueKind.String) return s.GetString()!;
                if (p.TryGetProperty("Regex", out var r)) throw Unsupported($"{where}: a Regex pattern {Truncate(r.GetRawText())}");
            }
            throw new InvalidDataException($"{path}: {where}.pattern: expected {{\"String\": …}} or {{\"Regex\": …}}");
        }

        static string Content(JsonElement e) =>
            e.TryGetProperty("content", out var c) && c.ValueKind == JsonValueKind.String ? c.GetString()! : "";

        public Normalizer? Normalizer(JsonElement e, string where)
        {
            if (e.ValueKind == JsonValueKind.Null) return null;
            return TypeOf(e) switch
            {
                "NFC" => new Normalizer.Nfc(),
                "NFD" => new Normalizer.Nfd(),
                "Replace" => new Normalizer.Replace(StringPattern(e, where), Content(e)),
                "Prepend" => new Normalizer.Prepend(e.TryGetProperty("prepend", out var p) && p.ValueKind == JsonValueKind.String ? p.GetString()! : ""),
                "Sequence" => new Normalizer.Sequence([.. Array(e, "normalizers", where).EnumerateArray()
                    .Select((x, i) => Normalizer(x, $"{where}.normalizers[{i}]")).OfType<Normalizer>()]),
                var other => throw Unsupported($"{where}: normalizer \"{other}\""),
            };
        }

        public PreTokenizer? PreTokenizer(JsonElement e, string where)
        {
            if (e.ValueKind == JsonValueKind.Null) return null;
            switch (TypeOf(e))
            {
                case "Sequence":
                    return new PreTokenizer.Sequence([.. Array(e, "pretokenizers", where).EnumerateArray()
                        .Select((x, i) => PreTokenizer(x, $"{where}.pretokenizers[{i}]")).OfType<PreTokenizer>()]);
                case "ByteLevel":
                    bool addPrefixSpace = e.TryGetProperty("add_prefix_space", out var aps) && aps.ValueKind == JsonValueKind.True;
                    bool useRegex = !(e.TryGetProperty("use_regex", out var ur) && ur.ValueKind == JsonValueKind.False); // default true
                    return new PreTokenizer.ByteLevel(addPrefixSpace, useRegex ? new LlamaPreTokenizer(BpePreTokenizers.Find("gpt-2")!.Patterns) : null);
                case "Split":
                    if (e.TryGetProperty("invert", out var inv) && inv.ValueKind == JsonValueKind.True) throw Unsupported($"{where}: Split with invert: true");
                    string behavior = e.TryGetProperty("behavior", out var bh) && bh.ValueKind == JsonValueKind.String ? bh.GetString()! : "(none)";
                    if (e.TryGetProperty("pattern", out var p) && p.ValueKind == JsonValueKind.Object && p.TryGetProperty("Regex", out var regex)
                        && regex.ValueKind == JsonValueKind.String)
                    {
                        if (behavior != "Isolated") throw Unsupported($"{where}: Split regex with behavior \"{behavior}\"");
                        return PreTokenizerByRegex.TryGetValue(regex.GetString()!, out var pre)
                            ? new PreTokenizer.RegexSplit(regex.GetString()!, new LlamaPreTokenizer(BpePreTokenizers.Find(pre)!.Patterns))
                            : throw Unsupported($"{where}: the Split regex {Truncate(regex.GetRawText())}");
                    }
                    return Enum.TryParse<SplitBehavior>(behavior, out var b)
                        ? new PreTokenizer.StringSplit(StringPattern(e, where), b)
                        : throw Unsupported($"{where}: Split behavior \"{behavior}\"");
                case var other:
                    throw Unsupported($"{where}: pre_tokenizer \"{other}\"");
            }
        }

        public void Decoder(JsonElement e, string where, List<TokenDecoder> steps, ref (string, int) strip, bool fused)
        {
            if (e.ValueKind == JsonValueKind.Null) return;
            string type = TypeOf(e);
            if (fused && type != "Strip") throw Unsupported($"{where}: decoder \"{type}\" after Fuse");
            switch (type)
            {
                case "Sequence":
                    int i = 0;
                    foreach (var d in Array(e, "decoders", where).EnumerateArray())
                    {
                        Decoder(d, $"{where}.decoders[{i++}]", steps, ref strip, fused);
                        fused |= TypeOf(d) == "Fuse";
                    }
                    break;
                case "ByteLevel": steps.Add(new TokenDecoder.ByteLevel()); break;
                case "Replace": steps.Add(new TokenDecoder.Replace(StringPattern(e, where), Content(e))); break;
                case "ByteFallback": steps.Add(new TokenDecoder.ByteFallback()); break;
                case "Fuse": break; // bytes are concatenated anyway
                case "Strip" when fused:
                    int start = e.TryGetProperty("start", out var s) && s.TryGetInt32(out int si) ? si : 0;
                    int stop = e.TryGetProperty("stop", out var st) && st.TryGetInt32(out int sti) ? sti : 0;
                    if (stop != 0) throw Unsupported($"{where}: Strip with stop {stop}");
                    strip = (Content(e), start);
                    break;
                default: throw Unsupported($"{where}: decoder \"{type}\"{(type == "Strip" ? " before Fuse" : "")}");
            }
        }

        public void PostProcessor(JsonElement e, string where, List<int> prefix, List<int> suffix)
        {
            if (e.ValueKind == JsonValueKind.Null) return;
            switch (TypeOf(e))
            {
                case "ByteLevel": return; // offsets only
                case "Sequence":
                    int i = 0;
                    foreach (var p in Array(e, "processors", where).EnumerateArray()) PostProcessor(p, $"{where}.processors[{i++}]", prefix, suffix);
                    return;
                case "TemplateProcessing":
                    // The "single" template: special tokens before and after sequence A.
                    var specials = e.TryGetProperty("special_tokens", out var st) && st.ValueKind == JsonValueKind.Object ? st : default;
                    bool seenSequence = false;
                    foreach (var item in Array(e, "single", where).EnumerateArray())
                    {
                        if (item.TryGetProperty("Sequence", out _)) { seenSequence = true; continue; }
                        if (!item.TryGetProperty("SpecialToken", out var tok) || !tok.TryGetProperty("id", out var name) || name.ValueKind != JsonValueKind.String)
                            throw new InvalidDataException($"{path}: {where}.single: expected Sequence or SpecialToken items, found {Truncate(item.GetRawText())}");
                        if (specials.ValueKind != JsonValueKind.Object || !specials.TryGetProperty(name.GetString()!, out var entry)
                            || !entry.TryGetProperty("ids", out var idList) || idList.ValueKind != JsonValueKind.Array)
                            throw new InvalidDataException($"{path}: {where}.special_tokens: no ids for \"{name.GetString()}\"");
                        foreach (var id in idList.EnumerateArray()) (seenSequence ? suffix : prefix).Add(id.GetInt32());
                    }
                    return;
                case var other:
                    throw Unsupported($"{where}: post_processor \"{other}\"");
            }
        }
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
