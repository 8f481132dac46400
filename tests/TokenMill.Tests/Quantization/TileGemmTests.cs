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
    /// Column counts: for one-element "blocks" under one vector, one vector ± 1, a 1024-column panel ± a vector and a
    /// bit, and over two panels with a tail; for block types 1, 2 and 5 blocks, and the fewest past one panel.
    /// </summary>
    static int[] Columns(GgmlType type)
    {
        int blockSize = GgmlTypeInfo.Of(type).BlockSize;
        return blockSize == 1
            ? [1, 7, 15, 16, 17, 40, 1008, 1024, 1041, 2100]
            : new[] { blockSize, 2 * blockSize, 5 * blockSize, (1024 / blockSize + 1) * blockSize }.Distinct().ToArray();
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

    /// <summary>The whole product with the activation rows further apart than a row (NaN between them), against it with them packed.</summary>
    [Theory]
    [MemberData(nameof(TileTypes))]
    public void Activation_rows_further_apart_give_the_same_bits(GgmlType type)
    {
        var rng = new Random(83 + (int)type);
        foreach (int cols in Columns(type))
        {
            const int rows = 21;
            var w = RandomBlocks.Row(type, rows * cols, rng);
            foreach (int n in new[] { 2, 7, 13 })
            {
                var xs = RandomBlocks.Floats(rng, n * cols);
                var tile = new float[QuantizedDot.TileLength(rows, cols)];
                var dense = new float[n * rows];
                QuantizedDot.MatMulRowRange(type, w, rows, cols, 0, rows, xs, n, dense, tile);
                foreach (int ldx in new[] { QuantizedDot.PaddedStride(cols), cols + 5 })
                {
                    // The rows ldx apart, NaN between them: a kernel that read the gap would show it.
                    var spread = Enumerable.Repeat(float.NaN, (n - 1) * ldx + cols).ToArray();
                    for (int i = 0; i < n; i++) xs.AsSpan(i * cols, cols).CopyTo(spread.AsSpan(i * ldx));
                    var ys = new float[n * rows];
                    QuantizedDot.MatMulRowRange(type, w, rows, cols, 0, rows, spread, n, ys, tile, ldx: ldx);
                    for (int k = 0; k < ys.Length; k++)
                        Assert.True(BitConverter.SingleToInt32Bits(dense[k]) == BitConverter.SingleToInt32Bits(ys[k]),
                            $"{type} [{rows}×{cols}], n = {n}, rows {ldx} apart, output {k}: {ys[k]} against {dense[k]}");
                }
            }
        }
    }

    [Fact]
    public void Activation_rows_closer_than_a_row_are_refused()
    {
        var e = Assert.Throws<ArgumentOutOfRangeException>(() =>
            QuantizedDot.MatMulRowRange(GgmlType.F32, new byte[4 * 64 * 4], 4, 64, 0, 4, new float[2 * 64], 2, new float[8], new float[256], ldx: 63));
        Assert.Contains("63", e.Message);
        Assert.Throws<ArgumentException>(() =>
            QuantizedDot.MatMulRowRange(GgmlType.F32, new byte[4 * 64 * 4], 4, 64, 0, 4, new float[2 * 64], 2, new float[8], new float[256], ldx: 80));
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
                    // The next range's hint anywhere, past the end included: only where lines are asked for changes.
                    QuantizedDot.MatMulRowRange(type, w, rows, cols, r0, count, xs, n, ys, tile, aheadRow: (r0 + 2 * count) % (rows + 3));
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
        const int Batch = 64;
        var rng = new Random(97 + (int)type);
        foreach (int cols in Columns(type))
        {
            const int rows = 23;
            var w = RandomBlocks.Row(type, rows * cols, rng);
            var xs = RandomBlocks.Floats(rng, Batch * cols);
            var alone = new float[Batch * rows];
            var tile = new float[QuantizedDot.TileLength(rows, cols)];
            for (int i = 0; i < Batch; i++)
                QuantizedDot.MatMulRowRange(type, w, rows, cols, 0, rows, xs.AsSpan(i * cols, cols), 1, alone.AsSpan(i * rows, rows), tile);
            foreach (int n in new[] { 2, 5, 6, 7, 11, 13, 32, 40, 64 }) // 7 to 64: TileGemm.Interleaved against the blocks of a row alone
            {
                // In tiles of 16 rows and then 7, as CpuForward's workers take them, and split at 9, which puts
                // rows that were in a block of 4 alone (8) or into other blocks (9..12).
                foreach (var (offset, split) in new[] { (0, 16), (Batch - n, 16), (Batch - n, 9) })
                {
                    var batch = xs.AsSpan(offset * cols, n * cols);
                    var ys = new float[n * rows];
                    QuantizedDot.MatMulRowRange(type, w, rows, cols, 0, split, batch, n, ys, tile, aheadRow: split);
                    QuantizedDot.MatMulRowRange(type, w, rows, cols, split, rows - split, batch, n, ys, tile, aheadRow: rows - 1);
                    for (int i = 0; i < n; i++)
                        for (int r = 0; r < rows; r++)
                            Assert.True(BitConverter.SingleToInt32Bits(alone[(offset + i) * rows + r]) == BitConverter.SingleToInt32Bits(ys[i * rows + r]),
                                $"{type} [{rows}×{cols}], n = {n}, activation {offset + i} at position {i}, row {r}: {ys[i * rows + r]} in the batch, {alone[(offset + i) * rows + r]} alone");
                }
            }
        }
    }

    /// <summary>
    /// F16/BF16 weights converted in the microkernel (<see cref="TileGemm.MultiplyHalf"/>) against dequantized into the
    /// tile first: the same bits, for n = 1..40, column counts at the vector, panel and block edges, row ranges that
    /// start mid-matrix, weights at an odd byte address and activations at an odd float offset, with rows of finite
    /// weights only (where the kernel drops its infinity/NaN fix-up after the first activation block) and rows that
    /// hold infinities, NaNs and subnormals.
    /// </summary>
    [SkippableTheory]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    public void Converting_weights_in_the_kernel_gives_the_bits_of_dequantizing_them_first(GgmlType type)
    {
        Skip.IfNot(TileGemm.IsSupported, "the fused path is the AVX-512 tile kernel's");
        var rng = new Random(131 + (int)type);
        ushort[] specials = type == GgmlType.F16
            ? [0x7C00, 0xFC00, 0x7E01, 0x7C01, 0xFD55, 0x0001, 0x83FF, 0x0000, 0x8000, 0x7BFF]
            : [0x7F80, 0xFF80, 0x7FC1, 0x7F81, 0xFFAA, 0x0001, 0x807F, 0x0000, 0x8000, 0x7F7F];
        foreach (int cols in new[] { 1, 7, 15, 16, 17, 33, 500, 512, 529, 1040 })
        {
            const int rows = 21;
            var finite = RandomBlocks.Row(type, rows * cols, rng);
            var special = (byte[])finite.Clone();
            // Rows 3 and 19: one in each 16-row block of the whole matrix.
            foreach (int r in new[] { 3, 19 })
                for (int j = 0; j < specials.Length && j < cols; j++)
                {
                    int c = (j * 7 + r) % cols;
                    special[2 * (r * cols + c)] = (byte)specials[j];
                    special[2 * (r * cols + c) + 1] = (byte)(specials[j] >> 8);
                }
            var xsAll = RandomBlocks.Floats(rng, 40 * cols + 3);
            var tile = new float[QuantizedDot.TileLength(rows, cols)];
            foreach (var matrix in new[] { finite, special })
            {
                var shifted = new byte[matrix.Length + 1];
                matrix.CopyTo(shifted, 1);
                var w = shifted.AsSpan(1);
                for (int n = 1; n <= 40; n++)
                {
                    var xs = xsAll.AsSpan(3, n * cols);
                    foreach (var (r0, count) in new[] { (0, rows), (3, 17), (5, 1) })
                    {
                        var fused = Enumerable.Repeat(float.NaN, n * rows).ToArray();
                        var dequantized = Enumerable.Repeat(float.NaN, n * rows).ToArray();
                        QuantizedDot.MatMulRowRangeWith(type, w, rows, cols, r0, count, xs, n, fused, tile, fusedHalf: true);
                        QuantizedDot.MatMulRowRangeWith(type, w, rows, cols, r0, count, xs, n, dequantized, tile, fusedHalf: false);
                        if (matrix == finite) // known finite (HalfRange): every activation block takes the short conversion
                        {
                            var known = Enumerable.Repeat(float.NaN, n * rows).ToArray();
                            QuantizedDot.MatMulRowRangeWith(type, w, rows, cols, r0, count, xs, n, known, tile, fusedHalf: true, finiteHalf: true);
                            Assert.Equal(fused.Select(BitConverter.SingleToInt32Bits), known.Select(BitConverter.SingleToInt32Bits));
                            if (type == GgmlType.F16) // and read unrebiased against activations times 2^112
                            {
                                var scaledXs = Scaled(xs);
                                var unrebiased = Enumerable.Repeat(float.NaN, n * rows).ToArray();
                                QuantizedDot.MatMulRowRange(type, w, rows, cols, r0, count, scaledXs, n, unrebiased, tile, finiteHalf: true, scaledHalf: true);
                                Assert.Equal(fused.Select(BitConverter.SingleToInt32Bits), unrebiased.Select(BitConverter.SingleToInt32Bits));
                            }
                        }
                        for (int i = 0; i < n * rows; i++)
                            Assert.True(BitConverter.SingleToInt32Bits(fused[i]) == BitConverter.SingleToInt32Bits(dequantized[i]),
                                $"{type} [{rows}×{cols}] {(matrix == finite ? "finite" : "with infinities and NaNs")}, rows {r0}..{r0 + count}, n = {n}, " +
                                $"activation {i / rows}, row {i % rows}: {fused[i]} (0x{BitConverter.SingleToInt32Bits(fused[i]):X8}) converted in the kernel, " +
                                $"{dequantized[i]} (0x{BitConverter.SingleToInt32Bits(dequantized[i]):X8}) dequantized first");
                    }
                }
            }
        }
    }

    /// <summary>
    /// Every finite 16-bit pattern through the kernel's own conversion: 4096 rows of 16 weights against one-hot
    /// activations (row i picks column i mod 16), so each result is one converted weight, checked against the scalar
    /// decoder. At 32 activation rows the first 6 take the conversion with the infinity/NaN fix-up and the other 26
    /// the finite one (no 16-row block mixes finite and non-finite patterns), so both see every pattern in every lane.
    /// </summary>
    [SkippableTheory]
    [InlineData(GgmlType.F16)]
    [InlineData(GgmlType.BF16)]
    public void The_kernels_conversion_matches_the_scalar_decoder_on_every_pattern(GgmlType type)
    {
        Skip.IfNot(TileGemm.IsSupported, "the fused path is the AVX-512 tile kernel's");
        const int cols = 16, rows = 65536 / cols, n = 32;
        var w = new byte[2 * 65536];
        for (int p = 0; p < 65536; p++)
        {
            w[2 * p] = (byte)p;
            w[2 * p + 1] = (byte)(p >> 8);
        }
        var xs = new float[n * cols];
        for (int i = 0; i < n; i++) xs[i * cols + i % cols] = 1;
        var ys = new float[n * rows];
        QuantizedDot.MatMulRowRangeWith(type, w, rows, cols, 0, rows, xs, n, ys, new float[rows * cols], fusedHalf: true);
        for (int i = 0; i < n; i++)
            for (int r = 0; r < rows; r++)
            {
                ushort pattern = (ushort)(r * cols + i % cols);
                float expected = type == GgmlType.F16 ? Fp16.ToSingle(pattern) : Bf16.ToSingle(pattern);
                float actual = ys[i * rows + r];
                // A row of infinities and NaNs gives NaN from ∞·0 whatever the lane; the test above checks those bit for bit.
                bool special = type == GgmlType.F16 ? (pattern & 0x7C00) == 0x7C00 : (pattern & 0x7F80) == 0x7F80;
                if (special) continue;
                // w·1 + 0s: the weight itself, but −0 becomes +0.
                bool same = actual == expected && (expected != 0 || BitConverter.SingleToInt32Bits(actual) == 0);
                Assert.True(same, $"{type} 0x{pattern:X4} (activation row {i}): 0x{BitConverter.SingleToInt32Bits(actual):X8}, the scalar decoder gives 0x{BitConverter.SingleToInt32Bits(expected):X8}");
            }
    }

    static unsafe float[] Scaled(ReadOnlySpan<float> xs)
    {
        var scaled = new float[xs.Length];
        fixed (float* src = xs)
        fixed (float* dst = scaled)
            Assert.True(TileGemm.ScaleActivations(src, dst, xs.Length), "the test's activations are all below 2^16");
        return scaled;
    }

    /// <summary>
    /// Every finite f16 pattern read without its exponent rebiased, against one-hot activations times 2^112: each
    /// result is the weight itself (subnormals included), as the scalar decoder gives it, at 6 and 32 activation rows.
    /// </summary>
    [SkippableFact]
    public void Unrebiased_halves_against_scaled_activations_give_every_finite_pattern()
    {
        Skip.IfNot(TileGemm.IsSupported, "the fused path is the AVX-512 tile kernel's");
        const int cols = 16 + 3, rows = 65536 / 16; // 3 more columns: the tail's scalar reads too
        var w = new byte[2 * rows * cols];
        for (int p = 0; p < 65536; p++)
        {
            // Finite patterns only (the caller's promise): an all-ones exponent becomes +0 here.
            ushort h = (p & 0x7C00) == 0x7C00 ? (ushort)0 : (ushort)p;
            int r = p / 16, c = p % 16;
            w[2 * (r * cols + c)] = (byte)h;
            w[2 * (r * cols + c) + 1] = (byte)(h >> 8);
            if (c < 3) // the tail columns hold the row's first three patterns again
            {
                w[2 * (r * cols + 16 + c)] = (byte)h;
                w[2 * (r * cols + 16 + c) + 1] = (byte)(h >> 8);
            }
        }
        foreach (int n in new[] { 6, 32 })
        {
            var xs = new float[n * cols];
            // Row i picks column i mod 19: lanes 0..15, then the tail's columns 16..18.
            for (int i = 0; i < n; i++) xs[i * cols + i % cols] = 1;
            var ys = new float[n * rows];
            QuantizedDot.MatMulRowRange(GgmlType.F16, w, rows, cols, 0, rows, Scaled(xs), n, ys, new float[rows * cols], finiteHalf: true, scaledHalf: true);
            for (int i = 0; i < n; i++)
                for (int r = 0; r < rows; r++)
                {
                    int c = i % cols;
                    ushort pattern = (ushort)(r * 16 + (c < 16 ? c : c - 16));
                    if ((pattern & 0x7C00) == 0x7C00) pattern = 0;
                    float expected = Fp16.ToSingle(pattern), actual = ys[i * rows + r];
                    bool same = actual == expected && (expected != 0 || BitConverter.SingleToInt32Bits(actual) == 0);
                    Assert.True(same, $"F16 0x{pattern:X4} (n = {n}, activation row {i}): 0x{BitConverter.SingleToInt32Bits(actual):X8}, the scalar decoder gives 0x{BitConverter.SingleToInt32Bits(expected):X8}");
                }
        }
    }

    [Fact]
    public unsafe void Scaling_activations_by_2_to_the_112_is_exact_and_refuses_what_would_overflow()
    {
        Assert.Equal(TileGemm.HalfRebias, MathF.ScaleB(1f, 112));
        var rng = new Random(5);
        foreach (int length in new[] { 1, 15, 16, 17, 2048, 2051 })
        {
            var xs = RandomBlocks.Floats(rng, length, 100);
            xs[0] = 65535.996f; // the largest float below 2^16
            xs[length - 1] = -1e-40f; // subnormal
            var dst = new float[length];
            fixed (float* src = xs)
            fixed (float* d = dst)
            {
                Assert.True(TileGemm.ScaleActivations(src, d, length));
                for (int k = 0; k < length; k++) Assert.Equal(xs[k], MathF.ScaleB(dst[k], -112));
                // One value at 2^16 or beyond, or not finite, anywhere (a vector's lanes or the tail) is refused.
                foreach (float bad in new[] { 65536f, -65536f, 3e38f, float.PositiveInfinity, float.NegativeInfinity, float.NaN })
                    foreach (int at in new[] { 0, length / 2, length - 1 })
                    {
                        float kept = xs[at];
                        xs[at] = bad;
                        Assert.False(TileGemm.ScaleActivations(src, d, length), $"{bad} at {at} of {length}");
                        xs[at] = kept;
                    }
            }
        }
    }

    [Fact]
    public void Scaled_activations_with_weights_other_than_finite_F16_are_refused()
    {
        var e = Assert.Throws<ArgumentException>(() =>
            QuantizedDot.MatMulRowRange(GgmlType.BF16, new byte[4 * 64 * 2], 4, 64, 0, 4, new float[2 * 64], 2, new float[8], new float[256], finiteHalf: true, scaledHalf: true));
        Assert.Contains("BF16", e.Message);
        e = Assert.Throws<ArgumentException>(() =>
            QuantizedDot.MatMulRowRange(GgmlType.F16, new byte[4 * 64 * 2], 4, 64, 0, 4, new float[2 * 64], 2, new float[8], new float[256], scaledHalf: true));
        Assert.Contains("finite False", e.Message);
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
