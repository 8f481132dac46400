namespace TokenMill.Backends.Cuda;

/// <summary>
/// How the backend launches one kernel, and the resources it may take on the GPU.
/// <paramref name="BlockSize"/> and <paramref name="DynamicSharedBytes"/> are what every launch uses (the
/// grid varies with the batch); <paramref name="MinOccupancy"/> (resident warps ÷ the SM's maximum) and
/// <paramref name="MaxSpillBytes"/> are the budget <c>tokenmill kernels check --ptxas</c> holds ptxas's
/// figures to, on every architecture it checks.
/// </summary>
public sealed record KernelLaunch(string Kernel, string FileName, int BlockSize, int DynamicSharedBytes, double MinOccupancy, int MaxSpillBytes = 0);

/// <summary>
/// Every kernel's launch configuration and budget, in one place: the self test launches with these block
/// sizes, and <c>kernels check --ptxas</c> computes occupancy at them. A kernel missing here fails the check.
/// </summary>
public static class KernelLaunches
{
    // Budgets: no spills anywhere. Minimum occupancy = what CUDA 11.8's ptxas gives today on sm_80 and sm_90, so a
    // change that costs registers (or shared memory) enough to lose resident blocks fails: full occupancy for the
    // memory-bound kernels, which need every warp to hide latency; paged attention's 48 registers give 10 blocks
    // of 4 warps (62.5 %), its split-K form the same. Prefill attention keeps four query rows and their outputs per
    // lane (126–128 registers) beside 32 KiB of key/value tiles: 4 blocks of 4 warps (25 %), registers and shared
    // memory both at that limit, so growth in either fails. rope sits at exactly 32 registers on sm_90 (its libdevice
    // sin/cos slow path also takes a 48-byte stack frame), so one more register would cost a quarter: its budget
    // allows that, not more.
    public static readonly IReadOnlyList<KernelLaunch> All =
    [
        new("embedding_f32", "embedding.cu", 256, 0, 1.0),
        new("embedding_f16", "embedding.cu", 256, 0, 1.0),
        new("embedding_bf16", "embedding.cu", 256, 0, 1.0),
        new("embedding_q8_0", "embedding.cu", 256, 0, 1.0),
        new("rms_norm", "rms_norm.cu", 256, 0, 1.0),
        new("fused_add_rms_norm", "rms_norm.cu", 256, 0, 1.0),
        new("rope", "rope.cu", 128, 0, 0.75),
        new("reshape_and_cache_f32", "reshape_and_cache.cu", 256, 0, 1.0),
        new("reshape_and_cache_f16", "reshape_and_cache.cu", 256, 0, 1.0),
        new("reshape_and_cache_q8_0", "reshape_and_cache.cu", 256, 0, 1.0),
        new("paged_attention_decode_f32", "paged_attention.cu", 128, 0, 0.625),
        new("paged_attention_decode_f16", "paged_attention.cu", 128, 0, 0.625),
        // q8_0's one-pass decode takes 54-55 registers (the block addressing), one warp fewer per sub-partition: 9 of 16.
        new("paged_attention_decode_q8_0", "paged_attention.cu", 128, 0, 0.5625),
        new("paged_attention_decode_split_f32", "paged_attention.cu", 128, 0, 0.625),
        new("paged_attention_decode_split_f16", "paged_attention.cu", 128, 0, 0.625),
        new("paged_attention_decode_split_q8_0", "paged_attention.cu", 128, 0, 0.625),
        new("paged_attention_reduce", "paged_attention.cu", 128, 0, 1.0),
        new("paged_attention_prefill_f32", "paged_attention_prefill.cu", 128, 0, 0.25),
        new("paged_attention_prefill_f16", "paged_attention_prefill.cu", 128, 0, 0.25),
        new("paged_attention_prefill_q8_0", "paged_attention_prefill.cu", 128, 0, 0.25),
        new("silu_and_mul", "activation.cu", 256, 0, 1.0),
        new("gelu_tanh_and_mul", "activation.cu", 256, 0, 1.0),
        // gemv_f32 41 registers (no launch bounds: it spilled when held to 32 or 40); the others 32 (held to full occupancy).
        new("gemv_f32", "gemv.cu", 128, 0, 0.625),
        new("gemv_f16", "gemv.cu", 128, 0, 1.0),
        new("gemv_bf16", "gemv.cu", 128, 0, 1.0),
        new("gemv_q8_0", "gemv.cu", 128, 0, 1.0),
        new("gemv_q4_0", "gemv.cu", 128, 0, 1.0),
        // The _x8 kernels keep 8 vectors' sums and float4s of x per lane: 48–90 registers. On an H100 they still ran 8
        // vectors in a quarter to a third of the time 8 single-vector launches took (README, CUDA); capping them at 64
        // registers made F16/BF16/Q8_0 slower. The budgets are CUDA 11.8's sm_80 figures (its worst).
        new("gemv_f32_x8", "gemv.cu", 128, 0, 0.5625),
        new("gemv_f16_x8", "gemv.cu", 128, 0, 0.4375),
        new("gemv_bf16_x8", "gemv.cu", 128, 0, 0.4375),
        new("gemv_q8_0_x8", "gemv.cu", 128, 0, 0.5),
        new("gemv_q4_0_x8", "gemv.cu", 128, 0, 0.3125),
        new("convert_f32_to_f16", "convert.cu", 256, 0, 1.0),
        new("convert_f32_to_bf16", "convert.cu", 256, 0, 1.0),
        new("dequantize_q8_0_f16", "convert.cu", 256, 0, 1.0),
        new("dequantize_q4_0_f16", "convert.cu", 256, 0, 1.0),
        new("argmax", "argmax.cu", 1024, 0, 1.0),
        new("sample", "sampling.cu", 256, 0, 0.625),
    ];

    static readonly Dictionary<string, KernelLaunch> ByName = All.ToDictionary(k => k.Kernel, StringComparer.Ordinal);

    /// <summary>The launch of <paramref name="kernel"/>, or null when it has none declared.</summary>
    public static KernelLaunch? Find(string kernel) => ByName.GetValueOrDefault(kernel);

    /// <summary>
    /// The grid of an element-wise kernel over <paramref name="elements"/> values (activation.cu, convert.cu): a block of
    /// 256 per 256 values up to 65535 × 8 blocks, past which the kernels' grid-stride loops take the rest.
    /// </summary>
    public static Interop.Driver.Dim3 ElementGrid(long elements) => new((uint)Math.Min((elements + 255) / 256, 65535L * 8));

    /// <summary>Vectors one block of a gemv.cu <c>_x8</c> kernel multiplies by its rows: the weights are read once for them.</summary>
    public const int GemvVectorsPerBlock = 8;

    /// <summary>Vectors one block of <paramref name="kernel"/> (a gemv.cu kernel) takes: 8 for the <c>_x8</c> kernels, else 1.</summary>
    public static int GemvVectors(string kernel) => kernel.EndsWith("_x8", StringComparison.Ordinal) ? GemvVectorsPerBlock : 1;

    /// <summary>
    /// The grid of a gemv.cu kernel over <paramref name="rows"/> weight rows and <paramref name="vectors"/> vectors, of which
    /// a block takes <paramref name="vectorsPerBlock"/> (1, or 8 for the <c>_x8</c> kernels): a warp per row (4 per block of
    /// 128), ⌈vectors / vectorsPerBlock⌉ blocks down y.
    /// </summary>
    public static Interop.Driver.Dim3 GemvGrid(long rows, int vectors, int vectorsPerBlock)
    {
        int rowsPerBlock = For("gemv_f32").BlockSize / 32;
        return new((uint)((rows + rowsPerBlock - 1) / rowsPerBlock), (uint)((vectors + vectorsPerBlock - 1) / vectorsPerBlock));
    }

    /// <summary>The launch of <paramref name="kernel"/>; throws when it has none declared.</summary>
    public static KernelLaunch For(string kernel) =>
        Find(kernel) ?? throw new KeyNotFoundException($"kernel '{kernel}' has no launch configuration in KernelLaunches");
}
