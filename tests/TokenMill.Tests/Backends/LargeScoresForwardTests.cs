using TokenMill.Backends.Cpu;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;

namespace TokenMill.Tests.Backends;

/// <summary>
/// Attention scores far past exp's f32 range (~88) are ordinary in real models (attention sinks, unnormalized
/// queries). A dummy model with its attention norm weights at 30 has scores in the thousands: every logit must still
/// be finite, for prefill chunks and decode steps alike.
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
        var logits = ForwardSteps.Logits(model, pool, _ => { });
        for (int step = 0; step < logits.Count; step++)
        {
            int bad = logits[step].Count(v => !float.IsFinite(v));
            Assert.True(bad == 0, $"{dtype}, step {step} ({ForwardSteps.Default[step].Length} token(s)): {bad} of {logits[step].Length} logits are not finite");
        }
    }
}
