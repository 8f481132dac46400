using TokenMill.Models.Gguf;

namespace TokenMill.Tokenization;

/// <summary>Builds tokenizers: from a model's GGUF metadata, or a synthetic one for dummy models.</summary>
public static class TokenizerLoader
{
    const string Prefix = "tokenizer.ggml.";

    /// <summary>
    /// The tokenizer described by <paramref name="file"/>'s <c>tokenizer.ggml.*</c> metadata, with
    /// llama.cpp's semantics and defaults (<c>llama_vocab::impl::load</c>):
    /// <list type="bullet">
    /// <item><c>model = "llama"</c>: SentencePiece (<see cref="SpmTokenizer"/>); BOS 1, EOS 2, UNK 0 unless
    /// given; adds BOS and a space prefix unless <c>add_bos_token</c>/<c>add_space_prefix</c> say otherwise.</item>
    /// <item><c>model = "bert"</c>: WordPiece (<see cref="WpmTokenizer"/>); [CLS] 101 is the BOS, [SEP] 102 is
    /// appended with <c>addSpecial</c>, [UNK] 100.</item>
    /// <item><c>model = "gpt2"</c>: byte-level BPE (<see cref="BpeTokenizer"/>) with the pre-tokenizer named by
    /// <c>pre</c> (absent: llama.cpp's "default"); BOS = EOS = 11 unless given (llama.cpp's default, out-of-range
    /// ids are dropped); adds BOS only for Llama-3-style pre-tokenizers unless <c>add_bos_token</c> says.</item>
    /// </list>
    /// </summary>
    /// <exception cref="NotSupportedException">The tokenizer model (e.g. <c>t5</c>, <c>rwkv</c>, <c>plamo2</c>) or the
    /// pre-tokenizer is not implemented; the message names the value and the file.</exception>
    /// <exception cref="GgufFormatException">Required tokenizer metadata is missing or malformed.</exception>
    public static ITokenizer FromGguf(GgufFile file)
    {
        ArgumentNullException.ThrowIfNull(file);
        string model = file.GetString(Prefix + "model") ?? throw new GgufFormatException(file.Path, Prefix + "model", "required metadata key is missing");
        string? pre = file.GetString(Prefix + "pre");

        try
        {
            return model switch
            {
                "llama" => LoadSpm(file),
                "gpt2" => LoadBpe(file, pre),
                "bert" => LoadWpm(file),
                _ => throw new NotSupportedException(
                    $"{file.Path}: tokenizer.ggml.model = \"{model}\" is not supported (supported: \"llama\" (SentencePiece), \"gpt2\" (byte-level BPE), \"bert\" (WordPiece))"),
            };
        }
        catch (FormatException e)
        {
            // A malformed vocabulary entry (e.g. a byte token not of the form <0xAB>) is a malformed file.
            throw new GgufFormatException(file.Path, Prefix + "tokens", e.Message);
        }
    }

    /// <summary>
    /// A real byte-level BPE for dummy models with <paramref name="vocabSize"/> ids: OpenAI's cl100k_base
    /// (GPT-4's tokenizer, from the <c>Microsoft.ML.Tokenizers.Data.Cl100kBase</c> package) with its
    /// pre-tokenizer regex, keeping only the tokens whose rank is below <paramref name="vocabSize"/>, so
    /// it never produces an id the model cannot embed. Ids equal ranks:
    /// <list type="bullet">
    /// <item>0..255 are cl100k's single-byte tokens, so every text stays encodable (if a byte's rank ever
    /// did not fit, the highest-ranked kept token would give up its id to it; with cl100k_base it never happens).</item>
    /// <item>When <paramref name="vocabSize"/> &gt; 100257, <c>&lt;|endoftext|&gt;</c> is 100257 (and the fim/endofprompt
    /// specials keep their cl100k ids where they fit); the other ids from 100256 up are unused placeholders
    /// that encode from nothing and decode to nothing.</item>
    /// <item>Otherwise the last id, <paramref name="vocabSize"/> - 1, is <c>&lt;|endoftext|&gt;</c> (that rank's
    /// ordinary token is dropped).</item>
    /// </list>
    /// BOS = EOS = <c>&lt;|endoftext|&gt;</c>, which is also the only end-of-generation id; nothing is added
    /// automatically (cl100k has no BOS convention). With 100277 ids or more the encoding equals cl100k_base's.
    /// </summary>
    /// <exception cref="ArgumentOutOfRangeException"><paramref name="vocabSize"/> is below 257 (256 bytes + end of text).</exception>
    public static ITokenizer Cl100kFitted(int vocabSize) => Cl100kFittedTokenizer.Create(vocabSize);

    static SpmTokenizer LoadSpm(GgufFile file)
    {
        var vocab = ReadVocabulary(file);
        // llama.cpp's SPM defaults
        vocab.Bos = 1;
        vocab.Eos = 2;
        vocab.Unknown = 0;
        vocab.AddBos = true;
        vocab.AddEos = false;
        vocab.AddSpacePrefix = file.GetBool(Prefix + "add_space_prefix") ?? true;
        ReadSpecialIds(file, vocab);
        return new SpmTokenizer(vocab);
    }

    static BpeTokenizer LoadBpe(GgufFile file, string? pre)
    {
        var config = BpePreTokenizers.Find(pre) ?? throw new NotSupportedException(
            $"{file.Path}: tokenizer.ggml.pre = \"{pre}\" is not a supported pre-tokenizer for byte-level BPE");
        var merges = ReadStrings(file, Prefix + "merges")
            ?? throw new GgufFormatException(file.Path, Prefix + "merges", "byte-level BPE needs merges, and the key is missing");

        var vocab = ReadVocabulary(file);
        // llama.cpp's BPE defaults
        vocab.Bos = config.HasBos ? 11 : null;
        vocab.Eos = 11;
        vocab.AddBos = config.AddBos;
        vocab.AddEos = false;
        vocab.AddSpacePrefix = file.GetBool(Prefix + "add_space_prefix") ?? false;
        ReadSpecialIds(file, vocab);
        return new BpeTokenizer(vocab, merges, config);
    }

    static WpmTokenizer LoadWpm(GgufFile file)
    {
        var vocab = ReadVocabulary(file);
        // llama.cpp's WPM defaults ([CLS] is the BOS, [SEP] closes the sequence)
        vocab.Bos = 101;
        vocab.Eos = null;
        vocab.Unknown = 100;
        vocab.Separator = 102;
        vocab.AddBos = true;
        vocab.AddEos = false;
        vocab.AddSpacePrefix = file.GetBool(Prefix + "add_space_prefix") ?? false;
        ReadSpecialIds(file, vocab);
        // llama.cpp's WPM path adds [CLS] and [SEP] whenever special tokens are requested, whatever add_bos_token says.
        vocab.AddBos = true;
        if (vocab.Bos is null)
            throw new GgufFormatException(file.Path, Prefix + "bos_token_id", "WordPiece needs a BOS ([CLS]) token");
        if (vocab.Separator is null)
            throw new GgufFormatException(file.Path, Prefix + "seperator_token_id", "WordPiece needs a separator token");
        if (vocab.Unknown is null)
            throw new GgufFormatException(file.Path, Prefix + "unknown_token_id", "WordPiece needs an unknown token");

        bool lowercase = file.GetBool(Prefix + "normalizer.lowercase") ?? true;
        bool stripAccents = file.GetBool(Prefix + "normalizer.strip_accents") ?? lowercase;
        return new WpmTokenizer(vocab, lowercase, stripAccents);
    }

    static GgufVocabulary ReadVocabulary(GgufFile file)
    {
        string[] texts = ReadStrings(file, Prefix + "tokens")
            ?? throw new GgufFormatException(file.Path, Prefix + "tokens", "required metadata key is missing");
        int n = texts.Length;
        for (int i = 0; i < n; i++)
            if (texts[i].Length == 0) texts[i] = $"[EMPTY_{i}]"; // as llama.cpp, so the text stays unique

        var scores = new float[n];
        if (file.GetArray(Prefix + "scores") is { } scoreArray)
        {
            switch (scoreArray.Items)
            {
                case float[] f when f.Length >= n: Array.Copy(f, scores, n); break;
                case int[] iscores when iscores.Length >= n: for (int i = 0; i < n; i++) scores[i] = iscores[i]; break;
                default:
                    throw new GgufFormatException(file.Path, Prefix + "scores",
                        $"expected at least {n} float32 or int32 values, found {scoreArray.Length} of {scoreArray.ElementType}");
            }
        }

        var attributes = new TokenAttributes[n];
        Array.Fill(attributes, TokenAttributes.Normal);
        if (file.GetArray(Prefix + "token_type") is { } typeArray)
        {
            if (typeArray.Items is not int[] types || types.Length < n)
                throw new GgufFormatException(file.Path, Prefix + "token_type",
                    $"expected at least {n} int32 values, found {typeArray.Length} of {typeArray.ElementType}");
            for (int i = 0; i < n; i++) attributes[i] = AttributesOf((GgufTokenType)types[i]);
        }
        return new GgufVocabulary(file.Path, texts, scores, attributes);
    }

    static TokenAttributes AttributesOf(GgufTokenType type) => type switch
    {
        GgufTokenType.Unknown => TokenAttributes.Unknown,
        GgufTokenType.Unused => TokenAttributes.Unused,
        GgufTokenType.Normal => TokenAttributes.Normal,
        GgufTokenType.Control => TokenAttributes.Control,
        GgufTokenType.UserDefined => TokenAttributes.UserDefined,
        GgufTokenType.Byte => TokenAttributes.Byte,
        _ => TokenAttributes.None,
    };

    static string[]? ReadStrings(GgufFile file, string key)
    {
        var array = file.GetArray(key);
        if (array is null) return null;
        return array.Items as string[] ?? throw new GgufFormatException(file.Path, key, $"expected an array of strings, found {array.ElementType}");
    }

    /// <summary>Special ids from metadata over the defaults, then add_bos/add_eos, then llama.cpp's post-load passes.</summary>
    static void ReadSpecialIds(GgufFile file, GgufVocabulary vocab)
    {
        int n = vocab.Count;
        int? Id(string key, int? fallback)
        {
            // A default outside the vocabulary is dropped; a bad explicit id keeps the default (both as llama.cpp).
            if (fallback is int f && (f < 0 || f >= n)) fallback = null;
            long? value = file.GetInt(Prefix + key);
            return value is long v && v >= 0 && v < n ? (int)v : fallback;
        }

        vocab.Bos = Id("bos_token_id", vocab.Bos);
        vocab.Eos = Id("eos_token_id", vocab.Eos);
        vocab.Eot = Id("eot_token_id", null);
        vocab.Eom = Id("eom_token_id", null);
        vocab.Unknown = Id("unknown_token_id", vocab.Unknown);
        vocab.Separator = Id("seperator_token_id", vocab.Separator); // sic: the GGUF key is spelled this way
        vocab.Padding = Id("padding_token_id", null);
        // The deprecated prefix/suffix/middle keys are read after the fim_* ones in llama.cpp, so they win.
        vocab.SetFimIds(
            Id("prefix_token_id", Id("fim_pre_token_id", null)),
            Id("suffix_token_id", Id("fim_suf_token_id", null)),
            Id("middle_token_id", Id("fim_mid_token_id", null)),
            Id("fim_pad_token_id", null),
            Id("fim_rep_token_id", null),
            Id("fim_sep_token_id", null));

        vocab.AddBos = file.GetBool(Prefix + "add_bos_token") ?? vocab.AddBos;
        vocab.AddEos = file.GetBool(Prefix + "add_eos_token") ?? vocab.AddEos;
        if (vocab.AddBos && vocab.Bos is null)
            throw new GgufFormatException(file.Path, Prefix + "add_bos_token", "is true, but tokenizer.ggml.bos_token_id is not set");
        if (vocab.AddEos && vocab.Eos is null)
            throw new GgufFormatException(file.Path, Prefix + "add_eos_token", "is true, but tokenizer.ggml.eos_token_id is not set");

        vocab.FinishLoading(file.GetString("general.name"), file.GetString(Prefix + "pre"), file.GetString("general.architecture"));
    }
}
