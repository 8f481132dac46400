using System.Buffers.Binary;
using TokenMill.Models.Gguf;
using TokenMill.Quantization;

namespace TokenMill.Tests.Quantization;

/// <summary>
/// Each test lays out one block byte by byte from the documented format (ggml-common.h), with scales
/// that are powers of two so every expected value is exact, and computes the expected floats from the
/// format's formula — never by calling the code under test. Both the SIMD and the scalar decoders must
/// give exactly these values.
/// </summary>
public class HandComputedBlockTests
{
    // f16 bit patterns of the scales used below.
    const ushort F16_0_0625 = 0x2C00, F16_0_125 = 0x3000, F16_0_25 = 0x3400, F16_0_5 = 0x3800;
    const ushort F16_1 = 0x3C00, F16_2 = 0x4000, F16_Minus1 = 0xBC00;

    static void PutF16(byte[] b, int offset, ushort bits) => BinaryPrimitives.WriteUInt16LittleEndian(b.AsSpan(offset), bits);

    static void AssertDecodes(GgmlType type, byte[] block, double[] expected)
    {
        Assert.Equal(GgmlTypeInfo.RowBytes(type, expected.Length), block.Length);
        foreach (bool simd in new[] { true, false })
        {
            var got = new float[expected.Length];
            if (simd) Dequantize.Row(type, block, got);
            else Dequantize.RowScalar(type, block, got);
            for (int i = 0; i < expected.Length; i++)
                Assert.True(BitConverter.SingleToInt32Bits((float)expected[i]) == BitConverter.SingleToInt32Bits(got[i]),
                    $"{type} element {i}: expected {expected[i]}, got {got[i]} ({(simd ? "SIMD" : "scalar")} path)");
        }
    }

    [Fact]
    public void F32_is_the_little_endian_floats()
    {
        var block = new byte[8];
        BinaryPrimitives.WriteSingleLittleEndian(block, -1.5f);
        BinaryPrimitives.WriteSingleLittleEndian(block.AsSpan(4), 3e-40f);
        AssertDecodes(GgmlType.F32, block, [-1.5, 3e-40f]);
    }

    [Fact]
    public void F16_decodes_normals_subnormals_and_infinities()
    {
        ushort[] bits = [0x3C00, 0xC000, 0x7BFF, 0x0001, 0x03FF, 0x0400, 0x7C00, 0xFC00, 0x8000, 0x3555];
        double[] expected =
        [
            1, -2, 65504, Math.Pow(2, -24), 1023 * Math.Pow(2, -24), Math.Pow(2, -14),
            double.PositiveInfinity, double.NegativeInfinity, -0.0, (1 + 0x155 / 1024.0) / 4,
        ];
        var block = new byte[2 * bits.Length];
        for (int i = 0; i < bits.Length; i++) PutF16(block, 2 * i, bits[i]);
        AssertDecodes(GgmlType.F16, block, expected);
    }

    [Fact]
    public void BF16_is_the_top_half_of_an_f32()
    {
        // 0xC049 = sign, exponent 128, mantissa 0x49 → −(1 + 0x49/128)·2 = −3.140625
        ushort[] bits = [0x3F80, 0xC049, 0x7F80, 0x0001, 0x8000, 0x4000, 0x3F81, 0x0080, 0x4120, 0xBF00, 0x7F7F, 0x3E80, 0x0000, 0x4300, 0xC2C8, 0x3C23];
        double[] expected =
        [
            1, -3.140625, double.PositiveInfinity, Math.Pow(2, -133), -0.0, 2, 1 + 1.0 / 128, Math.Pow(2, -126),
            10, -0.5, (2 - 1.0 / 128) * Math.Pow(2, 127), 0.25, 0, 128, -100, (1 + 0x23 / 128.0) / 128,
        ];
        var block = new byte[2 * bits.Length];
        for (int i = 0; i < bits.Length; i++) PutF16(block, 2 * i, bits[i]);
        AssertDecodes(GgmlType.BF16, block, expected);
    }

    [Fact]
    public void Q8_0_is_d_times_the_signed_bytes()
    {
        // d = 0.25; qs[j] = j − 16 → x_j = (j − 16)/4, so x_0 = −4 and x_31 = 3.75.
        var block = new byte[34];
        PutF16(block, 0, F16_0_25);
        for (int j = 0; j < 32; j++) block[2 + j] = (byte)(sbyte)(j - 16);
        var expected = new double[32];
        for (int j = 0; j < 32; j++) expected[j] = (j - 16) * 0.25;
        Assert.Equal(-4.0, expected[0]);
        AssertDecodes(GgmlType.Q8_0, block, expected);
    }

    [Fact]
    public void Q8_0_hand_worked_bytes()
    {
        // d = 1.0 (f16 0x3C00), qs = 0x7F, 0x80, 0xFF, 0x01, then zeros → 127, −128, −1, 1, 0…
        var block = new byte[34];
        block[0] = 0x00; block[1] = 0x3C;
        block[2] = 0x7F; block[3] = 0x80; block[4] = 0xFF; block[5] = 0x01;
        var expected = new double[32];
        expected[0] = 127; expected[1] = -128; expected[2] = -1; expected[3] = 1;
        AssertDecodes(GgmlType.Q8_0, block, expected);
    }

    [Fact]
    public void Q4_0_low_nibbles_are_the_first_half_high_nibbles_the_second()
    {
        // d = 0.5; byte j = (j) | (15 − j) << 4 → x_j = (j − 8)/2, x_{16+j} = (7 − j)/2.
        var block = new byte[18];
        PutF16(block, 0, F16_0_5);
        for (int j = 0; j < 16; j++) block[2 + j] = (byte)(j | ((15 - j) << 4));
        var expected = new double[32];
        for (int j = 0; j < 16; j++)
        {
            expected[j] = (j - 8) * 0.5;
            expected[16 + j] = (15 - j - 8) * 0.5;
        }
        // Spot values by hand: byte 0 = 0xF0 → x_0 = (0 − 8)·0.5 = −4, x_16 = (15 − 8)·0.5 = 3.5.
        Assert.Equal(0xF0, block[2]);
        Assert.Equal(-4.0, expected[0]);
        Assert.Equal(3.5, expected[16]);
        AssertDecodes(GgmlType.Q4_0, block, expected);
    }

    [Fact]
    public void Q4_1_is_d_times_nibble_plus_m()
    {
        // d = 0.5, m = −1; byte j = (j) | ((3·j) mod 16) << 4.
        var block = new byte[20];
        PutF16(block, 0, F16_0_5);
        PutF16(block, 2, F16_Minus1);
        for (int j = 0; j < 16; j++) block[4 + j] = (byte)(j | ((3 * j % 16) << 4));
        var expected = new double[32];
        for (int j = 0; j < 16; j++)
        {
            expected[j] = j * 0.5 - 1;
            expected[16 + j] = (3 * j % 16) * 0.5 - 1;
        }
        AssertDecodes(GgmlType.Q4_1, block, expected);
    }

    /// <summary>Five-bit values v_e = (7e + 3) mod 32, stored as nibbles plus bit e of the 32-bit qh.</summary>
    static (byte[] Qs, uint Qh, int[] V) FiveBitQuants()
    {
        var v = new int[32];
        for (int e = 0; e < 32; e++) v[e] = (7 * e + 3) % 32;
        var qs = new byte[16];
        uint qh = 0;
        for (int j = 0; j < 16; j++) qs[j] = (byte)((v[j] & 0xF) | ((v[j + 16] & 0xF) << 4));
        for (int e = 0; e < 32; e++) qh |= (uint)(v[e] >> 4) << e;
        return (qs, qh, v);
    }

    [Fact]
    public void Q5_0_takes_the_fifth_bit_from_qh()
    {
        var (qs, qh, v) = FiveBitQuants();
        var block = new byte[22];
        PutF16(block, 0, F16_0_25);
        BinaryPrimitives.WriteUInt32LittleEndian(block.AsSpan(2), qh);
        qs.CopyTo(block, 6);
        var expected = v.Select(q => (q - 16) * 0.25).ToArray();
        AssertDecodes(GgmlType.Q5_0, block, expected);
    }

    [Fact]
    public void Q5_1_is_d_times_five_bits_plus_m()
    {
        var (qs, qh, v) = FiveBitQuants();
        var block = new byte[24];
        PutF16(block, 0, F16_0_125);
        PutF16(block, 2, F16_2);
        BinaryPrimitives.WriteUInt32LittleEndian(block.AsSpan(4), qh);
        qs.CopyTo(block, 8);
        var expected = v.Select(q => q * 0.125 + 2).ToArray();
        AssertDecodes(GgmlType.Q5_1, block, expected);
    }

    /// <summary>
    /// Stores 2-bit value <paramref name="q"/> of element e (0..255) the K-quant way: each 128-element half
    /// has 32 bytes, and element 32·s + l of the half sits in bits 2s..2s+1 of byte l.
    /// </summary>
    static void Put2Bits(byte[] qs, int qsOffset, int e, int q)
    {
        int half = e / 128, i = e % 128;
        qs[qsOffset + 32 * half + i % 32] |= (byte)(q << (2 * (i / 32)));
    }

    [Fact]
    public void Q2_K_uses_4_bit_scales_and_mins_per_16()
    {
        // scales[k] = sc_k | m_k << 4 with sc_k = k, m_k = 15 − k; d = 0.5, dmin = 0.25; q_e = (5e + 1) mod 4.
        var block = new byte[84];
        for (int k = 0; k < 16; k++) block[k] = (byte)(k | ((15 - k) << 4));
        var q = new int[256];
        for (int e = 0; e < 256; e++)
        {
            q[e] = (5 * e + 1) % 4;
            Put2Bits(block, 16, e, q[e]);
        }
        PutF16(block, 80, F16_0_5);
        PutF16(block, 82, F16_0_25);
        var expected = new double[256];
        for (int e = 0; e < 256; e++)
        {
            int k = e / 16;
            expected[e] = 0.5 * k * q[e] - 0.25 * (15 - k);
        }
        // By hand: element 0 is in sub-block 0 (scale 0, min 15) → −0.25·15 = −3.75; element 255: sub-block
        // 15 (scale 15, min 0), q = (5·255 + 1) mod 4 = 0 → 0.
        Assert.Equal(-3.75, expected[0]);
        Assert.Equal(0.0, expected[255]);
        AssertDecodes(GgmlType.Q2_K, block, expected);
    }

    [Fact]
    public void Q3_K_unpacks_6_bit_scales_and_the_high_bit_mask()
    {
        // s_k = 4k − 32 (−32..28) stored as u = s + 32 in 6 bits; v_e = 3e mod 8 means q = v − 4; d = 0.5.
        var block = new byte[110];
        const int hmask = 0, qs = 32, scales = 96;
        for (int k = 0; k < 16; k++)
        {
            int u = 4 * k;
            if (k < 8) block[scales + k] |= (byte)(u & 0xF);
            else block[scales + k - 8] |= (byte)((u & 0xF) << 4);
            block[scales + 8 + k % 4] |= (byte)((u >> 4) << (2 * (k / 4)));
        }
        var v = new int[256];
        for (int e = 0; e < 256; e++)
        {
            v[e] = 3 * e % 8;
            Put2Bits(block, qs, e, v[e] & 3);
            if (v[e] >= 4) block[hmask + e % 32] |= (byte)(1 << (e / 32)); // set bit: no −4
        }
        PutF16(block, 108, F16_0_5);
        var expected = new double[256];
        for (int e = 0; e < 256; e++) expected[e] = 0.5 * (4 * (e / 16) - 32) * (v[e] - 4);
        // By hand: element 1 → s_0 = −32, v = 3 → q = −1 → 0.5·(−32)·(−1) = 16.
        Assert.Equal(16.0, expected[1]);
        AssertDecodes(GgmlType.Q3_K, block, expected);
    }

    /// <summary>Packs eight 6-bit (scale, min) pairs into the 12 bytes at <paramref name="offset"/>, Q4_K/Q5_K style.</summary>
    static void PutScaleMins(byte[] b, int offset, int[] sc, int[] m)
    {
        for (int k = 0; k < 8; k++)
        {
            if (k < 4)
            {
                b[offset + k] |= (byte)sc[k];
                b[offset + k + 4] |= (byte)m[k];
            }
            else
            {
                b[offset + k + 4] = (byte)((sc[k] & 0xF) | ((m[k] & 0xF) << 4));
                b[offset + k - 4] |= (byte)((sc[k] >> 4) << 6);
                b[offset + k] |= (byte)((m[k] >> 4) << 6);
            }
        }
    }

    // Scales and mins that use the top bits of the 6-bit fields in every slot.
    static readonly int[] KScales = [1, 63, 17, 32, 45, 2, 60, 33];
    static readonly int[] KMins = [0, 5, 63, 40, 16, 31, 48, 1];

    [Fact]
    public void Q4_K_unpacks_6_bit_scales_and_mins()
    {
        // Element e: 64-element chunk c = e/64; the first 32 are low nibbles of qs[32c..], the next 32 high.
        var block = new byte[144];
        PutF16(block, 0, F16_0_25);
        PutF16(block, 2, F16_0_125);
        PutScaleMins(block, 4, KScales, KMins);
        var q = new int[256];
        for (int e = 0; e < 256; e++)
        {
            q[e] = (5 * e + 2) % 16;
            int c = e / 64, r = e % 64;
            block[16 + 32 * c + r % 32] |= (byte)(r < 32 ? q[e] : q[e] << 4);
        }
        var expected = new double[256];
        for (int e = 0; e < 256; e++) expected[e] = 0.25 * KScales[e / 32] * q[e] - 0.125 * KMins[e / 32];
        // By hand: element 32 (sub-block 1: scale 63, min 5), q = 162 mod 16 = 2 → 0.25·63·2 − 0.625 = 30.875.
        Assert.Equal(30.875, expected[32]);
        AssertDecodes(GgmlType.Q4_K, block, expected);
    }

    [Fact]
    public void Q5_K_adds_the_fifth_bit_from_qh()
    {
        var block = new byte[176];
        PutF16(block, 0, F16_0_25);
        PutF16(block, 2, F16_0_125);
        PutScaleMins(block, 4, KScales, KMins);
        var q = new int[256];
        for (int e = 0; e < 256; e++)
        {
            q[e] = (7 * e + 5) % 32;
            int c = e / 64, r = e % 64;
            block[48 + 32 * c + r % 32] |= (byte)(r < 32 ? q[e] & 0xF : (q[e] & 0xF) << 4);
            if (q[e] >= 16) block[16 + r % 32] |= (byte)(1 << (2 * c + (r < 32 ? 0 : 1)));
        }
        var expected = new double[256];
        for (int e = 0; e < 256; e++) expected[e] = 0.25 * KScales[e / 32] * q[e] - 0.125 * KMins[e / 32];
        AssertDecodes(GgmlType.Q5_K, block, expected);
    }

    [Fact]
    public void Q6_K_combines_4_low_and_2_high_bits_with_signed_scales()
    {
        // sc_k = 17k − 128 (−128..127), d = 1/16, q_e = 11e mod 64 (x uses q − 32).
        var block = new byte[210];
        const int ql = 0, qh = 128, scales = 192;
        for (int k = 0; k < 16; k++) block[scales + k] = (byte)(sbyte)(17 * k - 128);
        var q = new int[256];
        for (int e = 0; e < 256; e++)
        {
            q[e] = 11 * e % 64;
            int h = e / 128, i = e % 128, k = i / 32, l = i % 32;
            int lowByte = ql + 64 * h + l + (k % 2 == 1 ? 32 : 0); // k = 1, 3 use ql[l + 32]
            block[lowByte] |= (byte)(k < 2 ? q[e] & 0xF : (q[e] & 0xF) << 4); // k = 2, 3 use the high nibble
            block[qh + 32 * h + l] |= (byte)((q[e] >> 4) << (2 * k));
        }
        PutF16(block, 208, F16_0_0625);
        var expected = new double[256];
        for (int e = 0; e < 256; e++) expected[e] = 0.0625 * (17 * (e / 16) - 128) * (q[e] - 32);
        // By hand: element 0 → scale −128, q = 0 → (1/16)·(−128)·(−32) = 256.
        Assert.Equal(256.0, expected[0]);
        AssertDecodes(GgmlType.Q6_K, block, expected);
    }

    [Fact]
    public void Q8_K_is_an_f32_scale_times_signed_bytes()
    {
        var block = new byte[292];
        BinaryPrimitives.WriteSingleLittleEndian(block, 0.375f);
        for (int j = 0; j < 256; j++) block[4 + j] = (byte)(sbyte)(j - 128);
        for (int k = 0; k < 16; k++) BinaryPrimitives.WriteInt16LittleEndian(block.AsSpan(260 + 2 * k), 12345); // bsums: ignored
        var expected = new double[256];
        for (int j = 0; j < 256; j++) expected[j] = 0.375 * (j - 128);
        AssertDecodes(GgmlType.Q8_K, block, expected);
    }

    [Fact]
    public void Rows_of_several_blocks_decode_block_after_block()
    {
        // Two Q4_0 blocks with d = 1 and d = 2, all nibbles 9 → 1·1 then 1·2.
        var row = new byte[36];
        PutF16(row, 0, F16_1);
        PutF16(row, 18, F16_2);
        for (int j = 0; j < 16; j++) row[2 + j] = row[20 + j] = 0x99;
        var expected = Enumerable.Repeat(1.0, 32).Concat(Enumerable.Repeat(2.0, 32)).ToArray();
        var got = new float[64];
        Dequantize.Row(GgmlType.Q4_0, row, got);
        Assert.Equal(expected, got.Select(f => (double)f));
    }
}
