using System.Collections.Frozen;

namespace TokenMill.Tokenization;

/// <summary>
/// The token table of a GGUF vocabulary with llama.cpp's load-time rules applied
/// (<c>llama_vocab::impl::load</c> in <c>llama-vocab.cpp</c>): token attributes from
/// <c>token_type</c>, special ids with their per-model defaults, the auto-detected EOT/EOM/FIM and
/// end-of-generation tokens, and the special-token list used to split text before tokenizing.
/// </summary>
internal sealed class GgufVocabulary
{
    readonly Dictionary<string, int> _tokenToId;
    readonly Dictionary<string, int>.AlternateLookup<ReadOnlySpan<char>> _tokenBySpan;

    public GgufVocabulary(string path, string[] texts, float[] scores, TokenAttributes[] attributes)
    {
        Path = path;
        Texts = texts;
        Scores = scores;
        Attributes = attributes;
        _tokenToId = new Dictionary<string, int>(texts.Length, StringComparer.Ordinal);
        for (int i = 0; i < texts.Length; i++)
        {
            // llama.cpp refuses duplicates; a GGUF string that is not valid UTF-8 decodes to U+FFFD here and
            // can collide with another such token, so the first one wins instead of failing the whole model.
            _tokenToId.TryAdd(texts[i], i);
        }
        _tokenBySpan = _tokenToId.GetAlternateLookup<ReadOnlySpan<char>>();
        MaxTokenLength = texts.Length == 0 ? 0 : texts.Max(t => t.Length);
    }

    /// <summary>The GGUF file this vocabulary came from, for messages.</summary>
    public string Path { get; }

    public string[] Texts { get; }
    public float[] Scores { get; }
    public TokenAttributes[] Attributes { get; }
    public int Count => Texts.Length;
    public int MaxTokenLength { get; }

    public int? Bos { get; set; }
    public int? Eos { get; set; }
    public int? Eot { get; set; }
    public int? Eom { get; set; }
    public int? Unknown { get; set; }
    public int? Separator { get; set; }
    public int? Padding { get; set; }
    public bool AddBos { get; set; }
    public bool AddEos { get; set; }
    public bool AddSpacePrefix { get; set; }

    public IReadOnlySet<int> EndOfGeneration { get; private set; } = FrozenSet<int>.Empty;

    /// <summary>
    /// Control, user-defined and unknown tokens, longest text first: the order in which
    /// <see cref="SpecialTokenSplitter"/> cuts them out of the input (llama.cpp's <c>cache_special_tokens</c>).
    /// </summary>
    public int[] SpecialTokensLongestFirst { get; private set; } = [];

    public int? Find(string text) => _tokenToId.TryGetValue(text, out int id) ? id : null;

    public bool TryFind(ReadOnlySpan<char> text, out int id) => _tokenBySpan.TryGetValue(text, out id);

    public bool Has(int id, TokenAttributes attribute) => (Attributes[id] & attribute) != 0;

    /// <summary>
    /// Runs llama.cpp's post-load passes in its order: EOT/EOM/FIM detection by text, end-of-generation
    /// set, the special-token list, then the per-model strip attributes.
    /// </summary>
    public void FinishLoading(string? modelName, string? pre, string? architecture)
    {
        DetectSpecialTokensByText();
        MarkUnusedControlTokens();
        EndOfGeneration = BuildEndOfGenerationSet().ToFrozenSet();
        SpecialTokensLongestFirst = BuildSpecialTokenList();
        ApplyModelSpecificAttributes(modelName?.ToLowerInvariant() ?? "", pre ?? "", architecture ?? "");
    }

    int? _fimPre, _fimSuf, _fimMid, _fimPad, _fimRep, _fimSep;

    public void SetFimIds(int? pre, int? suf, int? mid, int? pad, int? rep, int? sep)
        => (_fimPre, _fimSuf, _fimMid, _fimPad, _fimRep, _fimSep) = (pre, suf, mid, pad, rep, sep);

    // llama.cpp iterates an unordered_map here, so when several candidates exist which one becomes
    // EOT is unspecified there; we take the lowest id.
    void DetectSpecialTokensByText()
    {
        for (int id = 0; id < Count; id++)
        {
            string t = Texts[id];
            if (Eot is null && t is "<|eot_id|>" or "<|im_end|>" or "<|end|>" or "<end_of_turn>" or "<|endoftext|>"
                    or "<|end_of_text|>" or "<EOT>" or "_<EOT>" or "[EOT]" or "<｜end▁of▁sentence｜>" or "<end_of_utterance>")
                Eot = MarkControl(id);
            if (Eom is null && t is "<|eom_id|>")
                Eom = MarkControl(id);
            if (_fimPre is null && t is "<|fim_prefix|>" or "<fim-prefix>" or "<fim_prefix>" or "<｜fim▁begin｜>" or "<PRE>"
                    or "▁<PRE>" or "<|code_prefix|>" or "<|prefix|>")
                _fimPre = MarkControl(id);
            if (_fimSuf is null && t is "<|fim_suffix|>" or "<fim-suffix>" or "<fim_suffix>" or "<｜fim▁hole｜>" or "<SUF>"
                    or "▁<SUF>" or "<|code_suffix|>" or "<|suffix|>")
                _fimSuf = MarkControl(id);
            if (_fimMid is null && t is "<|fim_middle|>" or "<fim-middle>" or "<fim_middle>" or "<｜fim▁end｜>" or "<MID>"
                    or "▁<MID>" or "<|code_middle|>" or "<|middle|>")
                _fimMid = MarkControl(id);
            if (_fimPad is null && t is "<|fim_pad|>" or "<fim-pad>" or "<fim_pad>" or "<PAD>" or "[PAD]")
                _fimPad = MarkControl(id);
            if (_fimRep is null && t is "<|fim_repo|>" or "<|repo_name|>" or "<fim-repo>" or "<REPO>" or "<reponame>")
                _fimRep = MarkControl(id);
            if (_fimSep is null && t is "<|file_sep|>")
                _fimSep = MarkControl(id);
        }
    }

    int MarkControl(int id)
    {
        Attributes[id] |= TokenAttributes.Control;
        return id;
    }

    void MarkUnusedControlTokens()
    {
        for (int id = 0; id < Count; id++)
            if (Has(id, TokenAttributes.Control) && Texts[id].Contains("unused", StringComparison.Ordinal))
                Attributes[id] |= TokenAttributes.Unused;
    }

    HashSet<int> BuildEndOfGenerationSet()
    {
        var eog = new HashSet<int>();
        if (_fimPad is int pad) eog.Add(pad);
        if (_fimRep is int rep) eog.Add(rep);
        if (_fimSep is int sep) eog.Add(sep);

        for (int id = 0; id < Count; id++)
        {
            if (Texts[id] is "<|eot_id|>" or "<|im_end|>" or "<|end|>" or "<|return|>" or "<|call|>" or "<|flush|>"
                or "<|calls|>" or "<end_of_turn>" or "<|endoftext|>" or "</s>" or "<|eom_id|>" or "<EOT>" or "_<EOT>"
                or "[EOT]" or "[EOS]" or "<|end_of_text|>" or "<end_of_utterance>" or "<eos>" or "<turn|>"
                or "<|tool_response>" or "<｜end▁of▁sentence｜>" or "[e~[")
            {
                eog.Add(id);
                MarkControl(id);
            }
        }

        // gpt-oss: these must always be rendered, so they become user-defined (llama.cpp does the same).
        for (int id = 0; id < Count; id++)
            if (Texts[id] is "<|channel|>" or "<|message|>" or "<|start|>" or "<|constrain|>")
                Attributes[id] = TokenAttributes.UserDefined;

        if (Eos is int eos) eog.Add(eos);
        if (Eot is int eot) eog.Add(eot);
        if (Eom is int eom) eog.Add(eom);

        // o200k_harmony and solar-open: "<|end|>" ends a message, not the generation.
        int? end = null;
        bool hasReturn = false, hasCall = false, hasFlush = false;
        foreach (int id in eog)
        {
            switch (Texts[id])
            {
                case "<|return|>": hasReturn = true; break;
                case "<|call|>" or "<|calls|>": hasCall = true; break;
                case "<|flush|>": hasFlush = true; break;
                case "<|end|>": end = id; break;
            }
        }
        if (end is int endId && ((hasReturn && hasCall) || (hasCall && hasFlush)))
        {
            eog.Remove(endId);
            Attributes[endId] = TokenAttributes.UserDefined;
        }

        // gemma4 and paddleocr: "</s>" is not an end of generation when "<|tool_response>" is.
        int? closeS = null;
        bool hasToolResponse = false;
        foreach (int id in eog)
        {
            if (Texts[id] == "<|tool_response>") hasToolResponse = true;
            else if (Texts[id] == "</s>") closeS = id;
        }
        if (hasToolResponse && closeS is int s)
        {
            eog.Remove(s);
            Attributes[s] = TokenAttributes.Normal;
        }
        return eog;
    }

    int[] BuildSpecialTokenList()
    {
        const TokenAttributes special = TokenAttributes.Control | TokenAttributes.UserDefined | TokenAttributes.Unknown;
        var ids = new List<int>();
        for (int id = 0; id < Count; id++)
            if (Has(id, special)) ids.Add(id);
        // llama.cpp uses std::sort (unstable) on length alone; we break ties by id so the order is defined.
        return [.. ids.OrderByDescending(id => Texts[id].Length).ThenBy(id => id)];
    }

    void ApplyModelSpecificAttributes(string modelName, string pre, string architecture)
    {
        if (pre.Contains("jina-v2-de", StringComparison.Ordinal) || pre.Contains("jina-v2-es", StringComparison.Ordinal)
            || pre.Contains("jina-v2-code", StringComparison.Ordinal)
            || architecture.Contains("nomic-bert-moe", StringComparison.Ordinal) || architecture.Contains("jina-bert-v3", StringComparison.Ordinal))
        {
            if (Find("<mask>") is int mask) Attributes[mask] |= TokenAttributes.LStrip;
        }
        else if (modelName.Contains("phi-3", StringComparison.Ordinal) || modelName.Contains("phi3", StringComparison.Ordinal))
        {
            foreach (int id in SpecialTokensLongestFirst) Attributes[id] |= TokenAttributes.RStrip;
            if (Find("</s>") is int closeS) Attributes[closeS] |= TokenAttributes.RStrip;
            foreach (string t in (string[])["<unk>", "<s>", "<|endoftext|>"])
                if (Find(t) is int id) Attributes[id] &= ~TokenAttributes.RStrip;
        }
        else if (modelName.Contains("modern-bert", StringComparison.Ordinal))
        {
            if (Find("[MASK]") is int mask) Attributes[mask] |= TokenAttributes.LStrip;
        }
    }
}
