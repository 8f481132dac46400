using System.Globalization;
using TokenMill.KvCache;
using TokenMill.Simulation;

namespace TokenMill.Server.Cli;

/// <summary>
/// <c>tokenmill simulate</c>: replays a JSONL trace through the real scheduler and KV cache manager with
/// a cost model instead of a model, for eviction-policy research; <c>simulate generate-trace</c> writes a
/// seeded synthetic trace (multi-turn chats sharing system prompts).
/// </summary>
public static class SimulateCommand
{
    internal const string Help = """
        usage: tokenmill simulate --trace F [options]
               tokenmill simulate generate-trace --out F [options]

        simulate (prints one line per policy, then Belady's offline optimum as an upper bound):
          --trace F                  JSONL, one request per line: {"id","arrival" (s),"prompt":[ids],"output":[ids] | "output_tokens":N,"priority"}
          --num-blocks N             KV blocks (default 1024)
          --block-size N             tokens per block (default 16)
          --eviction-policy P        lru, lfu, fifo, priority-lru, or all (default all)
          --max-num-seqs N           sequences running at once (default 256)
          --max-num-batched-tokens N token budget per step (default 2048)
          --no-prefix-caching        also run without the cache, as a baseline
        generate-trace:
          --out F                    where to write the trace
          --seed S                   (default 0)
          --sessions N               chat sessions (default 200)
          --system-prompts K         distinct shared system prompts, popularity ∝ 1/rank (default 4)
          --system-tokens N          tokens of each system prompt (default 256)
          --turns N                  most turns per session (default 4)
          --rate R                   new sessions per second (default 4)
          --priorities N             priority levels, one drawn per session (default 1: all equal)

        example: tokenmill simulate generate-trace --out chat.jsonl && tokenmill simulate --trace chat.jsonl --num-blocks 512
        """;

    internal static readonly HashSet<string> ValueOptions =
    [
        "trace", "num-blocks", "block-size", "eviction-policy", "max-num-seqs", "max-num-batched-tokens",
        "out", "seed", "sessions", "system-prompts", "system-tokens", "turns", "rate", "priorities",
    ];
    internal static readonly HashSet<string> Flags = ["help", "no-prefix-caching"];

    public static int Run(string[] args, TextWriter stdout, TextWriter stderr)
    {
        var a = new CliArguments("simulate", args, ValueOptions, Flags);
        if (a.Flag("help"))
        {
            stdout.WriteLine(Help);
            return Cli.ExitOk;
        }
        if (a.Positional is ["generate-trace"]) return GenerateTrace(a, stderr);
        if (a.Positional.Count > 0) throw new UsageException($"unexpected argument '{a.Positional[0]}' (the subcommand is generate-trace)");

        string path = a.String("trace") ?? throw new UsageException("--trace is required (make one with 'tokenmill simulate generate-trace --out F')");
        string policy = (a.String("eviction-policy") ?? "all").ToLowerInvariant();
        string[] policies = policy == "all" ? EvictionPolicies.Names : [GenerateCommand.ParseEvictionPolicy(policy)];
        var options = new SimulationOptions
        {
            NumBlocks = a.Int("num-blocks", 1024, min: 1),
            BlockSize = a.Int("block-size", 16, min: 1, max: 1024),
            MaxNumSeqs = a.Int("max-num-seqs", 256, min: 1),
            MaxNumBatchedTokens = a.Int("max-num-batched-tokens", 2048, min: 1),
        };
        var trace = Trace.Read(path);

        var reports = new List<SimulationReport>();
        if (a.Flag("no-prefix-caching")) reports.Add(KvCacheSimulator.Run(trace, options with { EnablePrefixCaching = false }));
        foreach (string p in policies) reports.Add(KvCacheSimulator.Run(trace, options with { EvictionPolicy = p }));
        reports.Add(KvCacheSimulator.Belady(trace, options.NumBlocks, options.BlockSize));

        stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"trace {path}: {trace.Count} requests, {reports[0].PromptTokens} prompt tokens | {options.NumBlocks} blocks of {options.BlockSize} tokens"));
        stdout.WriteLine($"{"policy",-16}{"token hit",10}{"block hit",10}{"evictions",11}{"preempted",11}{"steps",9}{"computed",11}{"sim s",9}{"mean TTFT",11}");
        foreach (var r in reports)
        {
            bool bound = r.Steps == 0;
            stdout.WriteLine(string.Create(CultureInfo.InvariantCulture,
                $"{r.Policy,-16}{r.TokenHitRate,10:P1}{r.BlockHitRate,10:P1}{r.Evictions,11}{(bound ? "-" : r.Preemptions.ToString(CultureInfo.InvariantCulture)),11}" +
                $"{(bound ? "-" : r.Steps.ToString(CultureInfo.InvariantCulture)),9}{(bound ? "-" : r.ComputedTokens.ToString(CultureInfo.InvariantCulture)),11}" +
                $"{(bound ? "-" : r.SimulatedSeconds.ToString("F1", CultureInfo.InvariantCulture)),9}{(bound ? "-" : (r.MeanTtftSeconds * 1000).ToString("F0", CultureInfo.InvariantCulture) + " ms"),11}"));
        }
        return Cli.ExitOk;
    }

    static int GenerateTrace(CliArguments a, TextWriter stderr)
    {
        string path = a.String("out") ?? throw new UsageException("--out is required");
        var o = new TraceGeneratorOptions
        {
            Seed = a.Int("seed", 0),
            Sessions = a.Int("sessions", 200, min: 1),
            SystemPrompts = a.Int("system-prompts", 4, min: 1),
            SystemPromptTokens = a.Int("system-tokens", 256, min: 1),
            MaxTurns = a.Int("turns", 4, min: 1),
            SessionRate = a.Float("rate", 4, min: 1e-6f),
            Priorities = a.Int("priorities", 1, min: 1),
        };
        var trace = TraceGenerator.Generate(o);
        Trace.Write(path, trace);
        stderr.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"wrote {trace.Count} requests of {o.Sessions} sessions ({trace.Sum(r => r.Prompt.Length)} prompt tokens) to {path}"));
        return Cli.ExitOk;
    }
}
