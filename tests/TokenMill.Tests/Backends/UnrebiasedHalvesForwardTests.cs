using TokenMill.Backends.Cpu;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Backends;

/// <summary>
/// A forward pass over several rows of an F16 model reads the weights unrebiased against activations times 2^112
/// (<see cref="CpuForward.UnrebiasedHalves"/>): its logits must be the bits of the pass that rebiases each weight, for
/// a prefill chunk, for a decode step of one row (which takes neither path) and where some activation is too large
/// to scale (the product goes back to plain copies).
/// </summary>
public class UnrebiasedHalvesForwardTests
{
    [SkippableTheory]
    [InlineData(1f)]
    [InlineData(5e4f)]
    public void Logits_are_the_bits_of_rebiasing_each_weight(float ffnNormWeight)
    {
        Skip.IfNot(TileGemm.IsSupported, "the unrebiased reading is the AVX-512 tile kernel's");
        using var model = DummyModelFactory.Create("dummy:tinyllama-1.1b", GgmlType.F16, blockCount: 1);
        // 5e4: the feed-forward input rows hold values past 2^16 (and the down projection's past 10^9), which cannot be scaled by 2^112 in f32.
        Array.Fill(model.Weights.Layers[0].FfnNorm, ffnNormWeight);
        using var pool = new CpuWorkerPool(2);
        var rebiased = ForwardSteps.Logits(model, pool, f => f.UnrebiasedHalves = false);
        var unrebiased = ForwardSteps.Logits(model, pool, f => f.UnrebiasedHalves = true);
        ForwardSteps.AssertSameBits(rebiased, unrebiased, $"F16, feed-forward norm weights {ffnNormWeight}");
    }
}
