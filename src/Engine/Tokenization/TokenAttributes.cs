namespace TokenMill.Tokenization;

/// <summary>Values of GGUF <c>tokenizer.ggml.token_type</c> (llama.cpp's <c>llama_token_type</c>).</summary>
internal enum GgufTokenType
{
    Undefined = 0,
    Normal = 1,
    Unknown = 2,
    Control = 3,
    UserDefined = 4,
    Unused = 5,
    Byte = 6,
}

/// <summary>Per-token attributes, bit for bit llama.cpp's <c>llama_token_attr</c>.</summary>
[Flags]
internal enum TokenAttributes
{
    None = 0,
    Unknown = 1 << 0,
    Unused = 1 << 1,
    Normal = 1 << 2,
    Control = 1 << 3,
    UserDefined = 1 << 4,
    Byte = 1 << 5,
    Normalized = 1 << 6,

    /// <summary>White space before this token's text is removed when it is split out as a special token.</summary>
    LStrip = 1 << 7,

    /// <summary>White space after this token's text is removed when it is split out as a special token.</summary>
    RStrip = 1 << 8,
    SingleWord = 1 << 9,
}
