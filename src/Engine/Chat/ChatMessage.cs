using System.Text.Json;

namespace TokenMill.Chat;

/// <summary>
/// One message of a conversation as a chat template sees it (<c>messages[i]</c>): <c>role</c> and
/// <c>content</c> always (content <c>None</c> when null, as OpenAI clients send for an assistant
/// turn that only calls tools), and <c>name</c>, <c>tool_calls</c>, <c>tool_call_id</c>,
/// <c>reasoning_content</c> only when set. OpenAI content parts are flattened to one string by the
/// caller before rendering (<see cref="FlattenContent"/>).
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

    /// <summary>
    /// An OpenAI <c>content</c> value as one string: a string as is, null as null, and a list of
    /// content parts as its <c>text</c> parts joined with "\n" (as vLLM does for string-content
    /// templates). Any other part (an image) is an <see cref="ArgumentException"/>: no model here takes one.
    /// </summary>
    public static string? FlattenContent(JsonElement content)
    {
        switch (content.ValueKind)
        {
            case JsonValueKind.Null or JsonValueKind.Undefined:
                return null;
            case JsonValueKind.String:
                return content.GetString();
            case JsonValueKind.Array:
                var texts = new List<string>();
                foreach (var part in content.EnumerateArray())
                {
                    string? type = part.ValueKind == JsonValueKind.Object && part.TryGetProperty("type", out var t) ? t.GetString() : null;
                    if (type != "text" || !part.TryGetProperty("text", out var text) || text.ValueKind != JsonValueKind.String)
                        throw new ArgumentException($"content part of type '{type ?? part.ValueKind.ToString()}' is not supported; only text parts are", nameof(content));
                    texts.Add(text.GetString()!);
                }
                return string.Join('\n', texts);
            default:
                throw new ArgumentException($"message content must be a string, null or a list of content parts, not {content.ValueKind}", nameof(content));
        }
    }
}

/// <summary>
/// A function call made by the assistant. <paramref name="ArgumentsJson"/> is the JSON text OpenAI
/// clients send; templates see it parsed (<c>tool_call.function.arguments</c> is a mapping, as
/// transformers expects), or as the raw string when it is not a JSON object.
/// </summary>
public sealed record ChatToolCall(string Id, string Name, string ArgumentsJson);
