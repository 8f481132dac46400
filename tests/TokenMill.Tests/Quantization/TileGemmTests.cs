using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Quantization;

/// <summary>
/// The several-row product (<see cref="QuantizedDot.MatMulRowRange"/>, <see cref="QuantizedDot.MatMul"/>): the
/// weight rows dequantized into an f32 tile, then the AVX-512 register-blocked kernel (<see cref="TileGemm"/>) or
/// the AVX2 one. Checked against the scalar dequantizer and a dot product in double, over shapes that exercise
/// every block edge of the kernel — 6 activation rows × 4 weight rows, 16-row blocks, 512-column panels, 16-lane
/// vectors — and for batch invariance: a row's result must not depend on its batch mates.
/// </summary>
public class TileGemmTests
{
    /// <summary>The floating-point types, and three that take the dequantize-to-tile path with blocks.</summary>
    public static TheoryData<GgmlType> TileTypes() => [GgmlType.F32, GgmlType.F16, GgmlType.BF16, GgmlType.Q8_0, GgmlType.Q4_K, GgmlType.Q6_K];

    /// <summary>
    /// Column counts: for one-element "blocks" under one vector, one vector ± 1, a panel ± a vector and a bit, and
    /// over two panels with a tail; for block types 1, 2 and 5 blocks (past one 512-column panel at 5 × 256).
    /// </summary>
    static int[] Columns(GgmlType type)
    {
        int blockSize = GgmlTypeInfo.Of(type).BlockSize;
        return blockSize == 1 ? [1, 7, 15, 16, 17, 40, 500, 512, 529, 1040] : [blockSize, 2 * blockSize, 5 * blockSize];
    }

    static (double Dot, double AbsSum)[] Reference(GgmlType type, byte[] w, int rows, int cols, float[] xs, int n)
    {
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
        var wf = new float[cols];
        var result = new (double, double)[n * rows];
        for (int r = 0; r < rows; r++)
        {
            Dequantize.RowScalar(type, w.AsSpan(r * rowBytes, rowBytes), wf);
            for (int i = 0; i < n; i++)
            {
                double dot = 0, abs = 0;
                for (int c = 0; c < cols; c++)
                {
                    double p = (double)wf[c] * xs[i * cols + c];
                    dot += p;
                    abs += Math.Abs(p);
                }
                result[i * rows + r] = (dot, abs);
            }
        }
        return result;
    }

    static void AssertClose((double Dot, double AbsSum) expected, float actual, string what)
    {
        // f32 accumulation over at most a few thousand terms: 1e-5 of Σ|w·x| is ~100 ulps of headroom.
        double tolerance = 1e-5 * expected.AbsSum + 1e-30;
        Assert.True(Math.Abs(actual - expected.Dot) <= tolerance,
            $"{what}: expected {expected.Dot}, got {actual} (difference {Math.Abs(actual - expected.Dot)}, tolerance {tolerance})");
    }

    /// <summary>Every row range [r0, r0 + count) of a matrix, multiplied into ys filled with NaN, against the reference.</summary>
    [Theory]
    [MemberData(nameof(TileTypes))]
    public void Row_ranges_match_the_scalar_reference(GgmlType type)
    {
        var rng = new Random(61 + (int)type);
        foreach (int cols in Columns(type))
        {
            // 21 rows: a 16-row block and a 5-row one (4 + 1 at the kernel's edge) when taken whole.
            const int rows = 21;
            foreach (int n in new[] { 2, 3, 5, 6, 7, 13 })
            {
                var w = RandomBlocks.Row(type, rows * cols, rng);
                var xs = RandomBlocks.Floats(rng, n * cols);
                var expected = Reference(type, w, rows, cols, xs, n);
                foreach (var (r0, count) in new[] { (0, rows), (0, 16), (16, 5), (3, 9), (20, 1), (7, 0) })
                {
                    var ys = Enumerable.Repeat(float.NaN, n * rows).ToArray();
                    var tile = new float[QuantizedDot.TileLength(count, cols)];
                    QuantizedDot.MatMulRowRange(type, w, rows, cols, r0, count, xs, n, ys, tile);
                    for (int i = 0; i < n; i++)
                        for (int r = 0; r < rows; r++)
                        {
                            string what = $"{type} [{rows}×{cols}] rows {r0}..{r0 + count}, n = {n}, activation {i}, row {r}";
                            if (r >= r0 && r < r0 + count) AssertClose(expected[i * rows + r], ys[i * rows + r], what);
                            else Assert.True(float.IsNaN(ys[i * rows + r]), $"{what}: written outside the range");
                        }
                }
            }
        }
    }

    /// <summary>n = 2..40 activation rows through the public product, with each kernel this CPU has.</summary>
    [Theory]
    [MemberData(nameof(TileTypes))]
    public void Every_batch_size_from_2_to_40_matches_the_scalar_reference(GgmlType type)
    {
        var rng = new Random(83 + (int)type);
        int cols = GgmlTypeInfo.Of(type).BlockSize == 1 ? 530 : 2 * GgmlTypeInfo.QK_K;
        const int rows = 19;
        var w = RandomBlocks.Row(type, rows * cols, rng);
        var xsAll = RandomBlocks.Floats(rng, 40 * cols);
        var expected = Reference(type, w, rows, cols, xsAll, 40);
        var kernels = TileGemm.IsSupported ? new[] { true, false } : [false];
        for (int n = 2; n <= 40; n++)
        {
            var xs = xsAll.AsSpan(0, n * cols);
            foreach (bool avx512 in kernels)
            {
                var ys = new float[n * rows];
                QuantizedDot.MatMulWithTileKernel(type, w, rows, cols, xs, n, ys, avx512);
                for (int i = 0; i < n; i++)
                    for (int r = 0; r < rows; r++)
                        AssertClose(expected[i * rows + r], ys[i * rows + r], $"{type} [{rows}×{cols}], n = {n}, {(avx512 ? "AVX-512" : "AVX2")} kernel, activation {i}, row {r}");
            }
        }
    }

    /// <summary>
    /// Batch invariance, bit for bit: each activation row's results equal those of the row multiplied alone, for
    /// every batch size and position, and whatever row range (tile) and kernel block the weight row falls in.
    /// </summary>
    [SkippableTheory]
    [MemberData(nameof(TileTypes))]
    public void A_rows_result_does_not_depend_on_its_batch_mates(GgmlType type)
    {
        Skip.IfNot(TileGemm.IsSupported, "the AVX-512 tile kernel does not run on this CPU (the AVX2 one makes no such promise)");
        var rng = new Random(97 + (int)type);
        foreach (int cols in Columns(type))
        {
            const int rows = 23;
            var w = RandomBlocks.Row(type, rows * cols, rng);
            var xs = RandomBlocks.Floats(rng, 40 * cols);
            var alone = new float[40 * rows];
            var tile = new float[QuantizedDot.TileLength(rows, cols)];
            for (int i = 0; i < 40; i++)
                QuantizedDot.MatMulRowRange(type, w, rows, cols, 0, rows, xs.AsSpan(i * cols, cols), 1, alone.AsSpan(i * rows, rows), tile);
            foreach (int n in new[] { 2, 5, 6, 11, 40 })
            {
                // In tiles of 16 rows and then 7, as CpuForward's workers take them, and split at 9, which puts
                // rows that were in a block of 4 alone (8) or into other blocks (9..12).
                foreach (var (offset, split) in new[] { (0, 16), (40 - n, 16), (40 - n, 9) })
                {
                    var batch = xs.AsSpan(offset * cols, n * cols);
                    var ys = new float[n * rows];
                    QuantizedDot.MatMulRowRange(type, w, rows, cols, 0, split, batch, n, ys, tile);
                    QuantizedDot.MatMulRowRange(type, w, rows, cols, split, rows - split, batch, n, ys, tile);
                    for (int i = 0; i < n; i++)
                        for (int r = 0; r < rows; r++)
                            Assert.True(BitConverter.SingleToInt32Bits(alone[(offset + i) * rows + r]) == BitConverter.SingleToInt32Bits(ys[i * rows + r]),
                                $"{type} [{rows}×{cols}], n = {n}, activation {offset + i} at position {i}, row {r}: {ys[i * rows + r]} in the batch, {alone[(offset + i) * rows + r]} alone");
                }
            }
        }
    }

    /// <summary>The tile decoders of the 16-bit float types on every bit pattern, NaNs and subnormals included.</summary>
    [Theory]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    public void Sixteen_bit_decoders_are_bit_identical_to_the_scalar_ones_on_every_pattern(GgmlType type)
    {
        // 65,536 patterns and 7 more so the row ends in a tail shorter than a vector.
        const int count = 65536 + 7;
        var row = new byte[2 * count];
        for (int i = 0; i < count; i++)
        {
            row[2 * i] = (byte)i;
            row[2 * i + 1] = (byte)(i >> 8);
        }
        var simd = new float[count];
        var scalar = new float[count];
        Dequantize.Row(type, row, simd);
        Dequantize.RowScalar(type, row, scalar);
        for (int i = 0; i < count; i++)
            Assert.True(BitConverter.SingleToInt32Bits(simd[i]) == BitConverter.SingleToInt32Bits(scalar[i]),
                $"{type} 0x{i & 0xFFFF:X4}: SIMD 0x{BitConverter.SingleToInt32Bits(simd[i]):X8}, scalar 0x{BitConverter.SingleToInt32Bits(scalar[i]):X8}");
    }
}
