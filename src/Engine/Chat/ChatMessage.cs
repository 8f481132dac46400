namespace TokenMill.Chat;

/// <summary>
/// One message of a conversation as a chat template sees it (<c>messages[i]</c>): <c>role</c> and
/// <c>content</c> always (content <c>None</c> when null, as OpenAI clients send for an assistant
/// turn that only calls tools), and <c>name</c>, <c>tool_calls</c>, <c>tool_call_id</c>,
/// <c>reasoning_content</c> only when set. OpenAI content parts are flattened to one string by the
/// caller before rendering (the text parts joined).
/// </summary>
public sealed record ChatMessage(string Role, string? Content)
{
    public string? Name { get; init; }

    /// <summary>Tool calls of an assistant turn.</summary>
    public IReadOnlyList<ChatToolCall>? ToolCalls { get; init; }

    /// <summary>The call a <c>tool</c> message answers.</summary>
    public string? ToolCallId { get; init; }

    /// <summary>The reasoning text of an assistant turn (Qwen 3 renders it inside <c>&lt;think&gt;</c>).</summary>
    public string? ReasoningContent { get; init; }
}

/// <summary>
/// A function call made by the assistant. <paramref name="ArgumentsJson"/> is the JSON text OpenAI
/// clients send; templates see it parsed (<c>tool_call.function.arguments</c> is a mapping, as
/// transformers expects), or as the raw string when it is not a JSON object.
/// </summary>
public sealed record ChatToolCall(string Id, string Name, string ArgumentsJson);
