namespace TokenMill.Extensions.AI;

/// <summary>How a <see cref="TokenMillChatClient"/> presents the engine.</summary>
public sealed record TokenMillChatClientOptions
{
    /// <summary>The model id reported in responses and metadata (the server's <c>--served-model-name</c>); default: the model's name.</summary>
    public string? ModelId { get; init; }

    /// <summary>The chat template; default: the model's own, else ChatML (as <c>tokenmill serve</c> does).</summary>
    public Chat.ChatTemplate? ChatTemplate { get; init; }
}
