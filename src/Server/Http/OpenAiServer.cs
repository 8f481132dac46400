using System.Diagnostics;
using System.Globalization;
using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using System.Threading.Channels;
using Microsoft.AspNetCore.Builder;
using Microsoft.AspNetCore.Http;
using Microsoft.AspNetCore.Hosting;
using Microsoft.AspNetCore.Hosting.Server;
using Microsoft.AspNetCore.Hosting.Server.Features;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using TokenMill.Chat;
using TokenMill.Core;
using TokenMill.Sampling;

namespace TokenMill.Server.Http;

public sealed record ServerOptions
{
    public string Host { get; init; } = "127.0.0.1";

    /// <summary>0 picks a free port (tests).</summary>
    public int Port { get; init; } = 8000;

    public string? ServedModelName { get; init; }

    /// <summary>When set, every /v1 endpoint and /tokenize, /detokenize require <c>Authorization: Bearer KEY</c>.</summary>
    public string? ApiKey { get; init; }

    /// <summary>Largest request body accepted; larger ones get 413.</summary>
    public long MaxRequestBodyBytes { get; init; } = 4 << 20;

    /// <summary>Where the one-line-per-request log goes (stderr by default).</summary>
    public TextWriter? Log { get; init; }

    /// <summary>On shutdown, how long in-flight requests may run on before they are aborted (their streams still end properly).</summary>
    public TimeSpan ShutdownTimeout { get; init; } = TimeSpan.FromSeconds(30);

    /// <summary>Write the request log as one JSON object per line (<c>--log-format json</c>).</summary>
    public bool LogJson { get; init; }

    /// <summary>Generation requests per minute per client (API key, else address); 0 = unlimited.</summary>
    public int RateLimitRequestsPerMinute { get; init; }

    /// <summary>Tokens (prompt + max_tokens × choices) per minute per client; 0 = unlimited.</summary>
    public int RateLimitTokensPerMinute { get; init; }

    /// <summary>Serve the browser playground at <c>/</c> (<c>--no-ui</c> turns it off; the engine endpoints stay).</summary>
    public bool EnableUi { get; init; } = true;

    /// <summary>What one rendering of the chat template may spend (output size, steps, macro depth, time).</summary>
    public ChatTemplateLimits ChatTemplateLimits { get; init; } = ChatTemplateLimits.Default;
}

/// <summary>
/// The OpenAI-compatible HTTP server over an <see cref="LlmEngine"/>, on Kestrel: completions and chat
/// completions (streamed as Server-Sent Events exactly as OpenAI does, or whole), models, tokenize and
/// detokenize, health and Prometheus metrics. A client that disconnects aborts its requests.
/// The model loads in the background: <c>/health</c> answers 503 until it is ready.
/// </summary>
public sealed class OpenAiServer : IAsyncDisposable
{
    readonly ServerOptions _options;
    readonly WebApplication _app;
    readonly Task<LlmEngine> _engineTask;
    readonly TextWriter _log;
    readonly byte[]? _apiKeyHash;
    readonly CancellationTokenSource _shutdown = new();
    readonly CancellationTokenSource _drainStarted = new();
    readonly RateLimits _rateLimits;
    int _inflight;
    volatile bool _draining;
    LlmEngine? _engine;
    ServerMetrics? _metrics;
    EngineView? _view;
    ChatTemplate _chat = ChatTemplate.ChatMl;
    string _modelName = "";
    static readonly JsonWriterOptions WriterOptions = new() { Encoder = System.Text.Encodings.Web.JavaScriptEncoder.UnsafeRelaxedJsonEscaping };

    OpenAiServer(ServerOptions options, Func<LlmEngine> createEngine)
    {
        _options = options;
        _log = options.Log ?? Console.Error;
        if (options.ApiKey is { } key) _apiKeyHash = SHA256.HashData(Encoding.UTF8.GetBytes(key));
        _rateLimits = new RateLimits(options.RateLimitRequestsPerMinute, options.RateLimitTokensPerMinute);

        var builder = WebApplication.CreateSlimBuilder();
        builder.Logging.ClearProviders();
        // The host waits for our drain (below) plus a margin before it gives up on open connections.
        builder.Services.Configure<Microsoft.Extensions.Hosting.HostOptions>(h => h.ShutdownTimeout = options.ShutdownTimeout + TimeSpan.FromSeconds(10));
        builder.WebHost.ConfigureKestrel(k =>
        {
            k.Limits.MaxRequestBodySize = options.MaxRequestBodyBytes;
            // Bounds for hostile clients: header size and count, and how slowly headers and bodies may trickle in.
            k.Limits.MaxRequestHeadersTotalSize = 32 << 10;
            k.Limits.MaxRequestHeaderCount = 64;
            k.Limits.RequestHeadersTimeout = TimeSpan.FromSeconds(15);
            k.Limits.MinRequestBodyDataRate = new Microsoft.AspNetCore.Server.Kestrel.Core.MinDataRate(bytesPerSecond: 240, gracePeriod: TimeSpan.FromSeconds(5));
            k.Listen(System.Net.IPAddress.Parse(options.Host == "localhost" ? "127.0.0.1" : options.Host), options.Port);
        });
        _app = builder.Build();
        Map(_app);
        _app.Lifetime.ApplicationStopping.Register(Drain);

        _engineTask = Task.Run(() =>
        {
            var engine = createEngine();
            _modelName = options.ServedModelName ?? engine.Model.Name;
            // The model's own template; ChatML for models that carry none (dummy models, some GGUFs).
            _chat = engine.Model.ChatTemplate ?? ChatTemplate.ChatMl;
            _metrics = new ServerMetrics(engine, _modelName);
            _view = new EngineView(engine);
            _engine = engine;
            return engine;
        });
    }

    public static OpenAiServer Create(ServerOptions options, Func<LlmEngine> createEngine) => new(options, createEngine);

    /// <summary>Starts listening; the model may still be loading.</summary>
    public Task StartAsync(CancellationToken cancellationToken = default) => _app.StartAsync(cancellationToken);

    /// <summary>Waits until the model is loaded (rethrowing its load error).</summary>
    public Task<LlmEngine> Ready => _engineTask;

    public Uri BaseAddress
    {
        get
        {
            var addresses = _app.Services.GetRequiredService<IServer>().Features.Get<IServerAddressesFeature>()!.Addresses;
            return new Uri(addresses.First());
        }
    }

    public Task WaitForShutdownAsync(CancellationToken cancellationToken = default) => Microsoft.Extensions.Hosting.HostingAbstractionsHostExtensions.WaitForShutdownAsync(_app, cancellationToken);

    public async ValueTask DisposeAsync()
    {
        await _app.StopAsync().ConfigureAwait(false);
        await _app.DisposeAsync().ConfigureAwait(false);
        if (_engineTask.IsCompletedSuccessfully) _engineTask.Result.Dispose();
        _shutdown.Dispose();
        _drainStarted.Dispose();
        _rateLimits.Dispose();
    }

    // ---- routing -----------------------------------------------------------------------------------

    void Map(WebApplication app)
    {
        app.MapGet("/health", (HttpContext ctx) =>
        {
            // 503 while loading, draining, or after the engine stopped on a fatal error (a tensor-parallel rank failed).
            ctx.Response.StatusCode = _engineTask.IsCompletedSuccessfully && !_draining && _engineTask.Result.Failure is null ? 200 : 503;
            return Task.CompletedTask;
        });
        app.MapGet("/metrics", async (HttpContext ctx) =>
        {
            if (_metrics is null) { ctx.Response.StatusCode = 503; return; }
            ctx.Response.ContentType = "text/plain; version=0.0.4; charset=utf-8";
            await ctx.Response.WriteAsync(_metrics.Render(), ctx.RequestAborted).ConfigureAwait(false);
        });
        app.MapGet("/v1/models", ctx => Handle(ctx, needsBody: false, Models));
        app.MapPost("/v1/completions", ctx => Handle(ctx, needsBody: true, Completions));
        app.MapPost("/v1/chat/completions", ctx => Handle(ctx, needsBody: true, ChatCompletions));
        app.MapPost("/tokenize", ctx => Handle(ctx, needsBody: true, Tokenize));
        app.MapPost("/detokenize", ctx => Handle(ctx, needsBody: true, Detokenize));
        app.MapGet("/v1/engine/kv", ctx => Handle(ctx, needsBody: false, KvSnapshot));
        app.MapGet("/v1/engine/events", ctx => Handle(ctx, needsBody: false, EngineEvents));
        if (_options.EnableUi)
        {
            app.MapGet("/", ctx => Playground.Serve(ctx, "index.html"));
            // A RequestDelegate, not a Delegate with a bound parameter: that overload binds by reflection, which trimming breaks.
            app.MapGet("/ui/{file}", ctx => Playground.Serve(ctx, ctx.Request.RouteValues["file"] as string ?? ""));
        }
    }

    /// <summary>
    /// Graceful shutdown (SIGTERM, Ctrl+C): refuse new work with 503, let in-flight requests finish for
    /// up to <see cref="ServerOptions.ShutdownTimeout"/>, then abort the rest — their streams still end
    /// with a final event (finish reason "abort") and <c>[DONE]</c>.
    /// </summary>
    void Drain()
    {
        _draining = true;
        _drainStarted.Cancel();
        var clock = Stopwatch.StartNew();
        while (Volatile.Read(ref _inflight) > 0 && clock.Elapsed < _options.ShutdownTimeout) Thread.Sleep(10);
        if (Volatile.Read(ref _inflight) == 0) return;
        _shutdown.Cancel();
        clock.Restart();
        while (Volatile.Read(ref _inflight) > 0 && clock.Elapsed < TimeSpan.FromSeconds(5)) Thread.Sleep(10);
    }

    /// <summary>Authentication, body parsing and the error mapping every endpoint shares: no client mistake becomes a 500.</summary>
    async Task Handle(HttpContext ctx, bool needsBody, Func<HttpContext, LlmEngine, JsonRequest?, Task> handler)
    {
        var clock = Stopwatch.StartNew();
        Interlocked.Increment(ref _inflight);
        JsonDocument? doc = null; // its buffers are pooled: returned when the request is done
        try
        {
            if (_draining)
                throw new ApiErrorException(503, "the server is shutting down", "server_error", null, "shutting_down");
            CheckApiKey(ctx);
            if (!_engineTask.IsCompletedSuccessfully)
                throw new ApiErrorException(503, "the model is still loading; retry when /health answers 200", "server_error", null, "model_loading");
            if (_engineTask.Result.Failure is { } failure)
                throw new ApiErrorException(503, new EngineFailedException(failure).Message, "server_error", null, "engine_failed");
            JsonRequest? body = null;
            if (needsBody)
            {
                if (ctx.Request.ContentLength > _options.MaxRequestBodyBytes) throw ApiErrorException.TooLarge(_options.MaxRequestBodyBytes);
                // Read the whole body (Kestrel bounds it) and check it is UTF-8 before parsing: System.Text.Json
                // defers the check of string contents, which would otherwise surface later as a 500.
                using var buffer = new MemoryStream();
                await ctx.Request.Body.CopyToAsync(buffer, ctx.RequestAborted).ConfigureAwait(false);
                if (!System.Text.Unicode.Utf8.IsValid(buffer.GetBuffer().AsSpan(0, (int)buffer.Length)))
                    throw ApiErrorException.BadRequest("the request body is not valid UTF-8");
                try
                {
                    doc = JsonDocument.Parse(buffer.GetBuffer().AsMemory(0, (int)buffer.Length));
                }
                catch (JsonException e)
                {
                    throw ApiErrorException.BadRequest($"the request body is not valid JSON: {e.Message}");
                }
                JsonRequest.CheckStrings(doc.RootElement);
                body = new JsonRequest(doc.RootElement);
            }
            await handler(ctx, _engine!, body).ConfigureAwait(false);
        }
        catch (ApiErrorException e)
        {
            await WriteError(ctx, e).ConfigureAwait(false);
        }
        catch (InvalidRequestException e)
        {
            await WriteError(ctx, ApiErrorException.BadRequest(e.Message, e.Param)).ConfigureAwait(false);
        }
        catch (EngineFailedException e)
        {
            await WriteError(ctx, new ApiErrorException(503, e.Message, "server_error", null, "engine_failed")).ConfigureAwait(false);
        }
        catch (EngineOverloadedException e)
        {
            ctx.Response.Headers.RetryAfter = "1";
            await WriteError(ctx, ApiErrorException.Overloaded(e.Message)).ConfigureAwait(false);
        }
        catch (BadHttpRequestException e) when (e.StatusCode == StatusCodes.Status413PayloadTooLarge)
        {
            await WriteError(ctx, ApiErrorException.TooLarge(_options.MaxRequestBodyBytes)).ConfigureAwait(false);
        }
        catch (BadHttpRequestException e)
        {
            await WriteError(ctx, new ApiErrorException(e.StatusCode, e.Message, "invalid_request_error")).ConfigureAwait(false);
        }
        catch (OperationCanceledException) when (ctx.RequestAborted.IsCancellationRequested)
        {
            // The client went away; its requests were aborted through the same token.
        }
        catch (Exception e)
        {
            await WriteError(ctx, new ApiErrorException(500, $"internal error: {e.Message}", "server_error")).ConfigureAwait(false);
        }
        finally
        {
            doc?.Dispose();
            Interlocked.Decrement(ref _inflight);
            _metrics?.RecordResponse(ctx.Response.StatusCode);
            LogRequest(ctx, clock.Elapsed);
        }
    }

    sealed record RequestLog(string Id, int PromptTokens, int CompletionTokens, string Finish);

    /// <summary>One line per request: text, or one JSON object with <see cref="ServerOptions.LogJson"/>.</summary>
    void LogRequest(HttpContext ctx, TimeSpan elapsed)
    {
        var r = ctx.Items["log"] as RequestLog;
        if (_options.LogJson)
        {
            var o = new System.Text.Json.Nodes.JsonObject
            {
                ["time"] = DateTime.UtcNow.ToString("O", CultureInfo.InvariantCulture),
                ["method"] = ctx.Request.Method,
                ["path"] = ctx.Request.Path.Value,
                ["status"] = ctx.Response.StatusCode,
                ["latency_ms"] = Math.Round(elapsed.TotalMilliseconds, 1),
            };
            if (r is not null)
            {
                o["id"] = r.Id;
                o["prompt_tokens"] = r.PromptTokens;
                o["completion_tokens"] = r.CompletionTokens;
                o["finish"] = r.Finish;
            }
            _log.WriteLine(o.ToJsonString());
            return;
        }
        string tail = r is null ? "" : $" {r.Id} prompt_tokens={r.PromptTokens} completion_tokens={r.CompletionTokens} finish={r.Finish}";
        _log.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"{DateTime.UtcNow:O} {ctx.Request.Method} {ctx.Request.Path} {ctx.Response.StatusCode} {elapsed.TotalMilliseconds:F1} ms{tail}"));
    }

    void CheckApiKey(HttpContext ctx)
    {
        if (_apiKeyHash is null) return;
        string header = ctx.Request.Headers.Authorization.ToString();
        const string Bearer = "Bearer ";
        string given = header.StartsWith(Bearer, StringComparison.OrdinalIgnoreCase) ? header[Bearer.Length..].Trim() : "";
        // Compare hashes in constant time: neither the key's length nor its prefix leaks through timing.
        if (!CryptographicOperations.FixedTimeEquals(SHA256.HashData(Encoding.UTF8.GetBytes(given)), _apiKeyHash))
            throw ApiErrorException.Unauthorized();
    }

    static async Task WriteError(HttpContext ctx, ApiErrorException e)
    {
        if (ctx.Response.HasStarted) return; // mid-stream: the stream just ends
        ctx.Response.StatusCode = e.Status;
        // A body refused for its size is left unread, and Kestrel drops the connection rather than drain it:
        // say so, or the client reuses a connection the server is closing and its next request fails.
        if (e.Status == StatusCodes.Status413PayloadTooLarge) ctx.Response.Headers.Connection = "close";
        ctx.Response.ContentType = "application/json";
        await WriteJson(ctx, e.WriteTo).ConfigureAwait(false);
    }

    static async Task WriteJson(HttpContext ctx, Action<Utf8JsonWriter> write)
    {
        if (!ctx.Response.HasStarted && ctx.Response.ContentType is null) ctx.Response.ContentType = "application/json";
        using (var w = new Utf8JsonWriter(ctx.Response.BodyWriter, WriterOptions)) write(w);
        await ctx.Response.BodyWriter.FlushAsync(ctx.RequestAborted).ConfigureAwait(false);
    }

    void CheckModel(JsonRequest body)
    {
        if (body.String("model") is { } model && model != _modelName) throw ApiErrorException.ModelNotFound(model, _modelName);
    }

    // ---- /v1/models, /tokenize, /detokenize ----------------------------------------------------------

    Task Models(HttpContext ctx, LlmEngine engine, JsonRequest? _) => WriteJson(ctx, w =>
    {
        w.WriteStartObject();
        w.WriteString("object", "list");
        w.WriteStartArray("data");
        w.WriteStartObject();
        w.WriteString("id", _modelName);
        w.WriteString("object", "model");
        w.WriteNumber("created", Created);
        w.WriteString("owned_by", "tokenmill");
        w.WriteNumber("max_model_len", engine.MaxModelLen);
        w.WriteEndObject();
        w.WriteEndArray();
        w.WriteEndObject();
    });

    Task Tokenize(HttpContext ctx, LlmEngine engine, JsonRequest? body)
    {
        CheckModel(body!);
        int[] tokens;
        if (body!.Has("messages"))
        {
            var prompt = RenderChat(body);
            tokens = engine.Model.Tokenizer.Encode(prompt, addSpecial: body.Bool("add_special_tokens") ?? false, parseSpecial: true);
        }
        else
        {
            var prompt = body.String("prompt") ?? throw ApiErrorException.BadRequest("'prompt' (a string) or 'messages' is required", "prompt");
            tokens = engine.Model.Tokenizer.Encode(prompt, addSpecial: body.Bool("add_special_tokens") ?? true, parseSpecial: true);
        }
        return WriteJson(ctx, w =>
        {
            w.WriteStartObject();
            w.WriteNumber("count", tokens.Length);
            w.WriteNumber("max_model_len", engine.MaxModelLen);
            w.WriteStartArray("tokens");
            foreach (int t in tokens) w.WriteNumberValue(t);
            w.WriteEndArray();
            w.WriteEndObject();
        });
    }

    Task Detokenize(HttpContext ctx, LlmEngine engine, JsonRequest? body)
    {
        CheckModel(body!);
        if (!body!.Has("tokens")) throw ApiErrorException.BadRequest("'tokens' (a list of token ids) is required", "tokens");
        var ids = body.IntList("tokens");
        foreach (int id in ids)
            if ((uint)id >= (uint)engine.Model.Config.VocabSize)
                throw ApiErrorException.BadRequest($"token id {id} is outside the vocabulary of {engine.Model.Config.VocabSize}", "tokens");
        string text = engine.Model.Tokenizer.Decode([.. ids]);
        return WriteJson(ctx, w =>
        {
            w.WriteStartObject();
            w.WriteString("prompt", text);
            w.WriteEndObject();
        });
    }

    static long Created => DateTimeOffset.UtcNow.ToUnixTimeSeconds();

    // ---- the live engine view: /v1/engine/kv and /v1/engine/events ------------------------------------

    /// <summary>One snapshot of the KV cache and engine counters; <c>?since=CURSOR</c> adds the KV events after that cursor.</summary>
    async Task KvSnapshot(HttpContext ctx, LlmEngine engine, JsonRequest? _)
    {
        var (frame, _) = await _view!.FrameAsync(_view.ParseSince(ctx.Request.Query["since"]), ctx.RequestAborted).ConfigureAwait(false);
        await WriteJson(ctx, frame).ConfigureAwait(false);
    }

    /// <summary>
    /// Server-Sent Events: a frame like <c>/v1/engine/kv</c>'s every <c>interval_ms</c> (default 250, 50..10000), each
    /// with the KV events since the previous frame, until the client leaves or the server shuts down. Periodic whole
    /// snapshots rather than deltas: a client that joins late or misses a frame is right again at the next one.
    /// </summary>
    async Task EngineEvents(HttpContext ctx, LlmEngine engine, JsonRequest? _)
    {
        int interval = 250;
        if (ctx.Request.Query["interval_ms"].ToString() is { Length: > 0 } text
            && (!int.TryParse(text, NumberStyles.None, CultureInfo.InvariantCulture, out interval) || interval is < 50 or > 10_000))
            throw ApiErrorException.BadRequest($"'interval_ms' must be a whole number of milliseconds from 50 to 10000, got '{text}'", "interval_ms");
        long since = _view!.ParseSince(ctx.Request.Query["since"]);
        // A watcher is not a request in flight: the drain on shutdown ends the stream at once instead of waiting for it.
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted, _drainStarted.Token);
        ctx.Response.ContentType = "text/event-stream";
        ctx.Response.Headers.CacheControl = "no-cache";
        try
        {
            while (true)
            {
                var (frame, cursor) = await _view.FrameAsync(since, cts.Token).ConfigureAwait(false);
                await Sse(ctx, frame).ConfigureAwait(false);
                since = cursor;
                await Task.Delay(interval, cts.Token).ConfigureAwait(false);
            }
        }
        catch (Exception e) when ((e is OperationCanceledException or ObjectDisposedException) && (cts.IsCancellationRequested || _draining))
        {
            // The client left, or the server is shutting down (the engine may be gone already): the stream just ends.
        }
    }

    // ---- sampling parameters shared by both generation endpoints --------------------------------------

    static SamplingParams ParseSampling(JsonRequest b, int? defaultMaxTokens, int? maxTokens)
    {
        var stop = b.StringOrList("stop", maxItems: 16);
        if (stop.Any(string.IsNullOrEmpty)) throw ApiErrorException.BadRequest("'stop' strings must not be empty", "stop");
        return new SamplingParams
        {
            Temperature = (float)(b.Number("temperature", 0, 2) ?? 1.0),
            TopP = (float)(b.Number("top_p", 0, 1) ?? 1.0) is var p && p > 0 ? p : throw ApiErrorException.BadRequest("'top_p' must be greater than 0", "top_p"),
            TopK = b.Int("top_k", -1, int.MaxValue) is int k && k > 0 ? k : 0, // vLLM: -1 or 0 disables
            MinP = (float)(b.Number("min_p", 0, 1) ?? 0),
            RepetitionPenalty = (float)(b.Number("repetition_penalty", 0.01, 100) ?? 1),
            PresencePenalty = (float)(b.Number("presence_penalty", -2, 2) ?? 0),
            FrequencyPenalty = (float)(b.Number("frequency_penalty", -2, 2) ?? 0),
            LogitBias = b.LogitBias("logit_bias"),
            Seed = b.Long("seed") is long s ? unchecked((ulong)s) : null,
            MaxTokens = maxTokens ?? defaultMaxTokens ?? 16,
            MinTokens = b.Int("min_tokens", 0, int.MaxValue) ?? 0,
            Stop = stop,
            StopTokenIds = b.IntList("stop_token_ids"),
            IgnoreEos = b.Bool("ignore_eos") ?? false,
        };
    }

    // ---- /v1/completions ------------------------------------------------------------------------------

    async Task Completions(HttpContext ctx, LlmEngine engine, JsonRequest? body)
    {
        var b = body!;
        CheckModel(b);
        if (b.Has("suffix")) throw ApiErrorException.BadRequest("'suffix' is not supported (no model here is trained for insertion)", "suffix");
        if (b.Int("best_of", 1, 1) is not null and not 1) throw ApiErrorException.BadRequest("'best_of' other than 1 is not supported", "best_of");
        var prompts = ParseCompletionPrompts(b, engine);
        int n = b.Int("n", 1, 128) ?? 1;
        bool stream = b.Bool("stream") ?? false;
        bool includeUsage = stream && b.Get("stream_options") is { } so && so.ValueKind == JsonValueKind.Object
            && so.TryGetProperty("include_usage", out var iu) && iu.ValueKind == JsonValueKind.True;
        int? logprobs = b.Int("logprobs", 0, 5);
        bool echo = b.Bool("echo") ?? false;
        var sampling = ParseSampling(b, defaultMaxTokens: 16, b.Int("max_tokens", 1, int.MaxValue)) with { Logprobs = logprobs };
        int priority = b.Int("priority") ?? 0;
        var (beamWidth, lengthPenalty) = ParseBeamSearch(b, n);

        // One engine request per prompt; its n choices are forks sharing the prompt's KV blocks (seed + i each),
        // or with beam search its n best hypotheses (streamed as one final chunk each, when the search ends).
        var choices = prompts.Select(p => (new GenerationRequest
        {
            PromptTokenIds = p.Ids, Sampling = sampling, Priority = priority, N = n, CacheSalt = b.String("cache_salt"),
            BeamWidth = beamWidth, LengthPenalty = lengthPenalty,
        }, echo ? p.Text : "")).ToList();

        string id = "cmpl-" + Guid.NewGuid().ToString("N");
        await Run(ctx, engine, id, choices, stream, includeUsage, chat: false).ConfigureAwait(false);
    }

    /// <summary>
    /// vLLM's beam-search extras: <c>use_beam_search</c>, <c>beam_width</c> (default: <c>n</c>, as vLLM's <c>best_of</c> defaulted to it)
    /// and <c>length_penalty</c> (default 1). Beam fields without <c>use_beam_search</c> are refused rather than silently ignored.
    /// </summary>
    static (int? Width, float LengthPenalty) ParseBeamSearch(JsonRequest b, int n)
    {
        bool on = b.Bool("use_beam_search") ?? false;
        int? width = b.Int("beam_width", 1, GenerationRequest.MaxBeamWidth);
        double? lengthPenalty = b.Number("length_penalty", -100, 100);
        if (!on)
        {
            if (width is not null) throw ApiErrorException.BadRequest("'beam_width' needs 'use_beam_search': true", "beam_width");
            if (lengthPenalty is not null) throw ApiErrorException.BadRequest("'length_penalty' needs 'use_beam_search': true", "length_penalty");
            return (null, 1f);
        }
        width ??= n;
        if (n > width) throw ApiErrorException.BadRequest($"'n' ({n}) must not exceed 'beam_width' ({width}) with beam search", "n");
        return (width, (float)(lengthPenalty ?? 1.0));
    }

    /// <summary>OpenAI's prompt forms: a string, a list of strings, a list of token ids, or a list of lists of token ids.</summary>
    static List<(string Text, int[] Ids)> ParseCompletionPrompts(JsonRequest b, LlmEngine engine)
    {
        var tok = engine.Model.Tokenizer;
        if (b.Get("prompt") is not { } p) throw ApiErrorException.BadRequest("'prompt' is required", "prompt");
        var list = new List<(string, int[])>();
        (string, int[]) FromText(string s) => (s, tok.Encode(s, addSpecial: true, parseSpecial: true));
        (string, int[]) FromIds(JsonElement arr)
        {
            var ids = new List<int>();
            foreach (var e in arr.EnumerateArray())
            {
                if (e.ValueKind != JsonValueKind.Number || !e.TryGetInt32(out int t)) throw JsonRequest.TypeError("prompt", "token ids (integers)", e);
                ids.Add(t);
            }
            foreach (int t in ids)
                if ((uint)t >= (uint)engine.Model.Config.VocabSize)
                    throw ApiErrorException.BadRequest($"prompt token id {t} is outside the vocabulary of {engine.Model.Config.VocabSize}", "prompt");
            return (tok.Decode([.. ids]), [.. ids]);
        }
        switch (p.ValueKind)
        {
            case JsonValueKind.String:
                list.Add(FromText(p.GetString()!));
                break;
            case JsonValueKind.Array when p.GetArrayLength() == 0:
                throw ApiErrorException.BadRequest("'prompt' must not be an empty list", "prompt");
            case JsonValueKind.Array when p[0].ValueKind == JsonValueKind.Number:
                list.Add(FromIds(p));
                break;
            case JsonValueKind.Array:
                foreach (var e in p.EnumerateArray())
                {
                    if (e.ValueKind == JsonValueKind.String) list.Add(FromText(e.GetString()!));
                    else if (e.ValueKind == JsonValueKind.Array) list.Add(FromIds(e));
                    else throw JsonRequest.TypeError("prompt", "strings or lists of token ids", e);
                }
                break;
            default:
                throw JsonRequest.TypeError("prompt", "a string, a list of strings or a list of token ids", p);
        }
        foreach (var (_, ids) in list)
            if (ids.Length == 0) throw ApiErrorException.BadRequest("the prompt is empty and the model adds no BOS token", "prompt");
        return list;
    }

    // ---- /v1/chat/completions -------------------------------------------------------------------------

    async Task ChatCompletions(HttpContext ctx, LlmEngine engine, JsonRequest? body)
    {
        var b = body!;
        CheckModel(b);
        string prompt = RenderChat(b);
        int[] ids = engine.Model.Tokenizer.Encode(prompt, addSpecial: false, parseSpecial: true);
        int n = b.Int("n", 1, 128) ?? 1;
        bool stream = b.Bool("stream") ?? false;
        bool includeUsage = stream && b.Get("stream_options") is { } so && so.ValueKind == JsonValueKind.Object
            && so.TryGetProperty("include_usage", out var iu) && iu.ValueKind == JsonValueKind.True;
        bool logprobs = b.Bool("logprobs") ?? false;
        int? topLogprobs = b.Int("top_logprobs", 0, SamplingParams.MaxLogprobs);
        if (topLogprobs is not null && !logprobs) throw ApiErrorException.BadRequest("'top_logprobs' needs 'logprobs': true", "top_logprobs");
        int? maxTokens = b.Int("max_completion_tokens", 1, int.MaxValue) ?? b.Int("max_tokens", 1, int.MaxValue);
        // Like vLLM: without a limit, a chat completion may use the rest of the context.
        int room = Math.Max(1, engine.MaxModelLen - ids.Length);
        var sampling = ParseSampling(b, defaultMaxTokens: room, maxTokens) with { Logprobs = logprobs ? topLogprobs ?? 0 : null };
        int priority = b.Int("priority") ?? 0;
        var (beamWidth, lengthPenalty) = ParseBeamSearch(b, n);

        var choices = new List<(GenerationRequest, string)>
        {
            (new GenerationRequest
            {
                PromptTokenIds = ids, Sampling = sampling, Priority = priority, N = n, CacheSalt = b.String("cache_salt"),
                BeamWidth = beamWidth, LengthPenalty = lengthPenalty,
            }, ""),
        };
        string id = "chatcmpl-" + Guid.NewGuid().ToString("N");
        await Run(ctx, engine, id, choices, stream, includeUsage, chat: true).ConfigureAwait(false);
    }

    /// <summary>
    /// The conversation rendered by the model's chat template, with <c>tools</c> and vLLM's
    /// <c>chat_template_kwargs</c> (e.g. <c>enable_thinking</c>) passed to it. A template's own refusal
    /// (<c>raise_exception</c>, e.g. "roles must alternate") is the client's 400.
    /// </summary>
    string RenderChat(JsonRequest b)
    {
        var messages = ParseMessages(b);
        var extra = new Dictionary<string, object?>(StringComparer.Ordinal);
        if (b.Get("tools") is { } tools)
        {
            if (tools.ValueKind != JsonValueKind.Array) throw JsonRequest.TypeError("tools", "a list of tools", tools);
            extra["tools"] = tools;
        }
        if (b.Get("chat_template_kwargs") is { } kwargs)
        {
            if (kwargs.ValueKind != JsonValueKind.Object) throw JsonRequest.TypeError("chat_template_kwargs", "an object", kwargs);
            foreach (var p in kwargs.EnumerateObject())
                if (p.Name is not ("messages" or "bos_token" or "eos_token")) extra[p.Name] = p.Value;
        }
        try
        {
            return _chat.Render(messages, b.Bool("add_generation_prompt") ?? true, extra, _options.ChatTemplateLimits);
        }
        catch (ChatTemplateException e) when (e.Limit is not null)
        {
            // The conversation (its size, or what the template does with it) drove the template past a limit.
            throw ApiErrorException.BadRequest($"the chat template stopped at a limit while rendering these messages: {e.Message}", "messages");
        }
        catch (ChatTemplateException e)
        {
            throw ApiErrorException.BadRequest($"the chat template refused these messages: {e.TemplateMessage ?? e.Message}", "messages");
        }
    }

    static List<ChatMessage> ParseMessages(JsonRequest b)
    {
        if (b.Get("messages") is not { } m || m.ValueKind != JsonValueKind.Array)
            throw ApiErrorException.BadRequest("'messages' must be a list of messages", "messages");
        if (m.GetArrayLength() == 0) throw ApiErrorException.BadRequest("'messages' must not be empty", "messages");
        var messages = new List<ChatMessage>();
        int i = 0;
        foreach (var e in m.EnumerateArray())
        {
            string where = $"messages[{i++}]";
            if (e.ValueKind != JsonValueKind.Object) throw JsonRequest.TypeError(where, "an object", e);
            var msg = new JsonRequest(e);
            string role = msg.String("role") ?? throw ApiErrorException.BadRequest($"'{where}.role' is required", "messages");
            if (role is not ("system" or "developer" or "user" or "assistant" or "tool"))
                throw ApiErrorException.BadRequest($"'{where}.role' must be system, developer, user, assistant or tool; got '{role}'", "messages");
            string? content;
            try
            {
                content = msg.Get("content") is { } c ? ChatMessage.FlattenContent(c) : null;
            }
            catch (ArgumentException ex)
            {
                throw ApiErrorException.BadRequest($"'{where}.content': {ex.Message.Split(" (Parameter")[0]}", "messages");
            }
            messages.Add(new ChatMessage(role == "developer" ? "system" : role, content)
            {
                Name = msg.String("name"),
                ToolCallId = msg.String("tool_call_id"),
                ReasoningContent = msg.String("reasoning_content"),
                ToolCalls = ParseToolCalls(msg, where),
            });
        }
        return messages;
    }

    static List<ChatToolCall>? ParseToolCalls(JsonRequest msg, string where)
    {
        if (msg.Get("tool_calls") is not { } calls) return null;
        if (calls.ValueKind != JsonValueKind.Array) throw JsonRequest.TypeError($"{where}.tool_calls", "a list", calls);
        var list = new List<ChatToolCall>();
        foreach (var call in calls.EnumerateArray())
        {
            if (call.ValueKind != JsonValueKind.Object) throw JsonRequest.TypeError($"{where}.tool_calls[]", "an object", call);
            var c = new JsonRequest(call);
            var function = c.Get("function") is { ValueKind: JsonValueKind.Object } f ? new JsonRequest(f)
                : throw ApiErrorException.BadRequest($"'{where}.tool_calls[].function' must be an object with a name", "messages");
            string name = function.String("name") ?? throw ApiErrorException.BadRequest($"'{where}.tool_calls[].function.name' is required", "messages");
            list.Add(new ChatToolCall(c.String("id") ?? "", name, function.String("arguments") ?? "{}"));
        }
        return list;
    }

    // ---- running requests and writing results ----------------------------------------------------------

    /// <summary>
    /// Submits every request (all or nothing: a refusal aborts those already queued), then streams their
    /// chunks as SSE or collects them into one response. Request r's fork j is choice first[r] + j.
    /// </summary>
    async Task Run(HttpContext ctx, LlmEngine engine, string id, List<(GenerationRequest Request, string Echo)> requests,
        bool stream, bool includeUsage, bool chat)
    {
        _rateLimits.AcquireRequest(ctx);
        _rateLimits.AcquireTokens(ctx, requests.Sum(q => q.Request.PromptTokenIds!.Count + (long)q.Request.Sampling.MaxTokens * q.Request.N));
        var first = new int[requests.Count];
        for (int r = 1; r < requests.Count; r++) first[r] = first[r - 1] + requests[r - 1].Request.N;
        var choices = requests.SelectMany(q => Enumerable.Repeat(q.Echo, q.Request.N)).ToArray();
        using var cts = CancellationTokenSource.CreateLinkedTokenSource(ctx.RequestAborted, _shutdown.Token);
        var streams = new List<IAsyncEnumerable<CompletionChunk>>();
        try
        {
            foreach (var (request, _) in requests) streams.Add(engine.Generate(request with { RequestId = $"{id}-{streams.Count}" }, cts.Token));
        }
        catch
        {
            await cts.CancelAsync().ConfigureAwait(false); // those already queued are aborted; nothing leaks
            throw;
        }

        var clock = Stopwatch.StartNew();
        var merged = Channel.CreateUnbounded<(int Index, CompletionChunk Chunk)>();
        var pumps = streams.Select((s, i) => Task.Run(async () =>
        {
            await foreach (var c in s.ConfigureAwait(false)) await merged.Writer.WriteAsync((first[i] + c.Index, c)).ConfigureAwait(false);
        })).ToArray();
        _ = Task.WhenAll(pumps).ContinueWith(t => merged.Writer.TryComplete(t.Exception?.InnerException), TaskScheduler.Default);

        var results = choices.Select(echo => new ChoiceState(echo)).ToArray();
        long created = Created;
        string model = _modelName;
        var tok = engine.Model.Tokenizer;

        if (stream)
        {
            ctx.Response.ContentType = "text/event-stream";
            ctx.Response.Headers.CacheControl = "no-cache";
            if (chat)
                for (int i = 0; i < results.Length; i++)
                    await Sse(ctx, w => ChatChunk(w, id, created, model, i, role: true, "", null, null, tok, includeUsage)).ConfigureAwait(false);
            else
                for (int i = 0; i < results.Length; i++)
                    if (results[i].Echo.Length > 0)
                        await Sse(ctx, w => CompletionChunkJson(w, id, created, model, i, results[i].Echo, null, null, tok, includeUsage)).ConfigureAwait(false);
        }

        try
        {
            await foreach (var (i, chunk) in merged.Reader.ReadAllAsync(ctx.RequestAborted).ConfigureAwait(false))
                await Emit(i, chunk).ConfigureAwait(false);
        }
        catch (Exception e) when (stream && ctx.Response.HasStarted && e is not OperationCanceledException)
        {
            // A request that fails mid-stream (the engine gave it up) ends with an error event and [DONE], never silently.
            await Sse(ctx, w => new ApiErrorException(500, e.Message, "server_error").WriteTo(w)).ConfigureAwait(false);
            await ctx.Response.WriteAsync("data: [DONE]\n\n", ctx.RequestAborted).ConfigureAwait(false);
            await ctx.Response.Body.FlushAsync(ctx.RequestAborted).ConfigureAwait(false);
            ctx.Items["log"] = new RequestLog(id, 0, 0, "error");
            return;
        }

        async Task Emit(int i, CompletionChunk chunk)
        {
            var r = results[i];
            r.Record(chunk, clock.Elapsed, _metrics!);
            if (!stream) return;
            bool hasContent = chunk.Text.Length > 0 || chunk.Logprobs is not null;
            if (hasContent || chunk.IsFinal)
            {
                var lp = chunk.Logprobs;
                string? finish = chunk.FinishReason;
                if (chat)
                    await Sse(ctx, w => ChatChunk(w, id, created, model, i, role: false, chunk.Text, lp, finish, tok, includeUsage)).ConfigureAwait(false);
                else
                    await Sse(ctx, w => CompletionChunkJson(w, id, created, model, i, chunk.Text, lp, finish, tok, includeUsage)).ConfigureAwait(false);
            }
        }

        // Usage counts each prompt once, however many choices it has (as OpenAI does for n > 1).
        int promptTokens = requests.Sum(q => q.Request.PromptTokenIds!.Count);
        int cachedTokens = requests.Select((q, r) => results[first[r]].CachedPromptTokens).Sum();
        int completionTokens = results.Sum(r => r.CompletionTokens);
        ctx.Items["log"] = new RequestLog(id, promptTokens, completionTokens, string.Join(',', results.Select(r => r.Finish)));

        if (stream)
        {
            if (includeUsage)
                await Sse(ctx, w =>
                {
                    ResponseHead(w, id, chat ? "chat.completion.chunk" : "text_completion", created, model);
                    w.WriteStartArray("choices");
                    w.WriteEndArray();
                    Usage(w, promptTokens, completionTokens, cachedTokens);
                    w.WriteEndObject();
                }).ConfigureAwait(false);
            await ctx.Response.WriteAsync("data: [DONE]\n\n", ctx.RequestAborted).ConfigureAwait(false);
            await ctx.Response.Body.FlushAsync(ctx.RequestAborted).ConfigureAwait(false);
            return;
        }

        await WriteJson(ctx, w =>
        {
            ResponseHead(w, id, chat ? "chat.completion" : "text_completion", created, model);
            w.WriteStartArray("choices");
            for (int i = 0; i < results.Length; i++)
            {
                var r = results[i];
                w.WriteStartObject();
                w.WriteNumber("index", i);
                if (chat)
                {
                    w.WriteStartObject("message");
                    w.WriteString("role", "assistant");
                    w.WriteString("content", r.Text.ToString());
                    w.WriteEndObject();
                    if (r.Logprobs is null) w.WriteNull("logprobs");
                    else ChatLogprobs(w, r.Logprobs, tok);
                }
                else
                {
                    w.WriteString("text", r.Echo + r.Text);
                    if (r.Logprobs is null) w.WriteNull("logprobs");
                    else CompletionLogprobs(w, r.Logprobs, tok, r.Echo.Length);
                }
                w.WriteString("finish_reason", r.Finish);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            Usage(w, promptTokens, completionTokens, cachedTokens);
            w.WriteEndObject();
        }).ConfigureAwait(false);
    }

    sealed class ChoiceState(string echo)
    {
        public string Echo { get; } = echo;
        public StringBuilder Text { get; } = new();
        public List<SampledToken>? Logprobs { get; private set; }
        public string? Finish { get; private set; }
        public int PromptTokens { get; private set; }
        public int CompletionTokens { get; private set; }
        public int CachedPromptTokens { get; private set; }
        TimeSpan? _last;

        public void Record(CompletionChunk c, TimeSpan now, ServerMetrics metrics)
        {
            Text.Append(c.Text);
            if (c.Logprobs is { } lp) (Logprobs ??= []).AddRange(lp);
            PromptTokens = c.PromptTokens;
            CompletionTokens = c.CompletionTokens;
            if (c.TokenIds.Length > 0)
            {
                if (_last is null) metrics.RecordFirstToken(now);
                else metrics.RecordInterToken(now - _last.Value);
                _last = now;
            }
            if (c.IsFinal)
            {
                Finish = c.FinishReason;
                CachedPromptTokens = c.CachedPromptTokens;
                metrics.RecordFinished(c, now);
            }
        }
    }

    static async Task Sse(HttpContext ctx, Action<Utf8JsonWriter> write)
    {
        var body = ctx.Response.BodyWriter;
        System.Buffers.BuffersExtensions.Write(body, "data: "u8);
        using (var w = new Utf8JsonWriter(body, WriterOptions)) write(w);
        System.Buffers.BuffersExtensions.Write(body, "\n\n"u8);
        await body.FlushAsync(ctx.RequestAborted).ConfigureAwait(false);
    }

    static void Usage(Utf8JsonWriter w, int prompt, int completion, int cached)
    {
        w.WriteStartObject("usage");
        w.WriteNumber("prompt_tokens", prompt);
        w.WriteNumber("completion_tokens", completion);
        w.WriteNumber("total_tokens", prompt + completion);
        w.WriteStartObject("prompt_tokens_details");
        w.WriteNumber("cached_tokens", cached); // prompt tokens served from the prefix cache
        w.WriteEndObject();
        w.WriteEndObject();
    }

    static void ChatChunk(Utf8JsonWriter w, string id, long created, string model, int index, bool role, string content,
        IReadOnlyList<SampledToken>? logprobs, string? finish, Tokenization.ITokenizer tok, bool includeUsage) =>
        ChunkEnvelope(w, id, "chat.completion.chunk", created, model, index, finish, includeUsage, () =>
        {
            w.WriteStartObject("delta");
            if (role) w.WriteString("role", "assistant");
            if (role || content.Length > 0) w.WriteString("content", content);
            w.WriteEndObject();
            if (logprobs is null) w.WriteNull("logprobs"); else ChatLogprobs(w, logprobs, tok);
        });

    static void CompletionChunkJson(Utf8JsonWriter w, string id, long created, string model, int index, string text,
        IReadOnlyList<SampledToken>? logprobs, string? finish, Tokenization.ITokenizer tok, bool includeUsage) =>
        ChunkEnvelope(w, id, "text_completion", created, model, index, finish, includeUsage, () =>
        {
            w.WriteString("text", text);
            if (logprobs is null) w.WriteNull("logprobs"); else CompletionLogprobs(w, logprobs, tok, 0);
        });

    /// <summary>Opens a response object and writes the fields every completion response and chunk starts with.</summary>
    static void ResponseHead(Utf8JsonWriter w, string id, string kind, long created, string model)
    {
        w.WriteStartObject();
        w.WriteString("id", id);
        w.WriteString("object", kind);
        w.WriteNumber("created", created);
        w.WriteString("model", model);
    }

    /// <summary>One streamed chunk: the envelope both endpoints share around one choice's body.</summary>
    static void ChunkEnvelope(Utf8JsonWriter w, string id, string kind, long created, string model, int index, string? finish,
        bool includeUsage, Action writeChoiceBody)
    {
        ResponseHead(w, id, kind, created, model);
        w.WriteStartArray("choices");
        w.WriteStartObject();
        w.WriteNumber("index", index);
        writeChoiceBody();
        if (finish is null) w.WriteNull("finish_reason"); else w.WriteString("finish_reason", finish);
        w.WriteEndObject();
        w.WriteEndArray();
        if (includeUsage) w.WriteNull("usage"); // OpenAI sends "usage": null on every chunk but the usage chunk
        w.WriteEndObject();
    }

    static string TokenText(Tokenization.ITokenizer tok, int id) => Encoding.UTF8.GetString(tok.TokenToBytes(id, renderSpecial: true));

    static void ChatLogprobs(Utf8JsonWriter w, IReadOnlyList<SampledToken> lps, Tokenization.ITokenizer tok)
    {
        w.WriteStartObject("logprobs");
        w.WriteStartArray("content");
        foreach (var lp in lps)
        {
            WriteTokenLogprob(w, tok, lp.TokenId, lp.Logprob);
            w.WriteStartArray("top_logprobs");
            foreach (var t in lp.TopLogprobs ?? [])
            {
                WriteTokenLogprob(w, tok, t.TokenId, t.Logprob);
                w.WriteEndObject();
            }
            w.WriteEndArray();
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteEndObject();

        static void WriteTokenLogprob(Utf8JsonWriter w, Tokenization.ITokenizer tok, int id, float logprob)
        {
            var bytes = tok.TokenToBytes(id, renderSpecial: true);
            w.WriteStartObject();
            w.WriteString("token", Encoding.UTF8.GetString(bytes));
            w.WriteNumber("logprob", logprob);
            w.WriteStartArray("bytes");
            foreach (byte x in bytes) w.WriteNumberValue(x);
            w.WriteEndArray();
        }
    }

    static void CompletionLogprobs(Utf8JsonWriter w, IReadOnlyList<SampledToken> lps, Tokenization.ITokenizer tok, int textOffset)
    {
        w.WriteStartObject("logprobs");
        w.WriteStartArray("tokens");
        foreach (var lp in lps) w.WriteStringValue(TokenText(tok, lp.TokenId));
        w.WriteEndArray();
        w.WriteStartArray("token_logprobs");
        foreach (var lp in lps) w.WriteNumberValue(lp.Logprob);
        w.WriteEndArray();
        w.WriteStartArray("top_logprobs");
        foreach (var lp in lps)
        {
            w.WriteStartObject();
            foreach (var t in lp.TopLogprobs ?? []) w.WriteNumber(TokenText(tok, t.TokenId), t.Logprob);
            w.WriteEndObject();
        }
        w.WriteEndArray();
        w.WriteStartArray("text_offset");
        int offset = textOffset;
        foreach (var lp in lps)
        {
            w.WriteNumberValue(offset);
            offset += TokenText(tok, lp.TokenId).Length;
        }
        w.WriteEndArray();
        w.WriteEndObject();
    }
}
