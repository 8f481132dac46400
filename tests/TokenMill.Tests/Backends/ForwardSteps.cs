using TokenMill.Backends.Cpu;
using TokenMill.Generation;
using TokenMill.Models;

namespace TokenMill.Tests.Backends;

/// <summary>One sequence fed step by step through a CPU forward pass set up one way or another, for tests that compare two set-ups' logits.</summary>
static class ForwardSteps
{
    /// <summary>Prefill chunk, decode steps of one row, a two-row chunk, another decode step.</summary>
    public static readonly int[][] Default = [[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], [12], [13, 14], [15]];

    /// <summary>
    /// The logits after each of <paramref name="steps"/> on a forward pass that <paramref name="configure"/> set up, with
    /// chunks of up to <paramref name="maxBatchTokens"/> and a context of <paramref name="contextTokens"/>.
    /// </summary>
    public static List<float[]> Logits(Model model, CpuWorkerPool pool, Action<CpuForward> configure, int[][]? steps = null, int maxBatchTokens = 16, int contextTokens = 64)
    {
        using var forward = new CpuForward(model, maxBatchTokens, pool);
        configure(forward);
        using var sequence = new SingleSequence(forward, contextTokens);
        var logits = new List<float[]>();
        foreach (int[] tokens in steps ?? Default)
        {
            var step = new float[model.Config.VocabSize];
            sequence.Feed(tokens, step);
            logits.Add(step);
        }
        return logits;
    }

    /// <summary>Every step's logits the same bits, and finite.</summary>
    public static void AssertSameBits(List<float[]> expected, List<float[]> actual, string what)
    {
        Assert.Equal(expected.Count, actual.Count);
        for (int step = 0; step < expected.Count; step++)
        {
            int nonFinite = actual[step].Count(v => !float.IsFinite(v));
            Assert.True(nonFinite == 0, $"{what}, step {step}: {nonFinite} logits are not finite");
            Assert.True(expected[step].Select(BitConverter.SingleToInt32Bits).SequenceEqual(actual[step].Select(BitConverter.SingleToInt32Bits)),
                $"{what}, step {step}: the logits differ");
        }
    }
}
