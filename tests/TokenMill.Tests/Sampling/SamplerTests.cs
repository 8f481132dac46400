using CsCheck;
using TokenMill.Sampling;

namespace TokenMill.Tests.Sampling;

public class SamplerTests
{
    static readonly float[] Logits = [1.0f, 3.0f, 2.5f, -1.0f, 3.0f, 0.0f];

    [Fact]
    public void Greedy_takes_the_largest_logit_and_the_lowest_id_on_a_tie()
    {
        Assert.Equal(1, new Sampler(SamplingParams.Greedy).Sample(Logits).TokenId);
        Assert.Equal(1, new Sampler(new SamplingParams { Temperature = 1, TopK = 1 }).Sample(Logits).TokenId);
    }

    [Fact]
    public void The_same_seed_gives_the_same_tokens()
    {
        var p = new SamplingParams { Temperature = 1.5f, Seed = 1234 };
        var a = new Sampler(p);
        var b = new Sampler(p);
        var sa = Enumerable.Range(0, 200).Select(_ => a.Sample(Logits).TokenId).ToArray();
        var sb = Enumerable.Range(0, 200).Select(_ => b.Sample(Logits).TokenId).ToArray();
        Assert.Equal(sa, sb);
        Assert.True(sa.Distinct().Count() > 2, "temperature 1.5 over six logits should visit several tokens");
    }

    [Fact]
    public void Top_k_and_top_p_restrict_the_candidates()
    {
        var topK = new Sampler(new SamplingParams { Temperature = 5, TopK = 3, Seed = 1 });
        Assert.All(Enumerable.Range(0, 500).Select(_ => topK.Sample(Logits).TokenId), t => Assert.Contains(t, new[] { 1, 4, 2 }));

        // p(1) = p(4) ≈ 0.37 each at T=1, so top-p 0.5 keeps exactly those two.
        var topP = new Sampler(new SamplingParams { Temperature = 1, TopP = 0.5f, Seed = 2 });
        Assert.All(Enumerable.Range(0, 500).Select(_ => topP.Sample(Logits).TokenId), t => Assert.Contains(t, new[] { 1, 4 }));

        // min-p 0.5 drops every token below half the best probability: exp(2.5-3) ≈ 0.61 stays, exp(1-3) ≈ 0.14 goes.
        var minP = new Sampler(new SamplingParams { Temperature = 1, MinP = 0.5f, Seed = 3 });
        Assert.All(Enumerable.Range(0, 500).Select(_ => minP.Sample(Logits).TokenId), t => Assert.Contains(t, new[] { 1, 4, 2 }));
    }

    [Fact]
    public void Sampling_frequencies_follow_the_softmax()
    {
        float[] logits = [0f, MathF.Log(3f)]; // probabilities 1/4 and 3/4
        var s = new Sampler(new SamplingParams { Temperature = 1, Seed = 99 });
        int ones = Enumerable.Range(0, 20000).Count(_ => s.Sample(logits).TokenId == 1);
        Assert.InRange(ones / 20000.0, 0.73, 0.77);
    }

    [Theory]
    [InlineData(-0.1f, 0, 1f, 0f)]
    [InlineData(1f, -1, 1f, 0f)]
    [InlineData(1f, 0, 0f, 0f)]
    [InlineData(1f, 0, 1.5f, 0f)]
    [InlineData(1f, 0, 1f, 2f)]
    public void Out_of_range_parameters_are_rejected(float t, int k, float p, float minP)
    {
        Assert.Throws<ArgumentOutOfRangeException>(() => new Sampler(new SamplingParams { Temperature = t, TopK = k, TopP = p, MinP = minP }));
    }
}

public class SamplerProcessingTests
{
    [Fact]
    public void Logit_bias_can_force_or_forbid_a_token()
    {
        float[] logits = [5f, 1f, 0f];
        Assert.Equal(2, new Sampler(SamplingParams.Greedy with { LogitBias = new Dictionary<int, float> { [2] = 100f } }).Sample(logits).TokenId);
        Assert.Equal(1, new Sampler(SamplingParams.Greedy with { LogitBias = new Dictionary<int, float> { [0] = -100f } }).Sample(logits).TokenId);
    }

    [Fact]
    public void Repetition_penalty_divides_positive_and_multiplies_negative_logits_of_seen_tokens()
    {
        // Prompt token 0 (logit 3 → 3/2 = 1.5) falls below unseen token 1 (2.0).
        float[] logits = [3f, 2f, -1f];
        var s = new Sampler(SamplingParams.Greedy with { RepetitionPenalty = 2f }, promptTokens: [0]);
        Assert.Equal(1, s.Sample(logits).TokenId);
        // Now 1 was generated too: 3/2 = 1.5 vs 2/2 = 1.0 → token 0 again.
        Assert.Equal(0, s.Sample(logits).TokenId);
    }

    [Fact]
    public void Presence_and_frequency_penalties_push_generated_tokens_down()
    {
        float[] logits = [2f, 1.5f, 0f];
        var presence = new Sampler(SamplingParams.Greedy with { PresencePenalty = 1f });
        Assert.Equal(0, presence.Sample(logits).TokenId); // nothing generated yet
        Assert.Equal(1, presence.Sample(logits).TokenId); // 2 − 1 = 1 < 1.5

        var frequency = new Sampler(SamplingParams.Greedy with { FrequencyPenalty = 0.2f });
        var picks = Enumerable.Range(0, 6).Select(_ => frequency.Sample(logits).TokenId).ToArray();
        // 0 until its penalty (0.2 per use) exceeds the 0.5 gap: after 3 uses 2 − 0.6 = 1.4 < 1.5.
        Assert.Equal([0, 0, 0, 1], picks[..4]);
    }

    [Fact]
    public void Suppressed_tokens_are_never_picked()
    {
        float[] logits = [9f, 1f, 0.5f];
        Assert.Equal(1, new Sampler(SamplingParams.Greedy).Sample(logits, suppress: [0]).TokenId);
        var s = new Sampler(new SamplingParams { Temperature = 2, Seed = 5 });
        Assert.All(Enumerable.Range(0, 300), _ => Assert.NotEqual(0, s.Sample(logits, suppress: [0]).TokenId));
    }

    [Fact]
    public void Top_k_selection_agrees_with_a_full_sort()
    {
        Gen.Float[-5f, 5f].Array[1, 60].Select(Gen.Int[1, 60], (l, k) => (l, k)).Sample(t =>
        {
            var (logits, k) = t;
            var sampler = new Sampler(new SamplingParams { Temperature = 0.5f, TopK = k, Seed = 1 });
            var allowed = logits.Select((v, i) => (v, i)).OrderByDescending(x => x.v).ThenBy(x => x.i).Take(k).Select(x => x.i).ToHashSet();
            for (int i = 0; i < 20; i++) Assert.Contains(sampler.Sample(logits).TokenId, allowed);
        }, iter: 200);
    }

    [Fact]
    public void A_token_picked_elsewhere_and_accepted_counts_like_a_sampled_one()
    {
        // The CUDA sampler picks on the GPU and hands the token back through Accept: penalties and step follow it.
        float[] logits = [2f, 1.5f, 0f];
        var gpu = new Sampler(SamplingParams.Greedy with { PresencePenalty = 1f, Seed = 77 });
        var cpu = new Sampler(SamplingParams.Greedy with { PresencePenalty = 1f, Seed = 77 });
        gpu.Accept(cpu.Sample(logits).TokenId);
        Assert.Equal((1L, 1L), (gpu.Generated, cpu.Generated));
        Assert.Equal(cpu.Sample(logits).TokenId, gpu.Sample(logits).TokenId);   // both 1 now: 2 − 1 < 1.5
        Assert.Equal(77UL, gpu.Seed);
        Assert.NotEqual(new Sampler(SamplingParams.Greedy).Seed, new Sampler(SamplingParams.Greedy).Seed);   // drawn when not given
    }

    [Fact]
    public void The_kept_tokens_are_top_k_then_top_p_then_min_p_in_order_with_probabilities_of_the_top_k_softmax()
    {
        float[] logits = [1f, 3f, 2.5f, -1f, 3f, 0f, 2f];
        var kept = new Sampler(new SamplingParams { TopK = 5, TopP = 0.9f, MinP = 0.4f }).Kept(logits).ToArray();
        // Top-k 5 keeps ids 1, 4 (tied 3, lower id first), 2, 6, 0; their softmax; top-p 0.9 cuts after the cumulative reaches
        // it; min-p drops those below 0.3 × the first.
        double[] e = [.. new[] { 3f, 3f, 2.5f, 2f, 1f }.Select(v => Math.Exp(v - 3))];
        double sum = e.Sum();
        // Probabilities 0.32, 0.32, 0.20, 0.12, 0.04: top-p stops at 6 (cumulative 0.96 ≥ 0.9); min-p drops 6 (0.12 < 0.4 · 0.32).
        Assert.Equal([1, 4, 2], kept.Select(k => k.Id));
        for (int i = 0; i < kept.Length; i++) Assert.Equal(e[i] / sum, kept[i].Value, 1e-6);
    }
}
