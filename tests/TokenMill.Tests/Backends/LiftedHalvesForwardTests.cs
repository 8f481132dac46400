using TokenMill.Backends.Cpu;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Backends;

/// <summary>
/// An F16 model multiplied from its lifted copies (<see cref="CpuForward.LiftHalves"/>: weights times 2^10, activations
/// times 2^102) gives the bits of the pass that reads the file's halves: over a prefill chunk and a two-row chunk (the
/// tile kernel), over decode steps of one row (the one-row kernel), where feed-forward activations are too large to
/// scale (those products go back to the plain reading), where one matrix holds a value too large to lift, and after a
/// chunk long enough to be dequantized into the tile instead.
/// </summary>
public class LiftedHalvesForwardTests
{
    [SkippableTheory]
    [InlineData(1f, false)]
    [InlineData(5e4f, false)]
    [InlineData(1f, true)]
    public unsafe void Logits_are_the_bits_of_reading_the_files_halves(float ffnNormWeight, bool oneMatrixTooLarge)
    {
        Skip.IfNot(TileGemm.IsSupported, "the lifted copies are read by the AVX-512 kernels");
        using var model = DummyModelFactory.Create("dummy:tinyllama-1.1b", GgmlType.F16, blockCount: 1);
        // 5e4: the down projection's input rows hold values past 2^26, which cannot be scaled by 2^102 in f32.
        Array.Fill(model.Weights.Layers[0].FfnNorm, ffnNormWeight);
        var wq = model.Weights.Layers[0].Wq;
        if (oneMatrixTooLarge) ((ushort*)wq.Data)[5] = 0x5640; // 100: wq is read as it is, and with it wk and wv
        Assert.True(HalfRange.Scan(wq.AllBytes()).Liftable != oneMatrixTooLarge);
        int subnormals = 0;
        for (long i = 0; i < wq.Rows * wq.Columns; i++) subnormals += (((ushort*)wq.Data)[i] & 0x7C00) == 0 && (((ushort*)wq.Data)[i] & 0x3FF) != 0 ? 1 : 0;
        Assert.True(subnormals > 0, "the model's weights include f16 subnormals, which the lifted copies make normal");
        using var pool = new CpuWorkerPool(2);
        var plain = ForwardSteps.Logits(model, pool, f => f.LiftHalves = false);
        var lifted = ForwardSteps.Logits(model, pool, f => f.LiftHalves = true);
        ForwardSteps.AssertSameBits(plain, lifted, $"F16, feed-forward norm weights {ffnNormWeight}, one matrix too large {oneMatrixTooLarge}");
        var rebiased = ForwardSteps.Logits(model, pool, f => { f.LiftHalves = false; f.UnrebiasedHalves = false; });
        ForwardSteps.AssertSameBits(rebiased, lifted, "against the rebiasing reading");
        // A prefill chunk of FusedF16MaxRows rows or more: with LiftHalves it reads the file's halves dequantized into
        // the tile, the decode steps after it the lifted copies.
        int[][] longChunk = [Enumerable.Range(1, QuantizedDot.FusedF16MaxRows + 4).ToArray(), [300], [301, 302], [303]];
        var plainLong = ForwardSteps.Logits(model, pool, f => { f.LiftHalves = false; f.UnrebiasedHalves = false; }, longChunk, maxBatchTokens: 272, contextTokens: 288);
        var liftedLong = ForwardSteps.Logits(model, pool, f => f.LiftHalves = true, longChunk, maxBatchTokens: 272, contextTokens: 288);
        ForwardSteps.AssertSameBits(plainLong, liftedLong, $"F16 after a chunk of {QuantizedDot.FusedF16MaxRows + 4} rows, feed-forward norm weights {ffnNormWeight}, one matrix too large {oneMatrixTooLarge}");
    }
}
