using TokenMill.Core;
using TokenMill.Models;
using TokenMill.Sampling;

namespace TokenMill.Tests.Core;

/// <summary>Beam search through the real engine on stories260K: its beams share KV blocks, and none may leak.</summary>
public class BeamSearchEngineTests
{
    static Model LoadStories() => GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));

    static GenerationRequest Beam(string prompt, int width, int n, int maxTokens, bool ignoreEos = true, float lengthPenalty = 1f) => new()
    {
        Prompt = prompt,
        BeamWidth = width,
        N = n,
        LengthPenalty = lengthPenalty,
        // Beam search ignores temperature: a sampling temperature must change nothing.
        Sampling = new SamplingParams { Temperature = 1.3f, MaxTokens = maxTokens, IgnoreEos = ignoreEos },
    };

    static double ScoreOf(CompletionResult r, float lengthPenalty) =>
        BeamSearch.Score(r.CumulativeLogprob!.Value, r.FinishReason == FinishReason.Stop ? r.TokenIds.Length - 1 : r.TokenIds.Length, lengthPenalty);

    static async Task AssertAllBlocksBack(LlmEngine engine) =>
        await LlmEngineTests.WaitFor(() => engine.Stats is { Running: 0, Waiting: 0 } s && s.FreeKvBlocks == s.TotalKvBlocks);

    [SkippableFact]
    public async Task Width_one_equals_greedy_decoding_with_the_same_log_probability()
    {
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        foreach (var prompt in LlmEngineTests.Prompts.Take(6))
        {
            var greedy = await engine.CompleteAsync(new GenerationRequest
            {
                Prompt = prompt,
                Sampling = SamplingParams.Greedy with { MaxTokens = 30, IgnoreEos = true, Logprobs = 0 },
            });
            var beam = await engine.CompleteAsync(Beam(prompt, width: 1, n: 1, maxTokens: 30));
            Assert.Equal(greedy.TokenIds, beam.TokenIds);
            Assert.Equal(greedy.Text, beam.Text);
            Assert.Equal(FinishReason.Length, beam.FinishReason);
            Assert.Equal(greedy.Logprobs!.Sum(l => (double)l.Logprob), beam.CumulativeLogprob!.Value, 1e-3);
        }
        await AssertAllBlocksBack(engine);
    }

    [SkippableTheory]
    [InlineData(1f, true)]
    [InlineData(1f, false)]
    [InlineData(0f, false)]
    [InlineData(2f, false)]
    public async Task Width_k_returns_k_distinct_hypotheses_best_first_the_best_no_worse_than_greedy(float lengthPenalty, bool ignoreEos)
    {
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        foreach (var prompt in LlmEngineTests.Prompts.Take(4))
        {
            var greedy = await engine.CompleteAsync(new GenerationRequest
            {
                Prompt = prompt,
                Sampling = SamplingParams.Greedy with { MaxTokens = 24, IgnoreEos = ignoreEos, Logprobs = 0 },
            });
            int greedyLength = greedy.FinishReason == FinishReason.Stop ? greedy.TokenIds.Length - 1 : greedy.TokenIds.Length;
            double greedyScore = BeamSearch.Score(greedy.Logprobs!.Sum(l => (double)l.Logprob), greedyLength, lengthPenalty);

            var beams = await engine.CompleteChoicesAsync(Beam(prompt, width: 4, n: 4, maxTokens: 24, ignoreEos, lengthPenalty));
            Assert.Equal(4, beams.Length);
            Assert.Equal(4, beams.Select(b => string.Join(",", b.TokenIds)).Distinct().Count());
            var scores = beams.Select(b => ScoreOf(b, lengthPenalty)).ToArray();
            for (int i = 1; i < scores.Length; i++) Assert.True(scores[i - 1] >= scores[i], $"choice {i} scores above choice {i - 1}");
            Assert.True(scores[0] >= greedyScore - 1e-3, $"beam search's best {scores[0]} is worse than greedy's {greedyScore} for \"{prompt}\"");
            Assert.All(beams, b => Assert.Equal(b.FinishReason == FinishReason.Length ? 24 : b.TokenIds.Length, b.TokenIds.Length));
        }
        await AssertAllBlocksBack(engine);
    }

    [SkippableFact]
    public async Task The_engine_finds_what_beam_search_over_separate_one_token_requests_finds()
    {
        // The reference asks the model for each beam's next-token distribution with a fresh request (prompt + beam, no
        // sharing, no forks); the engine shares, forks and drops KV blocks as beams come and go: the result must agree.
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, BlockSize = 4, EnablePrefixCaching = false });
        const int Width = 3, MaxTokens = 12;
        int[] prompt = model.Tokenizer.Encode("Once upon a time", addSpecial: true, parseSpecial: true);
        var search = new BeamSearch(Width, 1f, MaxTokens, t => model.Tokenizer.EndOfGenerationIds.Contains(t));
        while (!search.IsDone)
        {
            var proposals = new IReadOnlyList<TokenLogprob>[search.LiveCount];
            for (int b = 0; b < proposals.Length; b++)
            {
                var next = await engine.CompleteAsync(new GenerationRequest
                {
                    PromptTokenIds = [.. prompt, .. search.LiveTokens(b)],
                    Sampling = SamplingParams.Greedy with { MaxTokens = 1, Logprobs = 2 * Width },
                });
                proposals[b] = next.Logprobs![0].TopLogprobs!;
            }
            search.Step(proposals);
        }

        var found = await engine.CompleteChoicesAsync(new GenerationRequest
        {
            PromptTokenIds = prompt, BeamWidth = Width, N = Width, Sampling = new SamplingParams { MaxTokens = MaxTokens },
        });
        for (int i = 0; i < Width; i++)
        {
            Assert.Equal(search.Finished[i].Tokens, found[i].TokenIds);
            Assert.Equal(search.Finished[i].CumulativeLogprob, found[i].CumulativeLogprob!.Value, 1e-3);
        }
        await AssertAllBlocksBack(engine);
    }

    [SkippableFact]
    public async Task Beams_under_preemption_and_batch_mates_give_the_same_hypotheses_and_every_block_comes_back()
    {
        using var model = LoadStories();
        CompletionResult[] roomy;
        using (var alone = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 }))
            roomy = await alone.CompleteChoicesAsync(Beam("Once upon a time", width: 4, n: 2, maxTokens: 40));

        // 16 blocks of 16 tokens: four 48-token beams fit only by sharing their prompt; the mates force preemptions.
        using var tight = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, NumKvBlocks = 16, MaxNumBatchedTokens = 64 });
        var mates = LlmEngineTests.Prompts.Take(4).Select(p => tight.CompleteAsync(new GenerationRequest
        {
            Prompt = p, Sampling = SamplingParams.Greedy with { MaxTokens = 60, IgnoreEos = true },
        })).ToList();
        var beams = await tight.CompleteChoicesAsync(Beam("Once upon a time", width: 4, n: 2, maxTokens: 40)).WaitAsync(TimeSpan.FromSeconds(60));
        await Task.WhenAll(mates).WaitAsync(TimeSpan.FromSeconds(60));
        for (int i = 0; i < 2; i++) Assert.Equal(roomy[i].TokenIds, beams[i].TokenIds);
        Assert.True(tight.Stats.Preemptions > 0, "the tight KV budget should have forced preemptions");
        await AssertAllBlocksBack(tight);
    }

    [SkippableFact]
    public async Task Wide_beams_on_the_smallest_kv_cache_finish_and_give_every_block_back()
    {
        using var model = LoadStories();
        CompletionResult[][] roomy;
        using (var alone = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 }))
            roomy = await Task.WhenAll(LlmEngineTests.Prompts.Take(3).Select(p => alone.CompleteChoicesAsync(Beam(p, width: 6, n: 1, maxTokens: 90))));

        // 8 blocks of 16 tokens hold one 128-token sequence: six beams each, three requests at once, must take turns.
        using var tiny = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, NumKvBlocks = 8, MaxNumBatchedTokens = 32 });
        var results = await Task.WhenAll(LlmEngineTests.Prompts.Take(3).Select(p => tiny.CompleteChoicesAsync(Beam(p, width: 6, n: 1, maxTokens: 90))))
            .WaitAsync(TimeSpan.FromSeconds(120));
        for (int i = 0; i < 3; i++) Assert.Equal(roomy[i][0].TokenIds, results[i][0].TokenIds);
        Assert.True(tiny.Stats.Preemptions > 0, "the tiny KV budget should have forced preemptions");
        await AssertAllBlocksBack(tiny);
    }

    [SkippableFact]
    public async Task Beams_stream_one_final_chunk_per_hypothesis_and_cancelling_mid_search_frees_everything()
    {
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        var chunks = new List<CompletionChunk>();
        await foreach (var c in engine.Generate(Beam("Lily", width: 3, n: 2, maxTokens: 10))) chunks.Add(c);
        Assert.Equal([0, 1], chunks.Select(c => c.Index));
        Assert.All(chunks, c => Assert.True(c.IsFinal && c.TokenIds.Length == 10 && c.Text.Length > 0));

        // The tenth step of the search waits for the cancel: it lands mid-search.
        using var gate = new StepGate(engine, steps: 9);
        using var cts = new CancellationTokenSource();
        var aborted = new List<CompletionChunk>();
        var reading = Task.Run(async () =>
        {
            await foreach (var c in engine.Generate(Beam("Once upon a time", width: 4, n: 3, maxTokens: 100), cts.Token)) aborted.Add(c);
        });
        Assert.True(gate.WaitReached(), "the search did not reach its tenth step");
        await cts.CancelAsync();
        gate.Open();
        await reading;
        Assert.Equal([0, 1, 2], aborted.Select(c => c.Index));
        Assert.All(aborted, c => Assert.Equal(FinishReason.Abort, c.FinishReason));
        await AssertAllBlocksBack(engine);

        gate.Dispose();
        Assert.Equal(5, (await engine.CompleteAsync(Beam("Lily", width: 2, n: 1, maxTokens: 5))).CompletionTokens);
    }

    [SkippableFact]
    public async Task A_fault_in_one_beam_fails_the_whole_request_and_frees_every_beam()
    {
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        engine.BeforeSampleHook = seq =>
        {
            if (seq.RequestId == "doomed" && seq.OutputTokens.Count == 6) throw new InvalidOperationException("injected fault");
        };
        var mate = engine.CompleteChoicesAsync(Beam("Lily", width: 3, n: 3, maxTokens: 20));
        var doomed = engine.CompleteChoicesAsync(Beam("Once upon a time", width: 4, n: 2, maxTokens: 20) with { RequestId = "doomed" });
        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => doomed);
        Assert.Contains("injected fault", error.Message);
        Assert.Equal(3, (await mate).Length);
        await AssertAllBlocksBack(engine);
    }

    [SkippableFact]
    public async Task Shutting_down_aborts_a_beam_search_in_flight()
    {
        using var model = LoadStories();
        var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        // The sixth step waits until the shutdown begins: it lands mid-search.
        using var gate = new StepGate(engine, steps: 5);
        var choices = engine.CompleteChoicesAsync(Beam("Once upon a time", width: 4, n: 2, maxTokens: 100));
        Assert.True(gate.WaitReached(), "the search did not reach its sixth step");
        gate.Open();
        engine.Dispose();
        Assert.All(await choices.WaitAsync(TimeSpan.FromSeconds(10)), c => Assert.Equal(FinishReason.Abort, c.FinishReason));
    }

    [SkippableFact]
    public void Beam_requests_out_of_range_are_refused_with_the_parameter()
    {
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        string? Param(GenerationRequest r) => Assert.Throws<InvalidRequestException>(() => engine.Generate(r)).Param;
        Assert.Equal("beam_width", Param(Beam("Lily", width: 0, n: 1, maxTokens: 5)));
        Assert.Equal("beam_width", Param(Beam("Lily", width: 33, n: 1, maxTokens: 5)));
        Assert.Equal("n", Param(Beam("Lily", width: 2, n: 3, maxTokens: 5)));
        Assert.Equal("length_penalty", Param(Beam("Lily", width: 2, n: 1, maxTokens: 5, lengthPenalty: float.NaN)));
        var b = Beam("Lily", width: 2, n: 1, maxTokens: 5);
        Assert.Equal("logprobs", Param(b with { Sampling = b.Sampling with { Logprobs = 1 } }));
        Assert.Equal("stop", Param(b with { Sampling = b.Sampling with { Stop = ["."] } }));
        Assert.Equal(0, engine.Stats.Waiting + engine.Stats.Running);
    }
}
