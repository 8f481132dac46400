using System.Globalization;
using System.Text;
using TokenMill.Core;
using TokenMill.KvCache;

namespace TokenMill.Server.Http;

/// <summary>
/// Prometheus metrics named after vLLM's (<c>vllm:</c> → <c>tokenmill:</c>): latency histograms
/// measured at the API edge, engine gauges read at scrape time, token and request counters.
/// </summary>
public sealed class ServerMetrics
{
    readonly LlmEngine engine;
    readonly string modelName;
    readonly long[] _cachedAt, _lastAccess; // Stopwatch ticks per block: when it was cached, when last cached or hit

    public ServerMetrics(LlmEngine engine, string modelName)
    {
        this.engine = engine;
        this.modelName = modelName;
        _cachedAt = new long[engine.Stats.TotalKvBlocks];
        _lastAccess = new long[engine.Stats.TotalKvBlocks];
        engine.KvEvents += OnKvEvent;
    }

    /// <summary>On the engine thread, per KV event: only a timestamp or one histogram observation.</summary>
    void OnKvEvent(TokenMill.KvCache.KvCacheEvent e)
    {
        if ((uint)e.Block >= (uint)_cachedAt.Length) return;
        long now = System.Diagnostics.Stopwatch.GetTimestamp();
        switch (e.Kind)
        {
            case TokenMill.KvCache.KvEventKind.Cached:
                _cachedAt[e.Block] = _lastAccess[e.Block] = now;
                break;
            case TokenMill.KvCache.KvEventKind.Hit:
                _lastAccess[e.Block] = now;
                break;
            case TokenMill.KvCache.KvEventKind.Evicted when _cachedAt[e.Block] != 0:
                _lifetime.Observe(System.Diagnostics.Stopwatch.GetElapsedTime(_cachedAt[e.Block], now).TotalSeconds);
                _idle.Observe(System.Diagnostics.Stopwatch.GetElapsedTime(_lastAccess[e.Block], now).TotalSeconds);
                _cachedAt[e.Block] = 0;
                break;
        }
    }

    // Lifetimes of cached blocks span from milliseconds to hours.
    static readonly double[] BlockBuckets = [0.001, 0.01, 0.1, 1, 5, 10, 30, 60, 300, 600, 1800, 3600, 7200, 86400];
    readonly Histogram _lifetime = new("tokenmill:kv_block_lifetime_seconds", "Time from a block's caching to its eviction.", BlockBuckets);
    readonly Histogram _idle = new("tokenmill:kv_block_idle_before_evict_seconds", "Time from a cached block's last use to its eviction.", BlockBuckets);

    // vLLM's bucket bounds, in seconds.
    static readonly double[] TtftBuckets = [0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0];
    static readonly double[] ItlBuckets = [0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0];
    static readonly double[] RequestBuckets = [0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0, 120.0, 240.0, 480.0, 960.0, 1920.0, 7680.0];

    readonly Histogram _ttft = new("tokenmill:time_to_first_token_seconds", "Time to first token.", TtftBuckets);
    readonly Histogram _itl = new("tokenmill:inter_token_latency_seconds", "Time between consecutive output chunks of a request.", ItlBuckets);
    readonly Histogram _e2e = new("tokenmill:e2e_request_latency_seconds", "End-to-end request latency.", RequestBuckets);
    readonly Histogram _queue = new("tokenmill:request_queue_time_seconds", "Time a request waited before it first ran.", RequestBuckets);
    long _promptTokens, _generationTokens;
    readonly long[] _responses = new long[6]; // by status class: index 1..5 = 1xx..5xx
    readonly Dictionary<string, long> _finished = new(StringComparer.Ordinal);

    public void RecordFirstToken(TimeSpan t) => _ttft.Observe(t.TotalSeconds);

    /// <summary>Counts an HTTP response by status class (for error-rate alerts).</summary>
    public void RecordResponse(int status) => Interlocked.Increment(ref _responses[Math.Clamp(status / 100, 1, 5)]);
    public void RecordInterToken(TimeSpan t) => _itl.Observe(t.TotalSeconds);

    public void RecordFinished(CompletionChunk final, TimeSpan e2e)
    {
        _e2e.Observe(e2e.TotalSeconds);
        if (final.QueueTime is { } q) _queue.Observe(q.TotalSeconds);
        Interlocked.Add(ref _promptTokens, final.PromptTokens);
        Interlocked.Add(ref _generationTokens, final.CompletionTokens);
        lock (_finished) _finished[final.FinishReason!] = _finished.GetValueOrDefault(final.FinishReason!) + 1;
    }

    public string Render()
    {
        var s = engine.Stats;
        var sb = new StringBuilder();
        string label = $"model_name=\"{Escape(modelName)}\"";
        Gauge(sb, "tokenmill:num_requests_running", "Requests in the running batch.", label, s.Running);
        Gauge(sb, "tokenmill:num_requests_waiting", "Requests waiting to run.", label, s.Waiting);
        Gauge(sb, "tokenmill:cache_config_info", "The KV cache's configuration, in the labels (vLLM's cache_config_info).",
            string.Create(CultureInfo.InvariantCulture, $"{label},block_size=\"{engine.Options.BlockSize}\",cache_dtype=\"{engine.Options.KvCacheDtype.Name()}\",num_blocks=\"{s.TotalKvBlocks}\""), 1);
        Gauge(sb, "tokenmill:kv_cache_usage_perc", "Fraction of KV-cache blocks in use (1 = full).", label,
            s.TotalKvBlocks == 0 ? 0 : 1.0 - (double)s.FreeKvBlocks / s.TotalKvBlocks);
        Counter(sb, "tokenmill:num_preemptions_total", "Preemptions since start.", label, s.Preemptions);
        Counter(sb, "tokenmill:prefix_cache_queries_total", "Prompt tokens looked up in the prefix cache.", label, s.PrefixCacheQueryTokens);
        Counter(sb, "tokenmill:prefix_cache_hits_total", "Prompt tokens found in the prefix cache.", label, s.PrefixCacheHitTokens);
        Counter(sb, "tokenmill:kv_evictions_total", "Cached KV blocks evicted.", label, s.KvEvictions);
        Gauge(sb, "tokenmill:kv_cached_blocks", "KV blocks holding a cached prefix that no request uses.", label, s.CachedKvBlocks);
        Counter(sb, "tokenmill:prompt_tokens_total", "Prompt tokens of finished requests.", label, Interlocked.Read(ref _promptTokens));
        Counter(sb, "tokenmill:generation_tokens_total", "Generated tokens of finished requests.", label, Interlocked.Read(ref _generationTokens));
        sb.Append("# HELP tokenmill:request_success_total Finished requests by finish reason.\n# TYPE tokenmill:request_success_total counter\n");
        lock (_finished)
        {
            foreach (var reason in new[] { FinishReason.Stop, FinishReason.Length, FinishReason.Abort })
                sb.Append(CultureInfo.InvariantCulture, $"tokenmill:request_success_total{{{label},finished_reason=\"{reason}\"}} {_finished.GetValueOrDefault(reason)}\n");
        }
        sb.Append("# HELP tokenmill:http_responses_total HTTP responses of the API endpoints by status class.\n# TYPE tokenmill:http_responses_total counter\n");
        for (int c = 2; c <= 5; c++)
            sb.Append(CultureInfo.InvariantCulture, $"tokenmill:http_responses_total{{{label},code=\"{c}xx\"}} {Interlocked.Read(ref _responses[c])}\n");
        foreach (var h in new[] { _ttft, _itl, _e2e, _queue, _lifetime, _idle }) h.Render(sb, label);
        return sb.ToString();
    }

    static void Gauge(StringBuilder sb, string name, string help, string label, double value) =>
        sb.Append(CultureInfo.InvariantCulture, $"# HELP {name} {help}\n# TYPE {name} gauge\n{name}{{{label}}} {value}\n");

    static void Counter(StringBuilder sb, string name, string help, string label, long value) =>
        sb.Append(CultureInfo.InvariantCulture, $"# HELP {name} {help}\n# TYPE {name} counter\n{name}{{{label}}} {value}\n");

    static string Escape(string s) => s.Replace("\\", "\\\\", StringComparison.Ordinal).Replace("\"", "\\\"", StringComparison.Ordinal).Replace("\n", "\\n", StringComparison.Ordinal);

    sealed class Histogram(string name, string help, double[] bounds)
    {
        readonly long[] _counts = new long[bounds.Length + 1];
        double _sum;
        long _count;

        public void Observe(double v)
        {
            lock (_counts)
            {
                int i = 0;
                while (i < bounds.Length && v > bounds[i]) i++;
                _counts[i]++;
                _sum += v;
                _count++;
            }
        }

        public void Render(StringBuilder sb, string label)
        {
            lock (_counts)
            {
                sb.Append(CultureInfo.InvariantCulture, $"# HELP {name} {help}\n# TYPE {name} histogram\n");
                long cumulative = 0;
                for (int i = 0; i < bounds.Length; i++)
                {
                    cumulative += _counts[i];
                    sb.Append(CultureInfo.InvariantCulture, $"{name}_bucket{{{label},le=\"{bounds[i]}\"}} {cumulative}\n");
                }
                sb.Append(CultureInfo.InvariantCulture, $"{name}_bucket{{{label},le=\"+Inf\"}} {_count}\n");
                sb.Append(CultureInfo.InvariantCulture, $"{name}_sum{{{label}}} {_sum}\n{name}_count{{{label}}} {_count}\n");
            }
        }
    }
}
