using System.Text.Json;
using System.Text.Json.Serialization;

namespace TokenMill.Simulation;

/// <summary>
/// One request of a simulation trace (one JSON object per line): when it arrives, its prompt's token
/// ids, and what it generates — the exact <c>output</c> ids (so a later turn of a chat can find them in
/// the cache) or just <c>output_tokens</c>, a length.
/// </summary>
public sealed record TraceRequest
{
    [JsonPropertyName("id")] public string? Id { get; init; }

    /// <summary>Arrival time in seconds from the start of the trace.</summary>
    [JsonPropertyName("arrival")] public double Arrival { get; init; }

    [JsonPropertyName("prompt")] public int[] Prompt { get; init; } = [];

    /// <summary>The tokens the request generates; when absent, <see cref="OutputTokens"/> synthetic ones.</summary>
    [JsonPropertyName("output")] public int[]? Output { get; init; }

    [JsonPropertyName("output_tokens")] public int OutputTokens { get; init; }

    [JsonPropertyName("priority")] public int Priority { get; init; }

    [JsonIgnore] public int OutputLength => Output?.Length ?? OutputTokens;
}

[JsonSourceGenerationOptions(DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull)]
[JsonSerializable(typeof(TraceRequest))]
internal sealed partial class TraceJsonContext : JsonSerializerContext;

/// <summary>Reads and writes JSONL traces.</summary>
public static class Trace
{
    public static List<TraceRequest> Read(string path)
    {
        if (!File.Exists(path)) throw new FileNotFoundException($"{path}: no such trace file", path);
        var requests = new List<TraceRequest>();
        int lineNumber = 0;
        foreach (string line in File.ReadLines(path))
        {
            lineNumber++;
            if (string.IsNullOrWhiteSpace(line)) continue;
            TraceRequest? r;
            try
            {
                r = JsonSerializer.Deserialize(line, TraceJsonContext.Default.TraceRequest);
            }
            catch (JsonException e)
            {
                throw new InvalidDataException($"{path}:{lineNumber}: not a trace request: {e.Message}", e);
            }
            if (r is null || r.Prompt.Length == 0) throw new InvalidDataException($"{path}:{lineNumber}: the request has no prompt tokens");
            if (r.OutputLength < 1) throw new InvalidDataException($"{path}:{lineNumber}: the request generates no token (give output or output_tokens ≥ 1)");
            if (!double.IsFinite(r.Arrival) || r.Arrival < 0) throw new InvalidDataException($"{path}:{lineNumber}: arrival must be a time ≥ 0 in seconds");
            requests.Add(r.Id is null ? r with { Id = $"line-{lineNumber}" } : r);
        }
        if (requests.Count == 0) throw new InvalidDataException($"{path} holds no requests");
        return requests;
    }

    public static void Write(string path, IEnumerable<TraceRequest> requests)
    {
        using var w = new StreamWriter(path);
        foreach (var r in requests) w.WriteLine(JsonSerializer.Serialize(r, TraceJsonContext.Default.TraceRequest));
    }
}

/// <summary>Shape of a synthetic trace: chat sessions of several turns that share a few system prompts.</summary>
public sealed record TraceGeneratorOptions
{
    public int Seed { get; init; }
    public int Sessions { get; init; } = 200;

    /// <summary>Distinct system prompts; session i picks prompt k with probability ∝ 1/(k+1) (a few popular ones, a long tail).</summary>
    public int SystemPrompts { get; init; } = 4;
    public int SystemPromptTokens { get; init; } = 256;
    public int MaxTurns { get; init; } = 4;
    public int MinUserTokens { get; init; } = 16;
    public int MaxUserTokens { get; init; } = 96;
    public int MinOutputTokens { get; init; } = 16;
    public int MaxOutputTokens { get; init; } = 128;

    /// <summary>New sessions per second (Poisson arrivals).</summary>
    public double SessionRate { get; init; } = 4;

    /// <summary>Mean seconds between a turn's arrival and the next one's (exponential): reading and typing time.</summary>
    public double MeanThinkSeconds { get; init; } = 8;

    public int VocabSize { get; init; } = 32000;

    /// <summary>Priority levels: each session gets one of 0..n-1 at random (lower is more urgent); 1 = all equal.</summary>
    public int Priorities { get; init; } = 1;
}

/// <summary>Seeded synthetic traces: multi-turn chats whose every turn's prompt is the whole conversation so far.</summary>
public static class TraceGenerator
{
    public static List<TraceRequest> Generate(TraceGeneratorOptions o)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(o.Sessions, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(o.SystemPrompts, 1);
        ArgumentOutOfRangeException.ThrowIfLessThan(o.MaxTurns, 1);
        var rng = new Random(o.Seed);
        int[] Tokens(int n)
        {
            var t = new int[n];
            for (int i = 0; i < n; i++) t[i] = rng.Next(o.VocabSize);
            return t;
        }
        double Exponential(double mean) => -mean * Math.Log(1 - rng.NextDouble());

        var systems = Enumerable.Range(0, o.SystemPrompts).Select(_ => Tokens(o.SystemPromptTokens)).ToArray();
        double[] weights = [.. Enumerable.Range(0, o.SystemPrompts).Select(k => 1.0 / (k + 1))];
        double totalWeight = weights.Sum();
        var requests = new List<TraceRequest>();
        double start = 0;
        for (int s = 0; s < o.Sessions; s++)
        {
            start += Exponential(1 / o.SessionRate);
            double pick = rng.NextDouble() * totalWeight;
            int system = 0;
            while (system < o.SystemPrompts - 1 && (pick -= weights[system]) > 0) system++;
            var history = new List<int>(systems[system]);
            int priority = o.Priorities > 1 ? rng.Next(o.Priorities) : 0; // no draw for one level: seeds keep their traces
            int turns = rng.Next(1, o.MaxTurns + 1);
            double t = start;
            for (int turn = 0; turn < turns; turn++)
            {
                history.AddRange(Tokens(rng.Next(o.MinUserTokens, o.MaxUserTokens + 1)));
                var output = Tokens(rng.Next(o.MinOutputTokens, o.MaxOutputTokens + 1));
                requests.Add(new TraceRequest { Id = $"s{s}-t{turn}", Arrival = Math.Round(t, 6), Prompt = [.. history], Output = output, Priority = priority });
                history.AddRange(output);
                t += Exponential(o.MeanThinkSeconds);
            }
        }
        return [.. requests.OrderBy(r => r.Arrival)];
    }
}
