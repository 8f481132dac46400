using System.Text;

namespace TokenMill.Server.Http;

/// <summary>One chat message as the API receives it (content parts already flattened to text).</summary>
public sealed record ChatTurn(string Role, string Content);

/// <summary>Renders a conversation into the model's prompt text.</summary>
public interface IChatPromptRenderer
{
    string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt);
}

/// <summary>
/// ChatML (<c>&lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;</c>), the fallback for models that carry no
/// chat template of their own.
/// </summary>
public sealed class ChatMlRenderer : IChatPromptRenderer
{
    public string Render(IReadOnlyList<ChatTurn> messages, bool addGenerationPrompt)
    {
        var sb = new StringBuilder();
        foreach (var m in messages) sb.Append("<|im_start|>").Append(m.Role).Append('\n').Append(m.Content).Append("<|im_end|>\n");
        if (addGenerationPrompt) sb.Append("<|im_start|>assistant\n");
        return sb.ToString();
    }
}
