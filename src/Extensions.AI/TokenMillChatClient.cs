using System.Runtime.CompilerServices;
using System.Text.Json;
using Microsoft.Extensions.AI;
using TokenMill.Core;
using TokenMill.Sampling;
using MeaiChatMessage = Microsoft.Extensions.AI.ChatMessage;
using TemplateMessage = TokenMill.Chat.ChatMessage;

namespace TokenMill.Extensions.AI;

/// <summary>
/// An <see cref="IChatClient"/> over the in-process <see cref="LlmEngine"/>: the conversation is rendered by the model's chat
/// template, <see cref="ChatOptions"/> become the engine's <see cref="SamplingParams"/>, and the engine's stream becomes
/// <see cref="ChatResponseUpdate"/>s — with the same defaults and results as <c>tokenmill serve</c>'s
/// <c>/v1/chat/completions</c> (temperature 1, output up to the rest of the context, finish reasons <c>stop</c>/<c>length</c>,
/// token usage). Cancelling aborts the request in the engine and frees its KV blocks.
/// </summary>
/// <remarks>
/// Tools in <see cref="ChatOptions.Tools"/> are given to the chat template as the server gives them, but the model's
/// output is returned as text: tool calls in it are not parsed. Images, audio and structured output (JSON response
/// formats) are refused with <see cref="NotSupportedException"/>.
/// </remarks>
public sealed class TokenMillChatClient : IChatClient
{
    public const string ProviderName = "tokenmill";

    readonly LlmEngine _engine;
    readonly bool _ownsEngine;
    readonly Chat.ChatTemplate _template;
    readonly ChatClientMetadata _metadata;

    /// <param name="engine">The engine to run requests on; it may serve others at the same time.</param>
    /// <param name="options">Model id and chat template.</param>
    /// <param name="ownsEngine">Dispose the engine and its model with this client.</param>
    public TokenMillChatClient(LlmEngine engine, TokenMillChatClientOptions? options = null, bool ownsEngine = false)
    {
        ArgumentNullException.ThrowIfNull(engine);
        _engine = engine;
        _ownsEngine = ownsEngine;
        _template = options?.ChatTemplate ?? engine.Model.ChatTemplate ?? Chat.ChatTemplate.ChatMl;
        ModelId = options?.ModelId ?? engine.Model.Name;
        _metadata = new ChatClientMetadata(ProviderName, null, ModelId);
    }

    /// <summary>The model id responses carry.</summary>
    public string ModelId { get; }

    /// <summary>The engine requests run on.</summary>
    public LlmEngine Engine => _engine;

    public async Task<ChatResponse> GetResponseAsync(IEnumerable<MeaiChatMessage> messages, ChatOptions? options = null,
        CancellationToken cancellationToken = default)
    {
        var request = CreateRequest(messages, options);
        var created = DateTimeOffset.UtcNow;
        var text = new System.Text.StringBuilder();
        CompletionChunk? last = null;
        await foreach (var chunk in _engine.Generate(request, cancellationToken).ConfigureAwait(false))
        {
            text.Append(chunk.Text);
            last = chunk;
        }
        var end = Final(last, cancellationToken);
        return new ChatResponse(new MeaiChatMessage(ChatRole.Assistant, text.ToString()) { MessageId = end.RequestId })
        {
            ResponseId = end.RequestId,
            ModelId = ModelId,
            CreatedAt = created,
            FinishReason = MapFinishReason(end.FinishReason),
            Usage = Usage(end),
            RawRepresentation = end,
        };
    }

    public async IAsyncEnumerable<ChatResponseUpdate> GetStreamingResponseAsync(IEnumerable<MeaiChatMessage> messages, ChatOptions? options = null,
        [EnumeratorCancellation] CancellationToken cancellationToken = default)
    {
        var request = CreateRequest(messages, options);
        var created = DateTimeOffset.UtcNow;
        CompletionChunk? last = null;
        await foreach (var chunk in _engine.Generate(request, cancellationToken).ConfigureAwait(false))
        {
            // Chunks the engine made before the abort reached it may still be queued: a cancelled caller gets none of them.
            cancellationToken.ThrowIfCancellationRequested();
            last = chunk;
            if (chunk.IsFinal) break;
            if (chunk.Text.Length == 0) continue;
            yield return Update(chunk, created, [new TextContent(chunk.Text)]);
        }
        var end = Final(last, cancellationToken);
        // The last update carries the last text, the finish reason and the usage, as OpenAI's final chunks do.
        List<AIContent> contents = end.Text.Length > 0 ? [new TextContent(end.Text)] : [];
        contents.Add(new UsageContent(Usage(end)));
        var final = Update(end, created, contents);
        final.FinishReason = MapFinishReason(end.FinishReason);
        yield return final;
    }

    ChatResponseUpdate Update(CompletionChunk chunk, DateTimeOffset created, IList<AIContent> contents) =>
        new(ChatRole.Assistant, contents)
        {
            ResponseId = chunk.RequestId,
            MessageId = chunk.RequestId,
            ModelId = ModelId,
            CreatedAt = created,
            RawRepresentation = chunk,
        };

    /// <summary>The request's last chunk; an aborted request (its token cancelled) is an <see cref="OperationCanceledException"/>.</summary>
    static CompletionChunk Final(CompletionChunk? last, CancellationToken cancellationToken)
    {
        cancellationToken.ThrowIfCancellationRequested();
        if (last is not { IsFinal: true } end) throw new InvalidOperationException("the engine's stream ended without a finish reason");
        if (end.FinishReason == FinishReason.Abort) throw new OperationCanceledException("the engine aborted the request (it is shutting down)");
        return end;
    }

    static UsageDetails Usage(CompletionChunk end) => new()
    {
        InputTokenCount = end.PromptTokens,
        OutputTokenCount = end.CompletionTokens,
        TotalTokenCount = end.PromptTokens + end.CompletionTokens,
        CachedInputTokenCount = end.CachedPromptTokens,
    };

    static ChatFinishReason? MapFinishReason(string? reason) => reason switch
    {
        null => null,
        FinishReason.Stop => ChatFinishReason.Stop,
        FinishReason.Length => ChatFinishReason.Length,
        _ => new ChatFinishReason(reason),
    };

    /// <summary>The engine request for a conversation: rendered, tokenized and sampled as the server's chat endpoint does.</summary>
    internal GenerationRequest CreateRequest(IEnumerable<MeaiChatMessage> messages, ChatOptions? options)
    {
        ArgumentNullException.ThrowIfNull(messages);
        if (options?.ModelId is { } model && model != ModelId)
            throw new ArgumentException($"this client serves '{ModelId}', not '{model}'", nameof(options));
        if (options?.ResponseFormat is ChatResponseFormatJson)
            throw new NotSupportedException("structured output (a JSON response format) is not supported: the engine has no constrained decoding");

        var conversation = new List<TemplateMessage>();
        if (options?.Instructions is { Length: > 0 } instructions) conversation.Add(new TemplateMessage("system", instructions));
        foreach (var m in messages) conversation.AddRange(ToTemplateMessages(m));
        if (conversation.Count == 0) throw new ArgumentException("the conversation has no messages", nameof(messages));

        Dictionary<string, object?>? extra = null;
        if (options?.Tools is { Count: > 0 } tools) extra = new() { ["tools"] = ToolsJson(tools) };
        string prompt;
        try
        {
            prompt = _template.Render(conversation, addGenerationPrompt: true, extra);
        }
        catch (Chat.ChatTemplateException e)
        {
            throw new ArgumentException($"the chat template refused these messages: {e.TemplateMessage ?? e.Message}", nameof(messages), e);
        }
        int[] ids = _engine.Model.Tokenizer.Encode(prompt, addSpecial: false, parseSpecial: true);
        // As the server: without a limit a reply may use the rest of the context.
        int room = Math.Max(1, _engine.MaxModelLen - ids.Length);
        return new GenerationRequest { PromptTokenIds = ids, Sampling = ToSampling(options, room) };
    }

    /// <summary>
    /// <see cref="ChatOptions"/> as <see cref="SamplingParams"/>, unset fields defaulting as the OpenAI API does (temperature 1,
    /// top-p 1, no penalties). Out-of-range values are refused by the engine with the parameter's name.
    /// </summary>
    internal static SamplingParams ToSampling(ChatOptions? options, int defaultMaxTokens)
    {
        if (options is null) return new SamplingParams { MaxTokens = defaultMaxTokens };
        if (options.StopSequences?.Any(string.IsNullOrEmpty) == true)
            throw new ArgumentException("stop sequences must not be empty", nameof(options));
        return new SamplingParams
        {
            Temperature = options.Temperature ?? 1f,
            TopP = options.TopP ?? 1f,
            TopK = options.TopK ?? 0,
            FrequencyPenalty = options.FrequencyPenalty ?? 0f,
            PresencePenalty = options.PresencePenalty ?? 0f,
            Seed = options.Seed is { } s ? unchecked((ulong)s) : null,
            MaxTokens = options.MaxOutputTokens ?? defaultMaxTokens,
            Stop = options.StopSequences is { } stop ? [.. stop] : [],
        };
    }

    static List<TemplateMessage> ToTemplateMessages(MeaiChatMessage m)
    {
        string role = m.Role.Value;
        if (role == "developer") role = "system";
        if (role is not ("system" or "user" or "assistant" or "tool"))
            throw new ArgumentException($"message role must be system, user, assistant or tool; got '{m.Role.Value}'", nameof(m));
        var text = new System.Text.StringBuilder();
        List<Chat.ChatToolCall>? calls = null;
        var results = new List<TemplateMessage>();
        foreach (var content in m.Contents)
        {
            switch (content)
            {
                case TextContent t:
                    text.Append(t.Text);
                    break;
                case TextReasoningContent:
                    break; // earlier reasoning is not sent back to the model, as OpenAI clients do
                case FunctionCallContent call:
                    (calls ??= []).Add(new Chat.ChatToolCall(call.CallId, call.Name, JsonSerializer.Serialize(call.Arguments ?? new Dictionary<string, object?>(),
                        AIJsonUtilities.DefaultOptions)));
                    break;
                case FunctionResultContent result:
                    results.Add(new TemplateMessage("tool", result.Result is string s ? s : JsonSerializer.Serialize(result.Result, AIJsonUtilities.DefaultOptions))
                    {
                        ToolCallId = result.CallId,
                    });
                    break;
                case UsageContent:
                    break;
                default:
                    throw new NotSupportedException($"{content.GetType().Name} in a {m.Role.Value} message is not supported: the models here take text only");
            }
        }
        if (results.Count > 0 && text.Length == 0 && calls is null) return results;
        return [new TemplateMessage(role, text.Length == 0 && calls is not null ? null : text.ToString())
            {
                Name = m.AuthorName, ToolCalls = calls,
            }, .. results];
    }

    /// <summary>Tools in the OpenAI shape the server passes to templates: <c>{"type": "function", "function": {name, description, parameters}}</c>.</summary>
    static JsonElement ToolsJson(IList<AITool> tools)
    {
        var list = new List<object>();
        foreach (var tool in tools)
        {
            if (tool is not AIFunctionDeclaration f) throw new NotSupportedException($"tool '{tool.Name}' ({tool.GetType().Name}) is not a function; only function tools are supported");
            list.Add(new Dictionary<string, object?>
            {
                ["type"] = "function",
                ["function"] = new Dictionary<string, object?> { ["name"] = f.Name, ["description"] = f.Description, ["parameters"] = f.JsonSchema },
            });
        }
        return JsonSerializer.SerializeToElement(list, AIJsonUtilities.DefaultOptions);
    }

    public object? GetService(Type serviceType, object? serviceKey = null)
    {
        ArgumentNullException.ThrowIfNull(serviceType);
        if (serviceKey is not null) return null;
        if (serviceType == typeof(ChatClientMetadata)) return _metadata;
        if (serviceType.IsInstanceOfType(_engine)) return _engine;
        if (serviceType.IsInstanceOfType(this)) return this;
        return null;
    }

    public void Dispose()
    {
        if (!_ownsEngine) return;
        _engine.Dispose();
        _engine.Model.Dispose();
    }
}
