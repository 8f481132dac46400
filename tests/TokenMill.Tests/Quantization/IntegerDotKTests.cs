using System.Runtime.Intrinsics.X86;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Tests.Quantization;

/// <summary>
/// The Q4_K / Q6_K integer kernels (<see cref="IntegerDotK"/>) against the f64 dot of the dequantized weights with the
/// dequantized 8-bit activations, over random valid blocks and blocks at the extremes; a row's result against its
/// batch mates (bit for bit); and the simple K-quant encoder's round trip.
/// </summary>
public unsafe class IntegerDotKTests
{
    public static TheoryData<GgmlType> Types() => new() { GgmlType.Q4_K, GgmlType.Q6_K };

    /// <summary>Random valid blocks (finite f16 scales); a third of the super-blocks have all quants and sub-block scales at an extreme.</summary>
    static byte[] Rows(GgmlType type, int rows, int cols, Random rng)
    {
        var all = new byte[(long)rows * GgmlTypeInfo.RowBytes(type, cols)];
        int blockBytes = type == GgmlType.Q4_K ? Q4_KBytes : Q6_KBytes;
        for (int r = 0; r < rows; r++)
        {
            var row = RandomBlocks.Row(type, cols, rng);
            for (int b = 0; b < row.Length; b += blockBytes)
            {
                var block = row.AsSpan(b, blockBytes);
                switch (rng.Next(6))
                {
                    case 0 when type == GgmlType.Q4_K: block.Slice(4, 140).Fill(0xFF); break;   // scales and mins 63, quants 15
                    case 1 when type == GgmlType.Q4_K: block.Slice(16, 128).Clear(); break;     // quants 0: only the mins remain
                    case 0: block[..192].Clear(); block.Slice(192, 16).Fill(0x80); break;    // q − 32 = −32, scales −128
                    case 1: block[..192].Fill(0xFF); block.Slice(192, 16).Fill(0x7F); break; // q − 32 = 31, scales 127
                }
            }
            row.CopyTo(all.AsSpan(r * row.Length));
        }
        return all;
    }

    static (sbyte[] Q, float[] D, int[] S) Quantized(float[] x)
    {
        var q = new sbyte[x.Length];
        var d = new float[x.Length / 32];
        var s = new int[x.Length / 32];
        QuantizedDot.QuantizeActivations(x, q, d);
        QuantizedDot.ActivationBlockSums(q, s);
        return (q, d, s);
    }

    static float[] Activations(int n, int cols, Random rng)
    {
        var x = new float[n * cols];
        for (int i = 0; i < n; i++) IntegerDotTests.Activations(cols, rng).CopyTo(x, i * cols);
        return x;
    }

    /// <summary>Checks ys (n × rows, rows [r0, r0 + count) only) against the f64 reference; the tolerance is relative to Σ|w·a|.</summary>
    static void AssertMatchesReference(GgmlType type, byte[] weights, int rows, int cols, int r0, int count, sbyte[] q, float[] d, int n, float[] ys, string what)
    {
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
        var w = new float[cols];
        for (int r = r0; r < r0 + count; r++)
        {
            Dequantize.RowScalar(type, weights.AsSpan(r * rowBytes, rowBytes), w);
            for (int i = 0; i < n; i++)
            {
                double expected = 0, abs = 0;
                for (int c = 0; c < cols; c++)
                {
                    double term = (double)w[c] * ((double)q[i * cols + c] * d[i * cols / 32 + c / 32]);
                    expected += term;
                    abs += Math.Abs(term);
                }
                float got = ys[i * rows + r];
                Assert.True(Math.Abs(got - expected) <= 2e-6 * abs + 1e-30, $"{what}: row {r}, activation row {i}: f64 {expected}, kernel {got} (Σ|terms| {abs})");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void Kernels_match_the_f64_dot_of_the_dequantized_values(GgmlType type)
    {
        if (!QuantizedDot.HasIntegerDot(type)) return; // no AVX2 + FMA: nothing of ours runs here
        var rng = new Random(11 + (int)type);
        for (int superBlocks = 1; superBlocks <= 20; superBlocks++)
        {
            int cols = superBlocks * QK_K, rows = 3, n = 1 + (superBlocks * 7) % 33;
            var weights = Rows(type, rows, cols, rng);
            var (q, d, s) = Quantized(Activations(n, cols, rng));
            var ys = new float[n * rows];
            QuantizedDot.MatMulQ8RowRange(type, weights, rows, cols, 0, rows, q, d, n, ys, s);
            AssertMatchesReference(type, weights, rows, cols, 0, rows, q, d, n, ys, $"{type}, {superBlocks} super-blocks, n = {n}");
        }
    }

    [Fact]
    public void The_avx2_form_of_the_q4_k_kernel_matches_the_f64_dot_too()
    {
        if (!IntegerDotK.IsSupported) return;
        var rng = new Random(21);
        foreach (int superBlocks in new[] { 1, 3, 8 })
        {
            int cols = superBlocks * QK_K, rows = 4, n = 6, rowBytes = cols / QK_K * Q4_KBytes;
            var weights = Rows(GgmlType.Q4_K, rows, cols, rng);
            var (q, d, s) = Quantized(Activations(n, cols, rng));
            var ys = new float[n * rows];
            var vnni = new float[n * rows];
            fixed (byte* pw = weights)
            fixed (sbyte* pq = q)
            fixed (float* pd = d, py = ys)
            fixed (int* ps = s)
                IntegerDotK.MatMulQ4_K<IntegerDotK.Avx2Dot>(pw, rowBytes, rows, cols, 0, rows, pq, pd, ps, n, py);
            AssertMatchesReference(GgmlType.Q4_K, weights, rows, cols, 0, rows, q, d, n, ys, $"AVX2 form, {superBlocks} super-blocks");
            if (!AvxVnni.IsSupported) continue;
            QuantizedDot.MatMulQ8RowRange(GgmlType.Q4_K, weights, rows, cols, 0, rows, q, d, n, vnni, s);
            Assert.Equal(vnni, ys); // exact integer sums either way: the same f32 arithmetic after them
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void Every_activation_row_gets_its_one_row_result_bit_for_bit_whatever_the_batch(GgmlType type)
    {
        if (!QuantizedDot.HasIntegerDot(type)) return;
        var rng = new Random(31 + (int)type);
        int cols = 3 * QK_K, rows = 5;
        var weights = Rows(type, rows, cols, rng);
        var (q, d, s) = Quantized(Activations(33, cols, rng));
        var alone = new float[33 * rows];
        for (int i = 0; i < 33; i++)
            QuantizedDot.MatMulQ8RowRange(type, weights, rows, cols, 0, rows, q.AsSpan(i * cols, cols), d.AsSpan(i * cols / 32, cols / 32), 1,
                alone.AsSpan(i * rows, rows), s.AsSpan(i * cols / 32, cols / 32));
        for (int n = 1; n <= 33; n++)
        {
            var ys = new float[n * rows];
            QuantizedDot.MatMulQ8RowRange(type, weights, rows, cols, 0, rows, q, d, n, ys, s);
            Assert.Equal(alone.AsSpan(0, n * rows).ToArray(), ys);
        }
        AssertMatchesReference(type, weights, rows, cols, 0, rows, q, d, 33, alone, $"{type}, rows alone");
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void Row_ranges_write_only_their_rows(GgmlType type)
    {
        if (!QuantizedDot.HasIntegerDot(type)) return;
        var rng = new Random(41 + (int)type);
        int cols = 2 * QK_K, rows = 9, n = 5;
        var weights = Rows(type, rows, cols, rng);
        var (q, d, s) = Quantized(Activations(n, cols, rng));
        foreach (var (r0, count) in new[] { (0, 9), (0, 1), (3, 4), (8, 1), (2, 0) })
        {
            var ys = new float[n * rows];
            Array.Fill(ys, float.NaN);
            QuantizedDot.MatMulQ8RowRange(type, weights, rows, cols, r0, count, q, d, n, ys, s);
            for (int i = 0; i < n; i++)
                for (int r = 0; r < rows; r++)
                    Assert.True(float.IsNaN(ys[i * rows + r]) != (r >= r0 && r < r0 + count), $"rows {r0}..{r0 + count}: row {r} of activation {i}");
            AssertMatchesReference(type, weights, rows, cols, r0, count, q, d, n, ys, $"{type}, rows {r0}..{r0 + count}");
        }
    }

    /// <summary>
    /// A packed kernel over the first n activation rows as one batch, from the second group on (or the first where there is
    /// one): each row the bits it gave alone (<paramref name="alone"/>, 33 × rows), the rows before the range untouched.
    /// </summary>
    static void AssertBatchesGiveTheRowsAlone(int rows, float[] alone, Action<int, int, int, float[]> multiply)
    {
        foreach (int n in new[] { 2, 3, 4, 8, 13, 33 })
        {
            var ys = new float[n * rows];
            Array.Fill(ys, float.NaN);
            int r0 = rows > 8 ? 8 : 0; // a range that starts at a group
            multiply(r0, rows - r0, n, ys);
            for (int i = 0; i < n; i++)
                for (int r = 0; r < rows; r++)
                {
                    if (r < r0) Assert.True(float.IsNaN(ys[i * rows + r]), $"row {r} is outside {r0}..{rows}");
                    else Assert.Equal(alone[i * rows + r], ys[i * rows + r]);
                }
        }
    }

    /// <summary>
    /// The packed Q4_K kernels' arithmetic in scalar code: per sub-block the exact Σ q·aq, then
    /// f = fma(−dmin·m, da·Σaq, fma(f32(Σ q·aq), (d·sc)·da, f)), with d·sc and dmin·m rounded to f32 as packing does.
    /// </summary>
    static float PackedQ4_KModel(ReadOnlySpan<byte> row, ReadOnlySpan<sbyte> q, ReadOnlySpan<float> d, ReadOnlySpan<int> sums)
    {
        float f = 0;
        for (int b = 0; b < q.Length / 32; b++)
        {
            var block = row.Slice(b / 8 * Q4_KBytes, Q4_KBytes);
            int j = b % 8, dot = 0;
            for (int e = 0; e < 32; e++)
            {
                byte packed = block[16 + 32 * (j / 2) + e];
                dot += (j % 2 == 0 ? packed & 0xF : packed >> 4) * q[b * 32 + e];
            }
            var (sc, m) = ScaleMinK4(j, block.Slice(4, 12));
            float scale = Fp16.ToSingle((ushort)(block[0] | block[1] << 8)) * sc, min = Fp16.ToSingle((ushort)(block[2] | block[3] << 8)) * m;
            f = MathF.FusedMultiplyAdd(-min, d[b] * sums[b], MathF.FusedMultiplyAdd(dot, scale * d[b], f));
        }
        return f;
    }

    [Theory]
    [InlineData(nameof(PackedKernel.Vnni))]
    [InlineData(nameof(PackedKernel.Avx512BW))]
    public void The_repacked_q4_k_kernel_matches_the_f64_dot_and_does_not_depend_on_the_batch(string kernel)
    {
        var path = Enum.Parse<PackedKernel>(kernel);
        if (!PackedKernels.Supports(path)) return; // not on this machine: another kernel multiplies Q4_K here
        var rng = new Random(71);
        // One group, partial groups, a pair and a lone group (24 rows), two pairs and a lone one (40 rows).
        foreach (var (rows, superBlocks) in new[] { (8, 1), (13, 3), (24, 2), (3, 5), (40, 1) })
        {
            int cols = superBlocks * QK_K;
            var weights = Rows(GgmlType.Q4_K, rows, cols, rng);
            var packed = PackedQ4_K.Pack(weights, rows, cols, path);
            var (q, d, s) = Quantized(Activations(33, cols, rng));
            var alone = new float[33 * rows];
            fixed (sbyte* pq = q)
            fixed (float* pd = d, pa = alone)
            fixed (int* ps = s)
                for (int i = 0; i < 33; i++)
                    packed.Multiply(0, rows, pq + i * cols, pd + i * cols / 32, ps + i * cols / 32, 1, pa + i * rows, rows);
            AssertMatchesReference(GgmlType.Q4_K, weights, rows, cols, 0, rows, q, d, 33, alone, $"packed, {rows} × {cols}");
            int blocks = cols / 32, rowBytes = cols / QK_K * Q4_KBytes;
            for (int i = 0; i < 33; i++)
                for (int r = 0; r < rows; r++)
                {
                    float model = PackedQ4_KModel(weights.AsSpan(r * rowBytes, rowBytes), q.AsSpan(i * cols, cols), d.AsSpan(i * blocks, blocks), s.AsSpan(i * blocks, blocks));
                    Assert.True(BitConverter.SingleToInt32Bits(model) == BitConverter.SingleToInt32Bits(alone[i * rows + r]),
                        $"{kernel}, {rows} × {cols}, activation {i}, row {r}: {alone[i * rows + r]}, the scalar model {model}");
                }
            AssertBatchesGiveTheRowsAlone(rows, alone, (r0, count, n, ys) =>
            {
                fixed (sbyte* pq = q)
                fixed (float* pd = d, py = ys)
                fixed (int* ps = s)
                    packed.Multiply(r0, count, pq, pd, ps, n, py, rows);
            });
        }
        var e = Assert.Throws<ArgumentOutOfRangeException>(() =>
        {
            var p = PackedQ4_K.Pack(new byte[16 * Q4_KBytes], 16, QK_K, path);
            p.Multiply(4, 4, null, null, null, 1, null, 16);
        });
        Assert.Contains("multiple of 8", e.Message);
        Assert.Throws<ArgumentException>(() => PackedQ4_K.Pack(new byte[Q4_KBytes], 2, QK_K, path));
    }

    /// <summary>
    /// The packed Q6_K kernel's arithmetic in scalar code: per block of 32 the exact Σ sc·(q − 32)·aq over its two
    /// sub-blocks, then f = fma(f32(dot), d·da, f).
    /// </summary>
    static unsafe float PackedQ6_KModel(byte[] row, ReadOnlySpan<sbyte> q, ReadOnlySpan<float> d)
    {
        float f = 0;
        fixed (byte* pr = row)
            for (int b = 0; b < q.Length / 32; b++)
            {
                byte* superBlock = pr + b / 8 * Q6_KBytes;
                int first = b % 8 * 32, dot = 0;
                for (int e = 0; e < 32; e++)
                    dot += ((sbyte*)superBlock)[192 + (first + e) / 16] * PackedQ6_K.Quant(superBlock, first + e) * q[b * 32 + e];
                f = MathF.FusedMultiplyAdd(dot, Fp16.ToSingle((ushort)(superBlock[208] | superBlock[209] << 8)) * d[b], f);
            }
        return f;
    }

    [Fact]
    public void The_q6_k_quant_reader_gives_the_dequantizers_values()
    {
        var rng = new Random(3);
        var block = Rows(GgmlType.Q6_K, 1, QK_K, rng);
        var values = new float[QK_K];
        Dequantize.Row(GgmlType.Q6_K, block, values);
        float dScale = Fp16.ToSingle((ushort)(block[208] | block[209] << 8));
        fixed (byte* b = block)
            for (int i = 0; i < QK_K; i++)
                Assert.Equal(values[i], dScale * ((sbyte*)b)[192 + i / 16] * PackedQ6_K.Quant(b, i), 4);
    }

    [Fact]
    public void The_repacked_q6_k_kernel_is_its_scalar_model_bit_for_bit_and_does_not_depend_on_the_batch()
    {
        if (!PackedQ6_K.IsSupported) return; // no AVX-512BW: CpuForward reads Q6_K rows in place
        var rng = new Random(72);
        // One group, partial groups, a pair and a lone group (24 rows), two pairs and a lone one (40 rows).
        foreach (var (rows, superBlocks) in new[] { (8, 1), (13, 3), (24, 2), (3, 5), (40, 1) })
        {
            int cols = superBlocks * QK_K, blocks = cols / 32, rowBytes = superBlocks * Q6_KBytes;
            var weights = Rows(GgmlType.Q6_K, rows, cols, rng);
            var packed = PackedQ6_K.Pack(weights, rows, cols);
            var (q, d, _) = Quantized(Activations(33, cols, rng));
            var alone = new float[33 * rows];
            fixed (sbyte* pq = q)
            fixed (float* pd = d, pa = alone)
                for (int i = 0; i < 33; i++)
                    packed.Multiply(0, rows, pq + i * cols, pd + i * blocks, 1, pa + i * rows, rows);
            AssertMatchesReference(GgmlType.Q6_K, weights, rows, cols, 0, rows, q, d, 33, alone, $"packed, {rows} × {cols}");
            for (int i = 0; i < 33; i++)
                for (int r = 0; r < rows; r++)
                {
                    float model = PackedQ6_KModel(weights[(r * rowBytes)..((r + 1) * rowBytes)], q.AsSpan(i * cols, cols), d.AsSpan(i * blocks, blocks));
                    Assert.True(BitConverter.SingleToInt32Bits(model) == BitConverter.SingleToInt32Bits(alone[i * rows + r]),
                        $"{rows} × {cols}, activation {i}, row {r}: {alone[i * rows + r]}, the scalar model {model}");
                }
            AssertBatchesGiveTheRowsAlone(rows, alone, (r0, count, n, ys) =>
            {
                fixed (sbyte* pq = q)
                fixed (float* pd = d, py = ys)
                    packed.Multiply(r0, count, pq, pd, n, py, rows);
            });
        }
        var e = Assert.Throws<ArgumentOutOfRangeException>(() =>
        {
            var p = PackedQ6_K.Pack(new byte[16 * Q6_KBytes], 16, QK_K);
            p.Multiply(4, 4, null, null, 1, null, 16);
        });
        Assert.Contains("multiple of 8", e.Message);
        Assert.Contains("takes 420 bytes", Assert.Throws<ArgumentException>(() => PackedQ6_K.Pack(new byte[Q6_KBytes], 2, QK_K)).Message);
    }

    [Fact]
    public void Block_sums_are_the_sums_of_the_quants_and_q4_k_refuses_to_run_without_them()
    {
        var rng = new Random(51);
        var q = new sbyte[32 * 9];
        for (int i = 0; i < q.Length; i++) q[i] = (sbyte)rng.Next(-127, 128);
        q.AsSpan(0, 32).Fill(127);
        q.AsSpan(32, 32).Fill(-127);
        var s = new int[9];
        QuantizedDot.ActivationBlockSums(q, s);
        for (int b = 0; b < 9; b++) Assert.Equal(q.Skip(32 * b).Take(32).Sum(v => v), s[b]);
        Assert.Throws<ArgumentException>(() => QuantizedDot.ActivationBlockSums(q.AsSpan(0, 33), s));

        if (!QuantizedDot.HasIntegerDot(GgmlType.Q4_K)) return;
        var weights = Rows(GgmlType.Q4_K, 1, QK_K, rng);
        var e = Assert.Throws<ArgumentException>(() =>
            QuantizedDot.MatMulQ8RowRange(GgmlType.Q4_K, weights, 1, QK_K, 0, 1, new sbyte[QK_K], new float[8], 1, new float[1]));
        Assert.Contains("block sums", e.Message);
        Assert.False(QuantizedDot.HasPackedIntegerDot(GgmlType.Q4_K)); // no eight-row repacked kernel: that one is Q8_0/Q4_0's
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void The_encoder_round_trips_within_half_a_step(GgmlType type)
    {
        var rng = new Random(61 + (int)type);
        int cols = 12 * QK_K;
        var x = RandomBlocks.Floats(rng, cols);
        // Sub-blocks that stress it: all zero, all positive (Q4_K's min is then 0), one outlier, tiny values.
        x.AsSpan(0, 32).Clear();
        for (int i = 32; i < 64; i++) x[i] = Math.Abs(x[i]) + 1;
        x[100] = 40;
        for (int i = QK_K; i < 2 * QK_K; i++) x[i] *= 1e-4f;
        var bytes = new byte[GgmlTypeInfo.RowBytes(type, cols)];
        Quantize.Row(type, x, bytes);
        var y = new float[cols];
        Dequantize.Row(type, bytes, y);
        double squares = 0, errors = 0;
        for (int i = 0; i < cols; i++)
        {
            var block = bytes.AsSpan(i / QK_K * (type == GgmlType.Q4_K ? Q4_KBytes : Q6_KBytes));
            double bound;
            if (type == GgmlType.Q4_K)
            {
                var (sc, _) = ScaleMinK4(i % QK_K / 32, block.Slice(4, 12));
                bound = Math.Max(F16At(block, 0) * sc, F16At(block, 2)) / 2;
            }
            else bound = F16At(block, 208) * Math.Abs((sbyte)block[192 + i % QK_K / 16]) / 2.0;
            Assert.True(Math.Abs(x[i] - y[i]) <= bound * 1.0001 + 1e-30, $"{type} element {i}: {x[i]} decodes to {y[i]}, bound {bound}");
            squares += (double)x[i] * x[i];
            errors += (double)(x[i] - y[i]) * (x[i] - y[i]);
        }
        // And the bound is not vacuous: the relative RMS error of 4-bit (6-bit) codes of Gaussian data.
        Assert.True(Math.Sqrt(errors / squares) < (type == GgmlType.Q4_K ? 0.12 : 0.03), $"{type}: relative RMS error {Math.Sqrt(errors / squares)}");
    }
}
