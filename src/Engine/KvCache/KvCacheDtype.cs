using TokenMill.Models.Gguf;

namespace TokenMill.KvCache;

/// <summary>
/// How the paged KV cache stores keys and values (<c>--kv-cache-dtype</c>, the names of llama.cpp's <c>-ctk</c>/<c>-ctv</c>).
/// Attention computes in f32 either way: a key or value is rounded once, when it is written, and read back exactly.
/// </summary>
public enum KvCacheDtype
{
    /// <summary>32-bit floats: the exact reference (the default).</summary>
    F32,

    /// <summary>IEEE half precision, rounded to nearest even: half the memory per block (llama.cpp's default cache type).</summary>
    F16,

    /// <summary>
    /// ggml's Q8_0 blocks (32 values as int8 and one f16 scale, 34 bytes), each head's rows quantized as ggml's
    /// reference <c>quantize_row_q8_0</c> does: 0.27 of f32's memory. The head dimension must be a multiple of 32.
    /// </summary>
    Q8_0,
}

/// <summary>Names and sizes of <see cref="KvCacheDtype"/>.</summary>
public static class KvCacheDtypes
{
    /// <summary>The names <see cref="Parse"/> takes.</summary>
    public static readonly string[] Names = ["f32", "f16", "q8_0"];

    /// <summary>The GGUF type whose rows the cache stores (its block layout, quantizer and dequantizer are that type's).</summary>
    public static GgmlType StorageType(this KvCacheDtype dtype) => dtype switch
    {
        KvCacheDtype.F16 => GgmlType.F16,
        KvCacheDtype.Q8_0 => GgmlType.Q8_0,
        _ => GgmlType.F32,
    };

    /// <summary>Bytes a row of <paramref name="elements"/> keys or values takes (for Q8_0, a whole number of 32-value blocks).</summary>
    /// <exception cref="ArgumentException">A count that would cut a block.</exception>
    public static long RowBytes(this KvCacheDtype dtype, long elements)
    {
        var (block, bytes) = GgmlTypeInfo.Of(dtype.StorageType());
        return elements % block == 0 ? elements / block * bytes
            : throw new ArgumentException($"{elements} values are not a whole number of {dtype.Name()} blocks of {block}", nameof(elements));
    }

    /// <summary>The lower-case name (f32, f16, q8_0).</summary>
    public static string Name(this KvCacheDtype dtype) => Names[(int)dtype];

    /// <summary>The dtype named <paramref name="name"/> (case-insensitive), or null.</summary>
    public static KvCacheDtype? Parse(string name)
    {
        int i = Array.IndexOf(Names, name.ToLowerInvariant());
        return i < 0 ? null : (KvCacheDtype)i;
    }

    /// <summary>Why <paramref name="dtype"/> cannot hold a model of head dimension <paramref name="headDim"/>, or null when it can.</summary>
    public static string? Unsupported(this KvCacheDtype dtype, int headDim)
    {
        int block = GgmlTypeInfo.Of(dtype.StorageType()).BlockSize;
        return headDim % block != 0
            ? $"--kv-cache-dtype {dtype.Name()} needs a head dimension that is a multiple of {block} (a block of {block} values must not straddle two heads); this model's is {headDim}"
            : null;
    }
}
