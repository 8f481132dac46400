namespace TokenMill.KvCache;

/// <summary>
/// How the paged KV cache stores keys and values (<c>--kv-cache-dtype</c>, the names of llama.cpp's <c>-ctk</c>/<c>-ctv</c>).
/// Attention computes in f32 either way; an f16 cache rounds each key and value once, when it is written.
/// </summary>
public enum KvCacheDtype
{
    /// <summary>32-bit floats: the exact reference (the default).</summary>
    F32,

    /// <summary>IEEE half precision, rounded to nearest even: half the memory per block (llama.cpp's default cache type).</summary>
    F16,
}

/// <summary>Names and sizes of <see cref="KvCacheDtype"/>.</summary>
public static class KvCacheDtypes
{
    /// <summary>The names <see cref="Parse"/> takes.</summary>
    public static readonly string[] Names = ["f32", "f16"];

    /// <summary>Bytes one key or value element takes.</summary>
    public static int ElementBytes(this KvCacheDtype dtype) => dtype == KvCacheDtype.F16 ? 2 : 4;

    /// <summary>The lower-case name (f32, f16).</summary>
    public static string Name(this KvCacheDtype dtype) => dtype == KvCacheDtype.F16 ? "f16" : "f32";

    /// <summary>The dtype named <paramref name="name"/> (case-insensitive), or null.</summary>
    public static KvCacheDtype? Parse(string name) => name.ToLowerInvariant() switch
    {
        "f32" => KvCacheDtype.F32,
        "f16" => KvCacheDtype.F16,
        _ => null,
    };
}
