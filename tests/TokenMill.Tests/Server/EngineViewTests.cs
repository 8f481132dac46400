using System.Diagnostics;
using System.Net;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using TokenMill.Core;
using TokenMill.KvCache;
using TokenMill.Models;
using TokenMill.Sampling;

namespace TokenMill.Tests.Server;

/// <summary>The engine snapshot behind the live view, its endpoints (/v1/engine/kv, /v1/engine/events) and the embedded playground files.</summary>
public class EngineViewTests
{
    const string ApiKey = "sk-view-test";
    const string SecretPrompt = "The password of the purple submarine is swordfish.";

    static string Stories => TestData.Require("models/stories260K.gguf");

    [SkippableFact]
    public async Task A_snapshot_shows_a_running_request_s_blocks_as_owned_and_after_it_only_free_and_cached_blocks()
    {
        using var model = GgufModelLoader.Load(Stories);
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, NumKvBlocks = 32 });
        long events = 0;
        engine.KvEvents += _ => events++; // engine thread; read below only from snapshots taken on that thread
        var idle = (await engine.SnapshotAsync()).KvCache;
        Assert.Equal(32, idle.Count(KvBlockState.Free));
        Assert.Empty(idle.Sequences);

        using var gate = new SemaphoreSlim(0);
        int steps = 0;
        engine.BeforeStepHook = () => { if (++steps == 20) gate.Wait(); }; // hold the request mid-decode
        var run = engine.CompleteAsync(new GenerationRequest
        {
            RequestId = "req-view", Prompt = LlmEngineTestsPrompt, Sampling = new SamplingParams { MaxTokens = 60, Temperature = 0, IgnoreEos = true },
        });
        await TokenMill.Tests.Core.LlmEngineTests.WaitFor(() => Volatile.Read(ref steps) >= 20);
        var snapshotTask = engine.SnapshotAsync(); // answered after the held step: the step is never interrupted
        await Task.Delay(50);
        Assert.False(snapshotTask.IsCompleted);
        gate.Release();
        var (stats, mid) = await snapshotTask;
        var seq = Assert.Single(mid.Sequences);
        Assert.Equal("req-view", seq.RequestId);
        Assert.True(seq.Running);
        // Blocks for every computed token; the token sampled last is computed next step, so its block may not exist yet.
        Assert.InRange(seq.Blocks.Length, KvCacheManager.BlocksFor(seq.PromptTokens + seq.OutputTokens - 1, 16),
            KvCacheManager.BlocksFor(seq.PromptTokens + seq.OutputTokens, 16));
        Assert.All(seq.Blocks, b => Assert.Equal(KvBlockState.Owned, mid.States[b]));
        Assert.Equal(seq.Blocks.Length, mid.Count(KvBlockState.Owned));
        Assert.Equal(stats.TotalKvBlocks - stats.FreeKvBlocks, mid.Count(KvBlockState.Owned) + mid.Count(KvBlockState.Shared));

        await run;
        var after = await engine.SnapshotAsync();
        Assert.Empty(after.KvCache.Sequences);
        Assert.Equal(0, after.KvCache.Count(KvBlockState.Owned) + after.KvCache.Count(KvBlockState.Shared));
        Assert.True(after.KvCache.Count(KvBlockState.Cached) > 0, "full blocks of a finished request stay in the prefix cache");
        Assert.Equal(after.Stats.CachedKvBlocks, after.KvCache.Count(KvBlockState.Cached));
        Assert.Equal(events, after.KvCache.EventCount);
    }

    const string LlmEngineTestsPrompt = "Once upon a time, there was a little girl named Lily.";

    [SkippableFact]
    public async Task Forks_of_one_request_show_their_prompt_blocks_as_shared()
    {
        using var model = GgufModelLoader.Load(Stories);
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, NumKvBlocks = 32 });
        using var gate = new SemaphoreSlim(0);
        int steps = 0;
        engine.BeforeStepHook = () => { if (++steps == 3) gate.Wait(); };
        // 40 prompt tokens: two full blocks the four choices share until each writes past them.
        var run = engine.CompleteChoicesAsync(new GenerationRequest
        {
            PromptTokenIds = Enumerable.Range(1, 40).Select(i => 10 + i).ToArray(), N = 4,
            Sampling = new SamplingParams { MaxTokens = 20, Temperature = 1, Seed = 7, IgnoreEos = true },
        });
        await TokenMill.Tests.Core.LlmEngineTests.WaitFor(() => Volatile.Read(ref steps) >= 3);
        var pending = engine.SnapshotAsync();
        gate.Release();
        var kv = (await pending).KvCache;
        Assert.Equal(4, kv.Sequences.Count);
        Assert.Equal(4, kv.Sequences.Select(s => s.Index).Distinct().Count());
        int[] prompt = kv.Sequences[0].Blocks[..2];
        Assert.All(kv.Sequences, s => Assert.Equal(prompt, s.Blocks[..2]));
        Assert.All(prompt, b => Assert.Equal(KvBlockState.Shared, kv.States[b]));
        await run;
    }

    static HttpClient Client(TokenMill.Server.Http.OpenAiServer server, string? key = ApiKey)
    {
        var http = new HttpClient { BaseAddress = server.BaseAddress };
        if (key is not null) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        return http;
    }

    [SkippableFact]
    public async Task The_kv_endpoint_needs_the_api_key_names_requests_by_id_and_never_shows_their_text()
    {
        await using var server = ServerFixture.Start(Stories, new EngineOptions { MaxModelLen = 128, NumKvBlocks = 40 }, ApiKey);
        await server.StartAsync();
        var engine = await server.Ready;
        using var http = Client(server);
        using var anonymous = Client(server, key: null);

        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync("/v1/engine/kv")).StatusCode);
        Assert.Equal(HttpStatusCode.Unauthorized, (await anonymous.GetAsync("/v1/engine/events")).StatusCode);
        var bad = await http.GetAsync("/v1/engine/kv?since=-1");
        Assert.Equal(HttpStatusCode.BadRequest, bad.StatusCode);
        Assert.Contains("'since' must be an event cursor", await bad.Content.ReadAsStringAsync());
        Assert.Equal(HttpStatusCode.BadRequest, (await http.GetAsync("/v1/engine/events?interval_ms=1")).StatusCode);

        // Each step waits up to 250 ms until the view has seen the chat (between steps, so snapshots are still answered):
        // the 50 tokens last 12 s of stalled polls at least. 72 prompt tokens + 50 generated fit the 128 of MaxModelLen.
        using var seen = new ManualResetEventSlim();
        engine.BeforeStepHook = () => seen.Wait(TimeSpan.FromMilliseconds(250));
        var body = JsonSerializer.Serialize(new { messages = new[] { new { role = "user", content = SecretPrompt } }, max_tokens = 50, ignore_eos = true });
        var chat = http.PostAsync("/v1/chat/completions", new StringContent(body, Encoding.UTF8, "application/json"));
        // Poll the view until it shows the running chat (a deadline, not a count of polls: CI machines stall).
        JsonElement frame = default;
        var deadline = System.Diagnostics.Stopwatch.StartNew();
        while (true)
        {
            frame = JsonDocument.Parse(await http.GetStringAsync("/v1/engine/kv")).RootElement.Clone();
            if (frame.GetProperty("sequences").GetArrayLength() == 1)
            {
                seen.Set();
                break;
            }
            if (chat.IsCompleted) Assert.Fail("the chat ended before the view saw it: " + await (await chat).Content.ReadAsStringAsync());
            Assert.True(deadline.Elapsed < TimeSpan.FromSeconds(30), "the view never showed the running chat within 30 s: " + frame.GetRawText());
            await Task.Delay(10);
        }
        string json = frame.GetRawText();
        Assert.DoesNotContain("submarine", json);
        Assert.DoesNotContain("swordfish", json);
        var seq = frame.GetProperty("sequences")[0];
        Assert.StartsWith("chatcmpl-", seq.GetProperty("request_id").GetString());
        Assert.Equal("running", seq.GetProperty("state").GetString());
        string map = frame.GetProperty("blocks").GetString()!;
        Assert.Equal(40, map.Length);
        Assert.Equal(frame.GetProperty("num_blocks").GetInt32(), map.Length);
        Assert.Equal("f32", frame.GetProperty("kv_cache_dtype").GetString());
        foreach (var b in seq.GetProperty("blocks").EnumerateArray()) Assert.Equal('o', map[b.GetInt32()]);
        var counts = frame.GetProperty("counts");
        Assert.Equal(map.Count(c => c == 'o'), counts.GetProperty("owned").GetInt32());
        Assert.Equal(40, new[] { "free", "cached", "owned", "shared" }.Sum(k => counts.GetProperty(k).GetInt32()));
        Assert.Equal(HttpStatusCode.OK, (await chat).StatusCode);
    }

    [SkippableFact]
    public async Task Event_frames_count_exactly_the_evictions_between_snapshots()
    {
        // 16 blocks of 16 tokens and distinct 40-token prompts: every request after the first few evicts cached blocks.
        await using var server = ServerFixture.Start(Stories, new EngineOptions { MaxModelLen = 128, NumKvBlocks = 16 });
        await server.StartAsync();
        var engine = await server.Ready;
        engine.BeforeStepHook = () => Thread.Sleep(2);
        using var http = Client(server, key: null);
        using var response = await http.GetAsync("/v1/engine/events?interval_ms=50", HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal("text/event-stream", response.Content.Headers.ContentType!.MediaType);
        using var reader = new StreamReader(await response.Content.ReadAsStreamAsync());

        var load = Task.Run(async () =>
        {
            for (int i = 0; i < 12; i++)
            {
                var body = JsonSerializer.Serialize(new { prompt = Enumerable.Range(0, 40).Select(t => 20 + (t * 7 + i * 13) % 400).ToArray(), max_tokens = 20, ignore_eos = true });
                (await http.PostAsync("/v1/completions", new StringContent(body, Encoding.UTF8, "application/json"))).EnsureSuccessStatusCode();
            }
        });
        long firstEvictions = -1, lastEvictions = 0, evictedEvents = 0, lastCursor = -1;
        while (!(load.IsCompleted && lastEvictions == engine.Stats.KvEvictions && lastEvictions > 0))
        {
            string? line = await reader.ReadLineAsync().WaitAsync(TimeSpan.FromSeconds(10));
            if (line is null || !line.StartsWith("data: ", StringComparison.Ordinal)) continue;
            var frame = JsonDocument.Parse(line[6..]).RootElement;
            long evictions = frame.GetProperty("evictions").GetInt64();
            var events = frame.GetProperty("events");
            Assert.False(events.GetProperty("lost").GetBoolean());
            long cursor = events.GetProperty("cursor").GetInt64();
            Assert.True(cursor >= lastCursor);
            if (firstEvictions < 0) firstEvictions = evictions; // the first frame reports no events from before it
            else evictedEvents += events.GetProperty("evicted").GetInt64();
            lastEvictions = evictions;
            lastCursor = cursor;
        }
        await load;
        Assert.True(lastEvictions > 0);
        // Counters and events come from the same moment: the evicted events of all frames add up to the counter's growth.
        Assert.Equal(lastEvictions - firstEvictions, evictedEvents);
    }

    [SkippableFact]
    public async Task The_playground_is_served_at_the_root_with_a_strict_content_policy_and_no_ui_turns_it_off()
    {
        await using var server = ServerFixture.Start(Stories, new EngineOptions { MaxModelLen = 128 }, ApiKey);
        await server.StartAsync();
        await server.Ready;
        using var anonymous = Client(server, key: null);
        var page = await anonymous.GetAsync("/"); // the page holds no data: it asks for the key itself
        Assert.Equal(HttpStatusCode.OK, page.StatusCode);
        Assert.Equal("text/html", page.Content.Headers.ContentType!.MediaType);
        Assert.Contains("default-src 'self'", page.Headers.GetValues("Content-Security-Policy").Single());
        string html = await page.Content.ReadAsStringAsync();
        Assert.DoesNotContain("http://", html);
        Assert.DoesNotContain("https://", html); // nothing from a CDN
        foreach (string file in new[] { "app.js", "style.css" })
        {
            var r = await anonymous.GetAsync("/ui/" + file);
            Assert.Equal(HttpStatusCode.OK, r.StatusCode);
            Assert.Contains("/ui/" + file, html);
        }
        Assert.Equal(HttpStatusCode.NotFound, (await anonymous.GetAsync("/ui/missing.js")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await anonymous.GetAsync("/ui/..%2Fapp.js")).StatusCode);

        await using var noUi = ServerFixture.Start(Stories, new EngineOptions { MaxModelLen = 128 }, configure: o => o with { EnableUi = false });
        await noUi.StartAsync();
        await noUi.Ready;
        using var plain = Client(noUi, key: null);
        Assert.Equal(HttpStatusCode.NotFound, (await plain.GetAsync("/")).StatusCode);
        Assert.Equal(HttpStatusCode.NotFound, (await plain.GetAsync("/ui/app.js")).StatusCode);
        Assert.Equal(HttpStatusCode.OK, (await plain.GetAsync("/v1/engine/kv")).StatusCode);
    }

    [SkippableFact]
    public async Task An_open_engine_view_stream_does_not_hold_up_shutdown()
    {
        // The drain waits up to 20 s for requests in flight; a watcher is not one, so shutdown takes well under that.
        var server = ServerFixture.Start(Stories, new EngineOptions { MaxModelLen = 128 }, shutdownTimeout: TimeSpan.FromSeconds(20));
        await server.StartAsync();
        await server.Ready;
        using var http = Client(server, key: null);
        using var stream = await http.GetAsync("/v1/engine/events", HttpCompletionOption.ResponseHeadersRead);
        Assert.Equal(HttpStatusCode.OK, stream.StatusCode);
        var clock = Stopwatch.StartNew();
        await server.DisposeAsync();
        Assert.True(clock.Elapsed < TimeSpan.FromSeconds(5), $"shutdown took {clock.Elapsed}");
    }
}
