using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Quantization;

/// <summary>
/// The fused kernels against the plainest reference there is: the scalar dequantizer (itself checked
/// against hand-built blocks) followed by a dot product in double.
/// </summary>
public class QuantizedDotTests
{
    public static TheoryData<GgmlType> AllTypes() => RandomBlocks.AllTypes();

    /// <summary>Row lengths to try: 1..8 blocks, and for one-element "blocks" every length up to 40 plus a few long ones.</summary>
    static IEnumerable<int> Lengths(GgmlType type)
    {
        int blockSize = GgmlTypeInfo.Of(type).BlockSize;
        if (blockSize > 1) return Enumerable.Range(1, 8).Select(b => b * blockSize);
        return Enumerable.Range(1, 40).Concat([255, 256, 257, 1000, 2048]);
    }

    static (double Dot, double AbsSum) Reference(GgmlType type, byte[] row, float[] x)
    {
        var w = new float[x.Length];
        Dequantize.RowScalar(type, row, w);
        double dot = 0, abs = 0;
        for (int i = 0; i < x.Length; i++)
        {
            dot += (double)w[i] * x[i];
            abs += Math.Abs((double)w[i] * x[i]);
        }
        return (dot, abs);
    }

    static void AssertClose(double expected, double absSum, float actual, string what)
    {
        // f32 accumulation over at most a few thousand terms: 1e-5 of Σ|w·x| is ~100 ulps of headroom.
        double tolerance = 1e-5 * absSum + 1e-30;
        Assert.True(Math.Abs(actual - expected) <= tolerance,
            $"{what}: expected {expected}, got {actual} (difference {Math.Abs(actual - expected)}, tolerance {tolerance})");
    }

    [Theory]
    [MemberData(nameof(AllTypes))]
    public void Dot_matches_dequantize_then_dot(GgmlType type)
    {
        var rng = new Random(1234 + (int)type);
        foreach (int n in Lengths(type))
        {
            for (int trial = 0; trial < 5; trial++)
            {
                var row = RandomBlocks.Row(type, n, rng);
                var x = RandomBlocks.Floats(rng, n);
                var (expected, absSum) = Reference(type, row, x);
                AssertClose(expected, absSum, QuantizedDot.Dot(type, row, x), $"{type} Dot, n = {n}");
                AssertClose(expected, absSum, QuantizedDot.DotBuffered(type, row, x, simdDecode: false), $"{type} portable Dot, n = {n}");
            }
        }
    }

    [Theory]
    [MemberData(nameof(AllTypes))]
    public void Simd_dequantization_is_bit_identical_to_the_scalar_reference(GgmlType type)
    {
        var rng = new Random(99 + (int)type);
        foreach (int n in Lengths(type))
        {
            var row = RandomBlocks.Row(type, n, rng);
            var simd = new float[n];
            var scalar = new float[n];
            Dequantize.Row(type, row, simd);
            Dequantize.RowScalar(type, row, scalar);
            for (int i = 0; i < n; i++)
                Assert.True(BitConverter.SingleToInt32Bits(simd[i]) == BitConverter.SingleToInt32Bits(scalar[i]),
                    $"{type}, n = {n}, element {i}: SIMD {simd[i]} vs scalar {scalar[i]}");
        }
    }

    [Theory]
    [MemberData(nameof(AllTypes))]
    public void MatVec_is_one_Dot_per_row(GgmlType type)
    {
        var rng = new Random(7 + (int)type);
        int cols = 2 * Math.Max(GgmlTypeInfo.Of(type).BlockSize, 32);
        const int rows = 7;
        int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
        var w = RandomBlocks.Row(type, rows * cols, rng);
        var x = RandomBlocks.Floats(rng, cols);
        var y = new float[rows];
        QuantizedDot.MatVec(type, w, rows, cols, x, y);
        for (int r = 0; r < rows; r++)
        {
            var row = w.AsSpan(r * rowBytes, rowBytes).ToArray();
            Assert.Equal(QuantizedDot.Dot(type, row, x), y[r]);
        }
    }

    [Theory]
    [MemberData(nameof(AllTypes))]
    public void MatMul_equals_n_MatVec_calls(GgmlType type)
    {
        var rng = new Random(21 + (int)type);
        // A short matrix (one tile) and a wide one whose 32 Ki-float tiles hold 4 rows, so 10 rows take
        // three tiles, the last one partial; for one-element blocks also rows that are not whole vectors.
        var shapes = new List<(int Rows, int Cols)> { (5, 2 * GgmlTypeInfo.QK_K), (10, 8192) };
        if (GgmlTypeInfo.Of(type).BlockSize == 1) shapes.AddRange([(6, 13), (9, 7), (4, 1)]);
        foreach (var (rows, cols) in shapes)
        {
            foreach (int n in new[] { 1, 2, 3, 4 })
            {
                var w = RandomBlocks.Row(type, rows * cols, rng);
                var xs = RandomBlocks.Floats(rng, n * cols);
                var ys = new float[n * rows];
                QuantizedDot.MatMul(type, w, rows, cols, xs, n, ys);
                var y = new float[rows];
                for (int i = 0; i < n; i++)
                {
                    var xi = xs.AsSpan(i * cols, cols).ToArray();
                    QuantizedDot.MatVec(type, w, rows, cols, xi, y);
                    int rowBytes = (int)GgmlTypeInfo.RowBytes(type, cols);
                    for (int r = 0; r < rows; r++)
                    {
                        var (expected, absSum) = Reference(type, w.AsSpan(r * rowBytes, rowBytes).ToArray(), xi);
                        AssertClose(expected, absSum, y[r], $"{type} MatVec [{rows}×{cols}] row {r}");
                        AssertClose(y[r], absSum, ys[i * rows + r], $"{type} MatMul [{rows}×{cols}], n = {n}, activation {i}, row {r}");
                    }
                }
            }
        }
    }

    [Fact]
    public void F16_dot_decodes_every_pattern_exactly()
    {
        // One non-zero element in a 48-element row against all-ones activations: the dot is that element's
        // value, including subnormals, infinities and NaN — at element 3 (the 16-lane AVX-512 path where there
        // is one) and at element 40 (the 8-lane AVX2 path after it).
        var ones = Enumerable.Repeat(1f, 48).ToArray();
        foreach (int at in new[] { 3, 40 })
        {
            var row = new byte[96];
            for (int h = 0; h <= 0xFFFF; h++)
            {
                row[2 * at] = (byte)h;
                row[2 * at + 1] = (byte)(h >> 8);
                float expected = (float)BitConverter.UInt16BitsToHalf((ushort)h);
                float actual = QuantizedDot.Dot(GgmlType.F16, row, ones);
                Assert.True(expected == actual || (float.IsNaN(expected) && float.IsNaN(actual)), $"element {at}, 0x{h:X4}: expected {expected}, got {actual}");
            }
        }
    }

    [Fact]
    public void Unsupported_types_are_refused_by_name()
    {
        foreach (var type in new[] { GgmlType.IQ2_XXS, GgmlType.Q8_1, GgmlType.I32, GgmlType.IQ4_NL })
        {
            var e1 = Assert.Throws<NotSupportedException>(() => QuantizedDot.Dot(type, new byte[64], new float[32]));
            Assert.Contains(type.ToString(), e1.Message);
            var e2 = Assert.Throws<NotSupportedException>(() => Dequantize.Row(type, new byte[64], new float[32]));
            Assert.Contains(type.ToString(), e2.Message);
            var e3 = Assert.Throws<NotSupportedException>(() => QuantizedDot.MatVec(type, new byte[64], 1, 32, new float[32], new float[1]));
            Assert.Contains(type.ToString(), e3.Message);
        }
        var e4 = Assert.Throws<NotSupportedException>(() => Quantize.Row(GgmlType.Q5_K, new float[256], new byte[176]));
        Assert.Contains("Q5_K", e4.Message);
    }

    [Fact]
    public void Length_mismatches_say_what_was_expected()
    {
        var e = Assert.Throws<ArgumentException>(() => Dequantize.Row(GgmlType.Q4_0, new byte[18], new float[33]));
        Assert.Contains("33 elements is not a whole number of Q4_0 blocks (32 elements each)", e.Message);
        Assert.Equal("dst", e.ParamName);

        e = Assert.Throws<ArgumentException>(() => Dequantize.Row(GgmlType.Q4_0, new byte[17], new float[32]));
        Assert.Contains("32 elements of Q4_0 take 18 bytes, but src has 17", e.Message);
        Assert.Equal("src", e.ParamName);

        e = Assert.Throws<ArgumentException>(() => QuantizedDot.Dot(GgmlType.Q6_K, new byte[210], new float[512]));
        Assert.Contains("512 elements of Q6_K take 420 bytes, but row has 210", e.Message);

        e = Assert.Throws<ArgumentException>(() => QuantizedDot.MatVec(GgmlType.Q8_0, new byte[68], 2, 32, new float[32], new float[3]));
        Assert.Contains("y has 3 elements, but the matrix has 2 rows", e.Message);

        e = Assert.Throws<ArgumentException>(() => QuantizedDot.MatVec(GgmlType.Q8_0, new byte[67], 2, 32, new float[32], new float[2]));
        Assert.Contains("a 2 × 32 Q8_0 matrix takes 68 bytes, but weights has 67", e.Message);

        e = Assert.Throws<ArgumentException>(() => QuantizedDot.MatMul(GgmlType.F32, new byte[256], 2, 32, new float[63], 2, new float[4]));
        Assert.Contains("xs has 63 elements, but 2 rows of 32 take 64", e.Message);

        e = Assert.Throws<ArgumentException>(() => Quantize.Row(GgmlType.Q8_0, new float[32], new byte[32]));
        Assert.Contains("32 elements of Q8_0 take 34 bytes, but dst has 32", e.Message);
    }

    [Fact]
    public void Empty_rows_give_zero()
    {
        Assert.Equal(0f, QuantizedDot.Dot(GgmlType.Q4_K, [], []));
        QuantizedDot.MatMul(GgmlType.Q8_0, [], 0, 32, new float[64], 2, []);
    }
}
