using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using TokenMill.Core;
using TokenMill.Tests.Core;

namespace TokenMill.Tests.Server;

/// <summary>Many concurrent streaming clients, and clients that vanish mid-stream.</summary>
public class ServerLoadTests
{
    static HttpRequestMessage StreamRequest(string prompt, int maxTokens) => new(HttpMethod.Post, "/v1/completions")
    {
        Content = new StringContent(JsonSerializer.Serialize(new { prompt, max_tokens = maxTokens, temperature = 0, stream = true }),
            Encoding.UTF8, "application/json"),
    };

    static string Text(List<JsonElement> events) =>
        string.Concat(events.Select(e => e.GetProperty("choices")[0].GetProperty("text").GetString()));

    [SkippableFact]
    public async Task Sixty_four_concurrent_streams_complete_equal_to_each_request_alone_and_free_every_block()
    {
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 128 });
        await server.StartAsync();
        var engine = await server.Ready;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        var prompts = Enumerable.Range(0, 64).Select(i => LlmEngineTests.Prompts[i % LlmEngineTests.Prompts.Length] + (i >= 24 ? $" {i}" : "")).ToArray();

        var alone = new string[prompts.Length];
        for (int i = 0; i < prompts.Length; i++)
        {
            using var r = await http.SendAsync(StreamRequest(prompts[i], 24), HttpCompletionOption.ResponseHeadersRead);
            alone[i] = Text((await OpenAiServerTests.ReadSse(r)).Events);
        }

        var together = await Task.WhenAll(prompts.Select(async p =>
        {
            using var r = await http.SendAsync(StreamRequest(p, 24), HttpCompletionOption.ResponseHeadersRead);
            var (events, done) = await OpenAiServerTests.ReadSse(r);
            Assert.True(done, "a stream ended without [DONE]");
            Assert.Equal("length", events[^1].GetProperty("choices")[0].GetProperty("finish_reason").GetString());
            return Text(events);
        }));
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(alone[i], together[i]);
        await LlmEngineTests.WaitFor(() => engine.Stats is var s && s.FreeKvBlocks == s.TotalKvBlocks && s.Running == 0);
    }

    [SkippableFact]
    public async Task Clients_that_drop_mid_stream_leave_no_block_allocated()
    {
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 128 });
        await server.StartAsync();
        var engine = await server.Ready;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };

        await Task.WhenAll(Enumerable.Range(0, 16).Select(async i =>
        {
            using var cts = new CancellationTokenSource();
            using var r = await http.SendAsync(StreamRequest(LlmEngineTests.Prompts[i], 90), HttpCompletionOption.ResponseHeadersRead, cts.Token);
            Assert.Equal(System.Net.HttpStatusCode.OK, r.StatusCode);
            using var reader = new StreamReader(await r.Content.ReadAsStreamAsync(cts.Token));
            int events = 0;
            while (await reader.ReadLineAsync(cts.Token) is { } line)
                if (line.StartsWith("data: ", StringComparison.Ordinal) && ++events == 2 + i % 5) break;
            await cts.CancelAsync(); // drop the connection mid-stream
        }));
        await LlmEngineTests.WaitFor(() => engine.Stats is var s && s.FreeKvBlocks == s.TotalKvBlocks && s.Running == 0 && s.Waiting == 0);
        Assert.True(engine.Stats.FinishedRequests >= 16, $"{engine.Stats}");
    }
}

public class ServerPreemptionStormTests
{
    [SkippableFact]
    public async Task Streams_given_up_after_too_many_preemptions_end_with_an_error_event_and_done()
    {
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"),
            new EngineOptions { MaxModelLen = 64, NumKvBlocks = 4, MaxPreemptionsPerRequest = 1 });
        await server.StartAsync();
        var engine = await server.Ready;
        engine.BeforeStepHook = () => Thread.Sleep(2); // slow steps: all streams are in flight together
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        string[] prompts = ["Lily", "Bob", "A dog", "The boat", "Mom said", "The sun was", "Max liked to eat", "The fish swam"];
        var ends = await Task.WhenAll(prompts.Select(async p =>
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions")
            {
                Content = new StringContent(JsonSerializer.Serialize(new { prompt = p, max_tokens = 50, temperature = 0, stream = true, ignore_eos = true }),
                    Encoding.UTF8, "application/json"),
            };
            using var r = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            var (events, done) = await OpenAiServerTests.ReadSse(r);
            Assert.True(done, "every stream ends with [DONE]");
            return events[^1].TryGetProperty("error", out var error) ? error.GetProperty("message").GetString()! : "finished";
        }));
        Assert.Contains("finished", ends);
        Assert.Contains(ends, e => e.Contains("preempted 2 times", StringComparison.Ordinal));
        await LlmEngineTests.WaitFor(() => engine.Stats is var s && s.FreeKvBlocks == s.TotalKvBlocks && s.Running == 0);
        string metrics = await http.GetStringAsync("/metrics");
        Assert.Matches(@"tokenmill:num_preemptions_total\{[^}]*\} [1-9]", metrics);
    }
}

public class BenchServeTests
{
    [SkippableFact]
    public async Task Bench_serve_drives_the_server_and_reports_latencies()
    {
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 128 });
        await server.StartAsync();
        await server.Ready;
        var json = Path.GetTempFileName();
        var chart = Path.ChangeExtension(Path.GetTempFileName(), ".png");
        try
        {
            var stdout = new StringWriter();
            var stderr = new StringWriter();
            int code = await Task.Run(() => TokenMill.Server.Cli.Cli.Run(["bench", "serve", "--base-url", server.BaseAddress.ToString(),
                "--num-prompts", "12", "--concurrency", "4", "--input-len", "16", "--output-len", "16", "--hourly-cost", "2",
                "--output-json", json, "--chart", chart, "--no-progress"], stdout, stderr));
            Assert.True(code == 0, stdout + stderr.ToString());
            var r = JsonDocument.Parse(File.ReadAllText(json)).RootElement;
            Assert.Equal(12, r.GetProperty("completed").GetInt32());
            Assert.Equal(0, r.GetProperty("failed").GetInt32());
            Assert.Equal(12 * 16, r.GetProperty("output_tokens").GetInt32());
            Assert.True(r.GetProperty("ttft_ms").GetProperty("p50").GetDouble() > 0);
            Assert.True(r.GetProperty("cost_per_million_output_tokens").GetDouble() > 0);
            Assert.Contains("TTFT", stdout.ToString());
            // Every request's row of the timeline (y 60–390, one band of 330/12 each) shows its decode segment. (A count of
            // the decode colour over the whole chart, > 1000, depended on the decode's share of the run: a slow first
            // request squeezes everyone else's bars.)
            var pixels = TokenMill.Tests.Cli.RasterTests.ReadPng(File.ReadAllBytes(chart));
            for (int row = 0; row < 12; row++)
            {
                int decoding = 0;
                for (int y = 60 + 330 * row / 12; y < 60 + 330 * (row + 1) / 12; y++)
                    for (int x = 0; x < pixels.GetLength(0); x++)
                        if (pixels[x, y] == TokenMill.Server.Cli.BenchChart.Decoding) decoding++;
                Assert.True(decoding > 0, $"request row {row} of the timeline has no decode segment");
            }
        }
        finally
        {
            File.Delete(json);
            File.Delete(chart);
        }
    }
}
