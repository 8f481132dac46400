using TokenMill.Backends;
using TokenMill.Core;
using TokenMill.Models;
using TokenMill.Sampling;

namespace TokenMill.Tests.Core;

/// <summary>
/// The engine's side of sampling on the device (<see cref="IDeviceSampling"/>, which the CUDA backend implements): a fake
/// "device" over the CPU executor keeps each step's logits to itself and samples them with the host's own
/// <see cref="Sampler"/>, so every request must come out exactly as on the plain CPU engine — the row each sequence samples
/// from, forks sharing a row, beams copying theirs back, min_tokens' suppression, the calls cut at MaxSampleRows, and the
/// host fallback when the device refuses a batch.
/// </summary>
public class DeviceSamplingEngineTests
{
    /// <summary>The fake device: the CPU's forward pass, logits kept here, host samplers run on request.</summary>
    sealed class FakeDevice(IModelExecutor cpu, int vocab, int maxSampleRows) : IModelExecutor, IDeviceSampling
    {
        float[] _logits = [];
        int _calls;
        Exception? _failure;
        public int ForwardsOnDevice, Copies, SampleCalls, Refusals, MostRows;

        /// <summary>"sample" or "copy": that call fails the device for good, as a CUDA error poisons the context.</summary>
        public string? LoseDeviceAt;

        void MaybeLose(string call)
        {
            if (_failure is not null) throw new InvalidOperationException("the device has failed", _failure);
            if (LoseDeviceAt != call) return;
            _failure = new InvalidOperationException($"device lost in {call}");
            throw _failure;
        }

        public int WorldSize => cpu.WorldSize;
        public Exception? Failure => _failure ?? cpu.Failure;
        public void Forward(ForwardBatch batch, Span<float> logits) => cpu.Forward(batch, logits);
        public void CopyBlock(int source, int destination) => cpu.CopyBlock(source, destination);
        public void Dispose() => cpu.Dispose();

        public bool CanSampleOnDevice(ForwardBatch batch) => true;

        public void ForwardOnDevice(ForwardBatch batch)
        {
            ForwardsOnDevice++;
            _logits = new float[batch.LogitRowCount * vocab];
            cpu.Forward(batch, _logits);
        }

        public void CopyLogits(int logitRow, Span<float> destination)
        {
            MaybeLose("copy");
            Copies++;
            _logits.AsSpan(logitRow * vocab, vocab).CopyTo(destination);
        }

        public int MaxSampleRows => maxSampleRows;

        public void Sample(ReadOnlySpan<int> logitRows, IReadOnlyList<Sampler> samplers, IReadOnlyList<IReadOnlyCollection<int>?> suppress, Span<SampledToken> results)
        {
            MaybeLose("sample");
            Assert.InRange(samplers.Count, 1, maxSampleRows);
            MostRows = Math.Max(MostRows, samplers.Count);
            // CudaSampler's packer refuses a whole call, before anything is sampled, for a token id outside the vocabulary.
            // The engine validates requests so that none reaches it; the fake refuses every third call to exercise the
            // engine's fallback (those rows sampled on the host from copied logits) all the same.
            if (++_calls % 3 == 0)
            {
                Refusals++;
                throw new ArgumentOutOfRangeException(nameof(samplers), "token id outside the vocabulary");
            }
            SampleCalls++;
            for (int i = 0; i < samplers.Count; i++) results[i] = samplers[i].Sample(_logits.AsSpan(logitRows[i] * vocab, vocab), suppress[i]);
        }
    }

    static Model LoadStories() => GgufModelLoader.Load(TestData.Require("models/stories260K.gguf"));

    /// <summary>Seeded requests of every kind the sampling loop treats apart, submitted together so they share steps.</summary>
    static GenerationRequest[] Requests(int vocab) =>
    [
        new() { Prompt = "Once upon a time", Sampling = new SamplingParams { Seed = 1, MaxTokens = 20, Logprobs = 3 } },
        new() { Prompt = "The little dog", N = 3, Sampling = new SamplingParams { Seed = 2, MaxTokens = 16, Temperature = 1.1f, TopK = 20 } },
        new() { Prompt = "Lily and Ben", Sampling = new SamplingParams { Seed = 3, MaxTokens = 12, MinTokens = 8, RepetitionPenalty = 1.3f, FrequencyPenalty = 0.5f } },
        new() { Prompt = "Tom had a red ball", BeamWidth = 3, N = 2, Sampling = new SamplingParams { MaxTokens = 10, IgnoreEos = true } },
        new() { Prompt = "One day", Sampling = SamplingParams.Greedy with { MaxTokens = 15, Logprobs = 1 } },
        new() { Prompt = "The sun", Sampling = new SamplingParams { Seed = 4, MaxTokens = 10, LogitBias = new Dictionary<int, float> { [vocab - 1] = 3f, [10] = 2f } } },
    ];

    /// <summary>Every choice of every request: its tokens and finish reason, and its logprobs (each token's, then its top ones; the cumulative one of beams).</summary>
    static async Task<(string[] Tokens, double[][] Logprobs)> Run(LlmEngine engine, GenerationRequest[] requests)
    {
        var results = await Task.WhenAll(requests.Select(r => engine.CompleteChoicesAsync(r)));
        var choices = results.SelectMany((c, i) => c.Select(choice => (Request: i, Choice: choice))).ToList();
        return ([.. choices.Select(c => $"{c.Request}/{c.Choice.Index}: {string.Join(",", c.Choice.TokenIds)} {c.Choice.FinishReason}")],
                [.. choices.Select(c => (c.Choice.Logprobs ?? []).SelectMany(l => new[] { (double)l.Logprob }.Concat(l.TopLogprobs?.Select(t => (double)t.Logprob) ?? []))
                    .Append(c.Choice.CumulativeLogprob ?? 0).ToArray())]);
    }

    [SkippableTheory]
    [InlineData(64)]
    [InlineData(2)]   // the step's rows in several calls
    public async Task Requests_sampled_on_a_device_come_out_as_on_the_CPU(int maxSampleRows)
    {
        using var model = LoadStories();
        int vocab = model.Config.VocabSize;
        var options = new EngineOptions { MaxModelLen = 128, NumKvBlocks = 128 };
        (string[] Tokens, double[][] Logprobs) expected;
        using (var cpu = new LlmEngine(model, options)) expected = await Run(cpu, Requests(vocab));

        FakeDevice? device = null;
        using var engine = new LlmEngine(model, options, executor => device = new FakeDevice(executor, vocab, maxSampleRows));
        var actual = await Run(engine, Requests(vocab));

        // The same tokens. The logprobs to float rounding: which requests share a step is up to timing, and the CPU's
        // logits for a row can differ in the last bit between a step of one row and a step of several.
        Assert.Equal(expected.Tokens, actual.Tokens);
        for (int i = 0; i < expected.Logprobs.Length; i++)
        {
            Assert.Equal(expected.Logprobs[i].Length, actual.Logprobs[i].Length);
            for (int j = 0; j < expected.Logprobs[i].Length; j++) Assert.Equal(expected.Logprobs[i][j], actual.Logprobs[i][j], 1e-4);
        }
        Assert.NotNull(device);
        Assert.True(device.ForwardsOnDevice > 0 && device.SampleCalls > 0, "nothing was sampled on the fake device");
        Assert.True(device.Copies > 0, "the beams' logits were never copied back");
        Assert.True(device.Refusals > 0, "no call was refused: the host fallback never ran");
        // Calls of at most MaxSampleRows rows (the fake asserts it), full ones when the step has more.
        if (maxSampleRows == 2) Assert.Equal(2, device.MostRows);
        else Assert.True(device.MostRows > 2, $"at most {device.MostRows} rows in one call: the step's rows were not sampled together");
        await LlmEngineTests.WaitFor(() => engine.Stats is { Running: 0, Waiting: 0 } s && s.FreeKvBlocks == s.TotalKvBlocks);
    }

    [SkippableTheory]
    [InlineData("sample", "Once upon a time", 1)]
    [InlineData("copy", "Tom had a red ball", 3)]   // beam search copies its rows back
    public async Task A_device_that_fails_while_sampling_stops_the_engine_with_one_error(string call, string prompt, int beamWidth)
    {
        using var model = LoadStories();
        FakeDevice? device = null;
        using var engine = new LlmEngine(model, new EngineOptions { MaxModelLen = 128, NumKvBlocks = 64 },
            executor => device = new FakeDevice(executor, model.Config.VocabSize, 8) { LoseDeviceAt = call });
        var request = new GenerationRequest { Prompt = prompt, BeamWidth = beamWidth > 1 ? beamWidth : null, Sampling = new SamplingParams { Seed = 1, MaxTokens = 8 } };
        await Assert.ThrowsAnyAsync<Exception>(() => engine.CompleteAsync(request));
        var failure = Assert.IsType<EngineFailedException>(engine.Failure);
        Assert.Contains($"device lost in {call}", failure.ToString());
        // Stopped for good: a new request is refused at once.
        Assert.Throws<EngineFailedException>(() => engine.Generate(new GenerationRequest { Prompt = "Once" }));
    }
}
