namespace TokenMill.Models.Gguf;

/// <summary>Tensor element types, numbered as in ggml's <c>enum ggml_type</c>.</summary>
public enum GgmlType : uint
{
    F32 = 0,
    F16 = 1,
    Q4_0 = 2,
    Q4_1 = 3,
    Q5_0 = 6,
    Q5_1 = 7,
    Q8_0 = 8,
    Q8_1 = 9,
    Q2_K = 10,
    Q3_K = 11,
    Q4_K = 12,
    Q5_K = 13,
    Q6_K = 14,
    Q8_K = 15,
    IQ2_XXS = 16,
    IQ2_XS = 17,
    IQ3_XXS = 18,
    IQ1_S = 19,
    IQ4_NL = 20,
    IQ3_S = 21,
    IQ2_S = 22,
    IQ4_XS = 23,
    I8 = 24,
    I16 = 25,
    I32 = 26,
    I64 = 27,
    F64 = 28,
    IQ1_M = 29,
    BF16 = 30,
    TQ1_0 = 34,
    TQ2_0 = 35,
    MXFP4 = 39,
}

/// <summary>Block geometry of each type: how many elements a block holds and how many bytes it takes.</summary>
public static class GgmlTypeInfo
{
    /// <summary>Super-block size of the K-quants (ggml's <c>QK_K</c>).</summary>
    public const int QK_K = 256;

    /// <summary>Elements per block and bytes per block; (0, 0) for a type we do not know.</summary>
    public static (int BlockSize, int TypeSize) Of(GgmlType type) => type switch
    {
        GgmlType.F32 => (1, 4),
        GgmlType.F16 => (1, 2),
        GgmlType.BF16 => (1, 2),
        GgmlType.F64 => (1, 8),
        GgmlType.I8 => (1, 1),
        GgmlType.I16 => (1, 2),
        GgmlType.I32 => (1, 4),
        GgmlType.I64 => (1, 8),
        GgmlType.Q4_0 => (32, 2 + 16),
        GgmlType.Q4_1 => (32, 2 + 2 + 16),
        GgmlType.Q5_0 => (32, 2 + 4 + 16),
        GgmlType.Q5_1 => (32, 2 + 2 + 4 + 16),
        GgmlType.Q8_0 => (32, 2 + 32),
        GgmlType.Q8_1 => (32, 4 + 32),
        GgmlType.Q2_K => (QK_K, QK_K / 16 + QK_K / 4 + 2 + 2),
        GgmlType.Q3_K => (QK_K, QK_K / 8 + QK_K / 4 + 12 + 2),
        GgmlType.Q4_K => (QK_K, 2 + 2 + 12 + QK_K / 2),
        GgmlType.Q5_K => (QK_K, 2 + 2 + 12 + QK_K / 8 + QK_K / 2),
        GgmlType.Q6_K => (QK_K, QK_K / 2 + QK_K / 4 + QK_K / 16 + 2),
        GgmlType.Q8_K => (QK_K, 4 + QK_K + QK_K / 16 * 2),
        GgmlType.IQ4_NL => (32, 2 + 16),
        GgmlType.IQ4_XS => (QK_K, 2 + 2 + QK_K / 64 + QK_K / 2),
        _ => (0, 0),
    };

    public static bool IsKnown(GgmlType type) => Of(type).BlockSize != 0;

    /// <summary>Bytes taken by <paramref name="elements"/> elements; the count must be a whole number of blocks.</summary>
    public static long RowBytes(GgmlType type, long elements)
    {
        var (blockSize, typeSize) = Of(type);
        if (blockSize == 0) throw new NotSupportedException($"tensor type {type} is not supported");
        if (elements % blockSize != 0)
            throw new ArgumentException($"{elements} elements is not a whole number of {type} blocks of {blockSize}");
        return elements / blockSize * typeSize;
    }
}
