using TokenMill.Core;
using TokenMill.Models;
using TokenMill.Sampling;

namespace TokenMill.Tests.Core;

/// <summary>The engine end to end on stories260K: continuous batching must not change what a request gets.</summary>
public class LlmEngineTests
{
    internal static readonly string[] Prompts =
    [
        "Once upon a time", "Lily", "The cat sat on the mat and", "One day, a little boy named Tim went to the park with his mom.",
        "Sara had a red ball", "The sun was", "Ben and Mia were best friends. They liked to play", "There was a big tree",
        "A dog", "The little bird wanted to fly high in the sky, but", "Mom said", "Tom found a shiny rock",
        "It was a rainy day and the kids could not go outside, so they", "The princess", "Once there was a frog who lived in a pond",
        "Max liked to eat", "The boat", "In the forest, there was a tiny mouse who was very brave and",
        "Grandma made cookies", "The car was fast", "Anna looked at the stars and", "The fish swam",
        "A girl named Sue had a doll. She loved her doll very much and took it everywhere. One day", "Bob",
    ];

    static Model LoadStories() => GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));

    static async Task<int[][]> RunAll(LlmEngine engine, IEnumerable<GenerationRequest> requests) =>
        (await Task.WhenAll(requests.Select(r => engine.CompleteAsync(r)))).Select(r => r.TokenIds).ToArray();

    static GenerationRequest Greedy(string prompt, int maxTokens = 40) =>
        new() { Prompt = prompt, Sampling = SamplingParams.Greedy with { MaxTokens = maxTokens, IgnoreEos = true } };

    [SkippableFact]
    public async Task Greedy_outputs_of_a_batch_equal_each_prompt_run_alone_even_under_preemption()
    {
        using var model = LoadStories();
        Assert.Equal(24, Prompts.Length);

        int[][] alone;
        using (var single = new LlmEngine(model, new EngineOptions { MaxNumSeqs = 1, MaxModelLen = 128 }))
            alone = await RunAll(single, Prompts.Select(p => Greedy(p)));

        using (var batched = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, MaxNumBatchedTokens = 64 }))
        {
            var together = await RunAll(batched, Prompts.Select(p => Greedy(p)));
            for (int i = 0; i < Prompts.Length; i++) Assert.Equal(alone[i], together[i]);
            Assert.Equal(0, batched.Stats.Preemptions);
        }

        // 10 blocks of 16 tokens: room for about three of the 24 sequences at once.
        using (var tight = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, NumKvBlocks = 10, MaxNumBatchedTokens = 64 }))
        {
            var together = await RunAll(tight, Prompts.Select(p => Greedy(p)));
            for (int i = 0; i < Prompts.Length; i++) Assert.Equal(alone[i], together[i]);
            Assert.True(tight.Stats.Preemptions > 0, "the tiny KV budget should have forced preemptions");
            Assert.Equal(tight.Stats.TotalKvBlocks, tight.Stats.FreeKvBlocks);
        }
    }

    [SkippableFact]
    public async Task A_seeded_request_samples_the_same_tokens_whatever_its_batch_mates()
    {
        using var model = LoadStories();
        var seeded = new GenerationRequest
        {
            Prompt = "Once upon a time",
            Sampling = new SamplingParams { Temperature = 1.0f, TopP = 0.9f, Seed = 42, MaxTokens = 30, IgnoreEos = true },
        };
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        var alone = await engine.CompleteAsync(seeded);
        var mates = Prompts.Take(8).Select(p => engine.CompleteAsync(new GenerationRequest
        {
            Prompt = p,
            Sampling = new SamplingParams { Temperature = 1.2f, MaxTokens = 30 },
        })).ToList();
        var again = await engine.CompleteAsync(seeded);
        await Task.WhenAll(mates);
        Assert.Equal(alone.TokenIds, again.TokenIds);

        var otherSeed = await engine.CompleteAsync(seeded with { Sampling = seeded.Sampling with { Seed = 43 } });
        Assert.NotEqual(alone.TokenIds, otherSeed.TokenIds);
    }

    [SkippableFact]
    public async Task A_fault_outside_the_forward_pass_stops_the_engine_not_the_process()
    {
        // The step hook runs on the engine thread outside the guarded forward pass, as the scheduler's bookkeeping and a
        // copy-on-write do: an exception there once escaped the thread and ended the process.
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        // The fault waits until all three requests are in: earlier, a later submission would be refused by the stopped engine.
        using var submitted = new ManualResetEventSlim();
        int steps = 0;
        engine.BeforeStepHook = () =>
        {
            if (++steps < 3) return;
            submitted.Wait(TimeSpan.FromSeconds(30));
            throw new InvalidOperationException("injected fault");
        };
        var requests = Prompts.Take(3).Select(p => engine.CompleteAsync(new GenerationRequest
        {
            Prompt = p,
            Sampling = new SamplingParams { MaxTokens = 20, IgnoreEos = true },
        })).ToList();
        submitted.Set();
        foreach (var r in requests)
            Assert.Contains("the engine has stopped: injected fault", (await Assert.ThrowsAnyAsync<Exception>(() => r)).Message);
        Assert.Contains("injected fault", Assert.IsType<EngineFailedException>(engine.Failure).Message);
        // Stopped for good: a new request is refused at once, with the cause.
        Assert.Contains("injected fault", Assert.Throws<EngineFailedException>(() => engine.Generate(new GenerationRequest { Prompt = "Once" })).Message);
    }

    [SkippableFact]
    public async Task Cancelling_a_stream_aborts_the_request_and_frees_its_blocks_at_once()
    {
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        // From the fourth step on, the engine waits for the consumer's cancel: the abort lands mid-stream.
        using var gate = new StepGate(engine, steps: 3);
        using var cts = new CancellationTokenSource();
        int chunks = 0;
        CompletionChunk? last = null;
        await foreach (var chunk in engine.Generate(Greedy("Once upon a time", maxTokens: 120), cts.Token))
        {
            last = chunk;
            if (++chunks == 3)
            {
                await cts.CancelAsync();
                gate.Open();
            }
        }
        // The stream ends with the request: a final chunk that says it was aborted, long before 120 tokens.
        Assert.Equal(FinishReason.Abort, last!.FinishReason);
        Assert.InRange(last.CompletionTokens, 3, 119);
        await WaitFor(() => engine.Stats is { Running: 0, Waiting: 0 } s && s.FreeKvBlocks == s.TotalKvBlocks);

        // The engine goes on serving.
        gate.Dispose();
        var after = await engine.CompleteAsync(Greedy("Lily", maxTokens: 5));
        Assert.Equal(5, after.CompletionTokens);
    }

    [SkippableFact]
    public async Task When_a_request_ends_Stats_already_count_it_finished_with_its_blocks_freed()
    {
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        // "first" ends in a step where "later" (admitted after it, so sampled after it) still samples: the hook holds the
        // engine thread there, before the step's end, until the test has read Stats.
        var firstEnded = new TaskCompletionSource<int>(TaskCreationOptions.RunContinuationsAsynchronously);
        using var statsRead = new ManualResetEventSlim();
        bool firstSamplesItsLast = false;
        engine.BeforeSampleHook = seq =>
        {
            if (seq.RequestId == "first" && seq.OutputTokens.Count == 4) firstSamplesItsLast = true;
            else if (seq.RequestId == "later" && firstSamplesItsLast && !statsRead.IsSet)
            {
                firstEnded.TrySetResult((seq.ComputedTokens + engine.Options.BlockSize - 1) / engine.Options.BlockSize);
                statsRead.Wait(TimeSpan.FromSeconds(30));
            }
        };
        var first = engine.CompleteAsync(Greedy("Once upon a time", maxTokens: 5) with { RequestId = "first" });
        var later = engine.CompleteAsync(Greedy("Lily", maxTokens: 20) with { RequestId = "later" });
        Assert.Equal(5, (await first).CompletionTokens);
        int laterBlocks = await firstEnded.Task.WaitAsync(TimeSpan.FromSeconds(30));
        var s = engine.Stats;
        statsRead.Set();
        Assert.Equal(1, s.FinishedRequests);
        Assert.Equal(1, s.Running);
        Assert.Equal(laterBlocks, s.TotalKvBlocks - s.FreeKvBlocks);
        Assert.Equal(20, (await later).CompletionTokens);
        Assert.Equal(engine.Stats.TotalKvBlocks, engine.Stats.FreeKvBlocks);
    }

    [SkippableFact]
    public async Task A_fault_while_serving_one_request_fails_it_alone_and_the_engine_lives()
    {
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        engine.BeforeSampleHook = seq =>
        {
            if (seq.RequestId == "doomed" && seq.OutputTokens.Count == 3) throw new InvalidOperationException("injected fault");
        };
        var others = Prompts.Take(6).Select(p => engine.CompleteAsync(Greedy(p, maxTokens: 20))).ToList();
        var doomed = engine.CompleteAsync(Greedy("Once upon a time", maxTokens: 20) with { RequestId = "doomed" });
        var error = await Assert.ThrowsAsync<InvalidOperationException>(() => doomed);
        Assert.Contains("request doomed failed", error.Message);
        Assert.Contains("injected fault", error.Message);
        Assert.All(await Task.WhenAll(others), r => Assert.Equal(20, r.CompletionTokens));
        await WaitFor(() => engine.Stats is var s && s.FreeKvBlocks == s.TotalKvBlocks && s.Running == 0);
        Assert.Equal(5, (await engine.CompleteAsync(Greedy("Lily", maxTokens: 5))).CompletionTokens);
    }

    [SkippableFact]
    public async Task A_preemption_storm_is_bounded_each_request_failing_with_a_clear_error_after_its_cap()
    {
        using var model = LoadStories();
        // Room for one full sequence only, and at most one recomputation per request.
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 64, NumKvBlocks = 4, MaxPreemptionsPerRequest = 1 });
        var tasks = Prompts.Take(8).Select(p => engine.CompleteAsync(Greedy(p, maxTokens: 40))).ToList();
        int ok = 0;
        var errors = new List<string>();
        foreach (var t in tasks)
        {
            try
            {
                await t;
                ok++;
            }
            catch (InvalidOperationException e)
            {
                errors.Add(e.Message);
            }
        }
        Assert.True(ok > 0, "some requests should complete");
        Assert.NotEmpty(errors);
        Assert.All(errors, m => Assert.Contains("preempted 2 times (--max-preemptions 1): the KV cache is too small", m));
        Assert.True(engine.Stats.Preemptions > 0);
        await WaitFor(() => engine.Stats is var s && s.FreeKvBlocks == s.TotalKvBlocks && s.Running == 0 && s.Waiting == 0);
    }

    [SkippableFact]
    public async Task A_full_waiting_queue_refuses_with_a_distinct_overloaded_error_and_loses_nothing()
    {
        using var model = LoadStories();
        using (var closed = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, MaxQueuedRequests = 0 }))
        {
            var e = Assert.Throws<EngineOverloadedException>(() => closed.Generate(Greedy("Lily")));
            Assert.Contains("--max-queued-requests", e.Message);
        }

        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, MaxNumSeqs = 1, MaxQueuedRequests = 3 });
        var accepted = new List<Task<CompletionResult>>();
        int refused = 0;
        for (int i = 0; i < 40; i++)
        {
            try
            {
                accepted.Add(engine.CompleteAsync(Greedy(Prompts[i % Prompts.Length], maxTokens: 30)));
            }
            catch (EngineOverloadedException)
            {
                refused++;
            }
        }
        Assert.True(refused > 0, "40 requests against a queue of 3 should see refusals");
        var results = await Task.WhenAll(accepted);
        Assert.All(results, r => Assert.Equal(30, r.CompletionTokens));
        await WaitFor(() => engine.Stats is var s && s.FreeKvBlocks == s.TotalKvBlocks);
    }

    [SkippableFact]
    public async Task Invalid_requests_are_refused_with_the_reason()
    {
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 64 });
        var tooLong = Assert.Throws<InvalidRequestException>(() => engine.Generate(Greedy("Once upon a time", maxTokens: 100)));
        Assert.Contains("maximum context length is 64", tooLong.Message);
        var badTemperature = Assert.Throws<InvalidRequestException>(() =>
            engine.Generate(new GenerationRequest { Prompt = "x", Sampling = new SamplingParams { Temperature = -1 } }));
        Assert.Contains("temperature", badTemperature.Message);
        var badToken = Assert.Throws<InvalidRequestException>(() => engine.Generate(new GenerationRequest { PromptTokenIds = [1, 999] }));
        Assert.Contains("999", badToken.Message);
        Assert.Equal(0, engine.Stats.Waiting + engine.Stats.Running);
    }

    [SkippableFact]
    public async Task A_stop_string_ends_the_text_before_it_with_finish_reason_stop()
    {
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        var r = await engine.CompleteAsync(new GenerationRequest
        {
            Prompt = "Once upon a time",
            Sampling = SamplingParams.Greedy with { MaxTokens = 40, Stop = ["Lily"] },
        });
        Assert.Equal(", there was a little girl named", r.Text.Trim());
        Assert.Equal(FinishReason.Stop, r.FinishReason);
    }

    [SkippableFact]
    public async Task Logprobs_describe_the_model_distribution()
    {
        using var model = LoadStories();
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128 });
        var r = await engine.CompleteAsync(new GenerationRequest
        {
            Prompt = "Once upon a time",
            Sampling = SamplingParams.Greedy with { MaxTokens = 10, Logprobs = 3 },
        });
        Assert.Equal(10, r.Logprobs!.Count);
        for (int i = 0; i < 10; i++)
        {
            var lp = r.Logprobs[i];
            Assert.Equal(r.TokenIds[i], lp.TokenId);
            Assert.Equal(3, lp.TopLogprobs!.Length);
            Assert.Equal(lp.TokenId, lp.TopLogprobs[0].TokenId); // greedy picks the most likely
            Assert.Equal(lp.Logprob, lp.TopLogprobs[0].Logprob, 1e-5f);
            Assert.True(lp.TopLogprobs[0].Logprob >= lp.TopLogprobs[1].Logprob && lp.TopLogprobs[1].Logprob >= lp.TopLogprobs[2].Logprob);
            Assert.True(lp.Logprob <= 0);
        }
    }

    [SkippableFact]
    public void The_kv_budget_must_hold_one_full_sequence()
    {
        using var model = LoadStories();
        var e = Assert.Throws<ArgumentException>(() => new LlmEngine(model, new EngineOptions { MaxModelLen = 128, NumKvBlocks = 7 }));
        Assert.Contains("cannot hold one sequence of --max-model-len 128", e.Message);
    }

    /// <summary>Polls <paramref name="condition"/> until it holds, for up to 30 s (a loaded CI machine can stall a poll for seconds).</summary>
    internal static async Task WaitFor(Func<bool> condition)
    {
        var deadline = System.Diagnostics.Stopwatch.StartNew();
        while (!condition() && deadline.Elapsed < TimeSpan.FromSeconds(30)) await Task.Delay(10);
        Assert.True(condition(), "the engine did not reach the expected state within 30 s");
    }
}
