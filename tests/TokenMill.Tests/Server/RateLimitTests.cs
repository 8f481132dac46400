using System.Net;
using System.Net.Http.Headers;
using System.Text;
using TokenMill.Core;

namespace TokenMill.Tests.Server;

public class RateLimitTests
{
    static async Task<HttpResponseMessage> Post(HttpClient http, string key, int maxTokens)
    {
        using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
        {
            Content = new StringContent($$"""{"prompt":"Lily","max_tokens":{{maxTokens}}}""", Encoding.UTF8, "application/json"),
        };
        request.Headers.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return await http.SendAsync(request);
    }

    [SkippableFact]
    public async Task Requests_per_minute_are_limited_per_client_with_retry_after()
    {
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 128 },
            configure: o => o with { RateLimitRequestsPerMinute = 3 });
        await server.StartAsync();
        await server.Ready;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        for (int i = 0; i < 3; i++) Assert.Equal(HttpStatusCode.OK, (await Post(http, "alice", 2)).StatusCode);
        using var refused = await Post(http, "alice", 2);
        Assert.Equal(HttpStatusCode.TooManyRequests, refused.StatusCode);
        Assert.True(int.Parse(refused.Headers.GetValues("Retry-After").Single()) >= 1);
        Assert.Contains("requests per minute", await refused.Content.ReadAsStringAsync());
        Assert.Equal(HttpStatusCode.OK, (await Post(http, "bob", 2)).StatusCode); // another client has its own bucket
    }

    [SkippableFact]
    public async Task Tokens_per_minute_are_charged_on_admission()
    {
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 128 },
            configure: o => o with { RateLimitTokensPerMinute = 100 });
        await server.StartAsync();
        await server.Ready;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        using var tooBig = await Post(http, "carol", 120);
        Assert.Equal(HttpStatusCode.BadRequest, tooBig.StatusCode); // can never fit in a minute's allowance
        Assert.Equal(HttpStatusCode.OK, (await Post(http, "carol", 60)).StatusCode);
        using var refused = await Post(http, "carol", 60);
        Assert.Equal(HttpStatusCode.TooManyRequests, refused.StatusCode);
        Assert.Contains("tokens per minute", await refused.Content.ReadAsStringAsync());
    }
}

public class RequestLogTests
{
    [SkippableTheory]
    [InlineData(false)]
    [InlineData(true)]
    public async Task Every_request_gets_one_log_line_with_id_tokens_and_latency(bool json)
    {
        var log = new StringWriter();
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 128 },
            log: TextWriter.Synchronized(log), configure: o => o with { LogJson = json });
        await server.StartAsync();
        await server.Ready;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        using var ok = await http.PostAsync("/v1/completions", new StringContent("""{"prompt":"Lily","max_tokens":3}""", Encoding.UTF8, "application/json"));
        using var bad = await http.PostAsync("/v1/completions", new StringContent("{", Encoding.UTF8, "application/json"));
        var lines = log.ToString().Split('\n', StringSplitOptions.RemoveEmptyEntries);
        Assert.Equal(2, lines.Length);
        if (json)
        {
            var first = System.Text.Json.JsonDocument.Parse(lines[0]).RootElement;
            Assert.Equal(200, first.GetProperty("status").GetInt32());
            Assert.StartsWith("cmpl-", first.GetProperty("id").GetString());
            Assert.Equal(3, first.GetProperty("completion_tokens").GetInt32());
            Assert.Equal(400, System.Text.Json.JsonDocument.Parse(lines[1]).RootElement.GetProperty("status").GetInt32());
        }
        else
        {
            Assert.Matches(@"POST /v1/completions 200 [\d.]+ ms cmpl-\w+ prompt_tokens=\d+ completion_tokens=3 finish=length", lines[0]);
            Assert.Contains("POST /v1/completions 400", lines[1]);
        }
    }
}

public class KvCacheMetricsTests
{
    [SkippableFact]
    public async Task Prefix_cache_and_eviction_metrics_are_exported()
    {
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 64, NumKvBlocks = 8 });
        await server.StartAsync();
        var engine = await server.Ready;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        async Task Complete(string prompt) =>
            (await http.PostAsync("/v1/completions", new StringContent(
                System.Text.Json.JsonSerializer.Serialize(new { prompt, max_tokens = 4, temperature = 0 }), Encoding.UTF8, "application/json"))).Dispose();
        string story = "Once upon a time there was a little girl named Lily who loved to play in the park with her dog";
        await Complete(story);
        await Complete(story); // a hit
        foreach (var p in TokenMill.Tests.Core.LlmEngineTests.Prompts.Where(p => p.Length > 40)) await Complete(p); // evict
        Assert.True(engine.Stats.KvEvictions > 0, "the small cache should have evicted");
        string metrics = await http.GetStringAsync("/metrics");
        Assert.Matches(@"tokenmill:prefix_cache_hits_total\{[^}]*\} [1-9]", metrics);
        Assert.Matches(@"tokenmill:kv_evictions_total\{[^}]*\} [1-9]", metrics);
        Assert.Matches(@"tokenmill:kv_block_lifetime_seconds_count\{[^}]*\} [1-9]", metrics);
        Assert.Matches(@"tokenmill:kv_block_idle_before_evict_seconds_count\{[^}]*\} [1-9]", metrics);
    }
}
