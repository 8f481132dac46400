namespace TokenMill.Tokenization;

/// <summary>
/// GGUF <c>tokenizer.ggml.pre</c> values we support, with the regexes llama.cpp splits by for each
/// (<c>llm_tokenizer_bpe</c>'s constructor in <c>llama-vocab.cpp</c>) and the flags its loader sets.
/// The patterns are copied verbatim from llama.cpp (C++ and C# string escapes agree), so
/// <see cref="LlamaRegex"/> can translate them the way llama.cpp interprets them.
/// </summary>
internal static class BpePreTokenizers
{
    /// <param name="Name">The <c>pre</c> value (or "default").</param>
    /// <param name="Patterns">Applied in order, each splitting the pieces of the previous one.</param>
    /// <param name="IgnoreMerges">A word that is itself a vocabulary entry becomes that token without merging.</param>
    /// <param name="AddBos">llama.cpp's default for <c>add_bos_token</c> when the GGUF does not say.</param>
    /// <param name="HasBos">False where llama.cpp clears the BOS id (ChatGLM).</param>
    internal sealed record Config(string Name, string[] Patterns, bool IgnoreMerges = false, bool AddBos = false, bool HasBos = true);

    const string Gpt2 = LlamaPreTokenizer.Gpt2Pattern;
    const string Llama3 = LlamaPreTokenizer.Llama3Pattern;

    const string Qwen2 = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const string Qwen35 = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?[\p{L}\p{M}]+|\p{N}| ?[^\s\p{L}\p{M}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const string Gpt4o = @"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])?|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const string Tekken = @"[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))*((?=[\p{L}])([^A-Z]))+|[^\r\n\p{L}\p{N}]?((?=[\p{L}])([^a-z]))+((?=[\p{L}])([^A-Z]))*|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+";
    const string SeedCoder = @"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1}| ?[^\s\p{L}\p{N}\r\n]+|\s*[\r\n]+|\s+(?!\S)|\s+";
    const string BailingMoe = @"'(?:[sSdDmMtT]|[lL][lL]|[vV][eE]|[rR][eE])|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]|\s+(?!\S)|\s+";
    const string Poro = " ?[^(\\s|.,!?\u2026\u3002\uFF0C\u3001\u0964\u06D4\u060C)]+";
    const string CjkIdeographsHangul = "[\u4E00-\u9FA5\u0800-\u4E00\uAC00-\uD7FF]+"; // U+4E00-9FA5, U+0800-4E00, U+AC00-D7FF

    // DeepSeek LLM's letter class: the cased letters (Lu, Ll, Lt) of its tokenizer.json, as in llama.cpp.
    // Non-ASCII is written as escapes because several members (U+1F7D, U+1FBE, U+2126, U+212A, …) are
    // canonical singletons that an editor or tool normalizing to NFC would silently replace.
    const string DeepSeekLlmLetters = "\\s?[A-Za-z\u00B5\u00C0-\u00D6\u00D8-\u00F6\u00F8-\u01BA\u01BC-\u01BF\u01C4-\u0293\u0295-\u02AF\u0370-\u0373\u0376\u0377\u037B-\u037D\u037F\u0386\u0388-\u038A\u038C\u038E-\u03A1\u03A3-\u03F5\u03F7-\u0481\u048A-\u052F\u0531-\u0556\u10A0-\u10C5\u13A0-\u13F5\u13F8-\u13FD\u1C90-\u1CBA\u1CBD-\u1CBF\u1D00-\u1D2B\u1D6B-\u1D77\u1D79-\u1D9A\u1E00-\u1F15\u1F18-\u1F1D\u1F20-\u1F45\u1F48-\u1F4D\u1F50-\u1F57\u1F59\u1F5B\u1F5D\u1F5F-\u1F7D\u1F80-\u1FB4\u1FB6-\u1FBC\u1FBE\u1FC2-\u1FC4\u1FC6-\u1FCC\u1FD0-\u1FD3\u1FD6-\u1FDB\u1FE0-\u1FEC\u1FF2-\u1FF4\u1FF6-\u1FFC\u2102\u2107\u210A-\u2113\u2115\u2119-\u211D\u2124\u2126\u2128\u212A-\u212D\u212F-\u2134\u2139\u213C-\u213F\u2145-\u2149\u214E\u2183\u2184\u2C00-\u2C7B\u2C7E-\u2CE4\u2CEB-\u2CEE\u2CF2\u2CF3\uA640-\uA66D\uA680-\uA69B\uA722-\uA76F\uA771-\uA787\uA78B-\uA78E\uAB70-\uABBF\uFB00-\uFB06\uFB13-\uFB17\uFF21-\uFF3A\uFF41-\uFF5A\U00010400-\U0001044F\U000104B0-\U000104D3\U000104D8-\U000104FB\U00010C80-\U00010CB2\U00010CC0-\U00010CF2\U000118A0-\U000118DF\U0001E900-\U0001E943]+";
    const string DeepSeekLlmPunctuation = "\\s?[!-/:-~\uFF01-\uFF0F\uFF1A-\uFF5E\u2018-\u201F\u3000-\u3002]+";

    static readonly string[] Gpt2Family = [Gpt2];
    static readonly string[] Llama3Family = [Llama3];
    static readonly string[] StarCoderFamily = [@"\p{N}", Gpt2];

    /// <summary>The configuration for a <c>tokenizer.ggml.pre</c> value (null or empty: llama.cpp's "default"), or null if unsupported.</summary>
    public static Config? Find(string? pre) => (pre ?? "") switch
    {
        "" or "default" => new("default", [@"[\p{P}\$\+<=>\^~\|]+", Gpt2, @"\p{N}+", "[0-9][0-9][0-9]"]),

        "llama3" or "llama-v3" or "llama-bpe" or "falcon3" or "falcon-h1" or "pixtral" or "midm-2.0" or "lfm2" or "jina-v5-nano"
            => new(pre!, Llama3Family, IgnoreMerges: true, AddBos: true),
        "dbrx" or "smaug-bpe" => new(pre!, Llama3Family),
        "chatglm-bpe" or "glm4" => new(pre!, Llama3Family, HasBos: false),

        "deepseek-llm" => new(pre!, ["[\r\n]", DeepSeekLlmLetters, DeepSeekLlmPunctuation, "\\s+$", CjkIdeographsHangul, @"\p{N}+"]),
        "deepseek-coder" => new(pre!, ["[\r\n]", @"\s?\p{L}+", @"\s?\p{P}+", CjkIdeographsHangul, @"\p{N}"]),
        "deepseek-v3" => new(pre!, [@"\p{N}{1,3}", "[\u4E00-\u9FA5\u3040-\u309F\u30A0-\u30FF]+",
            "[!\"#$%&'()*+,\\-./:;<=>?@\\[\\\\\\]^_`{|}~][A-Za-z]+|[^\r\n\\p{L}\\p{P}\\p{S}]?[\\p{L}\\p{M}]+| ?[\\p{P}\\p{S}]+[\r\n]*|\\s*[\r\n]+|\\s+(?!\\S)|\\s+"]),

        "falcon" => new(pre!, [@"[\p{P}\$\+<=>\^~\|`]+", Gpt2, "[0-9][0-9][0-9]"]),

        "starcoder" or "refact" or "command-r" or "smollm" or "codeshell" or "exaone" or "minerva-7b" or "mellum2"
            => new(pre!, StarCoderFamily),

        "gpt-2" or "phi-2" or "jina-es" or "jina-de" or "gigachat" or "jina-v2-es" or "jina-v2-de" or "a.x-4.0" or "mellum"
            or "modern-bert" or "jina-v1-en" or "jina-v2-code" or "roberta-bpe" or "exaone4"
            or "mpt" or "olmo" or "jais" or "trillion" or "granite-docling"
            => new(pre!, Gpt2Family),

        "qwen2" or "deepseek-r1-qwen" or "kormo" or "f2llmv2" or "megrez" or "stablelm2" or "hunyuan" or "solar-open"
            => new(pre!, [Qwen2]),
        "qwen35" => new(pre!, [Qwen35]),

        "poro-chat" or "bloom" or "gpt3-finnish" => new(pre!, [Poro]),
        "viking" => new(pre!, [Poro, @"\p{N}"]),
        "tekken" => new(pre!, [Tekken], IgnoreMerges: true, AddBos: true),
        "gpt-4o" or "llama4" or "kanana2" or "talkie" or "minimax-m2" => new(pre!, [Gpt4o]),
        "seed-coder" => new(pre!, [SeedCoder]),
        "bailingmoe" or "bailingmoe2" or "llada-moe" => new(pre!, [BailingMoe]),
        "grok-2" => new(pre!, [Qwen2]),

        _ => null,
    };
}
