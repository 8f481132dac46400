using System.Buffers.Binary;
using System.Runtime.InteropServices;
using TokenMill.Models.Gguf;
using static TokenMill.Quantization.BlockFormats;

namespace TokenMill.Quantization;

/// <summary>
/// Encodes f32 rows the way ggml's reference quantizers do (<c>quantize_row_*_ref</c> in ggml-quants.c,
/// f16/bf16 as in ggml-impl.h), byte for byte, so that a model we write in a chosen type is the one
/// llama.cpp would write. Not a hot path: plain scalar code that mirrors the reference.
/// </summary>
public static class Quantize
{
    /// <summary>Whether <see cref="Row"/> can encode <paramref name="type"/>.</summary>
    public static bool IsSupported(GgmlType type) => type is GgmlType.F32 or GgmlType.F16 or GgmlType.BF16
        or GgmlType.Q8_0 or GgmlType.Q4_0 or GgmlType.Q4_1 or GgmlType.Q5_0 or GgmlType.Q5_1;

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
