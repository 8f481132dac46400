using System.Net;
using System.Text;
using System.Text.Json;
using TokenMill.Core;

namespace TokenMill.Tests.Server;

/// <summary>`serve -tp 2`: requests are served across ranks; after a rank fails, /health and new requests answer 503.</summary>
public class TensorParallelServerTests
{
    static StringContent Completion(int maxTokens) =>
        new(JsonSerializer.Serialize(new { prompt = "Once upon a time", max_tokens = maxTokens, temperature = 0 }), Encoding.UTF8, "application/json");

    [SkippableFact]
    public async Task After_a_rank_fails_health_and_new_requests_answer_503()
    {
        var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 96, TensorParallelSize = 2, Threads = 2 });
        await using var _ = server;
        await server.StartAsync();
        var engine = await server.Ready;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };

        Assert.Equal(HttpStatusCode.OK, (await http.GetAsync("/health")).StatusCode);
        using (var ok = await http.PostAsync("/v1/completions", Completion(8)))
        {
            Assert.Equal(HttpStatusCode.OK, ok.StatusCode);
            var text = JsonDocument.Parse(await ok.Content.ReadAsStringAsync()).RootElement.GetProperty("choices")[0].GetProperty("text").GetString();
            Assert.StartsWith(", there was a little", text);
        }

        engine.LayerHook = (rank, layer) =>
        {
            if (rank == 1 && layer == 0) throw new InvalidOperationException("injected fault");
        };
        using (var failed = await http.PostAsync("/v1/completions", Completion(8)))
            Assert.False(failed.IsSuccessStatusCode);
        Assert.NotNull(engine.Failure);

        Assert.Equal(HttpStatusCode.ServiceUnavailable, (await http.GetAsync("/health")).StatusCode);
        using var refused = await http.PostAsync("/v1/completions", Completion(8));
        Assert.Equal(HttpStatusCode.ServiceUnavailable, refused.StatusCode);
        var error = JsonDocument.Parse(await refused.Content.ReadAsStringAsync()).RootElement.GetProperty("error");
        Assert.Equal("engine_failed", error.GetProperty("code").GetString());
        Assert.Contains("tensor-parallel rank 1 failed in its forward pass: injected fault", error.GetProperty("message").GetString());
    }
}
