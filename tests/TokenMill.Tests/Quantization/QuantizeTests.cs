using System.Buffers.Binary;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Quantization;

public class QuantizeTests
{
    [Fact]
    public void Q8_0_rounds_half_away_from_zero()
    {
        // max |x| = 127 → d = 1, so q = roundf(x): 2.5 → 3 and −2.5 → −3 (not to even), 126.5 → 127.
        var x = new float[32];
        float[] head = [127, 2.5f, -2.5f, 0.5f, -0.5f, 1.5f, 126.5f, -127, 0.49f, -0.51f];
        head.CopyTo(x, 0);
        var block = new byte[34];
        Quantize.Row(GgmlType.Q8_0, x, block);
        byte[] expected = new byte[34];
        expected[0] = 0x00; expected[1] = 0x3C; // d = 1.0 as f16
        byte[] qs = [0x7F, 0x03, 0xFD, 0x01, 0xFF, 0x02, 0x7F, 0x81, 0x00, 0xFF];
        qs.CopyTo(expected, 2);
        Assert.Equal(expected, block);
    }

    [Fact]
    public void Q4_0_maps_the_largest_magnitude_to_minus_8()
    {
        // Block A: the extreme is −8 → d = −8/−8 = 1; q = min(15, trunc(x + 8.5)).
        // Block B: the extreme is +8 (first of ±8) → d = −1; q = min(15, trunc(−x + 8.5)).
        var x = new float[64];
        float[] a = [-8, 7, 7.4f, 7.6f, 0.5f, -0.5f, 0, 3.2f];
        a.CopyTo(x, 0);
        x[16] = -7.9f; x[17] = -7.4f;
        float[] b = [8, -7, -7.6f, 2, 0, -8];
        b.CopyTo(x, 32);

        var row = new byte[36];
        Quantize.Row(GgmlType.Q4_0, x, row);

        int[] qa = new int[32], qb = new int[32];
        Array.Fill(qa, 8);
        Array.Fill(qb, 8);
        int[] qaHead = [0, 15, 15, 15, 9, 8, 8, 11];
        qaHead.CopyTo(qa, 0);
        qa[16] = 0; qa[17] = 1;
        int[] qbHead = [0, 15, 15, 6, 8, 15];
        qbHead.CopyTo(qb, 0);

        var expected = new byte[36];
        BinaryPrimitives.WriteUInt16LittleEndian(expected, 0x3C00);          // d = 1
        BinaryPrimitives.WriteUInt16LittleEndian(expected.AsSpan(18), 0xBC00); // d = −1
        for (int j = 0; j < 16; j++)
        {
            expected[2 + j] = (byte)(qa[j] | (qa[j + 16] << 4));
            expected[20 + j] = (byte)(qb[j] | (qb[j + 16] << 4));
        }
        Assert.Equal(expected, row);
    }

    [Theory]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_1)]
    [InlineData(GgmlType.Q5_0)]
    [InlineData(GgmlType.Q5_1)]
    public void A_zero_block_stays_zero(GgmlType type)
    {
        var x = new float[64];
        var q = new byte[GgmlTypeInfo.RowBytes(type, 64)];
        Quantize.Row(type, x, q);
        var y = new float[64];
        Dequantize.Row(type, q, y);
        Assert.All(y, v => Assert.Equal(0f, v));
    }

    /// <summary>
    /// The largest error a block may have after a round trip, from the quantizer's step: half a step from
    /// rounding, a full step where the reference clips the far end (Q4_0/Q5_0 give the side opposite the
    /// extreme one level less), plus the f16 rounding of the stored scale and min (relative 2^-11).
    /// </summary>
    static double Bound(GgmlType type, ReadOnlySpan<float> block)
    {
        double amax = 0, min = double.MaxValue, max = double.MinValue;
        foreach (float v in block)
        {
            amax = Math.Max(amax, Math.Abs(v));
            min = Math.Min(min, v);
            max = Math.Max(max, v);
        }
        const double f16 = 1.0 / 2048;
        return type switch
        {
            GgmlType.Q8_0 => amax / 127 * (0.5 + 127 * f16) * 1.001,
            GgmlType.Q4_0 => amax / 8 * (1 + 8 * f16) * 1.001,
            GgmlType.Q5_0 => amax / 16 * (1 + 16 * f16) * 1.001,
            GgmlType.Q4_1 => (max - min) / 15 * (0.5 + 15 * f16) * 1.001 + Math.Abs(min) * f16,
            GgmlType.Q5_1 => (max - min) / 31 * (0.5 + 31 * f16) * 1.001 + Math.Abs(min) * f16,
            _ => throw new ArgumentOutOfRangeException(nameof(type)),
        };
    }

    [Theory]
    [InlineData(GgmlType.Q8_0)]
    [InlineData(GgmlType.Q4_0)]
    [InlineData(GgmlType.Q4_1)]
    [InlineData(GgmlType.Q5_0)]
    [InlineData(GgmlType.Q5_1)]
    public void Round_trip_error_is_within_the_quantization_step(GgmlType type)
    {
        var rng = new Random(11);
        foreach (float scale in new[] { 0.01f, 1f, 1000f })
        {
            const int n = 32 * 64;
            var x = RandomBlocks.Floats(rng, n, scale);
            for (int i = 0; i < n; i += 97) x[i] *= 10; // outliers set the scale of some blocks
            for (int i = 5; i < n; i += 131) x[i] = Math.Abs(x[i]) + 3 * scale; // and one-sided blocks
            var q = new byte[GgmlTypeInfo.RowBytes(type, n)];
            Quantize.Row(type, x, q);
            var y = new float[n];
            Dequantize.Row(type, q, y);
            for (int b = 0; b < n; b += 32)
            {
                double bound = Bound(type, x.AsSpan(b, 32));
                for (int i = b; i < b + 32; i++)
                {
                    double err = Math.Abs((double)y[i] - x[i]);
                    Assert.True(err <= bound, $"{type}, scale {scale}, element {i}: {x[i]} came back as {y[i]} (error {err} > {bound})");
                }
            }
        }

        // On a plain Gaussian row the average error is about step/√12: a few percent of the signal.
        var g = RandomBlocks.Floats(rng, 32 * 256);
        var gq = new byte[GgmlTypeInfo.RowBytes(type, g.Length)];
        Quantize.Row(type, g, gq);
        var gy = new float[g.Length];
        Dequantize.Row(type, gq, gy);
        double sumSq = 0, errSq = 0;
        for (int i = 0; i < g.Length; i++)
        {
            sumSq += (double)g[i] * g[i];
            errSq += ((double)gy[i] - g[i]) * ((double)gy[i] - g[i]);
        }
        double relRms = Math.Sqrt(errSq / sumSq);
        double limit = type switch { GgmlType.Q8_0 => 0.01, GgmlType.Q5_0 or GgmlType.Q5_1 => 0.06, _ => 0.12 };
        Assert.True(relRms < limit, $"{type}: relative RMS error {relRms} (limit {limit})");
    }

    [Fact]
    public void F16_and_BF16_rows_hold_each_element_converted()
    {
        float[] x = [1, -0f, float.PositiveInfinity, 1 + (float)Math.Pow(2, -11), 65520, float.NaN, 3e-8f, -1e-3f];
        var f16 = new byte[16];
        var bf16 = new byte[16];
        Quantize.Row(GgmlType.F16, x, f16);
        Quantize.Row(GgmlType.BF16, x, bf16);
        for (int i = 0; i < x.Length; i++)
        {
            Assert.Equal(Fp16.FromSingle(x[i]), BinaryPrimitives.ReadUInt16LittleEndian(f16.AsSpan(2 * i)));
            Assert.Equal(Bf16.FromSingle(x[i]), BinaryPrimitives.ReadUInt16LittleEndian(bf16.AsSpan(2 * i)));
        }
        var f32 = new byte[32];
        Quantize.Row(GgmlType.F32, x, f32);
        var back = new float[8];
        Dequantize.Row(GgmlType.F32, f32, back);
        Assert.Equal(x.Select(BitConverter.SingleToInt32Bits), back.Select(BitConverter.SingleToInt32Bits));
    }
}
