using System.Buffers.Binary;
using System.Runtime.InteropServices;
using TokenMill.Models.Gguf;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Quantization;

/// <summary>
/// Encodes f32 rows the way ggml's reference quantizers do (<c>quantize_row_*_ref</c> in ggml-quants.c,
/// f16/bf16 as in ggml-impl.h), byte for byte, so that a model we write in a chosen type is the one
/// llama.cpp would write. Not a hot path: plain scalar code that mirrors the reference.
/// <para>
/// Q4_K and Q6_K are the exception: a simple min/max encoder of our own (for dummy models and benchmarks), not
/// llama.cpp's <c>make_qkx2_quants</c> / <c>make_qx_quants</c> search, so its error is larger than theirs and its
/// bytes differ. Its bound, which the tests hold it to: every element decodes within half a quantization step of
/// its sub-block (d·scale) of itself, and for Q4_K also within dmin / 2 (the min's rounding), whichever is larger.
/// Elements must be finite.
/// </para>
/// </summary>
public static class Quantize
{
    /// <summary>Whether <see cref="Row"/> can encode <paramref name="type"/>.</summary>
    public static bool IsSupported(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
        or GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1 or GgmlType.Q4_K or GgmlType.Q6_K;

    /// <summary>
    /// Encodes <paramref name="src"/> (a whole number of blocks) into <paramref name="dst"/>, which must be
    /// exactly the encoded size.
    /// </summary>
    /// <exception cref="NotSupportedException">the type cannot be quantized here.</exception>
    /// <exception cref="ArgumentException">the lengths do not fit the type's blocks or each other.</exception>
    public static void Row(GgmlType type, ReadOnlySpan<float> src, Span<byte> dst)
    {
        if (!IsSupported(type)) throw new NotSupportedException($"Quantize.Row: tensor type {type} is not supported");
        var (blockSize, typeSize) = GgmlTypeInfo.Of(type);
        if (src.Length % blockSize != 0)
            throw new ArgumentException(
                $"Quantize.Row: {src.Length} elements is not a whole number of {type} blocks ({blockSize} elements each)", nameof(src));
        long need = (long)src.Length / blockSize * typeSize;
        if (dst.Length != need)
            throw new ArgumentException($"Quantize.Row: {src.Length} elements of {type} take {need} bytes, but dst has {dst.Length}", nameof(dst));

        switch (type)
        {
            case GgmlType.F32: MemoryMarshal.AsBytes(src).CopyTo(dst); break;
            case GgmlType.F16:
                for (int i = 0; i < src.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(dst[(2 * i)..], Fp16.FromSingle(src[i]));
                break;
            case GgmlType.BF16:
                for (int i = 0; i < src.Length; i++) BinaryPrimitives.WriteUInt16LittleEndian(dst[(2 * i)..], Bf16.FromSingle(src[i]));
                break;
            case GgmlType.Q8_0: Q8_0(src, dst); break;
            case GgmlType.Q4_0: Q4_0(src, dst); break;
            case GgmlType.Q4_1: Q4_1(src, dst); break;
            case GgmlType.Q5_0: Q5_0(src, dst); break;
            case GgmlType.Q5_1: Q5_1(src, dst); break;
            case GgmlType.Q4_K: Q4_K(src, dst); break;
            case GgmlType.Q6_K: Q6_K(src, dst); break;
        }
    }

    static void PutF16(Span<byte> block, int offset, float value) =>
        BinaryPrimitives.WriteUInt16LittleEndian(block[offset..], Fp16.FromSingle(value));

    // d = max|x| / 127 and q = round(x / d), half away from zero (C's roundf). The multiplier is 1/d in
    // f32 from the unrounded d, as in ggml; only the stored d is rounded to f16.
    static void Q8_0(ReadOnlySpan<float> src, Span<byte> dst)
    {
        for (int i = 0, b = 0; i < src.Length; i += QK, b += Q8_0Bytes)
        {
            var x = src.Slice(i, QK);
            var block = dst.Slice(b, Q8_0Bytes);
            float amax = 0;
            foreach (float v in x) amax = MathF.Max(amax, MathF.Abs(v));
            float d = amax / 127;
            float id = d != 0 ? 1.0f / d : 0.0f;
            PutF16(block, 0, d);
            for (int j = 0; j < QK; j++) block[2 + j] = (byte)(sbyte)MathF.Round(x[j] * id, MidpointRounding.AwayFromZero);
        }
    }

    /// <summary>The element of largest magnitude, keeping its sign (the first one on a tie).</summary>
    static float SignedAbsMax(ReadOnlySpan<float> x)
    {
        float amax = 0, max = 0;
        foreach (float v in x)
        {
            if (amax < MathF.Abs(v))
            {
                amax = MathF.Abs(v);
                max = v;
            }
        }
        return max;
    }

    // d = max / −8, where max is the element of largest magnitude with its sign, so that it maps to
    // −8 exactly and the other side gets the 7 remaining levels; q = trunc(x/d + 8.5), capped at 15.
    static void Q4_0(ReadOnlySpan<float> src, Span<byte> dst)
    {
        for (int i = 0, b = 0; i < src.Length; i += QK, b += Q4_0Bytes)
        {
            var x = src.Slice(i, QK);
            var block = dst.Slice(b, Q4_0Bytes);
            float d = SignedAbsMax(x) / -8;
            float id = d != 0 ? 1.0f / d : 0.0f;
            PutF16(block, 0, d);
            for (int j = 0; j < QK / 2; j++)
            {
                int q0 = Math.Min(15, (int)(sbyte)(x[j] * id + 8.5f));
                int q1 = Math.Min(15, (int)(sbyte)(x[j + QK / 2] * id + 8.5f));
                block[2 + j] = (byte)(q0 | (q1 << 4));
            }
        }
    }

    // d = (max − min) / 15, m = min, q = trunc((x − min)/d + 0.5), capped at 15.
    static void Q4_1(ReadOnlySpan<float> src, Span<byte> dst)
    {
        for (int i = 0, b = 0; i < src.Length; i += QK, b += Q4_1Bytes)
        {
            var x = src.Slice(i, QK);
            var block = dst.Slice(b, Q4_1Bytes);
            var (min, max) = MinMax(x);
            float d = (max - min) / 15;
            float id = d != 0 ? 1.0f / d : 0.0f;
            PutF16(block, 0, d);
            PutF16(block, 2, min);
            for (int j = 0; j < QK / 2; j++)
            {
                int q0 = Math.Min(15, (int)(sbyte)((x[j] - min) * id + 0.5f));
                int q1 = Math.Min(15, (int)(sbyte)((x[j + QK / 2] - min) * id + 0.5f));
                block[4 + j] = (byte)(q0 | (q1 << 4));
            }
        }
    }

    // As Q4_0 with 32 levels: d = max / −16, q = trunc(x/d + 16.5) capped at 31; bit 4 of element j goes
    // to bit j of qh.
    static void Q5_0(ReadOnlySpan<float> src, Span<byte> dst)
    {
        for (int i = 0, b = 0; i < src.Length; i += QK, b += Q5_0Bytes)
        {
            var x = src.Slice(i, QK);
            var block = dst.Slice(b, Q5_0Bytes);
            float d = SignedAbsMax(x) / -16;
            float id = d != 0 ? 1.0f / d : 0.0f;
            PutF16(block, 0, d);
            uint qh = 0;
            for (int j = 0; j < QK / 2; j++)
            {
                int q0 = Math.Min(31, (int)(sbyte)(x[j] * id + 16.5f));
                int q1 = Math.Min(31, (int)(sbyte)(x[j + QK / 2] * id + 16.5f));
                block[6 + j] = (byte)((q0 & 0xF) | ((q1 & 0xF) << 4));
                qh |= (uint)((q0 & 0x10) >> 4) << j;
                qh |= (uint)((q1 & 0x10) >> 4) << (j + QK / 2);
            }
            BinaryPrimitives.WriteUInt32LittleEndian(block[2..], qh);
        }
    }

    // As Q4_1 with 32 levels: d = (max − min) / 31, q = trunc((x − min)/d + 0.5) (ggml does not cap it).
    static void Q5_1(ReadOnlySpan<float> src, Span<byte> dst)
    {
        for (int i = 0, b = 0; i < src.Length; i += QK, b += Q5_1Bytes)
        {
            var x = src.Slice(i, QK);
            var block = dst.Slice(b, Q5_1Bytes);
            var (min, max) = MinMax(x);
            float d = (max - min) / 31;
            float id = d != 0 ? 1.0f / d : 0.0f;
            PutF16(block, 0, d);
            PutF16(block, 2, min);
            uint qh = 0;
            for (int j = 0; j < QK / 2; j++)
            {
                int q0 = (byte)((x[j] - min) * id + 0.5f);
                int q1 = (byte)((x[j + QK / 2] - min) * id + 0.5f);
                block[8 + j] = (byte)((q0 & 0xF) | ((q1 & 0xF) << 4));
                qh |= (uint)((q0 & 0x10) >> 4) << j;
                qh |= (uint)((q1 & 0x10) >> 4) << (j + QK / 2);
            }
            BinaryPrimitives.WriteUInt32LittleEndian(block[4..], qh);
        }
    }

    /// <summary>
    /// The f16 nearest to <paramref name="v"/> (≥ 0), or the next one up if that is below it: a super-block scale that is
    /// never smaller than asked, so the sub-block scales derived from it stay within their bits.
    /// </summary>
    static ushort F16AtLeast(float v)
    {
        ushort h = Fp16.FromSingle(v);
        return Fp16.ToSingle(h) < v ? (ushort)(h + 1) : h;
    }

    // Q4_K, per sub-block j of 32 (x = d·sc·q − dmin·m): the offset −dmin·m is the nearest representable to
    // min(0, min x) (m = round(−min / dmin), dmin = max(−min) / 63), then the step d·sc is the smallest that still
    // reaches max x in 15 steps from the offset (sc = ceil, d = max(step) / 63), and q = round((x − offset) / step).
    // An element below the offset (by at most dmin / 2) clamps to q = 0; none is above offset + 15·step.
    static void Q4_K(ReadOnlySpan<float> src, Span<byte> dst)
    {
        Span<float> need = stackalloc float[8];
        Span<float> offset = stackalloc float[8];
        Span<int> sc = stackalloc int[8];
        Span<int> m = stackalloc int[8];
        for (int i = 0, b = 0; i < src.Length; i += QK_K, b += Q4_KBytes)
        {
            var x = src.Slice(i, QK_K);
            var block = dst.Slice(b, Q4_KBytes);
            block.Clear();
            float maxNegMin = 0;
            for (int j = 0; j < 8; j++) maxNegMin = MathF.Max(maxNegMin, -MathF.Min(0, MinMax(x.Slice(32 * j, 32)).Min));
            ushort dminBits = F16AtLeast(maxNegMin / 63);
            float dmin = Fp16.ToSingle(dminBits);
            float maxNeed = 0;
            for (int j = 0; j < 8; j++)
            {
                var (min, max) = MinMax(x.Slice(32 * j, 32));
                m[j] = dmin > 0 ? Math.Min(63, (int)MathF.Round(-MathF.Min(0, min) / dmin, MidpointRounding.AwayFromZero)) : 0;
                offset[j] = -dmin * m[j];
                need[j] = MathF.Max(0, max - offset[j]) / 15;
                maxNeed = MathF.Max(maxNeed, need[j]);
            }
            ushort dBits = F16AtLeast(maxNeed / 63);
            float d = Fp16.ToSingle(dBits);
            BinaryPrimitives.WriteUInt16LittleEndian(block, dBits);
            BinaryPrimitives.WriteUInt16LittleEndian(block[2..], dminBits);
            for (int j = 0; j < 8; j++)
            {
                sc[j] = d > 0 ? Math.Min(63, (int)MathF.Ceiling(need[j] / d)) : 0;
                float step = d * sc[j];
                float inv = step > 0 ? 1 / step : 0;
                // Sub-block j is the low (even j) or high (odd j) nibbles of the 32 bytes of chunk j / 2.
                var qs = block.Slice(16 + 32 * (j / 2), 32);
                for (int l = 0; l < 32; l++)
                {
                    int q = Math.Clamp((int)MathF.Round((x[32 * j + l] - offset[j]) * inv, MidpointRounding.AwayFromZero), 0, 15);
                    qs[l] |= (byte)(j % 2 == 0 ? q : q << 4);
                }
            }
            // The inverse of BlockFormats.ScaleMinK4.
            var scales = block.Slice(4, 12);
            for (int j = 0; j < 4; j++)
            {
                scales[j] = (byte)(sc[j] | ((sc[j + 4] >> 4) << 6));
                scales[j + 4] = (byte)(m[j] | ((m[j + 4] >> 4) << 6));
                scales[j + 8] = (byte)((sc[j + 4] & 0xF) | ((m[j + 4] & 0xF) << 4));
            }
        }
    }

    // Q6_K, per sub-block j of 16 (x = d·sc·(q − 32), sc a signed byte): the step d·sc is the smallest that reaches
    // max|x| in 31 steps (sc = ceil, d = max(step) / 127, sc kept positive), and q − 32 = round(x / step) in −31…31.
    static void Q6_K(ReadOnlySpan<float> src, Span<byte> dst)
    {
        Span<float> need = stackalloc float[16];
        Span<int> q = stackalloc int[QK_K];
        for (int i = 0, b = 0; i < src.Length; i += QK_K, b += Q6_KBytes)
        {
            var x = src.Slice(i, QK_K);
            var block = dst.Slice(b, Q6_KBytes);
            float maxNeed = 0;
            for (int j = 0; j < 16; j++)
            {
                float amax = 0;
                foreach (float v in x.Slice(16 * j, 16)) amax = MathF.Max(amax, MathF.Abs(v));
                need[j] = amax / 31;
                maxNeed = MathF.Max(maxNeed, need[j]);
            }
            ushort dBits = F16AtLeast(maxNeed / 127);
            float d = Fp16.ToSingle(dBits);
            for (int j = 0; j < 16; j++)
            {
                int sc = d > 0 ? Math.Min(127, (int)MathF.Ceiling(need[j] / d)) : 0;
                block[192 + j] = (byte)sc;
                float step = d * sc;
                float inv = step > 0 ? 1 / step : 0;
                for (int l = 16 * j; l < 16 * j + 16; l++)
                    q[l] = Math.Clamp((int)MathF.Round(x[l] * inv, MidpointRounding.AwayFromZero), -32, 31) + 32;
            }
            // The layout Dequantize.Q6_K reads: per half, element l + 32k has its low nibble in ql (k = 0, 1: low
            // nibbles of ql[l], ql[l + 32]; k = 2, 3: their high nibbles) and its top two bits at 2k of qh[l].
            for (int half = 0; half < 2; half++)
            {
                var ql = block.Slice(64 * half, 64);
                var qh = block.Slice(128 + 32 * half, 32);
                var e = q.Slice(128 * half, 128);
                for (int l = 0; l < 32; l++)
                {
                    ql[l] = (byte)((e[l] & 0xF) | ((e[l + 64] & 0xF) << 4));
                    ql[l + 32] = (byte)((e[l + 32] & 0xF) | ((e[l + 96] & 0xF) << 4));
                    qh[l] = (byte)((e[l] >> 4) | ((e[l + 32] >> 4) << 2) | ((e[l + 64] >> 4) << 4) | ((e[l + 96] >> 4) << 6));
                }
            }
            BinaryPrimitives.WriteUInt16LittleEndian(block[208..], dBits);
        }
    }

    static (float Min, float Max) MinMax(ReadOnlySpan<float> x)
    {
        float min = float.MaxValue, max = -float.MaxValue;
        foreach (float v in x)
        {
            if (v < min) min = v;
            if (v > max) max = v;
        }
        return (min, max);
    }
}
