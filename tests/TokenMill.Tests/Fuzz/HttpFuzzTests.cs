using System.Diagnostics;
using System.Net.Http.Headers;
using System.Text;
using TokenMill.Chat;
using TokenMill.Core;
using TokenMill.Tests.Core;
using TokenMill.Tests.Server;
using Xunit.Abstractions;

namespace TokenMill.Tests.Fuzz;

/// <summary>
/// Every endpoint fuzzed from the API's own request schema: each request takes an endpoint's fields
/// (and some it does not have) with hostile values — wrong types, huge and negative numbers, deep
/// nesting, multi-megabyte strings, invalid UTF-8, huge <c>n</c> / <c>max_tokens</c> / <c>logprobs</c> /
/// <c>top_logprobs</c>, long stop lists and logit_bias maps, token-id prompts out of range — plus wrong
/// methods, query strings and bodies on GET endpoints. Asserted: no 5xx, no request over its time
/// limit, every 4xx a JSON error, managed heap bounded, no KV block left allocated.
/// </summary>
// Not beside other classes: its heap bound is measured over the whole process, which their objects would swell.
[Collection(nameof(TokenMill.Tests.Server.SoakCollection))]
[Trait("Category", "Fuzz")]
public class HttpFuzzTests(ITestOutputHelper output)
{
    sealed record Endpoint(string Method, string Path, string[] Fields, Func<Random, string>? ValidBase);

    static readonly string Deep = new string('[', 10_000) + new string(']', 10_000);
    static readonly string DeepObject = string.Concat(Enumerable.Repeat("{\"a\":", 5_000)) + "1" + new string('}', 5_000);

    static readonly string[] Hostile =
    [
        "null", "true", "false", "-1", "0", "1", "2", "3.5", "-0", "1e-400", "-1e308", "1e308", "1e400", "9223372036854775807",
        "-9223372036854775808", "18446744073709551616", "2147483647", "-2147483648", "2147483648", "1000000", "65536",
        "\"\"", "\"x\"", "\"Lily\"", "\"5\"", "[]", "[1,2,3]", "[\"a\",\"b\"]", "{}", "{\"a\":1}", "[[1,2],[3]]", "[[]]",
        "[[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]", "\"\\ud800\"", "\"\\udc00\\ud800\"", "\"\\u0000\"", "\"<|im_start|>\"", "\"</s><s>\"",
        "[" + string.Join(",", Enumerable.Repeat("\"stop\"", 300)) + "]",
        "[" + string.Join(",", Enumerable.Repeat("\"\"", 3)) + "]",
        "{" + string.Join(",", Enumerable.Range(0, 2000).Select(i => $"\"{i}\":1")) + "}",
        "{\"-1\":100,\"99999999\":-100,\"x\":1,\"1\":1e400}",
        "\"" + new string('a', 20_000) + "\"", "[" + string.Join(",", Enumerable.Range(0, 3000)) + "]",
        "[-1,0,1]", "[2147483647]", "[0,9999999999]", "[1.5,2]", "[[-1],[2147483647]]", "[\"a\",1,null]",
        "{\"include_usage\":\"yes\"}", "{\"include_usage\":true,\"x\":[1]}", "{\"type\":\"json_object\"}",
    ];

    // Rare and expensive: multi-megabyte strings and lists, nesting far past the JSON reader's depth limit.
    static readonly Func<string>[] Huge =
    [
        () => "\"" + new string('a', 3 << 20) + "\"",
        () => "\"" + string.Concat(Enumerable.Repeat("Once upon a time ", 150_000)) + "\"",
        () => "\"" + string.Concat(Enumerable.Repeat("\\ud83e\\udd99\\u00e9", 200_000)) + "\"",
        () => "[" + string.Join(",", Enumerable.Repeat("1", 500_000)) + "]",
        () => "[" + string.Join(",", Enumerable.Repeat("\"s\"", 200_000)) + "]",
        () => "{" + string.Join(",", Enumerable.Range(0, 200_000).Select(i => $"\"{i}\":-100")) + "}",
        () => Deep,
        () => DeepObject,
    ];

    static readonly string[] CompletionFields =
        ["model", "prompt", "max_tokens", "temperature", "top_p", "top_k", "min_p", "n", "stream", "stream_options", "logprobs", "echo",
         "stop", "seed", "presence_penalty", "frequency_penalty", "repetition_penalty", "logit_bias", "user", "suffix", "best_of",
         "min_tokens", "ignore_eos", "stop_token_ids", "priority", "use_beam_search", "beam_width", "length_penalty", "cache_salt"];

    static readonly string[] ChatFields =
        ["model", "messages", "max_tokens", "max_completion_tokens", "temperature", "top_p", "top_k", "n", "stream", "stream_options",
         "logprobs", "top_logprobs", "stop", "seed", "logit_bias", "user", "tools", "response_format", "add_generation_prompt",
         "chat_template_kwargs", "priority", "ignore_eos", "min_tokens", "stop_token_ids", "use_beam_search", "best_of"];

    static readonly string[] Messages =
    [
        "[{\"role\":\"user\",\"content\":\"Hi\"}]", "[{\"role\":\"user\"}]", "[{\"content\":\"x\"}]", "[{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"a\"}]}]",
        "[{\"role\":\"user\",\"content\":[{\"type\":\"image_url\"}]}]", "[{\"role\":\"user\",\"content\":5}]", "[1]", "[]",
        "[{\"role\":\"wizard\",\"content\":\"x\"}]", "[{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"id\":\"1\",\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":\"{\\\"a\\\":\"}}]}]",
        "[{\"role\":\"tool\",\"content\":\"x\",\"tool_call_id\":[1]}]", "[{\"role\":\"user\",\"content\":\"" + new string('x', 100_000) + "\"}]",
    ];

    static readonly string[] Prompts =
    [
        "\"Once upon a time\"", "[\"Once\",\"upon\"]", "[1,2,3]", "[[1,2],[3,4]]", "[-1]", "[2147483647]", "[512]", "[]", "[[]]", "\"\"",
        "[" + string.Join(",", Enumerable.Range(0, 400)) + "]", // longer than the context
    ];

    static readonly Endpoint[] Endpoints =
    [
        new("POST", "/v1/completions", CompletionFields, r => $"\"prompt\":{Prompts[r.Next(Prompts.Length)]},\"max_tokens\":{r.Next(1, 9)},"),
        new("POST", "/v1/chat/completions", ChatFields, r => $"\"messages\":{Messages[r.Next(Messages.Length)]},\"max_tokens\":{r.Next(1, 9)},"),
        new("POST", "/tokenize", ["model", "prompt", "messages", "add_special_tokens", "add_generation_prompt", "tools", "chat_template_kwargs"],
            r => r.Next(2) == 0 ? $"\"prompt\":{Prompts[r.Next(Prompts.Length)]}," : $"\"messages\":{Messages[r.Next(Messages.Length)]},"),
        new("POST", "/detokenize", ["model", "tokens"], r => $"\"tokens\":{Prompts[r.Next(Prompts.Length)]},"),
        new("GET", "/v1/models", ["limit", "after", "model"], null),
        new("GET", "/health", ["verbose", "model"], null),
        new("GET", "/metrics", ["name[]", "format"], null),
    ];

    [SkippableFact]
    public async Task Hostile_requests_to_every_endpoint_never_get_a_server_error_or_hang()
    {
        // A 4 MiB body limit as `serve` has by default, so multi-megabyte values are parsed, and larger ones get 413.
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 128 }, maxBody: 4 << 20);
        await server.StartAsync();
        var engine = await server.Ready;
        var perRequest = TimeSpan.FromSeconds(30);
        using var http = new HttpClient { BaseAddress = server.BaseAddress, Timeout = Timeout.InfiniteTimeSpan };
        int seed = FuzzSettings.Seed(4242);
        var random = new Random(seed);
        int iterations = FuzzSettings.Iterations(ciDefault: 300);
        var statuses = new SortedDictionary<string, int>(StringComparer.Ordinal);
        long warmHeap = 0, warmSmallObjects = 0, peakHeap = 0, warmRss = 0, bytesSent = 0;
        var slowest = TimeSpan.Zero;
        var trajectory = new List<long>(); // MiB after a full collection, every tenth of the run
        var clock = Stopwatch.StartNew();

        for (int i = 0; i < iterations; i++)
        {
            if (i == Math.Min(50, iterations / 4))
            {
                warmHeap = GC.GetTotalMemory(forceFullCollection: true);
                warmSmallObjects = SmallObjectHeapAfterFullGc();
                warmRss = Environment.WorkingSet;
            }
            var endpoint = Endpoints[random.Next(Endpoints.Length)];
            var (method, body) = Build(endpoint, random);
            using var request = new HttpRequestMessage(new HttpMethod(method), endpoint.Path + Query(endpoint, random));
            if (body is not null)
            {
                request.Content = new ByteArrayContent(body);
                request.Content.Headers.ContentType = new MediaTypeHeaderValue(random.Next(20) == 0 ? "text/plain" : "application/json");
                bytesSent += body.Length;
            }
            string described = $"request {i} (seed {seed}): {method} {endpoint.Path} {(body is null ? "" : Encoding.UTF8.GetString(body, 0, Math.Min(300, body.Length)))}";

            using var timeout = new CancellationTokenSource(perRequest);
            var started = Stopwatch.StartNew();
            int status;
            string text;
            try
            {
                using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead, timeout.Token);
                status = (int)response.StatusCode;
                text = await response.Content.ReadAsStringAsync(timeout.Token); // streams too: read to the end
            }
            catch (OperationCanceledException) when (timeout.IsCancellationRequested)
            {
                Assert.Fail($"{described} → no complete response within {perRequest.TotalSeconds} s");
                return;
            }
            catch (HttpRequestException e) when (e.InnerException is IOException && body is { Length: > 1 << 20 })
            {
                // Kestrel answers a large body it will not read (413 over the limit, 405, 404) at once and closes
                // the connection, as HTTP/1.1 allows: the client, still uploading, sees a broken pipe, not the status.
                string closed = $"{endpoint.Method} {endpoint.Path} → closed while a {body.Length >> 20} MiB+ body was uploading";
                statuses[closed] = statuses.GetValueOrDefault(closed) + 1;
                continue;
            }
            if (started.Elapsed > slowest) slowest = started.Elapsed;
            string key = $"{endpoint.Method} {endpoint.Path} → {status}";
            statuses[key] = statuses.GetValueOrDefault(key) + 1;
            Assert.True(status < 500, $"{described} → {status}: {text[..Math.Min(300, text.Length)]}");
            if (status >= 400 && status != 404 && status != 405) Assert.Contains("\"error\"", text);
            if (i % 64 == 0) peakHeap = Math.Max(peakHeap, GC.GetTotalMemory(false));
            if (i > 0 && i % Math.Max(1, iterations / 10) == 0) trajectory.Add(GC.GetTotalMemory(forceFullCollection: true) >> 20);
        }

        await LlmEngineTests.WaitFor(() => engine.Stats is var s && s.FreeKvBlocks == s.TotalKvBlocks && s.Running == 0 && s.Waiting == 0);
        var idle = new List<string>();
        for (int waited = 10; waited <= FuzzSettings.IdleSeconds; waited += 10)
        {
            await Task.Delay(TimeSpan.FromSeconds(10));
            long heap = GC.GetTotalMemory(forceFullCollection: true);
            idle.Add($"{waited} s: {heap >> 20}");
        }
        long endHeap = GC.GetTotalMemory(forceFullCollection: true);
        long endRss = Environment.WorkingSet;
        output.WriteLine($"{iterations:N0} requests, seed {seed}, {bytesSent / (1 << 20):N0} MiB sent, {clock.Elapsed.TotalSeconds:F1} s, slowest {slowest.TotalMilliseconds:F0} ms; "
                         + $"managed heap after GC {warmHeap >> 20} → {endHeap >> 20} MiB (peak seen {peakHeap >> 20} MiB), RSS {warmRss >> 20} → {endRss >> 20} MiB; "
                         + $"KV blocks free {engine.Stats.FreeKvBlocks}/{engine.Stats.TotalKvBlocks}");
        output.WriteLine($"  heap after GC every tenth of the run (MiB): {string.Join(" ", trajectory)}");
        if (idle.Count > 0) output.WriteLine($"  heap after GC while idle after the run (MiB): {string.Join(", ", idle)}");
        var gc = GC.GetGCMemoryInfo(GCKind.FullBlocking).GenerationInfo;
        output.WriteLine($"  after the last full GC (MiB): gen0-2 {(gc[0].SizeAfterBytes + gc[1].SizeAfterBytes + gc[2].SizeAfterBytes) >> 20}, "
                         + $"large-object heap {gc[3].SizeAfterBytes >> 20} (fragmentation {gc[3].FragmentationAfterBytes >> 20}), pinned-object heap {gc[4].SizeAfterBytes >> 20}; "
                         + $"small-object heap at the warm point {warmSmallObjects >> 20}");
        foreach (var (k, n) in statuses) output.WriteLine($"  {n,7:N0}  {k}");

        Assert.True(statuses.Keys.Any(k => k.EndsWith("→ 200", StringComparison.Ordinal)) && statuses.Keys.Any(k => k.Contains("→ 4", StringComparison.Ordinal)),
            $"statuses seen: {string.Join(", ", statuses)}");
        // Bounded memory: objects of ordinary size (every request's own) do not pile up. The large-object heap is
        // reported, not asserted: after multi-megabyte requests it holds pooled buffers that level off (README).
        long smallObjectGrowth = SmallObjectHeapAfterFullGc() - warmSmallObjects;
        Assert.True(smallObjectGrowth < 32 << 20, $"the small-object heap grew {smallObjectGrowth >> 20} MiB over {iterations} requests");
    }

    /// <summary>Generations 0–2 after the last full blocking collection: objects under 85,000 bytes.</summary>
    static long SmallObjectHeapAfterFullGc()
    {
        var g = GC.GetGCMemoryInfo(GCKind.FullBlocking).GenerationInfo;
        return g[0].SizeAfterBytes + g[1].SizeAfterBytes + g[2].SizeAfterBytes;
    }

    static (string Method, byte[]? Body) Build(Endpoint e, Random r)
    {
        // Now and then the wrong method, or a body where none belongs.
        string method = r.Next(25) == 0 ? (e.Method == "GET" ? "POST" : r.Next(2) == 0 ? "GET" : "PUT") : e.Method;
        if (e.Method == "GET" && r.Next(4) != 0) return (method, null);

        var body = new StringBuilder("{");
        // A valid base most of the time and zero to three hostile fields on top, so that deeper checks are reached.
        if (e.ValidBase is not null && r.Next(5) > 0) body.Append(e.ValidBase(r));
        int count = r.Next(0, 4);
        for (int k = 0; k < count; k++)
        {
            // Mostly the endpoint's own fields, sometimes another endpoint's or an unknown one.
            string field = r.Next(10) switch
            {
                0 => Endpoints[r.Next(Endpoints.Length)].Fields is var f ? f[r.Next(f.Length)] : "",
                1 => "x_" + r.Next(1000),
                _ => e.Fields[r.Next(e.Fields.Length)],
            };
            string value = r.Next(40) == 0 ? Huge[r.Next(Huge.Length)]()
                : field == "messages" && r.Next(2) == 0 ? Messages[r.Next(Messages.Length)]
                : field is "prompt" or "tokens" && r.Next(2) == 0 ? Prompts[r.Next(Prompts.Length)]
                : Hostile[r.Next(Hostile.Length)];
            body.Append('"').Append(field).Append("\":").Append(value).Append(',');
        }
        if (body[^1] == ',') body.Length--;
        body.Append('}');
        byte[] bytes = Encoding.UTF8.GetBytes(body.ToString());
        switch (r.Next(20))
        {
            case 0: bytes[r.Next(bytes.Length)] = 0xFF; break;                            // invalid UTF-8
            case 1: bytes[r.Next(bytes.Length)] = (byte)"\xC3\xE2\xF0\x80"[r.Next(4)]; break; // a cut multi-byte sequence
            case 2: bytes = bytes[..r.Next(bytes.Length)]; break;                         // truncated JSON
            case 3: bytes = Encoding.UTF8.GetBytes(Hostile[r.Next(Hostile.Length)]); break; // not an object at all
        }
        return (method, bytes);
    }

    static string Query(Endpoint e, Random r) => r.Next(8) != 0 ? "" : r.Next(3) switch
    {
        0 => "?" + e.Fields[r.Next(e.Fields.Length)] + "=" + Uri.EscapeDataString(Hostile[r.Next(Hostile.Length)] is var v && v.Length > 200 ? v[..200] : v),
        1 => "?%ff%fe=%c3&&==&a[]=1",
        _ => "?" + new string('q', 4000),
    };

    [SkippableFact]
    public async Task A_conversation_that_drives_the_chat_template_past_a_limit_is_a_400_naming_it()
    {
        await using var server = ServerFixture.Start(TestData.Require("models/stories260K.gguf"), new EngineOptions { MaxModelLen = 128 },
            configure: o => o with { ChatTemplateLimits = new ChatTemplateLimits { MaxOutputChars = 1000 } });
        await server.StartAsync();
        var engine = await server.Ready;
        using var http = new HttpClient { BaseAddress = server.BaseAddress };
        foreach (string path in new[] { "/v1/chat/completions", "/tokenize" })
        {
            using var content = new StringContent($"{{\"messages\":[{{\"role\":\"user\",\"content\":\"{new string('a', 2000)}\"}}],\"max_tokens\":2}}", Encoding.UTF8, "application/json");
            using var response = await http.PostAsync(path, content);
            string text = await response.Content.ReadAsStringAsync();
            Assert.Equal(400, (int)response.StatusCode);
            Assert.Contains("ChatTemplateLimits.MaxOutputChars", text);
        }
        using var small = new StringContent("{\"messages\":[{\"role\":\"user\",\"content\":\"Hi\"}],\"max_tokens\":2}", Encoding.UTF8, "application/json");
        Assert.Equal(200, (int)(await http.PostAsync("/v1/chat/completions", small)).StatusCode);
        await LlmEngineTests.WaitFor(() => engine.Stats is var s && s.FreeKvBlocks == s.TotalKvBlocks && s.Running == 0);
    }
}
