using System.Collections.Concurrent;
using System.Diagnostics;
using System.Text;
using System.Text.Json;
using TokenMill.Core;
using TokenMill.Tests.Core;
using Xunit.Abstractions;

namespace TokenMill.Tests.Server;

/// <summary>
/// Soak: 256 concurrent streaming clients with random prompts and lengths for a while. Nothing may be
/// lost, truncated or corrupted; sampled greedy streams must equal the request served alone; no block
/// may leak. CI runs 15 s; <c>TOKENMILL_SOAK_SECONDS=600</c> runs the 10-minute version.
/// </summary>
[Trait("Category", "Soak")]
[Collection(nameof(SoakCollection))]
public class SoakTests(ITestOutputHelper output)
{
    sealed record Outcome(string Prompt, int MaxTokens, bool Greedy, string Text, string? Finish, bool Done, double TtftMs, List<double> ItlMs, string? Error);

    static StringContent Body(string prompt, int maxTokens, bool greedy) => new(JsonSerializer.Serialize(new
    {
        prompt,
        max_tokens = maxTokens,
        temperature = greedy ? 0.0 : 0.8,
        stream = true,
    }), Encoding.UTF8, "application/json");

    static async Task<Outcome> Stream(HttpClient http, string prompt, int maxTokens, bool greedy)
    {
        var clock = Stopwatch.StartNew();
        double? last = null, ttft = null;
        var itl = new List<double>();
        var text = new StringBuilder();
        string? finish = null;
        bool done = false;
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, "/v1/completions") { Content = Body(prompt, maxTokens, greedy) };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead);
            if (!response.IsSuccessStatusCode) return new(prompt, maxTokens, greedy, "", null, false, 0, itl, $"HTTP {(int)response.StatusCode}");
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());
            while (await reader.ReadLineAsync() is { } line)
            {
                if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
                if (line == "data: [DONE]") { done = true; continue; }
                var choice = JsonDocument.Parse(line[6..]).RootElement.GetProperty("choices")[0];
                string piece = choice.GetProperty("text").GetString()!;
                if (piece.Length > 0)
                {
                    double now = clock.Elapsed.TotalMilliseconds;
                    if (last is null) ttft = now; else itl.Add(now - last.Value);
                    last = now;
                    text.Append(piece);
                }
                if (choice.GetProperty("finish_reason").ValueKind == JsonValueKind.String) finish = choice.GetProperty("finish_reason").GetString();
            }
        }
        catch (Exception e) when (e is HttpRequestException or IOException or JsonException)
        {
            return new(prompt, maxTokens, greedy, text.ToString(), finish, done, ttft ?? 0, itl, e.Message);
        }
        return new(prompt, maxTokens, greedy, text.ToString(), finish, done, ttft ?? 0, itl, null);
    }

    [SkippableFact]
    public async Task Two_hundred_fifty_six_clients_lose_nothing()
    {
        int seconds = int.TryParse(Environment.GetEnvironmentVariable("TOKENMILL_SOAK_SECONDS"), out int s) && s > 0 ? s : 15;
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 128 });
        await server.StartAsync();
        var engine = await server.Ready;
        using var http = new HttpClient(new SocketsHttpHandler { MaxConnectionsPerServer = 512 }) { BaseAddress = server.BaseAddress, Timeout = TimeSpan.FromMinutes(5) };

        long heapBefore = GC.GetTotalMemory(forceFullCollection: true);
        long rssBefore = Process.GetCurrentProcess().WorkingSet64;
        int gen2Before = GC.CollectionCount(2);
        var pauseBefore = GC.GetTotalPauseDuration();

        // Aggregates only: a long soak makes hundreds of thousands of streams, and keeping each one would
        // itself look like a leak. Latencies go into 0.1 ms histograms; a few greedy streams are kept to compare.
        var ttftHist = new long[100_000];
        var itlHist = new long[100_000];
        static void Add(long[] hist, double ms) => Interlocked.Increment(ref hist[Math.Clamp((int)(ms * 10), 0, hist.Length - 1)]);
        long streams = 0;
        var failures = new ConcurrentQueue<Outcome>();
        var sample = new ConcurrentDictionary<(string, int), Outcome>();
        var stopAt = DateTime.UtcNow.AddSeconds(seconds);
        await Task.WhenAll(Enumerable.Range(0, 256).Select(client => Task.Run(async () =>
        {
            var random = new Random(client);
            while (DateTime.UtcNow < stopAt)
            {
                string prompt = LlmEngineTests.Prompts[random.Next(LlmEngineTests.Prompts.Length)];
                var o = await Stream(http, prompt, random.Next(1, 48), greedy: random.Next(2) == 0);
                Interlocked.Increment(ref streams);
                if (o.Error is not null || !o.Done || o.Finish is null) failures.Enqueue(o);
                Add(ttftHist, o.TtftMs);
                foreach (double ms in o.ItlMs) Add(itlHist, ms);
                if (o.Greedy && sample.Count < 40) sample.TryAdd((o.Prompt, o.MaxTokens), o);
            }
        })));

        Assert.True(failures.IsEmpty, $"{failures.Count} of {streams} streams lost or truncated, e.g. {failures.FirstOrDefault()}");
        await LlmEngineTests.WaitFor(() => engine.Stats is var st && st.FreeKvBlocks == st.TotalKvBlocks && st.Running == 0 && st.Waiting == 0);

        // A sample of greedy streams against the same request served alone.
        foreach (var o in sample.Values)
        {
            var alone = await Stream(http, o.Prompt, o.MaxTokens, greedy: true);
            Assert.Equal(alone.Text, o.Text);
        }

        static double P(long[] hist, double q)
        {
            long total = hist.Sum(), target = (long)Math.Ceiling(q * total), seen = 0;
            for (int i = 0; i < hist.Length; i++)
                if ((seen += hist[i]) >= target && total > 0) return i / 10.0;
            return 0;
        }
        long heapAfter = GC.GetTotalMemory(forceFullCollection: true);
        long rssAfter = Process.GetCurrentProcess().WorkingSet64;
        output.WriteLine($"{seconds} s, 256 clients: {streams} streams, {failures.Count} lost; {sample.Count} greedy streams equal to alone");
        output.WriteLine($"TTFT p50 {P(ttftHist, 0.5):F1} ms, p99 {P(ttftHist, 0.99):F1} ms; ITL p50 {P(itlHist, 0.5):F1} ms, p99 {P(itlHist, 0.99):F1} ms");
        output.WriteLine($"managed heap {heapBefore >> 20} → {heapAfter >> 20} MiB; RSS {rssBefore >> 20} → {rssAfter >> 20} MiB (server and clients share the process)");
        output.WriteLine($"gen2 collections {GC.CollectionCount(2) - gen2Before}, total GC pause {(GC.GetTotalPauseDuration() - pauseBefore).TotalMilliseconds:F0} ms");
        Assert.True(streams >= 256, "every client should have completed at least one stream");
        Assert.True(heapAfter - heapBefore < 64L << 20, $"the managed heap grew by {(heapAfter - heapBefore) >> 20} MiB");
    }
}

/// <summary>The soak measures the process's heap and memory: it runs alone, after the parallel tests, so no other test's objects count.</summary>
[CollectionDefinition(nameof(SoakCollection), DisableParallelization = true)]
public sealed class SoakCollection;
