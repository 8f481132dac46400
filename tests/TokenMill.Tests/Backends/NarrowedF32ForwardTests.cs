using TokenMill.Backends.Cpu;
using TokenMill.Models;
using TokenMill.Models.Dummy;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Backends;

/// <summary>
/// An F32 model whose values are all bf16 (or all f16) — an F32 GGUF converted from such a checkpoint — runs its
/// products on the 2-byte form (<see cref="NarrowedF32"/>): the logits must be the bits of the F32 kernels, for a
/// prefill chunk and for decode steps of one row — the one-row kernels, the tile kernel, and the narrowed matrices'
/// tiles — and a model of full-precision values must not narrow.
/// </summary>
public unsafe class NarrowedF32ForwardTests
{
    [SkippableTheory]
    [InlineData(GgmlType.BF16)]
    [InlineData(GgmlType.F16)]
    public void Logits_are_the_bits_of_the_F32_kernels(GgmlType source)
    {
        Skip.IfNot(TileGemm.IsSupported, "F32 is narrowed only where the AVX-512 kernels keep F32's order");
        using var model = DummyModelFactory.Create("dummy:tinyllama-1.1b", GgmlType.F32, blockCount: 1, valuesOf: source);
        var narrowed = NarrowedF32.Of(model.Weights.Layers[0].Gate).Tensor;
        Assert.NotNull(narrowed);
        Assert.Equal(source, narrowed.Type);
        using var pool = new CpuWorkerPool(2);
        // The one-row kernels (where a matrix has no tiles), and the tile kernel for every row count.
        var f32 = ForwardSteps.Logits(model, pool, f => (f.NarrowF32, f.FloatTiles) = (false, false));
        var twoBytes = ForwardSteps.Logits(model, pool, f => (f.NarrowF32, f.FloatTiles) = (true, false));
        ForwardSteps.AssertSameBits(f32, twoBytes, $"{source} values in F32, narrowed, one-row kernels");
        var f32Tile = ForwardSteps.Logits(model, pool, f => (f.NarrowF32, f.FloatTiles, f.TiledMinRows) = (false, false, 1));
        var twoBytesTile = ForwardSteps.Logits(model, pool, f => (f.NarrowF32, f.FloatTiles, f.TiledMinRows) = (true, false, 1));
        ForwardSteps.AssertSameBits(f32Tile, twoBytesTile, $"{source} values in F32, narrowed, tile kernel");
        // As it runs: the narrowed matrices' tiles, whose bits are the tile kernel's on the F32 rows.
        var packed = ForwardSteps.Logits(model, pool, f => f.NarrowF32 = true);
        ForwardSteps.AssertSameBits(f32Tile, packed, $"{source} values in F32, narrowed, on tiles");
    }

    [Fact]
    public void A_matrix_narrows_only_where_every_value_survives()
    {
        var rng = new Random(7);
        const int rows = 5, cols = 67; // a row of 64 + 3: the vector loop and the tail
        var values = new float[rows * cols];
        for (int i = 0; i < values.Length; i++) values[i] = Bf16.ToSingle(Bf16.FromSingle((float)rng.NextDouble() - 0.5f));
        values[3] = float.NegativeInfinity; // a bf16 too
        values[4] = -0f;
        fixed (float* p = values)
        {
            var w = new WeightTensor("w", GgmlType.F32, rows, cols, (byte*)p);
            var bf16 = NarrowedF32.Of(w).Tensor;
            Assert.NotNull(bf16);
            Assert.Equal(GgmlType.BF16, bf16.Type);
            var back = new float[cols];
            for (int r = 0; r < rows; r++)
            {
                Dequantize.Row(GgmlType.BF16, bf16.Row(r), back);
                Assert.Equal(values.AsSpan(r * cols, cols).ToArray().Select(BitConverter.SingleToInt32Bits), back.Select(BitConverter.SingleToInt32Bits));
            }

            // One low bit set in the last row's tail, or in a vector lane: not a bf16 matrix. Its values are not all
            // f16 either (bf16 has the wider exponent), except where every value is chosen to be.
            foreach (int at in new[] { rows * cols - 1, 2 * cols + 10 })
            {
                float kept = values[at];
                values[at] = BitConverter.Int32BitsToSingle(BitConverter.SingleToInt32Bits(0.25f) | 1);
                Assert.Null(NarrowedF32.Of(w).Tensor);
                values[at] = kept;
            }

            // Every value an f16 but not all bf16: F16; an infinity then refuses it (the order-keeping F16 kernels read finite halves).
            for (int i = 0; i < values.Length; i++) values[i] = (float)(Half)((float)rng.NextDouble() - 0.5f);
            values[7] = (float)(Half)1e-6f; // subnormal in f16
            var f16 = NarrowedF32.Of(w).Tensor;
            Assert.NotNull(f16);
            Assert.Equal(GgmlType.F16, f16.Type);
            for (int r = 0; r < rows; r++)
            {
                Dequantize.Row(GgmlType.F16, f16.Row(r), back);
                Assert.Equal(values.AsSpan(r * cols, cols).ToArray().Select(BitConverter.SingleToInt32Bits), back.Select(BitConverter.SingleToInt32Bits));
            }
            values[rows * cols - 2] = float.PositiveInfinity;
            Assert.Null(NarrowedF32.Of(w).Tensor);
        }
    }

    /// <summary>
    /// A first row of zeros (padding) and one full-precision value in a row that the sample before the copy skips:
    /// the whole scan still finds it.
    /// </summary>
    [Fact]
    public void A_value_that_does_not_narrow_is_found_outside_the_sampled_rows()
    {
        const int rows = 100, cols = 48;
        var values = new float[rows * cols];
        var rng = new Random(3);
        for (int i = cols; i < values.Length; i++) values[i] = Bf16.ToSingle(Bf16.FromSingle((float)rng.NextDouble()));
        fixed (float* p = values)
        {
            var w = new WeightTensor("w", GgmlType.F32, rows, cols, (byte*)p);
            Assert.Equal(GgmlType.BF16, NarrowedF32.Of(w).Tensor!.Type);
            values[3 * cols + 5] = 0.1f; // row 3: not among rows 0, 6, 12, … 99; and not an f16 either
            Assert.Null(NarrowedF32.Of(w).Tensor);
        }
    }

    [Fact]
    public void A_dummy_F32_model_of_full_precision_values_does_not_narrow()
    {
        using var model = DummyModelFactory.Create("dummy:tinyllama-1.1b", GgmlType.F32, blockCount: 1);
        Assert.Null(NarrowedF32.Of(model.Weights.Layers[0].Wq).Tensor);
    }
}
