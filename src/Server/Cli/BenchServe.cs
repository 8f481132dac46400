using System.Diagnostics;
using System.Globalization;
using System.Net.Http.Headers;
using System.Text;
using System.Text.Json;
using System.Text.Json.Nodes;

namespace TokenMill.Server.Cli;

/// <summary>
/// <c>tokenmill bench serve</c>: a load generator for any OpenAI-compatible endpoint (ours, llama-server,
/// vLLM). Streams every request and measures, per request, time to first token (TTFT), inter-token
/// latency (ITL, between streamed chunks), time per output token (TPOT, decode time / (tokens − 1))
/// and end-to-end latency — with vLLM's <c>benchmark_serving</c> definitions.
/// </summary>
public static class BenchServe
{
    public const string Help = """
        usage: tokenmill bench serve --base-url URL [options]

          --base-url URL         server root, e.g. http://127.0.0.1:8000
          --endpoint PATH        /v1/completions (default) or /v1/chat/completions
          --model NAME           model name sent with each request (default: the first of /v1/models)
          --api-key KEY          sent as 'Authorization: Bearer KEY'
          --num-prompts N        requests in all (default 64)
          --concurrency C        requests in flight at once (default 32)
          --request-rate R       Poisson arrivals at R requests/s instead of a fixed concurrency cap (still capped by -c)
          --dataset D            'random' (default) or a ShareGPT-format JSON file (conversations[0] is the prompt)
          --input-len N          words per random prompt (default 128)
          --output-len N         max_tokens per request, with ignore_eos (default 128)
          --seed S               seed of prompts and arrivals (default 0)
          --goodput-ttft-ms T    count a request as good only if its TTFT ≤ T ms
          --goodput-tpot-ms T    … and its TPOT ≤ T ms
          --hourly-cost USD      machine cost per hour, for cost per million output tokens
          --output-json F        write the full result as JSON
          --chart F.png          draw a PNG: request timeline, streamed chunks/s over time, TTFT and ITL distributions
          --no-progress          no progress bar on stderr

        example: tokenmill bench serve --base-url http://127.0.0.1:8000 --concurrency 16 --num-prompts 64
        """;

    // A fixed vocabulary of common words: prompts of a predictable length whatever the server's tokenizer.
    static readonly string[] Words =
        ("the of and to in is was he for it with as his on be at by had that are but from or have an they which one you were all her she there " +
         "would their we him been has when who will no more if out so up said what its about than into them can only other time new some could " +
         "these two may first then do any like my now over such our man me even most made after also did many off before must well back through " +
         "years much where your way down should because long each just state people high during little world own very part came home story once upon girl park")
        .Split(' ');

    sealed record RequestResult(bool Ok, string? Error, double TtftMs, double E2eMs, double TpotMs, int PromptTokens, int OutputTokens,
        List<double> ItlMs, double StartS, double EndS, bool Done);

    public static int Run(CliArguments a, TextWriter stdout, TextWriter stderr)
    {
        string baseUrl = a.String("base-url") ?? throw new UsageException("--base-url is required (e.g. http://127.0.0.1:8000)");
        if (!Uri.TryCreate(baseUrl, UriKind.Absolute, out var root) || root.Scheme is not ("http" or "https"))
            throw new UsageException($"--base-url must be an http(s) URL, got '{baseUrl}'");
        string endpoint = a.String("endpoint") ?? "/v1/completions";
        bool chat = endpoint.Contains("chat", StringComparison.Ordinal);
        int numPrompts = a.Int("num-prompts", 64, min: 1);
        int concurrency = a.Int("concurrency", 32, min: 1);
        double? rate = a.String("request-rate") is null ? null : a.Float("request-rate", 1, min: 0.001f);
        int inputLen = a.Int("input-len", 128, min: 1);
        int outputLen = a.Int("output-len", 128, min: 1);
        var random = new Random(a.Int("seed", 0, min: 0));
        bool progress = !a.Flag("no-progress");
        foreach (var option in new[] { "output-json", "chart" })
            if (a.String(option) is { } file && Path.GetDirectoryName(Path.GetFullPath(file)) is { } dir && !Directory.Exists(dir))
                throw new UsageException($"--{option} {file}: the folder {dir} does not exist"); // found now, not after the run

        using var http = new HttpClient { BaseAddress = root, Timeout = TimeSpan.FromMinutes(30) };
        if (a.String("api-key") is { } key) http.DefaultRequestHeaders.Authorization = new AuthenticationHeaderValue("Bearer", key);
        string model = a.String("model") ?? FirstModel(http);
        var prompts = a.String("dataset") is { } d and not "random" ? ShareGpt(d, numPrompts, random) : RandomPrompts(numPrompts, inputLen, random);

        var results = new RequestResult[numPrompts];
        var gate = new SemaphoreSlim(concurrency);
        int finished = 0;
        var clock = Stopwatch.StartNew();
        var tasks = new List<Task>();
        double nextArrival = 0;
        for (int i = 0; i < numPrompts; i++)
        {
            if (rate is { } r)
            {
                nextArrival += -Math.Log(1 - random.NextDouble()) / r; // exponential gaps: Poisson arrivals
                var wait = TimeSpan.FromSeconds(nextArrival) - clock.Elapsed;
                if (wait > TimeSpan.Zero) Thread.Sleep(wait);
            }
            gate.Wait();
            int index = i;
            tasks.Add(Task.Run(async () =>
            {
                try
                {
                    results[index] = await Send(http, endpoint, chat, model, prompts[index], outputLen, clock).ConfigureAwait(false);
                }
                finally
                {
                    gate.Release();
                    Interlocked.Increment(ref finished);
                    // The count read under the writer's lock, so that a slower thread never draws an older count last.
                    if (progress) lock (stderr) Progress(stderr, Volatile.Read(ref finished), numPrompts);
                }
            }));
        }
        Task.WaitAll([.. tasks]);
        double duration = clock.Elapsed.TotalSeconds;
        if (progress) stderr.WriteLine();

        var result = Summarize(results, duration, a, endpoint, model, concurrency, rate);
        Print(result, stdout);
        if (a.String("output-json") is { } path) File.WriteAllText(path, result.ToJsonString(new JsonSerializerOptions { WriteIndented = true }));
        if (a.String("chart") is { } chart)
        {
            string title = string.Create(CultureInfo.InvariantCulture,
                $"BENCH SERVE: {numPrompts} REQUESTS, CONCURRENCY {concurrency}, {(double)result["output_tokens_per_s"]!:F1} OUTPUT TOK/S");
            BenchChart.Render([.. results.Select(r => new BenchChart.Request(r.Ok, r.StartS, r.StartS + r.TtftMs / 1000, r.EndS, r.ItlMs))], title)
                .SavePng(chart);
            stdout.WriteLine($"  chart written to {chart}");
        }
        return results.All(r => r.Ok) ? Cli.ExitOk : Cli.ExitFailure;
    }

    static string FirstModel(HttpClient http)
    {
        try
        {
            var json = JsonDocument.Parse(http.GetStringAsync("/v1/models").GetAwaiter().GetResult()).RootElement;
            return json.GetProperty("data")[0].GetProperty("id").GetString()!;
        }
        catch (Exception e) when (e is HttpRequestException or JsonException or KeyNotFoundException or InvalidOperationException or IndexOutOfRangeException)
        {
            throw new InvalidOperationException($"cannot read the model name from {http.BaseAddress}v1/models ({e.Message}); pass --model", e);
        }
    }

    static string[] RandomPrompts(int n, int words, Random random) =>
        [.. Enumerable.Range(0, n).Select(_ => string.Join(' ', Enumerable.Range(0, words).Select(_ => Words[random.Next(Words.Length)])))];

    static string[] ShareGpt(string file, int n, Random random)
    {
        if (!File.Exists(file)) throw new FileNotFoundException($"{file}: no such dataset file", file);
        var prompts = new List<string>();
        foreach (var item in JsonDocument.Parse(File.ReadAllText(file)).RootElement.EnumerateArray())
            if (item.TryGetProperty("conversations", out var c) && c.GetArrayLength() > 0 && c[0].TryGetProperty("value", out var v))
                prompts.Add(v.GetString() ?? "");
        if (prompts.Count == 0) throw new InvalidDataException($"{file} has no ShareGPT conversations (expected [{{\"conversations\":[{{\"value\":…}}]}}])");
        return [.. Enumerable.Range(0, n).Select(_ => prompts[random.Next(prompts.Count)])];
    }

    static async Task<RequestResult> Send(HttpClient http, string endpoint, bool chat, string model, string prompt, int maxTokens, Stopwatch clock)
    {
        var body = new JsonObject
        {
            ["model"] = model,
            ["max_tokens"] = maxTokens,
            ["stream"] = true,
            ["stream_options"] = new JsonObject { ["include_usage"] = true },
            ["ignore_eos"] = true,
            ["temperature"] = 0,
        };
        if (chat) body["messages"] = new JsonArray(new JsonObject { ["role"] = "user", ["content"] = prompt });
        else body["prompt"] = prompt;

        double start = clock.Elapsed.TotalSeconds;
        var itl = new List<double>();
        double? first = null, last = null;
        int outputTokens = 0, promptTokens = 0, contentChunks = 0;
        bool done = false;
        try
        {
            using var request = new HttpRequestMessage(HttpMethod.Post, endpoint) { Content = new StringContent(body.ToJsonString(), Encoding.UTF8, "application/json") };
            using var response = await http.SendAsync(request, HttpCompletionOption.ResponseHeadersRead).ConfigureAwait(false);
            if (!response.IsSuccessStatusCode)
                return Failed($"HTTP {(int)response.StatusCode}: {await response.Content.ReadAsStringAsync().ConfigureAwait(false)}");
            using var reader = new StreamReader(await response.Content.ReadAsStreamAsync().ConfigureAwait(false));
            while (await reader.ReadLineAsync().ConfigureAwait(false) is { } line)
            {
                if (!line.StartsWith("data: ", StringComparison.Ordinal)) continue;
                string data = line[6..];
                if (data == "[DONE]") { done = true; break; }
                var e = JsonDocument.Parse(data).RootElement;
                if (e.TryGetProperty("usage", out var u) && u.ValueKind == JsonValueKind.Object)
                {
                    outputTokens = u.GetProperty("completion_tokens").GetInt32();
                    promptTokens = u.GetProperty("prompt_tokens").GetInt32();
                }
                if (!e.TryGetProperty("choices", out var ch) || ch.GetArrayLength() == 0) continue;
                var c0 = ch[0];
                string? text = chat
                    ? c0.TryGetProperty("delta", out var delta) && delta.TryGetProperty("content", out var t) ? t.GetString() : null
                    : c0.TryGetProperty("text", out var tx) ? tx.GetString() : null;
                if (string.IsNullOrEmpty(text)) continue;
                double now = clock.Elapsed.TotalSeconds;
                if (first is null) first = now; else itl.Add((now - last!.Value) * 1000);
                last = now;
                contentChunks++;
            }
        }
        catch (Exception e) when (e is HttpRequestException or IOException or JsonException or TaskCanceledException)
        {
            return Failed(e.Message);
        }
        double end = clock.Elapsed.TotalSeconds;
        if (first is null) return Failed("the stream carried no content");
        if (outputTokens == 0) outputTokens = contentChunks; // a server without usage in streams: count chunks
        double ttft = (first.Value - start) * 1000, e2e = (end - start) * 1000;
        double tpot = outputTokens > 1 ? (e2e - ttft) / (outputTokens - 1) : 0;
        return new RequestResult(done, done ? null : "the stream ended without [DONE]", ttft, e2e, tpot, promptTokens, outputTokens, itl, start, end, done);

        RequestResult Failed(string error) =>
            new(false, error, 0, (clock.Elapsed.TotalSeconds - start) * 1000, 0, 0, 0, [], start, clock.Elapsed.TotalSeconds, false);
    }

    static void Progress(TextWriter stderr, int done, int total)
    {
        const int Width = 40;
        int filled = done * Width / total;
        lock (stderr) stderr.Write($"\r[{new string('#', filled)}{new string('.', Width - filled)}] {done}/{total}");
    }

    static JsonObject Stats(IEnumerable<double> values)
    {
        var v = values.Order().ToArray();
        if (v.Length == 0) return new JsonObject { ["mean"] = 0, ["p50"] = 0, ["p90"] = 0, ["p99"] = 0 };
        double P(double q) => v[Math.Min(v.Length - 1, (int)Math.Ceiling(q * v.Length) - 1 < 0 ? 0 : (int)Math.Ceiling(q * v.Length) - 1)];
        return new JsonObject { ["mean"] = v.Average(), ["p50"] = P(0.5), ["p90"] = P(0.9), ["p99"] = P(0.99) };
    }

    static JsonObject Summarize(RequestResult[] results, double duration, CliArguments a, string endpoint, string model, int concurrency, double? rate)
    {
        var ok = results.Where(r => r.Ok).ToArray();
        int output = ok.Sum(r => r.OutputTokens), prompt = ok.Sum(r => r.PromptTokens);
        double? ttftSlo = a.String("goodput-ttft-ms") is null ? null : a.Float("goodput-ttft-ms", 0, min: 0);
        double? tpotSlo = a.String("goodput-tpot-ms") is null ? null : a.Float("goodput-tpot-ms", 0, min: 0);
        int good = ok.Count(r => (ttftSlo is null || r.TtftMs <= ttftSlo) && (tpotSlo is null || r.TpotMs <= tpotSlo));
        double outputRate = output / duration;
        var json = new JsonObject
        {
            ["endpoint"] = endpoint,
            ["model"] = model,
            ["concurrency"] = concurrency,
            ["request_rate"] = rate is null ? "inf" : rate.Value,
            ["completed"] = ok.Length,
            ["failed"] = results.Length - ok.Length,
            ["duration_s"] = duration,
            ["prompt_tokens"] = prompt,
            ["output_tokens"] = output,
            ["requests_per_s"] = ok.Length / duration,
            ["output_tokens_per_s"] = outputRate,
            ["total_tokens_per_s"] = (prompt + output) / duration,
            ["goodput_requests_per_s"] = good / duration,
            ["ttft_ms"] = Stats(ok.Select(r => r.TtftMs)),
            ["tpot_ms"] = Stats(ok.Where(r => r.OutputTokens > 1).Select(r => r.TpotMs)),
            ["itl_ms"] = Stats(ok.SelectMany(r => r.ItlMs)),
            ["e2e_ms"] = Stats(ok.Select(r => r.E2eMs)),
            ["errors"] = new JsonArray([.. results.Where(r => !r.Ok).Select(r => (JsonNode)r.Error!).Take(10)]),
        };
        if (a.String("hourly-cost") is not null)
        {
            double hourly = a.Float("hourly-cost", 0, min: 0);
            json["cost_per_million_output_tokens"] = outputRate > 0 ? hourly / (outputRate * 3600) * 1e6 : double.PositiveInfinity;
        }
        return json;
    }

    static void Print(JsonObject r, TextWriter w)
    {
        var ci = CultureInfo.InvariantCulture;
        w.WriteLine($"tokenmill bench serve: {r["endpoint"]} on {r["model"]}, concurrency {r["concurrency"]}, request rate {r["request_rate"]}");
        w.WriteLine(string.Format(ci, "  completed / failed          {0} / {1}", r["completed"], r["failed"]));
        w.WriteLine(string.Format(ci, "  duration                    {0:F2} s", (double)r["duration_s"]!));
        w.WriteLine(string.Format(ci, "  requests/s                  {0:F2}   (goodput {1:F2})", (double)r["requests_per_s"]!, (double)r["goodput_requests_per_s"]!));
        w.WriteLine(string.Format(ci, "  output tokens/s             {0:F1}   (total {1:F1})", (double)r["output_tokens_per_s"]!, (double)r["total_tokens_per_s"]!));
        if (r["cost_per_million_output_tokens"] is { } cost) w.WriteLine(string.Format(ci, "  cost / 1M output tokens     ${0:F3}", (double)cost));
        w.WriteLine("  latency (ms)                mean      p50       p90       p99");
        foreach (var name in new[] { "ttft_ms", "tpot_ms", "itl_ms", "e2e_ms" })
        {
            var s = r[name]!;
            w.WriteLine(string.Format(ci, "  {0,-26}{1,8:F1}  {2,8:F1}  {3,8:F1}  {4,8:F1}", name[..^3].ToUpperInvariant(),
                (double)s["mean"]!, (double)s["p50"]!, (double)s["p90"]!, (double)s["p99"]!));
        }
        foreach (var e in r["errors"]!.AsArray()) w.WriteLine($"  error: {e}");
    }
}
