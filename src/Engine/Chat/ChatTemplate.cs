using System.Collections;
using System.Text.Json;
using TokenMill.Chat.Jinja;
using TokenMill.Models.Gguf;

namespace TokenMill.Chat;

/// <summary>
/// A model's chat template: Hugging Face's Jinja dialect (as <c>transformers.apply_chat_template</c>
/// renders it, with <c>trim_blocks</c> and <c>lstrip_blocks</c>) run by our own interpreter, which
/// sees only plain data. Parsing checks the whole template, so a template we cannot render fails at
/// start-up with a <see cref="ChatTemplateException"/> naming the line and construct.
/// </summary>
public sealed class ChatTemplate
{
    /// <summary>
    /// The fallback for models without a template: ChatML (<c>&lt;|im_start|&gt;role\ncontent&lt;|im_end|&gt;\n</c>
    /// per message, then <c>&lt;|im_start|&gt;assistant\n</c> for the generation prompt), the format
    /// llama.cpp and vLLM also fall back to.
    /// </summary>
    public const string ChatMlSource =
        "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>' + '\\n'}}{% endfor %}"
        + "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}";

    readonly List<Stmt> _body;

    ChatTemplate(string source, List<Stmt> body, string bosToken, string eosToken, TimeProvider clock)
    {
        Source = source;
        _body = body;
        BosToken = bosToken;
        EosToken = eosToken;
        Clock = clock;
    }

    /// <summary>ChatML (see <see cref="ChatMlSource"/>).</summary>
    public static ChatTemplate ChatMl { get; } = Parse(ChatMlSource);

    public string Source { get; }

    /// <summary>The text of the BOS token, passed as <c>bos_token</c>.</summary>
    public string BosToken { get; }

    /// <summary>The text of the EOS token, passed as <c>eos_token</c>.</summary>
    public string EosToken { get; }

    /// <summary>The clock behind <c>strftime_now</c> (local time, as transformers uses).</summary>
    public TimeProvider Clock { get; }

    /// <summary>Parses a template; throws <see cref="ChatTemplateException"/> on a syntax error or an unsupported construct.</summary>
    public static ChatTemplate Parse(string source, string bosToken = "", string eosToken = "", TimeProvider? clock = null)
    {
        ArgumentNullException.ThrowIfNull(source);
        return new ChatTemplate(source, JinjaParser.Parse(source), bosToken, eosToken, clock ?? TimeProvider.System);
    }

    /// <summary>
    /// The template of a GGUF file (<c>tokenizer.chat_template</c>) with its BOS/EOS token texts, or
    /// null when the file has none (use <see cref="ChatMl"/> then).
    /// </summary>
    public static ChatTemplate? FromGguf(GgufFile file, TimeProvider? clock = null)
    {
        ArgumentNullException.ThrowIfNull(file);
        if (!file.Metadata.TryGetValue("tokenizer.chat_template", out var t) || t.Value is not string source) return null;
        return Parse(source, TokenText(file, "tokenizer.ggml.bos_token_id"), TokenText(file, "tokenizer.ggml.eos_token_id"), clock);
    }

    static string TokenText(GgufFile file, string idKey)
    {
        if (!file.Metadata.TryGetValue(idKey, out var id) || !id.IsInteger) return "";
        if (!file.Metadata.TryGetValue("tokenizer.ggml.tokens", out var tokens) || tokens.Value is not GgufArray { Items: string[] texts })
            return "";
        long i = id.AsInt64();
        return i >= 0 && i < texts.Length ? texts[i] : "";
    }

    /// <summary>
    /// Renders the prompt. <paramref name="extra"/> adds or overrides template variables, e.g.
    /// <c>tools</c> (a list of OpenAI tool dictionaries), <c>enable_thinking</c>; its values must be
    /// plain data: null, strings, booleans, numbers, lists, string-keyed dictionaries or <see cref="JsonElement"/>.
    /// A template that runs into one of <paramref name="limits"/> (default <see cref="ChatTemplateLimits.Default"/>)
    /// stops with a <see cref="ChatTemplateException"/> whose <see cref="ChatTemplateException.Limit"/> names it.
    /// </summary>
    public string Render(IReadOnlyList<ChatMessage> messages, bool addGenerationPrompt, IReadOnlyDictionary<string, object?>? extra = null,
                         ChatTemplateLimits? limits = null)
    {
        ArgumentNullException.ThrowIfNull(messages);
        limits ??= ChatTemplateLimits.Default;
        limits.Validate();
        var vars = new Dictionary<string, object?>(StringComparer.Ordinal)
        {
            ["messages"] = messages.Select(m => (object?)ToValue(m)).ToList(),
            ["add_generation_prompt"] = addGenerationPrompt,
            ["bos_token"] = BosToken,
            ["eos_token"] = EosToken,
            ["tools"] = null,
        };
        if (extra is not null)
            foreach (var (k, v) in extra) vars[k] = FromClr(v, k);
        return JinjaInterpreter.Render(_body, vars, Clock, limits);
    }

    static Dictionary<string, object?> ToValue(ChatMessage m)
    {
        var d = new Dictionary<string, object?>(StringComparer.Ordinal) { ["role"] = m.Role, ["content"] = m.Content };
        if (m.Name is not null) d["name"] = m.Name;
        if (m.ReasoningContent is not null) d["reasoning_content"] = m.ReasoningContent;
        if (m.ToolCalls is not null)
            d["tool_calls"] = m.ToolCalls.Select(c => (object?)new Dictionary<string, object?>(StringComparer.Ordinal)
            {
                ["id"] = c.Id,
                ["type"] = "function",
                ["function"] = new Dictionary<string, object?>(StringComparer.Ordinal) { ["name"] = c.Name, ["arguments"] = ParseArguments(c.ArgumentsJson) },
            }).ToList();
        if (m.ToolCallId is not null) d["tool_call_id"] = m.ToolCallId;
        return d;
    }

    static object? ParseArguments(string json)
    {
        try
        {
            using var doc = JsonDocument.Parse(json);
            return doc.RootElement.ValueKind == JsonValueKind.Object ? FromJson(doc.RootElement) : json;
        }
        catch (JsonException)
        {
            return json;
        }
    }

    /// <summary>Converts a JSON value to the template's value model (objects keep their key order).</summary>
    internal static object? FromJson(JsonElement e) => e.ValueKind switch
    {
        JsonValueKind.Object => e.EnumerateObject().Aggregate(new Dictionary<string, object?>(StringComparer.Ordinal), (d, p) =>
        {
            d[p.Name] = FromJson(p.Value);
            return d;
        }),
        JsonValueKind.Array => e.EnumerateArray().Select(FromJson).ToList(),
        JsonValueKind.String => e.GetString(),
        JsonValueKind.Number => e.TryGetInt64(out long n) && !e.GetRawText().Contains('.', StringComparison.Ordinal)
                                && !e.GetRawText().Contains('e', StringComparison.OrdinalIgnoreCase) ? n : (object)e.GetDouble(),
        JsonValueKind.True => true,
        JsonValueKind.False => false,
        _ => null,
    };

    /// <summary>How deep the caller's extra variables may nest, as deep as System.Text.Json reads by default.</summary>
    const int MaxExtraNesting = 64;

    // Only plain data crosses into a template: nothing it could reflect on. The depth bound also stops a
    // dictionary or list that contains itself, which would otherwise recurse until the stack overflows.
    static object? FromClr(object? v, string path, int depth = 0) => depth > MaxExtraNesting
        ? throw new ArgumentException($"template variable '{path}' is nested more than {MaxExtraNesting} deep (does a list or dictionary contain itself?)", nameof(v))
        : v switch
    {
        null or string or bool or long or double => v,
        int or short or byte or sbyte or ushort or uint => Convert.ToInt64(v, System.Globalization.CultureInfo.InvariantCulture),
        float f => (double)f,
        JsonElement e => FromJson(e),
        IReadOnlyDictionary<string, object?> d => d.ToDictionary(p => p.Key, p => FromClr(p.Value, path + "." + p.Key, depth + 1), StringComparer.Ordinal),
        IDictionary<string, object?> d => d.ToDictionary(p => p.Key, p => FromClr(p.Value, path + "." + p.Key, depth + 1), StringComparer.Ordinal),
        IEnumerable list => list.Cast<object?>().Select((x, i) => FromClr(x, $"{path}[{i}]", depth + 1)).ToList(),
        _ => throw new ArgumentException($"template variable '{path}' has type {v.GetType().Name}; only null, strings, booleans, numbers, lists, dictionaries and JsonElement are allowed", nameof(v)),
    };
}
