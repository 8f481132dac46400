using System.Buffers.Binary;
using System.Numerics.Tensors;
using System.Runtime.InteropServices;
using System.Runtime.Intrinsics.X86;
using TokenMill.Models.Gguf;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Quantization;

/// <summary>
/// Turns one row of a GGUF tensor into f32, giving exactly the values of ggml's reference
/// <c>dequantize_row_*</c> (ggml-quants.c): the same products and differences in the same order, no
/// fused multiply-adds. The AVX2 paths compute the same expressions lane by lane, so they are
/// bit-identical with the scalar ones (the tests hold them to that).
/// </summary>
public static class Dequantize
{
    /// <summary>Whether <see cref="Row"/> can decode <paramref name="type"/>.</summary>
    public static bool IsSupported(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
        or GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1
        or GgmlType.Q2_K or GgmlType.Q3_K or GgmlType.Q4_K or GgmlType.Q5_K or GgmlType.Q6_K or GgmlType.Q8_K;

    /// <summary>
    /// Decodes <paramref name="dst"/>.Length elements (a whole number of blocks) from <paramref name="src"/>,
    /// which must hold exactly their bytes.
    /// </summary>
    /// <exception cref="NotSupportedException">the type cannot be dequantized.</exception>
    /// <exception cref="ArgumentException">the lengths do not fit the type's blocks or each other.</exception>
    public static void Row(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        CheckRow(type, src.Length, dst.Length, "Dequantize.Row", nameof(src), nameof(dst));
        Blocks(type, src, dst, simd: true);
    }

    /// <summary>The scalar reference path alone (tests compare the SIMD one with it).</summary>
    internal static void RowScalar(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst)
    {
        CheckRow(type, src.Length, dst.Length, "Dequantize.RowScalar", nameof(src), nameof(dst));
        Blocks(type, src, dst, simd: false);
    }

    /// <summary>Throws unless <paramref name="bytes"/> is exactly the size of <paramref name="elements"/> elements of <paramref name="type"/>.</summary>
    internal static void CheckRow(GgmlType type, int bytes, int elements, string caller, string bytesName, string elementsName)
    {
        if (!IsSupported(type)) throw new NotSupportedException($"{caller}: tensor type {type} is not supported");
        var (blockSize, typeSize) = GgmlTypeInfo.Of(type);
        if (elements % blockSize != 0)
            throw new ArgumentException(
                $"{caller}: {elements} elements is not a whole number of {type} blocks ({blockSize} elements each)", elementsName);
        long need = (long)elements / blockSize * typeSize;
        if (bytes != need)
            throw new ArgumentException(
                $"{caller}: {elements} elements of {type} take {need} bytes, but {bytesName} has {bytes}", bytesName);
    }

    /// <summary>Decodes whole blocks; lengths already checked.</summary>
    internal static void Blocks(GgmlType type, ReadOnlySpan<byte> src, Span<float> dst, bool simd)
    {
        bool avx2 = simd && Avx2.IsSupported;
        switch (type)
        {
            case GgmlType.F32: MemoryMarshal.Cast<byte, float>(src).CopyTo(dst); break;
            case GgmlType.F16:
                // The matrix product decodes a tile of 16 rows once per product: a 16 × 2048 tile took 1.4 µs here
                // and 2.9 µs with TensorPrimitives (Zen 5), against ≈ 12 µs for multiplying it with 32 rows.
                if (simd && DequantizeAvx512.IsSupported) DequantizeAvx512.F16(src, dst);
                else if (simd) TensorPrimitives.ConvertToSingle(MemoryMarshal.Cast<byte, Half>(src), dst);
                else F16(src, dst);
                break;
            case GgmlType.BF16:
                if (simd && DequantizeAvx512.IsSupported) DequantizeAvx512.BF16(src, dst);
                else if (avx2) DequantizeAvx2.BF16(src, dst);
                else BF16(src, dst);
                break;
            case GgmlType.Q8_0: if (avx2) DequantizeAvx2.Q8_0(src, dst); else Q8_0(src, dst); break;
            case GgmlType.Q4_0: if (avx2) DequantizeAvx2.Q4_0(src, dst); else Q4_0(src, dst); break;
            case GgmlType.Q4_1: Q4_1(src, dst); break;
            case GgmlType.Q5_0: Q5_0(src, dst); break;
            case GgmlType.Q5_1: Q5_1(src, dst); break;
            case GgmlType.Q2_K: Q2_K(src, dst); break;
            case GgmlType.Q3_K: Q3_K(src, dst); break;
            case GgmlType.Q4_K: if (avx2) DequantizeAvx2.Q4_K(src, dst); else Q4_K(src, dst); break;
            case GgmlType.Q5_K: if (avx2) DequantizeAvx2.Q5_K(src, dst); else Q5_K(src, dst); break;
            case GgmlType.Q6_K: if (avx2) DequantizeAvx2.Q6_K(src, dst); else Q6_K(src, dst); break;
            case GgmlType.Q8_K: Q8_K(src, dst); break;
            default: throw new NotSupportedException($"Dequantize: tensor type {type} is not supported");
        }
    }

    // ---- scalar reference decoders, one block at a time ---------------------------------------

    static void F16(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int i = 0; i < dst.Length; i++) dst[i] = Fp16.ToSingle(BinaryPrimitives.ReadUInt16LittleEndian(src[(2 * i)..]));
    }

    static void BF16(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int i = 0; i < dst.Length; i++) dst[i] = Bf16.ToSingle(BinaryPrimitives.ReadUInt16LittleEndian(src[(2 * i)..]));
    }

    static void Q8_0(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int o = 0, b = 0; o < dst.Length; o += QK, b += Q8_0Bytes)
        {
            var block = src.Slice(b, Q8_0Bytes);
            float d = F16At(block, 0);
            for (int j = 0; j < QK; j++) dst[o + j] = (sbyte)block[2 + j] * d;
        }
    }

    static void Q4_0(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int o = 0, b = 0; o < dst.Length; o += QK, b += Q4_0Bytes)
        {
            var block = src.Slice(b, Q4_0Bytes);
            float d = F16At(block, 0);
            var qs = block[2..];
            for (int j = 0; j < QK / 2; j++)
            {
                dst[o + j] = ((qs[j] & 0xF) - 8) * d;
                dst[o + j + QK / 2] = ((qs[j] >> 4) - 8) * d;
            }
        }
    }

    static void Q4_1(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int o = 0, b = 0; o < dst.Length; o += QK, b += Q4_1Bytes)
        {
            var block = src.Slice(b, Q4_1Bytes);
            float d = F16At(block, 0), m = F16At(block, 2);
            var qs = block[4..];
            for (int j = 0; j < QK / 2; j++)
            {
                dst[o + j] = (qs[j] & 0xF) * d + m;
                dst[o + j + QK / 2] = (qs[j] >> 4) * d + m;
            }
        }
    }

    static void Q5_0(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int o = 0, b = 0; o < dst.Length; o += QK, b += Q5_0Bytes)
        {
            var block = src.Slice(b, Q5_0Bytes);
            float d = F16At(block, 0);
            uint qh = BinaryPrimitives.ReadUInt32LittleEndian(block[2..]);
            var qs = block[6..];
            for (int j = 0; j < QK / 2; j++)
            {
                int h0 = (int)((qh >> j) << 4) & 0x10;
                int h1 = (int)(qh >> (j + 12)) & 0x10;
                dst[o + j] = (((qs[j] & 0xF) | h0) - 16) * d;
                dst[o + j + QK / 2] = (((qs[j] >> 4) | h1) - 16) * d;
            }
        }
    }

    static void Q5_1(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int o = 0, b = 0; o < dst.Length; o += QK, b += Q5_1Bytes)
        {
            var block = src.Slice(b, Q5_1Bytes);
            float d = F16At(block, 0), m = F16At(block, 2);
            uint qh = BinaryPrimitives.ReadUInt32LittleEndian(block[4..]);
            var qs = block[8..];
            for (int j = 0; j < QK / 2; j++)
            {
                int h0 = (int)((qh >> j) << 4) & 0x10;
                int h1 = (int)(qh >> (j + 12)) & 0x10;
                dst[o + j] = ((qs[j] & 0xF) | h0) * d + m;
                dst[o + j + QK / 2] = ((qs[j] >> 4) | h1) * d + m;
            }
        }
    }

    // Q2_K: 16 sub-blocks of 16. Byte k of scales holds sub-block k's 4-bit scale (low nibble) and
    // 4-bit min (high nibble): x = d·scale·q − dmin·min. The 2-bit quants of each half (128 elements) sit
    // in 32 bytes: element 32·s + l of the half is bits 2s..2s+1 of byte l.
    static void Q2_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int o = 0, b = 0; o < dst.Length; o += QK_K, b += Q2_KBytes)
        {
            var block = src.Slice(b, Q2_KBytes);
            var scales = block[..16];
            float d = F16At(block, 80), min = F16At(block, 82);
            int y = o, sub = 0;
            for (int half = 0; half < 2; half++)
            {
                var q = block.Slice(16 + 32 * half, 32);
                for (int shift = 0; shift < 8; shift += 2)
                {
                    for (int part = 0; part < 2; part++, sub++)
                    {
                        byte sc = scales[sub];
                        float dl = d * (sc & 0xF), ml = min * (sc >> 4);
                        for (int l = 0; l < 16; l++) dst[y++] = dl * ((q[16 * part + l] >> shift) & 3) - ml;
                    }
                }
            }
        }
    }

    // Q3_K: 16 sub-blocks of 16 with 6-bit signed scales (BlockFormats.ScaleQ3K). The low 2 bits of each
    // quant are packed as in Q2_K; the third bit is bit (e / 32) of hmask[e % 32], and a clear bit means
    // "subtract 4": x = d·scale·(q2 − (bit ? 0 : 4)).
    static void Q3_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int o = 0, b = 0; o < dst.Length; o += QK_K, b += Q3_KBytes)
        {
            var block = src.Slice(b, Q3_KBytes);
            var hmask = block[..32];
            var scales = block.Slice(96, 12);
            float dAll = F16At(block, 108);
            int y = o, sub = 0, bit = 0;
            for (int half = 0; half < 2; half++)
            {
                var q = block.Slice(32 + 32 * half, 32);
                for (int shift = 0; shift < 8; shift += 2, bit++)
                {
                    for (int part = 0; part < 2; part++, sub++)
                    {
                        float dl = dAll * ScaleQ3K(sub, scales);
                        // (q2 − (bit set ? 0 : 4)) written without a branch: random bits mispredict.
                        for (int l = 16 * part; l < 16 * part + 16; l++)
                            dst[y++] = dl * (((q[l] >> shift) & 3) - 4 + (((hmask[l] >> bit) & 1) << 2));
                    }
                }
            }
        }
    }

    // Q4_K: 8 sub-blocks of 32 with 6-bit scales and mins (BlockFormats.ScaleMinK4):
    // x = d·scale·q − dmin·min. Each 64 elements use 32 bytes: low nibbles first, then high nibbles.
    static void Q4_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int o = 0, b = 0; o < dst.Length; o += QK_K, b += Q4_KBytes)
        {
            var block = src.Slice(b, Q4_KBytes);
            float d = F16At(block, 0), min = F16At(block, 2);
            var scales = block.Slice(4, 12);
            int y = o;
            for (int j = 0; j < 4; j++)
            {
                var q = block.Slice(16 + 32 * j, 32);
                var (sc1, m1) = ScaleMinK4(2 * j, scales);
                var (sc2, m2) = ScaleMinK4(2 * j + 1, scales);
                float d1 = d * sc1, min1 = min * m1, d2 = d * sc2, min2 = min * m2;
                for (int l = 0; l < 32; l++) dst[y++] = d1 * (q[l] & 0xF) - min1;
                for (int l = 0; l < 32; l++) dst[y++] = d2 * (q[l] >> 4) - min2;
            }
        }
    }

    // Q5_K: Q4_K plus a fifth bit: bit 2j of qh[l] for the low-nibble half of chunk j, bit 2j+1 for the high.
    static void Q5_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int o = 0, b = 0; o < dst.Length; o += QK_K, b += Q5_KBytes)
        {
            var block = src.Slice(b, Q5_KBytes);
            float d = F16At(block, 0), min = F16At(block, 2);
            var scales = block.Slice(4, 12);
            var qh = block.Slice(16, 32);
            int y = o;
            for (int j = 0; j < 4; j++)
            {
                var ql = block.Slice(48 + 32 * j, 32);
                var (sc1, m1) = ScaleMinK4(2 * j, scales);
                var (sc2, m2) = ScaleMinK4(2 * j + 1, scales);
                float d1 = d * sc1, min1 = min * m1, d2 = d * sc2, min2 = min * m2;
                for (int l = 0; l < 32; l++) dst[y++] = d1 * ((ql[l] & 0xF) | (((qh[l] >> (2 * j)) & 1) << 4)) - min1;
                for (int l = 0; l < 32; l++) dst[y++] = d2 * ((ql[l] >> 4) | (((qh[l] >> (2 * j + 1)) & 1) << 4)) - min2;
            }
        }
    }

    // Q6_K: 16 sub-blocks of 16 with signed 8-bit scales: x = d·scale·(q − 32), q 6 bits. In each half
    // (128 elements, 64 bytes of ql, 32 of qh), element l + 32·k takes its low 4 bits from ql[l] (k = 0),
    // ql[l+32] (k = 1), the high nibbles of those (k = 2, 3), and its top 2 bits from bits 2k..2k+1 of qh[l].
    static void Q6_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int o = 0, b = 0; o < dst.Length; o += QK_K, b += Q6_KBytes)
        {
            var block = src.Slice(b, Q6_KBytes);
            float d = F16At(block, 208);
            for (int half = 0; half < 2; half++)
            {
                var ql = block.Slice(64 * half, 64);
                var qh = block.Slice(128 + 32 * half, 32);
                var sc = block.Slice(192 + 8 * half, 8);
                int y = o + 128 * half;
                for (int l = 0; l < 32; l++)
                {
                    int s = l / 16;
                    int q1 = ((ql[l] & 0xF) | (((qh[l] >> 0) & 3) << 4)) - 32;
                    int q2 = ((ql[l + 32] & 0xF) | (((qh[l] >> 2) & 3) << 4)) - 32;
                    int q3 = ((ql[l] >> 4) | (((qh[l] >> 4) & 3) << 4)) - 32;
                    int q4 = ((ql[l + 32] >> 4) | (((qh[l] >> 6) & 3) << 4)) - 32;
                    dst[y + l] = d * (sbyte)sc[s] * q1;
                    dst[y + l + 32] = d * (sbyte)sc[s + 2] * q2;
                    dst[y + l + 64] = d * (sbyte)sc[s + 4] * q3;
                    dst[y + l + 96] = d * (sbyte)sc[s + 6] * q4;
                }
            }
        }
    }

    // Q8_K: an f32 scale and 256 signed bytes (bsums, the sums of each 16, are only for dot products).
    static void Q8_K(ReadOnlySpan<byte> src, Span<float> dst)
    {
        for (int o = 0, b = 0; o < dst.Length; o += QK_K, b += Q8_KBytes)
        {
            var block = src.Slice(b, Q8_KBytes);
            float d = BinaryPrimitives.ReadSingleLittleEndian(block);
            for (int j = 0; j < QK_K; j++) dst[o + j] = d * (sbyte)block[4 + j];
        }
    }
}
