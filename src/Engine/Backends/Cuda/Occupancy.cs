namespace TokenMill.Backends.Cuda;

/// <summary>
/// The per-SM limits that decide how many blocks of a kernel can be resident at once (CUDA C Programming
/// Guide, "Technical Specifications per Compute Capability"; granularities as in CUDA's cuda_occupancy.h).
/// </summary>
public sealed record SmLimits(string Architecture, int MaxThreads, int MaxBlocks, int Registers, int SharedBytes, int MaxSharedBytesPerBlock)
{
    public const int WarpSize = 32;
    /// <summary>Registers are allocated per warp in units of 256 (regs × 32 rounded up).</summary>
    public const int RegisterAllocationUnit = 256;
    /// <summary>Registers live in 4 sub-partitions (SM schedulers); a warp's registers all sit in one.</summary>
    public const int SubPartitions = 4;
    public const int MaxRegistersPerThread = 255;
    /// <summary>Shared memory is allocated per block in units of 128 bytes, plus 1 KiB the system reserves per block (sm_80+).</summary>
    public const int SharedAllocationUnit = 128;
    public const int ReservedSharedPerBlock = 1024;

    public int MaxWarps => MaxThreads / WarpSize;

    // Shared memory per SM is the largest carveout (the driver picks the carveout a launch needs);
    // per-block maximum is with the opt-in attribute (48 KiB without it).
    static readonly SmLimits[] Known =
    [
        new("sm_80", 2048, 32, 65536, 164 * 1024, 163 * 1024),
        new("sm_86", 1536, 16, 65536, 100 * 1024, 99 * 1024),
        new("sm_89", 1536, 24, 65536, 100 * 1024, 99 * 1024),
        new("sm_90", 2048, 32, 65536, 228 * 1024, 227 * 1024),
    ];

    public static IReadOnlyList<SmLimits> All => Known;

    /// <summary>The limits of <paramref name="architecture"/> (<c>sm_90</c>), or null when not known here.</summary>
    public static SmLimits? Find(string architecture) => Known.FirstOrDefault(k => k.Architecture == architecture);
}

/// <summary>Theoretical occupancy of one launch configuration, and what limits it.</summary>
public sealed record OccupancyResult(int BlocksPerSm, int WarpsPerSm, double Occupancy, string LimitedBy);

public static class Occupancy
{
    /// <summary>
    /// Resident blocks per SM for a kernel using <paramref name="registers"/> per thread and
    /// <paramref name="staticSharedBytes"/> + <paramref name="dynamicSharedBytes"/> of shared memory per block,
    /// launched with <paramref name="blockSize"/> threads: the minimum over the warp, block, register and
    /// shared-memory limits, as cudaOccMaxActiveBlocksPerMultiprocessor computes it.
    /// </summary>
    public static OccupancyResult Compute(SmLimits sm, int blockSize, int registers, int staticSharedBytes, int dynamicSharedBytes)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(blockSize, 1);
        ArgumentOutOfRangeException.ThrowIfNegative(registers);
        int warpsPerBlock = DivideRoundUp(blockSize, SmLimits.WarpSize);

        int byWarps = blockSize > 1024 ? 0 : sm.MaxWarps / warpsPerBlock;
        int byBlocks = sm.MaxBlocks;

        int byRegisters = int.MaxValue;
        if (registers > 0)
        {
            int perWarp = RoundUp(registers * SmLimits.WarpSize, SmLimits.RegisterAllocationUnit);
            // The hardware's per-block check assumes the block's warps spread over all four sub-partitions.
            int assumedPerBlock = perWarp * RoundUp(warpsPerBlock, SmLimits.SubPartitions);
            if (registers > SmLimits.MaxRegistersPerThread || assumedPerBlock > sm.Registers) byRegisters = 0;
            else byRegisters = sm.Registers / SmLimits.SubPartitions / perWarp * SmLimits.SubPartitions / warpsPerBlock;
        }

        int perBlockShared = RoundUp(staticSharedBytes + dynamicSharedBytes + SmLimits.ReservedSharedPerBlock, SmLimits.SharedAllocationUnit);
        int byShared = staticSharedBytes + dynamicSharedBytes + SmLimits.ReservedSharedPerBlock > sm.MaxSharedBytesPerBlock + SmLimits.ReservedSharedPerBlock
            ? 0 : sm.SharedBytes / perBlockShared;

        int blocks = Math.Min(Math.Min(byWarps, byBlocks), Math.Min(byRegisters, byShared));
        string limitedBy = blocks == byWarps ? "warps" : blocks == byRegisters ? "registers" : blocks == byShared ? "shared memory" : "blocks";
        int warps = blocks * warpsPerBlock;
        return new OccupancyResult(blocks, warps, (double)warps / sm.MaxWarps, limitedBy);
    }

    static int DivideRoundUp(int a, int b) => (a + b - 1) / b;
    static int RoundUp(int a, int b) => DivideRoundUp(a, b) * b;
}
