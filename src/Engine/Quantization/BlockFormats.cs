using System.Buffers.Binary;
using TokenMill.Models.Gguf;

namespace TokenMill.Quantization;

/// <summary>
/// Byte layouts of ggml's quantized blocks (the structs of ggml-common.h, all little-endian and
/// packed). "f16" is an IEEE half; a block's elements are its <see cref="GgmlTypeInfo"/> block size.
/// <code>
/// Q4_0  (18 B, 32 el.)  f16 d | u8 qs[16]                     x = d·(nibble − 8)
/// Q4_1  (20 B, 32 el.)  f16 d | f16 m | u8 qs[16]             x = d·nibble + m
/// Q5_0  (22 B, 32 el.)  f16 d | u8 qh[4] | u8 qs[16]          x = d·(nibble | high bit·16 − 16)
/// Q5_1  (24 B, 32 el.)  f16 d | f16 m | u8 qh[4] | u8 qs[16]  x = d·(nibble | high bit·16) + m
/// Q8_0  (34 B, 32 el.)  f16 d | i8 qs[32]                     x = d·q
///   (in the 4/5-bit blocks, byte j holds element j in its low nibble and element j+16 in its high one;
///    bit j of qh is the fifth bit of element j)
/// Q2_K  (84 B, 256 el.)  u8 scales[16] | u8 qs[64] | f16 d | f16 dmin
/// Q3_K (110 B, 256 el.)  u8 hmask[32] | u8 qs[64] | u8 scales[12] | f16 d
/// Q4_K (144 B, 256 el.)  f16 d | f16 dmin | u8 scales[12] | u8 qs[128]
/// Q5_K (176 B, 256 el.)  f16 d | f16 dmin | u8 scales[12] | u8 qh[32] | u8 qs[128]
/// Q6_K (210 B, 256 el.)  u8 ql[128] | u8 qh[64] | i8 scales[16] | f16 d
/// Q8_K (292 B, 256 el.)  f32 d | i8 qs[256] | i16 bsums[16]
/// </code>
/// The K-quant decoding is spelled out next to each dequantizer in <see cref="Dequantize"/>.
/// </summary>
internal static class BlockFormats
{
    public const int QK = 32;          // elements in a Q4_0/Q4_1/Q5_0/Q5_1/Q8_0 block
    public const int QK_K = GgmlTypeInfo.QK_K;

    public const int Q4_0Bytes = 18;
    public const int Q4_1Bytes = 20;
    public const int Q5_0Bytes = 22;
    public const int Q5_1Bytes = 24;
    public const int Q8_0Bytes = 34;
    public const int Q2_KBytes = 84;
    public const int Q3_KBytes = 110;
    public const int Q4_KBytes = 144;
    public const int Q5_KBytes = 176;
    public const int Q6_KBytes = 210;
    public const int Q8_KBytes = 292;

    public static float F16At(ReadOnlySpan<byte> b, int offset) => Fp16.ToSingle(BinaryPrimitives.ReadUInt16LittleEndian(b[offset..]));

    /// <summary>
    /// The 6-bit scale and min of sub-block <paramref name="j"/> (0..7) of a Q4_K/Q5_K block, packed in 12
    /// bytes (ggml's <c>get_scale_min_k4</c>): sub-blocks 0..3 keep theirs in the low 6 bits of bytes j and
    /// j+4; sub-blocks 4..7 keep the low 4 bits in the nibbles of byte j+4 and the top 2 bits in the top
    /// bits of bytes j−4 (scale) and j (min).
    /// </summary>
    public static (int Scale, int Min) ScaleMinK4(int j, ReadOnlySpan<byte> q)
    {
        if (j < 4) return (q[j] & 63, q[j + 4] & 63);
        return ((q[j + 4] & 0xF) | ((q[j - 4] >> 6) << 4), (q[j + 4] >> 4) | ((q[j] >> 6) << 4));
    }

    /// <summary>
    /// The signed scale (−32..31) of sub-block <paramref name="j"/> (0..15) of a Q3_K block: the low 4 bits
    /// are a nibble of bytes 0..7 (low nibbles for j &lt; 8, high for the rest), the top 2 bits come from
    /// bytes 8..11, two bits per sub-block.
    /// </summary>
    public static int ScaleQ3K(int j, ReadOnlySpan<byte> scales)
    {
        int low = j < 8 ? scales[j] & 0xF : scales[j - 8] >> 4;
        int high = (scales[8 + j % 4] >> (2 * (j / 4))) & 3;
        return (low | (high << 4)) - 32;
    }
}
