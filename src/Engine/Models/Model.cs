using TokenMill.Tokenization;

namespace TokenMill.Models;

/// <summary>
/// A loaded model: its shape, its weights, its tokenizer, and whatever owns the weight bytes
/// (a memory-mapped GGUF file, or native buffers of a dummy model), released on dispose.
/// </summary>
public sealed class Model(string name, ModelConfig config, ModelWeights weights, ITokenizer tokenizer, IEnumerable<IDisposable> owners,
    Chat.ChatTemplate? chatTemplate = null)
    : IDisposable
{
    readonly List<IDisposable> _owners = [.. owners];

    /// <summary>What the user named: a file path or <c>dummy:preset</c>.</summary>
    public string Name { get; } = name;
    public ModelConfig Config { get; } = config;
    public ModelWeights Weights { get; } = weights;
    public ITokenizer Tokenizer { get; } = tokenizer;

    /// <summary>The model's own chat template (GGUF <c>tokenizer.chat_template</c>), or null when it carries none.</summary>
    public Chat.ChatTemplate? ChatTemplate { get; } = chatTemplate;

    public void Dispose()
    {
        foreach (var o in _owners) o.Dispose();
        _owners.Clear();
    }
}
