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
