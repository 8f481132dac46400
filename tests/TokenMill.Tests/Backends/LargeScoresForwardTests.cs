using TokenMill.Backends.Cpu;
using TokenMill.Generation;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;

namespace TokenMill.Tests.Backends;

/// <summary>
/// Attention scores far past exp's f32 range (~88) are ordinary in real models (attention sinks, unnormalized
/// queries). A dummy model with its attention norm weights at 30 has scores in the thousands: every logit must still
/// be finite, for a prefill chunk and a decode step alike.
/// </summary>
public class LargeScoresForwardTests
{
    [Theory]
    [InlineData(GgmlType.F32)]
    [InlineData(GgmlType.Q8_0)]
    public void Logits_stay_finite_when_scores_are_in_the_thousands(GgmlType dtype)
    {
        using var model = DummyModelFactory.Create("dummy:tinyllama-1.1b", dtype, blockCount: 1);
        Array.Fill(model.Weights.Layers[0].AttnNorm, 30f);
        using var pool = new CpuWorkerPool(2);
        using var forward = new CpuForward(model, maxBatchTokens: 16, pool);
        using var sequence = new SingleSequence(forward, 64);
        var logits = new float[model.Config.VocabSize];
        foreach (int[] tokens in new[] { new[] { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11 }, [12] })
        {
            sequence.Feed(tokens, logits);
            int bad = logits.Count(v => !float.IsFinite(v));
            Assert.True(bad == 0, $"{dtype}, after {tokens.Length} token(s): {bad} of {logits.Length} logits are not finite");
        }
    }
}
