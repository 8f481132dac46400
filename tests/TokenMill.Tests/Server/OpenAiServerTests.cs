using System.ClientModel;
using System.Net;
using System.Text;
using System.Text.Json;
using OpenAI;
using OpenAI.Chat;
using TokenMill.Core;

namespace TokenMill.Tests.Server;

/// <summary>The OpenAI-compatible server end to end: the official OpenAI .NET SDK for chat, raw HTTP for the rest.</summary>
public class OpenAiServerTests(ServerFixture fx) : IClassFixture<ServerFixture>
{
    const string Greedy40 = ", there was a little girl named Lily. She loved to play outside in the park. One day, she saw a big,";

    ChatClient Chat() => new(ServerFixture.ModelName, new ApiKeyCredential(ServerFixture.ApiKey),
        new OpenAIClientOptions { Endpoint = new Uri(fx.Server!.BaseAddress, "v1") });

    static StringContent Json(string json) => new(json, Encoding.UTF8, "application/json");

    async Task<(HttpStatusCode Status, JsonElement Body)> Post(string path, string json, HttpClient? client = null)
    {
        using var response = await (client ?? fx.Http).PostAsync(path, Json(json));
        var text = await response.Content.ReadAsStringAsync();
        return (response.StatusCode, JsonDocument.Parse(text).RootElement.Clone());
    }

    /// <summary>Reads an SSE body: the JSON of every data event, and whether it ended with [DONE].</summary>
    internal static async Task<(List<JsonElement> Events, bool Done)> ReadSse(HttpResponseMessage response, CancellationToken ct = default)
    {
        var events = new List<JsonElement>();
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync(ct));
        bool done = false;
        while (await reader.ReadLineAsync(ct) is { } line)
        {
            if (line.Length == 0) continue;
            Assert.StartsWith("data: ", line);
            string data = line["data: ".Length..];
            Assert.False(done, "an event arrived after [DONE]");
            if (data == "[DONE]") done = true;
            else events.Add(JsonDocument.Parse(data).RootElement.Clone());
        }
        return (events, done);
    }

    [SkippableFact]
    public async Task Sdk_chat_completion_returns_an_assistant_message_with_usage()
    {
        fx.SkipIfAbsent();
        ChatCompletion c = await Chat().CompleteChatAsync([new UserChatMessage("Tell me a story.")],
            new ChatCompletionOptions { MaxOutputTokenCount = 12, Temperature = 0 });
        Assert.Equal(ChatMessageRole.Assistant, c.Role);
        Assert.False(string.IsNullOrEmpty(c.Content[0].Text));
        Assert.Equal(ChatFinishReason.Length, c.FinishReason);
        Assert.Equal(12, c.Usage.OutputTokenCount);
        Assert.True(c.Usage.InputTokenCount > 0);
        Assert.Equal(ServerFixture.ModelName, c.Model);
    }

    [SkippableFact]
    public async Task Sdk_chat_streaming_concatenates_to_the_non_streamed_greedy_text()
    {
        fx.SkipIfAbsent();
        var options = new ChatCompletionOptions { MaxOutputTokenCount = 20, Temperature = 0 };
        ChatMessage[] messages = [new SystemChatMessage("You tell stories."), new UserChatMessage("Once upon a time")];
        ChatCompletion whole = await Chat().CompleteChatAsync(messages, options);
        var sb = new StringBuilder();
        ChatFinishReason? finish = null;
        await foreach (var update in Chat().CompleteChatStreamingAsync(messages, options))
        {
            foreach (var part in update.ContentUpdate) sb.Append(part.Text);
            finish ??= update.FinishReason;
        }
        Assert.Equal(whole.Content[0].Text, sb.ToString());
        Assert.Equal(ChatFinishReason.Length, finish);
    }

    [SkippableFact]
    public async Task Completions_reproduce_the_reference_greedy_text()
    {
        fx.SkipIfAbsent();
        var (status, body) = await Post("/v1/completions",
            """{"model":"stories260K","prompt":"Once upon a time","max_tokens":35,"temperature":0,"user":"u1","some_future_field":{"x":1}}""");
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal("text_completion", body.GetProperty("object").GetString());
        var choice = body.GetProperty("choices")[0];
        Assert.Equal(Greedy40, choice.GetProperty("text").GetString()!.Trim());
        Assert.Equal("length", choice.GetProperty("finish_reason").GetString());
        Assert.Equal(5, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());
        Assert.Equal(35, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [SkippableFact]
    public async Task Streamed_completion_chunks_end_with_finish_usage_and_done()
    {
        fx.SkipIfAbsent();
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = Json("""{"prompt":"Once upon a time","max_tokens":35,"temperature":0,"stream":true,"stream_options":{"include_usage":true}}"""),
        };
        using var response = await fx.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
        var (events, done) = await ReadSse(response);
        Assert.True(done);
        var text = string.Concat(events.Where(e => e.GetProperty("choices").GetArrayLength() > 0)
            .Select(e => e.GetProperty("choices")[0].GetProperty("text").GetString()));
        Assert.Equal(Greedy40, text.Trim());
        var finish = events.Last(e => e.GetProperty("choices").GetArrayLength() > 0).GetProperty("choices")[0];
        Assert.Equal("length", finish.GetProperty("finish_reason").GetString());
        var usage = events[^1];
        Assert.Equal(0, usage.GetProperty("choices").GetArrayLength());
        Assert.Equal(35, usage.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [SkippableFact]
    public async Task Beam_search_completions_return_the_best_hypotheses_and_stream_one_final_chunk_each()
    {
        fx.SkipIfAbsent();
        const string Body = """{"prompt":"Once upon a time","max_tokens":12,"ignore_eos":true,"use_beam_search":true,"beam_width":3,"n":2,"length_penalty":1.0""";
        var (status, body) = await Post("/v1/completions", Body + "}");
        Assert.Equal(HttpStatusCode.OK, status);
        var choices = body.GetProperty("choices").EnumerateArray().ToList();
        Assert.Equal([0, 1], choices.Select(c => c.GetProperty("index").GetInt32()));
        Assert.All(choices, c => Assert.Equal("length", c.GetProperty("finish_reason").GetString()));
        Assert.NotEqual(choices[0].GetProperty("text").GetString(), choices[1].GetProperty("text").GetString());
        Assert.Equal(24, body.GetProperty("usage").GetProperty("completion_tokens").GetInt32());

        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = Json(Body + ""","stream":true}""") };
        using var response = await fx.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        var (events, done) = await ReadSse(response);
        Assert.True(done);
        // Beam search knows its results only at the end: exactly one chunk per choice, with the whole text and the finish reason.
        Assert.Equal(2, events.Count);
        for (int i = 0; i < 2; i++)
        {
            var c = events.Single(e => e.GetProperty("choices")[0].GetProperty("index").GetInt32() == i).GetProperty("choices")[0];
            Assert.Equal(choices[i].GetProperty("text").GetString(), c.GetProperty("text").GetString());
            Assert.Equal("length", c.GetProperty("finish_reason").GetString());
        }
    }

    [SkippableFact]
    public async Task Completions_accept_prompt_lists_token_ids_n_echo_and_logprobs()
    {
        fx.SkipIfAbsent();
        var (status, body) = await Post("/v1/completions",
            """{"prompt":["Lily","The cat"],"n":2,"max_tokens":4,"temperature":0.8,"seed":3,"echo":true,"logprobs":2}""");
        Assert.Equal(HttpStatusCode.OK, status);
        var choices = body.GetProperty("choices");
        Assert.Equal(4, choices.GetArrayLength());
        Assert.StartsWith("Lily", choices[0].GetProperty("text").GetString());
        Assert.StartsWith("The cat", choices[3].GetProperty("text").GetString());
        var lp = choices[0].GetProperty("logprobs");
        Assert.Equal(4, lp.GetProperty("tokens").GetArrayLength());
        Assert.Equal(4, lp.GetProperty("token_logprobs").GetArrayLength());
        Assert.InRange(lp.GetProperty("top_logprobs")[0].EnumerateObject().Count(), 1, 2);

        var (_, ids) = await Post("/tokenize", """{"prompt":"Once upon a time"}""");
        var tokenIds = ids.GetProperty("tokens").EnumerateArray().Select(e => e.GetInt32()).ToArray();
        Assert.Equal(5, ids.GetProperty("count").GetInt32());
        var (s2, fromIds) = await Post("/v1/completions", $$"""{"prompt":[{{string.Join(",", tokenIds)}}],"max_tokens":35,"temperature":0}""");
        Assert.Equal(HttpStatusCode.OK, s2);
        Assert.Equal(Greedy40, fromIds.GetProperty("choices")[0].GetProperty("text").GetString()!.Trim());
        var (_, detok) = await Post("/detokenize", $$"""{"tokens":[{{string.Join(",", tokenIds[1..])}}]}""");
        Assert.Equal("Once upon a time", detok.GetProperty("prompt").GetString());
    }

    [SkippableFact]
    public async Task A_repeated_prompt_reports_cached_tokens_and_n_choices_share_it()
    {
        fx.SkipIfAbsent();
        string prompt = "Lily and Ben went to the park to play on the swings, and then they ran to the big slide together.";
        string json = JsonSerializer.Serialize(new { prompt, max_tokens = 6, temperature = 0, n = 3, seed = 1 });
        var (_, cold) = await Post("/v1/completions", json);
        var (status, warm) = await Post("/v1/completions", json);
        Assert.Equal(HttpStatusCode.OK, status);
        Assert.Equal(3, warm.GetProperty("choices").GetArrayLength());
        int promptTokens = warm.GetProperty("usage").GetProperty("prompt_tokens").GetInt32();
        int cached = warm.GetProperty("usage").GetProperty("prompt_tokens_details").GetProperty("cached_tokens").GetInt32();
        Assert.InRange(cached, 16, promptTokens - 1); // every full block of the prompt but the tail
        // Greedy choices of one prompt are identical, and the cache changes nothing.
        var texts = warm.GetProperty("choices").EnumerateArray().Select(c => c.GetProperty("text").GetString()).ToArray();
        Assert.All(texts, t => Assert.Equal(cold.GetProperty("choices")[0].GetProperty("text").GetString(), t));
        Assert.Equal(18, warm.GetProperty("usage").GetProperty("completion_tokens").GetInt32());
    }

    [SkippableFact]
    public async Task Models_health_and_metrics_answer()
    {
        fx.SkipIfAbsent();
        var models = JsonDocument.Parse(await fx.Http.GetStringAsync("/v1/models")).RootElement;
        Assert.Equal(ServerFixture.ModelName, models.GetProperty("data")[0].GetProperty("id").GetString());
        Assert.Equal(HttpStatusCode.OK, (await fx.Http.GetAsync("/health")).StatusCode);
        await Post("/v1/completions", """{"prompt":"Lily","max_tokens":3}""");
        string metrics = await fx.Http.GetStringAsync("/metrics");
        foreach (var name in new[]
                 {
                     "tokenmill:time_to_first_token_seconds_bucket", "tokenmill:inter_token_latency_seconds_count",
                     "tokenmill:e2e_request_latency_seconds_sum", "tokenmill:request_queue_time_seconds_count",
                     "tokenmill:num_requests_running", "tokenmill:num_requests_waiting", "tokenmill:kv_cache_usage_perc",
                     "tokenmill:num_preemptions_total", "tokenmill:prompt_tokens_total", "tokenmill:generation_tokens_total",
                     "tokenmill:request_success_total{model_name=\"stories260K\",finished_reason=\"length\"}",
                     "tokenmill:cache_config_info{model_name=\"stories260K\",block_size=\"16\",cache_dtype=\"f32\",num_blocks=\"",
                 })
            Assert.Contains(name, metrics);
    }

    [SkippableTheory]
    [InlineData("{not json", 400, null)]
    [InlineData("[1,2]", 400, null)]
    [InlineData("""{"prompt":"x","temperature":"hot"}""", 400, "temperature")]
    [InlineData("""{"prompt":"x","temperature":3}""", 400, "temperature")]
    [InlineData("""{"prompt":"x","max_tokens":-1}""", 400, "max_tokens")]
    [InlineData("""{"prompt":"x","n":0}""", 400, "n")]
    [InlineData("""{"prompt":"x","logit_bias":{"abc":1}}""", 400, "logit_bias")]
    [InlineData("""{"prompt":"x","suffix":"y"}""", 400, "suffix")]
    [InlineData("""{"prompt":[]}""", 400, "prompt")]
    [InlineData("""{"prompt":[1,99999]}""", 400, "prompt")]
    [InlineData("""{"max_tokens":5}""", 400, "prompt")]
    [InlineData("""{"prompt":"x","model":"gpt-4o"}""", 404, "model")]
    [InlineData("""{"prompt":"x","use_beam_search":true,"beam_width":0}""", 400, "beam_width")]
    [InlineData("""{"prompt":"x","use_beam_search":true,"beam_width":33}""", 400, "beam_width")]
    [InlineData("""{"prompt":"x","use_beam_search":true,"beam_width":2,"n":3}""", 400, "n")]
    [InlineData("""{"prompt":"x","use_beam_search":true,"length_penalty":"long"}""", 400, "length_penalty")]
    [InlineData("""{"prompt":"x","use_beam_search":"yes"}""", 400, "use_beam_search")]
    [InlineData("""{"prompt":"x","beam_width":4}""", 400, "beam_width")]
    [InlineData("""{"prompt":"x","use_beam_search":true,"beam_width":2,"logprobs":1}""", 400, "logprobs")]
    [InlineData("""{"prompt":"x","use_beam_search":true,"beam_width":2,"stop":["."]}""", 400, "stop")]
    public async Task Bad_completion_requests_get_openai_errors(string json, int status, string? param)
    {
        fx.SkipIfAbsent();
        var (code, body) = await Post("/v1/completions", json);
        Assert.Equal(status, (int)code);
        var error = body.GetProperty("error");
        Assert.False(string.IsNullOrEmpty(error.GetProperty("message").GetString()));
        Assert.Equal("invalid_request_error", error.GetProperty("type").GetString());
        if (param is null) Assert.Equal(JsonValueKind.Null, error.GetProperty("param").ValueKind);
        else Assert.Equal(param, error.GetProperty("param").GetString());
    }

    [SkippableFact]
    public async Task A_prompt_longer_than_the_context_gets_400_with_both_numbers()
    {
        fx.SkipIfAbsent();
        string prompt = string.Join(' ', Enumerable.Repeat("Lily went to the park.", 40));
        var (code, body) = await Post("/v1/completions", JsonSerializer.Serialize(new { prompt, max_tokens = 10 }));
        Assert.Equal(HttpStatusCode.BadRequest, code);
        string message = body.GetProperty("error").GetProperty("message").GetString()!;
        Assert.Contains("maximum context length is 128", message);
        Assert.Matches(@"\(\d+ in the prompt", message);
    }

    [SkippableFact]
    public async Task Chat_requests_are_checked_too()
    {
        fx.SkipIfAbsent();
        var (c1, b1) = await Post("/v1/chat/completions", """{"messages":[]}""");
        Assert.Equal(HttpStatusCode.BadRequest, c1);
        Assert.Equal("messages", b1.GetProperty("error").GetProperty("param").GetString());
        var (c2, _) = await Post("/v1/chat/completions", """{"messages":[{"role":"wizard","content":"hi"}]}""");
        Assert.Equal(HttpStatusCode.BadRequest, c2);
        var (c3, b3) = await Post("/v1/chat/completions", """{"messages":[{"role":"user","content":"hi"}],"top_logprobs":2}""");
        Assert.Equal(HttpStatusCode.BadRequest, c3);
        Assert.Equal("top_logprobs", b3.GetProperty("error").GetProperty("param").GetString());
        var (c4, b4) = await Post("/v1/chat/completions", """{"messages":[{"role":"user","content":"hi"}],"use_beam_search":true,"beam_width":1,"n":2}""");
        Assert.Equal(HttpStatusCode.BadRequest, c4);
        Assert.Equal("n", b4.GetProperty("error").GetProperty("param").GetString());
    }

    [SkippableFact]
    public async Task Chat_beam_search_returns_n_choices_in_one_final_content_delta_each()
    {
        fx.SkipIfAbsent();
        const string Body = """{"messages":[{"role":"user","content":"Tell me a story."}],"max_tokens":8,"ignore_eos":true,"use_beam_search":true,"beam_width":2,"n":2""";
        var (status, body) = await Post("/v1/chat/completions", Body + "}");
        Assert.Equal(HttpStatusCode.OK, status);
        var texts = body.GetProperty("choices").EnumerateArray().Select(c => c.GetProperty("message").GetProperty("content").GetString()).ToList();
        Assert.Equal(2, texts.Distinct().Count());

        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/chat/completions") { Content = Json(Body + ""","stream":true}""") };
        using var response = await fx.Http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
        var (events, done) = await ReadSse(response);
        Assert.True(done);
        for (int i = 0; i < 2; i++)
        {
            var content = events.Select(e => e.GetProperty("choices")[0]).Where(c => c.GetProperty("index").GetInt32() == i)
                .Select(c => c.GetProperty("delta").TryGetProperty("content", out var t) ? t.GetString() : null).Where(t => !string.IsNullOrEmpty(t)).ToList();
            Assert.Equal([texts[i]], content); // the whole text at once, at the end
        }
    }

    [SkippableFact]
    public async Task A_wrong_api_key_gets_401()
    {
        fx.SkipIfAbsent();
        using var anonymous = new HttpClient { BaseAddress = fx.Server!.BaseAddress };
        var (code, body) = await Post("/v1/completions", """{"prompt":"x"}""", anonymous);
        Assert.Equal(HttpStatusCode.Unauthorized, code);
        Assert.Equal("invalid_api_key", body.GetProperty("error").GetProperty("code").GetString());
        anonymous.DefaultRequestHeaders.Authorization = new("Bearer", "sk-wrong");
        Assert.Equal(HttpStatusCode.Unauthorized, (await Post("/v1/chat/completions", "{}", anonymous)).Status);
        Assert.Equal(HttpStatusCode.OK, (await anonymous.GetAsync("/health")).StatusCode); // health stays open for probes
    }

    [SkippableFact]
    public async Task A_body_over_the_limit_gets_413()
    {
        fx.SkipIfAbsent();
        string prompt = new('a', 100_000); // the fixture's limit is 64 KiB
        var (code, body) = await Post("/v1/completions", JsonSerializer.Serialize(new { prompt }));
        Assert.Equal(HttpStatusCode.RequestEntityTooLarge, code);
        Assert.Equal("request_too_large", body.GetProperty("error").GetProperty("code").GetString());
    }

    [SkippableFact]
    public async Task A_refused_body_closes_its_connection_and_the_next_request_on_the_client_succeeds()
    {
        fx.SkipIfAbsent();
        // Kestrel drops a connection whose oversized body was left unread; a client that reused it
        // saw "the response ended prematurely" on its next request, about 1 time in 25.
        string tooLarge = JsonSerializer.Serialize(new { prompt = new string('a', 100_000) });
        for (int i = 0; i < 100; i++)
        {
            using (var refused = await fx.Http.PostAsync("/v1/completions", Json(tooLarge)))
            {
                Assert.Equal(HttpStatusCode.RequestEntityTooLarge, refused.StatusCode);
                Assert.True(refused.Headers.ConnectionClose, "a 413 must tell the client the connection closes");
            }
            var (status, _) = await Post("/v1/completions", """{"prompt":"Lily","max_tokens":1}""");
            Assert.Equal(HttpStatusCode.OK, status);
        }
    }

    [SkippableFact]
    public async Task A_full_queue_gets_429_with_retry_after()
    {
        fx.SkipIfAbsent();
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"),
            new EngineOptions { MaxModelLen = 128, MaxQueuedRequests = 0 });
        await server.StartAsync();
        await server.Ready;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        using var response = await http.PostAsync("/v1/completions", Json("""{"prompt":"Lily","max_tokens":3}"""));
        Assert.Equal(HttpStatusCode.TooManyRequests, response.StatusCode);
        Assert.Equal("1", response.Headers.GetValues("Retry-After").Single());
        var error = JsonDocument.Parse(await response.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
        Assert.Equal("rate_limit_exceeded", error.GetProperty("code").GetString());
    }
}

/// <summary>Regressions found by <c>HttpFuzzTests</c>: bodies whose strings cannot be read were 500s.</summary>
public class OpenAiServerRegressionTests(ServerFixture fx) : IClassFixture<ServerFixture>
{
    [SkippableTheory]
    [InlineData(new byte[] { 0x7B, 0x22, 0x70, 0x72, 0x6F, 0x6D, 0x70, 0x74, 0x22, 0x3A, 0x22, 0xFF, 0x22, 0x7D }, "not valid UTF-8")] // {"prompt":"\xFF"}
    [InlineData(new byte[] { 0x7B, 0x22, 0x70, 0x72, 0x6F, 0x6D, 0x70, 0x74, 0x22, 0x3A, 0x22, 0x5C, 0x75, 0x64, 0x38, 0x30, 0x30, 0x22, 0x7D }, "unpaired surrogate")] // {"prompt":"\ud800"}
    public async Task Unreadable_strings_get_400(byte[] body, string message)
    {
        fx.SkipIfAbsent();
        using var content = new ByteArrayContent(body);
        content.Headers.ContentType = new("application/json");
        using var response = await fx.Http.PostAsync("/v1/completions", content);
        Assert.Equal(HttpStatusCode.BadRequest, response.StatusCode);
        Assert.Contains(message, await response.Content.ReadAsStringAsync());
    }
}

/// <summary>Chat requests are rendered with the model's own template (Phi-3's, from its GGUF).</summary>
public class ChatTemplateServerTests
{
    [SkippableFact]
    public async Task Chat_prompts_use_the_models_template_and_its_refusals_are_400s()
    {
        var path = TestData.Require("arch/arch-phi3.gguf");
        await using var server = ServerFixture.Start(path, new EngineOptions { MaxModelLen = 256 });
        await server.StartAsync();
        var engine = await server.Ready;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        Assert.NotNull(engine.Model.ChatTemplate);

        const string messages = """[{"role":"system","content":"Be brief."},{"role":"user","content":"Hello there"}]""";
        using var tokenize = await http.PostAsync("/tokenize", new StringContent($$"""{"messages":{{messages}}}""", Encoding.UTF8, "application/json"));
        var ids = JsonDocument.Parse(await tokenize.Content.ReadAsStringAsync()).RootElement.GetProperty("tokens")
            .EnumerateArray().Select(e => e.GetInt32()).ToArray();
        string expectedPrompt = engine.Model.ChatTemplate!.Render(
            [new TokenMill.Chat.ChatMessage("system", "Be brief."), new TokenMill.Chat.ChatMessage("user", "Hello there")], addGenerationPrompt: true);
        Assert.Contains("<|user|>", expectedPrompt);
        Assert.Equal(engine.Model.Tokenizer.Encode(expectedPrompt, addSpecial: false, parseSpecial: true), ids);

        using var chat = await http.PostAsync("/v1/chat/completions",
            new StringContent($$"""{"messages":{{messages}},"max_tokens":4,"temperature":0}""", Encoding.UTF8, "application/json"));
        var body = JsonDocument.Parse(await chat.Content.ReadAsStringAsync()).RootElement;
        Assert.Equal(HttpStatusCode.OK, chat.StatusCode);
        Assert.Equal(ids.Length, body.GetProperty("usage").GetProperty("prompt_tokens").GetInt32());

        using var refused = await http.PostAsync("/v1/chat/completions",
            new StringContent("""{"messages":[{"role":"user","content":null}],"max_tokens":4}""", Encoding.UTF8, "application/json"));
        Assert.Equal(HttpStatusCode.BadRequest, refused.StatusCode);
        Assert.Contains("chat template", await refused.Content.ReadAsStringAsync());
    }
}
