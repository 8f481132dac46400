using System.Globalization;
using System.Text.Json;
using TokenMill.Core;
using TokenMill.KvCache;

namespace TokenMill.Server.Http;

/// <summary>
/// The live engine view's data: counters and a KV-cache snapshot taken together on the engine thread
/// (<see cref="LlmEngine.SnapshotAsync"/>) plus the KV events between the client's cursor and that snapshot, which the snapshot alone cannot show (a block evicted and reallocated
/// between two snapshots looks merely owned). Events are kept in a bounded ring filled by the engine thread.
/// Exposes request ids, token counts and block indices only — never prompts or output.
/// </summary>
public sealed class EngineView
{
    /// <summary>Events kept for clients that fall behind: a few seconds of a busy engine (one per allocated block).</summary>
    public const int EventCapacity = 8192;

    /// <summary>Blocks listed per event kind in one frame; a busier frame is summarised by its counts.</summary>
    const int MaxListedBlocks = 4096;

    readonly LlmEngine engine;
    readonly KvCacheEvent[] _ring = new KvCacheEvent[EventCapacity];
    long _latest; // ordinal of the newest event recorded; the ring holds ordinals (_latest - capacity, _latest]

    public EngineView(LlmEngine engine)
    {
        this.engine = engine;
        engine.KvEvents += Record;
    }

    /// <summary>Engine thread: one store under a lock nobody holds for long.</summary>
    void Record(KvCacheEvent e)
    {
        lock (_ring)
        {
            _ring[e.Ordinal % EventCapacity] = e;
            _latest = e.Ordinal;
        }
    }

    /// <summary>The ordinal of the newest event: a client passes it back as <c>since</c> to get only what follows.</summary>
    public long Cursor
    {
        get { lock (_ring) return _latest; }
    }

    /// <summary>
    /// Events with ordinals in (<paramref name="since"/>, <paramref name="upTo"/>] — those a snapshot taken after event
    /// <paramref name="upTo"/> reflects; <c>Lost</c> when some of them already left the ring.
    /// </summary>
    (List<KvCacheEvent> Events, bool Lost) EventsBetween(long since, long upTo)
    {
        lock (_ring)
        {
            long first = Math.Max(since, Math.Max(0, _latest - EventCapacity)) + 1;
            var list = new List<KvCacheEvent>((int)Math.Max(0, upTo - first + 1));
            for (long i = first; i <= upTo; i++) list.Add(_ring[i % EventCapacity]);
            return (list, first > since + 1);
        }
    }

    /// <summary>One frame: stats, every block's state, each sequence's block table, the events since <paramref name="since"/>.</summary>
    /// <returns>The frame's writer and the event cursor to pass as <c>since</c> for the next frame.</returns>
    public async Task<(Action<Utf8JsonWriter> Write, long Cursor)> FrameAsync(long since, CancellationToken cancellationToken)
    {
        var (stats, snapshot) = await engine.SnapshotAsync(cancellationToken).ConfigureAwait(false);
        long cursor = snapshot.EventCount;
        var (events, lost) = EventsBetween(Math.Min(since, cursor), cursor);
        long time = DateTimeOffset.UtcNow.ToUnixTimeMilliseconds();
        var dtype = engine.Options.KvCacheDtype;
        return (w => Write(w, snapshot, stats, events, cursor, lost, time, dtype), cursor);
    }

    static void Write(Utf8JsonWriter w, KvCacheSnapshot s, EngineStats stats, List<KvCacheEvent> events, long cursor, bool lost, long time,
        TokenMill.KvCache.KvCacheDtype dtype)
    {
        w.WriteStartObject();
        w.WriteString("object", "engine.kv_cache");
        w.WriteNumber("time_ms", time);
        w.WriteNumber("step", s.Step);
        w.WriteNumber("block_size", s.BlockSize);
        w.WriteString("kv_cache_dtype", TokenMill.KvCache.KvCacheDtypes.Name(dtype));
        w.WriteNumber("num_blocks", s.States.Length);
        w.WriteNumber("running", stats.Running);
        w.WriteNumber("waiting", stats.Waiting);
        w.WriteNumber("generated_tokens", stats.GeneratedTokens);
        w.WriteNumber("finished_requests", stats.FinishedRequests);
        w.WriteNumber("preemptions", stats.Preemptions);
        w.WriteNumber("evictions", stats.KvEvictions);
        w.WriteNumber("prefix_cache_hit_rate", Math.Round(stats.PrefixCacheHitRate, 4));

        w.WriteStartObject("counts");
        foreach (var state in Enum.GetValues<KvBlockState>()) w.WriteNumber(Name(state), s.Count(state));
        w.WriteEndObject();

        // One character per block keeps a 100 000-block cache near 100 KB a frame.
        var map = new char[s.States.Length];
        for (int b = 0; b < map.Length; b++) map[b] = Name(s.States[b])[0];
        w.WriteString("blocks", map);

        w.WriteStartArray("sequences");
        foreach (var q in s.Sequences)
        {
            w.WriteStartObject();
            w.WriteString("request_id", q.RequestId);
            w.WriteNumber("index", q.Index);
            w.WriteString("state", q.Running ? "running" : "waiting");
            w.WriteNumber("prompt_tokens", q.PromptTokens);
            w.WriteNumber("output_tokens", q.OutputTokens);
            w.WriteStartArray("blocks");
            foreach (int b in q.Blocks) w.WriteNumberValue(b);
            w.WriteEndArray();
            w.WriteEndObject();
        }
        w.WriteEndArray();

        w.WriteStartObject("events");
        w.WriteNumber("cursor", cursor);
        w.WriteBoolean("lost", lost);
        foreach (var kind in Enum.GetValues<KvEventKind>())
        {
            string name = kind.ToString().ToLowerInvariant();
            w.WriteNumber(name, events.Count(e => e.Kind == kind));
            if (kind == KvEventKind.Allocated) continue; // owned blocks show in the map already
            w.WriteStartArray(name + "_blocks");
            foreach (int b in events.Where(e => e.Kind == kind).Select(e => e.Block).Distinct().Take(MaxListedBlocks)) w.WriteNumberValue(b);
            w.WriteEndArray();
        }
        w.WriteEndObject();
        w.WriteEndObject();
    }

    static string Name(KvBlockState state) => state switch
    {
        KvBlockState.Free => "free",
        KvBlockState.Cached => "cached",
        KvBlockState.Owned => "owned",
        KvBlockState.Shared => "shared",
        _ => throw new ArgumentOutOfRangeException(nameof(state)),
    };

    /// <summary>Parses the <c>since</c> query value (an event cursor); absent means "from now".</summary>
    public long ParseSince(string? value) =>
        value is null ? Cursor
        : long.TryParse(value, NumberStyles.None, CultureInfo.InvariantCulture, out long v) ? v
        : throw ApiErrorException.BadRequest($"'since' must be an event cursor (a non-negative whole number), got '{value}'", "since");
}
