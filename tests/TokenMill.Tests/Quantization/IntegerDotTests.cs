using System.Buffers.Binary;
using System.Runtime.Intrinsics;
using System.Runtime.Intrinsics.X86;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Quantization;

/// <summary>
/// The integer (8-bit activation) kernels against their scalar reference, against each other (one row vs
/// four rows: bit for bit), and against the f32 path within the error 8-bit activations can make.
/// </summary>
public class IntegerDotTests
{
    public static TheoryData<GgmlType> Types() => new() { GgmlType.Q8_0, GgmlType.Q4_0 };

    static (sbyte[] Q, float[] D) Quantized(float[] x)
    {
        var q = new sbyte[x.Length];
        var d = new float[x.Length / 32];
        QuantizedDot.QuantizeActivations(x, q, d);
        return (q, d);
    }

    /// <summary>Random rows whose quants include the extremes (−128 and 127 for Q8_0, 0 and 15 for Q4_0) in whole blocks.</summary>
    internal static byte[] ExtremeRow(GgmlType type, int cols, Random rng)
    {
        var row = RandomBlocks.Row(type, cols, rng);
        int blockBytes = (int)GgmlTypeInfo.RowBytes(type, 32);
        for (int b = 0; b < cols / 32; b++)
        {
            int kind = rng.Next(4);
            if (kind == 0) continue;
            byte fill = (type, kind) switch
            {
                (GgmlType.Q8_0, 1) => 0x80, // −128
                (GgmlType.Q8_0, 2) => 0x7F,
                (GgmlType.Q4_0, 1) => 0x00, // nibbles 0: −8
                (GgmlType.Q4_0, 2) => 0xFF, // nibbles 15: 7
                _ => (byte)rng.Next(256),
            };
            row.AsSpan(b * blockBytes + 2, blockBytes - 2).Fill(fill);
        }
        return row;
    }

    /// <summary>Activations with blocks of equal-magnitude values (all quants ±127) mixed with Gaussian ones and zero blocks.</summary>
    internal static float[] Activations(int cols, Random rng)
    {
        var x = RandomBlocks.Floats(rng, cols);
        for (int b = 0; b < cols / 32; b++)
        {
            int kind = rng.Next(5);
            var block = x.AsSpan(b * 32, 32);
            if (kind == 0) block.Clear();
            else if (kind == 1) foreach (ref float v in block) v = rng.Next(2) == 0 ? 3.5f : -3.5f;
            else if (kind == 2) foreach (ref float v in block) v *= 1e-20f;
        }
        return x;
    }

    [Fact]
    public void Simd_activation_quantization_is_bit_identical_to_the_scalar_reference()
    {
        var rng = new Random(5);
        for (int blocks = 0; blocks <= 40; blocks++)
        {
            var x = Activations(blocks * 32, rng);
            var (q, d) = Quantized(x);
            var qs = new sbyte[x.Length];
            var ds = new float[blocks];
            IntegerDot.QuantizeActivationsScalar(x, qs, ds);
            Assert.Equal(qs, q);
            Assert.Equal(ds, d);
            Assert.All(q, v => Assert.InRange(v, (sbyte)-127, (sbyte)127));
            for (int i = 0; i < x.Length; i++) // each element within half a step of its block's scale
                Assert.True(Math.Abs(x[i] - q[i] * (double)d[i / 32]) <= 0.5001 * d[i / 32] + 1e-45, $"element {i}");
        }
    }

    [Fact]
    public void Quantization_rounds_ties_to_even_like_ggml_avx2()
    {
        var x = new float[32];
        x[0] = 127; // d = 1, so the others are their own quants
        x[1] = 2.5f;
        x[2] = -3.5f;
        x[3] = 0.5f;
        var (q, d) = Quantized(x);
        Assert.Equal(1f, d[0]);
        Assert.Equal(new sbyte[] { 127, 2, -4, 0 }, q[..4]);
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void Dot_matches_the_scalar_reference(GgmlType type)
    {
        var rng = new Random(17 + (int)type);
        for (int blocks = 1; blocks <= 72; blocks++)
        {
            for (int trial = 0; trial < 3; trial++)
            {
                int cols = blocks * 32;
                var row = ExtremeRow(type, cols, rng);
                var (q, d) = Quantized(Activations(cols, rng));
                float expected = IntegerDot.DotScalar(type == GgmlType.Q4_0, row, q, d);
                var ys = new float[1];
                QuantizedDot.MatMulQ8RowRange(type, row, 1, cols, 0, 1, q, d, 1, ys);
                double absSum = AbsTerms(type, row, q, d);
                Assert.True(Math.Abs(ys[0] - expected) <= 1e-5 * absSum + 1e-30,
                    $"{type}, {blocks} blocks: reference {expected}, kernel {ys[0]}");
            }
        }
    }

    internal static double AbsTerms(GgmlType type, byte[] row, sbyte[] q, float[] d)
    {
        var w = new float[q.Length];
        Dequantize.RowScalar(type, row, w);
        double s = 0;
        for (int i = 0; i < q.Length; i++) s += Math.Abs((double)w[i] * q[i] * d[i / 32]);
        return s;
    }

    [Fact]
    public void Avx2_block_sum_is_exact_at_the_extremes()
    {
        if (!Avx2.IsSupported) return;
        var rng = new Random(3);
        var w = new sbyte[32];
        var a = new sbyte[32];
        for (int trial = 0; trial < 2000; trial++)
        {
            for (int j = 0; j < 32; j++)
            {
                w[j] = trial % 3 == 0 ? (sbyte)-128 : (sbyte)rng.Next(-128, 128);
                a[j] = trial % 5 == 0 ? (sbyte)(rng.Next(2) == 0 ? 127 : -127) : (sbyte)rng.Next(-127, 128);
            }
            var wv = Vector256.Create(w);
            var av = Avx2.Sign(Vector256.Create(a), wv);
            var sums = IntegerDot.DotBlockAvx2(Avx2.Abs(wv), av);
            int expected = 0;
            for (int j = 0; j < 32; j++) expected += w[j] * a[j];
            Assert.Equal(expected, Vector256.Sum(sums));
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void Every_activation_row_gets_the_one_row_result_bit_for_bit(GgmlType type)
    {
        var rng = new Random(40 + (int)type);
        const int rows = 5, cols = 256;
        var w = ExtremeRow(type, rows * cols, rng);
        for (int n = 1; n <= 9; n++)
        {
            var (q, d) = Quantized(Activations(n * cols, rng));
            var ys = new float[n * rows];
            QuantizedDot.MatMulQ8RowRange(type, w, rows, cols, 0, rows, q, d, n, ys);
            var y1 = new float[rows];
            for (int i = 0; i < n; i++)
            {
                QuantizedDot.MatMulQ8RowRange(type, w, rows, cols, 0, rows, q.AsSpan(i * cols, cols), d.AsSpan(i * cols / 32, cols / 32), 1, y1);
                for (int r = 0; r < rows; r++)
                    Assert.True(BitConverter.SingleToInt32Bits(y1[r]) == BitConverter.SingleToInt32Bits(ys[i * rows + r]),
                        $"{type}, n = {n}, activation {i}, row {r}: alone {y1[r]}, in the batch {ys[i * rows + r]}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void Row_ranges_write_only_their_rows(GgmlType type)
    {
        var rng = new Random(8);
        const int rows = 7, cols = 64, n = 5;
        var w = RandomBlocks.Row(type, rows * cols, rng);
        var (q, d) = Quantized(Activations(n * cols, rng));
        var whole = new float[n * rows];
        QuantizedDot.MatMulQ8RowRange(type, w, rows, cols, 0, rows, q, d, n, whole);
        var parts = new float[n * rows];
        QuantizedDot.MatMulQ8RowRange(type, w, rows, cols, 0, 3, q, d, n, parts);
        for (int i = 0; i < n; i++) Assert.Equal(0f, parts[i * rows + 3]);
        QuantizedDot.MatMulQ8RowRange(type, w, rows, cols, 3, 4, q, d, n, parts);
        Assert.Equal(whole, parts);
    }

    [Theory]
    [MemberData(nameof(Types))]
    public void Matches_the_f32_path_within_activation_rounding(GgmlType type)
    {
        // Each activation moves by at most half its block's step d = max|x|/127, so the integer result may
        // differ from the f32 one by Σ |w|·d/2 (plus f32 rounding of both).
        var rng = new Random(60 + (int)type);
        const int rows = 6;
        foreach (int cols in new[] { 32, 96, 2048, 5632 })
        {
            var w = RandomBlocks.Row(type, rows * cols, rng);
            var x = RandomBlocks.Floats(rng, cols);
            var (q, d) = Quantized(x);
            var yInt = new float[rows];
            var yF32 = new float[rows];
            QuantizedDot.MatMulQ8RowRange(type, w, rows, cols, 0, rows, q, d, 1, yInt);
            QuantizedDot.MatVec(type, w, rows, cols, x, yF32);
            int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
            var wf = new float[cols];
            for (int r = 0; r < rows; r++)
            {
                Dequantize.RowScalar(type, w.AsSpan(r * rowBytes, rowBytes), wf);
                double bound = 0, abs = 0;
                for (int i = 0; i < cols; i++)
                {
                    bound += Math.Abs(wf[i]) * d[i / 32] / 2;
                    abs += Math.Abs((double)wf[i] * x[i]);
                }
                bound += 2e-5 * abs;
                Assert.True(Math.Abs(yInt[r] - yF32[r]) <= bound, $"{type} {cols} cols, row {r}: f32 {yF32[r]}, integer {yInt[r]}, bound {bound}");
                // and the bound is not vacuous: the difference is far below the result's own scale
                Assert.True(bound < 0.05 * abs, $"bound {bound} vs Σ|w·x| {abs}");
            }
        }
    }

    [Fact]
    public void Other_types_are_refused()
    {
        Assert.False(QuantizedDot.HasIntegerDot(GgmlType.Q5_K));
        Assert.False(QuantizedDot.HasIntegerDot(GgmlType.F32));
        Assert.Throws<NotSupportedException>(() =>
            QuantizedDot.MatMulQ8RowRange(GgmlType.F16, new byte[64], 1, 32, 0, 1, new sbyte[32], new float[1], 1, new float[1]));
    }
}

/// <summary>The packed 8-row batched kernel (AVX-VNNI) against the scalar reference and against itself across batch sizes.</summary>
public class PackedIntegerDotTests
{
    public static TheoryData<GgmlType> Types() => new() { GgmlType.Q8_0, GgmlType.Q4_0 };

    [Theory]
    [MemberData(nameof(Types))]
    public void Matches_the_scalar_reference_and_does_not_depend_on_the_batch(GgmlType type)
    {
        if (!QuantizedDot.HasPackedIntegerDot(type)) return; // no AVX-VNNI here: CpuForward uses the other kernels
        var rng = new Random(70 + (int)type);
        foreach (var (rows, cols) in new[] { (8, 32), (13, 96), (3, 256), (16, 2048), (21, 320) })
        {
            int blocks = cols / 32;
            const int n = 7;
            var w = IntegerDotTests.ExtremeRow(type, rows * cols, rng);
            var x = IntegerDotTests.Activations(n * cols, rng);
            var q = new sbyte[n * cols];
            var d = new float[n * blocks];
            QuantizedDot.QuantizeActivations(x, q, d);
            var u = new byte[n * cols];
            QuantizedDot.OffsetActivations(q, u);
            var scratch = new byte[QuantizedDot.PackedScratchBytes(cols)];
            var ys = new float[n * rows];
            // Two row ranges, the first not a multiple of 8, to check partial groups and that each writes only its rows.
            int split = Math.Min(rows, 5);
            QuantizedDot.MatMulQ8Packed(type, w, rows, cols, 0, split, u, d, n, ys, scratch);
            QuantizedDot.MatMulQ8Packed(type, w, rows, cols, split, rows - split, u, d, n, ys, scratch);
            int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
            for (int i = 0; i < n; i++)
            {
                var qi = q.AsSpan(i * cols, cols).ToArray();
                var di = d.AsSpan(i * blocks, blocks).ToArray();
                // The same row alone (n = 1) and as the first of a pair (n = 2): bit-identical.
                var alone = new float[rows];
                QuantizedDot.MatMulQ8Packed(type, w, rows, cols, 0, rows, u.AsSpan(i * cols, cols), di, 1, alone, scratch);
                var pair = new float[2 * rows];
                var u2 = new byte[2 * cols];
                u.AsSpan(i * cols, cols).CopyTo(u2);
                var d2 = new float[2 * blocks];
                di.CopyTo(d2, 0);
                QuantizedDot.MatMulQ8Packed(type, w, rows, cols, 0, rows, u2, d2, 2, pair, scratch);
                for (int r = 0; r < rows; r++)
                {
                    var row = w.AsSpan(r * rowBytes, rowBytes).ToArray();
                    float expected = IntegerDot.DotScalar(type == GgmlType.Q4_0, row, qi, di);
                    double abs = IntegerDotTests.AbsTerms(type, row, qi, di);
                    float got = ys[i * rows + r];
                    Assert.True(Math.Abs(got - expected) <= 1e-5 * abs + 1e-30, $"{type} {rows}×{cols}, activation {i}, row {r}: reference {expected}, packed {got}");
                    Assert.Equal(BitConverter.SingleToInt32Bits(got), BitConverter.SingleToInt32Bits(alone[r]));
                    Assert.Equal(BitConverter.SingleToInt32Bits(got), BitConverter.SingleToInt32Bits(pair[r]));
                }
            }
        }
    }
}

public class PackedQ4_0Tests
{
    [Fact]
    public unsafe void Matches_the_scalar_reference_and_does_not_depend_on_the_batch()
    {
        if (!PackedQ4_0.IsSupported) return; // no AVX2 here: CpuForward uses the scalar-reference kernels
        var rng = new Random(91);
        foreach (var (rows, cols) in new[] { (8, 32), (13, 96), (3, 256), (16, 2048), (21, 320) })
        {
            int blocks = cols / 32;
            const int n = 7;
            var w = IntegerDotTests.ExtremeRow(GgmlType.Q4_0, rows * cols, rng);
            var x = IntegerDotTests.Activations(n * cols, rng);
            var q = new sbyte[n * cols];
            var d = new float[n * blocks];
            var c = new int[n * blocks];
            QuantizedDot.QuantizeActivations(x, q, d);
            for (int i = 0; i < n; i++) PackedQ4_0.BlockSums(q.AsSpan(i * cols, cols), c.AsSpan(i * blocks, blocks));
            var packed = PackedQ4_0.Pack(w, rows, cols);
            var ys = new float[n * rows];
            // Two row ranges (the second starting at a group boundary, the last group partial): each writes only its rows.
            int split = Math.Min(rows, 8);
            fixed (sbyte* pq = q)
            fixed (float* pd = d, py = ys)
            fixed (int* pc = c)
            {
                packed.Multiply(0, split, pq, pd, pc, n, py, rows);
                packed.Multiply(split, rows - split, pq, pd, pc, n, py, rows);
            }
            int rowBytes = (int)GgmlTypeInfo.RowBytes(GgmlType.Q4_0, cols);
            for (int i = 0; i < n; i++)
            {
                var qi = q.AsSpan(i * cols, cols).ToArray();
                var di = d.AsSpan(i * blocks, blocks).ToArray();
                var alone = new float[rows];
                fixed (sbyte* pq = qi)
                fixed (float* pd = di, py = alone)
                fixed (int* pc = c.AsSpan(i * blocks, blocks))
                    packed.Multiply(0, rows, pq, pd, pc, 1, py, rows);
                for (int r = 0; r < rows; r++)
                {
                    var row = w.AsSpan(r * rowBytes, rowBytes).ToArray();
                    float expected = IntegerDot.DotScalar(true, row, qi, di);
                    double abs = IntegerDotTests.AbsTerms(GgmlType.Q4_0, row, qi, di);
                    float got = ys[i * rows + r];
                    Assert.True(Math.Abs(got - expected) <= 1e-5 * abs + 1e-30, $"{rows}×{cols}, activation {i}, row {r}: reference {expected}, packed {got}");
                    // The same activation row alone (n = 1) as within a batch of 7 (pairs, then one): bit-identical.
                    Assert.Equal(BitConverter.SingleToInt32Bits(got), BitConverter.SingleToInt32Bits(alone[r]));
                }
            }
        }
    }

    [Fact]
    public void Rejects_ranges_that_do_not_start_at_a_group_and_matrices_of_the_wrong_size()
    {
        if (!PackedQ4_0.IsSupported) return;
        var w = new byte[16 * 18];
        var packed = PackedQ4_0.Pack(w, 16, 32);
        var e = Assert.Throws<ArgumentOutOfRangeException>(() => { unsafe { packed.Multiply(3, 4, null, null, null, 1, null, 16); } });
        Assert.Contains("multiple of 8", e.Message);
        Assert.Contains("takes 270 bytes", Assert.Throws<ArgumentException>(() => PackedQ4_0.Pack(new byte[270 + 1], 15, 32)).Message);
    }
}
