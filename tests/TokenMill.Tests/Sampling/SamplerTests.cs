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
