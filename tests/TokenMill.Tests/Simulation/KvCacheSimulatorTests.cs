using TokenMill.KvCache;
using TokenMill.Simulation;

namespace TokenMill.Tests.Simulation;

/// <summary>The trace-driven simulator: seeded traces, exact hit counts on a hand-made trace, and Belady's bound above every policy.</summary>
public class KvCacheSimulatorTests
{
    static readonly TraceGeneratorOptions Small = new() { Seed = 3, Sessions = 60, SystemPromptTokens = 128, MaxTurns = 4, SessionRate = 8 };

    [Fact]
    public void Generated_traces_are_seeded_multi_turn_chats_on_shared_system_prompts()
    {
        var a = TraceGenerator.Generate(Small);
        var b = TraceGenerator.Generate(Small);
        var c = TraceGenerator.Generate(Small with { Seed = 4 });
        Assert.Equal(a.Select(r => (r.Id, r.Arrival, string.Join(",", r.Prompt))), b.Select(r => (r.Id, r.Arrival, string.Join(",", r.Prompt))));
        Assert.NotEqual(a.Select(r => r.Arrival), c.Select(r => r.Arrival));
        Assert.True(a.Zip(a.Skip(1)).All(p => p.First.Arrival <= p.Second.Arrival));

        // Turn t+1's prompt is turn t's prompt, its output, and a new user message.
        var turns = a.Where(r => r.Id!.StartsWith("s0-", StringComparison.Ordinal)).OrderBy(r => r.Id, StringComparer.Ordinal).ToList();
        for (int t = 1; t < turns.Count; t++)
        {
            var before = turns[t - 1];
            Assert.Equal([.. before.Prompt, .. before.Output!], turns[t].Prompt.Take(before.Prompt.Length + before.Output!.Length));
        }
        // Priority levels are drawn per session: every turn of a session has its session's priority.
        var prioritized = TraceGenerator.Generate(Small with { Priorities = 3 });
        Assert.Equal([0, 1, 2], prioritized.Select(r => r.Priority).Distinct().Order());
        Assert.All(prioritized.GroupBy(r => r.Id!.Split('-')[0]), session => Assert.Single(session.Select(r => r.Priority).Distinct()));
        Assert.All(a, r => Assert.Equal(0, r.Priority));

        // Fewer distinct system prompts than sessions: they are shared.
        Assert.InRange(a.Select(r => string.Join(",", r.Prompt.Take(128))).Distinct().Count(), 2, Small.SystemPrompts);
    }

    [Fact]
    public void A_repeated_prompt_hits_every_full_block_but_the_one_with_its_last_token()
    {
        int[] prompt = [.. Enumerable.Range(1, 33)];
        TraceRequest[] trace =
        [
            new() { Id = "a", Arrival = 0, Prompt = prompt, OutputTokens = 4 },
            new() { Id = "b", Arrival = 10, Prompt = prompt, OutputTokens = 4 },
            new() { Id = "c", Arrival = 20, Prompt = [.. prompt[..16], 999, .. prompt[17..]], OutputTokens = 4 },
        ];
        var r = KvCacheSimulator.Run(trace, new SimulationOptions { NumBlocks = 16, BlockSize = 16 });
        Assert.Equal(3 * 33, r.PromptTokens);
        Assert.Equal(32 + 16, r.CachedPromptTokens); // b: both full blocks; c: only the first (its second block differs)
        Assert.Equal(3, r.HitBlocks);
        Assert.Equal(6, r.LookedUpBlocks);
        Assert.Equal(3 * 37 - 48 - 3, r.ComputedTokens); // the last sampled token of each is never fed back
        var bound = KvCacheSimulator.Belady(trace, 16, 16);
        Assert.Equal(3, bound.HitBlocks);

        var cold = KvCacheSimulator.Run(trace, new SimulationOptions { NumBlocks = 16, BlockSize = 16, EnablePrefixCaching = false });
        Assert.Equal(0, cold.CachedPromptTokens);
        Assert.Equal(3 * 37 - 3, cold.ComputedTokens);
    }

    [Fact]
    public void Belady_bounds_every_policy_and_the_cache_saves_computation()
    {
        var trace = TraceGenerator.Generate(Small);
        var options = new SimulationOptions { NumBlocks = 160, BlockSize = 16 };
        var cold = KvCacheSimulator.Run(trace, options with { EnablePrefixCaching = false });
        var bound = KvCacheSimulator.Belady(trace, options.NumBlocks, options.BlockSize);
        foreach (string policy in EvictionPolicies.Names)
        {
            var r = KvCacheSimulator.Run(trace, options with { EvictionPolicy = policy });
            Assert.Equal(r, KvCacheSimulator.Run(trace, options with { EvictionPolicy = policy })); // deterministic
            Assert.True(r.TokenHitRate > 0.2, $"{policy}: {r}");
            Assert.True(r.Evictions > 0, $"{policy}: 160 blocks cannot hold every conversation");
            Assert.True(bound.BlockHitRate >= r.BlockHitRate, $"{policy} {r.BlockHitRate:P1} beats Belady {bound.BlockHitRate:P1}");
            Assert.True(r.ComputedTokens < cold.ComputedTokens);
            Assert.True(r.MeanTtftSeconds < cold.MeanTtftSeconds);
        }
        // With room for everything, nothing is evicted and the bound evicts nothing either.
        var roomy = KvCacheSimulator.Run(trace, options with { NumBlocks = 100_000 });
        Assert.Equal(0, roomy.Evictions);
        Assert.Equal(0, KvCacheSimulator.Belady(trace, 100_000, 16).Evictions);
    }

    [Fact]
    public void A_malformed_trace_line_is_reported_with_its_number()
    {
        var path = Path.GetTempFileName();
        try
        {
            File.WriteAllLines(path, ["""{"arrival":0,"prompt":[1,2],"output_tokens":3}""", """{"arrival":1,"prompt":[],"output_tokens":3}"""]);
            var e = Assert.Throws<InvalidDataException>(() => Trace.Read(path));
            Assert.Contains($"{path}:2", e.Message);
        }
        finally
        {
            File.Delete(path);
        }
    }
}
