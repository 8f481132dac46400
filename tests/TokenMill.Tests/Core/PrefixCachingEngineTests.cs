using TokenMill.Core;
using TokenMill.KvCache;
using TokenMill.Models;
using TokenMill.Sampling;

namespace TokenMill.Tests.Core;

/// <summary>Prefix caching and parallel sampling (n &gt; 1) end to end on stories260K: sharing KV blocks must not change a single token.</summary>
public class PrefixCachingEngineTests
{
    const string System = "Once upon a time, there was a little girl named Lily. She loved to play outside in the park with her friends. ";

    static Model LoadStories() => GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));

    static GenerationRequest Greedy(string prompt, int maxTokens = 24) =>
        new() { Prompt = prompt, Sampling = SamplingParams.Greedy with { MaxTokens = maxTokens, IgnoreEos = true } };

    [SkippableFact]
    public async Task A_prefix_cache_hit_gives_the_cold_output_and_skips_the_cached_tokens()
    {
        using var model = LoadStories();
        string[] prompts = [System + "One day", System + "One day", System + "Her mom said", "Lily"];
        int[][] cold;
        using (var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, BlockSize = 4, EnablePrefixCaching = false }))
        {
            var results = new List<CompletionResult>();
            foreach (var p in prompts) results.Add(await engine.CompleteAsync(Greedy(p)));
            Assert.All(results, r => Assert.Equal(0, r.CachedPromptTokens));
            Assert.Equal(0, engine.Stats.PrefixCacheHitTokens);
            cold = [.. results.Select(r => r.TokenIds)];
        }

        using var warm = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, BlockSize = 4 });
        var warmResults = new List<CompletionResult>();
        foreach (var p in prompts) warmResults.Add(await warm.CompleteAsync(Greedy(p)));
        for (int i = 0; i < prompts.Length; i++) Assert.Equal(cold[i], warmResults[i].TokenIds);

        int sameLength = warmResults[1].PromptTokens;
        Assert.Equal(0, warmResults[0].CachedPromptTokens);
        // The whole prompt but its last token (which must be computed for logits), rounded down to full blocks.
        Assert.Equal((sameLength - 1) / 4 * 4, warmResults[1].CachedPromptTokens);
        int systemTokens = model.Tokenizer.Encode(System, addSpecial: true, parseSpecial: true).Length;
        Assert.InRange(warmResults[2].CachedPromptTokens, (systemTokens - 1) / 4 * 4 - 4, warmResults[2].PromptTokens - 1);
        Assert.Equal(0, warmResults[3].CachedPromptTokens);
        Assert.Equal(warmResults.Sum(r => r.CachedPromptTokens), warm.Stats.PrefixCacheHitTokens);
        Assert.Equal(warmResults.Sum(r => r.PromptTokens), warm.Stats.PrefixCacheQueryTokens);
        Assert.Equal(warm.Stats.TotalKvBlocks, warm.Stats.FreeKvBlocks);
        Assert.True(warm.Stats.CachedKvBlocks > 0);
    }

    [SkippableFact]
    public async Task Greedy_outputs_with_a_shared_system_prompt_are_unchanged_under_preemption_and_eviction()
    {
        using var model = LoadStories();
        var prompts = LlmEngineTests.Prompts.Take(12).Select(p => System + p).ToArray();
        int[][] alone;
        using (var single = new LlmEngine(model, new EngineOptions { MaxNumSeqs = 1, MaxModelLen = 128, EnablePrefixCaching = false }))
            alone = [.. (await Task.WhenAll(prompts.Select(p => single.CompleteAsync(Greedy(p, 40))))).Select(r => r.TokenIds)];

        foreach (string policy in EvictionPolicies.Names)
        {
            int evictions = 0;
            // 12 blocks of 16 tokens: a few sequences at once, so the cache is both shared and evicted.
            using var tight = new LlmEngine(model, new EngineOptions
            {
                MaxModelLen = 128, NumKvBlocks = 12, MaxNumBatchedTokens = 64, EvictionPolicy = policy,
            });
            tight.KvEvents += e =>
            {
                if (e.Kind == KvEventKind.Evicted) evictions++;
            };
            var results = await Task.WhenAll(prompts.Select(p => tight.CompleteAsync(Greedy(p, 40))));
            for (int i = 0; i < prompts.Length; i++) Assert.Equal(alone[i], results[i].TokenIds);
            var s = tight.Stats;
            Assert.True(s.Preemptions > 0, $"{policy}: the tiny KV budget should have forced preemptions");
            Assert.True(s.PrefixCacheHitTokens > 0, $"{policy}: the shared system prompt should have hit the cache");
            Assert.True(evictions > 0, $"{policy}: 12 blocks cannot keep every prefix");
            Assert.Equal(s.KvEvictions, evictions);
            Assert.Equal(s.TotalKvBlocks, s.FreeKvBlocks);
        }
    }

    [SkippableFact]
    public async Task A_cache_salt_keeps_requests_from_sharing_blocks()
    {
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, BlockSize = 4 });
        await engine.CompleteAsync(Greedy(System) with { CacheSalt = "tenant-a" });
        var other = await engine.CompleteAsync(Greedy(System) with { CacheSalt = "tenant-b" });
        var same = await engine.CompleteAsync(Greedy(System) with { CacheSalt = "tenant-a" });
        Assert.Equal(0, other.CachedPromptTokens);
        Assert.True(same.CachedPromptTokens > 0);
        Assert.Equal(other.TokenIds, same.TokenIds);
    }

    static GenerationRequest Sampled(string prompt, ulong seed, int n = 1) => new()
    {
        Prompt = prompt,
        N = n,
        Sampling = new SamplingParams { Temperature = 1.0f, TopP = 0.95f, Seed = seed, MaxTokens = 12, IgnoreEos = true },
    };

    [SkippableFact]
    public async Task Parallel_sampling_computes_the_prompt_once_and_each_fork_equals_a_separate_seeded_request()
    {
        using var model = LoadStories();
        string prompt = System + "One day";
        int promptTokens = model.Tokenizer.Encode(prompt, addSpecial: true, parseSpecial: true).Length;
        Assert.NotEqual(0, promptTokens % 16); // the last prompt block is partial: the forks' first writes must copy it

        CompletionResult[] separate;
        using (var cold = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, EnablePrefixCaching = false }))
            separate = [.. await Task.WhenAll(Enumerable.Range(0, 3).Select(i => cold.CompleteAsync(Sampled(prompt, 42 + (ulong)i))))];
        Assert.True(separate.Select(r => string.Join(",", r.TokenIds)).Distinct().Count() > 1, "three seeds should not all sample alike");

        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, EnablePrefixCaching = false });
        int allocated = 0;
        engine.KvEvents += e =>
        {
            if (e.Kind == KvEventKind.Allocated) allocated++;
        };
        var chunks = new List<CompletionChunk>();
        await foreach (var c in engine.Generate(Sampled(prompt, 42, n: 3))) chunks.Add(c);
        Assert.Equal([0, 1, 2], chunks.Select(c => c.Index).Distinct().Order());
        Assert.Equal(3, chunks.Count(c => c.IsFinal));
        for (int i = 0; i < 3; i++)
            Assert.Equal(separate[i].TokenIds, chunks.Where(c => c.Index == i).SelectMany(c => c.TokenIds).ToArray());
        // The prompt's blocks once, one copy of the shared partial block for each of two forks (the last owner writes in
        // place), and each fork's own growth up to prompt + 11 tokens (the 12th sampled token is never fed back).
        int promptBlocks = KvCacheManager.BlocksFor(promptTokens, 16);
        Assert.Equal(promptBlocks + 2 + 3 * (KvCacheManager.BlocksFor(promptTokens + 11, 16) - promptBlocks), allocated);
        Assert.Equal(engine.Stats.TotalKvBlocks, engine.Stats.FreeKvBlocks);

        // Reproducible, with prefix caching on too.
        using var again = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        var choices = await again.CompleteChoicesAsync(Sampled(prompt, 42, n: 3));
        for (int i = 0; i < 3; i++)
        {
            Assert.Equal(i, choices[i].Index);
            Assert.Equal(separate[i].TokenIds, choices[i].TokenIds);
            Assert.Equal(separate[i].Text, choices[i].Text);
        }
    }

    [SkippableFact]
    public async Task Forks_under_preemption_still_equal_separate_seeded_requests()
    {
        using var model = LoadStories();
        string[] prompts = [System + "One day", "Once upon a time", System + "Tom found a shiny rock"];
        static GenerationRequest Long(string prompt, ulong seed, int n = 1) =>
            Sampled(prompt, seed, n) with { Sampling = Sampled(prompt, seed).Sampling with { MaxTokens = 60 } };

        CompletionResult[][] separate;
        using (var roomy = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, EnablePrefixCaching = false }))
            separate = await Task.WhenAll(prompts.Select((p, k) =>
                Task.WhenAll(Enumerable.Range(0, 3).Select(i => roomy.CompleteAsync(Long(p, 100 * (ulong)k + (ulong)i))))));

        // 9 sequences of up to ~90 tokens in 12 blocks of 16: forks are preempted and recomputed.
        using var tight = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, NumKvBlocks = 12, MaxNumBatchedTokens = 64 });
        var forked = await Task.WhenAll(prompts.Select((p, k) => tight.CompleteChoicesAsync(Long(p, 100 * (ulong)k, n: 3))));
        Assert.True(tight.Stats.Preemptions > 0, "the tiny KV budget should have forced preemptions");
        for (int k = 0; k < prompts.Length; k++)
            for (int i = 0; i < 3; i++)
                Assert.Equal(separate[k][i].TokenIds, forked[k][i].TokenIds);
        Assert.Equal(tight.Stats.TotalKvBlocks, tight.Stats.FreeKvBlocks);
    }

    [SkippableFact]
    public async Task Cancelling_a_parallel_request_aborts_every_fork_and_frees_their_blocks()
    {
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        // From the fourth step on, the engine waits for the consumer's cancel: the abort lands before the forks can finish.
        using var gate = new StepGate(engine, steps: 3);
        using var cts = new CancellationTokenSource();
        var finals = new List<CompletionChunk>();
        var request = Sampled("Once upon a time", 7, n: 4) with { Sampling = Sampled("", 7).Sampling with { MaxTokens = 100 } };
        try
        {
            await foreach (var c in engine.Generate(request, cts.Token))
            {
                if (c.IsFinal) finals.Add(c);
                if (c.CompletionTokens == 2 && !cts.IsCancellationRequested)
                {
                    await cts.CancelAsync();
                    gate.Open();
                }
            }
        }
        catch (OperationCanceledException)
        {
        }
        await LlmEngineTests.WaitFor(() => engine.Stats is { Running: 0, Waiting: 0 } s && s.FreeKvBlocks == s.TotalKvBlocks);
        Assert.DoesNotContain(finals, c => c.FinishReason == FinishReason.Length);
        Assert.Equal(1, engine.Stats.FinishedRequests);
        gate.Dispose();

        var greedyPair = await engine.CompleteChoicesAsync(Greedy("Lily", 10) with { N = 2 });
        Assert.Equal(greedyPair[0].TokenIds, greedyPair[1].TokenIds); // greedy forks agree
        Assert.Throws<InvalidRequestException>(() => { _ = engine.CompleteAsync(Greedy("Lily") with { N = 2 }); }); // refused at once, nothing queued
        Assert.Throws<InvalidRequestException>(() => engine.Generate(Greedy("Lily") with { N = 0 }));
    }
}
