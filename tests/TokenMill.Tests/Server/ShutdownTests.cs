using System.Net;
using System.Text;
using System.Text.Json;
using TokenMill.Core;

namespace TokenMill.Tests.Server;

/// <summary>SIGTERM / Ctrl+C: stop taking work, let streams finish or end them properly, never cut one off.</summary>
public class ShutdownTests
{
    static HttpRequestMessage Stream(int maxTokens) => new(HttpMethod.Post, "/v1/completions")
    {
        Content = new StringContent(JsonSerializer.Serialize(new { prompt = "Once upon a time", max_tokens = maxTokens, temperature = 0, stream = true, ignore_eos = true }),
            Encoding.UTF8, "application/json"),
    };

    static async Task<(string? Finish, bool Done, List<JsonElement> Events)> ReadAfterShutdown(HttpClient http, Func<Task> shutdown, int maxTokens)
    {
        using var response = await http.SendAsync(Stream(maxTokens), HttpCompletionOption.ResponseHeadersRead);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
        var events = new List<JsonElement>();
        bool done = false;
        Task? stopping = null;
        while (await reader.ReadLineAsync() is { } line)
        {
            if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            if (line == "data: [DONE]") { done = true; continue; }
            events.Add(JsonDocument.Parse(line[6..]).RootElement.Clone());
            stopping ??= Task.Run(shutdown); // shut down while the stream is running
        }
        await stopping!;
        string? finish = events.Where(e => e.GetProperty("choices").GetArrayLength() > 0)
            .Select(e => e.GetProperty("choices")[0].GetProperty("finish_reason"))
            .LastOrDefault(f => f.ValueKind == JsonValueKind.String).GetString();
        return (finish, done, events);
    }

    [SkippableFact]
    public async Task In_flight_streams_finish_during_a_graceful_drain_and_new_work_gets_503()
    {
        var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 512 }, contextLength: 512);
        await server.StartAsync();
        await server.Ready;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        HttpStatusCode? during = null;
        var (finish, done, _) = await ReadAfterShutdown(http, async () =>
        {
            var disposing = server.DisposeAsync().AsTask();
            await Task.Delay(50);
            try
            {
                using var r = await http.PostAsync("/v1/completions", new StringContent("""{"prompt":"Lily","max_tokens":2}""", Encoding.UTF8, "application/json"));
                during = r.StatusCode;
            }
            catch (HttpRequestException)
            {
                during = HttpStatusCode.ServiceUnavailable; // already closed: refused, which is fine too
            }
            await disposing;
        }, maxTokens: 450);
        Assert.True(done, "the stream was cut off without [DONE]");
        Assert.Equal("length", finish);
        Assert.Equal(HttpStatusCode.ServiceUnavailable, during);
    }

    [SkippableFact]
    public async Task Streams_still_running_at_the_timeout_end_with_an_abort_event_and_done()
    {
        var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 512 },
            shutdownTimeout: TimeSpan.FromMilliseconds(20), contextLength: 512);
        await server.StartAsync();
        var engine = await server.Ready;
        // 20 ms a step: the 480 tokens would take 10 s, so the 20 ms shutdown timeout aborts the stream mid-way even when
        // a loaded machine starts the shutdown seconds late (unslowed, the stream could finish first).
        engine.BeforeStepHook = () => Thread.Sleep(20);
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        var (finish, done, events) = await ReadAfterShutdown(http, () => server.DisposeAsync().AsTask(), maxTokens: 480);
        Assert.True(done, "the stream was cut off without [DONE]");
        Assert.Equal("abort", finish);
        Assert.True(events.Count < 480);
    }
}
