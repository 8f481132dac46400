namespace TokenMill.Tokenization;

/// <summary>
/// Text ↔ token ids for one vocabulary. Implementations are immutable and thread-safe.
/// </summary>
public interface ITokenizer
{
    int VocabSize { get; }

    /// <summary>Beginning-of-sequence id, or null when the vocabulary has none.</summary>
    int? BosId { get; }

    /// <summary>End-of-sequence id, or null when the vocabulary has none.</summary>
    int? EosId { get; }

    /// <summary>Whether <see cref="Encode"/> with <c>addSpecial</c> prepends BOS (GGUF <c>tokenizer.ggml.add_bos_token</c>).</summary>
    bool AddBos { get; }

    /// <summary>Whether <see cref="Encode"/> with <c>addSpecial</c> appends EOS (GGUF <c>tokenizer.ggml.add_eos_token</c>).</summary>
    bool AddEos { get; }

    /// <summary>Ids that end generation: EOS, EOT, EOM and any other end-of-generation token of the vocabulary.</summary>
    IReadOnlySet<int> EndOfGenerationIds { get; }

    /// <summary>
    /// Tokenizes <paramref name="text"/>. With <paramref name="addSpecial"/> BOS/EOS are added as the
    /// vocabulary says; with <paramref name="parseSpecial"/> the text of special/control tokens
    /// (e.g. <c>&lt;|eot_id|&gt;</c>) becomes those tokens, otherwise it is tokenized as plain text.
    /// </summary>
    int[] Encode(string text, bool addSpecial = false, bool parseSpecial = false);

    /// <summary>
    /// The bytes token <paramref name="id"/> contributes to output text (UTF-8, possibly a partial
    /// character for byte tokens). Control tokens give no bytes unless <paramref name="renderSpecial"/>.
    /// </summary>
    byte[] TokenToBytes(int id, bool renderSpecial = false);

    /// <summary>Decodes a whole sequence to text (invalid UTF-8 becomes U+FFFD).</summary>
    string Decode(ReadOnlySpan<int> ids, bool renderSpecial = false);
}
